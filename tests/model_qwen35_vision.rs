//! Qwen3.5 image prompts end to end (`tests/fixtures/tiny_qwen35_a`: the hybrid decoder
//! with its `qwen3vl_merger` mmproj): the engine's own Qwen preprocessing, the expanded
//! prompt, the decoder's interleaved M-RoPE at the image tokens' (t, h, w) positions, and the
//! logits of every position against transformers' `Qwen3_5ForConditionalGeneration` (f32:
//! relative L2 <= 1e-3 and the same argmax) — in one prefill, in chunks of 7, and token by
//! token after a prefill through the images, through chat messages and the CLI. The
//! fixtures' images are one merged row or column, so text after them has the rows' positions
//! (transformers' `rope_deltas` 0); images of 2 x 2 and 2 x 3 merged patches put the text
//! 5 positions behind its rows, where decode steps, chunked prefills, restored snapshots and
//! a second chat turn must all agree with one prefill of the whole sequence.

use crate::common;

use std::cell::Cell;
use std::rc::Rc;

use base64::Engine as _;
use common::*;
use serde_json::Value;
use webvlm::chat::ChatMessage;
use webvlm::engine::{Engine, EngineError, GenerateOptions, Generation, Prompt};
use webvlm::gguf::{GgufError, MappedGguf, MetaValue, Metadata, TensorInfo};
use webvlm::model::vision::mrope_positions;
use webvlm::model::{Context, ContextOptions, ImageFeatures, Precision, PromptImages};
use webvlm::source::{Eager, LoadQuant, TensorSource};

const DIR: &str = "tiny_qwen35_a";
const VOCAB: usize = 545;
/// Logits against transformers' f32 reference (relative L2 per position).
const TOL_LOGITS: f32 = 1e-3;
/// Our decode steps or chunks against our own one-prefill logits (f32; summation order only).
const TOL_SELF: f32 = 1e-4;

struct Case {
    name: String,
    images: Vec<String>,
    text: String,
    tokens: Vec<u32>,
    logits: Vec<f32>,
}

fn fixture_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(DIR).join("cases.json")).unwrap()).unwrap()
}

fn cases() -> Vec<Case> {
    let json = fixture_json();
    let strings = |v: &Value| v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect::<Vec<_>>();
    (json["image_cases"].as_array().unwrap().iter())
        .map(|c| {
            let tokens: Vec<u32> = c["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
            let (shape, logits) = read_npy(&fixture(DIR).join(c["logits"].as_str().unwrap()));
            assert_eq!(shape, [tokens.len(), VOCAB]);
            let (name, text) = (c["name"].as_str().unwrap().into(), c["text"].as_str().unwrap().into());
            Case { name, images: strings(&c["images"]), text, tokens, logits }
        })
        .collect()
}

/// The fixture processor's area bounds (`min_pixels`, `max_pixels`).
fn area() -> (u64, u64) {
    let p = &fixture_json()["image_processor"];
    (p["min_pixels"].as_u64().unwrap(), p["max_pixels"].as_u64().unwrap())
}

/// The chat template of the tests (in place of the file's): content parts as Qwen3-VL's
/// template renders them (an image as `<|vision_start|><|image_pad|><|vision_end|>`), no
/// thinking, as the fixture's cases were rendered.
const TEMPLATE: &str = "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\n' }}\
{%- if m['content'] is string %}{{- m['content'] }}{%- else %}{%- for p in m['content'] %}\
{%- if p['type'] == 'text' %}{{- p['text'] }}{%- else %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}{%- endif %}\
{%- endfor %}{%- endif %}{{- '<|im_end|>\n' }}{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}";

/// The fixture model with [`TEMPLATE`] as its `tokenizer.chat_template`.
struct WithTemplate {
    model: MappedGguf,
    metadata: Metadata,
}

impl WithTemplate {
    fn open() -> WithTemplate {
        let model = MappedGguf::open(fixture(DIR).join("model.gguf")).unwrap();
        let mut metadata = Metadata::new();
        for (k, v) in model.metadata().iter().filter(|(k, _)| *k != "tokenizer.chat_template") {
            metadata.insert(k.to_string(), v.clone()).unwrap();
        }
        metadata.insert("tokenizer.chat_template".into(), MetaValue::String(TEMPLATE.into())).unwrap();
        WithTemplate { model, metadata }
    }
}

impl TensorSource for WithTemplate {
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.model.tensor_info(name)
    }
    fn tensor_data(&self, name: &str) -> Result<std::borrow::Cow<'_, [u8]>, GgufError> {
        self.model.tensor_data(name)
    }
}

/// An f32 engine with the fixture processor's area bounds, prefilling in chunks of `chunk`.
fn engine(chunk: u32) -> Engine {
    engine_on(gpu(), chunk)
}

