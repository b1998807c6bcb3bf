//! Qwen2-VL-family vision encoder hyperparameters (Qwen3-VL, Qwen3.5) read from an mmproj
//! GGUF (`general.architecture = clip`, `clip.projector_type = qwen3vl_merger` as llama.cpp's
//! converter writes it).
//!
//! Keys read: `clip.projector_type`, `clip.has_vision_encoder` (optional, must not be false),
//! `clip.vision.{embedding_length, block_count, feed_forward_length, projection_dim,
//! patch_size, image_size (optional), spatial_merge_size (optional, 2), image_mean,
//! image_std, is_deepstack_layers (optional, must be all false: deepstack mergers are not
//! implemented)}`, `clip.vision.attention.{head_count, head_dim (optional),
//! layer_norm_epsilon}`. The position table's size comes from `v.position_embd.weight`; the
//! 2D RoPE base (1e4) is not written to GGUF: [`QWEN_VL_ROPE_THETA`].

use crate::gguf::{Metadata, TensorInfo};
use crate::model::ModelError;
use crate::source::LoadError;

/// The vision RoPE base (`Qwen3_5VisionRotaryEmbedding(theta=10000)`).
pub const QWEN_VL_ROPE_THETA: f64 = 10_000.0;

/// The learned position table, whose rows (GGUF dims `[hidden, n_pos]`) size the config.
pub const POSITION_EMBD: &str = "v.position_embd.weight";

/// The projector types this encoder reads.
pub const PROJECTORS: [&str; 2] = ["qwen3vl_merger", "qwen3vl"];

/// Everything the encoder and merger need to know about the network's shape.
#[derive(Clone, Debug)]
pub struct QwenVlConfig {
    pub projector_type: String,
    pub name: Option<String>,
    /// Encoder width (`clip.vision.embedding_length`).
    pub hidden: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub head_dim: u32,
    /// GELU (tanh) MLP width (`clip.vision.feed_forward_length`).
    pub n_ff: u32,
    /// Pixels per patch side (16).
    pub patch_size: u32,
    /// `clip.vision.image_size` (informational; the processor's pixel bounds decide sizes).
    pub image_size: u32,
    /// Patches per merged token side (2).
    pub merge_size: u32,
    /// LayerNorm epsilon of the blocks and the merger (1e-6).
    pub norm_eps: f32,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// Merger output width = the text model's hidden size (`clip.vision.projection_dim`).
    pub text_hidden: u32,
    /// Learned position embeddings: a `side x side` grid (`side^2` rows of `v.position_embd`).
    pub pos_side: u32,
}

impl QwenVlConfig {
    /// Reads and validates the config of an mmproj file from its metadata and the info of its
    /// [`POSITION_EMBD`] tensor.
    pub fn from_headers(md: &Metadata, position_embd: Option<&TensorInfo>) -> Result<Self, ModelError> {
        let info = position_embd.ok_or_else(|| LoadError::Missing(POSITION_EMBD.into()))?;
        Self::from_metadata(md, info.dims.get(1).copied().unwrap_or(1))
    }

