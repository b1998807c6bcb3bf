//! OpenAI's chat-completions API on the native engine (`webvlm::api`, the same code the
//! browser package runs): requests checked before any work with OpenAI-style errors,
//! seeded sampling, stop strings across token boundaries, logprobs against the `logits`
//! command, logit bias, the prompt cache on a second chat turn, abort then a new request,
//! JSON-schema output from the real SmolLM2 model, a batch with broken images, and the tiny
//! Qwen3.5 VLM's JSON-schema output, logprobs and batch.

use crate::common;
use common::*;

use std::cell::Cell;
use std::rc::Rc;

use serde_json::{json, Value};
use webvlm::api::many::{run_many, ManyEvent, ManyRequest, ManySource};
use webvlm::api::{batch, run, ApiError, ChatRequest};
use webvlm::engine::{Engine, EngineError};
use webvlm::gguf::MappedGguf;
use webvlm::model::ContextOptions;
use webvlm::source::Eager;

/// SmolLM2 on the CPU backend (what these tests check is the API, not the kernels; the GPU
/// runs the real model in tests/model_smollm2.rs).
fn smollm2_engine() -> Engine {
    let model = MappedGguf::open(common::smollm2::model_path(&common::smollm2::reference())).unwrap();
    Engine::builder(cpu())
        .context(ContextOptions { max_ctx: 1024, max_chunk: 64, ..Default::default() })
        .load(&mut Eager(&model))
        .unwrap()
}

fn no_files(url: &str) -> Result<Vec<u8>, EngineError> {
    read_tiny_vlm_image(url)
}

/// Runs `request` (JSON) to completion; the streamed chunks are returned too.
fn complete(e: &mut Engine, request: Value) -> Result<(Value, Vec<Value>), ApiError> {
    let req = ChatRequest::from_value(request, e.decoder().cfg.vocab as usize)?;
    let mut chunks = Vec::new();
    let out = pollster::block_on(run(e, &req, &mut no_files, None, |c| {
        chunks.push(c);
        None
    }))?;
    Ok((out, chunks))
}

fn content(reply: &Value) -> &str {
    reply["choices"][0]["message"]["content"].as_str().unwrap()
}

fn user(text: &str) -> Value {
    json!([{ "role": "user", "content": text }])
}

#[test]
fn bad_requests_are_openai_errors_naming_the_field() {
    let e = tiny_vlm_engine();
    let vocab = e.decoder().cfg.vocab as usize;
    let m = user("hi");
    let cases = [
        (json!({ "messages": m, "temprature": 0.5 }), "temprature", "unknown_parameter"),
        (json!({ "messages": m, "temperature": 2.5 }), "temperature", "invalid_value"),
        (json!({ "messages": m, "temperature": "hot" }), "temperature", "invalid_type"),
        (json!({ "messages": m, "top_p": 0 }), "top_p", "invalid_value"),
        (json!({ "messages": m, "min_p": 1.5 }), "min_p", "invalid_value"),
        (json!({ "messages": m, "frequency_penalty": -3 }), "frequency_penalty", "invalid_value"),
        (json!({ "messages": m, "logit_bias": { "abc": 1 } }), "logit_bias", "invalid_value"),
        (json!({ "messages": m, "logit_bias": { "999999999": 1 } }), "logit_bias", "invalid_value"),
        (json!({ "messages": m, "logit_bias": { "5": 101 } }), "logit_bias", "invalid_value"),
        (json!({ "messages": m, "max_tokens": 0 }), "max_tokens", "invalid_value"),
        (json!({ "messages": m, "n": 0 }), "n", "invalid_value"),
        (json!({ "messages": m, "n": 17 }), "n", "invalid_value"),
        (json!({ "messages": m, "stop": ["a", "b", "c", "d", "e"] }), "stop", "invalid_value"),
        (json!({ "messages": m, "top_logprobs": 3 }), "top_logprobs", "invalid_value"),
        (json!({ "messages": m, "logprobs": true, "top_logprobs": 21 }), "top_logprobs", "invalid_value"),
        (json!({ "messages": m, "stream_options": { "include_usage": true } }), "stream_options", "invalid_value"),
        (json!({ "messages": m, "response_format": { "type": "xml" } }), "response_format.type", "invalid_value"),
        (json!({ "messages": [] }), "messages", "invalid_value"),
        (json!({ "messages": [{ "role": "robot", "content": "x" }] }), "messages[0].role", "invalid_value"),
    ];
    for (request, param, code) in cases {
        let err = ChatRequest::from_value(request.clone(), vocab).unwrap_err();
        assert_eq!((err.param.as_deref(), err.code), (Some(param), Some(code)), "{request}: {err:?}");
        assert_eq!(err.kind, "invalid_request_error");
        assert_eq!(err.to_json()["error"]["param"], param);
    }
    let ok = json!({ "messages": m, "temperature": null, "stop": "x", "seed": -5, "model": "any", "n": 1 });
    ChatRequest::from_value(ok, vocab).unwrap();
}

/// `chat_template_kwargs` (vLLM's): a JSON object, at most 16 KiB, none of the variables
/// the request itself sets; `null` is "none".
#[test]
fn chat_template_kwargs_are_checked() {
    let vocab = 1000;
    let m = user("hi");
    let big = "x".repeat(webvlm::api::MAX_CHAT_TEMPLATE_KWARGS_BYTES);
    let cases = [
        (json!({ "messages": m, "chat_template_kwargs": "enable_thinking" }), "chat_template_kwargs", "invalid_type"),
        (json!({ "messages": m, "chat_template_kwargs": [1, 2] }), "chat_template_kwargs", "invalid_type"),
        (json!({ "messages": m, "chat_template_kwargs": false }), "chat_template_kwargs", "invalid_type"),
        (json!({ "messages": m, "chat_template_kwargs": { "notes": big } }), "chat_template_kwargs", "invalid_value"),
        (json!({ "messages": m, "chat_template_kwargs": { "messages": [] } }), "chat_template_kwargs.messages", "invalid_value"),
        (
            json!({ "messages": m, "chat_template_kwargs": { "add_generation_prompt": false } }),
            "chat_template_kwargs.add_generation_prompt",
            "invalid_value",
        ),
    ];
    for (request, param, code) in cases {
        let err = ChatRequest::from_value(request.clone(), vocab).unwrap_err();
        assert_eq!((err.param.as_deref(), err.code), (Some(param), Some(code)), "{err:?}");
        assert_eq!(err.kind, "invalid_request_error");
    }
    let ok = json!({ "messages": m, "chat_template_kwargs": { "enable_thinking": false, "tools": [{ "type": "function" }] } });
    let req = ChatRequest::from_value(ok, vocab).unwrap();
    assert_eq!(req.chat_template_kwargs.unwrap()["enable_thinking"], false);
    let none = ChatRequest::from_value(json!({ "messages": m, "chat_template_kwargs": null }), vocab).unwrap();
    assert!(none.chat_template_kwargs.is_none());
}

