//! Many generations at once: continuous batching on one engine. A [`Parallel`] run holds
//! up to `max_seqs` sequences, each on a context of its own (its own KV rows: one range of
//! `max_ctx` positions per slot, allocated when a slot is first used and reused after). A
//! request joins with [`Parallel::admit`] — its prompt prefilled alone, its first token
//! picked — and from the next [`Parallel::step`] decodes in batched steps with every other
//! running sequence (`crate::model::DecodeBatch`: one pass over all of them). Each sequence keeps its own sampler, seed, penalties, constraint, stop strings and
//! logprobs (tokens are picked on the host, as `generate.rs` does for such requests), so its
//! tokens are the ones it gets alone; it leaves at its end, and [`Parallel::cancel`] frees
//! its slot at once.

use std::cell::RefCell;
use std::rc::Rc;

use web_time::Instant;

use crate::model::{Context, DecodeBatch};
use crate::sampling::{StopStrings, TokenLogprob};

use super::generate::{Emitter, HostPicker};
use super::{Engine, EngineError, FinishReason, GenerateOptions, Generation, Prompt, StepOutput, Wait};

/// A sequence of a [`Parallel`] run, numbered from 0 in the order admitted.
pub type SeqId = u64;

/// What a step or an admission produced for one sequence.
#[derive(Debug)]
pub enum ParallelEvent {
    /// Text now safe to show (possibly empty while a stop string may be starting) and the
    /// token's logprob when asked for.
    Text { id: SeqId, text: String, logprob: Option<TokenLogprob> },
    /// The sequence ended and left the run.
    Done { id: SeqId, generation: Generation },
    /// Picking the sequence's next token failed (its constraint, its sampler): it left the
    /// run; the others go on.
    Failed { id: SeqId, error: EngineError },
}

