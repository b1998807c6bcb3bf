//! Mllama (Llama 3.2 Vision) encoder hyperparameters from the `mllama.vision.*` metadata that
//! `source::hf` writes for a `MllamaForConditionalGeneration` folder; values and shapes in
//! `docs/MODELS.md` § "Llama 3.2 Vision". Reference: transformers' `MllamaVisionConfig`.

use crate::gguf::Metadata;
use crate::model::ModelError;

/// Largest scratch buffer the encoder allocates for the MLP of one chunk of rows.
pub const FFN_CHUNK_BYTES: u64 = 64 << 20;

/// Everything the encoder and projector need to know about the network's shape.
#[derive(Clone, Debug)]
pub struct MllamaVisionConfig {
    /// Tile side in pixels (`image_size`; 560).
    pub image_size: u32,
    /// Pixels per patch side (14).
    pub patch_size: u32,
    /// Encoder width (`embedding_length`; 1280).
    pub hidden: u32,
    pub n_head: u32,
    /// `hidden / n_head` (80).
    pub head_dim: u32,
    /// MLP width (`feed_forward_length`; 5120).
    pub n_ff: u32,
    /// Local layers (`block_count`; 32) and gated global layers (`global_block_count`; 8).
    pub n_local: u32,
    pub n_global: u32,
    /// Tiles per image, padding tiles included (`max_num_tiles`; 4).
    pub max_tiles: u32,
    /// Local layers whose outputs join the features, in feature order (`[3, 7, 15, 23, 30]`).
    pub kept_layers: Vec<u32>,
    /// LayerNorm epsilon of every norm (`attention.layer_norm_epsilon`; 1e-5).
    pub norm_eps: f32,
    /// Supported (tiles down, tiles across); aspect-ratio id `i + 1` is entry `i`.
    pub aspect_ratios: Vec<(u32, u32)>,
    /// Feature width: `hidden * (1 + kept_layers.len())` (`vision_output_dim`; 7680).
    pub output_dim: u32,
    /// Projector output = the text model's hidden size (`projection_dim`; 4096).
    pub text_hidden: u32,
}

impl MllamaVisionConfig {
    /// Reads and validates the config (`general.architecture` must be `mllama`).
    pub fn from_metadata(md: &Metadata) -> Result<Self, ModelError> {
        let arch = md.get_str("general.architecture")?;
        if arch != "mllama" {
            return Err(ModelError::Invalid(format!("architecture {arch}, expected mllama")));
        }
        let k = |s: &str| format!("mllama.vision.{s}");
        let hidden = md.get_u32(&k("embedding_length"))?;
        let n_head = md.get_u32(&k("attention.head_count"))?;
        let ints = |key: &str| -> Result<Vec<u32>, ModelError> {
            md.get_i32_array(key)?
                .into_iter()
                .map(|v| u32::try_from(v).map_err(|_| ModelError::Invalid(format!("{key} holds {v}"))))
                .collect()
        };
        let pairs = ints(&k("supported_aspect_ratios"))?;
        if pairs.len() % 2 != 0 {
            return Err(ModelError::Invalid(format!("{} values in supported_aspect_ratios", pairs.len())));
        }
        let cfg = MllamaVisionConfig {
            image_size: md.get_u32(&k("image_size"))?,
            patch_size: md.get_u32(&k("patch_size"))?,
            hidden,
            n_head,
            head_dim: hidden.checked_div(n_head).unwrap_or(0),
            n_ff: md.get_u32(&k("feed_forward_length"))?,
            n_local: md.get_u32(&k("block_count"))?,
            n_global: md.get_u32(&k("global_block_count"))?,
            max_tiles: md.get_u32(&k("max_num_tiles"))?,
            kept_layers: ints(&k("intermediate_layers_indices"))?,
            norm_eps: md.get_f32(&k("attention.layer_norm_epsilon"))?,
            aspect_ratios: pairs.chunks(2).map(|p| (p[0], p[1])).collect(),
            output_dim: md.get_u32(&k("vision_output_dim"))?,
            text_hidden: md.get_u32(&k("projection_dim"))?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Invalid(format!("mllama vision: {m}")));
        let dims = [self.image_size, self.patch_size, self.hidden, self.n_head, self.n_ff, self.n_local, self.max_tiles];
        if dims.contains(&0) || self.text_hidden == 0 {
            return bad(format!("zero dimension in {self:?}"));
        }
        if self.n_head * self.head_dim != self.hidden || !self.head_dim.is_multiple_of(4) || self.head_dim > 128 {
            return bad(format!("{} heads over width {} (head_dim a multiple of 4, <= 128)", self.n_head, self.hidden));
        }
        if !self.image_size.is_multiple_of(self.patch_size) || self.image_size / self.patch_size > 256 {
            return bad(format!("tile {} is not a grid of at most 256 x 256 patches of {}", self.image_size, self.patch_size));
        }
        if self.n_local > 1024 || self.n_global > 1024 || self.hidden > 16_384 || self.n_ff > 65_536 || self.max_tiles > 64 {
            return bad("hyperparameters beyond the supported range".into());
        }
        if self.text_hidden > 65_536 {
            return bad(format!("projection_dim {}", self.text_hidden));
        }
        if self.kept_layers.is_empty() || self.kept_layers.iter().any(|&l| l >= self.n_local) {
            return bad(format!("intermediate layers {:?} of {} local layers", self.kept_layers, self.n_local));
        }
        if self.output_dim as u64 != self.hidden as u64 * (1 + self.kept_layers.len() as u64) {
            return bad(format!("vision_output_dim {} != {} x (1 + {})", self.output_dim, self.hidden, self.kept_layers.len()));
        }
        let tiles_ok = |&(d, a): &(u32, u32)| d > 0 && a > 0 && d as u64 * a as u64 <= self.max_tiles as u64;
        if self.aspect_ratios.is_empty() || self.aspect_ratios.len() > 1024 || !self.aspect_ratios.iter().all(tiles_ok) {
            return bad(format!("supported aspect ratios {:?} for {} tiles", self.aspect_ratios, self.max_tiles));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad(format!("layer_norm_epsilon {}", self.norm_eps));
        }
        Ok(())
    }

