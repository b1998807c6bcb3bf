//! Mllama (Llama 3.2 Vision) through the engine, against transformers' fixtures
//! (`tests/fixtures/tiny_mllama_a`, `tiny_mllama_b`): `EngineBuilder::hf_text` loads the vision
//! encoder from the folder; each case's prompt ids (from its text, or its chat messages
//! through the real chat template) equal the processor's, and PNG → preprocess → encode →
//! cross-attention → decoder gives transformers' logits at every position. The prompt cache
//! is not reused across different images. The memory plan of a folder, from its headers
//! alone, equals what the loaded engine holds.

use crate::common;
use common::*;
use serde_json::Value;
use webvlm::chat::{ChatContent, ChatMessage, ContentPart};
use webvlm::engine::{Engine, EngineError, GenerateOptions, KvPool, ParallelEvent, Prompt, Vision};
use webvlm::gguf::TensorInfo;
use webvlm::model::{ContextOptions, MemoryPlan, ModelHeaders, PlanLimits, PlanOptions, Precision};
use webvlm::source::hf::HfModel;
use webvlm::source::{Eager, LoadQuant, Requantize, TensorSource};

const FOLDERS: [&str; 2] = ["tiny_mllama_a", "tiny_mllama_b"];

fn engine(folder: &str, precision: Precision) -> Engine {
    let hf = HfModel::open(fixture(folder)).unwrap();
    let opts = ContextOptions { max_ctx: 64, max_chunk: 64, precision };
    Engine::builder(gpu()).context(opts).hf_text(hf.text_files()).load(&mut Eager(&hf)).unwrap()
}

fn cases(folder: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(&format!("{folder}/cases.json"))).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

/// The case's prompt from its text and PNGs, as the CLI and API build it.
fn text_prompt(e: &mut Engine, folder: &str, case: &Value) -> Prompt {
    let tokens = e.text_tokens(case["text"].as_str().unwrap()).unwrap();
    let images = (case["images"].as_array().unwrap().iter())
        .map(|f| e.image_features(&std::fs::read(fixture(&format!("{folder}/{}", f.as_str().unwrap()))).unwrap(), None).unwrap())
        .collect();
    e.prompt_with_images(&tokens, images).unwrap()
}

fn check_logits(e: &mut Engine, prompt: &Prompt, folder: &str, logits_file: &str, tol: f32, name: &str) {
    let (shape, want) = read_npy(&fixture(&format!("{folder}/{logits_file}")));
    let got = pollster::block_on(e.logits(prompt)).unwrap();
    assert_eq!(got.len(), want.len(), "{name}");
    let err = rel_l2(&got, &want);
    println!("{name}: rel L2 {err:.2e}");
    assert!(err <= tol, "{name}: rel L2 {err:.2e} > {tol:.0e}");
    for (g, w) in got.chunks(shape[1]).zip(want.chunks(shape[1])) {
        assert_eq!(argmax(g), argmax(w), "{name}");
    }
}

