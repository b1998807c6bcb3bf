//! The Qwen2-VL-family vision encoder (Qwen3-VL / Qwen3.5 without deepstack; mmproj
//! `clip.projector_type = qwen3vl_merger`): one preprocessed image in, one text-width row per
//! merged 2x2 window of 16x16 patches out. References: transformers `Qwen3_5VisionModel`
//! (`patch_embed`, `fast_pos_embed_interpolate`, `rot_pos_emb`, `Qwen3_5VisionBlock`,
//! `Qwen3_5VisionPatchMerger`); llama.cpp `tools/mtmd` for the tensor names.
//!
//! transformers runs the patches in merge-window order; every step but the position
//! embedding, the RoPE and the merge is per patch, and attention is over all the image's
//! patches (non-causal), so the pass here keeps the patches in row-major grid order (where the
//! Pixtral kernels put them) and reorders them into windows just before the merge. Per image:
//! 1. patch embedding: the image is one frame repeated over the temporal patch of 2, so the
//!    Conv3d is `W0·p + W1·p + bias` over the unfolded 16x16 patches `p` (two matmuls);
//! 2. plus learned position embeddings, bilinearly interpolated from the `side x side` table to
//!    the patch grid (four weighted table rows per patch, [`position_taps`]);
//! 3. blocks: LayerNorm → fused qkv (+ bias) → 2D RoPE on q and k (rotate-half pairs; a quarter
//!    of the frequencies per axis: row, then column) → non-causal attention → proj (+ bias) +
//!    residual; LayerNorm → fc1 (+ bias) → GELU (tanh) → fc2 (+ bias) + residual (the MLP in
//!    chunks of rows, as Pixtral's);
//! 4. merger: LayerNorm (`v.post_ln`) per patch, reorder into 2x2 windows (a window's 4 patches
//!    concatenated, `[k][c]`), fc1 (+ bias) → GELU (erf) → fc2 (+ bias).

mod config;
mod weights;

pub use config::{QwenVlConfig, PROJECTORS, QWEN_VL_ROPE_THETA};
pub use weights::{QwenVlLayerWeights, QwenVlWeights};

use crate::gpu::{Gpu, GpuError, Program, Result as GpuResult};
use crate::image::PixelImage;
use crate::kernels::attention::{attention_prefill, AttnShape, StepParams};
use crate::kernels::matmul::{record_rows, MatmulCompute};
use crate::kernels::rope::{rope_inv_freq, RopeMode};
use crate::kernels::vision::{patch_unfold, rope_2d, PatchGrid, Rope2dFreqs, Rope2dLayout};
use crate::kernels::vision_qwen::{self as vq, Tap};
use crate::kernels::{elementwise, embedding, matmul};
use crate::model::vision::ImageFeatures;
use crate::model::ModelError;
use crate::source::{Eager, LoadQuant, TensorSource, WeightLoader};

/// Largest scratch buffer the encoder allocates for the MLP of one chunk of patch rows.
const FFN_CHUNK_BYTES: u64 = 64 << 20;

/// A loaded Qwen2-VL-family vision encoder + merger.
pub struct QwenVl {
    pub cfg: QwenVlConfig,
    pub weights: QwenVlWeights,
    /// Matmul precision (f32 by default).
    pub compute: MatmulCompute,
    rope: Rope2dFreqs,
}

impl QwenVl {
    pub fn load(gpu: &Gpu, src: &dyn TensorSource, quant: LoadQuant) -> Result<QwenVl, ModelError> {
        Self::load_from(gpu, &mut Eager(src), quant)
    }

    /// [`QwenVl::load`] through any [`WeightLoader`].
    pub fn load_from(gpu: &Gpu, src: &mut dyn WeightLoader, quant: LoadQuant) -> Result<QwenVl, ModelError> {
        let n_pos = weights::position_rows(src)?;
        let cfg = QwenVlConfig::from_metadata(src.metadata(), n_pos)?;
        let weights = QwenVlWeights::load_from(gpu, src, &cfg, quant)?;
        let table = rope_table(cfg.head_dim as usize);
        let rope = Rope2dFreqs {
            inv_freq: gpu.storage_with("qwen_vl.rope_inv_freq", bytemuck::cast_slice(&table))?,
            head_dim: cfg.head_dim,
        };
        Ok(QwenVl { cfg, weights, compute: MatmulCompute::F32, rope })
    }

