//! The engine's vision encoder, of one of two kinds, and everything about images that
//! differs by kind, dispatched here: preprocessing and its cache-key settings, the image
//! token the chat template writes, BOS placement, the prompt's length with its images and
//! the placeholder count check, and where an encoded image goes.
//!
//! - [`Vision::Placed`]: an mmproj's encoder ([`VisionEncoder`]); each image's feature rows
//!   replace token rows of the prompt, so its placeholder expands to the encoder's
//!   [`PromptLayout`] and the features go with the tokens ([`PromptImages`]).
//! - [`Vision::Cross`]: Mllama's encoder, from the model's own folder ([`CrossVision`]); one
//!   `<|image|>` per image stays in the prompt as it is, and the images' states go to the
//!   context's cross-attention store before the tokens run.

use std::rc::Rc;

use crate::backend::Device;
use crate::image::{PreprocessOptions, DEFAULT_MAX_EDGE};
use crate::kernels::matmul::MatmulCompute;
use crate::model::{Context, Decoder, ImageFeatures, PromptImages, PromptLayout, VisionEncoder};
use crate::tokenizer::Tokenizer;

use super::images::{expand, expanded_len};
use super::mllama::CrossVision;
use super::prompt_cache::PromptCache;
use super::{EngineError, Prompt};

/// A loaded vision encoder: how an engine's images are encoded and reach the decoder (each
/// kind boxed, as their sizes differ).
pub enum Vision {
    /// An mmproj's encoder, whose features fill image-token rows laid out by `layout`
    /// (token ids in the engine's vocabulary).
    Placed { encoder: Box<VisionEncoder>, layout: PromptLayout },
    /// Mllama's encoder, whose states the decoder's cross-attention layers read.
    Cross(Box<CrossVision>),
}

impl Vision {
    /// The mmproj encoder, if this is one.
    pub fn placed(&self) -> Option<&VisionEncoder> {
        match self {
            Vision::Placed { encoder, .. } => Some(encoder.as_ref()),
            Vision::Cross(_) => None,
        }
    }

    /// Mllama's encoder, if this is one.
    pub fn cross(&self) -> Option<&CrossVision> {
        match self {
            Vision::Placed { .. } => None,
            Vision::Cross(cross) => Some(cross.as_ref()),
        }
    }

    /// How placed images appear in a prompt (`None` for Mllama's, which are not expanded).
    pub fn layout(&self) -> Option<&PromptLayout> {
        match self {
            Vision::Placed { layout, .. } => Some(layout),
            Vision::Cross(_) => None,
        }
    }

    /// The token the chat template writes once per image (`[IMG]`, `<|image_pad|>`,
    /// `<|image|>`).
    pub fn placeholder(&self) -> u32 {
        match self {
            Vision::Placed { layout, .. } => layout.placeholder(),
            Vision::Cross(cross) => cross.image_token,
        }
    }

    /// What the template writes for each image, the placeholder among them
    /// ([`PromptLayout::template_tokens`]; Mllama: `<|image|>` alone).
    pub(super) fn template_tokens(&self) -> Vec<u32> {
        match self {
            Vision::Placed { layout, .. } => layout.template_tokens(),
            Vision::Cross(cross) => vec![cross.image_token],
        }
    }

