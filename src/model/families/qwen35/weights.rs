//! Qwen3.5 weights on the GPU, loaded by llama.cpp tensor name. Gated DeltaNet layers:
//! `blk.N.attn_qkv`, `attn_gate`, `ssm_alpha`, `ssm_beta` (stacked into one input
//! projection where their types allow: each token's row is then `q | k | v | z | a | b`),
//! `ssm_conv1d`, `ssm_a`, `ssm_dt.bias`, `ssm_norm`, `ssm_out`. Full-attention layers:
//! `attn_q` (per head `[q | gate]`), `attn_k`, `attn_v`, `attn_q_norm`,
//! `attn_k_norm`, `attn_output`. Every layer: `attn_norm`, `post_attention_norm` and the
//! SiLU-gated FFN. Matrices keep their GGUF type; vectors and the conv taps become f32.

use crate::backend::{Buffer, Device};
use crate::gguf::GgmlType;
use crate::kernels::quant::Weight;
use crate::model::blocks::ffn::GatedFfn;
use crate::model::blocks::head::Head;
use crate::source::{check_dims, load_stacked, LoadError, LoadQuant, Stacked, WeightLoader};

use super::config::Qwen35Config;

/// A Gated DeltaNet (linear attention) mixer.
pub struct DeltaNetWeights {
    /// `attn_qkv` `[2 Hk dk + Hv dv][n_embd]`, `attn_gate` `[Hv dv][n_embd]`, `ssm_alpha` and
    /// `ssm_beta` `[Hv][n_embd]`, stacked in that order.
    pub in_proj: Stacked,
    /// `ssm_conv1d`: `[channels][kernel]` f32 (one part).
    pub conv: Weight,
    /// `ssm_a` = `-exp(A_log)`, `[Hv]` f32.
    pub a: Buffer,
    /// `ssm_dt.bias`, `[Hv]` f32.
    pub dt_bias: Buffer,
    /// `ssm_norm`: the gated RMSNorm's `[dv]` weight (a plain `w` norm).
    pub norm: Buffer,
    /// `ssm_out` `[n_embd][Hv dv]`.
    pub out: Weight,
}

/// A gated full-attention mixer.
pub struct GatedAttentionWeights {
    /// `attn_q` `[n_head * 2 hd][n_embd]` (per head `[q | gate]`).
    pub q: Weight,
    /// `attn_k` and `attn_v` `[n_kv_head * hd][n_embd]`.
    pub k: Weight,
    pub v: Weight,
    /// Per-head RMSNorms of q and k, `[hd]` f32 (the converter's `1 + w`).
    pub q_norm: Buffer,
    pub k_norm: Buffer,
    pub wo: Weight, // [n_embd][n_head * hd]
}

/// What mixes tokens in one layer.
pub enum Mixer {
    DeltaNet(DeltaNetWeights),
    Attention(GatedAttentionWeights),
}

/// One pre-norm block.
pub struct LayerWeights {
    pub attn_norm: Buffer, // [n_embd] f32
    pub mixer: Mixer,
    pub post_attention_norm: Buffer, // [n_embd] f32
    pub ffn: GatedFfn,
}

/// All decoder weights.
pub struct Qwen35Weights {
    pub layers: Vec<LayerWeights>,
    pub head: Head,
}

/// A small 2-D tensor (GGUF dims `[cols, rows]`) as one f32 part.
fn f32_matrix(dev: &Device, src: &mut dyn WeightLoader, name: &str, rows: u32, cols: u32) -> Result<Weight, LoadError> {
    check_dims(name, src.tensor_info(name), &[cols as u64, rows as u64])?;
    let w = Weight::allocate(dev, name, GgmlType::F32, rows, cols, u64::MAX)?;
    src.fill(dev, name, &w, 0)?;
    Ok(w)
}

impl DeltaNetWeights {
    fn load(dev: &Device, src: &mut dyn WeightLoader, blk: &str, cfg: &Qwen35Config) -> Result<Self, LoadError> {
        let (d, s) = (cfg.text.n_embd, &cfg.ssm);
        let names = ["attn_qkv", "attn_gate", "ssm_alpha", "ssm_beta"].map(|m| format!("{blk}.{m}.weight"));
        let rows = [s.conv_channels(), s.inner(), s.n_v_heads, s.n_v_heads];
        let parts: Vec<(&str, u32)> = names.iter().map(String::as_str).zip(rows).collect();
        Ok(DeltaNetWeights {
            in_proj: load_stacked(dev, src, &format!("{blk}.ssm_in"), &parts, d, LoadQuant::Keep)?,
            conv: f32_matrix(dev, src, &format!("{blk}.ssm_conv1d.weight"), s.conv_channels(), s.conv_kernel)?,
            a: src.vector(dev, &format!("{blk}.ssm_a"), s.n_v_heads)?,
            dt_bias: src.vector(dev, &format!("{blk}.ssm_dt.bias"), s.n_v_heads)?,
            norm: src.vector(dev, &format!("{blk}.ssm_norm.weight"), s.d_v)?,
            out: src.matrix(dev, &format!("{blk}.ssm_out.weight"), d, s.inner(), LoadQuant::Keep)?,
        })
    }

