//! Many generations at once: continuous batching on one engine. A [`Parallel`] run holds
//! up to `max_seqs` sequences, each on a context of its own (its own KV rows: one range per
//! slot, on a GPU a fixed range of the run's KV arena, otherwise growing by pages as its
//! sequence does, from the run's KV pool: `kv_pool.rs`, where sequences are preempted when
//! it is full). A request joins with [`Parallel::admit`]
//! (checked, given a slot); each [`Parallel::step`] is then one batched step
//! (`crate::model::StepBatch`: one pass, each weight read once for all its rows) of the next
//! token of every sequence past its prompt and the next chunks of the prompts waiting to be
//! prefilled, oldest first, the step's rows within one chunk's (`max_chunk`, as vLLM's token
//! budget per step) — a prompt that is done picks its first token. So a long prompt or an
//! image joining delays the running sequences by at most a chunk's rows per step. Each
//! sequence keeps its own sampler, seed, penalties, constraint, stop strings and logprobs
//! (tokens are picked on the host, as `generate.rs` does for such requests), so its tokens
//! are the ones it gets alone (its logits within the rounding of the kernels a step holding
//! a chunk runs: see `crate::model::rows`); it leaves at its end, and [`Parallel::cancel`]
//! frees its slot at once.
//!
//! A slot keeps the sequence it last ran: a request admitted to a free slot takes the one
//! whose sequence shares the longest prefix with its prompt (the keys of `prompt_cache`:
//! tokens, and images by their digest) and prefills only the rest, as llama-server's slots do
//! — the next turn of a chat finds its earlier turns there. A sequence a prompt would
//! overwrite is saved to the engine's prompt cache first (its saved prefixes are shared by
//! the engine's contexts), and a saved prefix matching further is copied back. A prompt
//! starting like the sequence of a running one (a shared system prompt) copies the common
//! prefix from it when that is longer ([`Context::copy_sequence_from`]: rows copied, not
//! shared).
//!
//! [`Parallel::admit_choices`] starts `n` generations of one prompt (OpenAI's `n`): the first
//! sequence prefills it, the others wait for it and then take a copy of its state and pick
//! their first tokens from its logits, each with its own seed.

use std::cell::RefCell;
use std::rc::Rc;

use web_time::Instant;

use crate::model::{BatchInput, Context, KvArena, StepBatch};
use crate::sampling::{StopStrings, TokenLogprob};

mod kv_pool;
mod picks;
mod recovery;

pub use kv_pool::{KvPool, DEFAULT_KV_PAGE};
use picks::PickPool;

use super::generate::{Emitter, HostPicker};
use super::prompt_cache::{live_prefix, prefix_of_rows, PosKey, PromptCache};
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
    /// Picking the sequence's next token failed (its constraint, its sampler), or a step of
    /// its one row did (`recovery.rs`): it left the run; the others go on.
    Failed { id: SeqId, error: EngineError },
}

/// Where one running sequence of a [`Parallel`] run stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotState {
    pub id: SeqId,
    pub prompt_tokens: usize,
    /// Its prompt is being prefilled (no token yet).
    pub prefilling: bool,
    pub generated: usize,
    /// Positions in its KV cache (prompt and generated tokens run so far).
    pub cached: u32,
    /// KV rows its context holds (from the run's pool).
    pub kv_rows: u32,
    /// It was preempted and its rows are being prefilled again.
    pub recomputing: bool,
}

