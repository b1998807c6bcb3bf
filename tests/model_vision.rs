//! Images in, logits out: tiny random Mistral 3 models with Pixtral vision towers
//! (`scripts/make_tiny_models.py`, converted by llama.cpp's converter, references from
//! transformers' `Mistral3ForConditionalGeneration`). Each image case checks the projector
//! output per image and the logits at every position; chat cases check the expanded prompt
//! ids against transformers' processor; bad images must leave the engine serving.

use crate::common;
use common::*;
use webvlm::backend::{Buffer, Device};

use std::rc::Rc;

use base64::Engine as _;

use webvlm::chat::ChatMessage;
use webvlm::engine::{Engine, EngineError, Prompt};
use webvlm::gguf::MappedGguf;
use webvlm::image::{preprocess, ImageError};
use webvlm::model::{ContextOptions, Precision, PromptLayout};
use webvlm::source::{Eager, LoadQuant};

/// Relative L2 error allowed per logits position (f32 compute against an f32 reference).
const TOL_LOGITS: f32 = 1e-3;
/// Relative L2 error allowed on the projector output of one image.
const TOL_FEATURES: f32 = 1e-4;
/// Load-time requantization of the vision matrices, relative L2 against the f32 reference
/// on `tiny_mistral3_c` (random N(0, 0.08) weights, 64-wide): measured Q8_0 1.2e-2
/// (features) / 1.7e-2 (logits), Q4_1 0.16 / 0.22, Q4_0 0.19 / 0.24. Limits ~2x those; a
/// wrong block layout gives errors of order 1.
const TOL_Q8_FEATURES: f32 = 2.5e-2;
const TOL_Q8_LOGITS: f32 = 3.5e-2;
const TOL_Q4_FEATURES: f32 = 0.35;
const TOL_Q4_LOGITS: f32 = 0.45;
/// f16 vision matmuls (`MatmulCompute::F16`) on `tiny_mistral3_b`: measured 1.8e-3
/// (features) and 3.6e-3 (logits), in line with the f16 matmul's ~1e-3 per product.
const TOL_F16_FEATURES: f32 = 8e-3;
/// Preprocessed pixels of images that need no resize (same f32 arithmetic as numpy).
const TOL_PIXELS: f32 = 1e-5;

#[derive(serde::Deserialize)]
struct Fixture {
    model: String,
    #[serde(default)]
    image_cases: Vec<ImageCase>,
    #[serde(default)]
    chat_cases: Vec<ChatCase>,
}

#[derive(serde::Deserialize)]
struct ImageCase {
    name: String,
    images: Vec<String>,
    pixel_values: Vec<String>,
    tokens: Vec<u32>,
    logits: String,
    features: Vec<String>,
    mmproj: String,
}

#[derive(serde::Deserialize)]
struct ChatCase {
    name: String,
    messages: Vec<ChatMessage>,
    text: String,
    tokens: Vec<u32>,
}

fn load_fixture(dir: &str) -> Fixture {
    serde_json::from_str(&std::fs::read_to_string(fixture(dir).join("cases.json")).unwrap()).unwrap()
}

fn engine(dir: &str, model: &str, mmproj: &str) -> Engine {
    engine_as(dir, model, mmproj, LoadQuant::Keep)
}

fn engine_as(dir: &str, model: &str, mmproj: &str, quant: LoadQuant) -> Engine {
    engine_on(gpu(), dir, model, mmproj, quant)
}

fn engine_on(dev: webvlm::backend::Device, dir: &str, model: &str, mmproj: &str, quant: LoadQuant) -> Engine {
    let model = MappedGguf::open(fixture(dir).join(model)).unwrap();
    let mmproj = MappedGguf::open(fixture(dir).join(mmproj)).unwrap();
    let opts = ContextOptions { max_ctx: 512, max_chunk: 16, precision: Precision::F32 };
    Engine::builder(dev).context(opts).vision(&mut Eager(&mmproj), quant).load(&mut Eager(&model)).unwrap()
}

fn read(dir: &str, file: &str) -> Vec<u8> {
    std::fs::read(fixture(dir).join(file)).unwrap()
}

