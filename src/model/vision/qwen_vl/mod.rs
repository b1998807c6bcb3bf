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
//! 3. pre-norm ViT blocks (`vit.rs`, shared with Pixtral): LayerNorm → fused qkv (+ bias) →
//!    2D RoPE on q and k (rotate-half pairs; a quarter of the frequencies per axis: row, then
//!    column) → non-causal attention → proj (+ bias) + residual; LayerNorm → fc1 (+ bias) →
//!    GELU (tanh) → fc2 (+ bias) + residual (the MLP in row chunks within the binding limit);
//! 4. merger: LayerNorm (`v.post_ln`) per patch, reorder into 2x2 windows (a window's 4 patches
//!    concatenated, `[k][c]`), fc1 (+ bias) → GELU (erf) → fc2 (+ bias).

mod config;
mod weights;

pub use config::{QwenVlConfig, POSITION_EMBD, PROJECTORS, QWEN_VL_ROPE_THETA};
pub use weights::{QwenVlLayerWeights, QwenVlWeights};

use crate::backend::gpu::{GpuError, Result as GpuResult};
use crate::backend::{Buffer, Device, Program};
use crate::image::PixelImage;
use crate::kernels::matmul::{self, MatmulCompute};
use crate::kernels::rope::{rope_inv_freq, RopeMode};
use crate::kernels::vision::{patch_unfold, PatchGrid, Rope2dFreqs};
use crate::kernels::vision_qwen::{self as vq, Tap};
use crate::kernels::{elementwise, embedding};
use crate::model::vision::ImageFeatures;
use crate::model::ModelError;
use crate::source::{Eager, LoadQuant, TensorSource, WeightLoader};

use super::vit::{self, f32s, Ffn, FfnKind, Norm, PatchEncoder, Qkv, QkvKind, VitLayer, VitPass, VitScratch, VitShape};

/// A loaded Qwen2-VL-family vision encoder + merger.
pub struct QwenVl {
    pub cfg: QwenVlConfig,
    pub weights: QwenVlWeights,
    /// Matmul precision (f32 by default).
    pub compute: MatmulCompute,
    rope: Rope2dFreqs,
}

impl QwenVl {
    pub fn load(dev: &Device, src: &dyn TensorSource, quant: LoadQuant) -> Result<QwenVl, ModelError> {
        Self::load_from(dev, &mut Eager(src), quant)
    }

