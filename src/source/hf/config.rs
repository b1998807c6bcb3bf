//! `config.json` → GGUF metadata, the keys llama.cpp's converter writes for the architecture,
//! and the `rope_freqs.weight` tensor it adds for Llama 3 RoPE scaling.
//!
//! Reference: llama.cpp `convert_hf_to_gguf.py` (`TextModel.__init__` and
//! `set_gguf_parameters` in `conversion/base.py`; `LlamaModel.set_gguf_parameters` and
//! `generate_extra_tensors` in `conversion/llama.py`).

use serde_json::{Map, Value};

use super::json::{json_object, Obj};
use super::mllama::{MllamaConfig, ARCH as MLLAMA};
use super::HfError;
use crate::gguf::{arch_key, MetaValue, Metadata};

/// Hugging Face architectures (`config.json` `architectures[0]`) and the GGUF architecture
/// llama.cpp's converter writes them as.
pub const ARCHITECTURES: &[(&str, &str)] =
    &[("LlamaForCausalLM", "llama"), ("MistralForCausalLM", "llama"), ("MllamaForConditionalGeneration", super::mllama::ARCH)];

/// The Hugging Face names of [`ARCHITECTURES`], for error messages.
pub const SUPPORTED: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM", "MllamaForConditionalGeneration"];

/// The largest head width accepted (the `rope_freqs` table has one entry per pair).
const MAX_HEAD_DIM: u32 = 1 << 12;

/// RoPE frequency scaling as `config.json` asks for it.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Yarn {
        factor: f64,
        original_context: u32,
        beta_fast: Option<f64>,
        beta_slow: Option<f64>,
        attn_factor: Option<f64>,
    },
    /// Llama 3.1: per-frequency divisors, stored as the `rope_freqs.weight` tensor.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_context: f64,
    },
}

/// The hyperparameters of a `config.json`, as the converter reads them.
#[derive(Clone, Debug)]
pub struct HfConfig {
    /// `architectures[0]`, e.g. `LlamaForCausalLM`.
    pub hf_arch: String,
    /// The GGUF architecture, e.g. `llama`.
    pub arch: &'static str,
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_ff: u32,
    pub n_head: u32,
    pub n_head_kv: Option<u32>,
    /// `head_dim` when the config gives it (GGUF `attention.key_length` / `value_length`).
    pub head_dim: Option<u32>,
    pub vocab: u32,
    pub context_length: Option<u32>,
    pub rms_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope: RopeScaling,
    /// The vision and cross-attention keys of an `MllamaForConditionalGeneration` config.
    pub mllama: Option<MllamaConfig>,
}

impl HfConfig {
    /// Reads `config.json`; an architecture not in [`ARCHITECTURES`] is an error naming it.
    pub fn parse(bytes: &[u8]) -> Result<HfConfig, HfError> {
        let mut root = json_object("config.json", bytes)?;
        // Multimodal configs keep the text model's keys in text_config (the converter merges).
        if let Some(Value::Object(text)) = root.get("text_config").cloned() {
            root.extend(text);
        }
        let c = Obj(&root);
        let hf_arch = match root.get("architectures") {
            Some(Value::Array(list)) => list.first().and_then(Value::as_str).map(str::to_string),
            _ => None,
        }
        .ok_or_else(|| HfError::MissingKey("architectures".into()))?;
        let arch = ARCHITECTURES
            .iter()
            .find(|(hf, _)| *hf == hf_arch)
            .map(|&(_, gguf)| gguf)
            .ok_or_else(|| HfError::UnsupportedArch { arch: hf_arch.clone(), supported: SUPPORTED })?;

        let head_dim = c.opt_u32("head_dim")?;
        if let Some(d) = head_dim.filter(|&d| d == 0 || d > MAX_HEAD_DIM) {
            return Err(Obj::bad("head_dim", &Value::from(d), "outside 1..=4096"));
        }
        let n_head = c.u32("num_attention_heads")?;
        if n_head == 0 {
            return Err(Obj::bad("num_attention_heads", &Value::from(0), "zero"));
        }
        let n_layer = c.u32("num_hidden_layers")?;
        let mllama = if arch == MLLAMA { Some(MllamaConfig::parse(&root, n_layer)?) } else { None };
        Ok(HfConfig {
            arch,
            n_layer,
            n_embd: c.u32("hidden_size")?,
            n_ff: c.u32("intermediate_size")?,
            n_head,
            n_head_kv: c.opt_u32("num_key_value_heads")?,
            head_dim,
            vocab: c.u32("vocab_size")?,
            context_length: c.first_u32(&[
                "max_position_embeddings",
                "n_ctx",
                "n_positions",
                "max_length",
                "max_sequence_length",
                "model_max_length",
            ])?,
            rms_eps: c.opt_f64("rms_norm_eps")?,
            rope_theta: rope_theta(&c)?,
            rope: rope_scaling(&c)?,
            mllama,
            hf_arch,
        })
    }