    /// Width of one token's row of the stacked input projection.
    pub fn in_width(cfg: &Qwen35Config) -> u32 {
        cfg.ssm.conv_channels() + cfg.ssm.inner() + 2 * cfg.ssm.n_v_heads
    }
}

impl GatedAttentionWeights {
    fn load(dev: &Device, src: &mut dyn WeightLoader, blk: &str, cfg: &Qwen35Config) -> Result<Self, LoadError> {
        let t = &cfg.text;
        let d = t.n_embd;
        Ok(GatedAttentionWeights {
            q: src.matrix(dev, &format!("{blk}.attn_q.weight"), 2 * t.q_dim(), d, LoadQuant::Keep)?,
            k: src.matrix(dev, &format!("{blk}.attn_k.weight"), t.kv_dim(), d, LoadQuant::Keep)?,
            v: src.matrix(dev, &format!("{blk}.attn_v.weight"), t.kv_dim(), d, LoadQuant::Keep)?,
            q_norm: src.vector(dev, &format!("{blk}.attn_q_norm.weight"), t.head_dim)?,
            k_norm: src.vector(dev, &format!("{blk}.attn_k_norm.weight"), t.head_dim)?,
            wo: src.matrix(dev, &format!("{blk}.attn_output.weight"), t.n_embd, t.q_dim(), LoadQuant::Keep)?,
        })
    }
}

impl Qwen35Weights {
    pub fn load_from(dev: &Device, src: &mut dyn WeightLoader, cfg: &Qwen35Config) -> Result<Self, LoadError> {
        let d = cfg.text.n_embd;
        let mut layers = Vec::with_capacity(cfg.text.n_layer as usize);
        for (i, &recurrent) in cfg.recurrent.iter().enumerate() {
            let blk = format!("blk.{i}");
            let mixer = if recurrent {
                Mixer::DeltaNet(DeltaNetWeights::load(dev, src, &blk, cfg)?)
            } else {
                Mixer::Attention(GatedAttentionWeights::load(dev, src, &blk, cfg)?)
            };
            layers.push(LayerWeights {
                attn_norm: src.vector(dev, &format!("{blk}.attn_norm.weight"), d)?,
                mixer,
                post_attention_norm: src.vector(dev, &format!("{blk}.post_attention_norm.weight"), d)?,
                ffn: GatedFfn::load(dev, src, &format!("{blk}.ffn"), d, cfg.text.n_ff, LoadQuant::Keep)?,
            });
        }
        let head = Head::load(dev, src, cfg.text.vocab, d, cfg.rms_eps)?;
        Ok(Qwen35Weights { layers, head })
    }

    /// The matrices of every block (what a decode step reads besides the head).
    pub fn layer_matrices(&self) -> impl Iterator<Item = &Weight> {
        self.layers.iter().flat_map(|l| {
            let mixer: Vec<&Weight> = match &l.mixer {
                Mixer::DeltaNet(m) => m.in_proj.weights().iter().chain([&m.out]).collect(),
                Mixer::Attention(m) => vec![&m.q, &m.k, &m.v, &m.wo],
            };
            mixer.into_iter().chain(l.ffn.matrices())
        })
    }

    /// Bytes of weights held on the GPU.
    pub fn bytes_on_gpu(&self) -> u64 {
        let vectors = |l: &LayerWeights| -> u64 {
            l.attn_norm.size()
                + l.post_attention_norm.size()
                + match &l.mixer {
                    Mixer::DeltaNet(m) => m.conv.bytes_on_gpu() + m.a.size() + m.dt_bias.size() + m.norm.size(),
                    Mixer::Attention(m) => m.q_norm.size() + m.k_norm.size(),
                }
        };
        self.layer_matrices().map(Weight::bytes_on_gpu).sum::<u64>()
            + self.layers.iter().map(vectors).sum::<u64>()
            + self.head.bytes_on_gpu()
    }
}