/// Events collected by the sequences' emitters during one call.
type Events = Rc<RefCell<Vec<ParallelEvent>>>;
type OnStep = Box<dyn FnMut(&StepOutput<'_>) -> Option<Wait>>;

/// Sequences decoding together (see the module docs).
pub struct Parallel {
    batch: StepBatch,
    running: Vec<Running>,
    /// Contexts of sequences that left, for the next ones.
    idle: Vec<Idle>,
    next_id: SeqId,
    events: Events,
    slot_rows: u32,
    pool: KvPool,
    preemptions: u64,
    failed_steps: u64,
    /// Whether the sequences that run alone (`recovery.rs`) had the last step.
    alone_turn: bool,
    /// Where the step's sequences pick their tokens (`picks.rs`).
    picks: PickPool,
    /// The slots' KV arena, made with the first context on a GPU while the pool is every
    /// slot's whole context (`kv_pool.rs`); `Err` once it could not be made (over the
    /// binding limit, out of memory) or the pool was made smaller: new contexts then grow
    /// ranges of their own.
    arena: Option<Result<Rc<KvArena>, ()>>,
}

/// A free slot: its context and the keys of the sequence its KV cache holds.
struct Idle {
    ctx: Context,
    live: Vec<PosKey>,
}

/// One running sequence: its context, its prompt's keys, its prompt while that is being
/// prefilled, the token picked and not yet fed, and the host side of its generation.
struct Running {
    id: SeqId,
    /// The sequence whose prompt it waits for (a choice of the same request), not prefilling
    /// its own.
    fork_of: Option<SeqId>,
    /// Whether it may take a prefix from other sequences (not with Llama 3.2 Vision's
    /// images: its text rows depend on them).
    shares: bool,
    ctx: Context,
    keys: Vec<PosKey>,
    prompt: Prompt,
    /// What is left to prefill: the prompt, or after a preemption the prompt and the tokens
    /// fed back (`recompute`: no token is picked at its end).
    prefill: Option<Prompt>,
    recompute: bool,
    /// After a failed step it was in, it runs in steps of its own, its prompt chunks at most
    /// this many rows, until it decodes again (`recovery.rs`).
    alone: Option<u32>,
    /// The failed steps it was in.
    failed: u32,
    token: u32,
    opts: GenerateOptions,
    picker: HostPicker,
    emit: Emitter<OnStep>,
    out: Generation,
    start: Instant,
}

impl Engine {
    /// A run of up to `max_seqs` sequences decoding together on this engine's model: the run
    /// last kept ([`Self::keep_parallel`]) when it was of as many, else a new one.
    pub fn parallel(&mut self, max_seqs: u32) -> Result<Parallel, EngineError> {
        if let Some(run) = self.kept_run.take().filter(|r| r.max_seqs() == max_seqs) {
            return Ok(run);
        }
        let slot_rows = self.ctx.options().max_ctx;
        Ok(Parallel {
            batch: StepBatch::new(&self.dev, &self.decoder, max_seqs, self.ctx.options().max_chunk, self.ctx.precision())?,
            running: Vec::new(),
            idle: Vec::new(),
            next_id: 0,
            events: Rc::default(),
            slot_rows,
            pool: KvPool { rows: max_seqs as u64 * slot_rows as u64, page: DEFAULT_KV_PAGE.min(slot_rows) },
            preemptions: 0,
            failed_steps: 0,
            alone_turn: false,
            picks: PickPool::for_device(&self.dev, max_seqs),
            arena: None,
        })
    }

    /// Keeps `run`, when nothing runs in it, for the next [`Self::parallel`] of as many
    /// sequences: its free slots' sequences stay for the next requests to reuse (as the
    /// engine's own sequence stays for the next prompt), their memory held meanwhile — a run
    /// lasting across calls, as the server's does.
    pub fn keep_parallel(&mut self, run: Parallel) {
        if run.running() == 0 {
            self.kept_run = Some(run);
        }
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

    /// The running sequences in the order admitted: where each stands.
    pub fn slots(&self) -> Vec<SlotState> {
        let mut slots: Vec<SlotState> = self
            .running
            .iter()
            .map(|r| SlotState {
                id: r.id,
                prompt_tokens: r.out.prompt_tokens,
                prefilling: r.prefill.is_some(),
                generated: r.out.tokens.len(),
                cached: r.ctx.n_past(),
                kv_rows: r.ctx.kv_rows(),
                recomputing: r.recompute,
            })
            .collect();
        slots.sort_by_key(|s| s.id);
        slots
    }

    /// Positions the slots' KV caches hold: the running sequences' and those the free slots
    /// keep for the next request.
    pub fn held_tokens(&self) -> usize {
        let running = self.running.iter().map(|r| r.ctx.n_past() as usize);
        running.chain(self.idle.iter().map(|idle| idle.live.len())).sum()
    }

    /// KV rows one slot's sequence may reach (its context's `max_ctx`).
    pub fn slot_rows(&self) -> u32 {
        self.slot_rows
    }

    /// Whether a sequence can join.
    pub fn has_room(&self) -> bool {
        self.free_slots() > 0
    }

    /// Slots free for sequences to join.
    pub fn free_slots(&self) -> usize {
        self.batch.max_seqs() as usize - self.running.len()
    }

    /// Starts generating `opts` from `prompt` on a free slot: checks the request and gives
    /// it the slot; its prompt is prefilled and its first token picked by the next steps
    /// (a request with `max_tokens` 0 ends here: its end is in the events returned). Fails
    /// with [`EngineError::Busy`] when every slot is taken.
    pub async fn admit(
        &mut self,
        engine: &mut Engine,
        prompt: &Prompt,
        opts: &GenerateOptions,
    ) -> Result<(SeqId, Vec<ParallelEvent>), EngineError> {
        let (ids, events) = self.admit_choices(engine, prompt, opts, 1).await?;
        Ok((ids[0], events))
    }

    /// [`Self::admit`] of `n` generations of one prompt (OpenAI's `n`; see the module docs):
    /// choice `i` samples with the request's seed (drawn when it has none) plus `i`. Fails
    /// with [`EngineError::Busy`] unless `n` slots are free, and with
    /// [`EngineError::TooManyChoices`] when the run has fewer (`n` = 0 admits nothing).
    pub async fn admit_choices(
        &mut self,
        engine: &mut Engine,
        prompt: &Prompt,
        opts: &GenerateOptions,
        n: u32,
    ) -> Result<(Vec<SeqId>, Vec<ParallelEvent>), EngineError> {
        engine.check_device()?;
        let admitted = self.admit_on_device(engine, prompt, opts, n);
        admitted.map_err(|e| engine.lost_or(e))
    }

    fn admit_on_device(
        &mut self,
        engine: &mut Engine,
        prompt: &Prompt,
        opts: &GenerateOptions,
        n: u32,
    ) -> Result<(Vec<SeqId>, Vec<ParallelEvent>), EngineError> {
        if n > self.max_seqs() {
            return Err(EngineError::TooManyChoices { n, slots: self.max_seqs() });
        }
        if n as usize > self.free_slots() {
            return Err(EngineError::Busy { running: self.running.len() });
        }
        opts.sampling.validate(engine.decoder.cfg.vocab as usize)?;
        let opts = opts.seeded().into_owned();
        let seed = opts.sampling.seed.unwrap_or_default();
        let (mut ids, mut events, mut leader) = (Vec::new(), Vec::new(), None);
        for i in 0..n {
            let mut choice = opts.clone();
            choice.sampling.seed = Some(seed.wrapping_add(i.into()));
            match self.admit_one(engine, prompt, choice, leader) {
                Ok((id, done)) => {
                    ids.push(id);
                    match done {
                        Some(done) => events.push(done),
                        None => leader = leader.or(Some(id)),
                    }
                }
                Err(e) => {
                    self.drop_admitted(&ids);
                    return Err(e);
                }
            }
        }
        Ok((ids, events))
    }

    /// Admits one sequence (waiting for `fork_of`'s prompt when given): its id, and its end
    /// when it asks for no tokens.
    fn admit_one(
        &mut self,
        engine: &mut Engine,
        prompt: &Prompt,
        opts: GenerateOptions,
        fork_of: Option<SeqId>,
    ) -> Result<(SeqId, Option<ParallelEvent>), EngineError> {
        let stops = StopStrings::new(opts.stop.clone())?;
        let picker = engine.host_picker(&opts, &prompt.tokens)?;
        let keys = PromptCache::keys(prompt, engine.prompt_layout().ok().map(|l| l.fill()));
        // Llama 3.2 Vision: the sequence's own cross-attention store of its images (which
        // its text positions attend to: nothing of another sequence is kept).
        let reuse = engine.vision.as_ref().and_then(|v| v.cross()).is_none() && fork_of.is_none();
        let (mut ctx, mut cached) = self.slot_for(engine, &keys, reuse)?;
        if self.kv_rows_held() + ctx.kv_rows() as u64 > self.pool.rows
            && !self.free_rows(engine, SeqId::MAX, ctx.kv_rows() as u64)?
        {
            // A free slot's rows the pool no longer has (a smaller pool set since).
            ctx.release_kv(&engine.dev)?;
            cached = 0;
        }
        if reuse {
            cached = self.share_prefix(engine, &mut ctx, &keys, cached)?;
        }
        let cross = engine.vision.as_ref().and_then(|v| v.cross());
        let checked =
            ctx.check_prompt(&engine.decoder, &prompt.tokens, engine.placement(prompt)?.as_ref()).map_err(EngineError::from);
        let attached = checked.and_then(|()| cross.map_or(Ok(()), |c| c.attach(&engine.dev, &engine.decoder, &mut ctx, prompt)));
        if let Err(e) = attached {
            ctx.reset();
            self.idle.push(Idle { ctx, live: Vec::new() });
            return Err(e);
        }
        let (id, events) = (self.next_id, self.events.clone());
        self.next_id += 1;
        let on_step: OnStep = Box::new(move |step: &StepOutput<'_>| {
            let (text, logprob) = (step.text.to_string(), step.logprob.cloned());
            events.borrow_mut().push(ParallelEvent::Text { id, text, logprob });
            None
        });
        let emit = engine.emitter(&opts, stops, on_step);
        let out = Generation {
            cached_tokens: cached,
            ..Generation::empty(prompt.tokens.len(), opts.sampling.seed.unwrap_or_default())
        };
        if opts.max_tokens == 0 {
            let live = keys[..cached].to_vec();
            self.idle.push(Idle { ctx, live });
            return Ok((id, Some(ParallelEvent::Done { id, generation: out })));
        }
        let (prefill, start) = (Some(prompt.clone()), Instant::now());
        let (shares, prompt, recompute) = (reuse, prompt.clone(), false);
        self.running.push(Running {
            id,
            fork_of,
            shares,
            ctx,
            keys,
            prompt,
            prefill,
            recompute,
            alone: None,
            failed: 0,
            token: 0,
            opts,
            picker,
            emit,
            out,
            start,
        });
        Ok((id, None))
    }

    /// Takes back the sequences `ids` just admitted (a later choice of theirs failed).
    fn drop_admitted(&mut self, ids: &[SeqId]) {
        let (dropped, kept) = std::mem::take(&mut self.running).into_iter().partition(|r| ids.contains(&r.id));
        self.running = kept;
        for r in dropped {
            self.idle.push(Idle { live: r.live_keys(), ctx: r.ctx });
        }
    }

    /// One step: one batched decode step that feeds every sequence past its prompt its token
    /// and picks its next one, then the next prompt chunks (see the module docs); returns
    /// the text streamed and the generations that ended (their slots are free for the next
    /// admission). A sequence whose prompt or pick fails leaves alone
    /// ([`ParallelEvent::Failed`]); a failed step's sequences are recomputed and then run in
    /// steps of their own (`recovery.rs`): only a lost device fails the call.
    pub async fn step(&mut self, engine: &mut Engine) -> Result<Vec<ParallelEvent>, EngineError> {
        engine.check_device()?;
        let stepped = self.step_on_device(engine).await;
        stepped.map_err(|e| engine.lost_or(e))
    }

    async fn step_on_device(&mut self, engine: &mut Engine) -> Result<Vec<ParallelEvent>, EngineError> {
        self.reserve_decode_rows(engine)?;
        let ends = self.plan_chunks(engine)?;
        self.run_step(engine, &ends).await?;
        Ok(self.events.take())
    }

    /// The batched step: the token of every sequence past its prompt that has a row for it,
    /// and the prompt chunks `ends` names (each sequence and where its chunk ends); then each
    /// sequence picks its next token (a prompt that is done, its first, but a recomputed one,
    /// which goes on with the token it had).
    async fn run_step(&mut self, engine: &mut Engine, ends: &[(SeqId, usize)]) -> Result<(), EngineError> {
        let end_of = |id: SeqId| ends.iter().find(|&&(i, _)| i == id).map(|&(_, end)| end);
        // A sequence the pool had no row for waits for the next step.
        let (mut stepping, waiting): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| end_of(r.id).is_some() || (r.prefill.is_none() && r.ctx.kv_rows() > r.ctx.n_past()));
        self.running = waiting;
        stepping.sort_by_key(|r| r.id);
        let mut stepping = self.take_turn(stepping);
        if stepping.is_empty() {
            return Ok(());
        }
        let rows = stepping.iter().map(|r| end_of(r.id).map_or(1, |end| end - r.ctx.n_past() as usize)).sum();
        let (dev, dec) = (&engine.dev, &engine.decoder);
        let mut ctxs = Vec::with_capacity(stepping.len());
        let mut inputs = Ok(Vec::with_capacity(stepping.len()));
        for r in stepping.iter_mut() {
            let Running { id, ctx, prompt, prefill, recompute, token, .. } = r;
            let input = match (prefill.as_ref(), end_of(*id)) {
                (Some(prefill), Some(end)) => chunk_input(engine, prompt, prefill, *recompute, ctx.n_past() as usize, end),
                _ => Ok(BatchInput::Token(*token)),
            };
            inputs = inputs.and_then(|mut inputs| input.map(|i| inputs.push(i)).map(|()| inputs));
            ctxs.push(ctx);
        }
        let stepped = match inputs {
            Ok(inputs) => self.batch.step(dev, dec, &mut ctxs, inputs).await.map_err(EngineError::from),
            Err(e) => Err(e),
        };
        drop(ctxs);
        let logits = match stepped {
            Ok(logits) => logits,
            Err(e) => return self.recover(engine, stepping, rows, e),
        };
        Parallel::rejoin(&mut stepping);
        let vocab = dec.cfg.vocab as usize;
        let prompt_done = |r: &Running| r.prefill.as_ref().is_some_and(|p| r.ctx.n_past() as usize == p.tokens.len());
        // A sequence past its prompt picks, and one at the end of a prompt not recomputed.
        let pickers =
            stepping.iter_mut().map(|r| (r.prefill.is_none() || prompt_done(r) && !r.recompute).then_some(&mut r.picker));
        let mut picks = self.picks.pick_all(dev, pickers.collect(), &logits, vocab).into_iter();
        for (j, mut r) in stepping.into_iter().enumerate() {
            let picked = match picks.next().flatten() {
                Some(Ok(picked)) => picked,
                Some(Err(e)) => {
                    self.fail(r, e);
                    continue;
                }
                // A prompt with chunks left waits for the next; a recomputed one that is done
                // goes on with the token it had.
                None => {
                    if prompt_done(&r) {
                        (r.prefill, r.recompute) = (None, false);
                    }
                    self.running.push(r);
                    continue;
                }
            };
            if r.prefill.take().is_none() {
                self.take(r, picked).await;
                continue;
            }
            // A prompt that is done: its first token, and the choices waiting for it fork.
            r.out.time_to_first_token = r.start.elapsed().as_secs_f64();
            // Counted in the pool while the choices waiting for it copy its rows.
            let id = r.id;
            self.running.push(r);
            let row = logits.get(j * vocab..(j + 1) * vocab).unwrap_or_default();
            self.fork(engine, id, row).await?;
            let r = self.running.remove(self.running.iter().position(|r| r.id == id).expect("the leader runs"));
            self.take(r, picked).await;
        }
        Ok(())
    }

    /// Reserves, oldest first, the row each decoding sequence's next token takes (see
    /// `kv_pool.rs`: an older sequence may preempt newer ones).
    fn reserve_decode_rows(&mut self, engine: &mut Engine) -> Result<(), EngineError> {
        let mut ids: Vec<SeqId> = self.running.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        for id in ids {
            let Some(i) = self.running.iter().position(|r| r.id == id && r.prefill.is_none()) else { continue };
            let mut r = self.running.remove(i);
            let rows = r.ctx.n_past() + 1;
            match self.reserve(engine, id, &mut r.ctx, rows) {
                Ok(_) => self.running.insert(i, r),
                Err(e) => self.fail_on_device(engine, r, e)?,
            }
        }
        Ok(())
    }

    /// The next step's prompt chunks, oldest first, while the step's rows (the decoding
    /// sequences' tokens, then the chunks) fit in one chunk's (at least one prompt row a
    /// step) and the KV pool has their rows: each sequence and where its chunk ends. A
    /// sequence whose rows fail leaves alone, unless the device is lost.
    fn plan_chunks(&mut self, engine: &mut Engine) -> Result<Vec<(SeqId, usize)>, EngineError> {
        // One chunk's rows a step keeps the tiled matmul's tiles full (a chunk and the tokens
        // beside it would start a tile row of their own).
        let decoding = self.running.iter().filter(|r| r.prefill.is_none() && r.ctx.kv_rows() > r.ctx.n_past()).count();
        let mut budget = (engine.ctx.options().max_chunk as usize).saturating_sub(decoding).max(1);
        // Oldest first: a sequence the pool has no rows for stops the newer ones, and an
        // older one may take rows from newer ones (a preempted sequence is older than the
        // prompts admitted after it).
        self.running.sort_by_key(|r| r.id);
        let (mut i, mut ends) = (0, Vec::new());
        while let Some(r) = self.running.get(i).filter(|_| budget > 0) {
            if r.prefill.is_none() || r.fork_of.is_some() {
                i += 1;
                continue;
            }
            let mut r = self.running.remove(i);
            if r.shares && !r.recompute && r.ctx.n_past() as usize == r.out.cached_tokens {
                // Before its first chunk: a prefix another sequence computed since this one
                // joined (requests sent together with one system prompt), or is computing
                // in this step, which it then waits for.
                if self.computes_prefix(&r, &ends) {
                    self.running.insert(i, r);
                    i += 1;
                    continue;
                }
                match self.share_prefix(engine, &mut r.ctx, &r.keys, r.out.cached_tokens) {
                    Ok(cached) => r.out.cached_tokens = cached,
                    Err(e) => {
                        self.fail_on_device(engine, r, e)?;
                        continue;
                    }
                }
            }
            let rows = (r.prefill.as_ref().map_or(0, |p| p.tokens.len()) - r.ctx.n_past() as usize).min(budget);
            let rows = rows.min(r.alone.map_or(usize::MAX, |most| most as usize));
            let end = r.ctx.n_past() as usize + rows;
            match self.reserve(engine, r.id, &mut r.ctx, end as u32) {
                Ok(true) => {
                    budget -= rows;
                    ends.push((r.id, end));
                    self.running.insert(i, r);
                    i += 1;
                }
                Ok(false) => {
                    self.running.insert(i, r);
                    break;
                }
                Err(e) => self.fail_on_device(engine, r, e)?,
            }
        }
        Ok(ends)
    }

    /// The sequences waiting for `leader`'s prompt, which is done, take a copy of its state
    /// and pick their first tokens from its `logits`, one at a time (each counted in the
    /// pool but while it takes its rows).
    async fn fork(&mut self, engine: &mut Engine, leader: SeqId, logits: &[f32]) -> Result<(), EngineError> {
        while let Some(i) = self.running.iter().position(|r| r.fork_of == Some(leader)) {
            let mut r = self.running.remove(i);
            r.fork_of = None;
            let rows = self.running.iter().find(|l| l.id == leader).expect("the leader runs").ctx.n_past();
            let copied = match self.reserve(engine, r.id, &mut r.ctx, rows) {
                Ok(true) => {
                    let leader = &self.running.iter().find(|l| l.id == leader).expect("the leader runs").ctx;
                    r.ctx.copy_sequence_from(&engine.dev, leader, rows).map(|()| true).map_err(EngineError::from)
                }
                reserved => reserved,
            };
            match copied {
                Ok(true) => {}
                // No rows for a copy: it prefills the prompt itself (to the same logits).
                Ok(false) => {
                    self.running.insert(i, r);
                    continue;
                }
                Err(e) => {
                    self.fail_on_device(engine, r, e)?;
                    continue;
                }
            }
            r.prefill = None;
            r.out.cached_tokens = r.out.prompt_tokens;
            r.out.time_to_first_token = r.start.elapsed().as_secs_f64();
            match r.picker.mask().and_then(|mask| r.picker.pick(logits, mask.as_deref())) {
                Ok(picked) => self.take(r, picked).await,
                Err(e) => self.fail(r, e),
            }
        }
        Ok(())
    }

    /// `id` leaves before its prompt is done: the sequences waiting for it wait for the first
    /// of them instead, which prefills the prompt itself.
    fn release_forks(&mut self, id: SeqId) {
        let mut waiting = self.running.iter_mut().filter(|r| r.fork_of == Some(id));
        let Some(first) = waiting.next() else { return };
        first.fork_of = None;
        let first = first.id;
        waiting.for_each(|r| r.fork_of = Some(first));
    }

    /// Ends sequence `id` now ([`FinishReason::Abort`]): its generation so far, or `None`
    /// when it is not running. Its slot is free for the next admission.
    pub async fn cancel(&mut self, id: SeqId) -> Result<Option<Generation>, EngineError> {
        let Some(i) = self.running.iter().position(|r| r.id == id) else { return Ok(None) };
        let r = self.running.remove(i);
        self.finish(r, FinishReason::Abort).await;
        match self.events.take().pop() {
            Some(ParallelEvent::Done { generation, .. }) => Ok(Some(generation)),
            Some(ParallelEvent::Failed { error, .. }) => Err(error),
            _ => unreachable!("a finished sequence reports its end"),
        }
    }

    /// Keeps the token picked for `r` (streamed as text) and runs it on, or ends it.
    async fn take(&mut self, mut r: Running, picked: (u32, Option<TokenLogprob>)) {
        r.token = picked.0;
        match r.picker.keep(&mut r.emit, &mut r.out, &r.opts, &r.ctx, picked).await {
            Ok(None) => self.running.push(r),
            Ok(Some(finish)) => self.finish(r, finish).await,
            Err(e) => self.fail(r, e),
        }
    }

    /// A free slot's context for a prompt with `keys`, and the positions of it kept: the
    /// slot whose sequence shares the longest prefix, else a new context; then (unless
    /// `reuse` is off: nothing kept) the engine's prompt cache saves the slot's sequence if
    /// the prompt would overwrite a part worth keeping, and copies back a saved prefix that
    /// matches further (when the KV pool has the prompt's rows).
    fn slot_for(&mut self, engine: &mut Engine, keys: &[PosKey], reuse: bool) -> Result<(Context, usize), EngineError> {
        let best = self.idle.iter().enumerate().max_by_key(|(_, idle)| live_prefix(&idle.live, keys, &idle.ctx));
        let (mut ctx, live) = match best.map(|(i, _)| i) {
            Some(i) => {
                let idle = self.idle.swap_remove(i);
                (idle.ctx, idle.live)
            }
            None => (self.new_context(engine)?, Vec::new()),
        };
        // The prompt's rows, taken now from the pool (from free slots only) so that a prefix
        // copied back from the prompt cache fits it.
        if !reuse || !self.reserve(engine, SeqId::MAX, &mut ctx, keys.len() as u32)? {
            ctx.reset();
            return Ok((ctx, 0));
        }
        let cached = engine.prompt_cache.reuse_in(&engine.dev, &mut ctx, live, keys)?;
        Ok((ctx, cached))
    }

    /// Whether a prompt chunk of `ends` (this step's so far) computes more of `r`'s prompt
    /// than `r` holds.
    fn computes_prefix(&self, r: &Running, ends: &[(SeqId, usize)]) -> bool {
        let planned = ends.iter().filter_map(|&(id, end)| Some((self.running.iter().find(|o| o.id == id && !o.recompute)?, end)));
        planned.map(|(o, end)| prefix_of_rows(&o.keys, &r.keys, end, o.ctx.has_recurrent())).any(|n| n > r.ctx.n_past() as usize)
    }

    /// Copies into `ctx`, which holds `cached` positions of a prompt with `keys`, the longest
    /// prefix of them a running sequence holds when that is longer and the KV pool has its
    /// rows without preempting anyone; returns the positions `ctx` then holds.
    fn share_prefix(
        &mut self,
        engine: &mut Engine,
        ctx: &mut Context,
        keys: &[PosKey],
        cached: usize,
    ) -> Result<usize, EngineError> {
        let prefixes = self.running.iter().enumerate().map(|(i, r)| (live_prefix(&r.live_keys(), keys, &r.ctx), i));
        match prefixes.max_by_key(|&(n, _)| n) {
            Some((n, i)) if n > cached && self.reserve(engine, SeqId::MAX, ctx, n as u32)? => {
                ctx.copy_sequence_from(&engine.dev, &self.running[i].ctx, n as u32)?;
                Ok(ctx.n_past() as usize)
            }
            _ => Ok(cached),
        }
    }

    /// Flushes `r`'s held-back text and reports its generation; frees its slot, which keeps
    /// the sequence its cache holds (the prompt and the tokens fed back: not the last).
    async fn finish(&mut self, r: Running, finish: FinishReason) {
        self.release_forks(r.id);
        let live = r.live_keys();
        let Running { id, ctx, emit, mut out, picker, start, .. } = r;
        out.finish = finish;
        let event = match emit.finish(&mut out).await {
            Ok(()) => {
                out.decode_seconds = start.elapsed().as_secs_f64() - out.time_to_first_token;
                out.mask_seconds = picker.mask_seconds;
                ParallelEvent::Done { id, generation: out }
            }
            Err(error) => ParallelEvent::Failed { id, error },
        };
        self.events.borrow_mut().push(event);
        self.idle.push(Idle { ctx, live });
    }

    /// `r` failed on the device: it leaves alone, unless the device is lost (which fails the
    /// call).
    fn fail_on_device(&mut self, engine: &Engine, r: Running, error: EngineError) -> Result<(), EngineError> {
        let error = engine.lost_or(error);
        engine.check_device()?;
        self.fail(r, error);
        Ok(())
    }

    /// Reports `r`'s failure; frees its slot (keeping nothing of its sequence).
    fn fail(&mut self, mut r: Running, error: EngineError) {
        self.release_forks(r.id);
        self.events.borrow_mut().push(ParallelEvent::Failed { id: r.id, error });
        r.ctx.reset();
        self.idle.push(Idle { ctx: r.ctx, live: Vec::new() });
    }
}

