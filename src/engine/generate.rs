//! The generation loop: prompt → prefill (after the prompt-cache hit) → decode steps →
//! text deltas, stop strings, per-token logprobs and JSON constraints.
//!
//! Two ways to choose each token:
//! - on the GPU (greedy, temperature, top-k, top-p): one submit per token and 4 bytes read
//!   back, pipelined (the default). The sampled id stays on the GPU and feeds the next step,
//!   so step n+1 is submitted before token n is read and the GPU never waits for the host
//!   between tokens. `max_tokens` and the context's end are known in advance and never
//!   overrun; an end-of-generation token, a stop string or an abort is seen one step late,
//!   and that surplus step is dropped (its KV entry is forgotten, the prompt cache records
//!   only the tokens fed before the last one kept);
//! - on the host, from the logits row read back (512 KiB for a 131k vocabulary), when a
//!   request needs what the GPU sampler cannot do: min-p, penalties, logit bias, logprobs or a
//!   JSON constraint. The step for token `t` is submitted first, then the constraint's mask
//!   for the token after it is computed while the GPU works, then the logits are awaited.

use std::borrow::Cow;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use web_time::Instant;

use crate::backend::Device;
use crate::constraint::{Constraint, ConstraintFactory, SchemaCache};
use crate::kernels::sample::SamplerState;
use crate::model::{Context, Decoder};
use crate::sampling::{fold_seed, logprobs, random_seed, Sampler, SamplingParams, StopStrings, TokenLogprob, MAX_TOP_LOGPROBS};
use crate::tokenizer::{TextStream, Tokenizer};

use super::prompt_cache::{turn_boundaries, PosKey, PromptCache};
use super::{Engine, EngineError, Prompt};

/// What the output must be.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against `schema`; `strict` rejects schemas with unsupported keywords.
    JsonSchema { schema: serde_json::Value, strict: bool },
    /// Text of a grammar in llguidance's Lark syntax (a tool call's, for `tool_choice`).
    Lark(String),
}

/// A [`ResponseFormat`] that applies from the token `trigger` on, the trigger included (the
/// format's grammar starts with it); llama.cpp calls this a lazy grammar. Inside a think
/// block (`think`) the trigger does not count: a thought may mention a call.
#[derive(Clone, Debug, PartialEq)]
pub struct LazyFormat {
    pub trigger: u32,
    pub format: ResponseFormat,
    pub think: Option<ThinkGate>,
}

/// The tokens that open and close a think block, and whether the reply starts inside one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThinkGate {
    pub open: u32,
    pub close: u32,
    pub inside: bool,
}

/// Settings of one generation.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate (the context's end also stops generation).
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    /// Strings that end generation, matched across token boundaries, not included.
    pub stop: Vec<String>,
    /// Per-token log-probabilities with this many alternatives (`None`: off).
    pub logprobs: Option<usize>,
    pub response_format: ResponseFormat,
    /// Keep generating through end-of-generation tokens (for reference comparisons).
    pub ignore_eos: bool,
    /// Special tokens that stay in the text (a tool call's markers, which its parser reads);
    /// the others are left out.
    pub keep_tokens: Vec<u32>,
    /// A constraint that starts when its trigger token is sampled (a tool call's grammar
    /// under `tool_choice: "auto"`: the text before the call is free).
    pub lazy_format: Option<LazyFormat>,
    /// Checked after every token: once set, generation ends with [`FinishReason::Abort`]
    /// (the browser's stop button; the step already submitted for the next token is dropped).
    pub abort: Option<Rc<Cell<bool>>>,
}

impl Default for GenerateOptions {
    /// Greedy, 256 tokens (the OpenAI layer applies OpenAI's defaults).
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            sampling: SamplingParams { temperature: 0.0, ..Default::default() },
            stop: Vec::new(),
            logprobs: None,
            response_format: ResponseFormat::Text,
            ignore_eos: false,
            keep_tokens: Vec::new(),
            lazy_format: None,
            abort: None,
        }
    }
}

impl GenerateOptions {
    /// Whether tokens must be chosen on the host (see the module docs).
    fn host_sampling(&self) -> bool {
        self.sampling.needs_cpu()
            || self.logprobs.is_some()
            || self.response_format != ResponseFormat::Text
            || self.lazy_format.is_some()
    }

