//! OpenAI's chat-completions API (`webvlm::api::run`, `batch::run_batch`) on the tiny Llama 3.2
//! Vision folder (`tiny_mllama_a`, cross-attention images, loaded with `EngineBuilder::hf_text`) and
//! the tiny Mistral Small 3.1 GGUF with its Pixtral mmproj (`tiny_mistral_small_mistral3`),
//! images given as `data:` URLs of fixture PNGs. For each model: a `json_schema` answer about
//! an image parses and validates against its schema; `logprobs` / `top_logprobs` of a greedy
//! reply put the chosen token on top; a batch of image requests equals the same requests run
//! one by one; a repeated request and a follow-up turn report `cached_tokens` and answer as
//! a fresh engine does.

use crate::common;
use common::*;

use base64::Engine as _;
use serde_json::{json, Value};
use webvlm::api::{batch, run, ChatRequest};
use webvlm::engine::{Engine, EngineError};
use webvlm::gguf::MappedGguf;
use webvlm::model::ContextOptions;
use webvlm::source::hf::HfModel;
use webvlm::source::{Eager, LoadQuant};

const MLLAMA: &str = "tiny_mllama_a";
const MISTRAL_SMALL: &str = "tiny_mistral_small_mistral3";

/// A model under test: how to load it and three PNGs (relative to `tests/fixtures`).
struct Subject {
    load: fn() -> Engine,
    images: [&'static str; 3],
}

const MLLAMA_SUBJECT: Subject = Subject {
    load: mllama_engine,
    images: ["tiny_mllama_a/img_24x20.png", "tiny_mllama_a/img_26x100.png", "images/rgb_56x84.png"],
};

const MISTRAL_SMALL_SUBJECT: Subject = Subject {
    load: mistral_small_engine,
    images: ["tiny_mistral_small_mistral3/img_56x28.png", "images/rgb_56x84.png", "images/palette_70x42.png"],
};

fn mllama_engine() -> Engine {
    let hf = HfModel::open(fixture(MLLAMA)).unwrap();
    let opts = ContextOptions { max_ctx: 256, max_chunk: 32, ..Default::default() };
    Engine::builder(cpu()).context(opts).hf_text(hf.text_files()).load(&mut Eager(&hf)).unwrap()
}

fn mistral_small_engine() -> Engine {
    let model = MappedGguf::open(fixture(MISTRAL_SMALL).join("model.gguf")).unwrap();
    let proj = MappedGguf::open(fixture(MISTRAL_SMALL).join("mmproj.gguf")).unwrap();
    let opts = ContextOptions { max_ctx: 512, max_chunk: 16, ..Default::default() };
    Engine::builder(cpu()).context(opts).vision(&mut Eager(&proj), LoadQuant::Keep).load(&mut Eager(&model)).unwrap()
}

/// A fixture PNG as a `data:` URL.
fn data_url(png: &str) -> String {
    let bytes = std::fs::read(fixture(png)).unwrap();
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Every image here is a `data:` URL: anything else reaching the loader is an error.
fn no_urls(url: &str) -> Result<Vec<u8>, EngineError> {
    Err(EngineError::BadImageUrl(format!("{url}: only data: URLs in these tests")))
}

/// A greedy question about one image, with `extra` fields merged in.
fn ask(png: &str, extra: Value) -> Value {
    let mut body = json!({
        "messages": [{ "role": "user", "content": [
            { "type": "image_url", "image_url": { "url": data_url(png) } },
            { "type": "text", "text": "Which colour is it?" },
        ] }],
        "max_tokens": 8,
        "temperature": 0,
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn complete(e: &mut Engine, body: Value) -> Value {
    let req = ChatRequest::from_value(body, e.decoder().cfg.vocab as usize).unwrap();
    pollster::block_on(run(e, &req, &mut no_urls, None, |_| None)).unwrap_or_else(|err| panic!("{err:?}"))
}

fn content(reply: &Value) -> &str {
    reply["choices"][0]["message"]["content"].as_str().unwrap()
}

fn cached_tokens(reply: &Value) -> u64 {
    reply["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()
}

fn json_schema_answer_validates(s: &Subject) {
    let mut e = (s.load)();
    let schema = json!({
        "type": "object",
        "properties": {
            "colour": { "enum": ["red", "green", "blue"] },
            "count": { "type": "integer", "minimum": 0, "maximum": 9 },
        },
        "required": ["colour", "count"],
        "additionalProperties": false,
    });
    let validator = jsonschema::validator_for(&schema).unwrap();
    let format = json!({ "type": "json_schema", "json_schema": { "name": "colour", "schema": schema, "strict": true } });
    for png in s.images {
        let reply = complete(&mut e, ask(png, json!({ "response_format": format, "max_tokens": 64 })));
        let text = content(&reply);
        assert_eq!(reply["choices"][0]["finish_reason"], "stop", "{png}: {text:?}");
        let value: Value = serde_json::from_str(text).unwrap_or_else(|err| panic!("{png}: {text:?} is not JSON: {err}"));
        assert!(validator.is_valid(&value), "{png}: {value} does not validate");
    }
}

fn logprobs_put_the_greedy_choice_on_top(s: &Subject) {
    let mut e = (s.load)();
    let reply = complete(&mut e, ask(s.images[0], json!({ "logprobs": true, "top_logprobs": 3, "max_tokens": 6 })));
    let tokens = reply["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!tokens.is_empty());
    assert_eq!(tokens.len() as u64, reply["usage"]["completion_tokens"].as_u64().unwrap());
    for t in tokens {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{t}");
        assert_eq!((&top[0]["bytes"], &top[0]["logprob"]), (&t["bytes"], &t["logprob"]), "greedy takes the most likely: {t}");
        let lps: Vec<f64> = top.iter().map(|a| a["logprob"].as_f64().unwrap()).collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]) && lps[0] <= 0.0, "{lps:?}");
    }
    // The same request without logprobs (the pipelined GPU sampler) gives the same text.
    let plain = complete(&mut e, ask(s.images[0], json!({ "max_tokens": 6 })));
    assert_eq!(content(&plain), content(&reply));
}

fn a_batch_equals_requests_one_by_one(s: &Subject) {
    let mut e = (s.load)();
    let lines: String = (s.images.iter().enumerate())
        .map(|(i, png)| {
            let line = json!({ "custom_id": format!("img-{i}"), "method": "POST", "url": "/v1/chat/completions", "body": ask(png, json!({})) });
            format!("{line}\n")
        })
        .collect();
    let out = pollster::block_on(batch::run_batch(&mut e, &lines, &mut no_urls, 1, |_, _, _| {}));
    assert_eq!(out.len(), s.images.len());
    for (i, (line, png)) in out.iter().zip(s.images).enumerate() {
        assert_eq!(line["custom_id"], format!("img-{i}"));
        assert!(line["error"].is_null(), "{png}: {line}");
        let one = complete(&mut (s.load)(), ask(png, json!({})));
        let body = &line["response"]["body"];
        assert_eq!(body["choices"][0]["message"]["content"], one["choices"][0]["message"]["content"], "{png}");
        assert_eq!(body["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"], "{png}");
        assert_eq!(body["usage"]["completion_tokens"], one["usage"]["completion_tokens"], "{png}");
    }
}

fn repeated_requests_reuse_the_prompt_cache(s: &Subject) {
    let first = ask(s.images[1], json!({}));
    let mut e = (s.load)();
    let a = complete(&mut e, first.clone());
    assert_eq!(cached_tokens(&a), 0, "a fresh engine has nothing cached");
    let b = complete(&mut e, first.clone());
    assert!(cached_tokens(&b) > 0, "{}", b["usage"]);
    assert_eq!(content(&b), content(&a));
    assert_eq!(b["usage"]["prompt_tokens"], a["usage"]["prompt_tokens"]);

    // A follow-up turn about the same image extends the cached conversation.
    let mut follow = first.clone();
    let messages = follow["messages"].as_array_mut().unwrap();
    messages.push(json!({ "role": "assistant", "content": content(&a) }));
    messages.push(json!({ "role": "user", "content": "Why?" }));
    let turn = complete(&mut e, follow.clone());
    let fresh = complete(&mut (s.load)(), follow);
    assert!(cached_tokens(&turn) > 0, "{}", turn["usage"]);
    assert_eq!(cached_tokens(&fresh), 0);
    assert_eq!(content(&turn), content(&fresh));
    assert_eq!(turn["usage"]["prompt_tokens"], fresh["usage"]["prompt_tokens"]);
}

#[test]
fn mllama_json_schema_answer_validates() {
    json_schema_answer_validates(&MLLAMA_SUBJECT);
}

#[test]
fn mllama_logprobs_put_the_greedy_choice_on_top() {
    logprobs_put_the_greedy_choice_on_top(&MLLAMA_SUBJECT);
}

#[test]
fn mllama_batch_equals_requests_one_by_one() {
    a_batch_equals_requests_one_by_one(&MLLAMA_SUBJECT);
}

#[test]
fn mllama_repeated_requests_reuse_the_prompt_cache() {
    repeated_requests_reuse_the_prompt_cache(&MLLAMA_SUBJECT);
}

#[test]
fn mistral_small_json_schema_answer_validates() {
    json_schema_answer_validates(&MISTRAL_SMALL_SUBJECT);
}

#[test]
fn mistral_small_logprobs_put_the_greedy_choice_on_top() {
    logprobs_put_the_greedy_choice_on_top(&MISTRAL_SMALL_SUBJECT);
}

#[test]
fn mistral_small_batch_equals_requests_one_by_one() {
    a_batch_equals_requests_one_by_one(&MISTRAL_SMALL_SUBJECT);
}

#[test]
fn mistral_small_repeated_requests_reuse_the_prompt_cache() {
    repeated_requests_reuse_the_prompt_cache(&MISTRAL_SMALL_SUBJECT);
}