/// Per-position relative L2 and argmax checks; returns the worst error.
fn check_logits(label: &str, got: &[f32], want: &[f32], vocab: usize) -> f32 {
    assert_eq!(got.len(), want.len(), "{label}: logits length");
    let mut worst = 0f32;
    for (t, (g, w)) in got.chunks(vocab).zip(want.chunks(vocab)).enumerate() {
        let err = rel_l2(g, w);
        worst = worst.max(err);
        assert!(err <= TOL_LOGITS, "{label} position {t}: rel L2 {err:.2e}");
        assert_eq!(argmax(g), argmax(w), "{label} position {t}: argmax");
    }
    worst
}

/// The largest per-position relative L2 error (no limit checked).
fn worst_rel_l2(got: &[f32], want: &[f32], vocab: usize) -> f32 {
    got.chunks(vocab).zip(want.chunks(vocab)).map(|(g, w)| rel_l2(g, w)).fold(0.0, f32::max)
}

/// The ids with each image's expanded layout collapsed back to one `[IMG]`.
fn collapse(tokens: &[u32], e: &Engine) -> Vec<u32> {
    let PromptLayout::Pixtral { img, brk, end } = e.prompt_layout().unwrap() else { panic!("the tiny VLM has Pixtral's layout") };
    let mut out = Vec::new();
    let mut inside = false;
    for &id in tokens {
        if id == img || id == brk {
            if !inside {
                out.push(img);
            }
            inside = true;
        } else if id == end {
            inside = false;
        } else {
            out.push(id);
        }
    }
    out
}

fn check_image_cases(dir: &str) {
    check_image_cases_on(dir, gpu);
}

/// [`check_image_cases`] on the devices `device` makes (one engine per case).
fn check_image_cases_on(dir: &str, device: fn() -> webvlm::backend::Device) {
    let fx = load_fixture(dir);
    assert!(!fx.image_cases.is_empty(), "{dir}: no image cases");
    for case in &fx.image_cases {
        let mut e = engine_on(device(), dir, &fx.model, &case.mmproj, LoadQuant::Keep);
        let label = format!("{} {dir}/{}", e.device().caps().backend, case.name);
        let mut images = Vec::new();
        for ((file, pixels), features) in case.images.iter().zip(&case.pixel_values).zip(&case.features) {
            let bytes = read(dir, file);
            let px = preprocess(&bytes, e.image_options()).unwrap();
            let (shape, want_px) = read_npy(&fixture(dir).join(pixels));
            assert_eq!(shape, [3, px.height as usize, px.width as usize], "{label} {file}: pixel shape");
            assert!(max_abs(&px.data, &want_px) <= TOL_PIXELS, "{label} {file}: pixels");

            let f = e.image_features(&bytes, None).unwrap();
            let got = pollster::block_on(f.read(e.device())).unwrap();
            let (shape, want) = read_npy(&fixture(dir).join(features));
            assert_eq!(shape, [f.n_tokens() as usize, f.dim as usize], "{label} {file}: feature shape");
            let err = rel_l2(&got, &want);
            assert!(err <= TOL_FEATURES, "{label} {file}: features rel L2 {err:.2e}");
            eprintln!("{label} {file}: {} image tokens ({}x{}), features rel L2 {err:.2e}", f.n_tokens(), f.rows, f.cols);
            images.push(f);
        }
        // The expansion of one [IMG] per image reproduces transformers' processor ids.
        let expanded = e.prompt_with_images(&collapse(&case.tokens, &e), images.clone()).unwrap();
        assert_eq!(expanded.tokens, case.tokens, "{label}: expanded ids");

        let got = pollster::block_on(e.logits(&Prompt { tokens: case.tokens.clone(), images })).unwrap();
        let (shape, want) = read_npy(&fixture(dir).join(&case.logits));
        assert_eq!(shape[0], case.tokens.len(), "{label}: reference positions");
        let worst = check_logits(&label, &got, &want, shape[1]);
        eprintln!("{label}: {} positions, worst rel L2 {worst:.2e}", shape[0]);
    }
}

#[test]
fn tiny_mistral3_tekken_with_images_matches_transformers() {
    check_image_cases("tiny_mistral3_tekken");
}

#[test]
fn tiny_mistral3_b_with_two_images_matches_transformers() {
    check_image_cases("tiny_mistral3_b");
}

