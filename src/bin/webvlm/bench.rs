//! `webvlm bench`: what the adapter in hand attains and how close webvlm gets to it.
//!
//! Prints JSON Lines on stdout (one object per figure, each with a `kind`: `adapter`, `copy`,
//! `read`, `fma`, `dispatch_overhead`, `matvec`, `model`, `vision`, `skipped`) and a readable summary
//! on stderr (silenced by `--json-only`). See BENCHMARKS.md for the fields and the figures.
//!
//! Sections: roofline kernels (copy, read-only, pure FMA, dispatch overhead), matvec kernels
//! at Ministral 3 3B shapes, then whole models (a GGUF file, SmolLM2 by default, and with
//! `--synthetic` a random Ministral 3 3B built in memory) through the engine's `Context`,
//! then the vision encoder + projector (`--quick`: a tiny one on a small image; at Ministral 3
//! 3B shapes on 512x512 and 1024x1024 images with `--vision`, opt-in because one 1024x1024
//! encode takes minutes on a CPU adapter).

mod model;
mod roofline;
mod timing;
mod vision;

use serde_json::{json, Value};

use webvlm::gguf::MappedGguf;
use webvlm::gpu::{Gpu, GpuOptions};
use webvlm::model::synthetic::{synthetic_ministral3_3b, SyntheticShape, VisionShape};
use webvlm::source::LoadQuant;

use crate::{CliResult, Flags};
use model::{bench_model, ModelPlan};
use timing::Budget;
use vision::{bench_vision, VisionPlan};

const DEFAULT_MODEL: &str = ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const SWITCHES: &[&str] =
    &["synthetic", "quick", "json-only", "no-kernels", "no-model", "breakdown", "no-breakdown", "no-f16", "vision", "no-vision"];
const VALUES: &[&str] = &[
    "model",
    "shape",
    "prompt-tokens",
    "decode-tokens",
    "prefill-reps",
    "reps",
    "seed",
    "vision-sizes",
    "vision-quant",
    "vision-layers",
];
/// Source image sides of the vision figures (square images, before preprocessing).
const VISION_SIZES: &[u32] = &[512, 1024];
const QUICK_VISION_SIZES: &[u32] = &[112];

/// Where the figures go: JSON Lines on stdout, notes on stderr.
pub struct Out {
    json_only: bool,
    /// Nothing at all (warm-up runs).
    silent: bool,
}

impl Out {
    pub fn emit(&self, v: Value) {
        if !self.silent {
            println!("{v}");
        }
    }
    pub fn note(&self, s: &str) {
        if !self.json_only {
            eprintln!("{s}");
        }
    }
}

