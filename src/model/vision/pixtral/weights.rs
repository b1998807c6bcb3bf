//! Pixtral vision encoder and Mistral 3 projector weights on the GPU, loaded from an mmproj
//! GGUF by llama.cpp tensor name (`v.*`, `mm.*`; `docs/MODELS.md`). Matrices keep their GGUF type
//! (see `kernels::quant` for the GPU layout; F16 in the official file); norm vectors become
//! f32. Every tensor's shape is checked against the [`PixtralConfig`] before upload.
//!
//! Shapes below are row-major `[rows][cols]` (GGUF dims are the reverse: `[cols, rows]`).
//! The q/k rows are in llama.cpp's permuted order (see `kernels::vision`: use
//! `RopeMode::Adjacent`).

use crate::backend::{Buffer, Device};
use crate::kernels::quant::Weight;

use crate::source::{check_dims, Eager, LoadError, LoadQuant, TensorSource, WeightLoader};

use super::config::PixtralConfig;

/// One pre-norm encoder block (`v.blk.N.*`).
pub struct PixtralLayerWeights {
    pub ln1: Buffer,    // attention_norm, [hidden] f32
    pub wq: Weight,     // attn_q,   [q_dim][hidden]
    pub wk: Weight,     // attn_k,   [q_dim][hidden]
    pub wv: Weight,     // attn_v,   [q_dim][hidden]
    pub wo: Weight,     // attn_out, [hidden][q_dim]
    pub ln2: Buffer,    // ffn_norm, [hidden] f32
    pub w_gate: Weight, // ffn_gate, [n_ff][hidden]
    pub w_up: Weight,   // ffn_up,   [n_ff][hidden]
    pub w_down: Weight, // ffn_down, [hidden][n_ff]
}

/// All vision encoder + projector weights.
pub struct PixtralWeights {
    /// `v.patch_embd.weight`, GGUF dims `[P, P, 3, hidden]` = torch `[hidden][3][P][P]`
    /// row-major: a `[hidden][3*P*P]` matrix whose columns are `[c][ky][kx]` (no reordering).
    pub patch_embd: Weight,
    /// `v.pre_ln.weight` (`ln_pre` RMSNorm), [hidden] f32.
    pub pre_ln: Buffer,
    pub layers: Vec<PixtralLayerWeights>,
    /// `mm.input_norm.weight` (RMSNorm over each patch vector), [hidden] f32.
    pub mm_input_norm: Buffer,
    /// `mm.patch_merger.weight`, [hidden][merge^2 * hidden] (columns `c*4 + ki*2 + kj`).
    pub mm_patch_merger: Weight,
    /// `mm.1.weight` (linear_1), [text_hidden][hidden].
    pub mm_1: Weight,
    /// `mm.2.weight` (linear_2, after GELU), [text_hidden][text_hidden].
    pub mm_2: Weight,
}

impl PixtralWeights {
    pub fn load(dev: &Device, src: &dyn TensorSource, cfg: &PixtralConfig) -> Result<Self, LoadError> {
        Self::load_from(dev, &mut Eager(src), cfg, LoadQuant::Keep)
    }

    /// Loads through `src` with the block and projector matrices requantized to `quant`
    /// (the patch embedding, 588 columns, keeps its type; norms are f32).
    pub fn load_from(dev: &Device, src: &mut dyn WeightLoader, cfg: &PixtralConfig, quant: LoadQuant) -> Result<Self, LoadError> {
        let matrix = |src: &mut dyn WeightLoader, name: &str, rows, cols| src.matrix(dev, name, rows, cols, quant);
        let vector = |src: &mut dyn WeightLoader, name: &str, n| src.vector(dev, name, n);
        let (d, q, ff, t) = (cfg.hidden, cfg.q_dim(), cfg.n_ff, cfg.text_hidden);
        let p = cfg.patch_size as u64;
        check_dims("v.patch_embd.weight", src.tensor_info("v.patch_embd.weight"), &[p, p, 3, d as u64])?;
        let patch_embd = src.reshaped(dev, "v.patch_embd.weight", d, cfg.patch_dim())?;
        let pre_ln = vector(src, "v.pre_ln.weight", d)?;
        let mut layers = Vec::with_capacity(cfg.n_layer as usize);
        for i in 0..cfg.n_layer {
            let name = |s: &str| format!("v.blk.{i}.{s}.weight");
            layers.push(PixtralLayerWeights {
                ln1: vector(src, &name("ln1"), d)?,
                wq: matrix(src, &name("attn_q"), q, d)?,
                wk: matrix(src, &name("attn_k"), q, d)?,
                wv: matrix(src, &name("attn_v"), q, d)?,
                wo: matrix(src, &name("attn_out"), d, q)?,
                ln2: vector(src, &name("ln2"), d)?,
                w_gate: matrix(src, &name("ffn_gate"), ff, d)?,
                w_up: matrix(src, &name("ffn_up"), ff, d)?,
                w_down: matrix(src, &name("ffn_down"), d, ff)?,
            });
        }
        Ok(PixtralWeights {
            patch_embd,
            pre_ln,
            layers,
            mm_input_norm: vector(src, "mm.input_norm.weight", d)?,
            mm_patch_merger: matrix(src, "mm.patch_merger.weight", d, cfg.merged_dim())?,
            mm_1: matrix(src, "mm.1.weight", t, d)?,
            mm_2: matrix(src, "mm.2.weight", t, t)?,
        })
    }

    /// Bytes of weights held on the GPU.
    pub fn bytes_on_gpu(&self) -> u64 {
        let per_layer = |l: &PixtralLayerWeights| {
            [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].iter().map(|w| w.bytes_on_gpu()).sum::<u64>()
                + l.ln1.size()
                + l.ln2.size()
        };
        [&self.patch_embd, &self.mm_patch_merger, &self.mm_1, &self.mm_2].iter().map(|w| w.bytes_on_gpu()).sum::<u64>()
            + self.pre_ln.size()
            + self.mm_input_norm.size()
            + self.layers.iter().map(per_layer).sum::<u64>()
    }
}
