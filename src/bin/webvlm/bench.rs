//! `webvlm bench`: what the adapter in hand attains and how close webvlm gets to it.
//!
//! Prints JSON Lines on stdout (one object per figure, each with a `kind`: `adapter`, `copy`,
//! `read`, `fma`, `dispatch_overhead`, `matvec`, `model`, `launch`, `vision`, `skipped`) and a readable summary
//! on stderr (silenced by `--json-only`). See BENCHMARKS.md for the fields and the figures.
//!
//! Sections: roofline kernels (copy, read-only, pure FMA, dispatch overhead), matvec kernels
//! at Ministral 3 3B shapes, then whole models (a GGUF file, SmolLM2 by default, and with
//! `--synthetic` a random Ministral 3 3B or, with `--shape qwen3.5-*`, a Qwen3.5 size built
//! in memory) through the engine's `Context`, then the vision encoder + projector
//! (`--quick`: a tiny one on a small image; at Ministral 3 3B shapes on 512x512 and
//! 1024x1024 images with `--vision`, opt-in because one 1024x1024 encode takes minutes on a
//! CPU adapter; a Qwen3.5 size's own encoder on a 512x512 image by default). A Qwen3.5 size
//! first prints its structural figures (`structure`: state, KV and weight bytes), computed
//! from its shapes.

mod batch;
mod encoders;
mod launch;
mod mllama;
mod model;
mod qwen;
mod roofline;
mod timing;
mod vision;

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Value};

use webvlm::backend::gpu::GpuOptions;
use webvlm::backend::Device;
use webvlm::gguf::MappedGguf;
use webvlm::model::synthetic::{
    synthetic_ministral3_3b, synthetic_mllama, synthetic_qwen35, MllamaParts, MllamaShape, Qwen35Shape, QwenVisionShape,
    SyntheticShape, VisionShape,
};
use webvlm::source::LoadQuant;

use crate::args::{load_quant, DeviceArgs, Shape, ShapeModel};
use crate::stdout::outln;
use crate::CliResult;
use encoders::VisionSpec;
use model::{bench_model, CrossImages, ModelPlan};
use timing::Budget;
use vision::{bench_vision, VisionPlan};