/// A model whose template writes no think tags answers as before: no `reasoning_content`,
/// and `chat_template_kwargs` it does not read change nothing.
#[test]
fn replies_without_think_tags_have_no_reasoning_content() {
    let model = gguf_with_template(&fixture(TINY_VLM).join("model.gguf"), webvlm::chat::CHATML_TEMPLATE);
    let mut e = Engine::builder(cpu())
        .context(ContextOptions { max_ctx: 512, max_chunk: 16, ..Default::default() })
        .load(&mut Eager(&model))
        .unwrap();
    let base = json!({ "messages": user("hi"), "max_tokens": 6, "temperature": 0 });
    let (plain, _) = complete(&mut e, base.clone()).unwrap();
    let mut with_kwargs = base.clone();
    with_kwargs["chat_template_kwargs"] = json!({ "enable_thinking": false });
    with_kwargs["stream"] = json!(true);
    let (reply, chunks) = complete(&mut e, with_kwargs).unwrap();
    assert_eq!(content(&reply), content(&plain));
    assert!(reply["choices"][0]["message"].get("reasoning_content").is_none());
    assert!(chunks.iter().all(|c| c["choices"][0]["delta"].get("reasoning_content").is_none()));
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, content(&plain));
}

/// The tiny VLM with a ChatML template that opens `<think>\n` at the generation prompt unless
/// `enable_thinking` is false (as Qwen3.5's does), rewritten in memory.
fn think_template_engine() -> Engine {
    const TEMPLATE: &str =
        "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}\
        {%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}\
        {%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}\
        {%- else %}{{ '<think>\\n' }}{%- endif %}{%- endif %}";
    let model = gguf_with_template(&fixture(TINY_VLM).join("model.gguf"), TEMPLATE);
    Engine::builder(cpu())
        .context(ContextOptions { max_ctx: 512, max_chunk: 16, ..Default::default() })
        .load(&mut Eager(&model))
        .unwrap()
}

/// With a template that leaves `<think>` open, the whole reply (no `</think>` in 8 random
/// tokens) is `reasoning_content`, streamed as `delta.reasoning_content` and never as
/// `content`; with `enable_thinking: false` the prompt closes the block and the same engine
/// answers in `content` with `reasoning_content` null.
#[test]
fn think_blocks_become_reasoning_content() {
    let mut e = think_template_engine();
    let base = json!({ "messages": user("hi"), "max_tokens": 8, "temperature": 0 });
    for stream in [false, true] {
        let mut req = base.clone();
        req["stream"] = json!(stream);
        let (reply, chunks) = complete(&mut e, req).unwrap();
        let message = &reply["choices"][0]["message"];
        let reasoning = message["reasoning_content"].as_str().expect("reasoning_content");
        assert!(!reasoning.is_empty() && !reasoning.contains("</think>"), "{reply}");
        assert_eq!(content(&reply), "");
        if stream {
            let deltas = |key: &str| -> String { chunks.iter().filter_map(|c| c["choices"][0]["delta"][key].as_str()).collect() };
            assert_eq!(deltas("reasoning_content"), reasoning);
            assert_eq!(deltas("content"), "");
        }

        let mut off = base.clone();
        off["stream"] = json!(stream);
        off["chat_template_kwargs"] = json!({ "enable_thinking": false });
        let (reply, chunks) = complete(&mut e, off).unwrap();
        assert!(reply["choices"][0]["message"]["reasoning_content"].is_null(), "{reply}");
        assert!(!content(&reply).is_empty());
        if stream {
            let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
            assert_eq!(streamed, content(&reply));
            assert!(chunks.iter().all(|c| c["choices"][0]["delta"].get("reasoning_content").is_none()));
        }
    }
}

#[test]
fn schema_and_length_errors_come_before_any_work() {
    let mut e = tiny_vlm_engine();
    let bad_schema =
        json!({ "type": "json_schema", "json_schema": { "name": "x", "schema": { "type": "nosuchtype" }, "strict": true } });
    let err = complete(&mut e, json!({ "messages": user("hi"), "response_format": bad_schema })).unwrap_err();
    assert_eq!((err.param.as_deref(), err.code), (Some("response_format"), Some("invalid_json_schema")), "{err:?}");
    let long = "word ".repeat(600);
    let err = complete(&mut e, json!({ "messages": user(&long) })).unwrap_err();
    assert_eq!(err.code, Some("context_length_exceeded"), "{err:?}");
    // `check` (what the browser's worker asks before fetching image URLs) refuses the same
    // requests, with images it never reads.
    let with_image = |text: &str| {
        json!([{ "role": "user", "content": [
        { "type": "image_url", "image_url": { "url": "https://example.com/never-fetched.png" } },
        { "type": "text", "text": text },
    ] }])
    };
    let check = |e: &mut Engine, body: Value| webvlm::api::check(e, &ChatRequest::from_value(body, 131072).unwrap());
    let err = check(&mut e, json!({ "messages": with_image(&long) })).unwrap_err();
    assert_eq!(err.code, Some("context_length_exceeded"), "{err:?}");
    assert!(err.message.contains("before its images"), "{}", err.message);
    let err = check(&mut e, json!({ "messages": with_image("hi"), "response_format": bad_schema })).unwrap_err();
    assert_eq!(err.code, Some("invalid_json_schema"), "{err:?}");
    check(&mut e, json!({ "messages": with_image("hi") })).unwrap();
    // The engine is still ready.
    let (reply, _) = complete(&mut e, json!({ "messages": user("hi"), "max_tokens": 3, "temperature": 0 })).unwrap();
    assert_eq!(reply["usage"]["completion_tokens"], 3);
}

