//! `webvlm serve` over real HTTP with the tiny VLM: completions equal to `webvlm chat`,
//! streams, images, errors in OpenAI's shape with their status codes, the API key on every
//! route, the bounded FIFO queue and its `Retry-After`, client disconnects, the Batch API
//! round trip, the bounds and expiry of files and batches, a cancel mid-line, and
//! `--parallel` runs answering as one at a time does.

use crate::common;
use crate::serve_http;

use std::collections::HashMap;
use std::process::Command;

use base64::Engine as _;
use serde_json::{json, Value};
use serve_http::Server;
use webvlm::gguf::MappedGguf;
use webvlm::tokenizer::{GgufVocab, Tokenizer};

fn model_file(name: &str) -> String {
    common::fixture(common::TINY_VLM).join(name).display().to_string()
}

/// The engine flags every server and CLI run here shares.
fn engine_flags() -> Vec<String> {
    let flags = ["--model", &model_file("model.gguf"), "--mmproj", &model_file("mmproj.gguf"), "--ctx", "512", "--chunk", "16"];
    flags.iter().map(|s| s.to_string()).collect()
}

fn start(extra: &[&str]) -> Server {
    let mut args = engine_flags();
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `webvlm chat` on the same request: the reference answer.
fn cli_chat(request: &Value) -> Value {
    let path = std::env::temp_dir().join(format!("webvlm-serve-test-{}-{}.json", std::process::id(), rand_suffix(request)));
    std::fs::write(&path, request.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_webvlm"))
        .args(["chat", "--request", &path.display().to_string()])
        .args(engine_flags())
        .output()
        .expect("webvlm chat runs");
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "webvlm chat failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("webvlm chat prints the completion")
}

fn rand_suffix(v: &Value) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(v.to_string())
}

/// What must match between two answers to one request: the choices and the token counts
/// (ids, times and prompt-cache hits differ).
fn answer(completion: &Value) -> Value {
    json!({
        "model": completion["model"],
        "choices": completion["choices"],
        "prompt_tokens": completion["usage"]["prompt_tokens"],
        "completion_tokens": completion["usage"]["completion_tokens"],
    })
}

/// How far a logprob of a request run beside others may be from its own: a decode row that
/// shares a step with a prompt chunk runs its products on the prefill kernel, whose f32
/// rounding differs from the decode kernel's for this fixture's f16 matrices.
const LOGPROB_TOLERANCE: f64 = 1e-4;

/// `got` is `want` (the request's answer run alone): the same text and tokens, and its
/// logprobs within [`LOGPROB_TOLERANCE`].
fn assert_same_answer(got: &Value, want: &Value, what: &str) {
    fn same(got: &Value, want: &Value) -> bool {
        match (got, want) {
            (Value::Object(g), Value::Object(w)) => {
                g.len() == w.len()
                    && g.iter().all(|(key, g)| match (w.get(key), key.as_str()) {
                        (Some(w), "logprob") => {
                            g.as_f64().zip(w.as_f64()).is_some_and(|(g, w)| (g - w).abs() <= LOGPROB_TOLERANCE)
                        }
                        (Some(w), _) => same(g, w),
                        (None, _) => false,
                    })
            }
            (Value::Array(g), Value::Array(w)) => g.len() == w.len() && g.iter().zip(w).all(|(g, w)| same(g, w)),
            _ => got == want,
        }
    }
    assert!(same(got, want), "{what}:\n got {got}\nwant {want}");
}

/// `logit_bias` that keeps the tiny model from ending early (long generations).
fn no_end_tokens() -> Value {
    let gguf = MappedGguf::open(model_file("model.gguf")).unwrap();
    let tokenizer = Tokenizer::from_gguf_vocab(&GgufVocab::from_metadata(gguf.metadata()).unwrap()).unwrap();
    assert!(!tokenizer.eos_ids().is_empty(), "the tiny model has end tokens");
    tokenizer.eos_ids().iter().map(|id| (id.to_string(), json!(-100))).collect::<serde_json::Map<_, _>>().into()
}

fn user(text: &str) -> Value {
    json!([{ "role": "user", "content": text }])
}

/// Polls `GET path` until `done` holds of its JSON (at most 60 s of polling).
fn poll(server: &Server, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..1200 {
        let value = server.get(path).json();
        if done(&value) {
            return value;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{path} never reached the awaited state");
}

/// A streamed request's chunks (parsed) up to `[DONE]`, which must end it.
fn chunks(events: Vec<String>) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "the stream ends with [DONE]: {events:?}");
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

fn content_of(chunks: &[Value]) -> String {
    chunks.iter().filter_map(|c| c.pointer("/choices/0/delta/content").and_then(Value::as_str)).collect()
}

#[test]
fn completions_match_the_cli_streamed_or_not_with_images() {
    let server = start(&["--served-model-name", "tiny"]);
    let request = json!({ "model": "tiny", "messages": user("Name three colors."), "max_tokens": 12, "temperature": 0 });
    let expected = cli_chat(&request);
    let plain = server.post_json("/v1/chat/completions", &request);
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert_eq!(plain.json()["object"], "chat.completion");
    assert_eq!(answer(&plain.json()), answer(&expected));

    // Sampled, with a seed: the same draw as the CLI's.
    let sampled = json!({ "model": "tiny", "messages": user("Say something."), "max_tokens": 10, "temperature": 0.9, "seed": 7 });
    assert_eq!(answer(&server.post_json("/v1/chat/completions", &sampled).json()), answer(&cli_chat(&sampled)));

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({ "include_usage": true });
    let mut stream = server.stream(&streamed);
    assert_eq!(stream.status, 200);
    assert!(stream.headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("content-type") && v.starts_with("text/event-stream")));
    let chunks = chunks(stream.rest());
    assert_eq!(content_of(&chunks), expected["choices"][0]["message"]["content"].as_str().unwrap());
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]), "the last chunk holds the usage only");
    assert_eq!(usage["usage"]["completion_tokens"], expected["usage"]["completion_tokens"]);
    let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert_eq!(finish, &expected["choices"][0]["finish_reason"]);

    let png = std::fs::read(model_file("img_84x56.png")).unwrap();
    let url = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png));
    let content = json!([{ "type": "text", "text": "What is this?" }, { "type": "image_url", "image_url": { "url": url } }]);
    let with_image =
        json!({ "model": "tiny", "messages": [{ "role": "user", "content": content }], "max_tokens": 6, "temperature": 0 });
    let reply = server.post_json("/v1/chat/completions", &with_image);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let expected_image = cli_chat(&with_image);
    assert_eq!(answer(&reply.json()), answer(&expected_image));
    assert!(reply.json()["usage"]["prompt_tokens"].as_u64() > expected["usage"]["prompt_tokens"].as_u64(), "image tokens count");

    let models = server.get("/v1/models").json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(
        (&models["data"][0]["context_length"], &models["data"][0]["max_model_len"]),
        (&json!(512), &json!(512)),
        "--ctx 512"
    );
    assert_eq!(server.get("/v1/models/tiny").json()["id"], "tiny");
    assert_eq!(server.get("/v1/models/other").status, 404);
    let health = server.get("/health").json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["backend"] == "cpu", common::auto_takes_the_cpu(), "--backend auto: {health}");
    assert!(health["device"].as_str().is_some_and(|d| !d.is_empty()), "{health}");
    let why = if common::auto_takes_the_cpu() { "auto: no hardware GPU adapter" } else { "auto: a hardware GPU adapter" };
    assert!(health["backend_reason"].as_str().is_some_and(|r| r.starts_with(why)), "{health}");
    let cache = &health["prompt_cache"];
    assert!(cache["budget_bytes"].as_u64() > Some(0) && cache["live_tokens"].as_u64() > Some(0), "{health}");
    assert!(cache["saved_bytes"].as_u64().is_some() && cache["saved_prefixes"].as_u64().is_some(), "{health}");
}