#[test]
fn text_cases_match_transformers() {
    let mut checked = 0;
    for folder in FOLDERS {
        for (precision, tol) in [(Precision::F32, 1e-4), (Precision::default(), 1e-3)] {
            let mut e = engine(folder, precision);
            assert!(e.vision().and_then(Vision::cross).is_some() && e.has_vision());
            for case in cases(folder)["cases"].as_array().unwrap() {
                let name = format!("{folder} {} {precision:?}", case["name"]);
                let prompt = text_prompt(&mut e, folder, case);
                assert_eq!(prompt.tokens, ids(&case["tokens"]), "{name}: the processor's ids");
                check_logits(&mut e, &prompt, folder, case["logits"].as_str().unwrap(), tol, &name);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 8);
}

#[test]
fn chat_case_matches_transformers() {
    let folder = "tiny_mllama_a";
    let all = cases(folder);
    let chat = &all["chat_cases"][0];
    let case = all["cases"].as_array().unwrap().iter().find(|c| c["name"] == chat["name"]).unwrap();
    let png = fixture(&format!("{folder}/{}", case["images"][0].as_str().unwrap()));
    let mut messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).unwrap();
    for m in &mut messages {
        if let ChatContent::Parts(parts) = &mut m.content {
            for p in parts {
                if let ContentPart::Image { url } = p {
                    *url = Some(png.to_string_lossy().into_owned());
                }
            }
        }
    }
    let mut e = engine(folder, Precision::F32);
    let prompt = e
        .chat_prompt(&messages, None, None, &mut |url| {
            std::fs::read(url).map_err(|err| EngineError::BadImageUrl(err.to_string()))
        })
        .unwrap();
    assert_eq!(prompt.tokens, ids(&chat["tokens"]));
    assert_eq!(prompt.images.len(), 1);
    check_logits(&mut e, &prompt, folder, case["logits"].as_str().unwrap(), 1e-4, "chat");
    // One `<|image|>` per image: a missing image is an error.
    assert!(matches!(e.prompt_with_images(&prompt.tokens, Vec::new()), Err(EngineError::ImageCount { .. })));
}

/// Greedy tokens of `prompt` after whatever the engine ran before.
fn greedy(e: &mut Engine, prompt: &Prompt) -> (Vec<u32>, usize) {
    let opts = GenerateOptions { max_tokens: 4, ignore_eos: true, ..GenerateOptions::default() };
    let g = pollster::block_on(e.generate_prompt(prompt, &opts, |_| None)).unwrap();
    (g.tokens, g.cached_tokens)
}

#[test]
fn prompt_cache_is_not_reused_across_images() {
    let folder = "tiny_mllama_a";
    let all = cases(folder);
    let case = &all["cases"][0];
    let read = |f: &str| std::fs::read(fixture(&format!("{folder}/{f}"))).unwrap();
    let mut fresh = engine(folder, Precision::F32);
    let mut e = engine(folder, Precision::F32);
    let tokens = ids(&case["tokens"]);
    let with = |e: &mut Engine, png: &str| {
        let f = e.image_features(&read(png), None).unwrap();
        e.prompt_with_images(&tokens, vec![f]).unwrap()
    };
    let (a, b) = (with(&mut e, "img_24x20.png"), with(&mut e, "img_26x100.png"));
    let fresh_b = with(&mut fresh, "img_26x100.png");
    let (want_b, _) = greedy(&mut fresh, &fresh_b);
    greedy(&mut e, &a);
    let (got_b, cached) = greedy(&mut e, &b);
    assert_eq!((got_b.clone(), cached), (want_b.clone(), 0), "another image: nothing reused");
    let (again, cached) = greedy(&mut e, &b);
    assert_eq!(again, want_b);
    assert_eq!(cached, tokens.len() - 1, "the same image: the prompt is reused");
    // A text-only prompt after an image conversation sees no image.
    let text = e.text_tokens("Why?").unwrap();
    let (got, cached) = greedy(&mut e, &Prompt { tokens: text.clone(), images: Vec::new() });
    let (want, _) = greedy(&mut engine(folder, Precision::F32), &Prompt { tokens: text, images: Vec::new() });
    assert_eq!((got, cached), (want, 0));
}

/// A parallel run of three requests, two with their own image and one text-only, joining
/// at different steps: each sequence attends to its own images only (its own cross store)
/// and gives the tokens it gives alone; so does it in a KV pool of one context, where the
/// newest sequences are preempted and recomputed (their cross stores kept).
#[test]
fn parallel_requests_with_images_generate_as_they_do_alone() {
    let folder = "tiny_mllama_a";
    let case = &cases(folder)["cases"][0];
    let read = |f: &str| std::fs::read(fixture(&format!("{folder}/{f}"))).unwrap();
    let mut e = engine(folder, Precision::F32);
    let tokens = ids(&case["tokens"]);
    let with = |e: &mut Engine, png: &str| {
        let f = e.image_features(&read(png), None).unwrap();
        e.prompt_with_images(&tokens, vec![f]).unwrap()
    };
    let text = e.text_tokens("Why?").unwrap();
    let prompts = [with(&mut e, "img_24x20.png"), Prompt { tokens: text, images: Vec::new() }, with(&mut e, "img_26x100.png")];
    let opts = GenerateOptions { max_tokens: 12, ignore_eos: true, ..GenerateOptions::default() };
    let alone: Vec<Vec<u32>> =
        prompts.iter().map(|p| pollster::block_on(e.generate_prompt(p, &opts, |_| None)).unwrap().tokens).collect();
    assert_ne!(alone[0], alone[2], "the two images give other tokens");
    for pool in [None, Some(KvPool { rows: 64, page: 8 })] {
        let mut run = e.parallel(3).unwrap();
        if let Some(pool) = pool {
            run.set_kv_pool(pool).unwrap();
        }
        let mut done = std::collections::HashMap::new();
        let mut ids = Vec::new();
        for step in 0..80 {
            if step < prompts.len() {
                ids.push(pollster::block_on(run.admit(&mut e, &prompts[step], &opts)).unwrap().0);
            }
            for event in pollster::block_on(run.step(&mut e)).unwrap() {
                match event {
                    ParallelEvent::Done { id, generation } => drop(done.insert(id, generation.tokens)),
                    ParallelEvent::Failed { error, .. } => panic!("{error}"),
                    ParallelEvent::Text { .. } => {}
                }
            }
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(done[id], alone[i], "request {i} in {pool:?}");
        }
        assert_eq!(run.preemptions() > 0, pool.is_some(), "{} preemptions in {pool:?}", run.preemptions());
    }
}

/// `webvlm generate --model DIR --image IMG` writes the engine's greedy reply; `info` names
/// the cross-attention layers.
#[test]
fn cli_generate_and_info() {
    let folder = "tiny_mllama_a";
    let dir = fixture(folder);
    let png = dir.join("img_24x20.png");
    let text = "Look at the photo. <|image|>Why?";
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_webvlm")).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let d = dir.to_str().unwrap();
    let p = png.to_str().unwrap();
    let cli = run(&[
        "generate",
        "--model",
        d,
        "--quant",
        "keep",
        "--image",
        p,
        "--prompt",
        text,
        "--max-tokens",
        "4",
        "--temperature",
        "0",
    ]);
    let mut e = engine(folder, Precision::default());
    let case = &cases(folder)["cases"][0];
    let prompt = text_prompt(&mut e, folder, case);
    let opts = GenerateOptions { max_tokens: 4, ..GenerateOptions::default() };
    let g = pollster::block_on(e.generate_prompt(&prompt, &opts, |_| None)).unwrap();
    assert!(!g.tokens.is_empty());
    assert_eq!(cli.trim_end_matches('\n'), g.text);
    let info = run(&["info", "--model", d]);
    assert!(info.contains("cross-attn:    layers [1, 3]"), "{info}");
}

/// A folder without a chat template: the fallback template writes `<|image|>` for each image
/// part, so an image message still becomes a prompt with one image.
#[test]
fn the_fallback_template_places_the_image_token() {
    let dir = temp_path("mllama_no_template");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture("tiny_mllama_a")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let config = dir.join("tokenizer_config.json");
    let mut json: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert!(json.as_object_mut().unwrap().remove("chat_template").is_some());
    std::fs::write(&config, json.to_string()).unwrap();
    let hf = HfModel::open(&dir).unwrap();
    let opts = ContextOptions { max_ctx: 64, max_chunk: 64, precision: Precision::F32 };
    let mut e = Engine::builder(gpu()).context(opts).hf_text(hf.text_files()).load(&mut Eager(&hf)).unwrap();
    let png = dir.join("img_24x20.png");
    let messages: Vec<ChatMessage> = serde_json::from_value(serde_json::json!([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png.to_str().unwrap()}}, {"type": "text", "text": "Why?"}]}]))
    .unwrap();
    let prompt = e
        .chat_prompt(&messages, None, None, &mut |url| {
            std::fs::read(url).map_err(|err| EngineError::BadImageUrl(err.to_string()))
        })
        .unwrap();
    let image_token = e.vision().and_then(Vision::cross).unwrap().image_token;
    assert_eq!(prompt.images.len(), 1);
    assert_eq!(prompt.tokens.iter().filter(|&&t| t == image_token).count(), 1, "{:?}", prompt.tokens);
}