    /// `self` with a seed: its own, or a fresh one ([`random_seed`]) when it has none.
    pub(super) fn seeded(&self) -> Cow<'_, GenerateOptions> {
        match self.sampling.seed {
            Some(_) => Cow::Borrowed(self),
            None => {
                let mut opts = self.clone();
                opts.sampling.seed = Some(random_seed());
                Cow::Owned(opts)
            }
        }
    }

    fn seed(&self) -> u64 {
        self.sampling.seed.unwrap_or_default()
    }

    fn gpu_sampler(&self) -> SamplerState {
        let s = &self.sampling;
        SamplerState {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            seed: fold_seed(self.seed()),
            ..Default::default()
        }
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// The caller set [`GenerateOptions::abort`].
    Abort,
}

impl FinishReason {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// The result of one generation.
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// The text shown (a matched stop string and what follows it trimmed).
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV-cache entries came from the prompt cache.
    pub cached_tokens: usize,
    /// The sampler's seed: the request's, or the one drawn for it (repeats the generation).
    pub seed: u64,
    /// One per generated token when logprobs were asked for.
    pub logprobs: Vec<TokenLogprob>,
    /// Seconds from the start to the first token, and of the decode steps after it.
    pub time_to_first_token: f64,
    pub decode_seconds: f64,
    /// Seconds spent computing JSON-constraint masks (overlapping the GPU's work).
    pub mask_seconds: f64,
}

impl Generation {
    /// Nothing generated yet after a prompt of `prompt_tokens` (none cached), with `seed`.
    pub(super) fn empty(prompt_tokens: usize, seed: u64) -> Generation {
        Generation {
            tokens: Vec::new(),
            text: String::new(),
            finish: FinishReason::Length,
            prompt_tokens,
            cached_tokens: 0,
            seed,
            logprobs: Vec::new(),
            time_to_first_token: 0.0,
            decode_seconds: 0.0,
            mask_seconds: 0.0,
        }
    }
}

/// What one step hands to the caller: text now safe to show (possibly empty while a stop
/// string may be starting) and the step's token logprob.
pub struct StepOutput<'a> {
    pub text: &'a str,
    pub logprob: Option<&'a TokenLogprob>,
}

/// A future the loop awaits before its next step (the browser's stream backpressure).
pub type Wait = Pin<Box<dyn Future<Output = ()>>>;

/// Host-side token choice: sampler, constraint, logprobs.
pub(super) struct HostPicker {
    sampler: Sampler,
    constraint: Option<Constraint>,
    /// The lazy format's trigger and constraint, until the trigger is sampled (outside a
    /// think block, tracked by the gate).
    lazy: Option<(u32, Constraint)>,
    think: Option<ThinkGate>,
    top_logprobs: Option<usize>,
    pub(super) mask_seconds: f64,
}

impl HostPicker {
    /// The constraint's mask for the next token (call while the GPU computes its logits).
    pub(super) fn mask(&mut self) -> Result<Option<Vec<u32>>, EngineError> {
        let Some(c) = &mut self.constraint else { return Ok(None) };
        let start = Instant::now();
        let mask = c.mask()?;
        self.mask_seconds += start.elapsed().as_secs_f64();
        Ok(Some(mask))
    }

    pub(super) fn pick(&mut self, logits: &[f32], mask: Option<&[u32]>) -> Result<(u32, Option<TokenLogprob>), EngineError> {
        let token = self.sampler.try_sample(logits, mask)?;
        let lp = self.top_logprobs.map(|n| logprobs(logits, token, n.min(MAX_TOP_LOGPROBS)));
        Ok((token, lp))
    }

    /// Takes the token picked for `ctx`'s sequence: ends generation at an end-of-generation
    /// token, else records and streams it; then returns why generation ends here, if it
    /// does (a stop string, `max_tokens`, the context's end, an abort), or `None` when the
    /// token is to be fed.
    pub(super) async fn keep<F: FnMut(&StepOutput<'_>) -> Option<Wait>>(
        &mut self,
        emit: &mut Emitter<F>,
        out: &mut Generation,
        opts: &GenerateOptions,
        ctx: &Context,
        (token, logprob): (u32, Option<TokenLogprob>),
    ) -> Result<Option<FinishReason>, EngineError> {
        if emit.is_end(token) {
            return Ok(Some(FinishReason::Stop));
        }
        self.accept(token)?;
        if emit.push(out, token, logprob).await? {
            return Ok(Some(FinishReason::Stop));
        }
        if out.tokens.len() as u32 >= opts.max_tokens || ctx.n_past() >= ctx.max_ctx() {
            return Ok(Some(FinishReason::Length));
        }
        Ok(opts.abort.as_ref().is_some_and(|a| a.get()).then_some(FinishReason::Abort))
    }

