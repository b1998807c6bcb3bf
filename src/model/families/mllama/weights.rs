//! Mllama text-decoder weights on the GPU, by the GGUF-style names `source::hf` gives an
//! `MllamaForConditionalGeneration` folder: self-attention layers exactly as llama's
//! (`blk.N.attn_*`, `blk.N.ffn_*`), cross-attention layers `blk.N.cross_attn_*` (separate
//! q/k/v/o, per-head q/k norms, the two 1-element tanh gates), and a head whose embedding
//! has the 8 extra rows of the image token and its reserved neighbours.
//! Reference: transformers' `MllamaCrossAttentionDecoderLayer`, `MllamaTextCrossAttention`.

use crate::backend::{Buffer, Device};
use crate::kernels::quant::Weight;
use crate::model::blocks::attention::AttentionWeights;
use crate::model::blocks::ffn::GatedFfn;
use crate::model::blocks::head::Head;
use crate::model::families::llama::LayerWeights;
use crate::source::{LoadError, LoadQuant, WeightLoader};

use super::config::MllamaConfig;

/// A cross-attention block: queries from the text, keys and values from the image states.
pub struct CrossLayerWeights {
    pub attn_norm: Buffer, // [n_embd] f32
    pub q: Weight,         // [n_head * head_dim][n_embd]
    pub k: Weight,         // [n_kv_head * head_dim][n_embd]
    pub v: Weight,         // [n_kv_head * head_dim][n_embd]
    pub o: Weight,         // [n_embd][n_head * head_dim]
    pub q_norm: Buffer,    // [head_dim] f32
    pub k_norm: Buffer,    // [head_dim] f32
    pub attn_gate: Buffer, // [1] f32 (tanh taken on the GPU)
    pub ffn_norm: Buffer,  // [n_embd] f32
    pub ffn: GatedFfn,
    pub mlp_gate: Buffer, // [1] f32
}

/// One decoder block of either kind.
pub enum MllamaLayer {
    SelfAttn(Box<LayerWeights>),
    Cross(Box<CrossLayerWeights>),
}

/// All decoder weights.
pub struct MllamaWeights {
    pub layers: Vec<MllamaLayer>,
    /// `token_embd` has [`MllamaConfig::embd_rows`] rows, `output` the text vocabulary's.
    pub head: Head,
}

impl CrossLayerWeights {
    fn load(dev: &Device, src: &mut dyn WeightLoader, blk: &str, cfg: &MllamaConfig) -> Result<Self, LoadError> {
        let t = &cfg.llama.text;
        let (d, q_dim, kv_dim) = (t.n_embd, t.q_dim(), t.kv_dim());
        let name = |s: &str| format!("{blk}.cross_attn_{s}.weight");
        let keep = LoadQuant::Keep;
        Ok(CrossLayerWeights {
            attn_norm: src.vector(dev, &format!("{blk}.attn_norm.weight"), d)?,
            q: src.matrix(dev, &name("q"), q_dim, d, keep)?,
            k: src.matrix(dev, &name("k"), kv_dim, d, keep)?,
            v: src.matrix(dev, &name("v"), kv_dim, d, keep)?,
            o: src.matrix(dev, &name("o"), d, q_dim, keep)?,
            q_norm: src.vector(dev, &name("q_norm"), t.head_dim)?,
            k_norm: src.vector(dev, &name("k_norm"), t.head_dim)?,
            attn_gate: src.vector(dev, &name("attn_gate"), 1)?,
            ffn_norm: src.vector(dev, &format!("{blk}.ffn_norm.weight"), d)?,
            ffn: GatedFfn::load(dev, src, &format!("{blk}.ffn"), d, t.n_ff, keep)?,
            mlp_gate: src.vector(dev, &name("mlp_gate"), 1)?,
        })
    }

    fn matrices(&self) -> impl Iterator<Item = &Weight> {
        [&self.q, &self.k, &self.v, &self.o].into_iter().chain(self.ffn.matrices())
    }

    fn vector_bytes(&self) -> u64 {
        [&self.attn_norm, &self.q_norm, &self.k_norm, &self.attn_gate, &self.ffn_norm, &self.mlp_gate]
            .iter()
            .map(|b| b.size())
            .sum()
    }
}

impl MllamaWeights {
    pub fn load_from(dev: &Device, src: &mut dyn WeightLoader, cfg: &MllamaConfig) -> Result<Self, LoadError> {
        let (t, attn) = (&cfg.llama.text, cfg.llama.attention());
        let mut layers = Vec::with_capacity(t.n_layer as usize);
        for i in 0..t.n_layer {
            let blk = format!("blk.{i}");
            layers.push(if cfg.is_cross(i) {
                MllamaLayer::Cross(Box::new(CrossLayerWeights::load(dev, src, &blk, cfg)?))
            } else {
                MllamaLayer::SelfAttn(Box::new(LayerWeights {
                    attn_norm: src.vector(dev, &format!("{blk}.attn_norm.weight"), t.n_embd)?,
                    attn: AttentionWeights::load(dev, src, &format!("{blk}.attn"), t.n_embd, &attn)?,
                    ffn_norm: src.vector(dev, &format!("{blk}.ffn_norm.weight"), t.n_embd)?,
                    ffn: GatedFfn::load(dev, src, &format!("{blk}.ffn"), t.n_embd, t.n_ff, LoadQuant::Keep)?,
                }))
            });
        }
        // The LM head has the text vocabulary's rows, the embedding 8 more.
        let output = Some(src.matrix(dev, "output.weight", t.vocab, t.n_embd, LoadQuant::Keep)?);
        let head = Head {
            token_embd: src.matrix(dev, "token_embd.weight", cfg.embd_rows, t.n_embd, LoadQuant::Keep)?,
            output_norm: src.vector(dev, "output_norm.weight", t.n_embd)?,
            output,
            rms_eps: cfg.llama.rms_eps,
        };
        Ok(MllamaWeights { layers, head })
    }

    /// The matrices of every block (what a decode step reads besides the head).
    pub fn layer_matrices(&self) -> impl Iterator<Item = &Weight> {
        self.layers.iter().flat_map(|l| -> Box<dyn Iterator<Item = &Weight> + '_> {
            match l {
                MllamaLayer::SelfAttn(l) => Box::new(l.attn.matrices().into_iter().chain(l.ffn.matrices())),
                MllamaLayer::Cross(l) => Box::new(l.matrices()),
            }
        })
    }

    /// Bytes of weights held on the GPU.
    pub fn bytes_on_gpu(&self) -> u64 {
        let vectors: u64 = (self.layers.iter())
            .map(|l| match l {
                MllamaLayer::SelfAttn(l) => l.attn_norm.size() + l.ffn_norm.size(),
                MllamaLayer::Cross(l) => l.vector_bytes(),
            })
            .sum();
        self.layer_matrices().map(Weight::bytes_on_gpu).sum::<u64>() + vectors + self.head.bytes_on_gpu()
    }
}