const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// SmolLM2 where `scripts/fetch_smollm2.sh` puts it: under `$WEBVLM_CACHE` when set, else the
/// first that has it of `${XDG_CACHE_HOME:-$HOME/.cache}/webvlm` and `.cache` (the working
/// folder's; the first when neither has it).
fn default_model() -> PathBuf {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("WEBVLM_CACHE") {
        return dir.join(DEFAULT_MODEL);
    }
    let user = set("XDG_CACHE_HOME").or_else(|| set("HOME").map(|h| h.join(".cache"))).map(|c| c.join("webvlm"));
    let candidates: Vec<PathBuf> = user.into_iter().chain([PathBuf::from(".cache")]).map(|c| c.join(DEFAULT_MODEL)).collect();
    candidates.iter().find(|p| p.exists()).unwrap_or(&candidates[0]).clone()
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A model to time [default: SmolLM2 in $WEBVLM_CACHE/models/ (else ~/.cache/webvlm/models/
    /// or .cache/models/), when there]
    #[arg(long, value_name = "M.gguf")]
    model: Option<PathBuf>,
    /// Time a synthetic model built in memory (random weights): Ministral 3, or a Qwen3.5 size
    #[arg(long)]
    synthetic: bool,
    /// Shapes of the synthetic model (3b, tiny, mistral-small-24b, qwen3.5-0.8b|2b|4b|9b|tiny,
    /// llama3.2-11b-vision, llama3.2-vision-tiny) [default: 3b; tiny with --quick]
    #[arg(long, value_enum)]
    shape: Option<Shape>,
    /// Only the structural figures of a Qwen3.5 `--shape` (state, KV and weight bytes), no GPU
    #[arg(long)]
    structure_only: bool,
    /// Small buffers, shapes and models (CI smoke runs)
    #[arg(long)]
    quick: bool,
    /// Only the JSON lines (no summary on stderr)
    #[arg(long)]
    json_only: bool,
    /// Prompt tokens of the model figures [default: 128, 32 on the 3B synthetic model; --quick: 16, 8 on a synthetic one]
    #[arg(long, value_name = "N")]
    prompt_tokens: Option<usize>,
    /// Decode steps timed [default: 32, 4 on the 3B synthetic model; --quick: 4, 2 on a synthetic one]
    #[arg(long, value_name = "N")]
    decode_tokens: Option<usize>,
    /// Timed prefills [default: 3; 1 on the 3B synthetic model or with --quick]
    #[arg(long, value_name = "N")]
    prefill_reps: Option<usize>,
    /// Repetitions of each timed figure, the median counts [default: 5; 2 with --quick]
    #[arg(long, value_name = "N")]
    reps: Option<usize>,
    /// Seed of the synthetic weights
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Skip the matvec kernel figures
    #[arg(long)]
    no_kernels: bool,
    /// Time each kernel family of a decode step (the default, except on the 3B synthetic model)
    #[arg(long, conflicts_with = "no_breakdown")]
    breakdown: bool,
    /// No per-family breakdown of a decode step
    #[arg(long)]
    no_breakdown: bool,
    /// Skip the default model (SmolLM2)
    #[arg(long)]
    no_model: bool,
    /// No f16 shaders, even where the adapter has shader-f16
    #[arg(long)]
    no_f16: bool,
    /// Time the vision encoder at Ministral 3 3B shapes (minutes on a CPU adapter)
    #[arg(long, conflicts_with = "no_vision")]
    vision: bool,
    /// No vision encoder figures (not even --quick's tiny one)
    #[arg(long)]
    no_vision: bool,
    /// Source image sizes of the vision figures, N (square) or WxH [default: 512,1024; 512 for Qwen3.5; 112 with --quick]
    #[arg(long, value_name = "SIZE,...", value_delimiter = ',', value_parser = parse_size)]
    vision_sizes: Vec<(u32, u32)>,
    /// Decoder blocks of the synthetic model (same work per block, for sizes that do not fit
    /// in memory): times N/2 and N blocks and scales to the full depth by a line through both
    #[arg(long, value_name = "N")]
    layers: Option<u32>,
    /// Vision encoder blocks (same work per block: a per-block figure where 24 take too long;
    /// Llama 3.2 Vision: timed at N/2 and N of its 40 layers and scaled to 40)
    #[arg(long, value_name = "N")]
    vision_layers: Option<u32>,
    /// Also time batched decode steps of 1, 2, 4, ... up to N sequences (aggregate tokens/s)
    #[arg(long, value_name = "N", default_value_t = 0)]
    batch: u32,
    /// With --batch on a GPU with timestamp queries: after each batch size's timing, a few
    /// steps more with every kernel timed, and the GPU time per step of each kernel
    #[arg(long)]
    profile: bool,
    /// Requantize the vision matrices at load time
    #[arg(long, value_name = "Q", default_value = "keep", value_parser = load_quant())]
    vision_quant: LoadQuant,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Source image sides of the vision figures (square images, before preprocessing).
const VISION_SIZES: &[u32] = &[512, 1024];
const QUICK_VISION_SIZES: &[u32] = &[112];
const QWEN_VISION_SIZES: &[u32] = &[512];

/// Where the figures go: JSON Lines on stdout, notes on stderr.
pub struct Out {
    json_only: bool,
    /// Nothing at all (warm-up runs).
    silent: bool,
}

impl Out {
    pub fn emit(&self, v: Value) {
        if !self.silent {
            outln!("{v}");
        }
    }
    pub fn note(&self, s: &str) {
        if !self.json_only {
            eprintln!("{s}");
        }
    }
}

pub fn run(args: &BenchArgs) -> CliResult {
    let quick = args.quick;
    let out = Out { json_only: args.json_only, silent: false };
    if args.structure_only {
        let shape = args.shape.unwrap_or(Shape::Qwen35Tiny);
        let ShapeModel::Qwen35(text, vision) = shape.model() else {
            return Err("--structure-only takes a Qwen3.5 --shape".into());
        };
        qwen::structure(&out, shape.label(), &text, &vision);
        return Ok(());
    }
    let mut budget = Budget::new(quick);
    budget.reps = args.reps.unwrap_or(budget.reps);
    let gpu = args.device.device_with(GpuOptions { allow_f16: !args.no_f16, profile: args.profile, ..Default::default() })?;
    let caps = gpu.caps();
    // The CPU backend's pool; a GPU's host threads (a software adapter runs on them).
    let threads = match &gpu {
        Device::Cpu(cpu) => cpu.pool.threads(),
        Device::Gpu(_) => std::thread::available_parallelism().map_or(0, |n| n.get()),
    };
    out.emit(json!({
        "kind": "adapter", "adapter": caps.adapter, "backend": caps.backend, "software": caps.software,
        "f16": caps.f16, "subgroups": caps.subgroups, "geometry": caps.geometry.name(), "max_storage_binding": caps.max_storage_binding,
        "max_buffer": caps.max_buffer, "quick": quick,
        "threads": threads,
    }));
    out.note(&format!(
        "adapter: {} [{}]{}, {} kernel geometry",
        caps.adapter,
        caps.backend,
        if caps.software { " (CPU implementation)" } else { "" },
        caps.geometry.name()
    ));

    let roof = roofline::roofline(&gpu, &out, quick, budget)?;
    if !args.no_kernels {
        roofline::matvecs(&gpu, &out, &roof, quick, budget)?;
    }

    let default = default_model();
    let model_path = match &args.model {
        Some(p) => Some(p.clone()),
        None if args.synthetic || args.no_model => None,
        None if default.exists() => Some(default),
        None => {
            let shown = default.display();
            out.emit(json!({ "kind": "skipped", "model": shown.to_string(), "reason": "not found (scripts/fetch_smollm2.sh)" }));
            out.note(&format!("skipping {shown}: not found (run scripts/fetch_smollm2.sh)"));
            None
        }
    };
    if let Some(path) = model_path {
        let file = MappedGguf::open(&path)?;
        let plan = ModelPlan {
            prompt_tokens: args.prompt_tokens.unwrap_or(if quick { 16 } else { 128 }),
            decode_tokens: args.decode_tokens.unwrap_or(if quick { 4 } else { 32 }),
            prefill_reps: args.prefill_reps.unwrap_or(if quick { 1 } else { 3 }),
            breakdown: !args.no_breakdown,
            warmup: true,
            batch: args.batch,
        };
        let label = path.file_name().map_or(path.to_string_lossy(), |f| f.to_string_lossy()).into_owned();
        bench_model(&gpu, &out, &label, &file, None, plan, &roof, budget)?;
    }
    if args.synthetic {
        bench_synthetic(&gpu, &out, args, &roof, budget)?;
    }

    if args.no_vision {
        return Ok(());
    }
    let shape = args.shape.filter(|_| args.synthetic);
    let (spec, default_sizes) = match shape.map(Shape::model) {
        // Llama 3.2 Vision's encoder was timed with the model (its per-image cost).
        Some(ShapeModel::Mllama(_)) => return Ok(()),
        // A Qwen3.5 size: its own encoder, on by default, at 512x512.
        Some(ShapeModel::Qwen35(_, v)) => (VisionSpec::Qwen(if quick { QwenVisionShape::tiny() } else { v }), QWEN_VISION_SIZES),
        _ if !quick && !args.vision => {
            out.emit(json!({ "kind": "skipped", "vision": "Pixtral shapes", "reason": "opt-in: --vision" }));
            out.note("skipping the Pixtral vision encoder (opt-in: --vision)");
            return Ok(());
        }
        // The shape's own Pixtral encoder (Ministral 3 3B's by default).
        Some(ShapeModel::Ministral(_, v)) if !quick => (VisionSpec::Pixtral(v), VISION_SIZES),
        _ => (VisionSpec::Pixtral(if quick { VisionShape::tiny() } else { VisionShape::ministral3_3b() }), VISION_SIZES),
    };
    let sizes = match args.vision_sizes.is_empty() {
        false => args.vision_sizes.clone(),
        true => (if quick { QUICK_VISION_SIZES } else { default_sizes }).iter().map(|&s| (s, s)).collect(),
    };
    let plan = VisionPlan {
        // Fewer encoder blocks (same per-block work): a per-block figure where all take too long.
        spec: spec.with_layers(args.vision_layers),
        full_layers: spec.n_layer(),
        sizes,
        seed: args.seed,
        quant: args.vision_quant,
        reps: budget.reps,
        // A 3B encode of a 1024x1024 image takes minutes on a CPU adapter.
        max_seconds: if quick { 1.0 } else { 60.0 },
        warm_on_tiny: !quick && shape.is_none_or(Shape::is_big),
    };
    bench_vision(&gpu, &out, &roof, &plan)?;
    Ok(())
}

/// `--synthetic`: the synthetic model built in memory (a real size after a warm-up on the
/// tiny model of its family). A Qwen3.5 size first prints its structural figures.
fn bench_synthetic(gpu: &Device, out: &Out, args: &BenchArgs, roof: &roofline::Roofline, budget: Budget) -> CliResult {
    let quick = args.quick;
    let shape = args.shape.unwrap_or(if quick { Shape::Tiny } else { Shape::Ministral3b });
    let (name, big, model) = (shape.label(), shape.is_big(), shape.model());
    if let ShapeModel::Qwen35(text, vision) = model {
        qwen::structure(out, name, &text, &vision);
    }
    // Llama 3.2 Vision: its image's states first (the encoder's per-image cost), given to
    // every text run's context.
    let images = match model {
        ShapeModel::Mllama(s) => Some(mllama::image_states(gpu, out, name, &s, args.vision_layers, big, budget.reps, args.seed)?),
        _ => None,
    };
    if big {
        // The tiny model uses the same kernels and weight types: running it compiles every
        // pipeline, so a real size's slow steps need no warm-up runs of their own.
        out.note("compiling pipelines on the tiny synthetic model first");
        let tiny = match model {
            ShapeModel::Ministral(..) => synthetic_ministral3_3b(&SyntheticShape::tiny(), args.seed)?,
            ShapeModel::Qwen35(..) => synthetic_qwen35(&Qwen35Shape::tiny(), args.seed)?,
            ShapeModel::Mllama(..) => synthetic_mllama(&MllamaShape::tiny(), args.seed, MllamaParts::Text)?,
        };
        let plan = ModelPlan { prompt_tokens: 8, decode_tokens: 1, prefill_reps: 1, breakdown: false, warmup: true, batch: 0 };
        let quiet = Out { json_only: true, silent: true };
        let tiny_images = images.as_ref().and_then(|i| i.tiny.as_ref());
        bench_model(gpu, &quiet, "warm-up", &tiny, tiny_images, plan, roof, budget)?;
    }
    let image = images.as_ref().map(|i| &i.image);
    let by_size = |quick_n, big_n, n| match (quick, big) {
        (true, _) => quick_n,
        (false, true) => big_n,
        (false, false) => n,
    };
    let plan = ModelPlan {
        prompt_tokens: args.prompt_tokens.unwrap_or(by_size(8, 32, 128)),
        decode_tokens: args.decode_tokens.unwrap_or(by_size(2, 4, 32)),
        prefill_reps: args.prefill_reps.unwrap_or(by_size(1, 1, 3)),
        // One 3B decode step takes tens of seconds on a CPU adapter: opt in.
        breakdown: if big { args.breakdown } else { !args.no_breakdown },
        warmup: !big,
        batch: args.batch,
    };
    // Family timings of a slow model: one repetition, no extra warm-up.
    let budget = if big { Budget { reps: 1, rep_seconds: 0.0, ..budget } } else { budget };
    let Some(layers) = args.layers else {
        let v = bench_shape(gpu, out, name, model, args.seed, image, plan, roof, budget)?;
        if let (ShapeModel::Mllama(s), Some(states)) = (model, &images) {
            mllama::summary(out, name, &s, states, &v);
        }
        return Ok(());
    };
    let full = model.n_layer();
    if layers < 2 || layers > full {
        return Err(format!("--layers takes 2..={full} for this shape").into());
    }
    // Two depths: the per-block cost is the slope, the rest (embedding, head) the intercept.
    // Llama 3.2 Vision keeps its first blocks, cross-attention layers where they fall (one in
    // five): the line is exact when both depths hold the same share (multiples of 10).
    if let ShapeModel::Mllama(s) = model {
        let cross = |n: u32| MllamaShape { text: webvlm::model::synthetic::MllamaTextShape { n_layer: n, ..s.text }, ..s };
        let share = |n: u32| cross(n).text.cross_layers().len() as f64 / n as f64;
        if share(layers / 2) != share(layers) {
            out.note(&format!(
                "note: {} and {layers} blocks hold different shares of cross-attention layers; the scaled line mixes them                  (use a multiple of 10)",
                layers / 2
            ));
        }
    }
    let mut runs = Vec::new();
    for n in [layers / 2, layers] {
        let label = format!("{name} ({n} of {full} blocks)");
        runs.push((n, bench_shape(gpu, out, &label, model.with_layers(n), args.seed, image, plan, roof, budget)?));
    }
    let scaled = scaled_to_depth(out, name, full, &runs)?;
    out.emit(scaled.clone());
    if let (ShapeModel::Mllama(s), Some(states)) = (model, &images) {
        mllama::summary(out, name, &s, states, &scaled);
    }
    Ok(())
}

/// Builds the synthetic model of `model` in memory and times it (with `images` given to a
/// cross-attention decoder's context).
#[allow(clippy::too_many_arguments)]
fn bench_shape(
    gpu: &Device,
    out: &Out,
    name: &str,
    model: ShapeModel,
    seed: u64,
    images: Option<&CrossImages>,
    plan: ModelPlan,
    roof: &roofline::Roofline,
    budget: Budget,
) -> Result<Value, Box<dyn std::error::Error>> {
    let t = std::time::Instant::now();
    let (src, weight_bytes) = match model {
        ShapeModel::Ministral(s, _) => (synthetic_ministral3_3b(&s, seed)?, Some(s.weight_bytes())),
        ShapeModel::Qwen35(s, _) => (synthetic_qwen35(&s, seed)?, Some(s.weight_bytes())),
        // The text decoder only: the encoder was timed on its own.
        ShapeModel::Mllama(s) => (synthetic_mllama(&s, seed, MllamaParts::Text)?, None),
    };
    let size = weight_bytes.map_or(String::new(), |b| format!("{:.2} GB of ", b as f64 / 1e9));
    out.note(&format!("{name}: {size}random weights built in {:.1} s", t.elapsed().as_secs_f64()));
    bench_model(gpu, out, name, &src, images, plan, roof, budget)
}

/// The figures of a model of `full` blocks from runs at two smaller depths: each time a line
/// `a + b * blocks` through the two ([`timing::scaled_to`], which refuses a non-positive
/// figure), GPU bytes likewise (exact: every block has the same weights and KV rows).
fn scaled_to_depth(out: &Out, name: &str, full: u32, runs: &[(u32, Value)]) -> Result<Value, String> {
    let [(n0, v0), (n1, v1)] = runs else { return Err(format!("{name}: two depths to scale from, not {}", runs.len())) };
    let at_full = |key: &str| {
        let (y0, y1) = (v0[key].as_f64().unwrap_or(0.0), v1[key].as_f64().unwrap_or(0.0));
        timing::scaled_to(&format!("{name}: {key}"), full, (*n0, y0), (*n1, y1))
    };
    let (prefill_s, decode_s) = (at_full("prefill_seconds")?, at_full("decode_seconds_per_token")?);
    let prompt_tokens = v1["prompt_tokens"].as_f64().unwrap_or(0.0);
    let mut v = json!({
        "kind": "model_scaled", "model": name, "n_layer": full, "measured_layers": [n0, n1], "scaled": true,
        "prompt_tokens": prompt_tokens, "prefill_seconds": prefill_s, "prefill_tokens_per_s": prompt_tokens / prefill_s,
        "decode_seconds_per_token": decode_s, "decode_tokens_per_s": 1.0 / decode_s,
        "weight_bytes_on_gpu": at_full("weight_bytes_on_gpu")?, "state_bytes": at_full("state_bytes")?,
        "dispatches_per_token": at_full("dispatches_per_token")?,
    });
    // A cross-attention decoder's image store: its fill and bytes grow with the cross layers.
    for key in ["cross_fill_seconds", "cross_store_bytes"] {
        if v1.get(key).is_some_and(|x| x.is_number()) {
            v[key] = json!(at_full(key)?);
        }
    }
    out.note(&format!(
        "{name}, scaled from {n0} and {n1} blocks to {full}: prefill {:.2} tokens/s, decode {:.3} tokens/s, {:.2} GB of weights and {:.0} MiB of KV cache on the GPU",
        prompt_tokens / prefill_s,
        1.0 / decode_s,
        v["weight_bytes_on_gpu"].as_f64().unwrap_or(0.0) / 1e9,
        v["state_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
    ));
    Ok(v)
}

/// `512` (square) or `640x480` (width x height).
fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let num = |v: &str| v.trim().parse::<u32>().ok().filter(|&n| n > 0);
    let size = match s.split_once('x') {
        Some((w, h)) => num(w).zip(num(h)),
        None => num(s).map(|n| (n, n)),
    };
    size.ok_or_else(|| format!("{s:?} is not N or WxH"))
}
