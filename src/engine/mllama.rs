//! Mllama (Llama 3.2 Vision) images in the engine ([`CrossVision`], the engine's
//! [`super::Vision::Cross`]): the vision encoder loaded from the same Hugging Face folder as
//! the text model, one `<|image|>` token per image (nothing expanded), and the
//! cross-attention states of a prompt's images handed to the context's cross store.
//!
//! An encoded image is an [`ImageFeatures`] whose buffer holds the image's cross-attention
//! states `[max_tiles * tile_keys][dim]` (every tile slot, as transformers returns them) and
//! whose `rows` is the image's tile count, `cols` the keys per tile; so the engine's image
//! cache and [`super::Prompt`] carry them unchanged.
//!
//! Prompt-cache rule: every cached KV row depends on the images (text before the first
//! `<|image|>` attends to all tiles too), so cached rows are reused only when the new prompt
//! has the same images (same digests, same order) and a cross-attention mask equal to the
//! live one on its rows; any other image set clears the whole prompt cache and the context.
//! Reference: transformers' `processing_mllama.py` (BOS placement, `cross_attention_mask`).

use crate::backend::{Buffer, Device, Program};
use crate::gguf::Metadata;
use crate::image::mllama::{preprocess_mllama, MllamaPreprocess, Resample};
use crate::kernels::matmul::MatmulCompute;
use crate::model::families::mllama::{processor_mask, ARCH};
use crate::model::vision::mllama::{MllamaVision, MllamaVisionConfig};
use crate::model::{Context, Decoder, ImageDigest, ImageFeatures, ModelError};
use crate::source::hf::{mllama_preprocess, HfImageProcessor};
use crate::source::{LoadQuant, WeightLoader};

use super::prompt_cache::PromptCache;
use super::{EngineError, Prompt};

/// The Mllama encoder of an engine and the image set its context's cross store holds.
pub struct CrossVision {
    pub encoder: MllamaVision,
    /// The `<|image|>` token id (`image_token_index`).
    pub image_token: u32,
    /// The folder's image-processor settings for this encoder (decoding limits aside).
    preprocess: MllamaPreprocess,
    /// The images whose states the context holds, and the mask it was given.
    live: Option<CrossSet>,
}

/// What a context's cross store was built from.
#[derive(PartialEq)]
struct CrossSet {
    digests: Vec<ImageDigest>,
    n_tiles: u32,
    /// Dense `[tokens][n_tiles]` mask.
    mask: Vec<u32>,
}

impl CrossSet {
    /// Whether a prompt with `other`'s images and mask sees exactly what this set gives its
    /// rows (positions past this mask repeat its last row).
    fn covers(&self, other: &CrossSet) -> bool {
        if self.digests != other.digests || self.n_tiles != other.n_tiles {
            return false;
        }
        let width = self.n_tiles.max(1) as usize;
        let rows = self.mask.len() / width;
        other.mask.chunks(width).enumerate().all(|(r, row)| rows > 0 && row == &self.mask[r.min(rows - 1) * width..][..width])
    }
}

impl CrossVision {
    /// The preprocessing of an `mllama` model (`None` for other architectures) under the
    /// folder's image-processor settings `processor` (`None`: the published Llama 3.2 Vision
    /// processor's; see [`mllama_preprocess`]); settings the model cannot take are an error.
    pub fn preprocess_for(md: &Metadata, processor: Option<&HfImageProcessor>) -> Result<Option<MllamaPreprocess>, EngineError> {
        if md.architecture()? != ARCH {
            return Ok(None);
        }
        let cfg = MllamaVisionConfig::from_metadata(md)?;
        let preprocess = mllama_preprocess(processor, cfg.image_size, cfg.patch_size, cfg.max_tiles)
            .map_err(|e| ModelError::Load(e.into()))?;
        Ok(Some(preprocess))
    }

    /// The encoder of an `mllama` model's source (`None` for other architectures), its images
    /// preprocessed with `preprocess` ([`Self::preprocess_for`]).
    pub fn load(
        dev: &Device,
        src: &mut dyn WeightLoader,
        quant: LoadQuant,
        preprocess: MllamaPreprocess,
    ) -> Result<Option<CrossVision>, EngineError> {
        let md = src.metadata();
        if md.architecture()? != ARCH {
            return Ok(None);
        }
        let image_token = md.get_u32("mllama.image_token_index")?;
        let encoder = MllamaVision::load_from(dev, src, quant)?;
        Ok(Some(CrossVision { encoder, image_token, preprocess, live: None }))
    }

    /// The processor settings (tiles of the config's `image_size`, at most `max_num_tiles`,
    /// the folder's mean / std / filter / rescale factor); `decode` gives the decoding limits
    /// and EXIF handling.
    pub fn preprocess_options(&self, decode: &crate::image::PreprocessOptions) -> MllamaPreprocess {
        MllamaPreprocess { decode: decode.clone(), ..self.preprocess.clone() }
    }

    /// The settings besides [`crate::image::PreprocessOptions`] that decide an image's
    /// states, for the image cache's key.
    pub fn preprocess_key(&self) -> Vec<u8> {
        // Destructured so that a new setting cannot be left out of the key.
        let MllamaPreprocess {
            tile_size,
            max_image_tiles,
            image_mean,
            image_std,
            resample,
            rescale_factor,
            normalize,
            decode: _,
        } = &self.preprocess;
        let mut key = b"mllama".to_vec();
        key.extend(tile_size.to_le_bytes());
        key.extend(max_image_tiles.to_le_bytes());
        image_mean.iter().chain(image_std).for_each(|v| key.extend(v.to_le_bytes()));
        key.push(match resample {
            Resample::Bilinear => 2,
            Resample::Bicubic => 3,
        });
        key.extend(rescale_factor.unwrap_or(0.0).to_le_bytes());
        key.push(u8::from(*normalize));
        key.push(u8::from(self.encoder.compute == MatmulCompute::F16));
        key
    }