fn engine_on(dev: webvlm::backend::Device, chunk: u32) -> Engine {
    let model = WithTemplate::open();
    let proj = MappedGguf::open(fixture(DIR).join("mmproj.gguf")).unwrap();
    let opts = ContextOptions { max_ctx: 512, max_chunk: chunk, precision: Precision::F32 };
    let mut e = Engine::builder(dev).context(opts).vision(&mut Eager(&proj), LoadQuant::Keep).load(&mut Eager(&model)).unwrap();
    let (lo, hi) = area();
    e.set_image_area(Some(lo), Some(hi)).unwrap();
    e
}

fn read(file: &str) -> Vec<u8> {
    std::fs::read(fixture(DIR).join(file)).unwrap()
}

fn data_url(bytes: &[u8]) -> String {
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A `w x h` PNG of a colour gradient.
fn png(w: u32, h: u32) -> Vec<u8> {
    let img =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, ((x + y) % 256) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// One user message: `text` with each `<|vision_start|><|image_pad|><|vision_end|>` an
/// image part, the images given as data URLs in order.
fn user_message(text: &str, images: &[Vec<u8>]) -> ChatMessage {
    let mut parts = Vec::new();
    let mut images = images.iter();
    for (i, piece) in text.split("<|vision_start|><|image_pad|><|vision_end|>").enumerate() {
        if i > 0 {
            parts.push(serde_json::json!({"type": "image_url", "image_url": {"url": data_url(images.next().unwrap())}}));
        }
        if !piece.is_empty() {
            parts.push(serde_json::json!({"type": "text", "text": piece}));
        }
    }
    serde_json::from_value(serde_json::json!({"role": "user", "content": parts})).unwrap()
}

/// The user text of a case's rendered prompt.
fn user_text(case: &Case) -> &str {
    case.text.strip_prefix("<|im_start|>user\n").unwrap().split("<|im_end|>").next().unwrap()
}

/// Worst relative L2 over the rows and whether every argmax agrees.
fn compare(got: &[f32], want: &[f32]) -> (f32, bool) {
    assert_eq!(got.len(), want.len(), "logits length");
    let mut worst = 0f32;
    let mut same = true;
    for (g, w) in got.chunks(VOCAB).zip(want.chunks(VOCAB)) {
        worst = worst.max(rel_l2(g, w));
        same &= argmax(g) == argmax(w);
    }
    (worst, same)
}

fn check(label: &str, got: &[f32], want: &[f32], tol: f32) -> f32 {
    let (err, same) = compare(got, want);
    eprintln!("{label}: {} positions, worst rel L2 {err:.2e}, argmax equal {same}", got.len() / VOCAB);
    assert!(err <= tol && same, "{label}: rel L2 {err:.2e}, argmax equal {same}");
    err
}

fn chat_prompt(e: &mut Engine, message: ChatMessage) -> Prompt {
    e.chat_prompt(&[message], None, None, &mut |url| Err(EngineError::BadImageUrl(url.into()))).unwrap()
}

/// Logits of `tokens` in a fresh context of `e`'s decoder: a prefill of `tokens[..k]` (all
/// the images), then one decode step per token (the host feeds each), as generation runs.
fn prefill_then_decode(e: &Engine, tokens: &[u32], images: &[Rc<ImageFeatures>], k: usize) -> Vec<f32> {
    let (gpu, dec) = (e.device(), e.decoder());
    let opts = ContextOptions { max_ctx: 512, max_chunk: 16, precision: Precision::F32 };
    let mut ctx = Context::new(gpu, dec, opts).unwrap();
    let placed = PromptImages { token: e.prompt_layout().unwrap().fill(), images };
    let mut got = pollster::block_on(ctx.logits_with_images(gpu, dec, &tokens[..k], Some(&placed))).unwrap();
    // Through a snapshot of the prefix: the restored sequence keeps its position delta.
    let snapshot = ctx.save_state(gpu, k as u32).unwrap();
    ctx.reset();
    ctx.restore_state(gpu, &snapshot, k as u32).unwrap();
    assert_eq!(ctx.n_past(), k as u32);
    for &t in &tokens[k..] {
        ctx.submit_token(gpu, dec, t).unwrap();
        got.extend(pollster::block_on(ctx.read_logits(gpu, dec)).unwrap());
    }
    got
}

/// The index after the prompt's last image token.
fn after_images(e: &Engine, tokens: &[u32]) -> usize {
    let pad = e.prompt_layout().unwrap().fill();
    tokens.iter().rposition(|&t| t == pad).unwrap() + 1
}

#[test]
fn image_prompts_match_transformers() {
    check_image_prompts(gpu);
}

/// The Qwen vision encoder, M-RoPE and the hybrid decoder on the CPU backend (exact mode).
#[test]
fn image_prompts_match_transformers_on_the_cpu_backend() {
    check_image_prompts(cpu);
}

fn check_image_prompts(device: fn() -> webvlm::backend::Device) {
    for case in cases() {
        for chunk in [128, 7] {
            let mut e = engine_on(device(), chunk);
            let images: Vec<_> = case.images.iter().map(|f| e.image_features(&read(f), None).unwrap()).collect();
            let got = pollster::block_on(e.logits(&Prompt { tokens: case.tokens.clone(), images: images.clone() })).unwrap();
            check(&format!("{} chunk {chunk}", case.name), &got, &case.logits, TOL_LOGITS);
            if chunk == 128 {
                let k = after_images(&e, &case.tokens);
                let got = prefill_then_decode(&e, &case.tokens, &images, k);
                check(&format!("{} prefill {k} then decode", case.name), &got, &case.logits, TOL_LOGITS);
            }
        }
    }
}

/// Chat messages with data-URL images → the engine's Qwen preprocessing and template → the
/// processor's ids → transformers' logits; the image cache keys on the area bounds.
#[test]
fn chats_with_images_match_transformers() {
    let mut e = engine(16);
    for case in cases() {
        let images: Vec<_> = case.images.iter().map(|f| read(f)).collect();
        let prompt = chat_prompt(&mut e, user_message(user_text(&case), &images));
        assert_eq!(prompt.tokens, case.tokens, "{}: prompt ids", case.name);
        let got = pollster::block_on(e.logits(&prompt)).unwrap();
        check(&format!("{} chat", case.name), &got, &case.logits, TOL_LOGITS);
    }
    // The encoder's default bounds (at least 256² pixels) upscale the same image: more tokens,
    // another cache entry.
    let bytes = read("img_100x44.png");
    let bounded = e.image_features(&bytes, None).unwrap();
    let misses = e.image_cache().misses;
    e.set_image_area(None, None).unwrap();
    let default = e.image_features(&bytes, None).unwrap();
    assert_eq!(e.image_cache().misses, misses + 1, "other bounds, other pixels: encoded again");
    assert_eq!((bounded.rows, bounded.cols), (1, 3));
    assert!(default.n_tokens() > bounded.n_tokens(), "{}x{}", default.rows, default.cols);
    assert!(e.set_image_area(Some(100), Some(10)).is_err());
    assert!(e.set_image_area(None, Some(0)).is_err());
}

/// `webvlm logits --mmproj --image --tokens --kv-f32` with the processor's area bounds on the
/// two-image case equals transformers' logits.
#[test]
fn cli_logits_with_images() {
    let case = cases().into_iter().find(|c| c.images.len() == 2).unwrap();
    let out = temp_path("qwen35-vision-cli.npy");
    let ids: Vec<String> = case.tokens.iter().map(u32::to_string).collect();
    let (lo, hi) = area();
    let mut args: Vec<String> = ["logits", "--model"].map(String::from).to_vec();
    args.push(fixture(DIR).join("model.gguf").display().to_string());
    args.extend(["--mmproj".into(), fixture(DIR).join("mmproj.gguf").display().to_string()]);
    args.extend(["--tokens".into(), ids.join(","), "--kv-f32".into(), "--chunk".into(), "7".into()]);
    args.extend(["--image-min-area".into(), lo.to_string(), "--image-max-area".into(), hi.to_string()]);
    for f in &case.images {
        args.extend(["--image".into(), fixture(DIR).join(f).display().to_string()]);
    }
    args.extend(["--out".into(), out.display().to_string()]);
    run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (shape, got) = read_npy(&out);
    assert_eq!(shape, [case.tokens.len(), VOCAB]);
    check("cli two_images", &got, &case.logits, TOL_LOGITS);
}

/// A prompt whose images are 2 x 2 and 2 x 3 merged patches: text after them runs 5
/// positions behind its rows.
fn delta_prompt(e: &mut Engine) -> Prompt {
    let text = "Look: <|vision_start|><|image_pad|><|vision_end|> and <|vision_start|><|image_pad|><|vision_end|>, then say what differs.";
    let prompt = chat_prompt(e, user_message(text, &[png(64, 64), png(96, 64)]));
    let grids: Vec<_> = prompt.images.iter().map(|f| (1, f.rows, f.cols)).collect();
    assert_eq!(grids, [(1, 2, 2), (1, 2, 3)]);
    let pos = mrope_positions(&prompt.tokens, e.prompt_layout().unwrap().fill(), &grids).unwrap();
    assert_eq!(pos.rope_delta(), -5);
    prompt
}

/// Decode steps after an image continue at the rows' positions + the delta: a prefill
/// through the images then one step per token (through a saved and restored snapshot), and
/// prefill chunks of 7, give the rows of one prefill of the whole prompt.
#[test]
fn decode_after_images_continues_at_the_delta() {
    let mut e = engine(128);
    let prompt = delta_prompt(&mut e);
    let whole = pollster::block_on(e.logits(&prompt)).unwrap();
    let k = after_images(&e, &prompt.tokens);
    assert!(prompt.tokens.len() - k > 8, "text after the images");
    let got = prefill_then_decode(&e, &prompt.tokens, &prompt.images, k);
    check(&format!("delta -5: prefill {k} then decode"), &got, &whole, TOL_SELF);
    let mut chunked = engine(7);
    let prompt7 = delta_prompt(&mut chunked);
    let got = pollster::block_on(chunked.logits(&prompt7)).unwrap();
    check("delta -5: chunks of 7", &got, &whole, TOL_SELF);
}

/// Greedy generation from `prompt` (aborted after `abort_after` tokens when given: the
/// pipelined loop then drops its surplus step).
fn generate(e: &mut Engine, prompt: &Prompt, max_tokens: u32, abort_after: Option<usize>) -> Generation {
    let abort = Rc::new(Cell::new(false));
    let opts = GenerateOptions { max_tokens, ignore_eos: true, abort: Some(abort.clone()), ..Default::default() };
    let mut seen = 0;
    pollster::block_on(e.generate_prompt(prompt, &opts, |_| {
        seen += 1;
        if abort_after.is_some_and(|n| seen >= n) {
            abort.set(true);
        }
        None
    }))
    .unwrap()
}

/// Generation continues after the images at the right positions, and a second turn that
/// reuses the cached first turn (images, reply and all) generates what a fresh engine does
/// from the whole second prompt; with generation ended by `max_tokens` or by an abort.
#[test]
fn second_turn_reuses_a_cached_image_prefix() {
    for abort_after in [None, Some(2)] {
        let mut e = engine(32);
        let first = delta_prompt(&mut e);
        let g1 = generate(&mut e, &first, 6, abort_after);
        assert_eq!(g1.cached_tokens, 0);
        // The first reply is what teacher forcing of prompt + reply picks at every step.
        let mut forced = first.clone();
        forced.tokens.extend(&g1.tokens);
        let logits = pollster::block_on(e.logits(&forced)).unwrap();
        let picks: Vec<u32> = logits.chunks(VOCAB).skip(first.tokens.len() - 1).map(|r| argmax(r) as u32).collect();
        assert_eq!(&picks[..g1.tokens.len()], &g1.tokens[..], "abort after {abort_after:?}: greedy reply");

        let mut e = engine(32);
        let first = delta_prompt(&mut e);
        let g1 = generate(&mut e, &first, 6, abort_after);
        let mut second = first.clone();
        second.tokens.extend(&g1.tokens);
        let more = first.tokens.len() - 12;
        second.tokens.extend(&first.tokens[more..]);
        let g2 = generate(&mut e, &second, 6, None);
        assert_eq!(g2.cached_tokens, first.tokens.len() + g1.tokens.len() - 1, "abort after {abort_after:?}");
        let mut fresh = engine(32);
        let fresh_first = delta_prompt(&mut fresh);
        let mut fresh_second = fresh_first.clone();
        fresh_second.tokens = second.tokens.clone();
        let want = generate(&mut fresh, &fresh_second, 6, None);
        assert_eq!(g2.tokens, want.tokens, "abort after {abort_after:?}: second turn");
        if abort_after.is_some() {
            assert!(g1.tokens.len() < 6, "aborted early");
        }
    }
}

/// Without area bounds, the image edge (the engine's, or a request's `image_max_edge`) bounds
/// the resized area to its square; explicit bounds take precedence.
#[test]
fn the_image_edge_bounds_the_area() {
    let mut e = engine(64);
    let tokens = |e: &mut Engine, edge: Option<u32>| {
        let opts = e.image_options_for(edge).unwrap();
        e.image_features(&png(600, 400), Some(&opts)).unwrap().n_tokens() as u64
    };
    let (lo, hi) = area();
    let n = tokens(&mut e, Some(128));
    assert!(n * 1024 <= hi && n > 16, "explicit bounds, not the edge's square: {n} tokens");
    e.set_image_area(None, None).unwrap();
    for edge in [128u32, 256, 512] {
        let n = tokens(&mut e, Some(edge));
        // One token per 32 x 32 pixels, at most the square's, and not far below it.
        let most = (edge as u64).pow(2) / 1024;
        assert!(n <= most && n * 2 > most, "edge {edge}: {n} tokens");
    }
    e.set_image_area(Some(lo), None).unwrap();
    assert!(tokens(&mut e, Some(128)) <= 16, "an explicit smallest area alone leaves the edge bound");
}
