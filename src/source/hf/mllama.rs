//! `MllamaForConditionalGeneration` (Llama 3.2 Vision) folders: the extra `config.json` keys
//! (cross-attention layers, image token, `vision_config`) as `mllama.*` GGUF metadata, and
//! the tensor names of the text decoder (self- and cross-attention layers), the vision
//! encoder and the projector. llama.cpp has no converter for this architecture; the names
//! follow its `mllama` / `clip` conventions where they exist and are webvlm's contract
//! between the decoder and the encoder otherwise (see `docs/MODELS.md`, "Llama 3.2 Vision").
//!
//! Reference: transformers `models/mllama/configuration_mllama.py` and the published
//! safetensors layout (`language_model.*`, `vision_model.*`, `multi_modal_projector.*`).

use serde_json::{Map, Value};

use super::json::Obj;
use super::names::{gguf_name as llama_name, Mapped, Permute};
use super::HfError;
use crate::gguf::{arch_key, MetaValue, Metadata, ValueType};

/// The GGUF architecture of `MllamaForConditionalGeneration`.
pub const ARCH: &str = "mllama";

/// The most cross-attention layers, aspect ratios or kept layers a config may list.
const MAX_LIST: usize = 1 << 10;

/// The Mllama keys beyond the Llama text model's.
#[derive(Clone, Debug, PartialEq)]
pub struct MllamaConfig {
    /// Text layers that are cross-attention layers (sorted, each < the text block count).
    pub cross_attention_layers: Vec<u32>,
    /// `image_token_index`: the `<|image|>` id (= text vocab size in published models).
    pub image_token_index: u32,
    pub vision: MllamaVisionConfig,
}

/// `vision_config`.
#[derive(Clone, Debug, PartialEq)]
pub struct MllamaVisionConfig {
    pub image_size: u32,
    pub patch_size: u32,
    pub hidden: u32,
    pub heads: u32,
    pub ff: u32,
    /// Local (ungated) layers, `num_hidden_layers`.
    pub n_local: u32,
    /// Global (gated) layers, `num_global_layers`.
    pub n_global: u32,
    pub max_num_tiles: u32,
    /// Local layers whose outputs join the features (0-based).
    pub intermediate_layers: Vec<u32>,
    /// LayerNorm epsilon (`norm_eps`).
    pub norm_eps: f64,
    /// (tiles down, tiles across) pairs.
    pub aspect_ratios: Vec<[u32; 2]>,
    pub output_dim: u32,
}

fn u32_list(key: &str, v: Option<&Value>) -> Result<Vec<u32>, HfError> {
    let v = v.ok_or_else(|| HfError::MissingKey(key.to_string()))?;
    let bad = |why| HfError::BadValue { key: key.to_string(), value: v.to_string(), why };
    let list = v.as_array().ok_or_else(|| bad("not an array"))?;
    if list.len() > MAX_LIST {
        return Err(bad("too many entries"));
    }
    list.iter()
        .map(|x| x.as_u64().and_then(|n| i32::try_from(n).ok()).map(|n| n as u32).ok_or_else(|| bad("not a list of i32 ≥ 0")))
        .collect()
}