/// The memory plan, from the folder's headers alone, gives the bytes the loaded engine holds:
/// text and vision weights (kept, or requantized at load as the CLI does: every float matrix
/// but the encoder's tables; the fixtures' 24-wide rows stay BF16), the KV cache of the
/// self-attention layers only, and after a prompt with one image the context's
/// cross-attention store. `webvlm info --plan` prints the store.
#[test]
fn memory_plan_matches_the_loaded_buffers() {
    let runs = [
        ("tiny_mllama_a", LoadQuant::Keep, Precision::default()),
        ("tiny_mllama_b", LoadQuant::Q8_0, Precision::F32),
        ("tiny_mllama_a", LoadQuant::Q4_0, Precision::F32),
    ];
    let mut kept_vision = 0;
    for (folder, quant, precision) in runs {
        let name = format!("{folder} {quant:?}");
        let hf = HfModel::open(fixture(folder)).unwrap();
        let gpu = gpu();
        let limits = PlanLimits::from_caps(gpu.caps());
        let infos: Vec<TensorInfo> = hf.tensors().map(|t| t.info.clone()).collect();
        let plan_opts = PlanOptions { ctx: 64, chunk: 16, kv: precision.kv_dtype(), text_quant: quant, ..PlanOptions::default() };
        let plan = MemoryPlan::new(ModelHeaders { metadata: hf.metadata(), tensors: &infos }, None, limits, plan_opts).unwrap();
        let opts = ContextOptions { max_ctx: 64, max_chunk: 16, precision };
        let mut eager = Eager(&hf);
        let mut e = Engine::builder(gpu)
            .context(opts)
            .hf_text(hf.text_files())
            .load(&mut Requantize { inner: &mut eager, quant })
            .unwrap();
        let vision = e.vision().unwrap().weight_bytes();
        assert_eq!(plan.text_weights, e.decoder().weight_bytes(), "{name}: text weights");
        assert_eq!(plan.vision_weights, vision, "{name}: vision weights");
        assert_eq!(plan.state, e.context().state_bytes(), "{name}: KV cache");
        assert_eq!(plan.state_per_token, e.context().state_bytes_per_token(), "{name}: KV per token");
        assert!(plan.vision_scratch > 0, "{name}");
        if quant == LoadQuant::Keep {
            kept_vision = vision;
        } else {
            assert!(vision < kept_vision, "{name}: the encoder's matrices are requantized too");
        }
        assert_eq!(e.context().cross_attention_bytes(), 0, "{name}: no image yet");
        let all = cases(folder);
        let case = (all["cases"].as_array().unwrap().iter()).find(|c| c["images"].as_array().unwrap().len() == 1).unwrap();
        let prompt = text_prompt(&mut e, folder, case);
        pollster::block_on(e.logits(&prompt)).unwrap();
        assert!(plan.cross_store > 0);
        assert_eq!(plan.cross_store, e.context().cross_attention_bytes(), "{name}: the store of one image");
    }

    let dir = fixture("tiny_mllama_a");
    let out = run_cli(&["info", "--model", dir.to_str().unwrap(), "--plan", "--ctx", "64"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cross-attention") && text.contains("one image per context") && text.contains("fits: yes"), "{text}");
}