    /// Whether the folder's image-processor settings suit this model (an Mllama model's
    /// tile size and count, a filter webvlm reproduces; [`super::mllama_preprocess`]).
    pub fn check_image_processor(&self, text: &super::HfTextFiles) -> Result<(), HfError> {
        if let Some(m) = &self.mllama {
            let v = &m.vision;
            super::mllama_preprocess(text.image_processor.as_ref(), v.image_size, v.patch_size, v.max_num_tiles)?;
        }
        Ok(())
    }

    /// Rows of one attention head (`head_dim`, or hidden / heads); also RoPE's dimension.
    pub fn rope_dim(&self) -> u32 {
        self.head_dim.unwrap_or(self.n_embd / self.n_head)
    }

    /// The GGUF metadata llama.cpp's converter writes for this config (model keys only;
    /// the tokenizer comes from the folder's own files).
    pub fn metadata(&self) -> Metadata {
        let mut md = Metadata::new();
        let key = |s: &str| arch_key(self.arch, s);
        let mut put = |k: String, v: MetaValue| {
            // Keys are distinct by construction.
            let _ = md.insert(k, v);
        };
        put("general.architecture".into(), MetaValue::String(self.arch.into()));
        put(key("vocab_size"), MetaValue::U32(self.vocab));
        put(key("block_count"), MetaValue::U32(self.n_layer));
        if let Some(n) = self.context_length {
            put(key("context_length"), MetaValue::U32(n));
        }
        put(key("embedding_length"), MetaValue::U32(self.n_embd));
        put(key("feed_forward_length"), MetaValue::U32(self.n_ff));
        put(key("attention.head_count"), MetaValue::U32(self.n_head));
        if let Some(n) = self.n_head_kv {
            put(key("attention.head_count_kv"), MetaValue::U32(n));
        }
        match self.rope {
            RopeScaling::None | RopeScaling::Llama3 { .. } => {}
            RopeScaling::Linear { factor } => {
                put(key("rope.scaling.type"), MetaValue::String("linear".into()));
                put(key("rope.scaling.factor"), MetaValue::F32(factor as f32));
            }
            RopeScaling::Yarn { factor, original_context, beta_fast, beta_slow, attn_factor } => {
                put(key("rope.scaling.type"), MetaValue::String("yarn".into()));
                put(key("rope.scaling.factor"), MetaValue::F32(factor as f32));
                put(key("rope.scaling.original_context_length"), MetaValue::U32(original_context));
                if let Some(f) = attn_factor {
                    put(key("rope.scaling.yarn_attn_factor"), MetaValue::F32(f as f32));
                }
                if let Some(b) = beta_fast {
                    put(key("rope.scaling.yarn_beta_fast"), MetaValue::F32(b as f32));
                }
                if let Some(b) = beta_slow {
                    put(key("rope.scaling.yarn_beta_slow"), MetaValue::F32(b as f32));
                }
            }
        }
        if let Some(theta) = self.rope_theta {
            put(key("rope.freq_base"), MetaValue::F32(theta as f32));
        }
        if let Some(eps) = self.rms_eps {
            put(key("attention.layer_norm_rms_epsilon"), MetaValue::F32(eps as f32));
        }
        if let Some(d) = self.head_dim {
            put(key("attention.key_length"), MetaValue::U32(d));
            put(key("attention.value_length"), MetaValue::U32(d));
        }
        put(key("rope.dimension_count"), MetaValue::U32(self.rope_dim()));
        if let Some(m) = &self.mllama {
            m.put_metadata(&mut md, self.n_embd);
        }
        md
    }

    /// `rope_freqs.weight` for Llama 3 RoPE scaling: one divisor per rotated pair, computed in
    /// float32 as the converter's `generate_extra_tensors` does (1 for short wavelengths,
    /// `factor` for long ones, a smooth blend between).
    pub fn rope_freqs(&self) -> Option<Vec<f32>> {
        let RopeScaling::Llama3 { factor, low_freq_factor: low, high_freq_factor: high, original_context: old } = self.rope
        else {
            return None;
        };
        let dim = self.rope_dim();
        let base = self.rope_theta.unwrap_or(10_000.0) as f32;
        let (low_wavelen, high_wavelen) = ((old / low) as f32, (old / high) as f32);
        let factors = (0..dim)
            .step_by(2)
            .map(|i| {
                let freq = 1.0 / base.powf(i as f32 / dim as f32);
                // torch computes `scalar / tensor` as `reciprocal(tensor) * scalar`.
                let wavelen = (1.0 / freq) * std::f32::consts::TAU;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor as f32
                } else {
                    let smooth = ((1.0 / wavelen) * old as f32 - low as f32) / (high - low) as f32;
                    1.0 / ((1.0 - smooth) / factor as f32 + smooth)
                }
            })
            .collect();
        Some(factors)
    }
}