#[test]
fn same_seed_same_output_on_both_samplers() {
    let mut e = tiny_vlm_engine();
    // GPU sampler (plain temperature / top-p) and host sampler (min-p forces the CPU path).
    for extra in [json!({}), json!({ "min_p": 0.01 })] {
        let request = |seed: i64| {
            let mut r =
                json!({ "messages": user("Tell me a story"), "max_tokens": 12, "temperature": 1.0, "top_p": 0.95, "seed": seed });
            r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            r
        };
        let a = content(&complete(&mut e, request(7)).unwrap().0).to_string();
        let b = content(&complete(&mut e, request(7)).unwrap().0).to_string();
        let c = content(&complete(&mut e, request(8)).unwrap().0).to_string();
        assert_eq!(a, b, "{extra}: same seed");
        assert_ne!(a, c, "{extra}: another seed gives another sample (random weights, temperature 1)");
    }
}

#[test]
fn unseeded_requests_draw_their_own_seed() {
    let mut e = tiny_vlm_engine();
    // GPU sampler and host sampler: without a seed, three samples at temperature 1 are not one
    // repeated answer (a fixed default seed would give the same text every time).
    for extra in [json!({}), json!({ "min_p": 0.01 })] {
        let mut request = json!({ "messages": user("Tell me a story"), "max_tokens": 12, "temperature": 1.0 });
        request.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let replies: Vec<String> = (0..3).map(|_| content(&complete(&mut e, request.clone()).unwrap().0).to_string()).collect();
        assert!(replies.iter().any(|r| r != &replies[0]), "{extra}: {replies:?}");
    }
}

#[test]
fn stop_strings_across_token_boundaries_are_trimmed() {
    let mut e = tiny_vlm_engine();
    let base = json!({ "tokens": [1, 3, 1784, 8961, 4], "max_tokens": 16, "temperature": 0 });
    let (full, _) = complete(&mut e, base.clone()).unwrap();
    let text = content(&full).to_string();
    // A stop string made of the end of one token's text and the start of the next.
    let pieces = pieces_of(&mut e, &base);
    let long = |p: &String| p.chars().count() >= 2;
    let i = (1..pieces.len()).find(|&i| long(&pieces[i - 1]) && long(&pieces[i])).expect("two adjacent multi-char tokens");
    let tail: String = pieces[i - 1].chars().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect();
    let head: String = pieces[i].chars().take(1).collect();
    let stop = format!("{tail}{head}");
    let at = text.find(&stop).expect("stop string in the text");
    let mut request = base.clone();
    request["stop"] = json!(["never-there", stop]);
    request["stream"] = json!(true);
    let (reply, chunks) = complete(&mut e, request).unwrap();
    assert_eq!(content(&reply), &text[..at]);
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, &text[..at], "streamed text stops before the stop string too");
}

/// The text of each generated token of a greedy request (from its logprobs entries).
fn pieces_of(e: &mut Engine, base: &Value) -> Vec<String> {
    let mut request = base.clone();
    request["logprobs"] = json!(true);
    let (reply, _) = complete(e, request).unwrap();
    reply["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["token"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn logprobs_are_the_log_softmax_of_the_logits_command() {
    let mut e = tiny_vlm_engine();
    let prompt = [1u32, 3, 1784, 8961, 4];
    let request =
        json!({ "tokens": prompt, "max_tokens": 6, "temperature": 0, "logprobs": true, "top_logprobs": 5, "stream": true });
    let (reply, chunks) = complete(&mut e, request).unwrap();
    let entries = reply["choices"][0]["logprobs"]["content"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 6);
    let streamed: Vec<&Value> =
        chunks.iter().filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array()).flatten().collect();
    assert_eq!(streamed.len(), 6, "every streamed token carries its logprob");
    // Teacher-forced logits of prompt + reply from the CLI, as .npy.
    let ids: Vec<u32> = prompt.iter().copied().chain(generated_ids(&mut e, &prompt, 6)).collect();
    let out = temp_path("api_logprobs.npy");
    let list = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let model = fixture(TINY_VLM).join("model.gguf");
    run_cli(&[
        "logits",
        "--backend",
        "gpu",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        &list,
        "--out",
        out.to_str().unwrap(),
    ]);
    let (shape, logits) = read_npy(&out);
    let vocab = shape[1];
    let mut worst = 0f64;
    for (k, entry) in entries.iter().enumerate() {
        let row = &logits[(prompt.len() - 1 + k) * vocab..][..vocab];
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = m + row.iter().map(|&l| (l as f64 - m).exp()).sum::<f64>().ln();
        let want = |id: u32| row[id as usize] as f64 - lse;
        let token = ids[prompt.len() + k];
        worst = worst.max((entry["logprob"].as_f64().unwrap() - want(token)).abs());
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        assert_eq!(top[0]["logprob"], entry["logprob"], "greedy: the chosen token is the most likely");
        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for (t, &id) in top.iter().zip(&order) {
            worst = worst.max((t["logprob"].as_f64().unwrap() - want(id as u32)).abs());
        }
    }
    eprintln!("logprobs vs log-softmax of `webvlm logits`: worst abs difference {worst:.2e}");
    assert!(worst < 1e-3, "worst abs difference {worst:.2e}");
}