    /// [`QwenVl::load`] through any [`WeightLoader`].
    pub fn load_from(dev: &Device, src: &mut dyn WeightLoader, quant: LoadQuant) -> Result<QwenVl, ModelError> {
        let cfg = QwenVlConfig::from_headers(src.metadata(), src.tensor_info(POSITION_EMBD))?;
        let weights = QwenVlWeights::load_from(dev, src, &cfg, quant)?;
        let table = rope_table(cfg.head_dim as usize);
        let rope = Rope2dFreqs {
            inv_freq: dev.storage_with("qwen_vl.rope_inv_freq", bytemuck::cast_slice(&table))?,
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
    pub fn encode(&self, dev: &Device, image: &PixelImage) -> GpuResult<ImageFeatures> {
        vit::encode(self, dev, image)
    }

    /// The encoder's recorded pass over `image` with fresh scratch, for benchmarks (its
    /// launch geometry); nothing is submitted.
    pub fn record_pass(&self, dev: &Device, image: &PixelImage) -> GpuResult<Program> {
        vit::record_pass(self, dev, image)
    }
}

impl PatchEncoder for QwenVl {
    type Own = OwnScratch;

    fn vit_shape(&self) -> VitShape {
        self.cfg.vit_shape()
    }

    fn check_grid(&self, grid: PatchGrid) -> GpuResult<()> {
        if !grid.rows.is_multiple_of(2) || !grid.cols.is_multiple_of(2) {
            return Err(GpuError::Shape(format!("patch grid {}x{} is not a grid of 2x2 windows", grid.rows, grid.cols)));
        }
        Ok(())
    }

    fn own_scratch(&self, dev: &Device, grid: PatchGrid) -> GpuResult<OwnScratch> {
        OwnScratch::new(dev, &self.cfg, grid)
    }

    fn record(&self, dev: &Device, s: &VitScratch, own: &OwnScratch, image: &PixelImage, grid: PatchGrid) -> GpuResult<Program> {
        let (c, w, o) = (&self.cfg, &self.weights, own);
        let (d, n, mm) = (c.hidden, grid.n_patches(), self.compute);
        let mut p = Program::new();
        patch_unfold(&mut p, dev, &s.pixels, &s.patches, 3, image.height, image.width, c.patch_size)?;
        matmul::record_with(&mut p, dev, &w.patch_embd[0], &s.patches, &s.x, n, mm)?;
        matmul::record_with(&mut p, dev, &w.patch_embd[1], &s.patches, &o.tmp, n, mm)?;
        elementwise::add_inplace(&mut p, dev, &o.tmp, &s.x, n * d)?;
        vq::add_bias(&mut p, dev, &w.patch_embd_b, &s.x, n, d)?;
        embedding::record(&mut p, dev, &w.pos_embd, &o.pos_ids, &o.pos_rows, 4 * n)?;
        vq::gather_rows(&mut p, dev, &o.pos_rows, &o.pos_taps, &o.tmp, n, 4, d)?;
        elementwise::add_inplace(&mut p, dev, &o.tmp, &s.x, n * d)?;
        let pass = VitPass { shape: &c.vit_shape(), rope: &self.rope, compute: mm, grid };
        pass.record(&mut p, dev, s, &o.tmp, w.layers.iter().map(QwenVlLayerWeights::vit))?;
        let merged = grid.n_merged();
        let md = c.merged_dim();
        vq::layer_norm(&mut p, dev, &s.x, &w.post_ln_w, &w.post_ln_b, &s.h, n, d, c.norm_eps)?;
        vq::gather_rows(&mut p, dev, &s.h, &o.window_taps, &o.tmp, n, 1, d)?;
        matmul::record_with(&mut p, dev, &w.mm_0, &o.tmp, &o.proj, merged, mm)?;
        vq::add_bias(&mut p, dev, &w.mm_0_b, &o.proj, merged, md)?;
        elementwise::gelu_inplace(&mut p, dev, &o.proj, merged * md)?;
        matmul::record_with(&mut p, dev, &w.mm_2, &o.proj, &s.out, merged, mm)?;
        vq::add_bias(&mut p, dev, &w.mm_2_b, &s.out, merged, c.text_hidden)?;
        Ok(p)
    }
}

impl QwenVlConfig {
    /// The blocks' shape: LayerNorm, fused qkv, RoPE on rotate-half pairs, GELU (tanh) MLP.
    pub(crate) fn vit_shape(&self) -> VitShape {
        VitShape {
            hidden: self.hidden,
            n_head: self.n_head,
            head_dim: self.head_dim,
            n_ff: self.n_ff,
            norm_eps: self.norm_eps,
            patch_size: self.patch_size,
            text_hidden: self.text_hidden,
            qkv: QkvKind::Fused,
            ffn: FfnKind::GeluTanh,
            rope: RopeMode::RotateHalf,
            label: "qwen_vl",
        }
    }

    /// Every buffer one encode of an image of `grid` patches allocates, `(what, bytes)`: the
    /// blocks' ([`VitShape::scratch_buffers`]) and the encoder's own.
    pub(crate) fn scratch_buffers(&self, grid: PatchGrid, max_binding: u64) -> Vec<(&'static str, u64)> {
        let mut buffers = self.vit_shape().scratch_buffers(grid, max_binding);
        buffers.extend(OwnScratch::buffers(self, grid));
        buffers
    }
}

impl QwenVlLayerWeights {
    fn vit(&self) -> VitLayer<'_> {
        VitLayer {
            norm1: Norm::Layer(&self.ln1_w, &self.ln1_b),
            qkv: Qkv::Fused { w: &self.qkv, b: &self.qkv_b },
            o: &self.wo,
            o_b: Some(&self.wo_b),
            norm2: Norm::Layer(&self.ln2_w, &self.ln2_b),
            ffn: Ffn::GeluTanh { up: &self.up, up_b: &self.up_b, down: &self.down, down_b: &self.down_b },
        }
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

/// The encoder's own buffers of one image's pass, beside the blocks' ([`VitScratch`]).
pub(super) struct OwnScratch {
    /// The table rows of the position taps (4 per patch), gathered as f32 into `pos_rows`,
    /// which `pos_taps` (rows `0..4n`) weight and sum.
    pos_ids: Buffer,
    pos_rows: Buffer,
    pos_taps: Buffer,
    window_taps: Buffer,
    /// `[n][hidden]`: the second patch-embedding slice, the position embeddings, each block's
    /// MLP output, the patches in window order.
    tmp: Buffer,
    /// The merger's hidden layer.
    proj: Buffer,
}

impl OwnScratch {
    fn new(dev: &Device, c: &QwenVlConfig, grid: PatchGrid) -> GpuResult<OwnScratch> {
        let (n, merged) = (grid.n_patches() as u64, grid.n_merged() as u64);
        let buf = |label: &str, rows: u64, cols: u32| dev.storage(&format!("qwen_vl.{label}"), f32s(rows, cols));
        let mut pos_taps = position_taps(grid.rows, grid.cols, c.pos_side);
        let pos_ids: Vec<u32> = pos_taps.iter().map(|t| t.row).collect();
        pos_taps.iter_mut().enumerate().for_each(|(i, t)| t.row = i as u32);
        let window_taps: Vec<Tap> =
            window_order(grid.rows, grid.cols, c.merge_size).into_iter().map(|row| Tap { row, weight: 1.0 }).collect();
        let s = OwnScratch {
            pos_ids: dev.storage_with("qwen_vl.pos_ids", bytemuck::cast_slice(&pos_ids))?,
            pos_rows: buf("pos_rows", 4 * n, c.hidden)?,
            pos_taps: dev.storage_with("qwen_vl.pos_taps", bytemuck::cast_slice(&pos_taps))?,
            window_taps: dev.storage_with("qwen_vl.window_taps", bytemuck::cast_slice(&window_taps))?,
            tmp: buf("tmp", n, c.hidden)?,
            proj: buf("proj", merged, c.merged_dim())?,
        };
        let all = [&s.pos_ids, &s.pos_rows, &s.pos_taps, &s.window_taps, &s.tmp, &s.proj];
        debug_assert_eq!(all.map(Buffer::size).iter().sum::<u64>(), Self::buffers(c, grid).iter().map(|b| b.1).sum::<u64>());
        Ok(s)
    }

    /// [`OwnScratch::new`]'s buffers, `(what, bytes)`.
    fn buffers(c: &QwenVlConfig, grid: PatchGrid) -> [(&'static str, u64); 6] {
        let (n, merged) = (grid.n_patches() as u64, grid.n_merged() as u64);
        let tap = std::mem::size_of::<Tap>() as u64;
        [
            ("position ids", 4 * 4 * n),
            ("position rows", f32s(4 * n, c.hidden)),
            ("position taps", 4 * n * tap),
            ("window taps", n * tap),
            ("activations", f32s(n, c.hidden)),
            ("merger activations", f32s(merged, c.merged_dim())),
        ]
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
