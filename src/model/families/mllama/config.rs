//! Mllama (Llama 3.2 Vision) text decoder hyperparameters from `mllama.*` GGUF-keyed
//! metadata (as `source::hf` writes it for an `MllamaForConditionalGeneration` folder): a
//! Llama 3 config plus the cross-attention layers and the `<|image|>` token.
//! Reference: transformers' `MllamaTextConfig` (`configuration_mllama.py`).

use crate::gguf::{arch_key, Metadata};
use crate::model::families::llama::LlamaConfig;
use crate::model::{ModelError, TextConfig};

/// The GGUF architecture.
pub const ARCH: &str = "mllama";

/// Everything the decoder needs to know about the network's shape.
#[derive(Clone, Debug)]
pub struct MllamaConfig {
    /// The Llama 3 part (sizes, RMSNorm eps, RoPE theta; `text.vocab` is the LM head's rows).
    pub llama: LlamaConfig,
    /// Layers that are cross-attention layers instead of self-attention ones (sorted).
    pub cross_layers: Vec<u32>,
    /// The `<|image|>` id: one past the text vocabulary, its own embedding row.
    pub image_token: u32,
    /// Rows of the token embedding (text vocabulary + 8, the image token's included).
    pub embd_rows: u32,
    /// Vision states per image tile: `(image_size / patch_size)^2` patches and the class token.
    pub tile_keys: u32,
    /// Tiles per image (each image's cross-attention states are this many tiles).
    pub max_tiles: u32,
}

impl MllamaConfig {
    /// Reads the config; `embd_rows` is the token embedding's row count (text vocab + 8).
    pub fn from_metadata(md: &Metadata, embd_rows: u32) -> Result<Self, ModelError> {
        let arch = md.architecture()?.to_string();
        if arch != ARCH {
            return Err(ModelError::UnsupportedArch { arch, supported: crate::model::families::SUPPORTED });
        }
        let key = |s: &str| arch_key(ARCH, s);
        let n_embd = md.get_u32(&key("embedding_length"))?;
        let n_head = md.get_u32(&key("attention.head_count"))?;
        let vocab = md.get_u32(&key("vocab_size"))?;
        let text = TextConfig {
            arch,
            name: md.get_opt_str("general.name")?.map(str::to_string),
            n_layer: md.get_u32(&key("block_count"))?,
            n_embd,
            n_ff: md.get_u32(&key("feed_forward_length"))?,
            n_head,
            n_head_kv: md.get_opt_u32(&key("attention.head_count_kv"))?.unwrap_or(n_head),
            head_dim: n_embd.checked_div(n_head).unwrap_or(0),
            vocab,
            context_length: md.get_opt_u32(&key("context_length"))?.unwrap_or(131_072),
        };
        text.validate()?;
        let image_token = md.get_u32(&key("image_token_index"))?;
        if vocab > embd_rows || image_token >= embd_rows {
            return Err(ModelError::Invalid(format!(
                "text vocabulary {vocab} and image token {image_token} must be rows of the {embd_rows}-row embedding"
            )));
        }
        let mut cross_layers = Vec::new();
        for l in md.get_i32_array(&key("attention.cross_attention_layers"))? {
            match u32::try_from(l) {
                Ok(l) if l < text.n_layer => cross_layers.push(l),
                _ => return Err(ModelError::Invalid(format!("cross-attention layer {l} of {}", text.n_layer))),
            }
        }
        let (image_size, patch_size) = (md.get_u32(&key("vision.image_size"))?, md.get_u32(&key("vision.patch_size"))?);
        let max_tiles = md.get_u32(&key("vision.max_num_tiles"))?;
        let side = image_size.checked_div(patch_size).filter(|&s| s > 0 && s <= 1024 && image_size % patch_size == 0);
        let Some(side) = side.filter(|_| (1..=64).contains(&max_tiles)) else {
            return Err(ModelError::Invalid(format!(
                "vision image size {image_size}, patch size {patch_size}, {max_tiles} tiles"
            )));
        };
        cross_layers.sort_unstable();
        cross_layers.dedup();
        let llama = LlamaConfig {
            rms_eps: md.get_opt_f32(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            rope_theta: md.get_opt_f32(&key("rope.freq_base"))?.unwrap_or(500_000.0),
            yarn: None,
            query_scale_beta: 0.0,
            query_scale_orig: 1,
            text,
        };
        Ok(MllamaConfig { llama, cross_layers, image_token, embd_rows, tile_keys: side * side + 1, max_tiles })
    }

    /// Whether layer `i` is a cross-attention layer.
    pub fn is_cross(&self, i: u32) -> bool {
        self.cross_layers.binary_search(&i).is_ok()
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::source::hf::HfModel;
    use crate::source::TensorSource;

    #[test]
    fn fixture_configs() {
        let dir = |f: &str| format!("{}/tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR"));
        let a = HfModel::open(dir("tiny_mllama_a")).unwrap();
        let cfg = MllamaConfig::from_metadata(a.metadata(), 319).unwrap();
        assert_eq!(cfg.cross_layers, [1, 3]);
        assert!(cfg.is_cross(3) && !cfg.is_cross(2));
        assert_eq!((cfg.image_token, cfg.llama.text.vocab, cfg.llama.text.head_dim), (311, 311, 16));
        assert_eq!(cfg.llama.rope_theta, 500_000.0);
        assert_eq!((cfg.tile_keys, cfg.max_tiles), (5, 4));
        let b = HfModel::open(dir("tiny_mllama_b")).unwrap();
        let cfg = MllamaConfig::from_metadata(b.metadata(), 319).unwrap();
        assert_eq!((cfg.cross_layers.as_slice(), cfg.llama.text.n_head, cfg.llama.text.n_head_kv), ([0, 3].as_slice(), 3, 1));
        // The image token must have an embedding row.
        assert!(matches!(MllamaConfig::from_metadata(b.metadata(), 311), Err(ModelError::Invalid(_))));
    }
}
