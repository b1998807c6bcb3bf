//! Loading an engine: [`Engine::builder`] then [`EngineBuilder::load`], the one way the CLI,
//! the server, the browser and the tests build one; [`Engine::add_vision`] for an mmproj that
//! streams in after the text model. Either vision encoder, an mmproj's or the one an Mllama
//! folder holds, becomes the engine's [`Vision`] the same way.

use std::sync::Arc;

use super::{CrossVision, Engine, EngineError, ImageCache, PromptCache, SamplingPreset, Vision};
use super::{DEFAULT_PROMPT_CACHE_BYTES, IMAGE_CACHE_BYTES};
use crate::backend::Device;
use crate::chat::ChatTemplate;
use crate::image::PreprocessOptions;
use crate::kernels::matmul::MatmulCompute;
use crate::model::vision::projector_type;
use crate::model::{Context, ContextOptions, Decoder, ModelError, VisionEncoder};
use crate::source::hf::HfTextFiles;
use crate::source::{LoadQuant, WeightLoader};
use crate::tokenizer::{GgufVocab, HfTokenizerConfig, Tokenizer};

/// What [`Engine::builder`] gives: the settings of an engine to load, loaded by [`Self::load`].
#[must_use = "nothing is loaded until `load`"]
pub struct EngineBuilder<'a> {
    dev: Device,
    context: ContextOptions,
    hf_text: Option<&'a HfTextFiles>,
    vision: Option<(&'a mut dyn WeightLoader, LoadQuant)>,
}

impl<'a> EngineBuilder<'a> {
    /// The context's sizes and precision ([`ContextOptions::default`] if not called).
    pub fn context(mut self, opts: ContextOptions) -> Self {
        self.context = opts;
        self
    }

    /// The tokenizer, chat template, end-of-generation ids and sampling defaults of a Hugging
    /// Face folder's text files, for weights from that folder (`Eager(&HfModel)`, an
    /// [`crate::source::hf::HfStream`]); an Mllama folder's vision encoder loads with them.
    /// Without it they come from the GGUF vocabulary, or from the folder's text files a GGUF
    /// that webvlm wrote carries ([`super::RepoLoad::write_gguf`]).
    pub fn hf_text(mut self, text: &'a HfTextFiles) -> Self {
        self.hf_text = Some(text);
        self
    }

    /// Also loads the vision encoder and projector of an mmproj file after the text model
    /// ([`Engine::add_vision`]), matrices requantized to `quant`.
    pub fn vision(mut self, mmproj: &'a mut dyn WeightLoader, quant: LoadQuant) -> Self {
        self.vision = Some((mmproj, quant));
        self
    }

    /// Uploads the model of `src` (`Eager(&source)` for a [`crate::source::TensorSource`]; a
    /// [`crate::source::GgufStream`] fills the weights afterwards, as the file streams in)
    /// and builds its tokenizer and chat template, then the vision encoder if one was given.
    pub fn load(self, src: &mut dyn WeightLoader) -> Result<Engine, EngineError> {
        let EngineBuilder { dev, context, hf_text, vision } = self;
        let embedded = match hf_text {
            Some(_) => None,
            None => HfTextFiles::from_metadata(src.metadata()).map_err(|e| ModelError::Load(e.into()))?,
        };
        let mut engine = match hf_text.or(embedded.as_ref()) {
            Some(text) => Engine::load_hf(dev, src, text, context)?,
            None => {
                let vocab = GgufVocab::from_metadata(src.metadata())?;
                let tokenizer = Tokenizer::from_gguf_vocab(&vocab)?;
                let template = ChatTemplate::from_vocab(&vocab, &tokenizer)?;
                Engine::load_text(dev, src, tokenizer, template, context)?
            }
        };
        if let Some((mmproj, quant)) = vision {
            engine.add_vision(mmproj, quant)?;
        }
        Ok(engine)
    }
}

impl Engine {
    /// Starts loading an engine on `dev`: set what differs from the defaults, then
    /// [`EngineBuilder::load`].
    pub fn builder<'a>(dev: impl Into<Device>) -> EngineBuilder<'a> {
        EngineBuilder { dev: dev.into(), context: ContextOptions::default(), hf_text: None, vision: None }
    }