impl MllamaConfig {
    /// Reads the keys from `root` (text keys already merged in) for a text model of
    /// `n_layer` blocks.
    pub(super) fn parse(root: &Map<String, Value>, n_layer: u32) -> Result<MllamaConfig, HfError> {
        let c = Obj(root);
        let mut cross = u32_list("cross_attention_layers", root.get("cross_attention_layers"))?;
        cross.sort_unstable();
        cross.dedup();
        if let Some(&bad) = cross.iter().find(|&&l| l >= n_layer) {
            return Err(HfError::BadValue {
                key: "cross_attention_layers".into(),
                value: bad.to_string(),
                why: "not below num_hidden_layers",
            });
        }
        let vision_root = match root.get("vision_config") {
            Some(Value::Object(v)) => v,
            _ => return Err(HfError::MissingKey("vision_config".into())),
        };
        let v = Obj(vision_root);
        let pairs = aspect_ratios(vision_root.get("supported_aspect_ratios"))?;
        let n_local = v.u32("num_hidden_layers")?;
        let intermediate = u32_list("vision_config.intermediate_layers_indices", vision_root.get("intermediate_layers_indices"))?;
        if intermediate.iter().any(|&l| l >= n_local) {
            return Err(HfError::BadValue {
                key: "vision_config.intermediate_layers_indices".into(),
                value: format!("{intermediate:?}"),
                why: "not below num_hidden_layers",
            });
        }
        Ok(MllamaConfig {
            cross_attention_layers: cross,
            image_token_index: c.u32("image_token_index")?,
            vision: MllamaVisionConfig {
                image_size: v.u32("image_size")?,
                patch_size: v.u32("patch_size")?,
                hidden: v.u32("hidden_size")?,
                heads: v.u32("attention_heads")?,
                ff: v.u32("intermediate_size")?,
                n_local,
                n_global: v.u32("num_global_layers")?,
                max_num_tiles: v.u32("max_num_tiles")?,
                intermediate_layers: intermediate,
                norm_eps: v.opt_f64("norm_eps")?.unwrap_or(1e-5),
                aspect_ratios: pairs,
                output_dim: v.u32("vision_output_dim")?,
            },
        })
    }

    /// Adds the `mllama.*` keys beyond the Llama text ones; `n_embd` is the text hidden
    /// size (the projector's output, `mllama.vision.projection_dim`).
    pub(super) fn put_metadata(&self, md: &mut Metadata, n_embd: u32) {
        let i32s = |list: &mut dyn Iterator<Item = u32>| MetaValue::Array {
            elem: ValueType::I32,
            items: list.map(|n| MetaValue::I32(n as i32)).collect(),
        };
        let v = &self.vision;
        let entries = [
            ("attention.cross_attention_layers", i32s(&mut self.cross_attention_layers.iter().copied())),
            ("image_token_index", MetaValue::U32(self.image_token_index)),
            ("vision.image_size", MetaValue::U32(v.image_size)),
            ("vision.patch_size", MetaValue::U32(v.patch_size)),
            ("vision.embedding_length", MetaValue::U32(v.hidden)),
            ("vision.attention.head_count", MetaValue::U32(v.heads)),
            ("vision.feed_forward_length", MetaValue::U32(v.ff)),
            ("vision.block_count", MetaValue::U32(v.n_local)),
            ("vision.global_block_count", MetaValue::U32(v.n_global)),
            ("vision.max_num_tiles", MetaValue::U32(v.max_num_tiles)),
            ("vision.intermediate_layers_indices", i32s(&mut v.intermediate_layers.iter().copied())),
            ("vision.attention.layer_norm_epsilon", MetaValue::F32(v.norm_eps as f32)),
            ("vision.supported_aspect_ratios", i32s(&mut v.aspect_ratios.iter().flatten().copied())),
            ("vision.projection_dim", MetaValue::U32(n_embd)),
            ("vision.vision_output_dim", MetaValue::U32(v.output_dim)),
        ];
        for (k, value) in entries {
            // Keys are distinct by construction.
            let _ = md.insert(arch_key(ARCH, k), value);
        }
    }

