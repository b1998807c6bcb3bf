//! The per-image cost of a synthetic Llama 3.2 Vision (`--shape llama3.2-11b-vision`):
//! Mllama does not splice image tokens into the prompt, so an image costs one encoder pass
//! over `max_tiles` tiles (`MllamaVision::encode_tiles`) and one fill of the context's
//! cross-attention store (`Context::set_cross_attention`: every cross layer's keys and values
//! of the image states), then every prefill and decode step runs the cross layers against it.
//!
//! [`image_states`] times the encoder on one image of noise at the largest tiling (2x2 tiles
//! at 4 tiles), at the full depth or, with `--vision-layers N`, at N/2 and N encoder layers
//! (the 11B's 4:1 mix of local and global layers) scaled to the full depth by the line
//! through both (every layer does the same work; the fixed part is the patch embedding and
//! the projector). Its states feed the text runs ([`super::model::CrossImages`]), which time
//! the store's fill and hold it through prefill and decode; [`summary`] prints the per-image
//! line (`cross_attention`) from both.

use std::time::Instant;

use serde_json::{json, Value};

use webvlm::backend::gpu::GpuError;
use webvlm::backend::Device;
use webvlm::gguf::SplitMix64;
use webvlm::kernels::matmul::MatmulCompute;
use webvlm::model::synthetic::{synthetic_mllama, MllamaParts, MllamaShape};
use webvlm::model::vision::mllama::MllamaVision;
use webvlm::model::Precision;
use webvlm::source::LoadQuant;

use super::model::CrossImages;
use super::timing::{median, scaled_to, wait};
use super::Out;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The aspect-ratio id of 2x2 tiles (1-based index of [2, 2] in the supported ratios).
const TWO_BY_TWO: u32 = 6;

/// What the encoder runs gave: the states of the model's image (and of the tiny model's, for
/// its warm-up), and the figures at the full encoder depth.
pub struct ImageStates {
    pub image: CrossImages,
    /// The tiny model's image, when the real size is warmed up on the tiny model first.
    pub tiny: Option<CrossImages>,
    /// Seconds of one encode at the full depth (measured, or scaled from two depths); `None`
    /// when the encoder could not run on this adapter (its states are then noise) or ran at
    /// one partial depth only.
    pub vision_seconds: Option<f64>,
    /// `(encoder layers, seconds)` of each depth timed (one or two).
    pub measured: Vec<(u32, f64)>,
    pub weight_bytes: u64,
}

/// Encodes one 4-tile noise image with the encoder of `shape` at `layers` encoder layers:
/// (seconds, states, weight bytes). `timed_runs` encodes after a warm-up one when > 0,
/// else the first encode is the one timed.
fn encode(dev: &Device, shape: &MllamaShape, layers: u32, seed: u64, timed_runs: usize) -> Res<(f64, CrossImages, u64)> {
    let shape = MllamaShape { vision: shape.vision.with_layers(layers), ..*shape };
    let src = synthetic_mllama(&shape, seed, MllamaParts::Vision)?;
    let mut enc = MllamaVision::load(dev, &src, LoadQuant::Keep)?;
    drop(src);
    // As the engine runs it: f16 matmuls where the adapter's default precision has them.
    if Precision::for_adapter(dev.caps()).compute_f16 {
        enc.compute = MatmulCompute::F16;
    }
    wait(dev)?;
    let c = &enc.cfg;
    let tile_len = 3 * c.image_size as usize * c.image_size as usize;
    let mut rng = SplitMix64::new(seed + 1);
    let tiles: Vec<f32> = (0..c.max_tiles as usize * tile_len).map(|_| rng.uniform(-1.8, 2.1)).collect();
    let run = || -> Res<(f64, webvlm::model::vision::mllama::MllamaStates)> {
        let t = Instant::now();
        let states = enc.encode_tiles(dev, &tiles, c.max_tiles, TWO_BY_TWO)?;
        wait(dev)?;
        Ok((t.elapsed().as_secs_f64(), states))
    };
    let (mut seconds, mut states) = run()?;
    let mut samples = Vec::new();
    for _ in 0..timed_runs {
        let (s, st) = run()?;
        samples.push(s);
        states = st;
    }
    if !samples.is_empty() {
        seconds = median(&mut samples);
    }
    let image = CrossImages { states: states.buffer, n_tiles: c.max_tiles, mask: vec![1; c.max_tiles as usize] };
    Ok((seconds, image, enc.weights.bytes_on_gpu()))
}