/// Status, `type`, `param` and `code` of an error response.
fn error_of(response: &serve_http::Response) -> (u16, Value, Value, Value) {
    let body = response.json();
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "an error message: {body}");
    (response.status, error["type"].clone(), error["param"].clone(), error["code"].clone())
}

#[test]
fn errors_have_openai_shapes_and_status_codes() {
    let server = start(&["--api-key", "sesame", "--max-body-bytes", "4096", "--max-image-bytes", "300"]);
    let key = ("Authorization", "Bearer sesame");
    let post = |body: &[u8]| server.request("POST", "/v1/chat/completions", &[key], body);
    let chat = |body: Value| post(body.to_string().as_bytes());
    let invalid = |param: &str, code: &str| (400, json!("invalid_request_error"), json!(param), json!(code));

    let request = json!({ "messages": user("hi"), "max_tokens": 1 });
    let missing_key = server.post_json("/v1/chat/completions", &request);
    assert_eq!(error_of(&missing_key), (401, json!("invalid_request_error"), Value::Null, json!("invalid_api_key")));
    let wrong_key = server.request("POST", "/v1/chat/completions", &[("Authorization", "Bearer sesamf")], b"{}");
    assert_eq!(wrong_key.status, 401);
    assert_eq!(server.get("/health").status, 200, "health needs no key");
    assert_eq!(chat(request.clone()).status, 200, "the right key passes");

    assert_eq!(error_of(&post(b"{\"messages\": [")), (400, json!("invalid_request_error"), Value::Null, json!("invalid_json")));
    assert_eq!(error_of(&chat(json!({ "messages": user("hi"), "temperature": "hot" }))), invalid("temperature", "invalid_type"));
    assert_eq!(error_of(&chat(json!({ "messages": user("hi"), "tempreature": 1 }))), invalid("tempreature", "unknown_parameter"));
    assert_eq!(error_of(&chat(json!({ "messages": user("hi"), "n": 17 }))), invalid("n", "invalid_value"));
    assert_eq!(error_of(&chat(json!({ "messages": user("hi"), "max_tokens": 0 }))), invalid("max_tokens", "invalid_value"));
    let unknown_model = chat(json!({ "messages": user("hi"), "model": "gpt-4o" }));
    assert_eq!(error_of(&unknown_model), (404, json!("invalid_request_error"), json!("model"), json!("model_not_found")));

    let image = |url: String| json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": url } }] }] });
    let param = "messages[0].content[0].image_url.url";
    assert_eq!(error_of(&chat(image("file:///etc/passwd".into()))), invalid(param, "invalid_image_url"));
    assert_eq!(error_of(&chat(image(format!("data:image/png;base64,{}", "A".repeat(800))))), invalid(param, "image_too_large"));
    let not_an_image = chat(image("data:image/png;base64,QUJD".into()));
    assert_eq!(error_of(&not_an_image), invalid("messages", "invalid_image"));

    let oversized = post(format!("{{\"messages\": \"{}\"}}", "x".repeat(5000)).as_bytes());
    assert_eq!(error_of(&oversized), (413, json!("invalid_request_error"), Value::Null, json!("request_too_large")));

    let unknown_route = server.request("GET", "/v1/embeddings", &[key], b"");
    assert_eq!(error_of(&unknown_route), (404, json!("invalid_request_error"), Value::Null, json!("unknown_url")));
    assert_eq!(server.request("DELETE", "/v1/chat/completions", &[key], b"").status, 405);
    let no_file = server.request("GET", "/v1/files/file-nope", &[key], b"");
    assert_eq!(error_of(&no_file).0, 404);
    assert_eq!(server.request("GET", "/v1/batches/batch_nope", &[key], b"").status, 404);
}

/// The header names of a comma-separated list, lowercased.
fn header_names(value: Option<&str>) -> Vec<String> {
    value.unwrap_or_default().split(',').map(|n| n.trim().to_ascii_lowercase()).filter(|n| !n.is_empty()).collect()
}

