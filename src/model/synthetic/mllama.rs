//! Synthetic Llama 3.2 Vision models (`MllamaForConditionalGeneration`, `docs/MODELS.md`):
//! the 11B's exact shapes (or a tiny model of the same structure) with random weights, in
//! the one GGUF view a Hugging Face mllama folder maps to (text decoder, vision encoder and
//! projector side by side).
//!
//! Built the way the loader sees a real folder: the sizes go into a `config.json` object as
//! transformers writes it, which `source::hf::HfConfig` parses into the `mllama.*` metadata;
//! the published safetensors names and shapes go through `source::hf::HfTensors`, which
//! gives the GGUF names and dims (and synthesizes Llama 3's `rope_freqs.weight`). So every
//! size the decoder and encoder read comes through the same config path as a real model's.
//!
//! Types: the text matrices as a 4-bit load would hold them (the Q4_K_M-like mix of the
//! other synthetic decoders: Q4_K, Q6_K for `attn_v`, `cross_attn_v`, `ffn_down` and the LM
//! head); the vision side F16 matrices and tables (the published BF16, in a type the
//! kernels read), every vector F32.

use serde_json::{json, Value};

use crate::gguf::{random_blocks, GgmlType, GgufWriter, SplitMix64};
use crate::source::hf::{HfConfig, HfTensors, Origin};
use crate::source::GgufBytes;

use super::{random_f16_matrix, SyntheticError, SyntheticWeights};

/// The text decoder of a synthetic Mllama: a Llama 3 decoder whose layers `i` with
/// `i % cross_period == cross_offset` are cross-attention layers (the 11B: period 5 from
/// layer 3, i.e. [3, 8, ..., 38]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MllamaTextShape {
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_ff: u32,
    /// Text vocabulary (the LM head's rows; the embedding has 8 more, `<|image|>` first).
    pub vocab: u32,
    pub cross_period: u32,
    pub cross_offset: u32,
}

/// The vision encoder + projector of a synthetic Mllama.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MllamaVisionShape {
    pub hidden: u32,
    pub n_head: u32,
    pub n_ff: u32,
    pub n_local: u32,
    pub n_global: u32,
    pub image_size: u32,
    pub patch_size: u32,
    pub max_tiles: u32,
    /// Local layers whose outputs join the features; clamped to the local layers present.
    pub kept_layers: [u32; 5],
}

/// A whole synthetic Mllama.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MllamaShape {
    pub text: MllamaTextShape,
    pub vision: MllamaVisionShape,
}

/// Which tensors a synthetic GGUF holds (the metadata is always the whole model's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MllamaParts {
    /// Text decoder, vision encoder and projector: what a Hugging Face folder maps to.
    All,
    /// The decoder's tensors only (`Decoder::load` reads nothing else).
    Text,
    /// The encoder's and projector's only (`MllamaVision::load` reads nothing else).
    Vision,
}

/// transformers' `supported_aspect_ratios` for 4 tiles, (tiles down, tiles across).
const ASPECT_RATIOS: [[u32; 2]; 8] = [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]];

impl MllamaTextShape {
    /// The cross-attention layers.
    pub fn cross_layers(&self) -> Vec<u32> {
        (0..self.n_layer).filter(|i| i % self.cross_period.max(1) == self.cross_offset).collect()
    }
}

impl MllamaVisionShape {
    /// The kept layers as the config lists them (each below `n_local`).
    pub fn kept(&self) -> Vec<u32> {
        self.kept_layers.iter().map(|&k| k.min(self.n_local.saturating_sub(1))).collect()
    }

    /// Encoder layers, local and global.
    pub fn n_layer(&self) -> u32 {
        self.n_local + self.n_global
    }

    /// `n` encoder layers in the 11B's 4:1 mix of local and global layers (`n / 5` global).
    pub fn with_layers(self, n: u32) -> MllamaVisionShape {
        MllamaVisionShape { n_local: n - n / 5, n_global: n / 5, ..self }
    }