/// The ids a greedy generation picks (from the engine's own generate loop).
fn generated_ids(e: &mut Engine, prompt: &[u32], n: u32) -> Vec<u32> {
    let opts = webvlm::engine::GenerateOptions { max_tokens: n, ignore_eos: true, ..Default::default() };
    pollster::block_on(e.generate(prompt, &opts, |_| {})).unwrap().tokens
}

#[test]
fn logit_bias_steers_greedy_decoding() {
    let mut e = tiny_vlm_engine();
    let target = 1784u32;
    let request =
        json!({ "tokens": [1, 3, 8961, 4], "max_tokens": 4, "temperature": 0, "logit_bias": { target.to_string(): 100 } });
    let (reply, _) = complete(&mut e, request).unwrap();
    let piece = e.tokenizer().decode(&[target], true).unwrap();
    assert_eq!(content(&reply), piece.repeat(4));
    let banned = json!({ "tokens": [1, 3, 8961, 4], "max_tokens": 1, "temperature": 0, "logprobs": true });
    let (free, _) = complete(&mut e, banned.clone()).unwrap();
    let first = free["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["token"].clone();
    let top_id = generated_ids(&mut e, &[1, 3, 8961, 4], 1)[0];
    let mut request = banned;
    request["logit_bias"] = json!({ top_id.to_string(): -100 });
    let (steered, _) = complete(&mut e, request).unwrap();
    assert_ne!(steered["choices"][0]["logprobs"]["content"][0]["token"], first, "a -100 bias bans the argmax");
}

#[test]
fn second_chat_turn_reuses_the_first_turns_cache() {
    let mut e = tiny_vlm_engine();
    let first = json!([{ "role": "user", "content": [
        { "type": "image_url", "image_url": { "url": "img_84x56.png" } },
        { "type": "text", "text": "Describe the image in detail. ".repeat(20) },
    ] }]);
    let read = |e: &mut Engine, messages: &Value| {
        let req = ChatRequest::from_value(json!({ "messages": messages, "max_tokens": 8, "temperature": 0 }), 131072).unwrap();
        pollster::block_on(run(e, &req, &mut read_tiny_vlm_image, None, |_| None)).unwrap()
    };
    let one = read(&mut e, &first);
    let prompt1 = one["usage"]["prompt_tokens"].as_u64().unwrap();
    let mut second = first.as_array().unwrap().clone();
    second.push(json!({ "role": "assistant", "content": content(&one) }));
    second.push(json!({ "role": "user", "content": "And the colours?" }));
    let two = read(&mut e, &Value::Array(second.clone()));
    let cached = two["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    let ttft = |r: &Value| r["usage"]["timings"]["time_to_first_token"].as_f64().unwrap();
    eprintln!(
        "turn 1: {prompt1} prompt tokens, TTFT {:.3} s; turn 2: {} prompt tokens, {cached} cached, TTFT {:.3} s",
        ttft(&one),
        two["usage"]["prompt_tokens"],
        ttft(&two)
    );
    assert!(cached >= prompt1, "cached {cached} < first prompt {prompt1}");
    assert_eq!(one["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    // The cached turn answers as a fresh engine does.
    let fresh = read(&mut tiny_vlm_engine(), &Value::Array(second));
    assert_eq!(content(&two), content(&fresh));
    assert_eq!(fresh["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
}

#[test]
fn abort_mid_stream_then_a_new_request_matches_a_fresh_engine() {
    let mut e = tiny_vlm_engine();
    let abort = Rc::new(Cell::new(false));
    let req = ChatRequest::from_value(
        json!({ "messages": user("Count to twenty"), "max_tokens": 40, "temperature": 0, "stream": true }),
        131072,
    )
    .unwrap();
    let mut seen = 0;
    let flag = abort.clone();
    let out = pollster::block_on(run(&mut e, &req, &mut no_files, Some(abort.clone()), |c| {
        if c["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()) {
            seen += 1;
            if seen == 3 {
                flag.set(true);
            }
        }
        None
    }))
    .unwrap();
    assert_eq!(out["choices"][0]["finish_reason"], "abort");
    assert!(out["usage"]["completion_tokens"].as_u64().unwrap() <= 4, "stopped within one step: {}", out["usage"]);
    let next = json!({ "messages": user("Count to five"), "max_tokens": 10, "temperature": 0 });
    let after = complete(&mut e, next.clone()).unwrap().0;
    let fresh = complete(&mut tiny_vlm_engine(), next).unwrap().0;
    assert_eq!(content(&after), content(&fresh));
}

/// Ten schemas, two seeded completions each, from the real SmolLM2 model: every reply
/// parses and validates (checked by the independent `jsonschema` crate).
#[test]
fn json_schema_completions_from_a_real_model_validate() {
    let mut e = smollm2_engine();
    let schemas = [
        json!({ "type": "object", "properties": { "name": { "type": "string", "maxLength": 20 }, "age": { "type": "integer", "minimum": 0, "maximum": 120 } }, "required": ["name", "age"], "additionalProperties": false }),
        json!({ "type": "object", "properties": { "city": { "type": "string", "enum": ["Paris", "Rome", "Berlin"] } }, "required": ["city"], "additionalProperties": false }),
        json!({ "type": "array", "items": { "type": "integer", "minimum": 1, "maximum": 9 }, "minItems": 2, "maxItems": 4 }),
        json!({ "type": "object", "properties": { "ok": { "type": "boolean" }, "note": { "type": "null" } }, "required": ["ok", "note"], "additionalProperties": false }),
        json!({ "type": "object", "properties": { "point": { "type": "object", "properties": { "x": { "type": "number" }, "y": { "type": "number" } }, "required": ["x", "y"], "additionalProperties": false } }, "required": ["point"], "additionalProperties": false }),
        json!({ "type": "object", "properties": { "tags": { "type": "array", "items": { "type": "string", "maxLength": 8 }, "maxItems": 3 } }, "required": ["tags"], "additionalProperties": false }),
        json!({ "type": "object", "properties": { "code": { "type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$" } }, "required": ["code"], "additionalProperties": false }),
        json!({ "anyOf": [{ "type": "integer", "minimum": 0, "maximum": 9 }, { "type": "string", "enum": ["none"] }] }),
        json!({ "type": "object", "properties": { "colour": { "enum": ["red", "green", "blue"] }, "shade": { "type": "integer", "minimum": 1, "maximum": 3 } }, "required": ["colour"], "additionalProperties": false }),
        json!({ "type": "object", "properties": { "items": { "type": "array", "items": { "type": "object", "properties": { "id": { "type": "integer", "minimum": 0, "maximum": 99 } }, "required": ["id"], "additionalProperties": false }, "minItems": 1, "maxItems": 2 } }, "required": ["items"], "additionalProperties": false }),
    ];
    let mut mask_ms = Vec::new();
    for (i, schema) in schemas.iter().enumerate() {
        let validator = jsonschema::validator_for(schema).unwrap();
        for seed in 0..2 {
            let request = json!({
                "messages": user("Answer with JSON."), "max_tokens": 96, "temperature": 0.8, "seed": seed,
                "response_format": { "type": "json_schema", "json_schema": { "name": format!("s{i}"), "schema": schema, "strict": true } },
            });
            let (reply, _) = complete(&mut e, request).unwrap();
            let text = content(&reply);
            assert_eq!(reply["choices"][0]["finish_reason"], "stop", "schema {i} seed {seed}: {text:?}");
            let value: Value =
                serde_json::from_str(text).unwrap_or_else(|err| panic!("schema {i} seed {seed}: {text:?} is not JSON: {err}"));
            assert!(validator.is_valid(&value), "schema {i} seed {seed}: {text} does not validate");
            let n = reply["usage"]["completion_tokens"].as_f64().unwrap();
            mask_ms.push(reply["usage"]["timings"]["mask_seconds"].as_f64().unwrap() * 1e3 / n);
        }
    }
    mask_ms.sort_by(f64::total_cmp);
    let n = mask_ms.len();
    eprintln!("{n} schema completions valid; mask time per token: median {:.3} ms, max {:.3} ms", mask_ms[n / 2], mask_ms[n - 1]);
}

/// 20 image requests, 2 of them with broken images: 18 results and 2 errors, in order, one
/// at a time and four at a time.
#[test]
fn a_batch_reports_broken_images_per_request() {
    let mut e = tiny_vlm_engine();
    let broken = std::fs::read(fixture(TINY_VLM).join("img_84x56.png")).unwrap()[..200].to_vec();
    std::fs::write(temp_path("broken.png"), &broken).unwrap();
    let lines: String = (0..20)
        .map(|i| {
            let url = if i == 4 || i == 13 { temp_path("broken.png").to_str().unwrap().to_string() } else { ["img_84x56.png", "img_56x112.png"][i % 2].to_string() };
            let body = json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": url } }, { "type": "text", "text": "Describe." }] }], "max_tokens": 3, "temperature": 0 });
            format!("{}\n", json!({ "custom_id": format!("photo-{i}"), "method": "POST", "url": "/v1/chat/completions", "body": body }))
        })
        .collect();
    let mut load = |url: &str| {
        if url.starts_with('/') {
            std::fs::read(url).map_err(|e| EngineError::BadImageUrl(e.to_string()))
        } else {
            read_tiny_vlm_image(url)
        }
    };
    let mut progress = 0;
    let out = pollster::block_on(batch::run_batch(&mut e, &lines, &mut load, 1, |i, total, _| {
        assert_eq!((i + 1, total), (progress + 1, 20));
        progress += 1;
    }));
    assert_eq!(out.len(), 20);
    for (i, line) in out.iter().enumerate() {
        assert_eq!(line["custom_id"], format!("photo-{i}"));
        if i == 4 || i == 13 {
            assert!(line["response"].is_null());
            assert_eq!(line["error"]["code"], "invalid_image", "{line}");
        } else {
            assert_eq!(line["response"]["status_code"], 200, "{line}");
            assert_eq!(line["response"]["body"]["usage"]["completion_tokens"], 3);
        }
    }
    // Four at a time in batched steps: the same lines.
    let parallel = pollster::block_on(batch::run_batch(&mut e, &lines, &mut load, 4, |_, _, _| {}));
    assert_eq!(parallel.len(), 20);
    for (one, four) in out.iter().zip(&parallel) {
        assert_eq!((&one["custom_id"], &one["error"]), (&four["custom_id"], &four["error"]));
        assert_eq!(one["response"]["body"]["choices"], four["response"]["body"]["choices"], "{}", one["custom_id"]);
    }
}

/// `logit_bias` that keeps the model from ending (long generations).
fn no_end_tokens(e: &Engine) -> Value {
    e.tokenizer().eos_ids().iter().map(|id| (id.to_string(), json!(-100))).collect::<serde_json::Map<_, _>>().into()
}

/// Requests run together (`api::many`, what the package's concurrent calls use): each
/// streams the chunks and ends with the completion it gets alone through `api::run`; a bad
/// request fails alone; one whose abort flag is set mid-stream ends with `abort` and the
/// others go on.
#[test]
fn requests_run_together_stream_and_end_as_they_do_alone() {
    let mut e = tiny_vlm_engine();
    let bodies = [
        json!({ "messages": [{ "role": "user", "content": "Say something long." }], "max_tokens": 12, "temperature": 0, "stream": true }),
        json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": "img_84x56.png" } }, { "type": "text", "text": "Describe." }] }], "max_tokens": 6, "temperature": 0 }),
        json!({ "messages": [{ "role": "user", "content": "Hi" }], "max_tokens": 8, "temperature": 0.9, "seed": 4, "logprobs": true, "top_logprobs": 2, "stream": true }),
        json!({ "messages": [{ "role": "user", "content": "Hi" }], "max_tokens": 8, "temperature": 7.5 }),
        json!({ "messages": [{ "role": "user", "content": "Count to ten." }], "max_tokens": 30, "temperature": 0, "logit_bias": no_end_tokens(&e), "stream": true }),
    ];
    let vocab = e.decoder().cfg.vocab as usize;
    let parse = |b: &Value| ChatRequest::from_value(b.clone(), vocab);
    let stable = |v: &Value| {
        let mut v = v.clone();
        for key in ["id", "created", "usage"] {
            v.as_object_mut().unwrap().remove(key);
        }
        v
    };
    let mut load = |url: &str| read_tiny_vlm_image(url);
    let alone: Vec<(Vec<Value>, Result<Value, ApiError>)> = bodies
        .iter()
        .map(|b| {
            let mut chunks = Vec::new();
            let done = match parse(b) {
                Ok(req) => pollster::block_on(run(&mut e, &req, &mut load, None, |c| {
                    chunks.push(stable(&c));
                    None
                })),
                Err(err) => Err(err),
            };
            (chunks, done.map(|v| stable(&v)))
        })
        .collect();
    assert!(alone[3].1.is_err(), "temperature 7.5 is refused");
    let abort = Rc::new(Cell::new(false));
    let requests = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| ManyRequest { request: parse(b), abort: (i == 4).then(|| abort.clone()) })
        .collect::<Vec<_>>();
    let mut chunks = vec![Vec::new(); bodies.len()];
    let mut done: Vec<Option<Result<Value, ApiError>>> = vec![None; bodies.len()];
    pollster::block_on(run_many(&mut e, requests.into_iter(), &mut load, 4, |i, event| {
        match event {
            ManyEvent::Chunk(c) => chunks[i].push(stable(&c)),
            ManyEvent::Done(result) => {
                assert!(done[i].replace(result.map(|v| stable(&v))).is_none(), "request {i} ended twice");
            }
        }
        // Request 4 is stopped after its third content chunk.
        if i == 4 && chunks[4].len() == 4 {
            abort.set(true);
        }
        None
    }));
    for i in 0..4 {
        assert_eq!(chunks[i], alone[i].0, "request {i}'s chunks");
        let got = done[i].clone().expect("every request ends");
        match (&got, &alone[i].1) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "request {i}"),
            (Err(got), Err(want)) => assert_eq!((got.code, &got.param), (want.code, &want.param), "request {i}"),
            _ => panic!("request {i}: {got:?} against {:?}", alone[i].1),
        }
    }
    let stopped = done[4].clone().unwrap().unwrap();
    assert_eq!(stopped["choices"][0]["finish_reason"], "abort", "{stopped}");
    assert_eq!(chunks[4][..4], alone[4].0[..4], "the stopped request's chunks up to its stop");
    assert!(chunks[4].len() < alone[4].0.len(), "it stopped early");
}

/// `n` choices: the prompt is prefilled once, choice `i` is what the request gives alone with
/// its seed plus `i` (message, logprobs, finish), the usage counts the prompt once and every
/// choice's tokens, each stream chunk names its choice and the usage chunk comes once, last.
/// More choices than a parallel run's slots are refused.
#[test]
fn n_choices_are_the_request_with_the_seed_plus_their_index() {
    let mut e = smollm2_engine();
    let body = |n: u32, seed: u64| {
        json!({ "messages": user("Name three animals."), "max_tokens": 9, "temperature": 1.3, "seed": seed, "n": n,
            "logprobs": true, "top_logprobs": 2, "stream": true, "stream_options": { "include_usage": true } })
    };
    let (reply, chunks) = complete(&mut e, body(3, 40)).unwrap();
    let choices = reply["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{reply}");
    let mut generated = 0;
    for (i, choice) in choices.iter().enumerate() {
        // On a fresh engine: a prompt-cache hit runs the prompt's last token alone, whose
        // logits differ from the prefill's in the last bits.
        let (alone, _) = complete(&mut smollm2_engine(), body(1, 40 + i as u64)).unwrap();
        let mut want = alone["choices"][0].clone();
        want["index"] = json!(i);
        assert_eq!(choice, &want, "choice {i}");
        generated += alone["usage"]["completion_tokens"].as_u64().unwrap();
        assert_eq!(reply["usage"]["prompt_tokens"], alone["usage"]["prompt_tokens"]);
        let streamed: String = (chunks.iter())
            .filter(|c| c["choices"][0]["index"] == i)
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(streamed, choice["message"]["content"].as_str().unwrap(), "choice {i}'s stream");
    }
    assert!(choices[1]["message"] != choices[0]["message"] || choices[2]["message"] != choices[0]["message"], "all alike");
    assert_eq!(reply["usage"]["completion_tokens"], generated);
    let usage_chunks: Vec<usize> = (0..chunks.len()).filter(|&i| chunks[i].get("usage").is_some()).collect();
    assert_eq!(usage_chunks, [chunks.len() - 1], "one usage chunk, last");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], generated);

    let vocab = e.decoder().cfg.vocab as usize;
    let request = ManyRequest { request: ChatRequest::from_value(body(3, 1), vocab), abort: None };
    let mut end = None;
    pollster::block_on(run_many(&mut e, std::iter::once(request), &mut no_files, 2, |_, event| {
        if let ManyEvent::Done(result) = event {
            end = Some(result);
        }
        None
    }));
    let refused = end.unwrap().unwrap_err();
    assert!(refused.message.contains("n = 3 choices need 3 sequence slots"), "{}", refused.message);
}

/// A source with nothing ready at first and a request later (the package's requests sent
/// while others decode): the later one joins the running one, ends first (it is short), and
/// both answer as they do alone.
#[test]
fn a_request_ready_later_joins_the_running_ones() {
    struct Later<'a> {
        requests: Vec<ManyRequest>,
        asked: &'a Cell<usize>,
    }
    impl ManySource for Later<'_> {
        fn next_request(&mut self) -> Option<ManyRequest> {
            self.asked.set(self.asked.get() + 1);
            // The first at once, the second from the third time asked (two steps later).
            (self.asked.get() == 1 || self.asked.get() >= 3).then(|| self.requests.pop()).flatten()
        }
    }
    let mut e = tiny_vlm_engine();
    let bodies = [
        json!({ "messages": user("Count to ten."), "max_tokens": 24, "temperature": 0, "logit_bias": no_end_tokens(&e) }),
        json!({ "messages": user("Hi"), "max_tokens": 4, "temperature": 0.9, "seed": 2 }),
    ];
    let vocab = e.decoder().cfg.vocab as usize;
    let parse = |b: &Value| ChatRequest::from_value(b.clone(), vocab).unwrap();
    let content = |v: &Value| v["choices"][0].clone();
    let alone: Vec<Value> = bodies
        .iter()
        .map(|b| content(&pollster::block_on(run(&mut e, &parse(b), &mut no_files, None, |_| None)).unwrap()))
        .collect();
    let requests = bodies.iter().rev().map(|b| ManyRequest { request: Ok(parse(b)), abort: None }).collect();
    let (mut ended, asked) = (Vec::new(), Cell::new(0));
    pollster::block_on(run_many(&mut e, Later { requests, asked: &asked }, &mut no_files, 4, |i, event| {
        if let ManyEvent::Done(result) = event {
            ended.push((i, content(&result.unwrap())));
        }
        None
    }));
    assert!(asked.get() > 3, "asked {} times", asked.get());
    assert_eq!(ended.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 0], "the later request ended first");
    for (i, reply) in ended {
        assert_eq!(reply, alone[i], "request {i}");
    }
}