/// The parameters under `rope_parameters` (transformers 5) or `rope_scaling` (older files),
/// with the top-level `rope_theta` mirrored in as the converter does.
fn rope_params<'a>(c: &'a Obj<'_>) -> Option<&'a Map<String, Value>> {
    let params = c.0.get("rope_parameters").or_else(|| c.0.get("rope_scaling"))?.as_object()?;
    // Per-layer-type parameters: the full-attention ones.
    Some(params.get("full_attention").and_then(Value::as_object).unwrap_or(params))
}

fn rope_theta(c: &Obj<'_>) -> Result<Option<f64>, HfError> {
    if let Some(theta) = rope_params(c).map(|p| Obj(p).opt_f64("rope_theta")).transpose()?.flatten() {
        return Ok(Some(theta));
    }
    for key in ["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base"] {
        if let Some(theta) = c.opt_f64(key)? {
            return Ok(Some(theta));
        }
    }
    Ok(None)
}

fn rope_scaling(c: &Obj<'_>) -> Result<RopeScaling, HfError> {
    let Some(params) = rope_params(c) else { return Ok(RopeScaling::None) };
    let p = Obj(params);
    let Some(kind) = p.opt_str("rope_type")?.or(p.opt_str("type")?) else { return Ok(RopeScaling::None) };
    let factor = p.opt_f64("factor")?;
    let orig = match p.opt_u32("original_max_position_embeddings")? {
        Some(n) => Some(n),
        None => c.opt_u32("original_max_position_embeddings")?,
    };
    Ok(match (kind.to_ascii_lowercase().as_str(), factor) {
        ("default", _) | ("linear" | "yarn", None) => RopeScaling::None,
        ("linear", Some(factor)) => RopeScaling::Linear { factor },
        ("yarn", Some(factor)) => RopeScaling::Yarn {
            factor,
            original_context: orig
                .ok_or_else(|| HfError::MissingKey("rope_parameters.original_max_position_embeddings".into()))?,
            beta_fast: p.opt_f64("beta_fast")?,
            beta_slow: p.opt_f64("beta_slow")?,
            attn_factor: match p.opt_f64("attention_factor")? {
                Some(f) => Some(f),
                None => p.opt_f64("attn_factor")?,
            },
        },
        ("llama3", _) => RopeScaling::Llama3 {
            factor: factor.unwrap_or(8.0),
            low_freq_factor: p.opt_f64("low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: p.opt_f64("high_freq_factor")?.unwrap_or(4.0),
            original_context: orig.unwrap_or(8192) as f64,
        },
        (other, _) => return Err(HfError::RopeScaling(other.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA: &str = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 100,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128, "beta_fast": 32}}"#;

    #[test]
    fn llama_keys_as_the_converter_writes_them() {
        let cfg = HfConfig::parse(LLAMA.as_bytes()).unwrap();
        let md = cfg.metadata();
        assert_eq!(md.architecture().unwrap(), "llama");
        assert_eq!(md.get_u32("llama.attention.head_count_kv").unwrap(), 2);
        assert_eq!(md.get_u32("llama.rope.dimension_count").unwrap(), 16);
        assert_eq!(md.get_f32("llama.rope.freq_base").unwrap(), 500000.0);
        assert_eq!(md.get_str("llama.rope.scaling.type").unwrap(), "yarn");
        assert_eq!(md.get_u32("llama.rope.scaling.original_context_length").unwrap(), 128);
        assert!(!md.contains("llama.attention.key_length"), "no head_dim in the config");
        assert_eq!(cfg.rope_freqs(), None);
    }

    #[test]
    fn bad_configs_are_typed_errors() {
        let with = |from: &str, to: &str| HfConfig::parse(LLAMA.replace(from, to).as_bytes()).unwrap_err();
        assert!(
            matches!(with("LlamaForCausalLM", "GPT2LMHeadModel"), HfError::UnsupportedArch { arch, .. } if arch == "GPT2LMHeadModel")
        );
        assert!(matches!(with("\"hidden_size\"", "\"hidden\""), HfError::MissingKey(k) if k == "hidden_size"));
        assert!(matches!(with("\"vocab_size\": 100", "\"vocab_size\": -1"), HfError::BadValue { .. }));
        assert!(matches!(with("\"yarn\"", "\"dynamic\""), HfError::RopeScaling(t) if t == "dynamic"));
        assert!(matches!(HfConfig::parse(b"[1]").unwrap_err(), HfError::Json { .. }));
        assert!(matches!(HfConfig::parse(b"{\"architectures\":").unwrap_err(), HfError::Json { .. }));
    }
}