    /// Tokens per tile: the patches and the class token.
    pub fn tile_tokens(&self) -> u32 {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

impl MllamaShape {
    /// Llama 3.2 11B Vision (`meta-llama/Llama-3.2-11B-Vision-Instruct` `config.json`, which
    /// transformers' `MllamaConfig` defaults reproduce): the Llama 3.1 8B text model with 8
    /// cross-attention layers among 40; a 32 + 8 layer encoder of width 1280 on 4 tiles of
    /// 560 pixels, projected to 4096.
    pub fn llama32_11b_vision() -> MllamaShape {
        MllamaShape {
            text: MllamaTextShape {
                n_embd: 4096,
                n_layer: 40,
                n_head: 32,
                n_head_kv: 8,
                n_ff: 14336,
                vocab: 128_256,
                cross_period: 5,
                cross_offset: 3,
            },
            vision: MllamaVisionShape {
                hidden: 1280,
                n_head: 16,
                n_ff: 5120,
                n_local: 32,
                n_global: 8,
                image_size: 560,
                patch_size: 14,
                max_tiles: 4,
                kept_layers: [3, 7, 15, 23, 30],
            },
        }
    }

    /// The same structure in a few MB (5 text layers, the 4th a cross layer; heads of 64;
    /// 5 + 1 encoder layers on tiles of 2x2 patches) for tests and quick runs.
    pub fn tiny() -> MllamaShape {
        MllamaShape {
            text: MllamaTextShape {
                n_embd: 256,
                n_layer: 5,
                n_head: 4,
                n_head_kv: 2,
                n_ff: 512,
                vocab: 1024,
                cross_period: 5,
                cross_offset: 3,
            },
            vision: MllamaVisionShape {
                hidden: 128,
                n_head: 2,
                n_ff: 256,
                n_local: 5,
                n_global: 1,
                image_size: 28,
                patch_size: 14,
                max_tiles: 4,
                kept_layers: [0, 1, 2, 3, 4],
            },
        }
    }

    /// transformers' `config.json` of this shape (the keys `HfConfig::parse` reads).
    pub fn config_json(&self) -> Value {
        let (t, v) = (&self.text, &self.vision);
        json!({
            "architectures": ["MllamaForConditionalGeneration"],
            "model_type": "mllama",
            "image_token_index": t.vocab,
            "text_config": {
                "model_type": "mllama_text_model",
                "hidden_size": t.n_embd,
                "intermediate_size": t.n_ff,
                "num_attention_heads": t.n_head,
                "num_key_value_heads": t.n_head_kv,
                "num_hidden_layers": t.n_layer,
                "vocab_size": t.vocab,
                "max_position_embeddings": 131_072,
                "rms_norm_eps": 1e-5,
                "rope_theta": 500_000.0,
                "rope_scaling": {
                    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192
                },
                "cross_attention_layers": t.cross_layers(),
                "tie_word_embeddings": false,
            },
            "vision_config": {
                "model_type": "mllama_vision_model",
                "hidden_size": v.hidden,
                "attention_heads": v.n_head,
                "intermediate_size": v.n_ff,
                "num_hidden_layers": v.n_local,
                "num_global_layers": v.n_global,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "max_num_tiles": v.max_tiles,
                "intermediate_layers_indices": v.kept(),
                "norm_eps": 1e-5,
                "supported_aspect_ratios": ASPECT_RATIOS,
                "vision_output_dim": v.hidden * (1 + v.kept_layers.len() as u32),
            },
        })
    }

    /// The published safetensors tensors `(name, shape)` of this shape.
    pub fn hf_tensors(&self) -> Vec<(String, Vec<u64>)> {
        let mut out = text_tensors(&self.text);
        out.extend(vision_tensors(&self.vision, self.text.n_embd));
        out
    }
}

fn text_tensors(t: &MllamaTextShape) -> Vec<(String, Vec<u64>)> {
    let u = |n: u32| n as u64;
    let head_dim = u(t.n_embd / t.n_head);
    let (d, q, kv, ff) = (u(t.n_embd), u(t.n_head) * head_dim, u(t.n_head_kv) * head_dim, u(t.n_ff));
    let mut out = vec![
        ("language_model.model.embed_tokens.weight".to_string(), vec![u(t.vocab) + 8, d]),
        ("language_model.model.norm.weight".to_string(), vec![d]),
        ("language_model.lm_head.weight".to_string(), vec![u(t.vocab), d]),
    ];
    let cross = t.cross_layers();
    for i in 0..t.n_layer {
        let name = |s: &str| format!("language_model.model.layers.{i}.{s}");
        let attn = if cross.contains(&i) { "cross_attn" } else { "self_attn" };
        out.extend([
            (name(&format!("{attn}.q_proj.weight")), vec![q, d]),
            (name(&format!("{attn}.k_proj.weight")), vec![kv, d]),
            (name(&format!("{attn}.v_proj.weight")), vec![kv, d]),
            (name(&format!("{attn}.o_proj.weight")), vec![d, q]),
            (name("mlp.gate_proj.weight"), vec![ff, d]),
            (name("mlp.up_proj.weight"), vec![ff, d]),
            (name("mlp.down_proj.weight"), vec![d, ff]),
            (name("input_layernorm.weight"), vec![d]),
            (name("post_attention_layernorm.weight"), vec![d]),
        ]);
        if cross.contains(&i) {
            out.extend([
                (name("cross_attn.q_norm.weight"), vec![head_dim]),
                (name("cross_attn.k_norm.weight"), vec![head_dim]),
                (name("cross_attn_attn_gate"), vec![1]),
                (name("cross_attn_mlp_gate"), vec![1]),
            ]);
        }
    }
    out
}

fn vision_tensors(v: &MllamaVisionShape, text_hidden: u32) -> Vec<(String, Vec<u64>)> {
    let u = |n: u32| n as u64;
    let (h, ff, p, tiles, tok) = (u(v.hidden), u(v.n_ff), u(v.patch_size), u(v.max_tiles), u(v.tile_tokens()));
    let rows = ASPECT_RATIOS.len() as u64 + 1;
    let out_dim = h * (1 + v.kept_layers.len() as u64);
    let g = |s: &str| format!("vision_model.{s}");
    let mut out = vec![
        (g("patch_embedding.weight"), vec![h, 3, p, p]),
        (g("class_embedding"), vec![h]),
        (g("gated_positional_embedding.embedding"), vec![tok, h]),
        (g("gated_positional_embedding.gate"), vec![1]),
        (g("gated_positional_embedding.tile_embedding.weight"), vec![rows, tiles * tok * h]),
        (g("pre_tile_positional_embedding.embedding.weight"), vec![rows, tiles * h]),
        (g("pre_tile_positional_embedding.gate"), vec![1]),
        (g("post_tile_positional_embedding.embedding.weight"), vec![rows, tiles * h]),
        (g("post_tile_positional_embedding.gate"), vec![1]),
        (g("layernorm_pre.weight"), vec![h]),
        (g("layernorm_pre.bias"), vec![h]),
        (g("layernorm_post.weight"), vec![h]),
        (g("layernorm_post.bias"), vec![h]),
        ("multi_modal_projector.weight".to_string(), vec![u(text_hidden), out_dim]),
        ("multi_modal_projector.bias".to_string(), vec![u(text_hidden)]),
    ];
    let layers = (0..v.n_local).map(|i| (format!("transformer.layers.{i}"), false));
    for (prefix, gated) in layers.chain((0..v.n_global).map(|i| (format!("global_transformer.layers.{i}"), true))) {
        let name = |s: &str| g(&format!("{prefix}.{s}"));
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            out.push((name(&format!("self_attn.{proj}.weight")), vec![h, h]));
        }
        out.extend([
            (name("mlp.fc1.weight"), vec![ff, h]),
            (name("mlp.fc1.bias"), vec![ff]),
            (name("mlp.fc2.weight"), vec![h, ff]),
            (name("mlp.fc2.bias"), vec![h]),
            (name("input_layernorm.weight"), vec![h]),
            (name("input_layernorm.bias"), vec![h]),
            (name("post_attention_layernorm.weight"), vec![h]),
            (name("post_attention_layernorm.bias"), vec![h]),
        ]);
        if gated {
            out.extend([(name("gate_attn"), vec![1]), (name("gate_ffn"), vec![1])]);
        }
    }
    out
}

/// The upload type of the GGUF tensor `name` of `dims` (see the module doc).
fn tensor_type(name: &str, dims: &[u64]) -> GgmlType {
    use GgmlType::{F16, F32, Q4_K, Q6_K};
    let vision = name.starts_with("v.") || name.starts_with("mm.");
    match () {
        _ if dims.len() < 2 => F32,
        _ if vision => F16,
        _ if name == "output.weight" => Q6_K,
        _ if [".attn_v.weight", ".cross_attn_v.weight", ".ffn_down.weight"].iter().any(|s| name.ends_with(s)) => Q6_K,
        _ => Q4_K,
    }
}

/// The GGUF writer of `shape` with the `parts` asked for: the metadata `HfConfig` makes of
/// [`MllamaShape::config_json`], the tensors under the names `HfTensors` gives the published
/// ones.
pub fn synthetic_mllama_writer(
    shape: &MllamaShape,
    weights: SyntheticWeights,
    parts: MllamaParts,
) -> Result<GgufWriter, SyntheticError> {
    check(shape)?;
    let cfg = HfConfig::parse(shape.config_json().to_string().as_bytes())?;
    let stored = shape.hf_tensors();
    let tensors = HfTensors::new(&cfg, stored.iter().map(|(n, dims)| (n.as_str(), GgmlType::BF16, dims.as_slice())))?;
    let mut w = GgufWriter::new();
    for (k, v) in cfg.metadata().iter() {
        w.add_kv(k, v.clone());
    }
    w.add_kv("general.name", crate::gguf::MetaValue::String("synthetic mllama".into()));
    let mut rng = SplitMix64::new(weights.seed());
    for (index, t) in tensors.iter().enumerate() {
        let name = t.info.name.as_str();
        let vision = name.starts_with("v.") || name.starts_with("mm.");
        let wanted = match parts {
            MllamaParts::All => true,
            MllamaParts::Text => !vision,
            MllamaParts::Vision => vision,
        };
        if !wanted {
            continue;
        }
        let dims = &t.info.dims;
        let ty = tensor_type(name, dims);
        if let Origin::Synthesized(bytes) = &t.origin {
            w.add_tensor(name, dims, ty, bytes.clone())?;
        } else if dims.len() < 2 {
            // Norm weights near 1, biases and gates near 0.
            let (lo, hi) = if name.ends_with(".weight") && !name.contains("gate") { (0.9, 1.1) } else { (-0.1, 0.1) };
            let n = dims.iter().product::<u64>();
            let values: Vec<u8> = (0..n).flat_map(|_| rng.uniform(lo, hi).to_le_bytes()).collect();
            w.add_tensor(name, dims, ty, values)?;
        } else {
            let cols = dims[0];
            let rows = dims[1..].iter().product::<u64>();
            weights.add(&mut w, index, name.to_string(), dims, ty, |seed| match ty {
                GgmlType::F16 => random_f16_matrix(rows as u32, cols as u32, seed),
                _ => random_blocks(ty, (rows * cols) as usize / ty.block_size(), seed),
            })?;
        }
    }
    Ok(w)
}

/// [`synthetic_mllama_writer`]'s model with random weights drawn from `seed`, in memory.
pub fn synthetic_mllama(shape: &MllamaShape, seed: u64, parts: MllamaParts) -> Result<GgufBytes, SyntheticError> {
    let bytes = synthetic_mllama_writer(shape, SyntheticWeights::Random { seed }, parts)?.write()?;
    Ok(GgufBytes::parse(bytes)?)
}

fn check(shape: &MllamaShape) -> Result<(), SyntheticError> {
    let (t, v) = (&shape.text, &shape.vision);
    let k = crate::gguf::QK_K as u32;
    let text_ok = [t.n_embd, t.n_layer, t.n_head, t.n_head_kv, t.n_ff, t.vocab].iter().all(|&d| d > 0)
        && [t.n_embd, t.n_ff].iter().all(|d| d.is_multiple_of(k))
        && t.n_embd.is_multiple_of(t.n_head);
    let vision_ok = [v.hidden, v.n_head, v.n_ff, v.n_local, v.patch_size, v.max_tiles].iter().all(|&d| d > 0)
        && v.image_size.is_multiple_of(v.patch_size)
        && v.max_tiles >= 4;
    if !text_ok || !vision_ok {
        return Err(SyntheticError::BadShape(format!(
            "{shape:?}: non-zero sizes, n_embd and n_ff multiples of {k}, whole heads, whole patches, at least 4 tiles"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::families::mllama::MllamaConfig;
    use crate::model::vision::mllama::MllamaVisionConfig;
    use crate::source::TensorSource;

    #[test]
    fn the_11b_config_reads_as_transformers_defaults() {
        let shape = MllamaShape::llama32_11b_vision();
        let first_blocks = MllamaTextShape { n_layer: 10, ..shape.text };
        let cfg = HfConfig::parse(shape.config_json().to_string().as_bytes()).unwrap();
        let md = cfg.metadata();
        let text = MllamaConfig::from_metadata(&md, 128_264).unwrap();
        assert_eq!(text.cross_layers, [3, 8, 13, 18, 23, 28, 33, 38]);
        assert_eq!((text.llama.text.n_embd, text.llama.text.head_dim, text.llama.text.n_head_kv), (4096, 128, 8));
        assert_eq!((text.image_token, text.tile_keys, text.max_tiles), (128_256, 1601, 4));
        let vision = MllamaVisionConfig::from_metadata(&md).unwrap();
        assert_eq!((vision.hidden, vision.head_dim, vision.n_local, vision.n_global), (1280, 80, 32, 8));
        assert_eq!(
            (vision.kept_layers.as_slice(), vision.output_dim, vision.text_hidden),
            ([3, 7, 15, 23, 30].as_slice(), 7680, 4096)
        );
        assert_eq!(cfg.rope_freqs().map(|f| f.len()), Some(64), "Llama 3 RoPE scaling");
        assert_eq!(first_blocks.cross_layers(), [3, 8]);
        assert_eq!(shape.vision.with_layers(10), MllamaVisionShape { n_local: 8, n_global: 2, ..shape.vision });
    }

    #[test]
    fn tiny_model_loads_through_the_mllama_configs() {
        let shape = MllamaShape::tiny();
        let src = synthetic_mllama(&shape, 1, MllamaParts::All).unwrap();
        let text = MllamaConfig::from_metadata(src.metadata(), 1032).unwrap();
        assert_eq!(text.cross_layers, [3]);
        let vision = MllamaVisionConfig::from_metadata(src.metadata()).unwrap();
        assert_eq!((vision.tokens(), vision.output_dim, vision.text_hidden), (5, 768, 256));
        let ty = |n: &str| src.tensor_info(n).unwrap_or_else(|| panic!("{n}")).ty;
        assert_eq!(ty("blk.3.cross_attn_v.weight"), GgmlType::Q6_K);
        assert_eq!(ty("blk.2.attn_q.weight"), GgmlType::Q4_K);
        assert_eq!(ty("v.global.blk.0.attn_gate.weight"), GgmlType::F32);
        assert_eq!(ty("v.tile_position_embd.weight"), GgmlType::F16);
        assert_eq!(ty("rope_freqs.weight"), GgmlType::F32);
        let text_only = synthetic_mllama(&shape, 1, MllamaParts::Text).unwrap();
        assert!(text_only.tensor_info("v.blk.0.attn_q.weight").is_none() && text_only.tensor_info("output.weight").is_some());
        let vision_only = synthetic_mllama(&shape, 1, MllamaParts::Vision).unwrap();
        assert!(vision_only.tensor_info("mm.0.weight").is_some() && vision_only.tensor_info("token_embd.weight").is_none());
    }
}