#[test]
fn gpu_memory_errors_say_the_adapter_is_too_small() {
    use webvlm::backend::gpu::GpuError;
    let oom = ApiError::from(EngineError::Gpu(GpuError::OutOfMemory("creating buffer kv_snapshot.3".into())));
    assert_eq!((oom.kind, oom.code), ("server_error", Some("adapter_too_small")));
    let large = GpuError::BufferTooLarge { label: "logits".into(), size: 1 << 31, limit: 1 << 30 };
    let large = ApiError::from(EngineError::Model(webvlm::model::ModelError::Gpu(large)));
    assert_eq!(large.code, Some("adapter_too_small"));
    assert!(large.message.contains("exceeds the device limit"), "{}", large.message);
    let other = ApiError::from(EngineError::Gpu(GpuError::Device("validation".into())));
    assert_eq!(other.code, Some("engine_error"));
}

/// Errors are classified by type and variant: a lost device is `device_lost` wherever it is
/// wrapped, and text that merely mentions one (here from a constraint failure) is not.
#[test]
fn errors_are_classified_by_type_not_by_message() {
    use webvlm::backend::gpu::GpuError;
    use webvlm::constraint::ConstraintError;
    use webvlm::error::{Classify, ErrorClass};
    use webvlm::model::ModelError;
    let lost = || GpuError::DeviceLost("Destroyed: device.destroy()".into());
    for e in [EngineError::Gpu(lost()), EngineError::Model(ModelError::Gpu(lost()))] {
        let api = ApiError::from(e);
        assert_eq!((api.kind, api.code, api.class()), ("server_error", Some("device_lost"), ErrorClass::DeviceLost));
    }
    let words = ApiError::from(EngineError::Constraint(ConstraintError::Setup("the GPU device was lost".into())));
    assert_eq!((words.code, words.class()), (Some("engine_error"), ErrorClass::Internal), "{}", words.message);
    let refused = ApiError::invalid("messages", "invalid_value", "the GPU device was lost");
    assert_eq!(refused.class(), ErrorClass::BadRequest);
    assert_eq!(EngineError::Model(ModelError::ContextFull { needed: 9, max_ctx: 8 }).class(), ErrorClass::BadRequest);
}

