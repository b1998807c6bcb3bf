//! The Pixtral vision encoder and the Mistral 3 multimodal projector: one preprocessed image
//! in, one row of text-model embedding per merged 28x28 patch out. References: transformers
//! 5.x `PixtralVisionModel` + `Mistral3MultiModalProjector`; llama.cpp `clip.cpp`
//! (`build_pixtral`). `docs/MODELS.md` has the shapes.
//!
//! Per image (images are encoded one at a time, which is the block-diagonal attention of a
//! batch without the mask):
//! 1. patch embedding: unfold 14x14 patches, one matmul with `v.patch_embd` (no bias);
//! 2. `ln_pre` RMSNorm;
//! 3. `n_layer` pre-norm blocks: RMSNorm → q/k/v → 2D RoPE on q and k (adjacent pairs: the
//!    GGUF rows are llama.cpp-permuted) → non-causal attention over the image's patches →
//!    output projection + residual; RMSNorm → SiLU-gated FFN + residual. The FFN runs in
//!    chunks of rows so its `[rows][n_ff]` buffers stay within the binding limit;
//! 4. projector: RMSNorm (`mm.input_norm`), 2x2 patch merge, `mm.patch_merger`, `mm.1`,
//!    GELU (erf), `mm.2` (no biases). transformers takes this norm's epsilon from the text
//!    config, which the mmproj does not record; the vision epsilon (1e-5) is used, equal to
//!    Ministral 3's `rms_norm_eps`.

use crate::gpu::{Gpu, GpuError, Program, Result as GpuResult};
use crate::image::PixelImage;
use crate::kernels::attention::{attention_prefill, AttnShape, StepParams};
use crate::kernels::matmul::{record_rows, MatmulCompute};
use crate::kernels::rope::RopeMode;
use crate::kernels::vision::{patch_merge, patch_unfold, rope_2d, PatchGrid, Rope2dFreqs, Rope2dLayout};
use crate::kernels::{elementwise, matmul, norm};

mod config;
mod weights;

pub use config::{PixtralConfig, PIXTRAL_ROPE_THETA};
pub use weights::{PixtralLayerWeights, PixtralWeights};

use crate::model::vision::ImageFeatures;
use crate::model::ModelError;
use crate::source::{Eager, LoadQuant, TensorSource, WeightLoader};

/// Largest scratch buffer the encoder allocates for the FFN of one chunk of patch rows.
const FFN_CHUNK_BYTES: u64 = 64 << 20;

/// A loaded vision encoder + projector.
pub struct Pixtral {
    pub cfg: PixtralConfig,
    pub weights: PixtralWeights,
    /// Matmul precision: f32 by default; f16 tiles where the adapter has `shader-f16` and the
    /// caller asks for reduced precision (error measured in `tests/model_vision.rs`).
    pub compute: MatmulCompute,
    rope: Rope2dFreqs,
}

impl Pixtral {
    /// Reads an mmproj file's config and uploads its weights, matrices requantized to
    /// `quant` (see [`PixtralWeights::load_from`]).
    pub fn load(gpu: &Gpu, src: &dyn TensorSource, quant: LoadQuant) -> Result<Pixtral, ModelError> {
        Self::load_from(gpu, &mut Eager(src), quant)
    }

    /// [`Pixtral::load`] through any [`WeightLoader`] (the browser streams).
    pub fn load_from(gpu: &Gpu, src: &mut dyn WeightLoader, quant: LoadQuant) -> Result<Pixtral, ModelError> {
        let cfg = PixtralConfig::from_metadata(src.metadata())?;
        let weights = PixtralWeights::load_from(gpu, src, &cfg, quant)?;
        let rope = Rope2dFreqs::upload(gpu, cfg.head_dim, cfg.rope_theta as f64)?;
        Ok(Pixtral { cfg, weights, compute: MatmulCompute::F32, rope })
    }

    /// Encodes one image: records and submits the whole encoder in one command buffer and
    /// returns the features without waiting for them (the GPU queue orders later work).
    pub fn encode(&self, gpu: &Gpu, image: &PixelImage) -> GpuResult<ImageFeatures> {
        let grid = PatchGrid::of_image(image.height, image.width, self.cfg.patch_size)?;
        let scratch = Scratch::new(gpu, &self.cfg, image, grid)?;
        let prog = self.record(gpu, &scratch, image, grid)?;
        StepParams::new(0, grid.n_patches(), 0).write(gpu, &scratch.step);
        prog.run(gpu)?;
        Ok(ImageFeatures {
            buffer: scratch.out,
            rows: grid.rows / 2,
            cols: grid.cols / 2,
            dim: self.cfg.text_hidden,
            content: None,
        })
    }

    /// The recorded pass of one image, not run (benchmarks read its launch geometry).
    pub fn record_pass(&self, gpu: &Gpu, image: &PixelImage) -> GpuResult<Program> {
        let grid = PatchGrid::of_image(image.height, image.width, self.cfg.patch_size)?;
        self.record(gpu, &Scratch::new(gpu, &self.cfg, image, grid)?, image, grid)
    }