    /// Records a token that will be generated (penalties, constraint state).
    fn accept(&mut self, token: u32) -> Result<(), EngineError> {
        if let Some(gate) = self.think.as_mut() {
            gate.inside = (gate.inside || token == gate.open) && token != gate.close;
        }
        let thinking = self.think.is_some_and(|g| g.inside || token == g.close);
        if !thinking && self.lazy.as_ref().is_some_and(|&(trigger, _)| trigger == token) {
            self.constraint = self.lazy.take().map(|(_, c)| c);
        }
        self.sampler.accept(token);
        if let Some(c) = &mut self.constraint {
            c.commit(token)?;
        }
        Ok(())
    }
}

/// The output side of one generation: kept tokens, text deltas (a stop string held back
/// while it may be starting, then trimmed) and logprobs, each step streamed to `on_step`.
pub(super) struct Emitter<F> {
    tokenizer: Arc<Tokenizer>,
    text: TextStream,
    stops: StopStrings,
    ignore_eos: bool,
    on_step: F,
}

impl<F: FnMut(&StepOutput<'_>) -> Option<Wait>> Emitter<F> {
    /// An end-of-generation token (not kept: generation stops before it).
    fn is_end(&self, token: u32) -> bool {
        !self.ignore_eos && self.tokenizer.eos_ids().contains(&token)
    }

    /// Keeps `token` and streams its text; true when a stop string ended generation.
    async fn push(&mut self, out: &mut Generation, token: u32, logprob: Option<TokenLogprob>) -> Result<bool, EngineError> {
        out.tokens.push(token);
        let delta = self.text.step(&self.tokenizer, token)?.unwrap_or_default();
        let shown = self.stops.push(&delta);
        out.text.push_str(&shown.emit);
        if let Some(wait) = (self.on_step)(&StepOutput { text: &shown.emit, logprob: logprob.as_ref() }) {
            wait.await;
        }
        out.logprobs.extend(logprob);
        Ok(shown.stopped)
    }

    /// Streams the text held back at the end (an incomplete character, a partial stop string).
    pub(super) async fn finish(mut self, out: &mut Generation) -> Result<(), EngineError> {
        let mut rest = self.text.flush(&self.tokenizer)?.map(|d| self.stops.push(&d).emit).unwrap_or_default();
        if !self.stops.stopped() {
            rest.push_str(&self.stops.finish());
        }
        if !rest.is_empty() {
            out.text.push_str(&rest);
            if let Some(wait) = (self.on_step)(&StepOutput { text: &rest, logprob: None }) {
                wait.await;
            }
        }
        Ok(())
    }
}

/// The model side of one generation: what runs the steps.
struct Steps<'a> {
    dev: &'a Device,
    dec: &'a Decoder,
    ctx: &'a mut Context,
}