#[test]
fn cors_preflights_name_the_authorization_header() {
    // The Fetch standard's `Access-Control-Allow-Headers: *` never covers `Authorization`: a
    // page sending the API key needs the header named (Chromium lets `*` pass; the standard,
    // and browsers that follow it, do not).
    let server = start(&["--api-key", "sesame", "--cors", "*"]);
    let origin = ("Origin", "http://page.example");
    let asked = "authorization, content-type, x-stainless-os";
    let preflight = server.request(
        "OPTIONS",
        "/v1/chat/completions",
        &[origin, ("Access-Control-Request-Method", "POST"), ("Access-Control-Request-Headers", asked)],
        b"",
    );
    assert_eq!(preflight.status, 200, "a preflight needs no key: {}", preflight.text());
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    let allowed = header_names(preflight.header("access-control-allow-headers"));
    for name in ["authorization", "content-type", "x-stainless-os"] {
        assert!(allowed.contains(&name.to_string()), "{name} is not allowed: {allowed:?}");
    }
    assert!(header_names(preflight.header("access-control-allow-methods")).contains(&"post".to_string()));

    // The answers themselves, errors included, are readable by the page.
    let models = server.request("GET", "/v1/models", &[origin, ("Authorization", "Bearer sesame")], b"");
    assert_eq!((models.status, models.header("access-control-allow-origin")), (200, Some("*")));
    let refused = server.request("GET", "/v1/models", &[origin, ("Authorization", "Bearer wrong")], b"");
    assert_eq!((refused.status, refused.header("access-control-allow-origin")), (401, Some("*")));
    assert!(header_names(refused.header("access-control-expose-headers")).contains(&"retry-after".to_string()));
}

#[test]
fn a_full_queue_answers_429_and_a_disconnect_aborts_the_generation() {
    // One request at a time: one runs while the others wait (the CPU backend runs several by default).
    let server = start(&["--queue", "1", "--parallel", "1"]);
    let short = json!({ "messages": user("Count to three."), "max_tokens": 8, "temperature": 0 });
    let before = server.post_json("/v1/chat/completions", &short).json();
    let long = json!({ "messages": user("Tell a long story."), "max_tokens": 300, "temperature": 0,
        "logit_bias": no_end_tokens(), "stream": true });

    // The first stream runs (its headers come with its first chunk), the second waits.
    let mut running = server.stream(&long);
    assert_eq!(running.status, 200);
    assert!(running.next_data().is_some());
    let waiting = server.send(
        "POST",
        "/v1/chat/completions",
        &[],
        json!({ "messages": user("hi"), "max_tokens": 2, "stream": true }).to_string().as_bytes(),
    );
    poll(&server, "/health", |h| h["queue"]["waiting"] == 1);
    let refused = server.post_json("/v1/chat/completions", &short);
    assert_eq!(error_of(&refused), (429, json!("requests"), Value::Null, json!("rate_limit_exceeded")));
    let retry_after: u64 = refused.header("Retry-After").expect("a Retry-After header").parse().expect("seconds");
    assert!(retry_after >= 1);

    // Hanging up mid-stream aborts that generation; the waiting request then runs.
    running.disconnect();
    let mut waiting = serve_http::EventStream::from_stream(waiting);
    assert_eq!(waiting.status, 200);
    let waited = chunks(waiting.rest());
    assert!(waited.iter().any(|c| c["choices"][0]["finish_reason"].is_string()), "{waited:?}");
    let after = server.post_json("/v1/chat/completions", &short);
    assert_eq!(after.status, 200);
    assert_eq!(answer(&after.json()), answer(&before), "the next request is unaffected");
    let health = server.get("/health").json();
    assert_eq!(health["requests"]["aborted"], 1, "{health}");
    assert_eq!(health["queue"], json!({ "capacity": 1, "waiting": 0, "running": 0 }));
    assert!(server.stderr().contains("aborted after"), "{}", server.stderr());
}

#[test]
fn a_client_that_waits_for_each_answer_is_never_refused() {
    // With `--queue 0` only the running request has a place: a request's place must be free by
    // the time its answer arrives, or the client's next request is refused with a 429.
    let server = start(&["--queue", "0"]);
    for i in 0..60 {
        let request = json!({ "messages": user("hi"), "max_tokens": 1, "stream": i % 2 == 1 });
        let response = server.post_json("/v1/chat/completions", &request);
        assert_eq!(response.status, 200, "request {i}: {}", response.text());
    }
}

#[test]
fn the_prompt_cache_keeps_to_the_budget_it_is_given() {
    // Prompts that differ after a long shared start: each one saves the one before it as a
    // prefix, as far as the budget allows.
    let prompts = |server: &Server| {
        for topic in ["rivers", "bread", "owls", "salt"] {
            let text = format!("{}Now tell me about {topic}.", "Answer briefly, kindly and in plain words. ".repeat(6));
            let response = server.post_json("/v1/chat/completions", &json!({ "messages": user(&text), "max_tokens": 1 }));
            assert_eq!(response.status, 200, "{}", response.text());
        }
        server.get("/health").json()["prompt_cache"].clone()
    };
    let none = prompts(&start(&["--prompt-cache", "0"]));
    assert_eq!((none["budget_bytes"].as_u64(), none["saved_prefixes"].as_u64()), (Some(0), Some(0)), "{none}");
    assert!(none["live_tokens"].as_u64() > Some(0), "the live sequence is kept: {none}");
    let small = prompts(&start(&["--prompt-cache", "64K"]));
    assert_eq!(small["budget_bytes"].as_u64(), Some(64 << 10), "{small}");
    assert!(small["saved_bytes"].as_u64() <= Some(64 << 10), "{small}");
}

/// `usage.timings.queue_seconds` of a completion or a stream's usage chunk.
fn queue_seconds(usage_holder: &Value) -> f64 {
    let seconds = usage_holder.pointer("/usage/timings/queue_seconds").and_then(Value::as_f64);
    seconds.unwrap_or_else(|| panic!("usage.timings.queue_seconds: {usage_holder}"))
}

#[test]
fn usage_reports_the_time_a_request_waited_in_the_queue() {
    // One request at a time: one runs while the others wait (the CPU backend runs several by default).
    let server = start(&["--parallel", "1"]);
    let short = json!({ "messages": user("Count to three."), "max_tokens": 4, "temperature": 0 });
    let alone = queue_seconds(&server.post_json("/v1/chat/completions", &short).json());
    assert!((0.0..1.0).contains(&alone), "a request alone hardly waits: {alone}");

    // A long stream runs; a short request sent meanwhile waits for it to end.
    let long = json!({ "messages": user("Tell a long story."), "max_tokens": 300, "temperature": 0,
        "logit_bias": no_end_tokens(), "stream": true, "stream_options": { "include_usage": true } });
    let mut running = server.stream(&long);
    assert!(running.next_data().is_some(), "the long request has started");
    let (waited, client_seconds, behind_seconds) = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            let sent = std::time::Instant::now();
            let reply = server.post_json("/v1/chat/completions", &short);
            assert_eq!(reply.status, 200, "{}", reply.text());
            (reply.json(), sent.elapsed().as_secs_f64())
        });
        poll(&server, "/health", |h| h["queue"]["waiting"] == 1);
        let queued = std::time::Instant::now();
        let long_chunks = chunks(running.rest());
        let behind_seconds = queued.elapsed().as_secs_f64();
        let long_wait = queue_seconds(long_chunks.last().unwrap());
        assert!((0.0..1.0).contains(&long_wait), "the long request did not wait: {long_wait}");
        let (waited, client_seconds) = waiting.join().unwrap();
        (waited, client_seconds, behind_seconds)
    });
    let waited = queue_seconds(&waited);
    assert!(waited > alone, "{waited} s behind the long request, {alone} s alone");
    assert!(waited <= client_seconds, "the wait is part of what the client saw: {waited} > {client_seconds}");
    // It waited at least for the rest of the long request, seen from the moment /health
    // showed it queued (less a margin for the client reading the stream late).
    assert!(waited >= 0.5 * behind_seconds, "{waited} s waited, the long request ran {behind_seconds} s more");
}