/// Times the encoder of `shape` (see the module doc) and emits a `cross_vision` line per
/// depth; `vision_layers` as `--vision-layers`, `big` for a real size (one timed encode,
/// pipelines compiled on the tiny model first), `reps` timed encodes otherwise.
#[allow(clippy::too_many_arguments)]
pub fn image_states(
    dev: &Device,
    out: &Out,
    label: &str,
    shape: &MllamaShape,
    vision_layers: Option<u32>,
    big: bool,
    reps: usize,
    seed: u64,
) -> Res<ImageStates> {
    let tiny = match big {
        true => {
            let t = Instant::now();
            let tiny = MllamaShape::tiny();
            let (_, image, _) = encode(dev, &tiny, tiny.vision.n_layer(), seed, 0)?;
            out.note(&format!("mllama vision: pipelines compiled on the tiny encoder in {:.1} s", t.elapsed().as_secs_f64()));
            Some(image)
        }
        false => None,
    };
    let full = shape.vision.n_layer();
    let depths = match vision_layers {
        Some(n) if n == 0 || n > full => return Err(format!("--vision-layers takes 1..={full} for this shape").into()),
        Some(n) if n >= 2 && n < full => vec![n / 2, n],
        Some(n) => vec![n],
        None => vec![full],
    };
    let mut runs = Vec::new();
    let mut last = None;
    for &n in &depths {
        let (seconds, image, weight_bytes) = match encode(dev, shape, n, seed, if big { 0 } else { reps.max(1) }) {
            Ok(run) => run,
            // A buffer over the adapter's limits (the 11B's 6404 x 4096 f32 states need a
            // 104.9 MB binding): say so, and give the text runs states of noise.
            Err(e) if e.downcast_ref::<GpuError>().is_some_and(|g| matches!(g, GpuError::BufferTooLarge { .. })) => {
                out.emit(json!({ "kind": "skipped", "vision": label, "reason": e.to_string() }));
                out.note(&format!("  {label} vision: not run on this adapter: {e}; the text runs get noise states"));
                let image = noise_states(dev, shape, seed)?;
                return Ok(ImageStates { image, tiny, vision_seconds: None, measured: Vec::new(), weight_bytes: 0 });
            }
            Err(e) => return Err(e),
        };
        let v = shape.vision.with_layers(n);
        let tokens = v.tile_tokens();
        out.note(&format!(
            "  {label} vision: {} tiles x {tokens} tokens through {} local + {} global layers: {:.2} s, {:.1} MiB of weights",
            v.max_tiles,
            v.n_local,
            v.n_global,
            seconds,
            weight_bytes as f64 / 1048576.0
        ));
        out.emit(json!({
            "kind": "cross_vision", "model": label, "tiles": v.max_tiles, "tile_tokens": tokens,
            "state_rows": v.max_tiles * tokens, "states_bytes": image.states.size(), "layers": n,
            "local_layers": v.n_local, "global_layers": v.n_global, "full_layers": full, "seconds": seconds,
            "weight_bytes": weight_bytes, "hidden": v.hidden, "n_head": v.n_head, "n_ff": v.n_ff,
        }));
        runs.push((n, seconds));
        last = Some((image, weight_bytes));
    }
    let Some((image, weight_bytes)) = last else { return Err("no encoder depth to time".into()) };
    let vision_seconds = match *runs.as_slice() {
        [r0, r1] => Some(scaled_to(&format!("{label} vision seconds"), full, r0, r1)?),
        [(n, s)] if n == full => Some(s),
        _ => None,
    };
    Ok(ImageStates { image, tiny, vision_seconds, measured: runs, weight_bytes })
}

/// Cross-attention states of noise for one image of `shape` (when the encoder cannot run).
fn noise_states(dev: &Device, shape: &MllamaShape, seed: u64) -> Res<CrossImages> {
    let (tiles, rows) = (shape.vision.max_tiles, shape.vision.max_tiles * shape.vision.tile_tokens());
    let mut rng = SplitMix64::new(seed + 2);
    let values: Vec<f32> = (0..rows as usize * shape.text.n_embd as usize).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let states = dev.storage_with("mllama noise states", bytemuck::cast_slice(&values))?;
    Ok(CrossImages { states, n_tiles: tiles, mask: vec![1; tiles as usize] })
}

/// The per-image line: the encoder and the store's fill at the full depths, the store's bytes.
/// `text` is the `model` line at the full depth or the `model_scaled` one.
pub fn summary(out: &Out, label: &str, shape: &MllamaShape, states: &ImageStates, text: &Value) -> Value {
    let full = shape.vision.n_layer();
    let fill = text["cross_fill_seconds"].as_f64().unwrap_or(0.0);
    let store = text["cross_store_bytes"].as_f64().unwrap_or(0.0);
    let cross_layers = shape.text.cross_layers().len();
    let layers: Vec<u32> = states.measured.iter().map(|&(n, _)| n).collect();
    let vision = match (states.vision_seconds, states.measured.as_slice()) {
        (_, []) => "not run on this adapter".to_string(),
        (Some(s), [_]) => format!("{s:.2} s, all {full} layers"),
        (Some(s), _) => format!("{s:.2} s, scaled from {layers:?} to {full} layers"),
        (None, [(n, s), ..]) => format!("{s:.2} s for {n} of {full} layers (part of the encoder, not scaled)"),
    };
    out.note(&format!(
        "{label}, per image of {} tiles: vision encoder {vision}, cross-attention store of {cross_layers} layers filled in \
         {fill:.2} s, {:.1} MiB",
        shape.vision.max_tiles,
        store / 1048576.0
    ));
    let v = json!({
        "kind": "cross_attention", "model": label, "tiles": shape.vision.max_tiles,
        "state_rows": shape.vision.max_tiles * shape.vision.tile_tokens(), "states_bytes": states.image.states.size(),
        "vision_seconds": states.vision_seconds, "vision_layers": full, "vision_measured_layers": layers,
        "vision_measured_seconds": states.measured.iter().map(|&(_, s)| s).collect::<Vec<_>>(),
        "vision_scaled": layers.len() == 2,
        "vision_weight_bytes_measured": states.weight_bytes,
        "cross_layers": cross_layers, "cross_fill_seconds": fill, "cross_store_bytes": text["cross_store_bytes"],
        "seconds_per_image": states.vision_seconds.map(|s| s + fill),
        "text_measured_layers": text.get("measured_layers").cloned().unwrap_or_else(|| json!([text["n_layer"]])),
    });
    out.emit(v.clone());
    v
}