impl Engine {
    /// Generates from a [`Prompt`] (text and images), reusing the KV cache of the longest
    /// prefix it shares with the sequence already cached; `on_step` sees each step's text
    /// and logprob and may return a future to await before the next step.
    ///
    /// A GPU device lost before or during the generation ends it with the lost-device error
    /// ([`crate::error::ErrorClass::DeviceLost`]), as every later call does.
    pub async fn generate_prompt(
        &mut self,
        prompt: &Prompt,
        opts: &GenerateOptions,
        on_step: impl FnMut(&StepOutput<'_>) -> Option<Wait>,
    ) -> Result<Generation, EngineError> {
        self.check_device()?;
        let generation = self.generate_on_device(prompt, opts, on_step).await;
        generation.map_err(|e| self.lost_or(e))
    }

    async fn generate_on_device(
        &mut self,
        prompt: &Prompt,
        opts: &GenerateOptions,
        on_step: impl FnMut(&StepOutput<'_>) -> Option<Wait>,
    ) -> Result<Generation, EngineError> {
        opts.sampling.validate(self.decoder.cfg.vocab as usize)?;
        let opts = &*opts.seeded();
        let stops = StopStrings::new(opts.stop.clone())?;
        let images = self.placement(prompt)?;
        // The CPU backend has no device sampler: its tokens are always picked on the host.
        let host = match opts.host_sampling() || matches!(self.dev, Device::Cpu(_)) {
            false => None,
            true => Some(self.host_picker(opts, &prompt.tokens)?),
        };
        let start = Instant::now();
        if let Some(vision) = self.vision.as_mut() {
            vision.prepare(&self.dev, &self.decoder, &mut self.ctx, &mut self.prompt_cache, prompt)?;
        }
        let keys = PromptCache::keys(prompt, self.prompt_layout().ok().map(|l| l.fill()));
        let cached = self.prompt_cache.reuse(&self.dev, &mut self.ctx, &keys)?;
        let mut out = Generation { cached_tokens: cached, ..Generation::empty(prompt.tokens.len(), opts.seed()) };
        if opts.max_tokens == 0 {
            return Ok(out);
        }
        let mut emit = self.emitter(opts, stops, on_step);
        let images = images.as_ref();
        let (dev, dec) = (&self.dev, &self.decoder);
        // A recurrent state is saved at the prompt's turn boundaries and end as it is
        // prefilled: it cannot be cut back to them later (see `prompt_cache`).
        let recurrent = self.ctx.has_recurrent();
        if recurrent {
            for end in turn_boundaries(&prompt.tokens, cached, self.tokenizer.eos_ids()) {
                self.ctx.submit_prefix(dev, dec, &prompt.tokens, end, images)?;
                self.prompt_cache.save_prefix(dev, &mut self.ctx, &keys[..end])?;
            }
        }
        let mut sampler = opts.gpu_sampler();
        match host {
            None => self.ctx.submit_prompt_sampled(dev, dec, &prompt.tokens, images, &sampler)?,
            Some(_) => self.ctx.submit_prompt(dev, dec, &prompt.tokens, images)?,
        }
        let prompt_end = self.ctx.n_past();
        if recurrent {
            self.prompt_cache.save_prefix(dev, &mut self.ctx, &keys)?;
        }
        let mut steps = Steps { dev, dec, ctx: &mut self.ctx };
        let mask_seconds = match host {
            None => {
                steps.run_on_gpu(prompt_end, &mut sampler, opts, &mut emit, &mut out, start).await?;
                0.0
            }
            Some(mut h) => {
                steps.run_on_host(opts, &mut h, &mut emit, &mut out, start).await?;
                h.mask_seconds
            }
        };
        // The cache holds the prompt and the generated tokens fed back so far (not the last).
        let fed = (self.ctx.n_past() - prompt_end) as usize;
        let mut live = keys;
        live.extend(out.tokens[..fed].iter().map(|&t| PosKey::Token(t)));
        emit.finish(&mut out).await?;
        self.prompt_cache.set(live);
        out.decode_seconds = start.elapsed().as_secs_f64() - out.time_to_first_token;
        out.mask_seconds = mask_seconds;
        Ok(out)
    }

    /// What picks `opts`' tokens on the host for a generation after `prompt`.
    pub(super) fn host_picker(&mut self, opts: &GenerateOptions, prompt: &[u32]) -> Result<HostPicker, EngineError> {
        Ok(HostPicker {
            sampler: Sampler::new(opts.sampling.clone(), prompt),
            constraint: self.constraint(&opts.response_format)?,
            lazy: match &opts.lazy_format {
                Some(lazy) => self.constraint(&lazy.format)?.map(|c| (lazy.trigger, c)),
                None => None,
            },
            think: opts.lazy_format.as_ref().and_then(|l| l.think),
            top_logprobs: opts.logprobs,
            mask_seconds: 0.0,
        })
    }

    /// The output side of a generation with `opts` (`stops` checked already).
    pub(super) fn emitter<F>(&self, opts: &GenerateOptions, stops: StopStrings, on_step: F) -> Emitter<F> {
        let text = self.tokenizer.decode_stream(true).keeping(opts.keep_tokens.clone());
        Emitter { tokenizer: self.tokenizer.clone(), text, stops, ignore_eos: opts.ignore_eos, on_step }
    }

    /// Generates from text-only `prompt` ids, calling `on_text` with each text delta.
    pub async fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation, EngineError> {
        let prompt = Prompt { tokens: prompt.to_vec(), images: Vec::new() };
        self.generate_prompt(&prompt, opts, |step| {
            on_text(step.text);
            None
        })
        .await
    }

    /// Fails unless `format` can be enforced (an invalid or unsupported schema), before any
    /// prompt work.
    pub fn check_response_format(&mut self, format: &ResponseFormat) -> Result<(), EngineError> {
        self.constraint(format).map(drop)
    }

    /// JSON schemas compiled so far (each is compiled once while it stays among the last
    /// few used).
    pub fn constraint_compilations(&self) -> u64 {
        self.constraints.as_ref().map_or(0, |c| c.factory().compilations())
    }

    /// The token constraint a response format asks for (the token trie is built on first use;
    /// a schema is compiled on its first use among the last few).
    fn constraint(&mut self, format: &ResponseFormat) -> Result<Option<Constraint>, EngineError> {
        if *format == ResponseFormat::Text {
            return Ok(None);
        }
        let schemas = match &mut self.constraints {
            Some(schemas) => schemas,
            slot @ None => slot.insert(SchemaCache::new(ConstraintFactory::new(self.tokenizer.clone())?)),
        };
        Ok(Some(match format {
            ResponseFormat::JsonSchema { schema, strict } => schemas.json_schema(schema, *strict)?,
            ResponseFormat::Lark(grammar) => schemas.lark(grammar)?,
            _ => schemas.json_object()?,
        }))
    }
}

impl Steps<'_> {
    /// Tokens chosen on the GPU, pipelined: the step feeding token n (still on the GPU) is
    /// submitted before token n is read, so the GPU never waits for the host between tokens.
    /// `max_tokens` and the context's end are known in advance and never overrun; an
    /// end-of-generation token, a stop string or an abort is seen one step late, and the
    /// surplus step is dropped. The prompt's prefill is submitted (sampling with `state`) and
    /// has left the cache at `prompt_end`.
    async fn run_on_gpu<F: FnMut(&StepOutput<'_>) -> Option<Wait>>(
        &mut self,
        prompt_end: u32,
        state: &mut SamplerState,
        opts: &GenerateOptions,
        emit: &mut Emitter<F>,
        out: &mut Generation,
        start: Instant,
    ) -> Result<(), EngineError> {
        // Decode steps that may run: each samples one token after the prefill's.
        let mut steps_left = (opts.max_tokens - 1).min(self.ctx.max_ctx() - prompt_end);
        loop {
            if steps_left > 0 {
                state.draw += 1;
                self.ctx.submit_decode(self.dev, self.dec, state)?;
                steps_left -= 1;
            }
            let token = self.ctx.read_next_token(self.dev).await?;
            if out.tokens.is_empty() {
                out.time_to_first_token = start.elapsed().as_secs_f64();
            }
            if emit.is_end(token) || emit.push(out, token, None).await? {
                out.finish = FinishReason::Stop;
                break;
            }
            if self.ctx.steps_in_flight() == 0 {
                break; // `max_tokens` or the context's end: FinishReason::Length.
            }
            if opts.abort.as_ref().is_some_and(|a| a.get()) {
                out.finish = FinishReason::Abort;
                break;
            }
        }
        self.ctx.drop_last_step(self.dev)?;
        Ok(())
    }

    /// Tokens chosen on the host, one step at a time: the step for token t is submitted, the
    /// constraint's mask for the token after it computed while the GPU works, then its logits
    /// awaited. The prompt's prefill is submitted.
    async fn run_on_host<F: FnMut(&StepOutput<'_>) -> Option<Wait>>(
        &mut self,
        opts: &GenerateOptions,
        h: &mut HostPicker,
        emit: &mut Emitter<F>,
        out: &mut Generation,
        start: Instant,
    ) -> Result<(), EngineError> {
        let (dev, dec) = (self.dev, self.dec);
        let mask = h.mask()?;
        let (mut token, mut logprob) = h.pick(&self.ctx.read_logits(dev, dec).await?, mask.as_deref())?;
        out.time_to_first_token = start.elapsed().as_secs_f64();
        loop {
            if let Some(finish) = h.keep(emit, out, opts, self.ctx, (token, logprob.take())).await? {
                out.finish = finish;
                break;
            }
            self.ctx.submit_token(dev, dec, token)?;
            let mask = h.mask()?;
            (token, logprob) = h.pick(&self.ctx.read_logits(dev, dec).await?, mask.as_deref())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock of the generation timings never goes back (`performance.now()` in the
    /// browser, through `web_time`; `std::time::Instant` natively).
    #[test]
    fn the_timing_clock_is_monotonic() {
        let start = Instant::now();
        let mut last = 0.0;
        for _ in 0..100_000 {
            let now = start.elapsed().as_secs_f64();
            assert!(now >= last, "{now} < {last}");
            last = now;
        }
    }
}