/// A `multipart/form-data` upload of `content` as `name` with `purpose=batch`.
fn upload(server: &Server, name: &str, content: &str) -> serve_http::Response {
    upload_with(server, name, content, &[])
}

/// An upload with more form fields (`expires_after[...]`).
fn upload_with(server: &Server, name: &str, content: &str, fields: &[(&str, &str)]) -> serve_http::Response {
    let boundary = "webvlm-test-boundary";
    let mut body = String::new();
    for (field, value) in [("purpose", "batch")].iter().chain(fields) {
        body += &format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n");
    }
    body += &format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: application/jsonl\r\n\r\n{content}\r\n--{boundary}--\r\n"
    );
    let content_type = format!("multipart/form-data; boundary={boundary}");
    server.request("POST", "/v1/files", &[("Content-Type", &content_type)], body.as_bytes())
}

fn batch_line(custom_id: &str, body: Value) -> String {
    json!({ "custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body }).to_string()
}

fn create_batch(server: &Server, input: &str) -> Value {
    let file = upload(server, "requests.jsonl", input);
    assert_eq!(file.status, 200, "{}", file.text());
    let file = file.json();
    assert_eq!(
        (file["object"].as_str(), file["purpose"].as_str(), file["bytes"].as_u64()),
        (Some("file"), Some("batch"), Some(input.len() as u64))
    );
    assert_eq!(server.get(&format!("/v1/files/{}", file["id"].as_str().unwrap())).json(), file);
    assert_eq!(server.get(&format!("/v1/files/{}/content", file["id"].as_str().unwrap())).text(), input);
    let create = json!({ "input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h" });
    let batch = server.post_json("/v1/batches", &create);
    assert_eq!(batch.status, 200, "{}", batch.text());
    let batch = batch.json();
    assert_eq!((batch["object"].as_str(), batch["input_file_id"].as_str()), (Some("batch"), file["id"].as_str()));
    batch
}

/// The lines of a result file by `custom_id` (each id once).
fn result_lines(server: &Server, file_id: &Value) -> HashMap<String, Value> {
    let Some(id) = file_id.as_str() else { return HashMap::new() };
    let file = server.get(&format!("/v1/files/{id}")).json();
    assert_eq!(file["purpose"], "batch_output");
    let mut lines = HashMap::new();
    for line in server.get(&format!("/v1/files/{id}/content")).text().lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        assert!(line["id"].as_str().is_some_and(|id| id.starts_with("batch_req_")));
        let custom_id = line["custom_id"].as_str().unwrap().to_string();
        assert!(lines.insert(custom_id, line).is_none(), "each custom_id once");
    }
    lines
}

#[test]
fn batches_round_trip_and_cancel() {
    // One request at a time: one runs while the others wait (the CPU backend runs several by default).
    let server = start(&["--parallel", "1"]);
    let bodies = [
        ("colors", json!({ "messages": user("Name a color."), "max_tokens": 6, "temperature": 0 })),
        ("sampled", json!({ "messages": user("Name a fruit."), "max_tokens": 5, "temperature": 0.8, "seed": 3 })),
        ("bad", json!({ "messages": user("hi"), "temperature": -1 })),
    ];
    let input: String = bodies.iter().map(|(id, body)| batch_line(id, body.clone()) + "\n").collect();
    let batch = create_batch(&server, &input);
    let path = format!("/v1/batches/{}", batch["id"].as_str().unwrap());
    let done = poll(&server, &path, |b| b["status"] == "completed");
    assert_eq!(done["request_counts"], json!({ "total": 3, "completed": 2, "failed": 1 }));
    assert!(done["completed_at"].as_u64().is_some() && done["in_progress_at"].as_u64().is_some());
    let outputs = result_lines(&server, &done["output_file_id"]);
    let errors = result_lines(&server, &done["error_file_id"]);
    assert_eq!((outputs.len(), errors.len()), (2, 1));
    for (custom_id, body) in &bodies[..2] {
        let line = &outputs[*custom_id];
        assert_eq!(line["response"]["status_code"], 200);
        assert_eq!(line["error"], Value::Null);
        let alone = server.post_json("/v1/chat/completions", body).json();
        assert_eq!(answer(&line["response"]["body"]), answer(&alone), "{custom_id}");
    }
    assert_eq!(errors["bad"]["response"]["status_code"], 400);
    assert_eq!(errors["bad"]["response"]["body"]["error"]["param"], "temperature");

    // A malformed input file fails the batch, naming the line.
    let failed = create_batch(&server, &format!("{}\nnot json\n", batch_line("a", bodies[0].1.clone())));
    let failed = poll(&server, &format!("/v1/batches/{}", failed["id"].as_str().unwrap()), |b| b["status"] == "failed");
    assert_eq!(failed["errors"]["data"][0]["line"], 2);
    assert_eq!(failed["errors"]["data"][0]["code"], "invalid_json_line");

    // Cancelling: the running request is aborted, the rest never run.
    let long =
        json!({ "messages": user("Tell a long story."), "max_tokens": 300, "temperature": 0, "logit_bias": no_end_tokens() });
    let input: String = ["x", "y", "z"].iter().map(|id| batch_line(id, long.clone()) + "\n").collect();
    let batch = create_batch(&server, &input);
    let path = format!("/v1/batches/{}", batch["id"].as_str().unwrap());
    poll(&server, "/health", |h| h["queue"]["running"] == 1);
    let cancelling = server.request("POST", &format!("{path}/cancel"), &[], b"").json();
    assert!(cancelling["status"] == "cancelling" && cancelling["cancelling_at"].as_u64().is_some(), "{cancelling}");
    let cancelled = poll(&server, &path, |b| b["status"] == "cancelled");
    assert!(cancelled["cancelled_at"].as_u64().is_some());
    let errors = result_lines(&server, &cancelled["error_file_id"]);
    assert_eq!(errors.len(), 3, "every request is accounted for: {errors:?}");
    assert!(errors.values().all(|l| l["error"]["code"] == "batch_cancelled" && l["response"].is_null()));
    assert_eq!(server.request("POST", &format!("{path}/cancel"), &[], b"").status, 400, "a cancelled batch stays cancelled");
    assert_eq!(server.post_json("/v1/chat/completions", &bodies[0].1).status, 200);

    // `output_expires_after` is checked as OpenAI checks it (applied: see
    // `files_are_bounded_and_expire`).
    let expiring = |seconds: u64| {
        json!({ "input_file_id": batch["input_file_id"], "endpoint": "/v1/chat/completions", "completion_window": "24h",
            "output_expires_after": { "anchor": "created_at", "seconds": seconds } })
    };
    let too_soon = server.post_json("/v1/batches", &expiring(60));
    assert_eq!(error_of(&too_soon), (400, json!("invalid_request_error"), json!("output_expires_after"), json!("invalid_value")));
    let expiring = server.post_json("/v1/batches", &expiring(3600));
    assert_eq!(expiring.status, 200, "{}", expiring.text());
}

/// The `(method, path)` pairs that `routes.rs` routes, read from its source: the table of
/// `every_route_but_health_needs_the_api_key` must name each one.
fn routed() -> Vec<(String, String)> {
    let source = include_str!("../src/bin/webvlm/serve/routes.rs");
    let mut routes = Vec::new();
    for line in source.lines().filter_map(|l| l.trim().strip_prefix(".route(\"")) {
        let (path, handlers) = line.split_once('"').expect("a quoted path");
        for method in ["get", "post", "delete", "put", "patch"] {
            let called = |sep: &str| handlers.contains(&format!("{sep}{method}("));
            if called(" ") || called(".") || called("(") {
                routes.push((method.to_ascii_uppercase(), path.to_string()));
            }
        }
    }
    routes.sort();
    routes
}

#[test]
fn every_route_but_health_needs_the_api_key() {
    let server = start(&["--api-key", "sesame", "--served-model-name", "tiny"]);
    let chat = json!({ "messages": user("hi"), "max_tokens": 1 }).to_string();
    let respond = json!({ "input": "hi", "max_output_tokens": 1 }).to_string();
    // (method, route as routes.rs names it (None: no route), path asked, body, status with the key)
    let table: [(&str, Option<&str>, &str, &str, u16); 19] = [
        ("POST", Some("/v1/chat/completions"), "/v1/chat/completions", &chat, 200),
        ("POST", Some("/v1/responses"), "/v1/responses", &respond, 200),
        ("GET", Some("/v1/responses/{response_id}"), "/v1/responses/resp_nope", "", 404),
        ("DELETE", Some("/v1/responses/{response_id}"), "/v1/responses/resp_nope", "", 404),
        ("GET", Some("/v1/models"), "/v1/models", "", 200),
        ("GET", Some("/v1/models/{model}"), "/v1/models/tiny", "", 200),
        ("POST", Some("/v1/files"), "/v1/files", "", 400),
        ("GET", Some("/v1/files"), "/v1/files", "", 200),
        ("GET", Some("/v1/files/{file_id}"), "/v1/files/file-nope", "", 404),
        ("DELETE", Some("/v1/files/{file_id}"), "/v1/files/file-nope", "", 404),
        ("GET", Some("/v1/files/{file_id}/content"), "/v1/files/file-nope/content", "", 404),
        ("POST", Some("/v1/batches"), "/v1/batches", "{}", 400),
        ("GET", Some("/v1/batches"), "/v1/batches", "", 200),
        ("GET", Some("/v1/batches/{batch_id}"), "/v1/batches/batch_nope", "", 404),
        ("POST", Some("/v1/batches/{batch_id}/cancel"), "/v1/batches/batch_nope/cancel", "", 404),
        // Unknown routes and wrong methods need the key too: nothing tells which routes exist.
        ("GET", None, "/v1/embeddings", "", 404),
        ("GET", Some("/metrics"), "/metrics", "", 200),
        ("GET", None, "/v1/completions", "", 404),
        ("DELETE", None, "/v1/models", "", 405),
    ];
    let mut tabled: Vec<(String, String)> =
        table.iter().filter_map(|(method, route, ..)| Some((method.to_string(), (*route)?.to_string()))).collect();
    tabled.sort();
    let mut public = vec![("GET".to_string(), "/health".to_string())];
    public.extend(tabled);
    public.sort();
    assert_eq!(public, routed(), "a route is missing from this table (or from routes.rs)");

    let refused = (401, json!("invalid_request_error"), Value::Null, json!("invalid_api_key"));
    for (method, _, path, body, with_key) in table {
        for auth in [None, Some("Bearer sesamf"), Some("Bearer "), Some("Basic sesame"), Some("sesame")] {
            let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
            let response = server.request(method, path, &headers, body.as_bytes());
            assert_eq!(error_of(&response), refused, "{method} {path} with {auth:?}");
        }
        for auth in ["Bearer sesame", "bearer sesame"] {
            let response = server.request(method, path, &[("Authorization", auth)], body.as_bytes());
            assert_eq!(response.status, with_key, "{method} {path} with {auth:?}: {}", response.text());
        }
    }
    // Public on purpose: load balancers and probes carry no key.
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(server.request("GET", "/health", &[("Authorization", "Bearer wrong")], b"").status, 200);
}

#[test]
fn a_full_queue_says_when_to_retry_from_the_recent_run_times() {
    // One request at a time: one runs while the others wait (the CPU backend runs several by default).
    let server = start(&["--queue", "1", "--parallel", "1"]);
    assert_eq!(server.get("/health").json()["requests"]["mean_run_seconds"], 1.0, "1 s before any request ran");
    // One long request sets the recent mean run time.
    let long = json!({ "messages": user("Tell a long story."), "max_tokens": 400, "temperature": 0,
        "logit_bias": no_end_tokens() });
    assert_eq!(server.post_json("/v1/chat/completions", &long).status, 200);
    let mean = server.get("/health").json()["requests"]["mean_run_seconds"].as_f64().expect("mean_run_seconds");

    let mut streamed = long.clone();
    streamed["stream"] = json!(true);
    let mut running = server.stream(&streamed);
    assert!(running.next_data().is_some());
    let _waiting = server.send("POST", "/v1/chat/completions", &[], streamed.to_string().as_bytes());
    let health = poll(&server, "/health", |h| h["queue"]["waiting"] == 1);
    assert_eq!((health["queue"]["running"].as_u64(), health["requests"]["mean_run_seconds"].as_f64()), (Some(1), Some(mean)));
    let refused = server.post_json("/v1/chat/completions", &long);
    assert_eq!(refused.status, 429);
    let retry_after: u64 = refused.header("Retry-After").expect("a Retry-After header").parse().expect("whole seconds");
    // The mean run time times the two requests ahead (one running, one waiting), in 1..=60.
    let expected = ((mean * 2.0).ceil() as u64).clamp(1, 60);
    assert_eq!(retry_after, expected, "mean run time {mean} s");
    running.disconnect();
}

#[test]
fn waiting_requests_are_served_in_arrival_order() {
    // On lavapipe the long request holds the engine while four clients queue; the CPU backend
    // would finish it first.
    let server = start(&["--queue", "4", "--backend", "gpu"]);
    let long = json!({ "messages": user("Tell a long story."), "max_tokens": 300, "temperature": 0,
        "logit_bias": no_end_tokens(), "stream": true });
    let mut running = server.stream(&long);
    assert!(running.next_data().is_some(), "the long request has started");
    let base = std::time::Instant::now();
    // Four clients, each on its own connection, each sent once the one before is queued; every
    // request has the same length. A request starts at its send time plus its queue wait.
    let starts: Vec<f64> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|i| {
                let server = &server;
                let client = scope.spawn(move || {
                    let request = json!({ "messages": user("Count."), "max_tokens": 12, "temperature": 0,
                        "logit_bias": no_end_tokens() });
                    let sent = base.elapsed().as_secs_f64();
                    let reply = server.post_json("/v1/chat/completions", &request);
                    assert_eq!(reply.status, 200, "client {i}: {}", reply.text());
                    sent + queue_seconds(&reply.json())
                });
                poll(server, "/health", |h| h["queue"]["waiting"] == i + 1);
                client
            })
            .collect();
        running.disconnect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "served in arrival order: started at {starts:?} s");
}

