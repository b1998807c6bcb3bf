//! Decoder hyperparameters read from GGUF metadata (`{arch}.*` keys as llama.cpp writes them).
//!
//! Supported architectures: `llama` (Llama, Mistral, SmolLM2) and `mistral3` (Ministral 3:
//! YaRN RoPE and the position-dependent query scaling of `Ministral3Attention`).

use crate::gguf::{arch_key, Metadata};
use crate::kernels::rope::{QScale, Yarn};
use crate::model::blocks::attention::AttentionShape;
use crate::model::{ModelError, TextConfig};

/// Everything the decoder needs to know about the network's shape.
#[derive(Clone, Debug)]
pub struct LlamaConfig {
    /// Sizes, vocabulary and context length (validated).
    pub text: TextConfig,
    pub rms_eps: f32,
    pub rope_theta: f32,
    /// YaRN frequency scaling (Peng et al. 2023), when the file asks for it.
    pub yarn: Option<Yarn>,
    /// Ministral 3 query scaling `1 + beta * ln(1 + floor(pos / orig))` (beta 0 = off).
    pub query_scale_beta: f32,
    pub query_scale_orig: u32,
}

impl LlamaConfig {
    /// Reads the config; `vocab` comes from the token embedding's row count.
    pub fn from_metadata(md: &Metadata, vocab: u32) -> Result<Self, ModelError> {
        let arch = md.architecture()?.to_string();
        if !super::ARCHITECTURES.contains(&arch.as_str()) {
            return Err(ModelError::UnsupportedArch { arch, supported: crate::model::families::SUPPORTED });
        }
        let key = |s: &str| arch_key(&arch, s);
        let n_embd = md.get_u32(&key("embedding_length"))?;
        let n_head = md.get_u32(&key("attention.head_count"))?;
        let n_head_kv = md.get_opt_u32(&key("attention.head_count_kv"))?.unwrap_or(n_head);
        let head_dim = match md.get_opt_u32(&key("attention.key_length"))? {
            Some(d) => d,
            None if n_head > 0 => n_embd / n_head,
            None => 0,
        };
        let yarn = match md.get_opt_str(&key("rope.scaling.type"))? {
            Some("yarn") => Some(Yarn {
                factor: md.get_f32(&key("rope.scaling.factor"))? as f64,
                original_max_position_embeddings: md.get_u32(&key("rope.scaling.original_context_length"))? as f64,
                beta_fast: md.get_opt_f32(&key("rope.scaling.yarn_beta_fast"))?.unwrap_or(32.0) as f64,
                beta_slow: md.get_opt_f32(&key("rope.scaling.yarn_beta_slow"))?.unwrap_or(1.0) as f64,
                mscale: None,
                mscale_all_dim: None,
                // llama.cpp's converter writes a log multiplier (0.1 * mscale_all_dim) when the
                // model sets mscale_all_dim; Ministral 3 has mscale = mscale_all_dim = 1, so
                // transformers' attention factor (their ratio) is 1. Otherwise transformers'
                // default 0.1 ln(factor) + 1 applies.
                attention_factor: md.get_opt_f32(&key("rope.scaling.yarn_log_multiplier"))?.map(|_| 1.0),
                truncate: true,
            }),
            None | Some("none") => None,
            Some(other) => return Err(ModelError::Invalid(format!("rope scaling type {other:?}"))),
        };
        let query_scale_beta = md.get_opt_f32(&key("attention.temperature_scale"))?.unwrap_or(0.0);
        let query_scale_orig = match &yarn {
            Some(y) => y.original_max_position_embeddings as u32,
            None => md.get_opt_u32(&key("context_length"))?.unwrap_or(1),
        };
        let rms_eps = md.get_opt_f32(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5);
        let rope_theta = md.get_opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let text = TextConfig {
            name: md.get_opt_str("general.name")?.map(str::to_string),
            n_layer: md.get_u32(&key("block_count"))?,
            n_ff: md.get_u32(&key("feed_forward_length"))?,
            context_length: md.get_opt_u32(&key("context_length"))?.unwrap_or(4096),
            arch,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            vocab,
        };
        text.validate()?;
        Ok(LlamaConfig { text, rms_eps, rope_theta, yarn, query_scale_beta, query_scale_orig })
    }

    /// Heads, RoPE and query scaling of the attention layers.
    pub fn attention(&self) -> AttentionShape {
        AttentionShape {
            n_head: self.text.n_head,
            n_kv_head: self.text.n_head_kv,
            head_dim: self.text.head_dim,
            q_scale: QScale { beta: self.query_scale_beta, orig_ctx: self.query_scale_orig },
        }
    }
}