    /// Reads and validates the config of an mmproj file; `n_pos` is the row count of
    /// [`POSITION_EMBD`].
    pub fn from_metadata(md: &Metadata, n_pos: u64) -> Result<Self, ModelError> {
        let projector = super::super::projector_type(md)?;
        if !PROJECTORS.contains(&projector.as_str()) {
            return Err(super::super::unsupported(&projector));
        }
        if md.get_opt_bool("clip.has_vision_encoder")? == Some(false) {
            return Err(ModelError::Invalid("clip.has_vision_encoder is false".into()));
        }
        let v = |s: &str| format!("clip.vision.{s}");
        if let Some(crate::gguf::MetaValue::Array { items, .. }) = md.get(&v("is_deepstack_layers")) {
            if items.iter().any(|d| matches!(d, crate::gguf::MetaValue::Bool(true))) {
                return Err(ModelError::Invalid("deepstack vision layers are not supported".into()));
            }
        }
        let hidden = md.get_u32(&v("embedding_length"))?;
        let n_head = md.get_u32(&v("attention.head_count"))?;
        let head_dim = match md.get_opt_u32(&v("attention.head_dim"))? {
            Some(d) => d,
            None if n_head > 0 => hidden / n_head,
            None => 0,
        };
        let rgb = |key: &str| -> Result<[f32; 3], ModelError> {
            match md.get_opt_f32_array(key)? {
                None => Ok([0.5; 3]),
                Some(a) => <[f32; 3]>::try_from(a.as_slice())
                    .map_err(|_| ModelError::Invalid(format!("{key} has {} values, expected 3", a.len()))),
            }
        };
        let pos_side = (n_pos as f64).sqrt().round() as u32;
        if pos_side as u64 * pos_side as u64 != n_pos || n_pos == 0 {
            return Err(ModelError::Invalid(format!("{n_pos} position embeddings are not a square grid")));
        }
        let cfg = QwenVlConfig {
            projector_type: projector,
            name: md.get_opt_str("general.name")?.map(str::to_string),
            hidden,
            n_layer: md.get_u32(&v("block_count"))?,
            n_head,
            head_dim,
            n_ff: md.get_u32(&v("feed_forward_length"))?,
            patch_size: md.get_u32(&v("patch_size"))?,
            image_size: md.get_opt_u32(&v("image_size"))?.unwrap_or(0),
            merge_size: md.get_opt_u32(&v("spatial_merge_size"))?.unwrap_or(2),
            norm_eps: md.get_opt_f32(&v("attention.layer_norm_epsilon"))?.unwrap_or(1e-6),
            image_mean: rgb(&v("image_mean"))?,
            image_std: rgb(&v("image_std"))?,
            text_hidden: md.get_u32(&v("projection_dim"))?,
            pos_side,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if [self.hidden, self.n_layer, self.n_head, self.head_dim, self.n_ff, self.text_hidden, self.patch_size].contains(&0) {
            return bad(format!("zero dimension in {self:?}"));
        }
        if self.q_dim() != self.hidden {
            return bad(format!("{} heads x head_dim {} != hidden {}", self.n_head, self.head_dim, self.hidden));
        }
        // 2D RoPE: a quarter of each head's dims per axis, rotated in halves.
        if !self.head_dim.is_multiple_of(4) || self.head_dim > crate::kernels::attention::MAX_HEAD_DIM {
            return bad(format!(
                "head_dim {} must be a multiple of 4 and at most {}",
                self.head_dim,
                crate::kernels::attention::MAX_HEAD_DIM
            ));
        }
        if self.merge_size != 2 {
            return bad(format!("spatial_merge_size {} (the merger implements 2)", self.merge_size));
        }
        if self.patch_size > 64 {
            return bad(format!("patch_size {}", self.patch_size));
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

    /// Width of q, k and v (`n_head * head_dim`).
    pub fn q_dim(&self) -> u32 {
        self.n_head * self.head_dim
    }

    /// Input columns of one temporal slice of the patch embedding: `3 * patch * patch`.
    pub fn patch_dim(&self) -> u32 {
        3 * self.patch_size * self.patch_size
    }

    /// Width of a merged patch vector: `merge^2 * hidden`.
    pub fn merged_dim(&self) -> u32 {
        self.merge_size * self.merge_size * self.hidden
    }

    /// The longest edge of an image at the processor's default pixel bounds: they bound the
    /// area, not the edge, so the edge of its largest square.
    pub fn max_image_edge(&self) -> u32 {
        (self.preprocess().max_pixels as f64).sqrt() as u32
    }

    /// The preprocessing this encoder expects, with the processor's default pixel bounds.
    pub fn preprocess(&self) -> crate::image::qwen::QwenPreprocess {
        crate::image::qwen::QwenPreprocess {
            patch_size: self.patch_size,
            merge_size: self.merge_size,
            temporal_patch_size: 2,
            image_mean: self.image_mean,
            image_std: self.image_std,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::MetaValue;

    fn tiny() -> Metadata {
        let mut md = Metadata::new();
        let mut put = |k: &str, v: MetaValue| md.insert(k.into(), v).unwrap();
        put("general.architecture", MetaValue::String("clip".into()));
        put("clip.projector_type", MetaValue::String("qwen3vl_merger".into()));
        for (k, v) in [
            ("embedding_length", 32),
            ("block_count", 2),
            ("attention.head_count", 2),
            ("feed_forward_length", 64),
            ("patch_size", 16),
            ("projection_dim", 64),
        ] {
            put(&format!("clip.vision.{k}"), MetaValue::U32(v));
        }
        md
    }

    #[test]
    fn reads_the_tiny_config_and_rejects_bad_ones() {
        let cfg = QwenVlConfig::from_metadata(&tiny(), 64).unwrap();
        assert_eq!((cfg.head_dim, cfg.merge_size, cfg.pos_side, cfg.norm_eps), (16, 2, 8, 1e-6));
        assert!(matches!(QwenVlConfig::from_metadata(&tiny(), 60), Err(ModelError::Invalid(_))));
        let with = |k: &str, v: MetaValue| {
            let mut md = tiny();
            md.insert(k.into(), v).unwrap();
            QwenVlConfig::from_metadata(&md, 64)
        };
        let deep =
            MetaValue::Array { elem: crate::gguf::ValueType::Bool, items: vec![MetaValue::Bool(false), MetaValue::Bool(true)] };
        assert!(matches!(with("clip.vision.is_deepstack_layers", deep), Err(ModelError::Invalid(_))));
        assert!(matches!(with("clip.vision.spatial_merge_size", MetaValue::U32(3)), Err(ModelError::Invalid(_))));
        assert!(matches!(with("clip.vision.attention.head_dim", MetaValue::U32(8)), Err(ModelError::Invalid(_))));
        assert!(matches!(with("clip.has_vision_encoder", MetaValue::Bool(false)), Err(ModelError::Invalid(_))));
        let mut md = Metadata::new();
        md.insert("general.architecture".into(), MetaValue::String("clip".into())).unwrap();
        md.insert("clip.projector_type".into(), MetaValue::String("qwen3vl_merger".into())).unwrap();
        assert!(QwenVlConfig::from_metadata(&md, 64).is_err());
        let mut other = Metadata::new();
        other.insert("general.architecture".into(), MetaValue::String("clip".into())).unwrap();
        other.insert("clip.projector_type".into(), MetaValue::String("pixtral".into())).unwrap();
        assert!(matches!(QwenVlConfig::from_metadata(&other, 64), Err(ModelError::UnsupportedProjector { .. })));
    }
}
