//! Llama-family weights on the GPU, loaded by llama.cpp tensor name (`blk.N.attn_*`,
//! `blk.N.ffn_*`, `token_embd`, `output_norm`, `output`). Matrices keep their GGUF
//! quantization (see `kernels::quant` for the GPU layout); norm vectors become f32.

use crate::backend::{Buffer, Device};
use crate::kernels::quant::Weight;
use crate::model::blocks::attention::AttentionWeights;
use crate::model::blocks::ffn::GatedFfn;
use crate::model::blocks::head::Head;
use crate::source::{LoadError, LoadQuant, WeightLoader};

use super::config::LlamaConfig;

/// One pre-norm transformer block.
pub struct LayerWeights {
    pub attn_norm: Buffer, // [n_embd] f32
    pub attn: AttentionWeights,
    pub ffn_norm: Buffer, // [n_embd] f32
    pub ffn: GatedFfn,
}

/// All decoder weights.
pub struct LlamaWeights {
    pub layers: Vec<LayerWeights>,
    pub head: Head,
}

impl LlamaWeights {
    pub fn load_from(dev: &Device, src: &mut dyn WeightLoader, cfg: &LlamaConfig) -> Result<Self, LoadError> {
        let (d, attn) = (cfg.text.n_embd, cfg.attention());
        let mut layers = Vec::with_capacity(cfg.text.n_layer as usize);
        for i in 0..cfg.text.n_layer {
            let blk = format!("blk.{i}");
            layers.push(LayerWeights {
                attn_norm: src.vector(dev, &format!("{blk}.attn_norm.weight"), d)?,
                attn: AttentionWeights::load(dev, src, &format!("{blk}.attn"), d, &attn)?,
                ffn_norm: src.vector(dev, &format!("{blk}.ffn_norm.weight"), d)?,
                ffn: GatedFfn::load(dev, src, &format!("{blk}.ffn"), d, cfg.text.n_ff, LoadQuant::Keep)?,
            });
        }
        let head = Head::load(dev, src, cfg.text.vocab, d, cfg.rms_eps)?;
        Ok(LlamaWeights { layers, head })
    }

    /// The matrices of every block (what a decode step reads besides the head).
    pub fn layer_matrices(&self) -> impl Iterator<Item = &Weight> {
        self.layers.iter().flat_map(|l| l.attn.matrices().into_iter().chain(l.ffn.matrices()))
    }

    /// Bytes of weights held on the GPU.
    pub fn bytes_on_gpu(&self) -> u64 {
        self.layer_matrices().map(Weight::bytes_on_gpu).sum::<u64>()
            + self.layers.iter().map(|l| l.attn_norm.size() + l.ffn_norm.size()).sum::<u64>()
            + self.head.bytes_on_gpu()
    }
}