    /// The processor settings for this encoder ([`QwenVlConfig::preprocess`]) with the
    /// decoding limits, EXIF handling and (where given) area bounds of `decode`. Without an
    /// explicit largest area, `decode.max_edge` bounds it to that edge's square (the engine's
    /// and a request's `image_max_edge`: Qwen3.5's own bound, 4096², would let one image take
    /// 16k tokens).
    pub fn preprocess_options(&self, decode: &crate::image::PreprocessOptions) -> crate::image::qwen::QwenPreprocess {
        let own = self.cfg.preprocess();
        let edge = decode.max_edge as u64;
        let max_pixels = decode.max_area.unwrap_or(own.max_pixels.min(edge * edge));
        crate::image::qwen::QwenPreprocess {
            min_pixels: decode.min_area.unwrap_or(own.min_pixels).min(max_pixels),
            max_pixels,
            decode: decode.clone(),
            ..own
        }
    }

    /// The feature grid `(rows, cols)` of a preprocessed `height x width` image.
    pub fn feature_grid(&self, height: u32, width: u32) -> (u32, u32) {
        let side = self.cfg.patch_size * self.cfg.merge_size;
        (height / side, width / side)
    }

    /// Encodes one image (sides multiples of `patch * merge`): records and submits the whole
    /// encoder in one command buffer and returns the features without waiting for them.
    pub fn encode(&self, gpu: &Gpu, image: &PixelImage) -> GpuResult<ImageFeatures> {
        let grid = self.grid(image)?;
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

    /// The encoder's recorded pass over `image` with fresh scratch, for benchmarks (its
    /// launch geometry); nothing is submitted.
    pub fn record_pass(&self, gpu: &Gpu, image: &PixelImage) -> GpuResult<Program> {
        let grid = self.grid(image)?;
        self.record(gpu, &Scratch::new(gpu, &self.cfg, image, grid)?, image, grid)
    }

    fn grid(&self, image: &PixelImage) -> GpuResult<PatchGrid> {
        let grid = PatchGrid::of_image(image.height, image.width, self.cfg.patch_size)?;
        if grid.rows % 2 != 0 || grid.cols % 2 != 0 {
            return Err(GpuError::Shape(format!("patch grid {}x{} is not a grid of 2x2 windows", grid.rows, grid.cols)));
        }
        Ok(grid)
    }

    fn record(&self, gpu: &Gpu, s: &Scratch, image: &PixelImage, grid: PatchGrid) -> GpuResult<Program> {
        let (c, w) = (&self.cfg, &self.weights);
        let (d, ff, n) = (c.hidden, c.n_ff, grid.n_patches());
        let (eps, mm) = (c.norm_eps, self.compute);
        let mut p = Program::new();
        let qkv_rope =
            |offset| Rope2dLayout { offset, stride: 3 * d, ..Rope2dLayout::dense(c.n_head, c.head_dim, RopeMode::RotateHalf) };
        let attn = AttnShape { causal: false, q_stride: 3 * d, q_offset: 0, ..AttnShape::new(c.n_head, c.n_head, c.head_dim, n) };

        patch_unfold(&mut p, gpu, &s.pixels, &s.patches, 3, image.height, image.width, c.patch_size)?;
        matmul::record_with(&mut p, gpu, &w.patch_embd[0], &s.patches, &s.x, n, mm)?;
        matmul::record_with(&mut p, gpu, &w.patch_embd[1], &s.patches, &s.tmp, n, mm)?;
        elementwise::add_inplace(&mut p, gpu, &s.tmp, &s.x, n * d)?;
        vq::add_bias(&mut p, gpu, &w.patch_embd_b, &s.x, n, d)?;
        embedding::record(&mut p, gpu, &w.pos_embd, &s.pos_ids, &s.pos_rows, 4 * n)?;
        vq::gather_rows(&mut p, gpu, &s.pos_rows, &s.pos_taps, &s.tmp, n, 4, d)?;
        elementwise::add_inplace(&mut p, gpu, &s.tmp, &s.x, n * d)?;
        for l in &w.layers {
            vq::layer_norm(&mut p, gpu, &s.x, &l.ln1_w, &l.ln1_b, &s.h, n, d, eps)?;
            matmul::record_with(&mut p, gpu, &l.qkv, &s.h, &s.qkv, n, mm)?;
            vq::add_bias(&mut p, gpu, &l.qkv_b, &s.qkv, n, 3 * d)?;
            rope_2d(&mut p, gpu, &self.rope, &s.qkv, &qkv_rope(0), grid)?;
            rope_2d(&mut p, gpu, &self.rope, &s.qkv, &qkv_rope(d), grid)?;
            vq::copy_cols(&mut p, gpu, &s.qkv, &s.k, n, d, 3 * d, d)?;
            vq::copy_cols(&mut p, gpu, &s.qkv, &s.v, n, d, 3 * d, 2 * d)?;
            attention_prefill(&mut p, gpu, &attn, &s.step, &s.qkv, &s.k, &s.v, &s.attn)?;
            matmul::record_with(&mut p, gpu, &l.wo, &s.attn, &s.h, n, mm)?;
            vq::add_bias(&mut p, gpu, &l.wo_b, &s.h, n, d)?;
            elementwise::add_inplace(&mut p, gpu, &s.h, &s.x, n * d)?;
            vq::layer_norm(&mut p, gpu, &s.x, &l.ln2_w, &l.ln2_b, &s.h, n, d, eps)?;
            for r0 in (0..n).step_by(s.ffn_rows as usize) {
                let m = s.ffn_rows.min(n - r0);
                record_rows(&mut p, gpu, &l.up, (&s.h, r0), (&s.up, 0), m, mm)?;
                vq::add_bias(&mut p, gpu, &l.up_b, &s.up, m, ff)?;
                vq::gelu_tanh(&mut p, gpu, &s.up, m * ff)?;
                record_rows(&mut p, gpu, &l.down, (&s.up, 0), (&s.tmp, r0), m, mm)?;
            }
            vq::add_bias(&mut p, gpu, &l.down_b, &s.tmp, n, d)?;
            elementwise::add_inplace(&mut p, gpu, &s.tmp, &s.x, n * d)?;
        }
        let merged = grid.n_merged();
        let md = c.merged_dim();
        vq::layer_norm(&mut p, gpu, &s.x, &w.post_ln_w, &w.post_ln_b, &s.h, n, d, eps)?;
        vq::gather_rows(&mut p, gpu, &s.h, &s.window_taps, &s.tmp, n, 1, d)?;
        matmul::record_with(&mut p, gpu, &w.mm_0, &s.tmp, &s.proj, merged, mm)?;
        vq::add_bias(&mut p, gpu, &w.mm_0_b, &s.proj, merged, md)?;
        elementwise::gelu_inplace(&mut p, gpu, &s.proj, merged * md)?;
        matmul::record_with(&mut p, gpu, &w.mm_2, &s.proj, &s.out, merged, mm)?;
        vq::add_bias(&mut p, gpu, &w.mm_2_b, &s.out, merged, c.text_hidden)?;
        Ok(p)
    }
}

/// The 2D RoPE table: transformers' `VisionRotaryEmbedding(head_dim / 2)` frequencies
/// (`1 / theta^(2j / (head_dim/2))`, `head_dim/4` of them) for the patch row, then the same for
/// the column: pair `i` (with `i + head_dim/2`) of a head turns by `row * f[i]` for
/// `i < head_dim/4`, else by `col * f[i - head_dim/4]`.
pub fn rope_table(head_dim: usize) -> Vec<f32> {
    let f = rope_inv_freq(head_dim / 2, QWEN_VL_ROPE_THETA);
    f.iter().chain(f.iter()).copied().collect()
}

/// `torch.linspace(start, end, steps)` in f32 (the first half counted from `start`, the rest
/// back from `end`, as PyTorch's kernel does).
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { start + step * i as f32 } else { end - step * (steps - 1 - i) as f32 }).collect()
}

