//! Vision encoders, one folder each, behind one interface: [`VisionEncoder`] turns a
//! preprocessed image into [`ImageFeatures`] (one text-width row per image token), and
//! [`PromptImages`] places those rows at the prompt's image-token positions. Each encoder
//! reads its own mmproj config and weights; the engine owns preprocessing settings and the
//! expansion of the chat template's image placeholder into the encoder's token layout.
//! Mllama's encoder ([`mllama`]), whose states a decoder reads through cross-attention
//! rather than at token positions, is not one of them: the engine holds either kind as its
//! one `engine::Vision`.

mod features;
mod layout;
pub mod mllama;
mod mrope;
pub mod pixtral;
mod placement;
pub mod qwen_vl;
mod vit;

pub use features::{ImageDigest, ImageFeatures};
pub use layout::PromptLayout;
pub use mrope::{mrope_positions, MropePositions};
pub use placement::PromptImages;

use crate::backend::gpu::Result as GpuResult;
use crate::backend::Device;
use crate::gguf::Metadata;
use crate::image::{ImageError, PixelImage, PreprocessOptions};
use crate::kernels::matmul::MatmulCompute;
use crate::source::{Eager, LoadQuant, TensorSource, WeightLoader};

use super::ModelError;

/// The projector types of every encoder, for error messages.
pub const SUPPORTED: &str = "pixtral, qwen3vl_merger";

/// A loaded vision encoder and its projector to the text model's width.
pub enum VisionEncoder {
    Pixtral(pixtral::Pixtral),
    /// Qwen3-VL / Qwen3.5 (`qwen3vl_merger`).
    QwenVl(qwen_vl::QwenVl),
}

impl VisionEncoder {
    /// Reads an mmproj file's config and uploads its weights, matrices requantized to `quant`.
    pub fn load(dev: &Device, src: &dyn TensorSource, quant: LoadQuant) -> Result<VisionEncoder, ModelError> {
        Self::load_from(dev, &mut Eager(src), quant)
    }

    /// [`VisionEncoder::load`] through any [`WeightLoader`] (the browser streams).
    pub fn load_from(dev: &Device, src: &mut dyn WeightLoader, quant: LoadQuant) -> Result<VisionEncoder, ModelError> {
        match projector_type(src.metadata())?.as_str() {
            "pixtral" => Ok(VisionEncoder::Pixtral(pixtral::Pixtral::load_from(dev, src, quant)?)),
            p if qwen_vl::PROJECTORS.contains(&p) => Ok(VisionEncoder::QwenVl(qwen_vl::QwenVl::load_from(dev, src, quant)?)),
            other => Err(unsupported(other)),
        }
    }

    /// Encodes one image: records and submits the whole encoder in one command buffer and
    /// returns the features without waiting for them (the GPU queue orders later work).
    pub fn encode(&self, dev: &Device, image: &PixelImage) -> GpuResult<ImageFeatures> {
        match self {
            VisionEncoder::Pixtral(m) => m.encode(dev, image),
            VisionEncoder::QwenVl(m) => m.encode(dev, image),
        }
    }

    /// Preprocesses an encoded image for this encoder: Pixtral's resize to multiples of 28
    /// within `opts.max_edge`, or the Qwen2-VL processor's `smart_resize` (its pixel bounds and
    /// this mmproj's mean/std; `opts` gives the decoding limits and EXIF handling).
    pub fn preprocess(&self, bytes: &[u8], opts: &PreprocessOptions) -> Result<PixelImage, ImageError> {
        match self {
            VisionEncoder::Pixtral(_) => crate::image::preprocess(bytes, opts),
            VisionEncoder::QwenVl(m) => crate::image::qwen::preprocess_qwen(bytes, &m.preprocess_options(opts)),
        }
    }