/// A request with the tiny VLM's 84x56 fixture image (2 rows of 3 image tokens at the
/// default size) and `image_max_edge` when given.
fn image_request(url: &str, image_max_edge: Option<u32>) -> Value {
    json!({
        "messages": [{ "role": "user", "content": [
            { "type": "image_url", "image_url": { "url": url } },
            { "type": "text", "text": "Describe." },
        ] }],
        "max_tokens": 1,
        "temperature": 0,
        "image_max_edge": image_max_edge,
    })
}

fn prompt_tokens(reply: &Value) -> u64 {
    reply["usage"]["prompt_tokens"].as_u64().unwrap()
}

#[test]
fn image_max_edge_applies_to_its_request_only() {
    let mut e = tiny_vlm_engine();
    let default_edge = e.image_options().max_edge;
    let default = prompt_tokens(&complete(&mut e, image_request("img_84x56.png", None)).unwrap().0);
    // 28 pixels: one [IMG] and [IMG_END] instead of 2 rows of 3 [IMG] and a break.
    let small = prompt_tokens(&complete(&mut e, image_request("img_84x56.png", Some(28))).unwrap().0);
    assert_eq!(default - small, 6, "image_max_edge 28 gives one image token");
    let after = prompt_tokens(&complete(&mut e, image_request("img_84x56.png", None)).unwrap().0);
    assert_eq!(after, default, "the previous request's image_max_edge leaked into this one");
    assert_eq!(e.image_options().max_edge, default_edge, "the engine's default changed");
}