    /// Bytes of weights held on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        match self {
            Vision::Placed { encoder, .. } => encoder.weight_bytes(),
            Vision::Cross(cross) => cross.encoder.weights.bytes_on_gpu(),
        }
    }

    /// The longest image edge the encoder was configured for (Mllama's tiling reads no
    /// `max_edge`: the default edge).
    pub fn max_image_edge(&self) -> u32 {
        match self {
            Vision::Placed { encoder, .. } => encoder.max_image_edge(),
            Vision::Cross(_) => DEFAULT_MAX_EDGE,
        }
    }

    /// Sets the matmul precision (f16 only where the adapter has `shader-f16`).
    pub(super) fn set_compute(&mut self, compute: MatmulCompute) {
        match self {
            Vision::Placed { encoder, .. } => encoder.set_compute(compute),
            Vision::Cross(cross) => cross.encoder.compute = compute,
        }
    }

    /// The encoder's own settings that decide an image's features besides the
    /// [`PreprocessOptions`] and the file, as bytes for the image cache's key.
    pub fn preprocess_key(&self) -> Vec<u8> {
        match self {
            Vision::Placed { encoder, .. } => encoder.preprocess_key(),
            Vision::Cross(cross) => cross.preprocess_key(),
        }
    }

    /// Preprocesses and encodes one image file with `opts` (for Mllama only its decoding
    /// limits and EXIF handling).
    pub(super) fn encode(&self, dev: &Device, bytes: &[u8], opts: &PreprocessOptions) -> Result<ImageFeatures, EngineError> {
        match self {
            Vision::Placed { encoder, .. } => Ok(encoder.encode(dev, &encoder.preprocess(bytes, opts)?)?),
            Vision::Cross(cross) => cross.encode(dev, bytes, opts),
        }
    }

    /// The ids of plain `text`: the vocabulary's BOS rule, or Mllama's processor's (BOS
    /// after any leading `<|image|>` tokens).
    pub(super) fn text_tokens(&self, tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, EngineError> {
        match self {
            Vision::Placed { .. } => Ok(tokenizer.encode(text, true)?),
            Vision::Cross(cross) => Ok(cross.with_bos(tokenizer.encode(text, false)?, tokenizer.bos_id())),
        }
    }

    /// A rendered chat's ids as the encoder's processor takes them: Mllama's BOS placed as
    /// in [`Self::text_tokens`]; placed encoders keep what the template wrote.
    pub(super) fn chat_tokens(&self, tokens: Vec<u32>, bos: Option<u32>) -> Vec<u32> {
        match self {
            Vision::Placed { .. } => tokens,
            Vision::Cross(cross) => cross.with_bos(tokens, bos),
        }
    }

    /// `tokens` of plain text with one placeholder per image put first when the text has
    /// none, as each processor does: after a leading BOS, or for Mllama before it (the
    /// `<|image|>` tokens, then `<|begin_of_text|>`).
    pub fn with_leading_images(&self, mut tokens: Vec<u32>, images: usize, bos: Option<u32>) -> Vec<u32> {
        let placeholder = self.placeholder();
        if images == 0 || tokens.contains(&placeholder) {
            return tokens;
        }
        match self {
            Vision::Placed { .. } => {
                let at = bos.filter(|&b| tokens.first() == Some(&b)).map_or(0, |_| 1);
                tokens.splice(at..at, std::iter::repeat_n(placeholder, images));
                tokens
            }
            Vision::Cross(cross) => {
                let text = tokens.iter().skip_while(|&&t| Some(t) == bos).copied();
                cross.with_bos(std::iter::repeat_n(placeholder, images).chain(text).collect(), bos)
            }
        }
    }

    /// The length of the prompt `tokens` with the images `files` (preprocessed with `opts`),
    /// each counted from its header alone, once its placeholders are checked to be one per
    /// image; `None` for placed encoders without images (the ids are taken as they are).
    pub(super) fn prompt_len(
        &self,
        tokens: &[u32],
        files: &[Vec<u8>],
        opts: &PreprocessOptions,
    ) -> Result<Option<usize>, EngineError> {
        match self {
            Vision::Placed { .. } if files.is_empty() => Ok(None),
            Vision::Placed { encoder, layout } => {
                let grids = files
                    .iter()
                    .map(|bytes| encoder.preprocessed_size(bytes, opts).map(|(h, w)| encoder.feature_grid(h, w)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Some(expanded_len(layout, tokens, &grids)?))
            }
            Vision::Cross(cross) => {
                cross.check_count(tokens, files.len())?;
                Ok(Some(tokens.len()))
            }
        }
    }

    /// A [`Prompt`] from ids holding one placeholder per image: each expanded to its image's
    /// layout, or for Mllama kept as it is.
    pub(super) fn prompt(&self, tokens: &[u32], images: Vec<Rc<ImageFeatures>>) -> Result<Prompt, EngineError> {
        match self {
            Vision::Placed { .. } if images.is_empty() => Ok(Prompt { tokens: tokens.to_vec(), images }),
            Vision::Placed { layout, .. } => Ok(Prompt { tokens: expand(layout, tokens, &images)?, images }),
            Vision::Cross(cross) => {
                cross.check_count(tokens, images.len())?;
                Ok(Prompt { tokens: tokens.to_vec(), images })
            }
        }
    }

    /// Where `images`' features go with the prompt's tokens: the fill token's rows, or
    /// `None` for Mllama's (they go to the cross store, [`Self::prepare`]).
    pub(super) fn placement<'a>(&self, images: &'a [Rc<ImageFeatures>]) -> Option<PromptImages<'a>> {
        match self {
            Vision::Placed { layout, .. } => Some(PromptImages { token: layout.fill(), images }),
            Vision::Cross(_) => None,
        }
    }

    /// Readies `ctx` for `prompt`'s images before its tokens run: Mllama's cross store
    /// ([`CrossVision::prepare`]); nothing for placed features.
    pub(super) fn prepare(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        ctx: &mut Context,
        cache: &mut PromptCache,
        prompt: &Prompt,
    ) -> Result<(), EngineError> {
        match self {
            Vision::Placed { .. } => Ok(()),
            Vision::Cross(cross) => cross.prepare(dev, dec, ctx, cache, prompt),
        }
    }

    /// Forgets what the context's cross store holds (the context was reset elsewhere).
    pub(super) fn forget(&mut self) {
        if let Vision::Cross(cross) = self {
            cross.forget();
        }
    }
}