fn error_code(response: &serve_http::Response) -> (u16, String, String) {
    let error = &response.json()["error"];
    (response.status, error["code"].as_str().unwrap_or_default().into(), error["message"].as_str().unwrap_or_default().into())
}

#[test]
fn files_are_bounded_and_expire() {
    let server = start(&["--max-files", "2", "--max-files-bytes", "2000"]);
    let input = batch_line("a", json!({ "messages": user("hi"), "max_tokens": 2 })) + "\n";

    // `expires_after` sets `expires_at`; out of OpenAI's range it is refused.
    let expiring = [("expires_after[anchor]", "created_at"), ("expires_after[seconds]", "3600")];
    let a = upload_with(&server, "a.jsonl", &input, &expiring);
    assert_eq!(a.status, 200, "{}", a.text());
    let a = a.json();
    assert_eq!(a["expires_at"].as_u64(), a["created_at"].as_u64().map(|t| t + 3600), "{a}");
    let a_id = a["id"].as_str().unwrap();
    assert_eq!(server.get(&format!("/v1/files/{a_id}")).json()["expires_at"], a["expires_at"]);
    for fields in [
        [("expires_after[anchor]", "created_at"), ("expires_after[seconds]", "60")],
        [("expires_after[anchor]", "last_active_at"), ("expires_after[seconds]", "3600")],
        [("expires_after[anchor]", "created_at"), ("expires_after[seconds]", "soon")],
    ] {
        let refused = upload_with(&server, "b.jsonl", &input, &fields);
        assert_eq!(error_of(&refused), (400, json!("invalid_request_error"), json!("expires_after"), json!("invalid_value")));
    }
    let refused = upload_with(&server, "b.jsonl", &input, &[("expires_after[seconds]", "3600")]);
    assert_eq!(refused.status, 400, "the anchor is required with the seconds");

    // Past the bytes, then the count: refused, naming the limit.
    let (status, code, message) = error_code(&upload(&server, "big.jsonl", &"x".repeat(1900)));
    assert_eq!((status, code.as_str()), (400, "storage_limit_exceeded"));
    assert!(message.contains("--max-files-bytes") && message.contains("2000"), "{message}");
    let b = upload(&server, "b.jsonl", &input).json();
    let (status, code, message) = error_code(&upload(&server, "c.jsonl", &input));
    assert_eq!((status, code.as_str()), (400, "storage_limit_exceeded"));
    assert!(message.contains("at most 2 files (--max-files)"), "{message}");
    // A batch stores its results as files: refused while the store is full.
    let create = |expiry: Value| {
        let body = json!({ "input_file_id": a_id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
            "output_expires_after": expiry });
        server.post_json("/v1/batches", &body)
    };
    assert_eq!(error_code(&create(Value::Null)).1, "storage_limit_exceeded");
    let b_path = format!("/v1/files/{}", b["id"].as_str().unwrap());
    assert_eq!(server.request("DELETE", &b_path, &[], b"").status, 200);
    assert_eq!(server.get(&b_path).status, 404);

    // The results expire after the batch's `output_expires_after`.
    let batch = create(json!({ "anchor": "created_at", "seconds": 7200 }));
    assert_eq!(batch.status, 200, "{}", batch.text());
    let done = poll(&server, &format!("/v1/batches/{}", batch.json()["id"].as_str().unwrap()), |b| b["status"] == "completed");
    let output = server.get(&format!("/v1/files/{}", done["output_file_id"].as_str().unwrap())).json();
    assert_eq!(output["expires_at"].as_u64(), output["created_at"].as_u64().map(|t| t + 7200), "{output}");
    let listed = server.get("/v1/files").json();
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2), "{listed}");
}