#[test]
fn image_max_edge_is_at_most_the_models_image_size() {
    let mut e = tiny_vlm_engine();
    let limit = e.vision().unwrap().max_image_edge();
    let over = image_request("https://example.com/never-fetched.png", Some(limit + 1));
    let req = ChatRequest::from_value(over.clone(), e.decoder().cfg.vocab as usize).unwrap();
    for err in [webvlm::api::check(&mut e, &req).unwrap_err(), complete(&mut e, over).unwrap_err()] {
        assert_eq!(err.kind, "invalid_request_error", "{err:?}");
        assert_eq!((err.param.as_deref(), err.code), (Some("image_max_edge"), Some("invalid_value")), "{err:?}");
        assert!(err.message.contains(&limit.to_string()), "{}", err.message);
    }
    assert_eq!(e.image_cache().misses, 0);
    complete(&mut e, image_request("img_84x56.png", Some(limit))).unwrap();
}

#[test]
fn an_image_too_large_for_the_context_is_refused_before_encoding() {
    let mut e = tiny_vlm_engine();
    // 644 = 23 x 28 pixels a side: 23 rows of 23 [IMG] and a break, 552 ids > 512.
    let path = temp_path("plain_644x644.png");
    image::RgbImage::from_pixel(644, 644, image::Rgb([200, 120, 40])).save(&path).unwrap();
    let err = complete(&mut e, image_request(path.to_str().unwrap(), None)).unwrap_err();
    assert_eq!((err.param.as_deref(), err.code), (Some("messages"), Some("context_length_exceeded")), "{err:?}");
    assert_eq!((e.image_cache().misses, e.image_cache().hits), (0, 0), "the vision encoder ran");
    // Scaled down by the request, it fits.
    complete(&mut e, image_request(path.to_str().unwrap(), Some(280))).unwrap();
    assert_eq!(e.image_cache().misses, 1);
}