#[test]
fn tiny_mistral3_c_with_images_matches_transformers() {
    check_image_cases("tiny_mistral3_c");
}

/// The Pixtral encoder and the decoder on the CPU backend (exact mode): the same features and
/// logits tolerances, on the fixture with two images.
#[test]
fn tiny_mistral3_with_images_on_the_cpu_backend() {
    check_image_cases_on("tiny_mistral3_b", cpu);
}

/// Chats with image parts (data URLs) render through the model's template and expand to
/// the ids of transformers' `PixtralProcessor.apply_chat_template`.
#[test]
fn chat_with_images_gives_the_processor_ids() {
    let dir = "tiny_mistral3_tekken";
    let fx = load_fixture(dir);
    assert!(!fx.chat_cases.is_empty(), "no chat cases");
    let mmproj = "mmproj.gguf";
    let mut e = engine(dir, &fx.model, mmproj);
    for case in &fx.chat_cases {
        assert_eq!(e.template().render(&case.messages, true, None).unwrap(), case.text, "{}: rendered text", case.name);
        // The fixture names image files; send them as data URLs, as a browser would.
        let mut messages = case.messages.clone();
        for m in &mut messages {
            if let webvlm::chat::ChatContent::Parts(parts) = &mut m.content {
                for p in parts {
                    if let webvlm::chat::ContentPart::Image { url: Some(url) } = p {
                        *url =
                            format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(read(dir, url)));
                    }
                }
            }
        }
        let prompt = e.chat_prompt(&messages, None, None, &mut |url| Err(EngineError::BadImageUrl(url.into()))).unwrap();
        assert_eq!(prompt.tokens, case.tokens, "{}: prompt ids", case.name);
    }
}

/// The same image bytes skip the encoder; another size limit does not.
#[test]
fn image_cache_skips_the_encoder_for_the_same_image() {
    let dir = "tiny_mistral3_tekken";
    let fx = load_fixture(dir);
    let case = &fx.image_cases[0];
    let mut e = engine(dir, &fx.model, &case.mmproj);
    let bytes = read(dir, &case.images[0]);
    let a = e.image_features(&bytes, None).unwrap();
    let b = e.image_features(&bytes, None).unwrap();
    assert!(Rc::ptr_eq(&a, &b), "second request did not come from the cache");
    assert_eq!((e.image_cache().misses, e.image_cache().hits), (1, 1));
    e.set_image_max_edge(28).unwrap();
    let c = e.image_features(&bytes, None).unwrap();
    assert_eq!((e.image_cache().misses, c.n_tokens()), (2, 1), "a 28-pixel limit gives one image token");
    // The prompt cache tells the two apart by their contents' digests.
    assert!(a.content.is_some() && a.content != c.content, "{:?} {:?}", a.content, c.content);
}

