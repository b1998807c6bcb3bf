//! The engine: a model, its tokenizer and chat template, optionally a vision encoder
//! ([`Vision`]: an mmproj's, or Mllama's own) with its image-embedding cache, one context
//! whose KV cache doubles as the prompt cache, and the generation loop (`generate.rs`);
//! [`Parallel`] runs many generations at once in batched decode steps (`parallel.rs`).

mod defaults;
mod generate;
mod images;
mod load;
mod mllama;
mod parallel;
mod prompt_cache;
mod repo;
mod vision;

use std::rc::Rc;
use std::sync::Arc;

pub use crate::model::ImageDigest;
pub use defaults::{SamplingDefaultError, SamplingPreset};
pub use generate::{FinishReason, GenerateOptions, Generation, LazyFormat, ResponseFormat, StepOutput, ThinkGate, Wait};
pub use images::{data_url_bytes, expand, expanded_len, ImageCache};
pub use load::EngineBuilder;
pub use mllama::CrossVision;
pub use parallel::{KvPool, Parallel, ParallelEvent, SeqId, SlotState, DEFAULT_KV_PAGE};
use prompt_cache::PromptCache;
pub use prompt_cache::{PromptCacheStats, DEFAULT_PROMPT_CACHE_BYTES};
pub use repo::{RepoLoad, INDEX_JSON};
pub use vision::Vision;

use crate::backend::Device;
use crate::chat::{ChatContent, ChatError, ChatMessage, ChatTemplate, ContentPart};
use crate::constraint::{ConstraintError, SchemaCache};
use crate::error::{Classify, ErrorClass};
use crate::gguf::GgufError;
use crate::image::{ImageError, PreprocessOptions, DEFAULT_MAX_EDGE};
use crate::kernels::matmul::MatmulCompute;
use crate::model::{Context, Decoder, ImageFeatures, ModelError, PromptImages, PromptLayout};
use crate::sampling::{ParamError, SampleError};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// A JSON object (`chat_template_kwargs`).
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