    /// Preprocesses and encodes one image file.
    pub fn encode(
        &self,
        dev: &Device,
        bytes: &[u8],
        decode: &crate::image::PreprocessOptions,
    ) -> Result<ImageFeatures, EngineError> {
        let pixels = preprocess_mllama(bytes, &self.preprocess_options(decode))?;
        let s = self.encoder.encode(dev, &pixels)?;
        Ok(ImageFeatures { buffer: s.buffer, rows: s.num_tiles, cols: self.encoder.cfg.tokens(), dim: s.dim, content: None })
    }

    /// The processor's rule: `<|begin_of_text|>` (`bos`) goes after any leading `<|image|>`
    /// tokens unless it is already there.
    pub fn with_bos(&self, mut tokens: Vec<u32>, bos: Option<u32>) -> Vec<u32> {
        if let Some(bos) = bos {
            let at = tokens.iter().take_while(|&&t| t == self.image_token).count();
            if tokens.get(at) != Some(&bos) {
                tokens.insert(at, bos);
            }
        }
        tokens
    }

    /// The prompt's `<|image|>` tokens must be one per image.
    pub fn check_count(&self, tokens: &[u32], images: usize) -> Result<(), EngineError> {
        let placeholders = tokens.iter().filter(|&&t| t == self.image_token).count();
        if placeholders != images {
            return Err(EngineError::ImageCount { placeholders, images });
        }
        Ok(())
    }

    /// Readies `ctx` for `prompt`: keeps the live cross store (and the prompt cache) when it
    /// serves the prompt's images and mask, else clears both and builds the store anew.
    pub(super) fn prepare(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        ctx: &mut Context,
        cache: &mut PromptCache,
        prompt: &Prompt,
    ) -> Result<(), EngineError> {
        self.check_count(&prompt.tokens, prompt.images.len())?;
        let max_tiles = self.encoder.cfg.max_tiles;
        let tiles: Vec<u32> = prompt.images.iter().map(|f| f.rows).collect();
        let mask = match tiles.is_empty() {
            true => Vec::new(),
            false => processor_mask(&prompt.tokens, self.image_token, &tiles, max_tiles),
        };
        let digests: Option<Vec<ImageDigest>> = prompt.images.iter().map(|f| f.content).collect();
        let next = CrossSet { digests: digests.clone().unwrap_or_default(), n_tiles: tiles.len() as u32 * max_tiles, mask };
        let known = digests.is_some();
        let live_serves = match &self.live {
            Some(live) => known && live.covers(&next),
            None => prompt.images.is_empty(),
        };
        if live_serves {
            return Ok(());
        }
        cache.clear_all();
        ctx.reset();
        self.live = None;
        if !prompt.images.is_empty() {
            let states = self.concat(dev, &prompt.images)?;
            ctx.set_cross_attention(dev, dec, &states, next.n_tiles, &next.mask)?;
        }
        // An image of unknown content never matches a later prompt.
        self.live = known.then_some(next);
        Ok(())
    }

    /// Gives `ctx`, reset, the cross-attention store of `prompt`'s images (a sequence of a
    /// parallel run: its own store, no prompt cache).
    pub(super) fn attach(&self, dev: &Device, dec: &Decoder, ctx: &mut Context, prompt: &Prompt) -> Result<(), EngineError> {
        self.check_count(&prompt.tokens, prompt.images.len())?;
        if prompt.images.is_empty() {
            return Ok(());
        }
        let max_tiles = self.encoder.cfg.max_tiles;
        let tiles: Vec<u32> = prompt.images.iter().map(|f| f.rows).collect();
        let mask = processor_mask(&prompt.tokens, self.image_token, &tiles, max_tiles);
        let states = self.concat(dev, &prompt.images)?;
        Ok(ctx.set_cross_attention(dev, dec, &states, tiles.len() as u32 * max_tiles, &mask)?)
    }

    /// Forgets the live image set (the context was reset elsewhere).
    pub(super) fn forget(&mut self) {
        self.live = None;
    }

    /// The states of `images`, image after image, in one buffer.
    fn concat(&self, dev: &Device, images: &[std::rc::Rc<ImageFeatures>]) -> Result<Buffer, EngineError> {
        let c = &self.encoder.cfg;
        let per_image = c.state_rows() as u64 * c.text_hidden as u64 * 4;
        let out = dev.storage("mllama cross states", per_image * images.len() as u64)?;
        let mut copies = Program::new();
        for (i, f) in images.iter().enumerate() {
            if f.buffer.size() < per_image || f.dim != c.text_hidden {
                return Err(EngineError::Model(ModelError::Gpu(crate::backend::gpu::GpuError::Shape(format!(
                    "image states of {} bytes / width {}, the encoder's are {per_image} / {}",
                    f.buffer.size(),
                    f.dim,
                    c.text_hidden
                )))));
            }
            copies.copy(&f.buffer, 0, &out, i as u64 * per_image, per_image)?;
        }
        copies.run(dev)?;
        Ok(out)
    }
}
