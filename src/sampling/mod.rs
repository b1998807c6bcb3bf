//! CPU-side sampling for the OpenAI-compatible chat API: what the GPU sampler
//! (`shaders/sample.wgsl`) cannot do, on a logits row read back from the GPU.
//!
//! - [`SamplingParams`]: the request's settings with OpenAI's defaults and ranges
//!   (`temperature` [0, 2], `top_p` (0, 1], penalties [-2, 2], `logit_bias` [-100, 100]) plus
//!   `top_k`, `min_p` and vLLM's `repetition_penalty` (0, 10].
//! - [`Sampler`]: penalties and bias ([`Sampler::adjust`]), then transformers' warper order
//!   (temperature, top-k, top-p), then llama.cpp's min-p, then an inverse-CDF draw in token-id
//!   order with the shader's counter RNG ([`rand01`]), so without penalties, bias or min-p it
//!   picks the token the GPU picks for the same logits, seed and draw.
//! - [`logprobs`]: OpenAI's `logprobs` / `top_logprobs` from the raw logits.
//! - [`StopStrings`]: OpenAI's `stop`, matched over streamed text deltas.
//!
//! References: transformers `generation/logits_process.py` (`RepetitionPenaltyLogitsProcessor`,
//! `TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`, `MinPLogitsWarper`);
//! OpenAI's "frequency and presence penalties" formula (API reference, parameter details);
//! llama.cpp's `llama-sampling.cpp` (`llama_sampler_min_p`, default chain
//! `penalties; …; top_k; typ_p; top_p; min_p; …; temperature`); vLLM `SamplingParams` and
//! `v1/sample/sampler.py`.

mod logprobs;
mod sampler;
mod stop;

pub use logprobs::{logprobs, TokenLogprob, MAX_TOP_LOGPROBS};
pub use sampler::{fold_seed, rand01, SampleError, Sampler};
pub use stop::{StopStep, StopStrings, MAX_STOP_BYTES, MAX_STOP_STRINGS};

/// A request parameter outside its allowed range (maps to an HTTP 400 naming `param`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("invalid `{param}`: {message}")]
pub struct ParamError {
    /// The OpenAI parameter name (`temperature`, `logit_bias`, `stop`, ...).
    pub param: &'static str,
    pub message: String,
}

impl ParamError {
    pub(crate) fn new(param: &'static str, message: impl Into<String>) -> ParamError {
        ParamError { param, message: message.into() }
    }
}

/// Sampling settings of one request. [`Default`] is OpenAI's: temperature 1, top-p 1,
/// every other filter, penalty and bias off, no seed.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// `0` selects greedy decoding (argmax after penalties and bias).
    pub temperature: f32,
    /// `0` disables top-k.
    pub top_k: u32,
    /// `1` disables top-p.
    pub top_p: f32,
    /// `0` disables min-p.
    pub min_p: f32,
    /// OpenAI: subtracted once per previous occurrence in the generated text.
    pub frequency_penalty: f32,
    /// OpenAI: subtracted once if the token occurs in the generated text.
    pub presence_penalty: f32,
    /// vLLM / transformers multiplicative penalty over prompt and generated tokens; `1` is off.
    pub repetition_penalty: f32,
    /// `(token, bias)` pairs added to the logits (OpenAI's map, as a list).
    pub logit_bias: Vec<(u32, f32)>,
    /// The same seed, settings and prompt give the same tokens; `None` draws a fresh seed
    /// for each generation ([`random_seed`]; the engine reports it in `Generation::seed`).
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

/// A fresh seed from the operating system's randomness (`crypto.getRandomValues` in a
/// browser), or, should that fail, from the clock mixed with a per-process counter.
pub fn random_seed() -> u64 {
    static DRAWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    getrandom::u64().unwrap_or_else(|_| {
        let nanos = web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let n = DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        nanos ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    })
}

/// `Ok` when `x` is finite and within `[lo, hi]`, with `lo` excluded if `open_lo`.
fn check_range(param: &'static str, x: f32, lo: f32, hi: f32, open_lo: bool) -> Result<(), ParamError> {
    let above = if open_lo { x > lo } else { x >= lo };
    if x.is_finite() && above && x <= hi {
        return Ok(());
    }
    let open = if open_lo { '(' } else { '[' };
    Err(ParamError::new(param, format!("{x} is outside {open}{lo}, {hi}]")))
}

impl SamplingParams {
    /// Checks every setting against OpenAI's ranges (vLLM's for `top_k`, `min_p` and
    /// `repetition_penalty`) and the `logit_bias` ids against the vocabulary size.
    pub fn validate(&self, vocab: usize) -> Result<(), ParamError> {
        check_range("temperature", self.temperature, 0.0, 2.0, false)?;
        check_range("top_p", self.top_p, 0.0, 1.0, true)?;
        check_range("min_p", self.min_p, 0.0, 1.0, false)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0, false)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0, false)?;
        check_range("repetition_penalty", self.repetition_penalty, 0.0, 10.0, true)?;
        self.validate_bias(vocab)
    }

    fn validate_bias(&self, vocab: usize) -> Result<(), ParamError> {
        let mut ids: Vec<u32> = Vec::with_capacity(self.logit_bias.len());
        for &(id, bias) in &self.logit_bias {
            if id as usize >= vocab {
                return Err(ParamError::new("logit_bias", format!("token {id} is not below the vocabulary size {vocab}")));
            }
            check_range("logit_bias", bias, -100.0, 100.0, false)?;
            ids.push(id);
        }
        ids.sort_unstable();
        match ids.windows(2).find(|w| w[0] == w[1]) {
            Some(w) => Err(ParamError::new("logit_bias", format!("token {} is given twice", w[0]))),
            None => Ok(()),
        }
    }

    /// True when a setting needs the CPU sampler: min-p, any penalty or a logit bias (the
    /// GPU sampler does only temperature, top-k and top-p).
    pub fn needs_cpu(&self) -> bool {
        self.min_p > 0.0
            || self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
            || self.repetition_penalty != 1.0
            || !self.logit_bias.is_empty()
    }
}