/// Bad images give typed errors and the engine answers the next request exactly.
#[test]
fn bad_images_leave_the_engine_serving() {
    let dir = "tiny_mistral3_tekken";
    let fx = load_fixture(dir);
    let case = &fx.image_cases[0];
    let mut e = engine(dir, &fx.model, &case.mmproj);
    let png = read(dir, &case.images[0]);
    let bad: [(&str, Vec<u8>); 5] = [
        ("truncated", png[..png.len() / 2].to_vec()),
        ("zero-sized", std::fs::read(fixture("images/zero_width.png")).unwrap()),
        ("bomb", std::fs::read(fixture("images/bomb_30000.png")).unwrap()),
        ("not an image", b"hello, this is text".to_vec()),
        ("unsupported", std::fs::read(fixture("images/tiny.bmp")).unwrap()),
    ];
    for (what, bytes) in &bad {
        match e.image_features(bytes, None) {
            Err(EngineError::Image(err)) => eprintln!("{what}: {err}"),
            Err(other) => panic!("{what}: unexpected error {other}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
    let bad_url = e
        .chat_prompt(&[image_message("data:image/png;base64,@@@")], None, None, &mut |u| Err(EngineError::BadImageUrl(u.into())));
    assert!(matches!(bad_url, Err(EngineError::BadImageUrl(_))), "bad base64");
    let one = vec![e.image_features(&png, None).unwrap()];
    let too_many = e.prompt_with_images(&[1, 5], one);
    assert!(matches!(too_many, Err(EngineError::ImageCount { placeholders: 0, images: 1 })), "no placeholder");
    assert!(matches!(preprocess(&bad[2].1, e.image_options()), Err(ImageError::TooLarge { .. })), "bomb error kind");

    let images = case.images.iter().map(|f| e.image_features(&read(dir, f), None).unwrap()).collect();
    let got = pollster::block_on(e.logits(&Prompt { tokens: case.tokens.clone(), images })).unwrap();
    let (shape, want) = read_npy(&fixture(dir).join(&case.logits));
    check_logits("after bad images", &got, &want, shape[1]);
}

/// `webvlm logits --mmproj --image --tokens` on the two-image case equals the reference.
#[test]
fn cli_logits_with_images() {
    let dir = "tiny_mistral3_b";
    let fx = load_fixture(dir);
    let case = fx.image_cases.iter().max_by_key(|c| c.images.len()).unwrap();
    assert!(case.images.len() >= 2, "the two-image case");
    let out = temp_path("vision-cli.npy");
    let ids: Vec<String> = case.tokens.iter().map(u32::to_string).collect();
    let (model, mmproj) = (fixture(dir).join(&fx.model), fixture(dir).join(&case.mmproj));
    let mut args = vec!["logits".to_string(), "--model".into(), model.display().to_string()];
    args.extend(["--mmproj".into(), mmproj.display().to_string(), "--tokens".into(), ids.join(",")]);
    for f in &case.images {
        args.extend(["--image".into(), fixture(dir).join(f).display().to_string()]);
    }
    // f32 matmuls: the GPU launch shape would pick f16 ones on an adapter with shader-f16.
    args.extend(["--no-f16".into(), "--out".into(), out.display().to_string()]);
    run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (shape, got) = read_npy(&out);
    let (_, want) = read_npy(&fixture(dir).join(&case.logits));
    check_logits("cli", &got, &want, shape[1]);
}

fn image_message(url: &str) -> ChatMessage {
    serde_json::from_value(serde_json::json!({
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]
    }))
    .unwrap()
}

/// Requantizing the vision matrices at load time (`--vision-quant`) saves memory at a
/// measured cost, against transformers' f32 reference (`tiny_mistral3_c`, F32 mmproj).
#[test]
fn load_time_quantization_error_is_measured() {
    let dir = "tiny_mistral3_c";
    let fx = load_fixture(dir);
    let case = fx.image_cases.iter().find(|c| c.mmproj == "mmproj.gguf" && c.images.len() == 2).unwrap();
    let keep_bytes = engine(dir, &fx.model, &case.mmproj).vision().unwrap().weight_bytes();
    for (quant, tol_features, tol_logits) in [
        (LoadQuant::Q8_0, TOL_Q8_FEATURES, TOL_Q8_LOGITS),
        (LoadQuant::Q4_1, TOL_Q4_FEATURES, TOL_Q4_LOGITS),
        (LoadQuant::Q4_0, TOL_Q4_FEATURES, TOL_Q4_LOGITS),
    ] {
        let mut e = engine_as(dir, &fx.model, &case.mmproj, quant);
        let bytes = e.vision().unwrap().weight_bytes();
        assert!(bytes < keep_bytes, "{quant:?}: {bytes} bytes on the GPU, F32 file {keep_bytes}");
        let mut images = Vec::new();
        let mut worst_features = 0f32;
        for (file, features) in case.images.iter().zip(&case.features) {
            let f = e.image_features(&read(dir, file), None).unwrap();
            let got = pollster::block_on(f.read(e.device())).unwrap();
            worst_features = worst_features.max(rel_l2(&got, &read_npy(&fixture(dir).join(features)).1));
            images.push(f);
        }
        let got = pollster::block_on(e.logits(&Prompt { tokens: case.tokens.clone(), images })).unwrap();
        let (shape, want) = read_npy(&fixture(dir).join(&case.logits));
        let worst_logits = worst_rel_l2(&got, &want, shape[1]);
        eprintln!(
            "{quant:?}: vision weights {bytes} B (F32 {keep_bytes} B), features rel L2 {worst_features:.2e}, logits worst rel L2 {worst_logits:.2e}"
        );
        assert!(worst_features <= tol_features, "{quant:?}: features rel L2 {worst_features:.2e}");
        assert!(worst_logits <= tol_logits, "{quant:?}: logits rel L2 {worst_logits:.2e}");
    }
}

/// `webvlm generate --mmproj --image --chat` runs end to end and reports its image.
#[test]
fn cli_generate_with_an_image() {
    let dir = "tiny_mistral3_tekken";
    let fx = load_fixture(dir);
    let case = &fx.image_cases[0];
    let (model, mmproj, image) =
        (fixture(dir).join(&fx.model), fixture(dir).join(&case.mmproj), fixture(dir).join(&case.images[0]));
    let out = run_cli(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--mmproj",
        mmproj.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        "Describe the image.",
        "--chat",
        "--max-tokens",
        "4",
        "--ctx",
        "1024",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("(1 images)"), "{stderr}");
}

/// The f16-tile vision matmuls (`Precision::compute_f16` on adapters with `shader-f16`)
/// against transformers' f32 features and logits.
#[test]
fn f16_vision_matmuls_error_is_measured() {
    let dir = "tiny_mistral3_b";
    let fx = load_fixture(dir);
    let case = fx.image_cases.iter().max_by_key(|c| c.images.len()).unwrap();
    let mut e = engine(dir, &fx.model, &case.mmproj);
    assert!(e.device().caps().f16, "the test adapter (lavapipe) has shader-f16");
    e.set_vision_compute(webvlm::kernels::matmul::MatmulCompute::F16).unwrap();
    let mut images = Vec::new();
    for (file, features) in case.images.iter().zip(&case.features) {
        let f = e.image_features(&read(dir, file), None).unwrap();
        let err = rel_l2(&pollster::block_on(f.read(e.device())).unwrap(), &read_npy(&fixture(dir).join(features)).1);
        eprintln!("f16 vision {file}: features rel L2 {err:.2e}");
        assert!(err <= TOL_F16_FEATURES, "{file}: features rel L2 {err:.2e}");
        images.push(f);
    }
    let got = pollster::block_on(e.logits(&Prompt { tokens: case.tokens.clone(), images })).unwrap();
    let (shape, want) = read_npy(&fixture(dir).join(&case.logits));
    let worst = worst_rel_l2(&got, &want, shape[1]);
    eprintln!("f16 vision: logits worst rel L2 {worst:.2e}");
    assert!(worst <= TOL_F16_FEATURES, "logits rel L2 {worst:.2e}");
}

/// A vocabulary without the encoder's image tokens is refused before any weight is asked
/// for (nothing of the mmproj is uploaded or streamed).
#[test]
fn a_vocabulary_without_image_tokens_is_refused_before_loading_weights() {
    use webvlm::gguf::{Metadata, TensorInfo};

    use webvlm::kernels::quant::Weight;
    use webvlm::source::{LoadError, WeightLoader};

    /// Counts the weights asked for.
    struct Counting<'a>(Eager<'a>, usize);
    impl WeightLoader for Counting<'_> {
        fn metadata(&self) -> &Metadata {
            self.0.metadata()
        }
        fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
            self.0.tensor_info(name)
        }
        fn fill(&mut self, gpu: &Device, name: &str, target: &Weight, row0: u32) -> Result<(), LoadError> {
            self.1 += 1;
            self.0.fill(gpu, name, target, row0)
        }
        fn vector(&mut self, gpu: &Device, name: &str, n: u32) -> Result<Buffer, LoadError> {
            self.1 += 1;
            self.0.vector(gpu, name, n)
        }
    }

    let text = MappedGguf::open(fixture("tiny_llama_spm/model.gguf")).unwrap();
    let mut e = Engine::builder(gpu()).load(&mut Eager(&text)).unwrap();
    let mmproj = MappedGguf::open(fixture("tiny_mistral3_b/mmproj.gguf")).unwrap();
    let mut loader = Counting(Eager(&mmproj), 0);
    let err = e.add_vision(&mut loader, LoadQuant::Keep).unwrap_err();
    assert!(matches!(err, EngineError::NoImageTokens), "{err}");
    assert_eq!(loader.1, 0, "weights were loaded before the vocabulary was checked");
    assert!(e.vision().is_none());
}