    /// What besides the [`PreprocessOptions`] and the file decides [`Self::preprocess`]'s
    /// pixels: the encoder's own settings, as bytes for a cache key (Pixtral: none).
    pub fn preprocess_key(&self) -> Vec<u8> {
        match self {
            VisionEncoder::Pixtral(_) => Vec::new(),
            VisionEncoder::QwenVl(m) => {
                // Destructured so that a new setting cannot be left out of the key.
                let crate::image::qwen::QwenPreprocess {
                    patch_size,
                    merge_size,
                    temporal_patch_size,
                    min_pixels,
                    max_pixels,
                    image_mean,
                    image_std,
                    decode: _,
                } = m.cfg.preprocess();
                let mut key = b"qwen2vl".to_vec();
                for v in [patch_size, merge_size, temporal_patch_size] {
                    key.extend(v.to_le_bytes());
                }
                key.extend(min_pixels.to_le_bytes());
                key.extend(max_pixels.to_le_bytes());
                image_mean.iter().chain(&image_std).for_each(|v| key.extend(v.to_le_bytes()));
                key
            }
        }
    }

    /// The `(height, width)` [`Self::preprocess`] gives `bytes`, from its header alone.
    pub fn preprocessed_size(&self, bytes: &[u8], opts: &PreprocessOptions) -> Result<(u32, u32), ImageError> {
        match self {
            VisionEncoder::Pixtral(_) => crate::image::preprocessed_size(bytes, opts),
            VisionEncoder::QwenVl(m) => crate::image::qwen::preprocessed_size_qwen(bytes, &m.preprocess_options(opts)),
        }
    }

    /// Sets the matmul precision (f16 only where the adapter has `shader-f16`).
    pub fn set_compute(&mut self, compute: MatmulCompute) {
        match self {
            VisionEncoder::Pixtral(m) => m.compute = compute,
            VisionEncoder::QwenVl(m) => m.compute = compute,
        }
    }

    /// How this encoder's images appear in a prompt, with token ids from `lookup` (the
    /// vocabulary by name); `None` when the vocabulary lacks them.
    pub fn prompt_layout(&self, lookup: &dyn Fn(&str) -> Option<u32>) -> Option<PromptLayout> {
        match self {
            VisionEncoder::Pixtral(_) => PromptLayout::pixtral(lookup),
            VisionEncoder::QwenVl(_) => PromptLayout::qwen_vl(lookup),
        }
    }

    /// [`Self::prompt_layout`] of the encoder an mmproj file holds, before loading it (a
    /// vocabulary that cannot place its images fails before any weight is uploaded).
    pub fn prompt_layout_of(md: &Metadata, lookup: &dyn Fn(&str) -> Option<u32>) -> Result<Option<PromptLayout>, ModelError> {
        match projector_type(md)?.as_str() {
            "pixtral" => Ok(PromptLayout::pixtral(lookup)),
            p if qwen_vl::PROJECTORS.contains(&p) => Ok(PromptLayout::qwen_vl(lookup)),
            other => Err(unsupported(other)),
        }
    }

    /// The feature grid `(rows, cols)` of a preprocessed `height x width` image.
    pub fn feature_grid(&self, height: u32, width: u32) -> (u32, u32) {
        match self {
            VisionEncoder::Pixtral(m) => {
                let side = m.cfg.patch_size * m.cfg.merge_size;
                (height / side, width / side)
            }
            VisionEncoder::QwenVl(m) => m.feature_grid(height, width),
        }
    }

    /// The longest image edge the encoder was configured for (preprocessing's upper bound).
    pub fn max_image_edge(&self) -> u32 {
        match self {
            VisionEncoder::Pixtral(m) => m.cfg.image_size,
            VisionEncoder::QwenVl(m) => m.cfg.max_image_edge(),
        }
    }

    /// Bytes of weights held on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        match self {
            VisionEncoder::Pixtral(m) => m.weights.bytes_on_gpu(),
            VisionEncoder::QwenVl(m) => m.weights.bytes_on_gpu(),
        }
    }
}

/// The error for a projector type no encoder implements.
pub(crate) fn unsupported(projector: &str) -> ModelError {
    ModelError::UnsupportedProjector { projector: projector.to_string(), supported: SUPPORTED }
}

/// `clip.projector_type` of an mmproj file (older files: `clip.vision.projector_type`).
pub(crate) fn projector_type(md: &Metadata) -> Result<String, ModelError> {
    let arch = md.architecture()?;
    if arch != "clip" {
        return Err(ModelError::NotVisionProjector(arch.to_string()));
    }
    Ok(match md.get_opt_str("clip.projector_type")? {
        Some(p) => p,
        None => md.get_str("clip.vision.projector_type")?,
    }
    .to_string())
}
