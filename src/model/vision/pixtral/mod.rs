//! The Pixtral vision encoder and the Mistral 3 multimodal projector: one preprocessed image
//! in, one row of text-model embedding per merged 28x28 patch out. References: transformers
//! 5.x `PixtralVisionModel` + `Mistral3MultiModalProjector`; llama.cpp `clip.cpp`
//! (`build_pixtral`). `docs/MODELS.md` has the shapes.
//!
//! Per image (images are encoded one at a time, which is the block-diagonal attention of a
//! batch without the mask):
//! 1. patch embedding: unfold 14x14 patches, one matmul with `v.patch_embd` (no bias);
//! 2. `ln_pre` RMSNorm;
//! 3. `n_layer` pre-norm ViT blocks (`vit.rs`, shared with the Qwen encoder): RMSNorm →
//!    q/k/v → 2D RoPE on q and k (adjacent pairs: the GGUF rows are llama.cpp-permuted) →
//!    non-causal attention over the image's patches → output projection + residual; RMSNorm
//!    → SiLU-gated FFN (in row chunks within the binding limit) + residual;
//! 4. projector: RMSNorm (`mm.input_norm`), 2x2 patch merge, `mm.patch_merger`, `mm.1`,
//!    GELU (erf), `mm.2` (no biases). transformers takes this norm's epsilon from the text
//!    config, which the mmproj does not record; the vision epsilon (1e-5) is used, equal to
//!    Ministral 3's `rms_norm_eps`.

use crate::backend::gpu::{GpuError, Result as GpuResult};
use crate::backend::{Buffer, Device, Program};
use crate::image::PixelImage;
use crate::kernels::matmul::{self, MatmulCompute};
use crate::kernels::rope::RopeMode;
use crate::kernels::vision::{patch_merge, patch_unfold, PatchGrid, Rope2dFreqs};
use crate::kernels::{elementwise, norm};

mod config;
mod weights;

pub use config::{PixtralConfig, PIXTRAL_ROPE_THETA};
pub use weights::{PixtralLayerWeights, PixtralWeights};

use super::vit::{self, f32s, Ffn, FfnKind, Norm, PatchEncoder, Qkv, QkvKind, VitLayer, VitPass, VitScratch, VitShape};
use crate::model::vision::ImageFeatures;
use crate::model::ModelError;
use crate::source::{Eager, LoadQuant, TensorSource, WeightLoader};

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
    pub fn load(dev: &Device, src: &dyn TensorSource, quant: LoadQuant) -> Result<Pixtral, ModelError> {
        Self::load_from(dev, &mut Eager(src), quant)
    }

    /// [`Pixtral::load`] through any [`WeightLoader`] (the browser streams).
    pub fn load_from(dev: &Device, src: &mut dyn WeightLoader, quant: LoadQuant) -> Result<Pixtral, ModelError> {
        let cfg = PixtralConfig::from_metadata(src.metadata())?;
        let weights = PixtralWeights::load_from(dev, src, &cfg, quant)?;
        let rope = Rope2dFreqs::upload(dev, cfg.head_dim, cfg.rope_theta as f64)?;
        Ok(Pixtral { cfg, weights, compute: MatmulCompute::F32, rope })
    }

    /// Encodes one image: records and submits the whole encoder in one command buffer and
    /// returns the features without waiting for them (the GPU queue orders later work).
    pub fn encode(&self, dev: &Device, image: &PixelImage) -> GpuResult<ImageFeatures> {
        vit::encode(self, dev, image)
    }

    /// The recorded pass of one image, not run (benchmarks read its launch geometry).
    pub fn record_pass(&self, dev: &Device, image: &PixelImage) -> GpuResult<Program> {
        vit::record_pass(self, dev, image)
    }
}

impl PatchEncoder for Pixtral {
    type Own = OwnScratch;

    fn vit_shape(&self) -> VitShape {
        self.cfg.vit_shape()
    }

    fn check_grid(&self, grid: PatchGrid) -> GpuResult<()> {
        if grid.rows < 2 || grid.cols < 2 {
            return Err(GpuError::Shape(format!(
                "image of {}x{} patches is smaller than one merged patch",
                grid.cols, grid.rows
            )));
        }
        Ok(())
    }

    fn own_scratch(&self, dev: &Device, grid: PatchGrid) -> GpuResult<OwnScratch> {
        OwnScratch::new(dev, &self.cfg, grid)
    }

