//! Qwen3.5 hyperparameters read from GGUF metadata (`qwen35.*` keys as llama.cpp writes
//! them; see `docs/MODELS.md`, "Qwen3.5 hybrid decoder").

use crate::gguf::{arch_key, MetaValue, Metadata};
use crate::model::{ModelError, TextConfig};

/// The Gated DeltaNet (linear-attention) layers' sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SsmConfig {
    /// `ssm.conv_kernel`: taps of the causal depthwise conv (4).
    pub conv_kernel: u32,
    /// `ssm.group_count`: q/k heads (Hk).
    pub n_k_heads: u32,
    /// `ssm.time_step_rank`: v heads (Hv, a multiple of Hk).
    pub n_v_heads: u32,
    /// `ssm.state_size`: q/k head dim.
    pub d_k: u32,
    /// `ssm.inner_size / Hv`: v head dim.
    pub d_v: u32,
}

impl SsmConfig {
    /// Channels of the conv (the mixed q | k | v row): `2 Hk dk + Hv dv`.
    pub fn conv_channels(&self) -> u32 {
        2 * self.n_k_heads * self.d_k + self.n_v_heads * self.d_v
    }

    /// Width of the DeltaNet output and of the gate z: `Hv dv`.
    pub fn inner(&self) -> u32 {
        self.n_v_heads * self.d_v
    }

    /// f32 values of one layer's recurrent state: the conv's `[channels][kernel - 1]` and the
    /// delta rule's `[Hv][dk][dv]`.
    pub fn state_floats(&self) -> (u64, u64) {
        let conv = self.conv_channels() as u64 * (self.conv_kernel as u64 - 1);
        (conv, self.n_v_heads as u64 * self.d_k as u64 * self.d_v as u64)
    }
}

/// Everything the decoder needs to know about the network's shape.
#[derive(Clone, Debug)]
pub struct Qwen35Config {
    /// Sizes of the full-attention layers, vocabulary and context length (validated).
    pub text: TextConfig,
    pub rms_eps: f32,
    pub rope_theta: f32,
    /// `rope.dimension_count`: the rotated leading dims of each attention head.
    pub n_rot: u32,
    /// `rope.dimension_sections`: multimodal RoPE sections (t, h, w, unused) in rotated pairs,
    /// interleaved (`mrope_interleaved`); text positions give every axis the same position.
    pub rope_sections: [u32; 4],
    /// Per layer: `true` for a Gated DeltaNet layer, `false` for gated full attention.
    pub recurrent: Vec<bool>,
    pub ssm: SsmConfig,
}

/// The layer pattern: `attention.recurrent_layers` (a per-layer array of bools or 0/1), or
/// every `full_attention_interval`-th layer full attention, the others recurrent.
fn layer_pattern(md: &Metadata, arch: &str, n_layer: u32) -> Result<Vec<bool>, ModelError> {
    let bad = |m: String| ModelError::Invalid(m);
    let key = arch_key(arch, "attention.recurrent_layers");
    if let Some(v) = md.get(&key) {
        let items = v.as_array().ok_or_else(|| bad(format!("{key} is not an array")))?;
        let flags = (items.iter())
            .map(|i| match i {
                MetaValue::Bool(b) => Ok(*b),
                i => match i.as_i128() {
                    Some(0) => Ok(false),
                    Some(1) => Ok(true),
                    _ => Err(bad(format!("{key}: item {i:?} is not a bool"))),
                },
            })
            .collect::<Result<Vec<_>, _>>()?;
        if flags.len() != n_layer as usize {
            return Err(bad(format!("{key} has {} items for {n_layer} layers", flags.len())));
        }
        return Ok(flags);
    }
    let key = arch_key(arch, "full_attention_interval");
    match md.get_opt_u32(&key)? {
        Some(0) => Err(bad(format!("{key} is 0"))),
        Some(k) => Ok((0..n_layer).map(|i| !(i + 1).is_multiple_of(k)).collect()),
        None => Err(bad(format!("neither {arch}.attention.recurrent_layers nor {key} is set"))),
    }
}