#[test]
fn cancelling_a_batch_mid_line_leaves_it_consistent() {
    // One request at a time: one runs while the others wait (the CPU backend runs several by default).
    let server = start(&["--max-batches", "1", "--parallel", "1"]);
    let long =
        json!({ "messages": user("Tell a long story."), "max_tokens": 300, "temperature": 0, "logit_bias": no_end_tokens() });
    let short = json!({ "messages": user("Name a color."), "max_tokens": 4, "temperature": 0 });
    let input = [batch_line("short", short.clone()), batch_line("long1", long.clone()), batch_line("long2", long)].join("\n");
    let batch = create_batch(&server, &input);
    let path = format!("/v1/batches/{}", batch["id"].as_str().unwrap());
    // The first line is done and the second running.
    poll(&server, &path, |b| b["request_counts"]["completed"] == 1);
    poll(&server, "/health", |h| h["queue"]["running"] == 1);

    // The one batch kept is running: a second is refused, naming the limit.
    let create =
        json!({ "input_file_id": batch["input_file_id"], "endpoint": "/v1/chat/completions", "completion_window": "24h" });
    let (status, code, message) = error_code(&server.post_json("/v1/batches", &create));
    assert_eq!((status, code.as_str()), (400, "batch_limit_exceeded"));
    assert!(message.contains("--max-batches"), "{message}");

    assert_eq!(server.request("POST", &format!("{path}/cancel"), &[], b"").json()["status"], "cancelling");
    let cancelled = poll(&server, &path, |b| b["status"] == "cancelled");
    assert_eq!(cancelled["request_counts"], json!({ "total": 3, "completed": 1, "failed": 2 }), "{cancelled}");
    let outputs = result_lines(&server, &cancelled["output_file_id"]);
    let errors = result_lines(&server, &cancelled["error_file_id"]);
    assert_eq!(outputs.keys().collect::<Vec<_>>(), ["short"], "only the completed line is an output");
    assert_eq!(outputs["short"]["response"]["status_code"], 200);
    assert_eq!(outputs["short"]["response"]["body"]["choices"][0]["finish_reason"], "length");
    assert_eq!(errors.len(), 2);
    assert!(errors.values().all(|l| l["error"]["code"] == "batch_cancelled" && l["response"].is_null()), "{errors:?}");
    assert!(cancelled["cancelled_at"].as_u64().is_some() && cancelled["completed_at"].is_null());

    // A finished batch is evicted for a new one (its files stay).
    let next = server.post_json("/v1/batches", &create);
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(server.get(&path).status, 404);
    let listed = server.get("/v1/batches").json();
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(server.get(&format!("/v1/files/{}", cancelled["output_file_id"].as_str().unwrap())).status, 200);
}

