//! Mistral Small 3.1 / 3.2 24B at tiny size (`scripts/make_mistral_small_models.py`): one
//! random `Mistral3ForConditionalGeneration` with a `MistralConfig` text model (RoPE theta 1e9
//! without YaRN, explicit head_dim), converted by llama.cpp's converter both as arch
//! `mistral3` (today's converter) and as arch `llama` (the text saved as `MistralForCausalLM`,
//! as older published files are), each with the same `pixtral` mmproj. Logits of both archs
//! must match transformers' (text at positions 0 and 30000, and a prompt with an image) and
//! each other's. The memory plan computed from these files' headers must equal what the
//! loaded engine holds, and the CLI must refuse a model that does not fit its budget.

use crate::common;
use common::*;

use webvlm::engine::{Engine, Prompt};
use webvlm::gguf::{MappedGguf, TensorInfo};
use webvlm::model::{ContextOptions, MemoryPlan, ModelHeaders, PlanLimits, PlanOptions, Precision};
use webvlm::source::{Eager, LoadQuant};

const MISTRAL3: &str = "tiny_mistral_small_mistral3";
const LLAMA: &str = "tiny_mistral_small_llama";

/// Relative L2 error allowed per logits position with f32 math throughout (`Precision::F32`).
const TOL_F32: f32 = 1e-4;
/// The same at the default precision: the f16 KV cache rounds keys and values (measured
/// 3e-4 to 5.4e-4 here).
const TOL_DEFAULT: f32 = 1e-3;
/// The two archs run the same weights through the same kernels: equal up to float rounding.
const TOL_ARCHS: f32 = 1e-6;

#[derive(serde::Deserialize)]
struct Fixture {
    model: String,
    arch: String,
    cases: Vec<Case>,
    #[serde(default)]
    image_cases: Vec<Case>,
    /// The folder whose mmproj and image cases go with this model.
    vision_from: Option<String>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    tokens: Vec<u32>,
    pos_offset: u32,
    /// Relative to the fixture folder.
    logits: String,
    #[serde(default)]
    images: Vec<String>,
}

fn load_fixture(dir: &str) -> Fixture {
    serde_json::from_str(&std::fs::read_to_string(fixture(dir).join("cases.json")).unwrap()).unwrap()
}

/// The fixture's model with the mistral3 folder's mmproj.
fn engine(dir: &str, precision: Precision) -> Engine {
    let fx = load_fixture(dir);
    let model = MappedGguf::open(fixture(dir).join(&fx.model)).unwrap();
    let mmproj = MappedGguf::open(fixture(MISTRAL3).join("mmproj.gguf")).unwrap();
    let opts = ContextOptions { max_ctx: 256, max_chunk: 16, precision };
    Engine::builder(gpu()).context(opts).vision(&mut Eager(&mmproj), LoadQuant::Keep).load(&mut Eager(&model)).unwrap()
}

/// Logits of one case: its images encoded, its tokens from `pos_offset` on a fresh sequence.
fn run_case(e: &mut Engine, case: &Case) -> Vec<f32> {
    let images =
        case.images.iter().map(|f| e.image_features(&std::fs::read(fixture(MISTRAL3).join(f)).unwrap(), None).unwrap()).collect();
    e.set_position_offset(case.pos_offset);
    let logits = pollster::block_on(e.logits(&Prompt { tokens: case.tokens.clone(), images })).unwrap();
    e.set_position_offset(0);
    logits
}

/// Every case of `dir` (and the image cases of its `vision_from` folder) against
/// transformers, at f32 and at the default precision; returns each case's f32 logits.
fn check_against_transformers(dir: &str) -> Vec<Vec<f32>> {
    check_at(dir, Precision::default(), TOL_DEFAULT);
    check_at(dir, Precision::F32, TOL_F32)
}

fn check_at(dir: &str, precision: Precision, tol: f32) -> Vec<Vec<f32>> {
    let fx = load_fixture(dir);
    let vision = fx.vision_from.as_deref().map_or_else(|| fx.image_cases, |v| load_fixture(v).image_cases);
    assert!(!vision.is_empty(), "{dir}: no image case");
    let mut e = engine(dir, precision);
    let mut all = Vec::new();
    for (case, root) in fx.cases.iter().map(|c| (c, dir)).chain(vision.iter().map(|c| (c, MISTRAL3))) {
        let label = format!("{dir} ({}, {precision:?}) {}", fx.arch, case.name);
        let got = run_case(&mut e, case);
        let (shape, want) = read_npy(&fixture(root).join(&case.logits));
        assert_eq!(shape[0], case.tokens.len(), "{label}: reference positions");
        assert_eq!(got.len(), want.len(), "{label}: logits length");
        let mut worst = 0f32;
        for (t, (g, w)) in got.chunks(shape[1]).zip(want.chunks(shape[1])).enumerate() {
            let err = rel_l2(g, w);
            worst = worst.max(err);
            assert!(err <= tol, "{label} position {t}: rel L2 {err:.2e}");
            assert_eq!(argmax(g), argmax(w), "{label} position {t}: argmax");
        }
        eprintln!("{label}: {} positions from {}, worst rel L2 {worst:.2e}", shape[0], case.pos_offset);
        all.push(got);
    }
    all
}

#[test]
fn mistral_small_as_mistral3_matches_transformers() {
    assert_eq!(load_fixture(MISTRAL3).arch, "mistral3");
    check_against_transformers(MISTRAL3);
}