    /// The GGUF name of the Mllama tensor `hf`, or `None` when it has none (text blocks at
    /// or above `n_layer`, vision layers beyond the config's counts, unknown names).
    pub fn gguf_name(&self, hf: &str, n_layer: u32) -> Option<Mapped> {
        let to = |s: String| Some(Mapped::To(s, Permute::None));
        if let Some(rest) = hf.strip_prefix("language_model.") {
            if rest == "lm_head.weight" {
                return to("output.weight".into());
            }
            if let Some((block, suffix)) = block_of(rest, "model.layers.", n_layer) {
                if self.cross_attention_layers.contains(&block) {
                    let &(_, gguf) = CROSS_BLOCK.iter().find(|(name, _)| *name == suffix)?;
                    return to(format!("blk.{block}.{gguf}"));
                }
            }
            // Self-attention layers and the globals are Llama's (q/k permuted).
            return llama_name(rest, n_layer);
        }
        if let Some(rest) = hf.strip_prefix("vision_model.") {
            if let Some(&(_, gguf)) = VISION_GLOBAL.iter().find(|(name, _)| *name == rest) {
                return to(gguf.into());
            }
            let v = &self.vision;
            if let Some((i, suffix)) = block_of(rest, "transformer.layers.", v.n_local) {
                let &(_, gguf) = VISION_BLOCK.iter().find(|(name, _)| *name == suffix)?;
                return to(format!("v.blk.{i}.{gguf}"));
            }
            let (i, suffix) = block_of(rest, "global_transformer.layers.", v.n_global)?;
            let &(_, gguf) = VISION_BLOCK.iter().chain(VISION_GATES).find(|(name, _)| *name == suffix)?;
            return to(format!("v.global.blk.{i}.{gguf}"));
        }
        match hf {
            "multi_modal_projector.weight" => to("mm.0.weight".into()),
            "multi_modal_projector.bias" => to("mm.0.bias".into()),
            _ => None,
        }
    }
}

/// `prefix N.suffix` with N < `count` → (N, suffix).
fn block_of<'a>(name: &'a str, prefix: &str, count: u32) -> Option<(u32, &'a str)> {
    let (index, suffix) = name.strip_prefix(prefix)?.split_once('.')?;
    let n: u32 = index.parse().ok().filter(|&n| n < count && !index.starts_with('+'))?;
    Some((n, suffix))
}

fn aspect_ratios(v: Option<&Value>) -> Result<Vec<[u32; 2]>, HfError> {
    const KEY: &str = "vision_config.supported_aspect_ratios";
    let v = v.ok_or_else(|| HfError::MissingKey(KEY.into()))?;
    let bad = || HfError::BadValue { key: KEY.into(), value: v.to_string(), why: "not a list of [down, across] pairs ≥ 1" };
    let list = v.as_array().ok_or_else(bad)?;
    if list.len() > MAX_LIST {
        return Err(bad());
    }
    list.iter()
        .map(|pair| match u32_list(KEY, Some(pair)).map_err(|_| bad())?.as_slice() {
            &[down, across] if down > 0 && across > 0 => Ok([down, across]),
            _ => Err(bad()),
        })
        .collect()
}