/// `fast_pos_embed_interpolate` for a `rows x cols` patch grid and a `side x side` table: four
/// taps per patch, patches in row-major order, taps in transformers' summation order
/// (floor/floor, floor/ceil, ceil/floor, ceil/ceil).
pub fn position_taps(rows: u32, cols: u32, side: u32) -> Vec<Tap> {
    let axis = |n: u32| -> Vec<(u32, u32, f32)> {
        linspace(0.0, (side - 1) as f32, n as usize)
            .into_iter()
            .map(|x| {
                let lo = x as u32;
                (lo, (lo + 1).min(side - 1), x - lo as f32)
            })
            .collect()
    };
    let (hs, ws) = (axis(rows), axis(cols));
    let mut taps = Vec::with_capacity(rows as usize * cols as usize * 4);
    for &(h0, h1, dh) in &hs {
        for &(w0, w1, dw) in &ws {
            taps.push(Tap { row: h0 * side + w0, weight: (1.0 - dh) * (1.0 - dw) });
            taps.push(Tap { row: h0 * side + w1, weight: (1.0 - dh) * dw });
            taps.push(Tap { row: h1 * side + w0, weight: dh * (1.0 - dw) });
            taps.push(Tap { row: h1 * side + w1, weight: dh * dw });
        }
    }
    taps
}