    /// Adds the vision encoder and projector of an mmproj file, matrices requantized to
    /// `quant`; f16 matmuls when the context asked for reduced precision and the adapter has
    /// `shader-f16`. [`EngineBuilder::vision`] cannot serve the browser, whose mmproj streams
    /// in after the text model: the engine must exist to take the text weights as they
    /// arrive, before the mmproj's header does. A model with its own encoder (Mllama) takes
    /// no mmproj.
    pub fn add_vision(&mut self, mmproj: &mut dyn WeightLoader, quant: LoadQuant) -> Result<(), EngineError> {
        let layout =
            VisionEncoder::prompt_layout_of(mmproj.metadata(), &|name| self.vocab_id(name))?.ok_or(EngineError::NoImageTokens)?;
        if let Some(Vision::Cross(_)) = self.vision {
            let projector = projector_type(mmproj.metadata())?;
            return Err(ModelError::UnsupportedProjector { projector, supported: "none, the model has its own encoder" }.into());
        }
        let encoder = VisionEncoder::load_from(&self.dev, mmproj, quant)?;
        self.set_vision(Vision::Placed { encoder: Box::new(encoder), layout });
        Ok(())
    }

    /// Makes `vision` the engine's encoder: f16 matmuls when the context asked for reduced
    /// precision and the adapter has `shader-f16`, the default edge within the encoder's, the
    /// template's image placeholder its image tokens (what a template without image parts,
    /// or the fallback template, writes per image).
    fn set_vision(&mut self, mut vision: Vision) {
        if self.ctx.precision().compute_f16 {
            vision.set_compute(MatmulCompute::F16);
        }
        // The default edge never exceeds what this encoder was configured for.
        self.image_options.max_edge = self.image_options.max_edge.min(vision.max_image_edge());
        let placeholder: Option<String> = vision.template_tokens().into_iter().map(|id| self.tokenizer.token_text(id)).collect();
        if let Some(placeholder) = placeholder {
            self.template.set_image_placeholder(placeholder);
        }
        self.vision = Some(vision);
        self.image_cache.clear();
    }

    /// The engine on the weights of a Hugging Face folder, with the tokenizer, chat template,
    /// end-of-generation ids and sampling defaults of its text files, and Mllama's vision
    /// encoder when the folder holds one.
    fn load_hf(dev: Device, src: &mut dyn WeightLoader, text: &HfTextFiles, opts: ContextOptions) -> Result<Engine, EngineError> {
        let sampling_defaults = SamplingPreset::from_generation_config(&text.generation)?;
        let mut tokenizer = Tokenizer::from_hf(&text.tokenizer_json, text.tokenizer_config.as_deref())?;
        tokenizer.add_eos_ids(&text.generation.eos_token_ids)?;
        let config = text.tokenizer_config.as_deref().map(HfTokenizerConfig::parse).transpose()?.unwrap_or_default();
        let template = ChatTemplate::from_hf(&config, text.chat_template.as_deref(), &tokenizer)?;
        // The image-processor settings are checked before any weight is uploaded.
        let cross_preprocess = CrossVision::preprocess_for(src.metadata(), text.image_processor.as_ref())?;
        let mut engine = Self::load_text(dev, src, tokenizer, template, opts)?;
        engine.sampling_defaults = sampling_defaults;
        // Mllama folders hold the vision encoder beside the text model.
        if let Some(p) = cross_preprocess {
            if let Some(cross) = CrossVision::load(&engine.dev, src, LoadQuant::Keep, p)? {
                engine.set_vision(Vision::Cross(Box::new(cross)));
            }
        }
        Ok(engine)
    }

    /// The engine on the weights of `src` with the tokenizer and template given.
    fn load_text(
        dev: Device,
        src: &mut dyn WeightLoader,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        opts: ContextOptions,
    ) -> Result<Engine, EngineError> {
        let sampling_defaults = SamplingPreset::from_gguf(src.metadata())?;
        let decoder = Decoder::load_from(&dev, src)?;
        let ctx = Context::new(&dev, &decoder, opts)?;
        Ok(Engine {
            dev,
            decoder,
            tokenizer: Arc::new(tokenizer),
            template,
            ctx,
            vision: None,
            image_options: PreprocessOptions::default(),
            image_cache: ImageCache::new(IMAGE_CACHE_BYTES),
            prompt_cache: PromptCache::new(DEFAULT_PROMPT_CACHE_BYTES),
            constraints: None,
            sampling_defaults,
            kept_run: None,
        })
    }
}