/// Cross-attention block N: `language_model.model.layers.N.<hf>` → `blk.N.<gguf>` (no
/// permutation: there is no RoPE in these layers).
const CROSS_BLOCK: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("cross_attn.q_proj.weight", "cross_attn_q.weight"),
    ("cross_attn.k_proj.weight", "cross_attn_k.weight"),
    ("cross_attn.v_proj.weight", "cross_attn_v.weight"),
    ("cross_attn.o_proj.weight", "cross_attn_o.weight"),
    ("cross_attn.q_norm.weight", "cross_attn_q_norm.weight"),
    ("cross_attn.k_norm.weight", "cross_attn_k_norm.weight"),
    ("cross_attn_attn_gate", "cross_attn_attn_gate.weight"),
    ("cross_attn_mlp_gate", "cross_attn_mlp_gate.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

/// Vision tensors outside the layers (`vision_model.` stripped).
const VISION_GLOBAL: &[(&str, &str)] = &[
    ("patch_embedding.weight", "v.patch_embd.weight"),
    ("class_embedding", "v.class_embd.weight"),
    ("gated_positional_embedding.embedding", "v.position_embd.weight"),
    ("gated_positional_embedding.gate", "v.position_embd.gate"),
    ("gated_positional_embedding.tile_embedding.weight", "v.tile_position_embd.weight"),
    ("pre_tile_positional_embedding.embedding.weight", "v.pre_tile_position_embd.weight"),
    ("pre_tile_positional_embedding.gate", "v.pre_tile_position_embd.gate"),
    ("post_tile_positional_embedding.embedding.weight", "v.post_tile_position_embd.weight"),
    ("post_tile_positional_embedding.gate", "v.post_tile_position_embd.gate"),
    ("layernorm_pre.weight", "v.pre_ln.weight"),
    ("layernorm_pre.bias", "v.pre_ln.bias"),
    ("layernorm_post.weight", "v.post_ln.weight"),
    ("layernorm_post.bias", "v.post_ln.bias"),
];

/// A vision layer's tensors, local (`v.blk.i.`) and global (`v.global.blk.i.`).
const VISION_BLOCK: &[(&str, &str)] = &[
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_out.weight"),
    ("input_layernorm.weight", "ln1.weight"),
    ("input_layernorm.bias", "ln1.bias"),
    ("post_attention_layernorm.weight", "ln2.weight"),
    ("post_attention_layernorm.bias", "ln2.bias"),
    ("mlp.fc1.weight", "ffn_up.weight"),
    ("mlp.fc1.bias", "ffn_up.bias"),
    ("mlp.fc2.weight", "ffn_down.weight"),
    ("mlp.fc2.bias", "ffn_down.bias"),
];

/// The gates of a global vision layer (1-element tensors).
const VISION_GATES: &[(&str, &str)] = &[("gate_attn", "attn_gate.weight"), ("gate_ffn", "ffn_gate.weight")];

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::super::{HfModel, Origin};
    use super::*;
    use crate::source::TensorSource;

    fn fixture(name: &str) -> (HfModel, Value) {
        let dir = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let config = serde_json::from_slice(&std::fs::read(format!("{dir}/config.json")).unwrap()).unwrap();
        (HfModel::open(&dir).unwrap(), config)
    }

    #[test]
    fn fixture_metadata_is_config_json() {
        for name in ["tiny_mllama_a", "tiny_mllama_b"] {
            let (model, cfg) = fixture(name);
            let (text, vision) = (&cfg["text_config"], &cfg["vision_config"]);
            let md = model.metadata();
            let u = |k: &str| md.get_u32(&format!("mllama.{k}")).unwrap() as u64;
            let i32s = |k: &str| md.get_i32_array(&format!("mllama.{k}")).unwrap().into_iter().map(i64::from).collect::<Vec<_>>();
            let json_i64s = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect::<Vec<_>>();
            assert_eq!(md.architecture().unwrap(), "mllama");
            for (key, json) in [
                ("block_count", &text["num_hidden_layers"]),
                ("context_length", &text["max_position_embeddings"]),
                ("embedding_length", &text["hidden_size"]),
                ("feed_forward_length", &text["intermediate_size"]),
                ("attention.head_count", &text["num_attention_heads"]),
                ("attention.head_count_kv", &text["num_key_value_heads"]),
                ("vocab_size", &text["vocab_size"]),
                ("image_token_index", &cfg["image_token_index"]),
                ("vision.image_size", &vision["image_size"]),
                ("vision.patch_size", &vision["patch_size"]),
                ("vision.embedding_length", &vision["hidden_size"]),
                ("vision.attention.head_count", &vision["attention_heads"]),
                ("vision.feed_forward_length", &vision["intermediate_size"]),
                ("vision.block_count", &vision["num_hidden_layers"]),
                ("vision.global_block_count", &vision["num_global_layers"]),
                ("vision.max_num_tiles", &vision["max_num_tiles"]),
                ("vision.projection_dim", &text["hidden_size"]),
                ("vision.vision_output_dim", &vision["vision_output_dim"]),
            ] {
                assert_eq!(u(key), json.as_u64().unwrap(), "{name}: {key}");
            }
            assert_eq!(i32s("attention.cross_attention_layers"), json_i64s(&text["cross_attention_layers"]));
            assert_eq!(i32s("vision.intermediate_layers_indices"), json_i64s(&vision["intermediate_layers_indices"]));
            let pairs: Vec<i64> = vision["supported_aspect_ratios"].as_array().unwrap().iter().flat_map(json_i64s).collect();
            assert_eq!(i32s("vision.supported_aspect_ratios"), pairs);
            let f = |k: &str| md.get_f32(&format!("mllama.{k}")).unwrap() as f64;
            assert!((f("attention.layer_norm_rms_epsilon") - text["rms_norm_eps"].as_f64().unwrap()).abs() < 1e-12);
            assert!((f("vision.attention.layer_norm_epsilon") - vision["norm_eps"].as_f64().unwrap()).abs() < 1e-12);
            assert_eq!(f("rope.freq_base"), text["rope_parameters"]["rope_theta"].as_f64().unwrap());
        }
    }

    #[test]
    fn every_fixture_tensor_maps() {
        for name in ["tiny_mllama_a", "tiny_mllama_b"] {
            let (model, cfg) = fixture(name);
            let text = &cfg["text_config"];
            let hidden = text["hidden_size"].as_u64().unwrap();
            let vocab = text["vocab_size"].as_u64().unwrap();
            let cross: Vec<u64> =
                text["cross_attention_layers"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
            // `open` fails on a tensor without a name; check the contract's names are there.
            let dims = |n: &str| model.tensor_info(n).unwrap_or_else(|| panic!("{name}: no {n}")).dims.clone();
            assert_eq!(dims("token_embd.weight"), [hidden, vocab + 8]);
            assert_eq!(dims("output.weight"), [hidden, vocab]);
            assert_eq!(dims("output_norm.weight"), [hidden]);
            assert!(model.tensor_info("rope_freqs.weight").is_some());
            for l in 0..text["num_hidden_layers"].as_u64().unwrap() {
                let names: &[&str] = if cross.contains(&l) {
                    &[
                        "attn_norm",
                        "cross_attn_q",
                        "cross_attn_k",
                        "cross_attn_v",
                        "cross_attn_o",
                        "cross_attn_q_norm",
                        "cross_attn_k_norm",
                        "cross_attn_attn_gate",
                        "cross_attn_mlp_gate",
                        "ffn_norm",
                        "ffn_gate",
                        "ffn_up",
                        "ffn_down",
                    ]
                } else {
                    &["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
                };
                for n in names {
                    dims(&format!("blk.{l}.{n}.weight"));
                }
                assert_eq!(model.tensor_info(&format!("blk.{l}.attn_q.weight")).is_some(), !cross.contains(&l));
            }
            assert_eq!(dims(&format!("blk.{}.cross_attn_attn_gate.weight", cross[0])), [1]);
            for t in model.tensors() {
                let permuted = matches!(t.origin, Origin::Stored { heads: Some(_), .. });
                let n = &t.info.name;
                let self_qk = n.starts_with("blk.") && (n.ends_with(".attn_q.weight") || n.ends_with(".attn_k.weight"));
                assert_eq!(permuted, self_qk, "{n}");
            }
            let v = &cfg["vision_config"];
            for n in [
                "v.patch_embd.weight",
                "v.class_embd.weight",
                "v.position_embd.weight",
                "v.position_embd.gate",
                "v.tile_position_embd.weight",
                "v.pre_tile_position_embd.weight",
                "v.pre_tile_position_embd.gate",
                "v.post_tile_position_embd.weight",
                "v.post_tile_position_embd.gate",
                "v.pre_ln.weight",
                "v.pre_ln.bias",
                "v.post_ln.weight",
                "v.post_ln.bias",
                "mm.0.weight",
                "mm.0.bias",
            ] {
                dims(n);
            }
            let layer = [
                "attn_q.weight",
                "attn_k.weight",
                "attn_v.weight",
                "attn_out.weight",
                "ln1.weight",
                "ln1.bias",
                "ln2.weight",
                "ln2.bias",
                "ffn_up.weight",
                "ffn_up.bias",
                "ffn_down.weight",
                "ffn_down.bias",
            ];
            for i in 0..v["num_hidden_layers"].as_u64().unwrap() {
                layer.iter().for_each(|n| drop(dims(&format!("v.blk.{i}.{n}"))));
            }
            for i in 0..v["num_global_layers"].as_u64().unwrap() {
                layer
                    .iter()
                    .chain(&["attn_gate.weight", "ffn_gate.weight"])
                    .for_each(|n| drop(dims(&format!("v.global.blk.{i}.{n}"))));
            }
            assert_eq!(dims("v.patch_embd.weight"), [14, 14, 3, v["hidden_size"].as_u64().unwrap()]);
        }
    }

    #[test]
    fn bad_mllama_configs_are_typed_errors() {
        let dir = format!("{}/tests/fixtures/tiny_mllama_a/config.json", env!("CARGO_MANIFEST_DIR"));
        let good = std::fs::read_to_string(dir).unwrap();
        let parse = |s: String| super::super::HfConfig::parse(s.as_bytes());
        assert!(parse(good.clone()).unwrap().mllama.is_some());
        let compact: String = good.split_whitespace().collect();
        let with = |from: &str, to: &str| {
            assert!(compact.contains(from), "{from}");
            parse(compact.replace(from, to)).unwrap_err()
        };
        assert!(matches!(with("\"cross_attention_layers\":[1,3]", "\"cross_attention_layers\":[1,4]"), HfError::BadValue { .. }));
        assert!(matches!(with("\"cross_attention_layers\":[1,3]", "\"cross_attention_layers\":7"), HfError::BadValue { .. }));
        assert!(matches!(with("[1,1],[1,2]", "[1,1,1],[1,2]"), HfError::BadValue { .. }));
        assert!(matches!(with("[1,1],[1,2]", "[0,1],[1,2]"), HfError::BadValue { .. }));
        assert!(matches!(
            with("\"intermediate_layers_indices\":[0,1]", "\"intermediate_layers_indices\":[2]"),
            HfError::BadValue { .. }
        ));
        assert!(matches!(with("\"vision_config\":", "\"vision\":"), HfError::MissingKey(k) if k == "vision_config"));
        assert!(matches!(with("\"image_token_index\":311", "\"image_token\":311"), HfError::MissingKey(_)));
    }

    #[test]
    fn unknown_names_have_none() {
        let dir = format!("{}/tests/fixtures/tiny_mllama_a", env!("CARGO_MANIFEST_DIR"));
        let cfg = super::super::HfConfig::parse(&std::fs::read(format!("{dir}/config.json")).unwrap()).unwrap();
        let m = cfg.mllama.as_ref().unwrap();
        let name = |hf: &str| m.gguf_name(hf, cfg.n_layer);
        // Layer 1 is a cross layer: it has no self_attn; layer 0 has no cross_attn.
        assert_eq!(name("language_model.model.layers.1.self_attn.q_proj.weight"), None);
        assert_eq!(name("language_model.model.layers.0.cross_attn.q_proj.weight"), None);
        assert_eq!(
            name("language_model.model.layers.0.self_attn.q_proj.weight"),
            Some(Mapped::To("blk.0.attn_q.weight".into(), Permute::Query))
        );
        assert_eq!(name("language_model.model.layers.4.mlp.up_proj.weight"), None);
        assert_eq!(name("vision_model.transformer.layers.2.mlp.fc1.bias"), None);
        assert_eq!(name("vision_model.transformer.layers.0.gate_attn"), None);
        assert_eq!(name("vision_model.global_transformer.layers.1.gate_attn"), None);
        assert_eq!(name("lm_head.weight"), None);
    }
}
