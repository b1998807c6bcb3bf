//! Pixtral vision encoder + Mistral 3 projector hyperparameters read from an mmproj GGUF
//! (`general.architecture = clip`, `clip.projector_type = pixtral`, `clip.vision.*` keys as
//! llama.cpp's converter writes them; key names from gguf-py `Keys.ClipVision`); shapes in `docs/MODELS.md`.
//!
//! Keys read: `clip.projector_type` (or `clip.vision.projector_type`), `clip.has_vision_encoder`
//! (optional, must not be false), `clip.use_gelu` (optional, must not be true: Pixtral's FFN is
//! SiLU-gated), `clip.vision.{embedding_length, block_count, feed_forward_length,
//! projection_dim, patch_size, image_size, spatial_merge_size, image_mean, image_std}`,
//! `clip.vision.attention.{head_count, head_dim (optional), layer_norm_epsilon}`. The files
//! carry no RoPE theta: Pixtral's 1e4 is [`PIXTRAL_ROPE_THETA`].

use crate::gguf::Metadata;

use crate::model::ModelError;

/// Pixtral's 2D RoPE base (`PixtralVisionConfig.rope_theta` in transformers); not written to GGUF.
pub const PIXTRAL_ROPE_THETA: f32 = 10_000.0;

/// Everything the vision encoder and projector need to know about the network's shape.
#[derive(Clone, Debug)]
pub struct PixtralConfig {
    /// `clip.projector_type` (always `pixtral` once validated).
    pub projector_type: String,
    pub name: Option<String>,
    /// Encoder width (`clip.vision.embedding_length`; 1024 for Ministral 3).
    pub hidden: u32,
    /// Encoder blocks (`clip.vision.block_count`; 24).
    pub n_layer: u32,
    /// Attention heads (`clip.vision.attention.head_count`; 16).
    pub n_head: u32,
    /// `clip.vision.attention.head_dim`, else `hidden / n_head` (64).
    pub head_dim: u32,
    /// SiLU-gated FFN width (`clip.vision.feed_forward_length`; 4096).
    pub n_ff: u32,
    /// Pixels per patch side (`clip.vision.patch_size`; 14).
    pub patch_size: u32,
    /// `clip.vision.image_size` (the longest edge the model was configured for).
    pub image_size: u32,
    /// Patch merger side (`clip.vision.spatial_merge_size`; 2).
    pub merge_size: u32,
    /// RMSNorm epsilon (`clip.vision.attention.layer_norm_epsilon`; 1e-5).
    pub norm_eps: f32,
    /// 2D RoPE base; [`PIXTRAL_ROPE_THETA`].
    pub rope_theta: f32,
    /// Per-channel RGB normalisation.
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// Projector output width = the text model's hidden size (`clip.vision.projection_dim`; 3072).
    pub text_hidden: u32,
}

impl PixtralConfig {
    /// Reads and validates the config of an mmproj file.
    pub fn from_metadata(md: &Metadata) -> Result<Self, ModelError> {
        let projector = crate::model::vision::projector_type(md)?;
        if projector != "pixtral" {
            return Err(crate::model::vision::unsupported(&projector));
        }
        if md.get_opt_bool("clip.has_vision_encoder")? == Some(false) {
            return Err(ModelError::Invalid("clip.has_vision_encoder is false".into()));
        }
        if md.get_opt_bool("clip.use_gelu")? == Some(true) {
            return Err(ModelError::Invalid("GELU vision FFN (clip.use_gelu); Pixtral is SiLU-gated".into()));
        }
        let v = |s: &str| format!("clip.vision.{s}");
        let hidden = md.get_u32(&v("embedding_length"))?;
        let n_head = md.get_u32(&v("attention.head_count"))?;
        let head_dim = match md.get_opt_u32(&v("attention.head_dim"))? {
            Some(d) => d,
            None if n_head > 0 => hidden / n_head,
            None => 0,
        };
        let rgb = |key: &str, default: [f32; 3]| -> Result<[f32; 3], ModelError> {
            match md.get_opt_f32_array(key)? {
                None => Ok(default),
                Some(a) => <[f32; 3]>::try_from(a.as_slice())
                    .map_err(|_| ModelError::Invalid(format!("{key} has {} values, expected 3", a.len()))),
            }
        };
        let cfg = PixtralConfig {
            projector_type: projector,
            name: md.get_opt_str("general.name")?.map(str::to_string),
            hidden,
            n_layer: md.get_u32(&v("block_count"))?,
            n_head,
            head_dim,
            n_ff: md.get_u32(&v("feed_forward_length"))?,
            patch_size: md.get_u32(&v("patch_size"))?,
            image_size: md.get_opt_u32(&v("image_size"))?.unwrap_or(1540),
            merge_size: md.get_opt_u32(&v("spatial_merge_size"))?.unwrap_or(2),
            norm_eps: md.get_opt_f32(&v("attention.layer_norm_epsilon"))?.unwrap_or(1e-5),
            rope_theta: PIXTRAL_ROPE_THETA,
            image_mean: rgb(&v("image_mean"), [0.481_454_66, 0.457_827_5, 0.408_210_73])?,
            image_std: rgb(&v("image_std"), [0.268_629_54, 0.261_302_6, 0.275_777_1])?,
            text_hidden: md.get_u32(&v("projection_dim"))?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if [self.hidden, self.n_layer, self.n_head, self.head_dim, self.n_ff, self.text_hidden, self.image_size].contains(&0) {
            return bad(format!("zero dimension in {self:?}"));
        }
        if self.q_dim() != self.hidden {
            return bad(format!("{} heads x head_dim {} != hidden {}", self.n_head, self.head_dim, self.hidden));
        }
        // 2D RoPE splits each head's frequency pairs between rows and columns.
        if !self.head_dim.is_multiple_of(4) || self.head_dim > crate::kernels::attention::MAX_HEAD_DIM {
            return bad(format!(
                "head_dim {} must be a multiple of 4 and at most {}",
                self.head_dim,
                crate::kernels::attention::MAX_HEAD_DIM
            ));
        }
        if self.patch_size != crate::kernels::vision::PATCH {
            return bad(format!("patch_size {} (the kernels implement {})", self.patch_size, crate::kernels::vision::PATCH));
        }
        if self.merge_size != 2 {
            return bad(format!("spatial_merge_size {} (the kernels implement 2)", self.merge_size));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad(format!("layer_norm_epsilon {}", self.norm_eps));
        }
        if self.image_std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || self.image_mean.iter().any(|m| !m.is_finite()) {
            return bad(format!("image mean {:?} / std {:?}", self.image_mean, self.image_std));
        }
        if self.n_layer > 1024 || self.hidden > 65_536 || self.n_ff > 262_144 || self.n_head > 1024 || self.text_hidden > 65_536 {
            return bad("hyperparameters beyond the supported range".into());
        }
        Ok(())
    }

    /// Width of q/k/v (`n_head * head_dim`).
    pub fn q_dim(&self) -> u32 {
        self.n_head * self.head_dim
    }

    /// Input columns of the patch embedding: `3 * patch * patch` (588).
    pub fn patch_dim(&self) -> u32 {
        3 * self.patch_size * self.patch_size
    }

    /// Width of a merged patch vector: `merge^2 * hidden` (4096).
    pub fn merged_dim(&self) -> u32 {
        self.merge_size * self.merge_size * self.hidden
    }
}