pub fn run(args: &[String]) -> CliResult {
    let flags = Flags::parse(args, SWITCHES)?;
    flags.only(&[SWITCHES, VALUES].concat())?;
    let quick = flags.has("quick");
    let out = Out { json_only: flags.has("json-only"), silent: false };
    let mut budget = Budget::new(quick);
    budget.reps = flags.num("reps", budget.reps)?;
    let gpu = Gpu::new_blocking(GpuOptions { allow_f16: !flags.has("no-f16"), ..Default::default() })?;
    let caps = &gpu.caps;
    out.emit(json!({
        "kind": "adapter", "adapter": caps.adapter, "backend": caps.backend, "software": caps.software,
        "f16": caps.f16, "subgroups": caps.subgroups, "max_storage_binding": caps.max_storage_binding,
        "max_buffer": caps.max_buffer, "quick": quick,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    }));
    out.note(&format!(
        "adapter: {} [{}]{}",
        caps.adapter,
        caps.backend,
        if caps.software { " (CPU implementation)" } else { "" }
    ));

    let roof = roofline::roofline(&gpu, &out, quick, budget)?;
    if !flags.has("no-kernels") {
        roofline::matvecs(&gpu, &out, &roof, quick, budget)?;
    }

    let num = |name: &str, default: usize| flags.num(name, default);
    let breakdown = !flags.has("no-breakdown");
    let forced_breakdown = flags.has("breakdown");
    let model_path = match flags.get("model") {
        Some(p) => Some(p.to_string()),
        None if flags.has("synthetic") || flags.has("no-model") => None,
        None if std::path::Path::new(DEFAULT_MODEL).exists() => Some(DEFAULT_MODEL.into()),
        None => {
            out.emit(json!({ "kind": "skipped", "model": DEFAULT_MODEL, "reason": "not found (scripts/fetch_smollm2.sh)" }));
            out.note(&format!("skipping {DEFAULT_MODEL}: not found (run scripts/fetch_smollm2.sh)"));
            None
        }
    };
    if let Some(path) = model_path {
        let file = MappedGguf::open(&path)?;
        let plan = ModelPlan {
            prompt_tokens: num("prompt-tokens", if quick { 16 } else { 128 })?,
            decode_tokens: num("decode-tokens", if quick { 4 } else { 32 })?,
            prefill_reps: num("prefill-reps", if quick { 1 } else { 3 })?,
            breakdown,
            warmup: true,
        };
        let label = std::path::Path::new(&path).file_name().map_or(path.clone(), |f| f.to_string_lossy().into_owned());
        bench_model(&gpu, &out, &label, &file, plan, &roof, budget)?;
    }
    if flags.has("synthetic") {
        let (shape, name) = match flags.get("shape").unwrap_or(if quick { "tiny" } else { "3b" }) {
            "3b" => (SyntheticShape::ministral3_3b(), "synthetic Ministral 3 3B"),
            "tiny" => (SyntheticShape::tiny(), "synthetic tiny mistral3"),
            other => return Err(format!("--shape: {other:?} is not 3b or tiny").into()),
        };
        let big = shape == SyntheticShape::ministral3_3b();
        let seed = flags.num("seed", 1)?;
        if big {
            // The tiny model uses the same kernels and weight types: running it compiles every
            // pipeline, so the 3B model's slow steps need no warm-up runs of their own.
            out.note("compiling pipelines on the tiny synthetic model first");
            let tiny = synthetic_ministral3_3b(&SyntheticShape::tiny(), seed)?;
            let plan = ModelPlan { prompt_tokens: 8, decode_tokens: 1, prefill_reps: 1, breakdown: false, warmup: true };
            let quiet = Out { json_only: true, silent: true };
            bench_model(&gpu, &quiet, "warm-up", &tiny, plan, &roof, budget)?;
        }
        let t = std::time::Instant::now();
        let src = synthetic_ministral3_3b(&shape, seed)?;
        out.note(&format!(
            "{name}: {:.2} GB of random weights built in {:.1} s",
            shape.weight_bytes() as f64 / 1e9,
            t.elapsed().as_secs_f64()
        ));
        let plan = ModelPlan {
            prompt_tokens: num(
                "prompt-tokens",
                if quick {
                    8
                } else if big {
                    32
                } else {
                    128
                },
            )?,
            decode_tokens: num(
                "decode-tokens",
                if quick {
                    2
                } else if big {
                    4
                } else {
                    32
                },
            )?,
            prefill_reps: num("prefill-reps", if quick || big { 1 } else { 3 })?,
            // One 3B decode step takes tens of seconds on a CPU adapter: opt in.
            breakdown: if big { forced_breakdown } else { breakdown },
            warmup: !big,
        };
        // Family timings of a slow model: one repetition, no extra warm-up.
        let budget = if big { Budget { reps: 1, rep_seconds: 0.0, ..budget } } else { budget };
        bench_model(&gpu, &out, name, &src, plan, &roof, budget)?;
    }

    if flags.has("no-vision") {
        return Ok(());
    }
    if !quick && !flags.has("vision") {
        out.emit(json!({ "kind": "skipped", "vision": "Ministral 3 3B shapes", "reason": "opt-in: --vision" }));
        out.note("skipping the vision encoder at Ministral 3 3B shapes (opt-in: --vision)");
        return Ok(());
    }
    let sizes = match flags.get("vision-sizes") {
        Some(list) => list.split(',').map(parse_size).collect::<Result<Vec<_>, _>>()?,
        None => (if quick { QUICK_VISION_SIZES } else { VISION_SIZES }).iter().map(|&s| (s, s)).collect(),
    };
    let quant: LoadQuant = match flags.get("vision-quant") {
        Some(q) => q.parse().map_err(|e| format!("--vision-quant: {e}"))?,
        None => LoadQuant::Keep,
    };
    let mut shape = if quick { VisionShape::tiny() } else { VisionShape::ministral3_3b() };
    // Fewer encoder blocks (same per-block work): a per-block figure where 24 take too long.
    shape.n_layer = flags.num("vision-layers", shape.n_layer)?;
    let plan = VisionPlan {
        shape,
        sizes,
        seed: flags.num("seed", 1)?,
        quant,
        reps: budget.reps,
        // A 3B encode of a 1024x1024 image takes minutes on a CPU adapter.
        max_seconds: if quick { 1.0 } else { 60.0 },
        warm_on_tiny: !quick,
    };
    bench_vision(&gpu, &out, &roof, &plan)?;
    Ok(())
}

/// `512` (square) or `640x480` (width x height).
fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let num = |v: &str| v.trim().parse::<u32>().ok().filter(|&n| n > 0);
    let size = match s.split_once('x') {
        Some((w, h)) => num(w).zip(num(h)),
        None => num(s).map(|n| (n, n)),
    };
    size.ok_or_else(|| format!("--vision-sizes: {s:?} is not N or WxH"))
}