impl Running {
    /// The keys of the positions its cache holds: the prompt's run so far, then the tokens
    /// fed back (not the last picked).
    fn live_keys(&self) -> Vec<PosKey> {
        let n_past = self.ctx.n_past() as usize;
        let fed = n_past.saturating_sub(self.keys.len()).min(self.out.tokens.len());
        let prompt = self.keys[..n_past.min(self.keys.len())].iter().cloned();
        prompt.chain(self.out.tokens[..fed].iter().map(|&t| PosKey::Token(t))).collect()
    }
}

/// The input of a batched step that runs `prefill.tokens[n_past..end]`: the prompt with its
/// images, or for a recomputed sequence, its prompt's rows with their images, then the tokens
/// it was fed, as text whatever their ids (an image placeholder the model picked is no image)
/// and in chunks of their own.
fn chunk_input<'p>(
    engine: &'p Engine,
    prompt: &'p Prompt,
    prefill: &'p Prompt,
    recompute: bool,
    n_past: usize,
    end: usize,
) -> Result<BatchInput<'p>, EngineError> {
    let text_from = prompt.tokens.len();
    Ok(match recompute {
        true if n_past >= text_from => BatchInput::Chunk { tokens: &prefill.tokens, end, images: None },
        true => {
            BatchInput::Chunk { tokens: &prefill.tokens[..text_from], end: end.min(text_from), images: engine.placement(prompt)? }
        }
        false => BatchInput::Chunk { tokens: &prefill.tokens, end, images: engine.placement(prefill)? },
    })
}
