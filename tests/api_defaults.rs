//! A model's published sampling defaults through the chat API: a request that leaves a
//! sampling field unset gets the model's value (a Hugging Face folder's
//! `generation_config.json`, a GGUF file's `general.sampling.*` keys), an explicit value
//! always wins, and what neither sets keeps OpenAI's default. `do_sample: false` or a top-k
//! of 1 make unset requests greedy whatever their seed; invalid defaults refuse the model.

use crate::common;
use common::*;

use std::path::PathBuf;

use serde_json::{json, Value};
use webvlm::api::{run, ChatRequest};
use webvlm::engine::{Engine, EngineError, SamplingPreset};
use webvlm::error::{Classify, ErrorClass};
use webvlm::gguf::{parse_header, GgufWriter, MappedGguf, MetaValue};
use webvlm::model::ContextOptions;
use webvlm::source::hf::HfModel;
use webvlm::source::{Eager, GgufBytes};

const HF: &str = "tiny_llama_hf";

/// A copy of the tiny Llama folder (without its GGUF and reference files) whose
/// `generation_config.json` has `changes` merged in.
fn folder_with(name: &str, changes: Value) -> PathBuf {
    let out = temp_path(&format!("defaults-{name}"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(fixture(HF)).unwrap() {
        let path = entry.unwrap().path();
        if !path.extension().is_some_and(|e| e == "npy" || e == "gguf") {
            std::fs::copy(&path, out.join(path.file_name().unwrap())).unwrap();
        }
    }
    let path = out.join("generation_config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config.as_object_mut().unwrap().extend(changes.as_object().unwrap().clone());
    std::fs::write(&path, config.to_string()).unwrap();
    out
}

fn load_hf(dir: PathBuf) -> Result<Engine, EngineError> {
    let hf = HfModel::open(dir).unwrap();
    let opts = ContextOptions { max_ctx: 256, max_chunk: 32, ..Default::default() };
    Engine::builder(cpu()).context(opts).hf_text(hf.text_files()).load(&mut Eager(&hf))
}

fn no_urls(url: &str) -> Result<Vec<u8>, EngineError> {
    Err(EngineError::BadImageUrl(url.into()))
}

fn complete(e: &mut Engine, body: Value) -> Value {
    let req = ChatRequest::from_value(body, e.decoder().cfg.vocab as usize).unwrap();
    pollster::block_on(run(e, &req, &mut no_urls, None, |_| None)).unwrap_or_else(|err| panic!("{err:?}"))
}

fn content(reply: &Value) -> String {
    reply["choices"][0]["message"]["content"].as_str().unwrap().to_string()
}

/// A request with `extra` fields and no sampling settings of its own otherwise.
fn request(extra: Value) -> Value {
    let mut body = json!({ "messages": [{ "role": "user", "content": "Tell me a story about a cat." }] });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

/// Replies to `request(extra)` with seeds 1 to 4.
fn seeded_replies(e: &mut Engine, extra: Value) -> Vec<String> {
    (1..=4)
        .map(|seed| {
            let mut extra = extra.clone();
            extra["seed"] = json!(seed);
            content(&complete(e, request(extra)))
        })
        .collect()
}

fn all_equal(replies: &[String]) -> bool {
    replies.windows(2).all(|w| w[0] == w[1])
}

/// No GPU: which fields a request sets, and how they layer over a model's defaults.
#[test]
fn explicit_fields_win_over_the_models_defaults() {
    let body = json!({ "messages": [{ "role": "user", "content": "hi" }], "temperature": null, "top_p": 0.5, "max_tokens": 3 });
    let req = ChatRequest::from_value(body, 1000).unwrap();
    let set = SamplingPreset { top_p: Some(0.5), max_tokens: Some(3), ..Default::default() };
    assert_eq!(req.requested, set, "null is unset");
    let model = SamplingPreset {
        temperature: Some(0.2),
        top_k: Some(7),
        top_p: Some(0.9),
        min_p: None,
        repetition_penalty: Some(1.3),
        max_tokens: Some(10),
    };
    let opts = req.options_for(&model);
    let s = &opts.sampling;
    assert_eq!((s.temperature, s.top_k, s.top_p, s.repetition_penalty, opts.max_tokens), (0.2, 7, 0.5, 1.3, 3));
    assert_eq!(s.min_p, 0.0, "neither sets min_p: OpenAI's default");
    // Without model defaults the request runs on OpenAI's.
    let plain = req.options_for(&SamplingPreset::default());
    assert_eq!((plain.sampling.temperature, plain.sampling.top_k, plain.max_tokens), (1.0, 0, 3));
    assert_eq!(plain.sampling, req.options.sampling);
}

/// No GPU: llama.cpp's converter wrote the folder's `generation_config.json` into the GGUF
/// beside it as `general.sampling.*` keys; both give the same defaults (GGUF has no key for
/// `max_new_tokens`).
#[test]
fn a_converted_gguf_has_the_folders_defaults() {
    let hf = HfModel::open(fixture(HF)).unwrap();
    let folder = SamplingPreset::from_generation_config(hf.generation_defaults()).unwrap();
    assert_eq!((folder.temperature, folder.top_k, folder.max_tokens), (Some(0.6), Some(40), Some(48)));
    let gguf = MappedGguf::open(fixture(HF).join("model.gguf")).unwrap();
    let converted = SamplingPreset::from_gguf(gguf.metadata()).unwrap();
    assert_eq!(converted, SamplingPreset { max_tokens: None, ..folder });
}

/// `do_sample: false` (with the fixture's temperature 0.6 and top-k 40 still in the file):
/// requests without a temperature are greedy whatever their seed, stop at the file's
/// `max_new_tokens`, and equal an explicitly greedy request to the sampling folder; an
/// explicit temperature samples again.
#[test]
fn do_sample_false_makes_unset_requests_greedy() {
    let mut greedy = load_hf(folder_with("greedy", json!({ "do_sample": false, "max_new_tokens": 6 }))).unwrap();
    let defaults = greedy.sampling_defaults().clone();
    assert_eq!((defaults.temperature, defaults.top_k, defaults.max_tokens), (Some(0.0), None, Some(6)));
    let replies = seeded_replies(&mut greedy, json!({}));
    assert!(all_equal(&replies), "{replies:?}");
    let reply = complete(&mut greedy, request(json!({})));
    assert_eq!(reply["usage"]["completion_tokens"], 6, "max_new_tokens: {reply}");
    assert_eq!(reply["choices"][0]["finish_reason"], "length");

    let mut sampling = load_hf(fixture(HF)).unwrap();
    assert_eq!(sampling.sampling_defaults().temperature, Some(0.6));
    let explicit = complete(&mut sampling, request(json!({ "temperature": 0, "max_tokens": 6 })));
    assert_eq!(content(&explicit), replies[0], "the same greedy reply (both with the file's repetition penalty)");

    let sampled = seeded_replies(&mut greedy, json!({ "temperature": 1.0 }));
    assert!(!all_equal(&sampled), "an explicit temperature samples: {sampled:?}");
}

/// `top_k: 1` (with `do_sample: true` and temperature 1): unset requests are greedy; an
/// explicit `top_k: 0` lifts the filter.
#[test]
fn top_k_1_in_generation_config_is_greedy() {
    let mut e = load_hf(folder_with("top-k-1", json!({ "do_sample": true, "top_k": 1, "temperature": 1.0 }))).unwrap();
    let limit = json!({ "max_tokens": 8 });
    let replies = seeded_replies(&mut e, limit.clone());
    assert!(all_equal(&replies), "{replies:?}");
    let greedy = complete(&mut load_hf(fixture(HF)).unwrap(), request(json!({ "temperature": 0, "max_tokens": 8 })));
    assert_eq!(content(&greedy), replies[0]);
    let sampled = seeded_replies(&mut e, json!({ "max_tokens": 8, "top_k": 0 }));
    assert!(!all_equal(&sampled), "an explicit top_k wins: {sampled:?}");
}

/// A default no request could ask for refuses the model, as a model fault.
#[test]
fn invalid_defaults_refuse_the_model() {
    let err = load_hf(folder_with("hot", json!({ "temperature": 3.0 }))).err().expect("temperature 3 must be refused");
    assert!(matches!(&err, EngineError::SamplingDefault(d) if d.source.param == "temperature"), "{err}");
    assert_eq!(err.class(), ErrorClass::ModelNotSupported);
    assert!(err.to_string().contains("generation_config.json"), "{err}");
}

/// The tiny VLM's GGUF with `extra` metadata added.
fn gguf_engine_with(extra: &[(&str, MetaValue)]) -> Result<Engine, EngineError> {
    let bytes = std::fs::read(fixture(TINY_VLM).join("model.gguf")).unwrap();
    let header = parse_header(&bytes).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in header.metadata.iter() {
        w.add_kv(k, v.clone());
    }
    for (k, v) in extra {
        w.add_kv(*k, v.clone());
    }
    for t in &header.tensors {
        let r = header.absolute_range(t).unwrap();
        w.add_tensor(t.name.clone(), &t.dims, t.ty, bytes[r.start as usize..r.end as usize].to_vec()).unwrap();
    }
    let model = GgufBytes::parse(w.write().unwrap()).unwrap();
    Engine::builder(cpu()).context(ContextOptions { max_ctx: 256, max_chunk: 16, ..Default::default() }).load(&mut Eager(&model))
}

/// llama.cpp's `general.sampling.top_k = 1` in a GGUF file: unset requests are greedy and
/// equal an explicitly greedy request to the file without the key.
#[test]
fn gguf_sampling_keys_are_defaults_too() {
    let keys = [("general.sampling.top_k", MetaValue::I32(1)), ("general.sampling.temp", MetaValue::F32(0.9))];
    let mut e = gguf_engine_with(&keys).unwrap();
    assert_eq!((e.sampling_defaults().top_k, e.sampling_defaults().temperature), (Some(1), Some(0.9)));
    let limit = json!({ "max_tokens": 8 });
    let replies = seeded_replies(&mut e, limit.clone());
    assert!(all_equal(&replies), "{replies:?}");
    let mut plain = gguf_engine_with(&[]).unwrap();
    assert_eq!(plain.sampling_defaults(), &SamplingPreset::default());
    let greedy = complete(&mut plain, request(json!({ "temperature": 0, "max_tokens": 8 })));
    assert_eq!(content(&greedy), replies[0]);
    let sampled = seeded_replies(&mut plain, limit);
    assert!(!all_equal(&sampled), "without the keys, OpenAI's temperature 1 samples: {sampled:?}");

    let err = gguf_engine_with(&[("general.sampling.top_p", MetaValue::F32(0.0))]).err().expect("top_p 0 must be refused");
    assert!(matches!(&err, EngineError::SamplingDefault(d) if d.source.param == "top_p"), "{err}");
}