/// Events collected by the sequences' emitters during one call.
type Events = Rc<RefCell<Vec<ParallelEvent>>>;
type OnStep = Box<dyn FnMut(&StepOutput<'_>) -> Option<Wait>>;

/// Sequences decoding together (see the module docs).
pub struct Parallel {
    batch: DecodeBatch,
    running: Vec<Running>,
    /// Contexts of sequences that left, for the next ones.
    idle: Vec<Context>,
    next_id: SeqId,
    events: Events,
}

/// One running sequence: its context, the token picked and not yet fed, and the host side
/// of its generation.
struct Running {
    id: SeqId,
    ctx: Context,
    token: u32,
    opts: GenerateOptions,
    picker: HostPicker,
    emit: Emitter<OnStep>,
    out: Generation,
    start: Instant,
}

impl Engine {
    /// A run of up to `max_seqs` sequences decoding together on this engine's model.
    pub fn parallel(&self, max_seqs: u32) -> Result<Parallel, EngineError> {
        Ok(Parallel {
            batch: DecodeBatch::new(&self.dev, &self.decoder, max_seqs, self.ctx.precision())?,
            running: Vec::new(),
            idle: Vec::new(),
            next_id: 0,
            events: Rc::default(),
        })
    }
}

impl Parallel {
    /// Most sequences running at once.
    pub fn max_seqs(&self) -> u32 {
        self.batch.max_seqs()
    }

    /// Sequences running.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Whether a sequence can join.
    pub fn has_room(&self) -> bool {
        self.running.len() < self.batch.max_seqs() as usize
    }

    /// Starts generating `opts` from `prompt` on a free slot: checks the request, prefills
    /// the prompt and picks the first token (streamed in the events returned, with the
    /// sequence's end if it ends there). Fails with [`EngineError::Busy`] when every slot
    /// is taken.
    pub async fn admit(
        &mut self,
        engine: &mut Engine,
        prompt: &Prompt,
        opts: &GenerateOptions,
    ) -> Result<(SeqId, Vec<ParallelEvent>), EngineError> {
        engine.check_device()?;
        let admitted = self.admit_on_device(engine, prompt, opts).await;
        admitted.map_err(|e| engine.lost_or(e))
    }

    async fn admit_on_device(
        &mut self,
        engine: &mut Engine,
        prompt: &Prompt,
        opts: &GenerateOptions,
    ) -> Result<(SeqId, Vec<ParallelEvent>), EngineError> {
        if !self.has_room() {
            return Err(EngineError::Busy { running: self.running.len() });
        }
        if !prompt.images.is_empty() && engine.placement(prompt)?.is_none() {
            return Err(EngineError::Unsupported("images of a cross-attention model in a parallel run"));
        }
        opts.sampling.validate(engine.decoder.cfg.vocab as usize)?;
        let opts = opts.seeded().into_owned();
        let stops = StopStrings::new(opts.stop.clone())?;
        let mut picker = engine.host_picker(&opts, &prompt.tokens)?;
        let dev = &engine.dev;
        let mut ctx = match self.idle.pop() {
            Some(ctx) => ctx,
            None => Context::new(dev, &engine.decoder, engine.ctx.options())?,
        };
        ctx.reset();
        let start = Instant::now();
        let images = engine.placement(prompt)?;
        let (id, events) = (self.next_id, self.events.clone());
        self.next_id += 1;
        let on_step: OnStep = Box::new(move |step: &StepOutput<'_>| {
            let (text, logprob) = (step.text.to_string(), step.logprob.cloned());
            events.borrow_mut().push(ParallelEvent::Text { id, text, logprob });
            None
        });
        let emit = engine.emitter(&opts, stops, on_step);
        let mut out = Generation::empty(prompt.tokens.len(), opts.sampling.seed.unwrap_or_default());
        if opts.max_tokens == 0 {
            self.idle.push(ctx);
            return Ok((id, vec![ParallelEvent::Done { id, generation: out }]));
        }
        let prefilled = ctx.submit_prompt(dev, &engine.decoder, &prompt.tokens, images.as_ref());
        if let Err(e) = prefilled {
            self.idle.push(ctx);
            return Err(e.into());
        }
        let mask = picker.mask()?;
        let (token, logprob) = picker.pick(&ctx.read_logits(dev, &engine.decoder).await?, mask.as_deref())?;
        out.time_to_first_token = start.elapsed().as_secs_f64();
        let running = Running { id, ctx, token, opts, picker, emit, out, start };
        self.take(running, (token, logprob)).await?;
        Ok((id, self.events.take()))
    }

    /// One batched decode step: feeds every running sequence its token and picks its next
    /// one; returns the text streamed and the generations that ended (their slots are free
    /// for the next admission).
    pub async fn step(&mut self, engine: &mut Engine) -> Result<Vec<ParallelEvent>, EngineError> {
        engine.check_device()?;
        let stepped = self.step_on_device(engine).await;
        stepped.map_err(|e| engine.lost_or(e))
    }

    async fn step_on_device(&mut self, engine: &mut Engine) -> Result<Vec<ParallelEvent>, EngineError> {
        if self.running.is_empty() {
            return Ok(Vec::new());
        }
        let (dev, dec) = (&engine.dev, &engine.decoder);
        let tokens: Vec<u32> = self.running.iter().map(|r| r.token).collect();
        let mut ctxs: Vec<&mut Context> = self.running.iter_mut().map(|r| &mut r.ctx).collect();
        let logits = self.batch.step(dev, dec, &mut ctxs, &tokens).await?;
        let vocab = dec.cfg.vocab as usize;
        for (mut r, row) in std::mem::take(&mut self.running).into_iter().zip(logits.chunks(vocab)) {
            let id = r.id;
            let picked = r.picker.mask().and_then(|mask| r.picker.pick(row, mask.as_deref()));
            let taken = match picked {
                Ok(picked) => {
                    r.token = picked.0;
                    self.take(r, picked).await
                }
                Err(e) => Err(e),
            };
            if let Err(error) = taken {
                self.events.borrow_mut().push(ParallelEvent::Failed { id, error });
            }
        }
        Ok(self.events.take())
    }

    /// Ends sequence `id` now ([`FinishReason::Abort`]): its generation so far, or `None`
    /// when it is not running. Its slot is free for the next admission.
    pub async fn cancel(&mut self, id: SeqId) -> Result<Option<Generation>, EngineError> {
        let Some(i) = self.running.iter().position(|r| r.id == id) else { return Ok(None) };
        let r = self.running.remove(i);
        self.finish(r, FinishReason::Abort).await?;
        let events = self.events.take();
        Ok(events.into_iter().find_map(|e| match e {
            ParallelEvent::Done { generation, .. } => Some(generation),
            _ => None,
        }))
    }

    /// Keeps the token picked for `r` (streamed as text) and runs it on, or ends it.
    async fn take(&mut self, mut r: Running, picked: (u32, Option<TokenLogprob>)) -> Result<(), EngineError> {
        match r.picker.keep(&mut r.emit, &mut r.out, &r.opts, &r.ctx, picked).await? {
            Some(finish) => self.finish(r, finish).await,
            None => {
                self.running.push(r);
                Ok(())
            }
        }
    }

    /// Flushes `r`'s held-back text, reports its generation and frees its slot.
    async fn finish(&mut self, mut r: Running, finish: FinishReason) -> Result<(), EngineError> {
        r.out.finish = finish;
        r.emit.finish(&mut r.out).await?;
        r.out.decode_seconds = r.start.elapsed().as_secs_f64() - r.out.time_to_first_token;
        r.out.mask_seconds = r.picker.mask_seconds;
        self.events.borrow_mut().push(ParallelEvent::Done { id: r.id, generation: r.out });
        self.idle.push(r.ctx);
        Ok(())
    }
}