#[test]
fn mistral_small_as_llama_matches_transformers_and_mistral3() {
    assert_eq!(load_fixture(LLAMA).arch, "llama");
    let llama = check_against_transformers(LLAMA);
    let mistral3 = check_against_transformers(MISTRAL3);
    assert_eq!(llama.len(), mistral3.len());
    for (i, (a, b)) in llama.iter().zip(&mistral3).enumerate() {
        let err = rel_l2(a, b);
        assert!(err <= TOL_ARCHS, "case {i}: llama vs mistral3 rel L2 {err:.2e}");
    }
}

/// The memory plan, from the headers alone, gives the bytes a loaded engine actually holds:
/// weights (text and vision, kept or requantized at load) and KV cache.
#[test]
fn memory_plan_matches_the_loaded_buffers() {
    let cases = [
        (MISTRAL3, "model.gguf", MISTRAL3, "mmproj.gguf", LoadQuant::Keep, Precision::default()),
        (LLAMA, "model.gguf", MISTRAL3, "mmproj.gguf", LoadQuant::Q8_0, Precision::F32),
        ("tiny_mistral3_c", "model.gguf", "tiny_mistral3_c", "mmproj.gguf", LoadQuant::Q4_1, Precision::default()),
        ("tiny_mistral3_tekken", "model.gguf", "tiny_mistral3_tekken", "mmproj.gguf", LoadQuant::Q4_0, Precision::F32),
    ];
    for (dir, model, vdir, mmproj, quant, precision) in cases {
        let model = MappedGguf::open(fixture(dir).join(model)).unwrap();
        let proj = MappedGguf::open(fixture(vdir).join(mmproj)).unwrap();
        let opts = ContextOptions { max_ctx: 200, max_chunk: 16, precision };
        let gpu = gpu();
        let limits = PlanLimits::from_caps(gpu.caps());
        let text: Vec<TensorInfo> = model.tensors().cloned().collect();
        let vision: Vec<TensorInfo> = proj.tensors().cloned().collect();
        let plan_opts =
            PlanOptions { ctx: 200, chunk: 16, kv: precision.kv_dtype(), vision_quant: quant, ..PlanOptions::default() };
        let plan = MemoryPlan::new(
            ModelHeaders { metadata: model.metadata(), tensors: &text },
            Some(ModelHeaders { metadata: proj.metadata(), tensors: &vision }),
            limits,
            plan_opts,
        )
        .unwrap();
        let e = Engine::builder(gpu).context(opts).vision(&mut Eager(&proj), quant).load(&mut Eager(&model)).unwrap();
        assert_eq!(plan.text_weights, e.decoder().weight_bytes(), "{dir}: text weights");
        assert_eq!(plan.vision_weights, e.vision().unwrap().weight_bytes(), "{dir} {quant:?}: vision weights");
        assert_eq!(plan.state, e.context().state_bytes(), "{dir}: KV cache");
        assert_eq!(plan.state_per_token, e.context().state_bytes_per_token(), "{dir}: KV per token");
        eprintln!(
            "{dir}: text {} + vision {} ({quant:?}) + KV {} bytes as planned",
            plan.text_weights, plan.vision_weights, plan.state
        );
    }
}

/// `webvlm info --plan` prints the plan and says whether it fits; a command that loads the
/// model refuses it before uploading when `--gpu-memory` is too small, naming the largest
/// context (and number of sequences at once) that fits.
#[test]
fn cli_plans_and_refuses_a_model_that_does_not_fit() {
    let (model, mmproj) = (fixture(MISTRAL3).join("model.gguf"), fixture(MISTRAL3).join("mmproj.gguf"));
    let (model, mmproj) = (model.to_str().unwrap(), mmproj.to_str().unwrap());
    let out = run_cli(&["info", "--model", model, "--mmproj", mmproj, "--plan", "--ctx", "256", "--gpu-memory", "1G"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("memory plan:") && text.contains("fits: yes"), "{text}");
    assert!(text.contains("largest context that fits: 131072"), "{text}");

    let bin = env!("CARGO_BIN_EXE_webvlm");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let out = run(&["info", "--model", model, "--mmproj", mmproj, "--plan", "--gpu-memory", "8M"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the model needs") && err.contains("8.0 MiB are available") && err.contains("no context fits"), "{err}");

    // Text only, 4 MiB: the weights and buffers fit (at either kernel geometry's chunk size),
    // 32768 positions of KV cache do not.
    let out =
        run(&["logits", "--model", model, "--tokens", "1,5,6", "--ctx", "32768", "--gpu-memory", "4M", "--out", "/dev/null"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("KV cache at 32768 tokens") && err.contains("the largest context that fits is"), "{err}");
    let largest: u32 = err.split("the largest context that fits is ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let ctx = largest.to_string();
    let out = run(&["logits", "--model", model, "--tokens", "1,5,6", "--ctx", &ctx, "--gpu-memory", "4M", "--out", "/dev/null"]);
    assert!(out.status.success(), "at the largest context: {}", String::from_utf8_lossy(&out.stderr));

    // Sequences at once take a context each (its KV cache and step buffers): in 64 MiB, 64
    // do not fit, and the refusal names the most that do, which then run.
    let (ctx, empty) = ("4096", "/dev/null");
    let batch =
        |parallel: &str| run(&["batch", empty, "--model", model, "--ctx", ctx, "--gpu-memory", "64M", "--parallel", parallel]);
    let out = batch("64");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let most = format!("the most sequences that fit at {ctx} tokens: ");
    assert!(err.contains("for 64 sequences") && err.contains(&most), "{err}");
    let most: u32 = err.split(&most).nth(1).unwrap().trim().parse().unwrap();
    assert!((2..64).contains(&most), "{err}");
    let out = batch(&most.to_string());
    assert!(out.status.success(), "{most} at once: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!batch(&(most + 1).to_string()).status.success(), "{} at once", most + 1);
}
