//! The engine: a model, its tokenizer and chat template, one context, and the generation
//! loop (prompt → prefill → decode steps → text deltas). One submit per decoded token; the
//! only data read back per step is the 4-byte token id.

use crate::chat::{ChatError, ChatMessage, ChatTemplate};
use crate::gguf::GgufError;
use crate::gpu::Gpu;
use crate::kernels::sample::SamplerState;
use crate::model::vocab::vocab_from_metadata;
use crate::model::{Context, ContextError, ContextOptions, Decoder, ModelError, TensorSource};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    /// A generation parameter is out of range.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
}

/// Sampling and length settings of one generation.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: u32,
    /// 0 selects greedy decoding.
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: u32,
    /// 1 disables top-p.
    pub top_p: f32,
    pub seed: u64,
    /// Keep generating through end-of-generation tokens (for reference comparisons).
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 256, temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, ignore_eos: false }
    }
}

impl GenerateOptions {
    fn sampler(&self) -> Result<SamplerState, EngineError> {
        let bad = |name, reason: &str| Err(EngineError::InvalidParameter { name, reason: reason.into() });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", "must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        let seed = (self.seed ^ (self.seed >> 32)) as u32;
        Ok(SamplerState { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, seed, ..Default::default() })
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
}

/// The result of one generation.
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Seconds from the start to the first token, and of the decode steps after it.
    pub time_to_first_token: f64,
    pub decode_seconds: f64,
}

/// A model ready to generate.
pub struct Engine {
    pub gpu: Gpu,
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub ctx: Context,
}

impl Engine {
    /// Uploads the model and builds its tokenizer and chat template.
    pub fn load(gpu: Gpu, src: &dyn TensorSource, opts: ContextOptions) -> Result<Engine, EngineError> {
        let vocab = vocab_from_metadata(src.metadata())?;
        let tokenizer = Tokenizer::from_gguf_vocab(&vocab)?;
        let template = ChatTemplate::from_vocab(&vocab, &tokenizer)?;
        let decoder = Decoder::load(&gpu, src)?;
        let ctx = Context::new(&gpu, &decoder, opts)?;
        Ok(Engine { gpu, decoder, tokenizer, template, ctx })
    }

    /// Prompt ids of a chat rendered with the model's template (special tokens parsed).
    pub fn chat_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
        let text = self.template.render(messages, true)?;
        Ok(self.tokenizer.encode(&text, false)?)
    }

    /// Prompt ids of plain text (BOS added as the vocabulary asks).
    pub fn text_tokens(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(self.tokenizer.encode(text, true)?)
    }

    /// Generates from `prompt` in a fresh sequence, calling `on_text` with each text delta.
    pub async fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation, EngineError> {
        let mut state = opts.sampler()?;
        let start = web_time_now();
        self.ctx.reset();
        let mut stream = self.tokenizer.decode_stream(true);
        let mut out = Generation {
            tokens: Vec::new(),
            text: String::new(),
            finish: FinishReason::Length,
            prompt_tokens: prompt.len(),
            time_to_first_token: 0.0,
            decode_seconds: 0.0,
        };
        if opts.max_tokens == 0 {
            return Ok(out);
        }
        let mut token = self.ctx.prefill(&self.gpu, &self.decoder, prompt, &state).await?;
        out.time_to_first_token = web_time_now() - start;
        loop {
            if !opts.ignore_eos && self.tokenizer.eos_ids().contains(&token) {
                out.finish = FinishReason::Stop;
                break;
            }
            out.tokens.push(token);
            if let Some(delta) = stream.step(&self.tokenizer, token)? {
                out.text.push_str(&delta);
                on_text(&delta);
            }
            if out.tokens.len() as u32 >= opts.max_tokens || self.ctx.n_past() >= self.ctx.max_ctx() {
                break;
            }
            state.draw += 1;
            token = self.ctx.decode(&self.gpu, &self.decoder, &state).await?;
        }
        if let Some(delta) = stream.flush(&self.tokenizer)? {
            out.text.push_str(&delta);
            on_text(&delta);
        }
        out.decode_seconds = web_time_now() - start - out.time_to_first_token;
        Ok(out)
    }
}

/// Seconds on a monotonic clock (`performance.now()` in the browser).
fn web_time_now() -> f64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
    }
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now() / 1000.0
    }
}