impl Qwen35Config {
    /// Reads the config; `vocab` comes from the token embedding's row count.
    pub fn from_metadata(md: &Metadata, vocab: u32) -> Result<Self, ModelError> {
        let arch = md.architecture()?.to_string();
        if !super::ARCHITECTURES.contains(&arch.as_str()) {
            return Err(ModelError::UnsupportedArch { arch, supported: crate::model::families::SUPPORTED });
        }
        let bad = |m: String| Err(ModelError::Invalid(m));
        let key = |s: &str| arch_key(&arch, s);
        let n_embd = md.get_u32(&key("embedding_length"))?;
        let n_head = md.get_u32(&key("attention.head_count"))?;
        let n_head_kv = md.get_opt_u32(&key("attention.head_count_kv"))?.unwrap_or(n_head);
        let head_dim = md.get_u32(&key("attention.key_length"))?;
        if let Some(v) = md.get_opt_u32(&key("attention.value_length"))? {
            if v != head_dim {
                return bad(format!("value_length {v} differs from key_length {head_dim}"));
            }
        }
        let n_layer = md.get_u32(&key("block_count"))?;
        let text = TextConfig {
            name: md.get_opt_str("general.name")?.map(str::to_string),
            n_layer,
            n_ff: md.get_u32(&key("feed_forward_length"))?,
            context_length: md.get_opt_u32(&key("context_length"))?.unwrap_or(4096),
            arch: arch.clone(),
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            vocab,
        };
        text.validate()?;
        let rms_eps = md.get_opt_f32(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6);
        let rope_theta = md.get_opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000_000.0);
        if !(rms_eps.is_finite() && rms_eps > 0.0 && rope_theta.is_finite() && rope_theta > 1.0) {
            return bad(format!("rms eps {rms_eps} / rope theta {rope_theta}"));
        }
        let n_rot = md.get_opt_u32(&key("rope.dimension_count"))?.unwrap_or(head_dim);
        if n_rot == 0 || !n_rot.is_multiple_of(2) || n_rot > head_dim {
            return bad(format!("rope.dimension_count {n_rot} for head_dim {head_dim}"));
        }
        let rope_sections = match md.get_opt_i32_array(&key("rope.dimension_sections"))? {
            None => [n_rot / 2, 0, 0, 0],
            Some(s) => {
                let mut out = [0u32; 4];
                if s.len() > 4 || s.iter().any(|&v| v < 0) {
                    return bad(format!("rope.dimension_sections {s:?}"));
                }
                for (o, v) in out.iter_mut().zip(&s) {
                    *o = *v as u32;
                }
                if out.iter().sum::<u32>() > n_rot / 2 {
                    return bad(format!("rope.dimension_sections {s:?} exceed {} rotated pairs", n_rot / 2));
                }
                out
            }
        };
        let recurrent = layer_pattern(md, &arch, n_layer)?;
        let n_v_heads = md.get_u32(&key("ssm.time_step_rank"))?;
        let inner = md.get_u32(&key("ssm.inner_size"))?;
        let ssm = SsmConfig {
            conv_kernel: md.get_u32(&key("ssm.conv_kernel"))?,
            n_k_heads: md.get_u32(&key("ssm.group_count"))?,
            n_v_heads,
            d_k: md.get_u32(&key("ssm.state_size"))?,
            d_v: inner.checked_div(n_v_heads).unwrap_or(0),
        };
        if [ssm.n_k_heads, ssm.n_v_heads, ssm.d_k, ssm.d_v].contains(&0) || inner != ssm.inner() {
            return bad(format!("ssm sizes {ssm:?} (inner_size {inner})"));
        }
        if !ssm.n_v_heads.is_multiple_of(ssm.n_k_heads) {
            return bad(format!("{} linear v heads not a multiple of {} k heads", ssm.n_v_heads, ssm.n_k_heads));
        }
        if !(2..=64).contains(&ssm.conv_kernel) {
            return bad(format!("ssm.conv_kernel {} (2..=64 supported)", ssm.conv_kernel));
        }
        let max = crate::kernels::delta_net::MAX_HEAD_DIM;
        if ssm.d_k > max || ssm.d_v > max || ssm.n_v_heads > 1024 {
            return bad(format!("ssm sizes {ssm:?} beyond the supported range (head dims up to {max})"));
        }
        Ok(Qwen35Config { text, rms_eps, rope_theta, n_rot, rope_sections, recurrent, ssm })
    }

    /// Layers of each kind: (recurrent, full attention).
    pub fn layer_counts(&self) -> (usize, usize) {
        let r = self.recurrent.iter().filter(|&&r| r).count();
        (r, self.recurrent.len() - r)
    }
}