    /// Patches per tile side.
    pub fn grid_side(&self) -> u32 {
        self.image_size / self.patch_size
    }

    /// Patches per tile (1600).
    pub fn patches(&self) -> u32 {
        self.grid_side() * self.grid_side()
    }

    /// Tokens per tile: the patches and the class token (1601).
    pub fn tokens(&self) -> u32 {
        self.patches() + 1
    }

    /// Tokens per tile padded to a multiple of 8 (1608); the padding slots take part in
    /// attention.
    pub fn padded_tokens(&self) -> u32 {
        self.tokens().next_multiple_of(8)
    }

    /// Input columns of the patch embedding: `3 * patch * patch` (588).
    pub fn patch_dim(&self) -> u32 {
        3 * self.patch_size * self.patch_size
    }

    /// Rows of the aspect-ratio tables: id 0 (no image) and one per supported ratio.
    pub fn aspect_rows(&self) -> u32 {
        self.aspect_ratios.len() as u32 + 1
    }

    /// Rows of the cross-attention states of one image: `max_tiles * tokens` (6404).
    pub fn state_rows(&self) -> u32 {
        self.max_tiles * self.tokens()
    }

    /// Tokens in one encoder pass: `max_tiles * padded_tokens` (6432).
    pub fn pass_rows(&self) -> u32 {
        self.max_tiles * self.padded_tokens()
    }

    /// Rows per MLP chunk, so that one chunk's `[rows][n_ff]` f32 buffer fits a binding of
    /// `limit` bytes and [`FFN_CHUNK_BYTES`] (at least 1 row, at most a pass).
    pub fn ffn_chunk_rows(&self, limit: u64) -> u32 {
        let row = 4 * self.n_ff as u64;
        (limit.min(FFN_CHUNK_BYTES) / row).min(self.pass_rows() as u64).max(1) as u32
    }

    /// Rows per part of the `[state_rows][output_dim]` f32 features, so that each part fits a
    /// binding of `limit` bytes (at least 1 row, at most all): the 11B's 6404 x 7680 features
    /// are 196.7 MB, over WebGPU's default 128 MiB binding.
    pub fn feature_part_rows(&self, limit: u64) -> u32 {
        let row = 4 * self.output_dim as u64;
        (limit / row).min(self.state_rows() as u64).max(1) as u32
    }

    /// The features' parts for a binding of `limit` bytes: `(first row, rows)` of each, in
    /// order, covering `0..state_rows`.
    pub fn feature_parts(&self, limit: u64) -> Vec<(u32, u32)> {
        let (rows, part) = (self.state_rows(), self.feature_part_rows(limit));
        (0..rows).step_by(part as usize).map(|r0| (r0, part.min(rows - r0))).collect()
    }
}