/// `/metrics` in Prometheus' text format: after two completions of 4 tokens, the request and
/// token counters say so, each histogram's buckets are cumulative and end in its count, and
/// every sample line is `name{labels} number` of a declared metric.
#[test]
fn metrics_count_requests_tokens_and_latencies() {
    let server = start(&["--served-model-name", "tiny"]);
    let request = json!({ "messages": user("hi"), "max_tokens": 4, "temperature": 0 });
    let mut prompt_tokens = 0;
    for _ in 0..2 {
        let reply = server.post_json("/v1/chat/completions", &request);
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["usage"]["completion_tokens"], 4, "a reply shorter than asked: nothing to count");
        prompt_tokens += reply.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    }
    let response = server.get("/metrics");
    assert_eq!(response.status, 200);
    let text = response.text();
    let mut declared = Vec::new();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            declared.push(rest.split_whitespace().next().unwrap().to_string());
        } else if !line.starts_with('#') {
            let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line:?}"));
            let base = name.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| base.strip_suffix(s)).unwrap_or(base);
            assert!(declared.iter().any(|d| d == base || d == family), "{line:?} has no TYPE line");
            samples.insert(name.to_string(), value);
        }
    }
    let at = |name: &str| *samples.get(name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    assert_eq!(at("webvlm_requests_total{outcome=\"completed\"}"), 2.0);
    assert_eq!(at("webvlm_requests_total{outcome=\"failed\"}"), 0.0);
    assert_eq!(at("webvlm_requests_running"), 0.0);
    assert_eq!(at("webvlm_generation_tokens_total"), 8.0);
    assert_eq!(at("webvlm_prompt_tokens_total"), prompt_tokens as f64);
    assert!(at("webvlm_prompt_cached_tokens_total") > 0.0, "the second request reuses the first one's prompt");
    for (histogram, count) in [("webvlm_time_to_first_token_seconds", 2.0), ("webvlm_inter_token_latency_seconds", 6.0)] {
        assert_eq!(at(&format!("{histogram}_count")), count, "{histogram}");
        assert_eq!(at(&format!("{histogram}_bucket{{le=\"+Inf\"}}")), count);
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{histogram}_bucket")))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
            .collect();
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{histogram}: {buckets:?}");
        assert!(at(&format!("{histogram}_sum")) > 0.0);
    }
}

/// `--kv-pool` of one context (512 rows) under four long requests: the newest sequences are preempted
/// and recomputed (counted in /metrics), never failed, and every answer is the one the
/// request gets alone; /health reports the pool.
#[test]
fn a_kv_pool_smaller_than_the_slots_preempts_and_answers_as_one_at_a_time() {
    let requests: Vec<Value> = ["Tell a long story.", "Count to a hundred.", "Describe the sea at night.", "hi"]
        .iter()
        .map(|text| json!({ "messages": user(text), "max_tokens": 160, "temperature": 0, "logit_bias": no_end_tokens() }))
        .collect();
    let one = start(&["--backend", "cpu"]);
    let want: Vec<Value> = requests.iter().map(|r| answer(&one.post_json("/v1/chat/completions", r).json())).collect();
    drop(one);
    let pooled = start(&["--backend", "cpu", "--parallel", "4", "--kv-pool", "512"]);
    let got: Vec<Value> = std::thread::scope(|scope| {
        let clients: Vec<_> = requests
            .iter()
            .map(|r| {
                let pooled = &pooled;
                scope.spawn(move || answer(&pooled.post_json("/v1/chat/completions", r).json()))
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (i, (got, want)) in got.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "request {i}");
    }
    let metrics = pooled.get("/metrics").text();
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name} in {metrics}"));
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    };
    assert!(value("webvlm_preemptions_total") > 0.0, "{metrics}");
    assert_eq!(value("webvlm_failed_steps_total"), 0.0, "{metrics}");
    assert_eq!(value("webvlm_kv_cache_capacity_tokens"), 512.0);
    assert!(value("webvlm_kv_cache_held_tokens") <= 512.0, "{metrics}");
    let health = pooled.get("/health").json();
    assert_eq!(health["slots"]["kv_pool_tokens"], 512, "{health}");
    assert_eq!(health["requests"]["completed"], 4, "{health}");
    drop(pooled);
    let mut args = engine_flags();
    args.extend(["--parallel", "2", "--kv-pool", "511"].map(String::from));
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_webvlm")).arg("serve").args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--kv-pool") && stderr.contains("at least 512"), "{stderr}");
}