#[test]
fn a_json_schema_is_compiled_once_for_check_and_run() {
    let mut e = tiny_vlm_engine();
    let format = |schema: Value, strict: bool| json!({ "type": "json_schema", "json_schema": { "name": "answer", "schema": schema, "strict": strict } });
    let schema = json!({ "type": "object", "properties": { "n": { "type": "integer" } }, "required": ["n"] });
    let body = |format: Value| json!({ "messages": user("hi"), "response_format": format, "max_tokens": 6, "temperature": 0 });
    let request = body(format(schema.clone(), true));
    // What the browser's worker does: check, then run.
    let req = ChatRequest::from_value(request.clone(), e.decoder().cfg.vocab as usize).unwrap();
    webvlm::api::check(&mut e, &req).unwrap();
    let first = pollster::block_on(run(&mut e, &req, &mut no_files, None, |_| None)).unwrap();
    assert_eq!(e.constraint_compilations(), 1, "check + run of one request");
    // The same schema again: no compilation, the same output.
    let (again, _) = complete(&mut e, request).unwrap();
    assert_eq!(e.constraint_compilations(), 1, "a repeated schema");
    assert_eq!(content(&again), content(&first));
    // Another strict flag or another schema is compiled.
    complete(&mut e, body(format(schema.clone(), false))).unwrap();
    assert_eq!(e.constraint_compilations(), 2);
    complete(&mut e, body(json!({ "type": "json_object" }))).unwrap();
    assert_eq!(e.constraint_compilations(), 3);
    // The cached constraint starts fresh each time: the output matches a fresh engine's.
    let (fresh, _) = complete(&mut tiny_vlm_engine(), body(format(schema, true))).unwrap();
    assert_eq!(content(&fresh), content(&first));
}

/// The tiny Qwen3.5 VLM through the API (thinking off): a JSON-schema answer about an image
/// validates, logprobs come with greedy choices at the top, and a batch of image requests
/// equals the same requests run one by one.
#[test]
fn qwen35_json_schema_logprobs_and_batch() {
    use webvlm::source::LoadQuant;
    const QWEN: &str = "tiny_qwen35_a";
    let model = MappedGguf::open(fixture(QWEN).join("model.gguf")).unwrap();
    let proj = MappedGguf::open(fixture(QWEN).join("mmproj.gguf")).unwrap();
    let opts = ContextOptions { max_ctx: 512, max_chunk: 32, ..Default::default() };
    let mut e = Engine::builder(cpu()).context(opts).vision(&mut Eager(&proj), LoadQuant::Keep).load(&mut Eager(&model)).unwrap();
    // The fixture processor's area bounds (its cases.json `image_processor`).
    e.set_image_area(Some(1024), Some(65536)).unwrap();
    fn load(url: &str) -> Result<Vec<u8>, EngineError> {
        std::fs::read(fixture(QWEN).join(url)).map_err(|err| EngineError::BadImageUrl(err.to_string()))
    }
    let ask = |image: &str, extra: Value| {
        let mut body = json!({
            "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": image } }, { "type": "text", "text": "Which colour?" }] }],
            "max_tokens": 24, "temperature": 0, "chat_template_kwargs": { "enable_thinking": false },
        });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let complete = |e: &mut Engine, body: Value| {
        let req = ChatRequest::from_value(body, e.decoder().cfg.vocab as usize).unwrap();
        pollster::block_on(run(e, &req, &mut load, None, |_| None)).unwrap()
    };

    let schema = json!({ "type": "object", "properties": { "colour": { "enum": ["red", "green", "blue"] } }, "required": ["colour"], "additionalProperties": false });
    let format = json!({ "type": "json_schema", "json_schema": { "name": "colour", "schema": schema, "strict": true } });
    let reply = complete(&mut e, ask("img_100x44.png", json!({ "response_format": format })));
    let value: Value = serde_json::from_str(content(&reply)).unwrap();
    assert!(jsonschema::validator_for(&schema).unwrap().is_valid(&value), "{value}");

    let reply = complete(&mut e, ask("img_64x96.png", json!({ "logprobs": true, "top_logprobs": 3, "max_tokens": 6 })));
    let tokens = reply["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(tokens.len() as u64, reply["usage"]["completion_tokens"].as_u64().unwrap());
    for t in tokens {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["token"], t["token"], "greedy takes the most likely token");
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
    }

    let images = ["img_100x44.png", "img_32x64.png", "img_64x96.png"];
    let lines: String = (images.iter().enumerate())
        .map(|(i, image)| format!("{}\n", json!({ "custom_id": format!("q{i}"), "method": "POST", "url": "/v1/chat/completions", "body": ask(image, json!({})) })))
        .collect();
    let out = pollster::block_on(batch::run_batch(&mut e, &lines, &mut load, 1, |_, _, _| {}));
    for (line, image) in out.iter().zip(images) {
        let one = complete(&mut e, ask(image, json!({})));
        assert_eq!(
            line["response"]["body"]["choices"][0]["message"]["content"], one["choices"][0]["message"]["content"],
            "{image}"
        );
        assert_eq!(line["response"]["body"]["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"], "{image}");
    }
}