    fn record(&self, gpu: &Gpu, s: &Scratch, image: &PixelImage, grid: PatchGrid) -> GpuResult<Program> {
        let (c, w) = (&self.cfg, &self.weights);
        let (d, ff, n) = (c.hidden, c.n_ff, grid.n_patches());
        let eps = c.norm_eps;
        let mm = self.compute;
        let mut p = Program::new();
        let rope = Rope2dLayout::dense(c.n_head, c.head_dim, RopeMode::Adjacent);
        let attn = AttnShape { causal: false, ..AttnShape::new(c.n_head, c.n_head, c.head_dim, n) };

        patch_unfold(&mut p, gpu, &s.pixels, &s.patches, 3, image.height, image.width, c.patch_size)?;
        matmul::record_with(&mut p, gpu, &w.patch_embd, &s.patches, &s.h, n, mm)?;
        norm::rms_norm(&mut p, gpu, &s.h, &w.pre_ln, &s.x, n, d, eps)?;
        for l in &w.layers {
            norm::rms_norm(&mut p, gpu, &s.x, &l.ln1, &s.h, n, d, eps)?;
            matmul::record_with(&mut p, gpu, &l.wq, &s.h, &s.q, n, mm)?;
            matmul::record_with(&mut p, gpu, &l.wk, &s.h, &s.k, n, mm)?;
            matmul::record_with(&mut p, gpu, &l.wv, &s.h, &s.v, n, mm)?;
            rope_2d(&mut p, gpu, &self.rope, &s.q, &rope, grid)?;
            rope_2d(&mut p, gpu, &self.rope, &s.k, &rope, grid)?;
            attention_prefill(&mut p, gpu, &attn, &s.step, &s.q, &s.k, &s.v, &s.attn)?;
            matmul::record_with(&mut p, gpu, &l.wo, &s.attn, &s.h, n, mm)?;
            elementwise::add_inplace(&mut p, gpu, &s.h, &s.x, n * d)?;
            norm::rms_norm(&mut p, gpu, &s.x, &l.ln2, &s.h, n, d, eps)?;
            for r0 in (0..n).step_by(s.ffn_rows as usize) {
                let m = s.ffn_rows.min(n - r0);
                record_rows(&mut p, gpu, &l.w_gate, (&s.h, r0), (&s.gate, 0), m, mm)?;
                record_rows(&mut p, gpu, &l.w_up, (&s.h, r0), (&s.up, 0), m, mm)?;
                elementwise::silu_mul_inplace(&mut p, gpu, &s.up, &s.gate, m * ff)?;
                // The FFN output goes to `q` (free until the next block) row by row.
                record_rows(&mut p, gpu, &l.w_down, (&s.gate, 0), (&s.q, r0), m, mm)?;
            }
            elementwise::add_inplace(&mut p, gpu, &s.q, &s.x, n * d)?;
        }
        let merged = grid.n_merged();
        norm::rms_norm(&mut p, gpu, &s.x, &w.mm_input_norm, &s.h, n, d, eps)?;
        patch_merge(&mut p, gpu, &s.h, &s.merged, d, grid)?;
        matmul::record_with(&mut p, gpu, &w.mm_patch_merger, &s.merged, &s.attn, merged, mm)?;
        matmul::record_with(&mut p, gpu, &w.mm_1, &s.attn, &s.proj, merged, mm)?;
        elementwise::gelu_inplace(&mut p, gpu, &s.proj, merged * c.text_hidden)?;
        matmul::record_with(&mut p, gpu, &w.mm_2, &s.proj, &s.out, merged, mm)?;
        Ok(p)
    }
}

/// The buffers of one image's pass (freed when the pass's features are returned).
struct Scratch {
    step: wgpu::Buffer,
    pixels: wgpu::Buffer,
    patches: wgpu::Buffer,
    x: wgpu::Buffer,
    h: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    attn: wgpu::Buffer,
    /// FFN chunk: `[ffn_rows][n_ff]` each.
    ffn_rows: u32,
    gate: wgpu::Buffer,
    up: wgpu::Buffer,
    merged: wgpu::Buffer,
    proj: wgpu::Buffer,
    out: wgpu::Buffer,
}

impl Scratch {
    fn new(gpu: &Gpu, c: &PixtralConfig, image: &PixelImage, grid: PatchGrid) -> GpuResult<Scratch> {
        if image.data.len() != 3 * image.height as usize * image.width as usize {
            return Err(GpuError::Shape(format!(
                "{} pixel values for a {}x{} RGB image",
                image.data.len(),
                image.width,
                image.height
            )));
        }
        if grid.rows < 2 || grid.cols < 2 {
            return Err(GpuError::Shape(format!(
                "image of {}x{} patches is smaller than one merged patch",
                grid.cols, grid.rows
            )));
        }
        let (n, merged) = (grid.n_patches() as u64, grid.n_merged() as u64);
        let f32s = |rows: u64, cols: u32| rows * cols as u64 * 4;
        let limit = gpu.caps.max_storage_binding.min(FFN_CHUNK_BYTES);
        let ffn_rows = (limit / f32s(1, c.n_ff)).clamp(1, n) as u32;
        let buf = |label: &str, rows: u64, cols: u32| gpu.storage(&format!("vision.{label}"), f32s(rows, cols));
        Ok(Scratch {
            step: StepParams::create_buffer(gpu),
            pixels: gpu.storage_with("vision.pixels", bytemuck::cast_slice(&image.data))?,
            patches: buf("patches", n, c.patch_dim())?,
            x: buf("x", n, c.hidden)?,
            h: buf("h", n, c.hidden)?,
            q: buf("q", n, c.q_dim())?,
            k: buf("k", n, c.q_dim())?,
            v: buf("v", n, c.q_dim())?,
            attn: buf("attn", n, c.q_dim())?,
            ffn_rows,
            gate: buf("gate", ffn_rows as u64, c.n_ff)?,
            up: buf("up", ffn_rows as u64, c.n_ff)?,
            merged: buf("merged", merged, c.merged_dim())?,
            proj: buf("proj", merged, c.text_hidden)?,
            out: buf("features", merged, c.text_hidden)?,
        })
    }
}