/// GPU memory the image-embedding cache may hold (Ministral 3 3B: ~12 KiB per image token,
/// so ~5000 image tokens, a few large images).
pub const IMAGE_CACHE_BYTES: u64 = 64 << 20;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Gpu(#[from] crate::backend::gpu::GpuError),
    /// A generation parameter is out of range.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// The JSON schema cannot be enforced, or the constraint failed.
    #[error(transparent)]
    Constraint(#[from] ConstraintError),
    #[error(transparent)]
    Sample(#[from] SampleError),
    #[error(transparent)]
    Image(#[from] ImageError),
    /// An image was given to a model loaded without a vision projector (mmproj).
    #[error("this model has no vision encoder: load it with its mmproj file to use images")]
    NoVision,
    /// The vocabulary lacks `[IMG]`, `[IMG_BREAK]` or `[IMG_END]`.
    #[error("the vocabulary has no [IMG] / [IMG_BREAK] / [IMG_END] tokens")]
    NoImageTokens,
    /// The prompt's image placeholders and the images given differ in number.
    #[error("the prompt has {placeholders} image placeholders but {images} images were given")]
    ImageCount { placeholders: usize, images: usize },
    /// An image URL that cannot be read (bad data URL, unsupported scheme, missing file).
    #[error("cannot read image URL: {0}")]
    BadImageUrl(String),
    /// The prompt with its images' tokens (counted from their headers, before any is
    /// encoded) leaves no room in the context.
    #[error("the prompt is {tokens} tokens with its images; this engine's context holds {max_ctx} (prompt and reply)")]
    PromptTooLong { tokens: usize, max_ctx: usize },
    /// The model's published sampling defaults hold a value no request could ask for.
    #[error(transparent)]
    SamplingDefault(#[from] SamplingDefaultError),
    /// Every sequence slot of a parallel run is taken.
    #[error("all {running} sequence slots are running")]
    Busy { running: usize },
    /// A request asked for more choices (`n`) than a parallel run has sequence slots.
    #[error("n = {n} choices need {n} sequence slots; this engine runs {slots} at once")]
    TooManyChoices { n: u32, slots: u32 },
    /// A parallel run's KV pool cannot hold one sequence's whole context (or grows by pages
    /// of no rows).
    #[error("a KV pool of {rows} rows in pages of {page} cannot hold one sequence's context: it needs at least {least} rows, in pages of 1 or more")]
    KvPoolTooSmall { rows: u64, page: u32, least: u32 },
}

impl Classify for EngineError {
    fn class(&self) -> ErrorClass {
        match self {
            EngineError::Model(e) => e.class(),
            EngineError::Tokenizer(e) => e.class(),
            EngineError::Chat(e) => e.class(),
            EngineError::Gguf(e) => e.class(),
            EngineError::Gpu(e) => e.class(),
            EngineError::Param(e) => e.class(),
            EngineError::Constraint(e) => e.class(),
            EngineError::Sample(e) => e.class(),
            EngineError::Image(e) => e.class(),
            EngineError::NoImageTokens | EngineError::SamplingDefault(_) => ErrorClass::ModelNotSupported,
            EngineError::NoVision
            | EngineError::ImageCount { .. }
            | EngineError::BadImageUrl(_)
            | EngineError::PromptTooLong { .. }
            | EngineError::Busy { .. }
            | EngineError::TooManyChoices { .. }
            | EngineError::KvPoolTooSmall { .. } => ErrorClass::BadRequest,
        }
    }
}

/// A prompt ready to run: token ids with each image's layout expanded, and the images whose
/// features fill its `[IMG]` positions, in order.
#[derive(Clone, Default)]
pub struct Prompt {
    pub tokens: Vec<u32>,
    pub images: Vec<Rc<ImageFeatures>>,
}

/// A model ready to generate.
pub struct Engine {
    dev: Device,
    decoder: Decoder,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    ctx: Context,
    /// The vision encoder: an mmproj's, or Mllama's from the model's own folder.
    vision: Option<Vision>,
    /// Default image preprocessing settings (the longest edge sets the number of image
    /// tokens); a request may ask for fewer tokens.
    image_options: PreprocessOptions,
    image_cache: ImageCache,
    /// What the context's KV cache holds, for reuse by the next prompt.
    prompt_cache: PromptCache,
    /// JSON-constraint token tables, built on first use, and the last schemas compiled.
    constraints: Option<SchemaCache>,
    /// The sampling settings the model is published with, for requests that leave them unset.
    sampling_defaults: SamplingPreset,
    /// The last parallel run given back ([`Self::keep_parallel`]): its free slots keep their
    /// sequences for the next run of as many sequences.
    kept_run: Option<parallel::Parallel>,
}

impl Engine {
    /// A token's id by name in the vocabulary.
    fn vocab_id(&self, name: &str) -> Option<u32> {
        self.tokenizer.token_id(name)
    }

    /// The features of an encoded image (PNG, JPEG, WebP, GIF) preprocessed with `opts` (a
    /// request's own; `None`: the engine's, [`Engine::image_options`]), from the cache when
    /// the same bytes were encoded before with the same settings.
    pub fn image_features(&mut self, bytes: &[u8], opts: Option<&PreprocessOptions>) -> Result<Rc<ImageFeatures>, EngineError> {
        self.check_device()?;
        let opts = opts.cloned().unwrap_or_else(|| self.image_options.clone());
        self.encode_image(bytes, &opts).map_err(|e| self.lost_or(e))
    }

    fn encode_image(&mut self, bytes: &[u8], opts: &PreprocessOptions) -> Result<Rc<ImageFeatures>, EngineError> {
        let (vision, dev) = (self.vision.as_ref().ok_or(EngineError::NoVision)?, &self.dev);
        self.image_cache.get_or_encode(bytes, opts, &vision.preprocess_key(), || vision.encode(dev, bytes, opts))
    }

    /// The longest image edge the model was configured for (its vision config's
    /// `image_size`; the default edge without a vision encoder): the most a request may ask
    /// for as its `max_edge`.
    pub fn max_image_edge(&self) -> u32 {
        self.vision.as_ref().map_or(DEFAULT_MAX_EDGE, Vision::max_image_edge)
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Whether the GPU device was lost (destroyed, driver reset, GPU process crash): every
    /// request then fails with the lost-device error ([`ErrorClass::DeviceLost`]) until the
    /// model is loaded again on a new device.
    pub fn device_lost(&self) -> bool {
        self.dev.lost().is_some()
    }

    /// Fails with the lost-device error once the device is lost: a request after a loss
    /// fails at once, before any GPU work.
    pub fn check_device(&self) -> Result<(), EngineError> {
        Ok(self.dev.check_lost()?)
    }

    /// `e`, or the lost-device error when the device is lost and `e` is a GPU failure that
    /// followed from the loss (a map that failed, a validation error on a destroyed buffer).
    fn lost_or(&self, e: EngineError) -> EngineError {
        match e.class() {
            ErrorClass::Internal | ErrorClass::AdapterTooSmall => self.dev.lost_after_error().map_or(e, EngineError::from),
            _ => e,
        }
    }

    /// The text decoder (its shape in `decoder().cfg`).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The model's chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The vision encoder: an mmproj's when one was loaded, or the one a model's folder
    /// holds (Mllama's).
    pub fn vision(&self) -> Option<&Vision> {
        self.vision.as_ref()
    }

    /// Whether images can be given (an mmproj, or a model with its own encoder).
    pub fn has_vision(&self) -> bool {
        self.vision.is_some()
    }

    /// Sets the vision encoder's matmul precision (f16 needs `shader-f16`).
    pub fn set_vision_compute(&mut self, compute: MatmulCompute) -> Result<(), EngineError> {
        self.vision.as_mut().ok_or(EngineError::NoVision)?.set_compute(compute);
        self.image_cache.clear();
        self.prompt_cache.clear_all();
        self.kept_run = None;
        Ok(())
    }

    /// The sequence the engine runs (sizes, state bytes).
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Most tokens a prompt and its reply may take.
    pub fn max_context(&self) -> u32 {
        self.ctx.max_ctx()
    }

    /// Starts position ids at `offset` (tests of long-context RoPE through `logits`).
    pub fn set_position_offset(&mut self, offset: u32) {
        self.ctx.set_position_offset(offset);
    }

    /// The default image preprocessing settings.
    pub fn image_options(&self) -> &PreprocessOptions {
        &self.image_options
    }

    /// Sets the default longest image edge, at most [`Self::max_image_edge`].
    pub fn set_image_max_edge(&mut self, edge: u32) -> Result<(), EngineError> {
        self.image_options = self.image_options_for(Some(edge))?;
        self.kept_run = None;
        Ok(())
    }

    /// Sets the default resized-area bounds of area-bounded processors (the Qwen2-VL
    /// family's `min_pixels` / `max_pixels`; `None` keeps the encoder's own): fewer pixels,
    /// fewer image tokens. Pixtral's resize ignores them.
    pub fn set_image_area(&mut self, min_area: Option<u64>, max_area: Option<u64>) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::Image(ImageError::InvalidOptions(m)));
        match (min_area, max_area) {
            (_, Some(0)) => return bad("the largest image area must be positive".into()),
            (Some(lo), Some(hi)) if lo > hi => return bad(format!("image area bounds {lo} > {hi}")),
            _ => {}
        }
        self.image_options.min_area = min_area;
        self.image_options.max_area = max_area;
        self.kept_run = None;
        Ok(())
    }

    /// The default preprocessing settings with the longest edge `edge` when given, which
    /// may not exceed the model's image size (a larger one would only make the encoder run
    /// over more patches than the model was trained for).
    pub fn image_options_for(&self, edge: Option<u32>) -> Result<PreprocessOptions, EngineError> {
        let mut opts = self.image_options.clone();
        if let Some(edge) = edge {
            let max = self.max_image_edge();
            if edge == 0 || edge > max {
                let message = format!("image_max_edge must be in 1..={max} (this model's image size), got {edge}");
                return Err(EngineError::Image(ImageError::InvalidOptions(message)));
            }
            opts.max_edge = edge;
        }
        Ok(opts)
    }

    /// Encoded images kept for reuse.
    pub fn image_cache(&self) -> &ImageCache {
        &self.image_cache
    }

    /// How the vision encoder's images appear in prompts (its token ids in this vocabulary);
    /// [`EngineError::NoVision`] without one or for Mllama's, whose images are not expanded.
    pub fn prompt_layout(&self) -> Result<PromptLayout, EngineError> {
        self.vision.as_ref().and_then(Vision::layout).copied().ok_or(EngineError::NoVision)
    }

    /// Prompt ids of a chat rendered with the model's template (special tokens parsed), with
    /// extra template variables `kwargs` (`chat_template_kwargs`). Text only: a chat with
    /// images goes through [`Engine::chat_prompt`].
    pub fn chat_tokens(&self, messages: &[ChatMessage], kwargs: Option<&JsonMap>) -> Result<Vec<u32>, EngineError> {
        let text = self.template.render(messages, true, kwargs)?;
        Ok(self.tokenizer.encode(&text, false)?)
    }

    /// Whether a reply to `messages` starts inside a think block (the rendered prompt left
    /// one open), or `None` when the template writes no think tags (replies are then not split
    /// into reasoning and content).
    pub fn reasoning_opened(&self, messages: &[ChatMessage], kwargs: Option<&JsonMap>) -> Result<Option<bool>, EngineError> {
        let Some(tags) = self.template.think_tags() else { return Ok(None) };
        let text = self.template.render(messages, true, kwargs)?;
        Ok(Some(tags.prompt_opens(&text)))
    }

    /// A chat with text and image parts as a [`Prompt`]: the template places one `[IMG]` per
    /// image part, each is expanded to its image's layout. Image URLs that are not `data:`
    /// URLs go to `load_url` (the CLI reads files; the browser fetches before calling).
    /// Images are preprocessed with `opts` (`None`: the engine's, [`Engine::image_options`]);
    /// `kwargs` are extra template variables (`chat_template_kwargs`). Each image's token
    /// count comes from its header first: a prompt that does not fit the context is
    /// [`EngineError::PromptTooLong`] before any image is decoded or encoded.
    pub fn chat_prompt(
        &mut self,
        messages: &[ChatMessage],
        opts: Option<&PreprocessOptions>,
        kwargs: Option<&JsonMap>,
        load_url: &mut dyn FnMut(&str) -> Result<Vec<u8>, EngineError>,
    ) -> Result<Prompt, EngineError> {
        let opts = &opts.cloned().unwrap_or_else(|| self.image_options.clone());
        let mut files = Vec::new();
        for m in messages {
            let ChatContent::Parts(parts) = &m.content else { continue };
            for part in parts {
                let ContentPart::Image { url } = part else { continue };
                let url = url.as_deref().ok_or_else(|| EngineError::BadImageUrl("an image part without a URL".into()))?;
                let bytes = match data_url_bytes(url) {
                    Some(bytes) => bytes?,
                    None => load_url(url)?,
                };
                files.push(bytes);
            }
        }
        let mut tokens = self.chat_tokens(messages, kwargs)?;
        let len = match &self.vision {
            Some(vision) => {
                tokens = vision.chat_tokens(tokens, self.tokenizer.bos_id());
                vision.prompt_len(&tokens, &files, opts)?
            }
            None if files.is_empty() => None,
            None => return Err(EngineError::NoVision),
        };
        let max_ctx = self.ctx.max_ctx() as usize;
        if let Some(len) = len.filter(|&len| len >= max_ctx) {
            return Err(EngineError::PromptTooLong { tokens: len, max_ctx });
        }
        let images = files.iter().map(|bytes| self.image_features(bytes, Some(opts))).collect::<Result<Vec<_>, _>>()?;
        self.prompt_with_images(&tokens, images)
    }

    /// A [`Prompt`] from ids holding one image placeholder (`[IMG]`, ...) per image, each
    /// expanded to its image's layout. Mllama: ids holding one `<|image|>` per image, kept
    /// as they are.
    pub fn prompt_with_images(&self, tokens: &[u32], images: Vec<Rc<ImageFeatures>>) -> Result<Prompt, EngineError> {
        match &self.vision {
            Some(vision) => vision.prompt(tokens, images),
            None if images.is_empty() => Ok(Prompt { tokens: tokens.to_vec(), images }),
            None => Err(EngineError::NoVision),
        }
    }

    /// The sampling settings the model is published with (its `generation_config.json`, or a
    /// GGUF file's `general.sampling.*` keys): what a request leaves unset takes them.
    pub fn sampling_defaults(&self) -> &SamplingPreset {
        &self.sampling_defaults
    }

    /// What the prompt cache holds.
    pub fn prompt_cache_stats(&self) -> PromptCacheStats {
        self.prompt_cache.stats()
    }

    /// Limits the GPU memory of saved prompt prefixes (0 keeps only the live sequence).
    pub fn set_prompt_cache_bytes(&mut self, bytes: u64) {
        self.prompt_cache.set_budget(bytes);
    }

    /// Teacher-forced logits of a prompt whose ids already hold the expanded image layouts
    /// (`[tokens.len()][vocab]`), image features at the `[IMG]` positions in order, in a
    /// fresh sequence.
    pub async fn logits(&mut self, prompt: &Prompt) -> Result<Vec<f32>, EngineError> {
        self.check_device()?;
        let logits = self.logits_on_device(prompt).await;
        logits.map_err(|e| self.lost_or(e))
    }

    async fn logits_on_device(&mut self, prompt: &Prompt) -> Result<Vec<f32>, EngineError> {
        let images = self.placement(prompt)?;
        self.ctx.reset();
        self.prompt_cache.clear();
        if let Some(vision) = self.vision.as_mut() {
            vision.forget();
            vision.prepare(&self.dev, &self.decoder, &mut self.ctx, &mut self.prompt_cache, prompt)?;
        }
        Ok(self.ctx.logits_with_images(&self.dev, &self.decoder, &prompt.tokens, images.as_ref()).await?)
    }

    /// Where the prompt's image features go, if it has images.
    fn placement<'a>(&self, prompt: &'a Prompt) -> Result<Option<PromptImages<'a>>, EngineError> {
        if prompt.images.is_empty() {
            return Ok(None);
        }
        Ok(self.vision.as_ref().ok_or(EngineError::NoVision)?.placement(&prompt.images))
    }

    /// Prompt ids of plain text (BOS added as the vocabulary asks; Mllama: as its processor
    /// does, after any leading `<|image|>` tokens).
    pub fn text_tokens(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        match &self.vision {
            Some(vision) => vision.text_tokens(&self.tokenizer, text),
            None => Ok(self.tokenizer.encode(text, true)?),
        }
    }
}