#[test]
fn parallel_requests_and_batch_lines_run_together_and_answer_as_one_at_a_time() {
    let long = |stream: bool| {
        json!({ "messages": user("Tell a long story."), "max_tokens": 120, "temperature": 0,
            "logit_bias": no_end_tokens(), "stream": stream })
    };
    let requests = [
        json!({ "messages": user("Count to three."), "max_tokens": 8, "temperature": 0 }),
        long(false),
        json!({ "messages": user("hi"), "max_tokens": 12, "temperature": 0.8, "seed": 3, "frequency_penalty": 0.4 }),
        json!({ "messages": user("Give me JSON."), "max_tokens": 24, "temperature": 0, "response_format": { "type": "json_object" } }),
        json!({ "messages": user("Name a color."), "max_tokens": 6, "temperature": 0, "logprobs": true, "top_logprobs": 2 }),
        json!({ "messages": user("Another question, longer than the others are."), "max_tokens": 10, "temperature": 0 }),
        json!({ "messages": user("Pick a word."), "max_tokens": 7, "temperature": 1.2, "seed": 9, "n": 3 }),
    ];
    let one = start(&["--backend", "cpu"]);
    let want: Vec<Value> = requests.iter().map(|r| answer(&one.post_json("/v1/chat/completions", r).json())).collect();
    let choices = want[6]["choices"].as_array().unwrap();
    assert_eq!(choices.iter().map(|c| c["index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2], "n = 3: {}", want[6]);
    drop(one);
    let many = start(&["--backend", "cpu", "--parallel", "4"]);
    let got: Vec<Value> = std::thread::scope(|scope| {
        let clients: Vec<_> = requests
            .iter()
            .map(|r| {
                let many = &many;
                scope.spawn(move || answer(&many.post_json("/v1/chat/completions", r).json()))
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (i, (got, want)) in got.iter().zip(&want).enumerate() {
        assert_same_answer(got, want, &format!("request {i}"));
    }
    // A short request is answered while a long stream still runs.
    let mut running = many.stream(&long(true));
    let first = running.next_data().expect("the long stream started");
    let short = many.post_json("/v1/chat/completions", &requests[0]);
    assert_eq!(answer(&short.json()), want[0]);
    let health = many.get("/health").json();
    assert_eq!(health["queue"]["running"], 1, "the long stream is still running");
    let (slots, sequence) = (&health["slots"], &health["slots"]["sequences"][0]);
    assert_eq!(
        (slots["total"].as_u64(), slots["busy"].as_u64(), sequence["state"].as_str()),
        (Some(4), Some(1), Some("decoding")),
        "{health}"
    );
    let (prompt, kv) = (sequence["prompt_tokens"].as_u64().unwrap(), sequence["kv_tokens"].as_u64().unwrap());
    assert!(prompt > 0 && kv >= prompt, "{health}");
    let metrics = many.get("/metrics").text();
    for line in ["webvlm_slots{state=\"decoding\"} 1", "webvlm_slots{state=\"idle\"} 3", "webvlm_slots{state=\"prefilling\"} 0"] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    let capacity = 4 * slots["kv_tokens_per_slot"].as_u64().unwrap();
    assert!(metrics.lines().any(|l| l == format!("webvlm_kv_cache_capacity_tokens {capacity}")), "{metrics}");
    let mut streamed = chunks(running.rest());
    streamed.insert(0, serde_json::from_str(&first).unwrap());
    assert_eq!(json!(content_of(&streamed)), want[1]["choices"][0]["message"]["content"]);
    let health = many.get("/health").json();
    assert_eq!((health["requests"]["completed"].as_u64(), health["queue"]["running"].as_u64()), (Some(9), Some(0)), "{health}");
    assert_eq!(health["slots"]["busy"], 0, "{health}");
    // A batch's lines run together and give the same answers, in the input's order.
    let input: Vec<String> = requests.iter().enumerate().map(|(i, r)| batch_line(&format!("r{i}"), r.clone())).collect();
    let batch = create_batch(&many, &(input.join("\n") + "\n"));
    let done = poll(&many, &format!("/v1/batches/{}", batch["id"].as_str().unwrap()), |b| b["status"] == "completed");
    assert_eq!(done["request_counts"], json!({ "total": 7, "completed": 7, "failed": 0 }));
    let id = done["output_file_id"].as_str().unwrap();
    let lines: Vec<Value> =
        many.get(&format!("/v1/files/{id}/content")).text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["custom_id"], format!("r{i}"), "in the input's order");
        assert_same_answer(&answer(&line["response"]["body"]), &want[i], &format!("batch line {i}"));
    }
    // A request of 4 choices waits for 4 free slots, counted as waiting, not running, while an
    // unread stream keeps one; that stream's client leaving frees the slot, and it runs.
    let unread = many.stream(&json!({ "messages": user("Tell a long story."), "max_tokens": 440, "temperature": 0,
        "logit_bias": no_end_tokens(), "stream": true }));
    let four = json!({ "messages": user("Pick a word."), "max_tokens": 5, "temperature": 1.0, "seed": 4, "n": 4 });
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| many.post_json("/v1/chat/completions", &four).json());
        poll(&many, "/health", |h| h["queue"]["waiting"] == 1);
        // Long enough for the engine's loop to have taken it from the queue many times over.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let health = many.get("/health").json();
        assert_eq!((&health["queue"]["waiting"], &health["queue"]["running"]), (&json!(1), &json!(1)), "{health}");
        drop(unread);
        let answered = waiting.join().unwrap();
        assert_eq!(answered["choices"].as_array().map(Vec::len), Some(4), "{answered}");
    });
}