    fn record(&self, dev: &Device, s: &VitScratch, own: &OwnScratch, image: &PixelImage, grid: PatchGrid) -> GpuResult<Program> {
        let (c, w, mm) = (&self.cfg, &self.weights, self.compute);
        let (d, n, eps) = (c.hidden, grid.n_patches(), c.norm_eps);
        let mut p = Program::new();
        patch_unfold(&mut p, dev, &s.pixels, &s.patches, 3, image.height, image.width, c.patch_size)?;
        matmul::record_with(&mut p, dev, &w.patch_embd, &s.patches, &s.h, n, mm)?;
        norm::rms_norm(&mut p, dev, &s.h, &w.pre_ln, &s.x, n, d, eps)?;
        let pass = VitPass { shape: &c.vit_shape(), rope: &self.rope, compute: mm, grid };
        // The FFN output goes to `q` (free until the next block) row by row.
        pass.record(&mut p, dev, s, &s.q, w.layers.iter().map(PixtralLayerWeights::vit))?;
        let merged = grid.n_merged();
        norm::rms_norm(&mut p, dev, &s.x, &w.mm_input_norm, &s.h, n, d, eps)?;
        patch_merge(&mut p, dev, &s.h, &own.merged, d, grid)?;
        matmul::record_with(&mut p, dev, &w.mm_patch_merger, &own.merged, &s.attn, merged, mm)?;
        matmul::record_with(&mut p, dev, &w.mm_1, &s.attn, &own.proj, merged, mm)?;
        elementwise::gelu_inplace(&mut p, dev, &own.proj, merged * c.text_hidden)?;
        matmul::record_with(&mut p, dev, &w.mm_2, &own.proj, &s.out, merged, mm)?;
        Ok(p)
    }
}

impl PixtralConfig {
    /// The blocks' shape: RMSNorm, q/k/v apart, RoPE on adjacent pairs, SiLU-gated FFN.
    pub(crate) fn vit_shape(&self) -> VitShape {
        VitShape {
            hidden: self.hidden,
            n_head: self.n_head,
            head_dim: self.head_dim,
            n_ff: self.n_ff,
            norm_eps: self.norm_eps,
            patch_size: self.patch_size,
            text_hidden: self.text_hidden,
            qkv: QkvKind::Split,
            ffn: FfnKind::SiluGated,
            rope: RopeMode::Adjacent,
            label: "vision",
        }
    }

    /// Every buffer one encode of an image of `grid` patches allocates, `(what, bytes)`: the
    /// blocks' ([`VitShape::scratch_buffers`]) and the projector's.
    pub(crate) fn scratch_buffers(&self, grid: PatchGrid, max_binding: u64) -> Vec<(&'static str, u64)> {
        let mut buffers = self.vit_shape().scratch_buffers(grid, max_binding);
        buffers.extend(OwnScratch::buffers(self, grid));
        buffers
    }
}

impl PixtralLayerWeights {
    fn vit(&self) -> VitLayer<'_> {
        VitLayer {
            norm1: Norm::Rms(&self.ln1),
            qkv: Qkv::Split { q: &self.wq, k: &self.wk, v: &self.wv },
            o: &self.wo,
            o_b: None,
            norm2: Norm::Rms(&self.ln2),
            ffn: Ffn::SiluGated { gate: &self.w_gate, up: &self.w_up, down: &self.w_down },
        }
    }
}

/// The projector's buffers of one image's pass (beside the blocks', [`VitScratch`]): the
/// merged patches and the hidden layer.
pub(super) struct OwnScratch {
    merged: Buffer,
    proj: Buffer,
}

impl OwnScratch {
    fn new(dev: &Device, c: &PixtralConfig, grid: PatchGrid) -> GpuResult<OwnScratch> {
        let [(_, merged), (_, proj)] = Self::buffers(c, grid);
        Ok(OwnScratch { merged: dev.storage("vision.merged", merged)?, proj: dev.storage("vision.proj", proj)? })
    }

    /// [`OwnScratch::new`]'s buffers, `(what, bytes)`.
    fn buffers(c: &PixtralConfig, grid: PatchGrid) -> [(&'static str, u64); 2] {
        let merged = grid.n_merged() as u64;
        [("merged patches", f32s(merged, c.merged_dim())), ("projector activations", f32s(merged, c.text_hidden))]
    }
}