/// The row-major patch of each position in merge-window order (`merge x merge` windows
/// row-major, their patches row-major): the processor's patch order.
pub fn window_order(rows: u32, cols: u32, merge: u32) -> Vec<u32> {
    let mut order = Vec::with_capacity(rows as usize * cols as usize);
    for bh in 0..rows / merge {
        for bw in 0..cols / merge {
            for i in 0..merge {
                for j in 0..merge {
                    order.push((bh * merge + i) * cols + bw * merge + j);
                }
            }
        }
    }
    order
}

/// The buffers of one image's pass.
struct Scratch {
    step: wgpu::Buffer,
    pixels: wgpu::Buffer,
    patches: wgpu::Buffer,
    /// The table rows of the position taps (4 per patch), gathered as f32 into `pos_rows`,
    /// which `pos_taps` (rows `0..4n`) weight and sum.
    pos_ids: wgpu::Buffer,
    pos_rows: wgpu::Buffer,
    pos_taps: wgpu::Buffer,
    window_taps: wgpu::Buffer,
    x: wgpu::Buffer,
    h: wgpu::Buffer,
    tmp: wgpu::Buffer,
    qkv: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    attn: wgpu::Buffer,
    ffn_rows: u32,
    up: wgpu::Buffer,
    proj: wgpu::Buffer,
    out: wgpu::Buffer,
}

impl Scratch {
    fn new(gpu: &Gpu, c: &QwenVlConfig, image: &PixelImage, grid: PatchGrid) -> GpuResult<Scratch> {
        if image.data.len() != 3 * image.height as usize * image.width as usize {
            return Err(GpuError::Shape(format!(
                "{} pixel values for a {}x{} RGB image",
                image.data.len(),
                image.width,
                image.height
            )));
        }
        let (n, merged) = (grid.n_patches() as u64, grid.n_merged() as u64);
        let f32s = |rows: u64, cols: u32| rows * cols as u64 * 4;
        let limit = gpu.caps.max_storage_binding.min(FFN_CHUNK_BYTES);
        let ffn_rows = (limit / f32s(1, c.n_ff)).clamp(1, n) as u32;
        let buf = |label: &str, rows: u64, cols: u32| gpu.storage(&format!("qwen_vl.{label}"), f32s(rows, cols));
        let mut pos_taps = position_taps(grid.rows, grid.cols, c.pos_side);
        let pos_ids: Vec<u32> = pos_taps.iter().map(|t| t.row).collect();
        pos_taps.iter_mut().enumerate().for_each(|(i, t)| t.row = i as u32);
        let window_taps: Vec<Tap> =
            window_order(grid.rows, grid.cols, c.merge_size).into_iter().map(|row| Tap { row, weight: 1.0 }).collect();
        Ok(Scratch {
            step: StepParams::create_buffer(gpu),
            pixels: gpu.storage_with("qwen_vl.pixels", bytemuck::cast_slice(&image.data))?,
            patches: buf("patches", n, c.patch_dim())?,
            pos_ids: gpu.storage_with("qwen_vl.pos_ids", bytemuck::cast_slice(&pos_ids))?,
            pos_rows: buf("pos_rows", 4 * n, c.hidden)?,
            pos_taps: gpu.storage_with("qwen_vl.pos_taps", bytemuck::cast_slice(&pos_taps))?,
            window_taps: gpu.storage_with("qwen_vl.window_taps", bytemuck::cast_slice(&window_taps))?,
            x: buf("x", n, c.hidden)?,
            h: buf("h", n, c.hidden)?,
            tmp: buf("tmp", n, c.hidden)?,
            qkv: buf("qkv", n, 3 * c.q_dim())?,
            k: buf("k", n, c.q_dim())?,
            v: buf("v", n, c.q_dim())?,
            attn: buf("attn", n, c.q_dim())?,
            ffn_rows,
            up: buf("up", ffn_rows as u64, c.n_ff)?,
            proj: buf("proj", merged, c.merged_dim())?,
            out: buf("features", merged, c.text_hidden)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_and_window_order_follow_torch() {
        assert_eq!(linspace(0.0, 7.0, 2), [0.0, 7.0]);
        assert_eq!(linspace(0.0, 7.0, 1), [0.0]);
        assert_eq!(window_order(2, 4, 2), [0, 1, 4, 5, 2, 3, 6, 7]);
        let taps = position_taps(1, 2, 8);
        assert_eq!(taps[4..].iter().map(|t| t.row).collect::<Vec<_>>(), [7, 7, 15, 15]);
        assert_eq!(rope_table(16).len(), 8);
    }
}
