//! A sequence being run by one [`Decoder`]: the step buffers ([`StepBuffers`]), the family's
//! scratch, the sequence state ([`SequenceState`]: KV caches), the step uniform, the sampler
//! and the recorded programs of each step shape. Everything is allocated once here; a decode
//! step only writes the step uniform and the sampler state, submits one command buffer and
//! copies its 4-byte token id to a readback buffer.
//!
//! Decoding is pipelined: the sampled id stays on the GPU (`ids[0]`, which the next step's
//! embedding gather reads), so [`Context::submit_decode`] can submit step n+1 before
//! [`Context::read_next_token`] awaits step n's id. Each step in flight has its own readback
//! buffer (two in steady state), mapped right after its submit; reading one waits for its
//! own submission only. A step submitted past the end of generation (the host learns of an
//! end-of-generation token or a stop string one step late) is dropped with
//! [`Context::drop_last_step`]: its KV entry is forgotten and overwritten later.
//!
//! Decoders with multimodal RoPE ([`Decoder::uses_mrope`]) get every step's (t, h, w)
//! positions written to [`StepBuffers::positions`]: a prompt's from its tokens and images
//! (`super::positions`), a decode step's from its row and the sequence's [`RopeDeltas`]
//! (carried by truncation and snapshots).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::gpu::{Caps, GpuError, Readback, Result as GpuResult};
use crate::backend::{Buffer, Device, Program};
use crate::kernels::attention::StepParams;
use crate::kernels::sample::SamplerState;

use super::decoder::Decoder;
use super::families::Scratch;
use super::kv_arena::{ArenaSlot, KvArena};
use super::positions::{PassPositions, RopeDeltas};
use super::rows::{Rows, Seq};
use super::state::{LayerKind, SequenceState, StateSnapshot};
use super::step::{LogitsMode, Precision, StepBuffers};
use super::vision::PromptImages;
use super::ModelError;

/// Context sizes and precision.
#[derive(Clone, Copy, Debug)]
pub struct ContextOptions {
    /// Most tokens the KV cache holds.
    pub max_ctx: u32,
    /// Most tokens per prefill chunk.
    pub max_chunk: u32,
    pub precision: Precision,
}

impl Default for ContextOptions {
    /// Adapter-independent defaults (tests): 2048 tokens, chunks of 128, the f16 KV cache.
    fn default() -> Self {
        ContextOptions { max_ctx: 2048, max_chunk: 128, precision: Precision::default() }
    }
}

impl ContextOptions {
    /// What users get on this adapter: its prefill chunk ([`Caps::prefill_chunk`]) and
    /// precision ([`Precision::for_adapter`]).
    pub fn for_adapter(caps: &Caps) -> ContextOptions {
        ContextOptions { max_chunk: caps.prefill_chunk, precision: Precision::for_adapter(caps), ..Default::default() }
    }
}

/// The two recorded programs of one step shape: the embedding gather, then the rest.
pub(super) struct StepPrograms {
    pub(super) embed: Program,
    pub(super) body: Program,
}

/// A sequence being processed by one [`Decoder`].
pub struct Context {
    opts: ContextOptions,
    /// Rows the KV caches grow by when a step needs more than they hold.
    kv_page: u32,
    /// Rows of logits one pass can write: a full chunk, within the binding limit.
    logits_rows: u32,
    b: StepBuffers,
    scratch: Scratch,
    state: SequenceState,
    programs: HashMap<(u32, LogitsMode), StepPrograms>,
    /// Submitted steps whose sampled token is not read yet, oldest first.
    in_flight: VecDeque<InFlight>,
    /// Token readbacks not in use (reused, so steady-state decode allocates nothing).
    spare: Vec<Readback>,
    /// The logits row's staging buffer, made on the first [`Context::read_logits`] and kept
    /// (constrained decoding and logprobs read a row every token).
    logits_readback: Option<Readback>,
    /// Tokens already in the KV cache.
    n_past: u32,
    /// Tokens the recurrent layers' state has consumed (equal to `n_past` but after
    /// [`Self::drop_last_step`] of a step without a checkpoint). See
    /// [`Self::sync_recurrent`].
    rec_pos: u32,
    /// Position id of cache row 0 (tests start sequences at large positions).
    pos_offset: u32,
    /// How the RoPE positions of text after images depart from the rows (M-RoPE decoders).
    deltas: RopeDeltas,
    /// Submits and bytes read back so far, for benchmarks.
    counters: Counters,
    /// This context among all (process-wide), and a count of the times its recorded steps
    /// were dropped because the buffers they bind changed: together, the key of a batched
    /// step recorded against it.
    id: u64,
    epoch: u64,
}

/// The next [`Context`]'s id.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A submitted step whose sampled token id is being copied to `readback`.
struct InFlight {
    readback: Readback,
    /// Tokens the step appended to the cache.
    tokens: u32,
    /// The recurrent states' checkpoint holds the state from before this step (it is the
    /// newest step that took one): dropping it can restore them.
    checkpoint: bool,
}

/// What a context has sent to and read from the GPU (`webvlm bench` reports per-token deltas).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Command-buffer submits.
    pub submits: u64,
    /// Bytes copied back to the host.
    pub read_back_bytes: u64,
    /// Token or logits reads awaited while no later step was submitted: the GPU idles until
    /// the host submits again. Pipelined decode adds none in steady state.
    pub host_waits: u64,
}

impl Context {
    /// A context holding all `max_ctx` KV rows from the start, and logits for a whole chunk.
    pub fn new(dev: &Device, dec: &Decoder, opts: ContextOptions) -> GpuResult<Context> {
        Context::with_buffers(dev, dec, opts, (opts.max_ctx.max(1), opts.max_ctx.max(1)), u32::MAX, None)
    }

    /// A context holding `rows` KV rows, which grows by pages of `page` rows when it must
    /// hold more (up to `max_ctx`), and logits for one row: the contexts of a batched run,
    /// whose rows come from one pool ([`Self::reserve_kv`], [`Self::release_kv`]) and which
    /// read their prompts' last logits only ([`Self::logits`] runs a token per pass).
    pub fn paged(dev: &Device, dec: &Decoder, opts: ContextOptions, page: u32, rows: u32) -> GpuResult<Context> {
        Context::with_buffers(dev, dec, opts, (page, rows), 1, None)
    }

    /// A context whose KV caches are a free slot's range of `arena` (made for contexts of
    /// `opts`: slots of `max_ctx` rows in its precision's cache type), logits for one row:
    /// the contexts of a batched run whose steps run the sequences' attention together
    /// (`super::kv_arena`). `None` when every slot is taken.
    pub fn in_arena(dev: &Device, dec: &Decoder, opts: ContextOptions, arena: &Rc<KvArena>) -> GpuResult<Option<Context>> {
        let kv = precision_on(dev, opts).kv_dtype();
        if arena.rows() != opts.max_ctx.max(1) || arena.kv_dtype() != kv {
            let (rows, theirs) = (arena.rows(), arena.kv_dtype());
            return Err(GpuError::Shape(format!(
                "an arena of {rows} {theirs:?} rows per slot for contexts of {} {kv:?}",
                opts.max_ctx
            )));
        }
        let Some(slot) = arena.take_slot() else { return Ok(None) };
        Context::with_buffers(dev, dec, opts, (opts.max_ctx, opts.max_ctx), 1, Some(slot)).map(Some)
    }

    /// The KV arena for `slots` contexts of `opts` ([`Self::in_arena`]).
    pub fn arena(dev: &Device, dec: &Decoder, opts: ContextOptions, slots: u32) -> GpuResult<Rc<KvArena>> {
        let kv_dims: Vec<_> = dec.layers().iter().map(LayerKind::kv_dim).collect();
        KvArena::new(dev, &kv_dims, slots, opts.max_ctx.max(1), precision_on(dev, opts).kv_dtype())
    }

    fn with_buffers(
        dev: &Device,
        dec: &Decoder,
        opts: ContextOptions,
        (page, rows): (u32, u32),
        logits_rows: u32,
        slot: Option<ArenaSlot>,
    ) -> GpuResult<Context> {
        // A chunk longer than the context is never used; zero sizes would be meaningless.
        let opts =
            ContextOptions { max_ctx: opts.max_ctx.max(1), max_chunk: opts.max_chunk.clamp(1, opts.max_ctx.max(1)), ..opts };
        let precision = precision_on(dev, opts);
        let c = &dec.cfg;
        let row_limit = dev.caps().max_storage_binding.min(256 << 20) / (4 * c.vocab as u64);
        let logits_rows = (opts.max_chunk as u64).min(row_limit).min(logits_rows as u64).max(1) as u32;
        let b = StepBuffers::new(dev, opts.max_chunk, c.n_embd, c.vocab, logits_rows, precision)?;
        let scratch = dec.scratch(dev, opts.max_chunk, opts.max_ctx, 1)?;
        let state = match slot {
            Some(slot) => SequenceState::in_arena(dev, &dec.layers(), slot)?,
            None => SequenceState::new(dev, &dec.layers(), rows.min(opts.max_ctx), precision.kv_dtype())?,
        };
        Ok(Context {
            opts,
            kv_page: page.clamp(1, opts.max_ctx),
            logits_rows,
            b,
            scratch,
            state,
            programs: HashMap::new(),
            in_flight: VecDeque::new(),
            spare: Vec::new(),
            logits_readback: None,
            n_past: 0,
            rec_pos: 0,
            pos_offset: 0,
            deltas: RopeDeltas::default(),
            counters: Counters::default(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            epoch: 0,
        })
    }

    /// Gives the sequence images for a cross-attention decoder (Mllama): `states` is
    /// `[n_tiles * tile_keys][n_embd]` f32 (the projected vision output, `max_tiles` tiles per
    /// image, image after image), `mask` the dense `[tokens][n_tiles]` tile mask of the
    /// prompt from its first token (`mllama::processor_mask`; later positions repeat its last
    /// row). Keys and values are computed here, once; [`Self::reset`] drops them.
    pub fn set_cross_attention(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        states: &Buffer,
        n_tiles: u32,
        mask: &[u32],
    ) -> Result<(), ModelError> {
        self.forget_in_flight();
        dec.set_cross(dev, &mut self.scratch, states, n_tiles, mask)?;
        // The recorded steps bind the store's buffers and tile count.
        self.drop_programs();
        Ok(())
    }

    /// Forgets the sequence (the cache is overwritten by the next tokens).
    pub fn reset(&mut self) {
        self.forget_in_flight();
        if self.scratch.has_cross() {
            self.scratch.clear_cross();
            self.drop_programs();
        }
        self.n_past = 0;
        self.rec_pos = 0;
        self.deltas = RopeDeltas::default();
    }

    /// Keeps only the first `n` cached tokens (a prompt-cache hit: the next prefill starts
    /// there). A decoder with recurrent layers cannot rewind them: unless `n` is where their
    /// state stands, the whole sequence is forgotten ([`Self::n_past`] tells what was kept).
    pub fn truncate(&mut self, n: u32) {
        self.forget_in_flight();
        self.n_past = self.n_past.min(n);
        self.sync_recurrent();
        self.deltas.truncate(self.n_past);
    }

    /// Recurrent states hold a summary of every token they consumed and cannot be rewound:
    /// when the cached length is not where they stand (a pipelined decode's surplus step was
    /// dropped, or the cache was cut), nothing of the sequence is reusable, so it starts over
    /// (the next step at position 0 zeroes the states). A no-op without recurrent layers.
    ///
    /// Design note: the pipelined decode loop (`engine::generate`) submits one step past the
    /// last token it keeps. Every one-token sampled step of a hybrid decoder first copies the
    /// recurrent states to a checkpoint (on the GPU, in the step's own command buffer: about
    /// 50 MiB per token for the 9B, small next to its weights), so [`Self::drop_last_step`]
    /// undoes that step exactly and the next turn reuses the cache; other rewinds start over.
    fn sync_recurrent(&mut self) {
        if self.state.has_recurrent() && self.rec_pos != self.n_past {
            self.n_past = 0;
            self.rec_pos = 0;
        }
    }

    /// Whether the sequence state has recurrent layers (which restore only where they stand).
    pub fn has_recurrent(&self) -> bool {
        self.state.has_recurrent()
    }

    /// Tokens in the cache.
    pub fn n_past(&self) -> u32 {
        self.n_past
    }

    pub fn max_ctx(&self) -> u32 {
        self.opts.max_ctx
    }

    /// Positions the KV caches have room for now (`max_ctx` but for a [`Self::paged`]
    /// context).
    pub fn kv_rows(&self) -> u32 {
        self.state.rows()
    }

    /// Makes room for `rows` positions (at most `max_ctx`), growing the KV caches to the
    /// next whole page: new buffers, the cached positions copied over, the recorded steps
    /// dropped. Steps grow a paged context themselves; a pool reserves ahead of them.
    pub fn reserve_kv(&mut self, dev: &Device, rows: u32) -> GpuResult<()> {
        let grown = self.kv_rows_for(rows);
        if grown > self.kv_rows() {
            self.resize_kv(dev, grown)?;
        }
        Ok(())
    }

    /// The rows [`Self::reserve_kv`] of `rows` leaves the caches with.
    pub fn kv_rows_for(&self, rows: u32) -> u32 {
        match rows.min(self.opts.max_ctx) {
            rows if rows <= self.kv_rows() => self.kv_rows(),
            rows => rows.next_multiple_of(self.kv_page).min(self.opts.max_ctx),
        }
    }

    /// Forgets the cached positions and gives back every KV row (a sequence preempted by a
    /// pool: it is recomputed later). Llama 3.2 Vision's cross-attention store stays.
    /// A context in an arena keeps its range (the arena holds it).
    pub fn release_kv(&mut self, dev: &Device) -> GpuResult<()> {
        self.forget_in_flight();
        self.n_past = 0;
        self.rec_pos = 0;
        self.deltas = RopeDeltas::default();
        match self.state.arena_slot() {
            Some(_) => Ok(()),
            None => self.resize_kv(dev, 0),
        }
    }

    /// The arena slot whose range the KV caches are ([`Self::in_arena`]).
    pub fn arena_slot(&self) -> Option<&ArenaSlot> {
        self.state.arena_slot()
    }

    fn resize_kv(&mut self, dev: &Device, rows: u32) -> GpuResult<()> {
        self.state = self.state.resized(dev, rows, self.n_past)?;
        self.counters.submits += 1;
        self.drop_programs();
        Ok(())
    }

    /// The sizes and precision asked for (what a context alike is made with).
    pub fn options(&self) -> ContextOptions {
        self.opts
    }

    /// The precision in effect.
    pub fn precision(&self) -> Precision {
        self.b.precision
    }

    /// Bytes of the sequence state (all layers' KV caches).
    pub fn state_bytes(&self) -> u64 {
        self.state.bytes()
    }

    /// Bytes of the cross-attention store (Mllama's image keys, values and mask rows; 0
    /// without images).
    pub fn cross_attention_bytes(&self) -> u64 {
        self.scratch.cross_bytes()
    }

    /// Bytes one cached position takes in all layers' state.
    pub fn state_bytes_per_token(&self) -> u64 {
        self.state.bytes_per_position()
    }

    /// Copies the first `rows` cached positions (at most those in the cache) to new buffers.
    /// With recurrent layers only the whole sequence can be saved (their state is valid at its
    /// end only): asked for fewer rows, the snapshot holds none.
    pub fn save_state(&mut self, dev: &Device, rows: u32) -> GpuResult<StateSnapshot> {
        let rows = self.copyable_rows(rows);
        let mut snapshot = self.state.snapshot(dev, rows)?;
        snapshot.rope_deltas = self.deltas.prefix(rows);
        self.counters.submits += 1;
        Ok(snapshot)
    }

    /// Of the first `rows` cached positions, those a copy can take: at most those in the
    /// cache; with recurrent layers all of them or none (their state is valid at the
    /// sequence's end only).
    fn copyable_rows(&self, rows: u32) -> u32 {
        let rows = rows.min(self.n_past);
        match self.state.has_recurrent() && (rows != self.n_past || self.rec_pos != self.n_past) {
            true => 0,
            false => rows,
        }
    }

    /// Puts the first `rows` positions of `snapshot` back; the cache then holds those (with
    /// recurrent layers, all of the snapshot's positions or none: see [`Self::n_past`]).
    pub fn restore_state(&mut self, dev: &Device, snapshot: &StateSnapshot, rows: u32) -> GpuResult<()> {
        self.forget_in_flight();
        self.n_past = 0;
        self.reserve_kv(dev, rows.min(snapshot.rows()))?;
        self.n_past = self.state.restore(dev, snapshot, rows)?;
        self.rec_pos = self.n_past;
        self.deltas = snapshot.rope_deltas.prefix(self.n_past);
        self.counters.submits += 1;
        Ok(())
    }

    /// Makes this context hold the first `rows` positions of `other`'s sequence (a context
    /// made with the same options), copied on the device: a prefix another sequence already
    /// computed. With recurrent layers only `other`'s whole sequence can be taken (fewer rows
    /// take nothing: see [`Self::n_past`]).
    pub fn copy_sequence_from(&mut self, dev: &Device, other: &Context, rows: u32) -> GpuResult<()> {
        self.forget_in_flight();
        let rows = other.copyable_rows(rows);
        if rows > 0 {
            // The rows held now are overwritten: none to carry into grown caches.
            self.n_past = 0;
            self.reserve_kv(dev, rows)?;
            self.state.copy_from(dev, &other.state, rows)?;
            self.counters.submits += 1;
        }
        self.n_past = rows;
        self.rec_pos = rows;
        self.deltas = other.deltas.prefix(rows);
        Ok(())
    }

    /// Starts the sequence's position ids at `offset` (for tests of long-context RoPE).
    pub fn set_position_offset(&mut self, offset: u32) {
        self.pos_offset = offset;
    }

    /// Teacher-forced logits of every token, appended to the cached sequence,
    /// `[tokens.len()][vocab]` row-major.
    pub async fn logits(&mut self, dev: &Device, dec: &Decoder, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.logits_with_images(dev, dec, tokens, None).await
    }

    /// [`Context::logits`] with image features at the prompt's `[IMG]` positions.
    pub async fn logits_with_images(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        tokens: &[u32],
        images: Option<&PromptImages<'_>>,
    ) -> Result<Vec<f32>, ModelError> {
        self.check(dec, tokens, 0, images)?;
        let pass = self.pass_positions(dec, tokens, self.n_past, images)?;
        let vocab = dec.cfg.vocab as usize;
        let mut out = Vec::with_capacity(tokens.len() * vocab);
        let chunk = self.opts.max_chunk.min(self.logits_rows) as usize;
        for start in (0..tokens.len()).step_by(chunk) {
            let len = chunk.min(tokens.len() - start);
            self.run(dev, dec, tokens, start..start + len, (images, pass.as_ref()), LogitsMode::All, false)?;
            out.extend(dev.read_f32(&self.b.logits, 0, len * vocab).await?);
            self.counters.submits += 1;
            self.counters.read_back_bytes += (len * vocab * 4) as u64;
            self.counters.host_waits += 1;
        }
        Ok(out)
    }

    /// Processes the prompt and returns the first generated token.
    pub async fn prefill(&mut self, dev: &Device, dec: &Decoder, tokens: &[u32], s: &SamplerState) -> Result<u32, ModelError> {
        self.prefill_with_images(dev, dec, tokens, None, s).await
    }

    /// Processes the prompt `tokens` (with image features at its `[IMG]` positions) of
    /// which the cache already holds the first [`Self::n_past`], and returns the first
    /// generated token, chosen on the GPU.
    pub async fn prefill_with_images(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        tokens: &[u32],
        images: Option<&PromptImages<'_>>,
        s: &SamplerState,
    ) -> Result<u32, ModelError> {
        self.submit_prompt_sampled(dev, dec, tokens, images, s)?;
        self.read_next_token(dev).await
    }

    /// Submits the prefill of `tokens[n_past..]` (as [`Self::prefill_with_images`]) with the
    /// GPU's choice of the first generated token, and returns at once: the token comes from
    /// [`Self::read_next_token`], and [`Self::submit_decode`] may feed it before that. Steps
    /// still in flight from an earlier sequence are forgotten.
    pub fn submit_prompt_sampled(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        tokens: &[u32],
        images: Option<&PromptImages<'_>>,
        s: &SamplerState,
    ) -> Result<(), ModelError> {
        self.set_sampler(dev, s)?;
        self.submit_prefill(dev, dec, tokens, images, true)
    }

    /// Feeds the last sampled token (already on the GPU) and returns the oldest token not
    /// read yet: with no step in flight before, the one this step samples. Synchronous:
    /// the GPU idles while the host reads (the generation loop uses [`Self::submit_decode`]).
    pub async fn decode(&mut self, dev: &Device, dec: &Decoder, s: &SamplerState) -> Result<u32, ModelError> {
        self.submit_decode(dev, dec, s)?;
        self.read_next_token(dev).await
    }

    /// Submits the decode step that feeds the last sampled token (still on the GPU, possibly
    /// not computed yet) and samples the next one with `s`, and returns at once; its token
    /// comes from [`Self::read_next_token`] after those of the steps submitted before it.
    pub fn submit_decode(&mut self, dev: &Device, dec: &Decoder, s: &SamplerState) -> Result<(), ModelError> {
        self.check_room(1)?;
        self.set_sampler(dev, s)?;
        self.submit(dev, dec, 1, LogitsMode::LastAndSample, &[], None, true)
    }

    /// Awaits the token of the oldest submitted step not read yet (waiting for that step's
    /// submission only, not for later ones). Counts a host wait when no later step is
    /// submitted.
    pub async fn read_next_token(&mut self, dev: &Device) -> Result<u32, ModelError> {
        let Some(mut step) = self.in_flight.pop_front() else {
            return Err(GpuError::Readback("no submitted step has a token to read".into()).into());
        };
        if self.in_flight.is_empty() {
            self.counters.host_waits += 1;
        }
        let bytes = step.readback.read(dev.gpu()?).await;
        self.spare.push(step.readback);
        let bytes = bytes?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Steps submitted whose token is not read yet.
    pub fn steps_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Drops the newest submitted step whose token is not read yet (generation ended before
    /// its token was needed): its tokens leave the cache (their KV entries are overwritten
    /// later) and its token is never read. Recurrent states are put back from the checkpoint
    /// taken before a one-token sampled step (the pipelined decode's surplus step); for any
    /// other step they keep its tokens (see [`Self::sync_recurrent`]: the next prompt starts
    /// over). Returns whether there was one.
    pub fn drop_last_step(&mut self, dev: &Device) -> GpuResult<bool> {
        let Some(mut step) = self.in_flight.pop_back() else { return Ok(false) };
        step.readback.cancel();
        self.spare.push(step.readback);
        self.n_past -= step.tokens;
        self.deltas.truncate(self.n_past);
        if step.checkpoint {
            self.state.restore_checkpoint(dev)?;
            self.rec_pos = self.n_past;
            self.counters.submits += 1;
        }
        Ok(true)
    }

    /// Submits the prefill of `tokens[n_past..]` (as [`Self::prefill_with_images`]) and
    /// returns at once; the host picks the first token from [`Self::read_logits`], so it
    /// can work while the GPU computes.
    pub fn submit_prompt(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        tokens: &[u32],
        images: Option<&PromptImages<'_>>,
    ) -> Result<(), ModelError> {
        self.submit_prefill(dev, dec, tokens, images, false)
    }

    /// Submits the decode step that feeds `token` (picked by the host) and returns at once;
    /// its logits come from [`Self::read_logits`].
    pub fn submit_token(&mut self, dev: &Device, dec: &Decoder, token: u32) -> Result<(), ModelError> {
        self.check_room(1)?;
        if token >= dec.cfg.vocab {
            return Err(ModelError::BadToken { id: token, vocab: dec.cfg.vocab });
        }
        dev.write(&self.b.ids, 0, &token.to_le_bytes())?;
        self.submit(dev, dec, 1, LogitsMode::LastAndSample, &[], None, false)
    }

    /// Writes the GPU sampler's settings for the next sampled step (the CPU has none: it
    /// samples on the host).
    fn set_sampler(&self, dev: &Device, s: &SamplerState) -> GpuResult<()> {
        match &self.b.sampler {
            Some(sampler) => sampler.set(dev, s),
            None => Err(GpuError::CpuUnsupported("sampling on the device")),
        }
    }

    /// The logits row of the last submitted step's last token.
    pub async fn read_logits(&mut self, dev: &Device, dec: &Decoder) -> Result<Vec<f32>, ModelError> {
        let bytes = dec.cfg.vocab as u64 * 4;
        self.counters.read_back_bytes += bytes;
        self.counters.host_waits += 1;
        let bytes = match dev {
            Device::Gpu(gpu) => {
                let readback = self.logits_readback.get_or_insert_with(|| Readback::new(gpu, bytes));
                gpu.read_with(readback, self.b.logits.gpu()?, 0, bytes).await?
            }
            Device::Cpu(_) => dev.read(&self.b.logits, 0, bytes).await?,
        };
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Submits `tokens[n_past..]` in chunks, the last one with its logits (and the GPU's
    /// choice of the next token, read back when `read_token`).
    fn submit_prefill(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        tokens: &[u32],
        images: Option<&PromptImages<'_>>,
        read_token: bool,
    ) -> Result<(), ModelError> {
        let (start, pass) = self.submit_chunks(dev, dec, tokens, tokens.len(), images)?;
        let last = start..tokens.len();
        self.run(dev, dec, tokens, last, (images, pass.as_ref()), LogitsMode::LastAndSample, read_token)
    }

    /// Submits `tokens[n_past..end]` without logits, so that the sequence state can be saved
    /// at `end` (a turn boundary of the prompt: see `engine::prompt_cache`) before the rest
    /// of `tokens` is prefilled.
    pub fn submit_prefix(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        tokens: &[u32],
        end: usize,
        images: Option<&PromptImages<'_>>,
    ) -> Result<(), ModelError> {
        let (start, pass) = self.submit_chunks(dev, dec, tokens, end, images)?;
        if start < end {
            self.run(dev, dec, tokens, start..end, (images, pass.as_ref()), LogitsMode::None, false)?;
        }
        Ok(())
    }

    /// Checks `tokens` and submits whole chunks without logits from `n_past` while more than
    /// a chunk is left before `end` (<= `tokens.len()`); returns where they stopped, at most
    /// a chunk before `end`, and the prompt's M-RoPE positions for the rest.
    fn submit_chunks(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        tokens: &[u32],
        end: usize,
        images: Option<&PromptImages<'_>>,
    ) -> Result<(usize, Option<PassPositions>), ModelError> {
        self.forget_in_flight();
        self.sync_recurrent();
        let mut start = self.n_past as usize;
        self.check(dec, tokens, start, images)?;
        // The prompt starts at row 0: its positions come from its own tokens and images.
        let pass = self.pass_positions(dec, tokens, 0, images)?;
        let chunk = self.opts.max_chunk as usize;
        while end.saturating_sub(start) > chunk {
            self.run(dev, dec, tokens, start..start + chunk, (images, pass.as_ref()), LogitsMode::None, false)?;
            start += chunk;
        }
        Ok((start, pass))
    }

    fn check_room(&self, n: u64) -> Result<(), ModelError> {
        let needed = self.n_past as u64 + n;
        if needed > self.opts.max_ctx as u64 {
            return Err(ModelError::ContextFull { needed, max_ctx: self.opts.max_ctx });
        }
        Ok(())
    }

    /// Dispatches and submits per decoded token, for benchmarks.
    pub fn decode_dispatches(&mut self, dev: &Device, dec: &Decoder) -> GpuResult<usize> {
        Ok(self.decode_programs(dev, dec)?.iter().map(|p| p.n_dispatches()).sum())
    }

    /// Dispatches of the blocks alone in a decode step (no embedding, head or sampling), for
    /// benchmarks: divided by the layer count, the dispatches per layer.
    pub fn decode_block_dispatches(&mut self, dev: &Device, dec: &Decoder) -> GpuResult<usize> {
        Ok(self.programs(dev, dec, 1, LogitsMode::None)?.body.n_dispatches())
    }

    /// The recorded programs of one decode step in submit order: the embedding gather, then
    /// the rest (benchmarks time their dispatches by family); together they hold
    /// [`Context::decode_dispatches`] dispatches.
    pub fn decode_programs(&mut self, dev: &Device, dec: &Decoder) -> GpuResult<[&Program; 2]> {
        let p = self.programs(dev, dec, 1, LogitsMode::LastAndSample)?;
        Ok([&p.embed, &p.body])
    }

    /// The recorded programs of one full prefill chunk ([`Context::max_chunk`] tokens, no
    /// logits), for benchmarks (their launch geometry).
    pub fn prefill_programs(&mut self, dev: &Device, dec: &Decoder) -> GpuResult<[&Program; 2]> {
        let p = self.programs(dev, dec, self.opts.max_chunk, LogitsMode::None)?;
        Ok([&p.embed, &p.body])
    }

    /// Most tokens per prefill chunk.
    pub fn max_chunk(&self) -> u32 {
        self.opts.max_chunk
    }

    /// Submits, read-back bytes and host waits since the context was made, for benchmarks.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Checks `tokens` (with `images`) as the prompt of this context, whose cached tokens are
    /// its first ones, before any of the rest runs (so that a prompt prefilled a chunk at a
    /// time fails here, not midway).
    pub fn check_prompt(&self, dec: &Decoder, tokens: &[u32], images: Option<&PromptImages<'_>>) -> Result<(), ModelError> {
        self.check(dec, tokens, self.n_past as usize, images)
    }

    /// Checks a pass over `tokens[from..]`, appended to the `n_past` cached tokens.
    fn check(&self, dec: &Decoder, tokens: &[u32], from: usize, images: Option<&PromptImages<'_>>) -> Result<(), ModelError> {
        if let Some(images) = images {
            images.check(tokens, dec.cfg.n_embd)?;
        }
        if tokens.len() <= from {
            return Err(ModelError::Empty);
        }
        if let Some(&id) = tokens[from..].iter().find(|&&t| t >= dec.token_rows()) {
            return Err(ModelError::BadToken { id, vocab: dec.token_rows() });
        }
        self.check_room((tokens.len() - from) as u64)
    }

    /// The M-RoPE positions of a pass over `tokens` from KV row `row0` (None for decoders
    /// with 1-D positions, which take them from the step uniform).
    fn pass_positions(
        &self,
        dec: &Decoder,
        tokens: &[u32],
        row0: u32,
        images: Option<&PromptImages<'_>>,
    ) -> Result<Option<PassPositions>, ModelError> {
        if !dec.uses_mrope() {
            return Ok(None);
        }
        PassPositions::new(tokens, row0, self.pos_offset, &self.deltas, images).map(Some)
    }

    /// Runs `tokens[range]` as one chunk (image features copied in over its `[IMG]` rows, at
    /// the pass's M-RoPE positions when the decoder has them).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        tokens: &[u32],
        range: std::ops::Range<usize>,
        (images, pass): (Option<&PromptImages<'_>>, Option<&PassPositions>),
        mode: LogitsMode,
        read_token: bool,
    ) -> Result<(), ModelError> {
        let copies = image_copies(dec, tokens, range.clone(), images);
        dev.write(&self.b.ids, 0, bytemuck::cast_slice(&tokens[range.clone()]))?;
        let positions = pass.map(|p| p.chunk(range.clone()));
        self.submit(dev, dec, range.len() as u32, mode, &copies, positions.as_deref(), read_token)?;
        if let Some(p) = pass {
            // Rows before the chunk keep their deltas; its image ends add theirs.
            p.record(range, &mut self.deltas);
        }
        Ok(())
    }

    /// One step: step uniform (and M-RoPE positions: `positions`, `[3][n]`, or a decode
    /// step's from its row and delta), the gather, `copies` (source, source offset, offset in
    /// `x`, bytes) over the embeddings, the rest of the pass, the token readback copy (then
    /// mapped, before any later submit), one submit.
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        n: u32,
        mode: LogitsMode,
        copies: &[(&Buffer, u64, u64, u64)],
        positions: Option<&[u32]>,
        read_token: bool,
    ) -> Result<(), ModelError> {
        self.reserve_kv(dev, self.n_past + n)?;
        self.write_step_inputs(dev, dec, n, positions)?;
        let mut before = Program::new();
        if self.n_past == 0 {
            // A new sequence: recurrent states start from zero (a no-op without them).
            self.state.clear_recurrent(&mut before)?;
        }
        // A decode step the pipelined loop may have to drop: keep the recurrent states from
        // before it (see `sync_recurrent`).
        let checkpoint = read_token && n == 1 && self.state.has_recurrent();
        if checkpoint {
            self.state.record_checkpoint(&mut before)?;
            self.in_flight.iter_mut().for_each(|s| s.checkpoint = false);
        }
        let mut embed_copies = Program::new();
        for &(src, src_offset, dst_offset, size) in copies {
            embed_copies.copy(src, src_offset, &self.b.x, dst_offset, size)?;
        }
        self.programs(dev, dec, n, mode)?;
        let programs = &self.programs[&(n, mode)];
        let in_order = [&before, &programs.embed, &embed_copies, &programs.body];
        match dev {
            // The CPU runs the step to its end (no token to read later: it samples on the host).
            Device::Cpu(_) if read_token => return Err(GpuError::CpuUnsupported("sampling on the device").into()),
            Device::Cpu(_) => in_order.iter().try_for_each(|p| p.run(dev))?,
            Device::Gpu(gpu) => {
                let mut encoder = gpu.device.create_command_encoder(&Default::default());
                in_order.iter().filter_map(|p| p.as_gpu()).for_each(|p| p.encode(&mut encoder));
                let readback = match read_token {
                    true => {
                        let mut readback = self.spare.pop().unwrap_or_else(|| Readback::new(gpu, 4));
                        readback.copy_from(&mut encoder, self.b.ids.gpu()?, 0, 4);
                        Some(readback)
                    }
                    false => None,
                };
                let submission = gpu.queue.submit([encoder.finish()]);
                if let Some(mut readback) = readback {
                    readback.map(4, submission);
                    self.in_flight.push_back(InFlight { readback, tokens: n, checkpoint });
                    self.counters.read_back_bytes += 4;
                }
            }
        }
        self.counters.submits += 1;
        self.n_past += n;
        self.rec_pos = self.n_past;
        Ok(())
    }

    /// Writes the inputs of a step of `n` tokens from `n_past` other than their ids: the step
    /// uniform, the M-RoPE positions (`positions`, `[3][n]`, or a decode step's from its row
    /// and delta) and the family's per-token inputs.
    fn write_step_inputs(
        &self,
        dev: &Device,
        dec: &Decoder,
        n: u32,
        positions: Option<&[u32]>,
    ) -> Result<StepParams, ModelError> {
        if self.rec_pos != self.n_past && self.state.has_recurrent() {
            return Err(ModelError::RecurrentPosition { consumed: self.rec_pos, cached: self.n_past });
        }
        let pos0 = (self.pos_offset as i64 + self.n_past as i64 + self.deltas.at(self.n_past)).max(0) as u32;
        let step = StepParams::new(self.n_past, n, pos0).at_base(self.state.kv_base());
        step.write(dev, &self.b.step)?;
        self.scratch.write_step(dev, self.n_past, n)?;
        if dec.uses_mrope() {
            match positions {
                Some(p) => dev.write(&self.b.positions, 0, bytemuck::cast_slice(p))?,
                None if n == 1 => dev.write(&self.b.positions, 0, bytemuck::cast_slice(&[pos0; 3]))?,
                None => return Err(ModelError::Invalid(format!("a step of {n} tokens without their positions"))),
            }
        }
        Ok(step)
    }

    /// What a recorded batched step binds of this sequence: its step buffers, scratch and
    /// state (see `super::batch`).
    pub(super) fn seq(&self) -> Seq<'_, Scratch> {
        Seq { b: &self.b, s: &self.scratch, state: &self.state }
    }

    /// Names the buffers [`Self::seq`] hands out: equal keys, the same buffers.
    pub(super) fn binding(&self) -> (u64, u64) {
        (self.id, self.epoch)
    }

    /// Prepares this sequence's row of a batched decode step that feeds `token`: checks
    /// that the sequence was prefilled and has room, forgets steps in flight and writes the
    /// step's inputs. [`Self::end_batched`] counts the token in once the step is submitted.
    /// Returns the step it wrote.
    pub(super) fn begin_batched(&mut self, dev: &Device, dec: &Decoder, token: u32) -> Result<StepParams, ModelError> {
        self.forget_in_flight();
        // A recurrent state that is not where the cache stands restarts the sequence.
        self.sync_recurrent();
        if self.n_past == 0 {
            return Err(ModelError::Invalid("a batched decode step continues a prefilled sequence".into()));
        }
        if token >= dec.cfg.vocab {
            return Err(ModelError::BadToken { id: token, vocab: dec.cfg.vocab });
        }
        self.check_room(1)?;
        self.reserve_kv(dev, self.n_past + 1)?;
        self.write_step_inputs(dev, dec, 1, None)
    }

    /// Prepares this sequence's rows of a batched step that runs `tokens[n_past..end]` of its
    /// prompt (at most a chunk; images at their `[IMG]` rows): checks the prompt, forgets
    /// steps in flight, writes the step's inputs and records into `before` what a new
    /// sequence clears first. Returns the chunk's ids and image copies (source, offset,
    /// offset from the chunk's first row in `x`, bytes). [`Self::end_batched`] counts the
    /// chunk in once the step is submitted.
    pub(super) fn begin_batched_chunk<'i>(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        (tokens, end, images): (&'i [u32], usize, Option<&PromptImages<'i>>),
        before: &mut Program,
    ) -> Result<(&'i [u32], ImageCopies<'i>), ModelError> {
        self.forget_in_flight();
        self.sync_recurrent();
        let start = self.n_past as usize;
        self.check(dec, tokens, start, images)?;
        if end <= start || end > tokens.len() || end - start > self.opts.max_chunk as usize {
            let chunk = self.opts.max_chunk;
            return Err(ModelError::Invalid(format!("a batched chunk of rows {start}..{end} (at most {chunk})")));
        }
        let (range, n) = (start..end, (end - start) as u32);
        self.reserve_kv(dev, end as u32)?;
        let pass = self.pass_positions(dec, tokens, 0, images)?;
        let positions = pass.as_ref().map(|p| p.chunk(range.clone()));
        self.write_step_inputs(dev, dec, n, positions.as_deref())?;
        if let Some(p) = &pass {
            p.record(range.clone(), &mut self.deltas);
        }
        if self.n_past == 0 {
            self.state.clear_recurrent(before)?;
        }
        Ok((&tokens[range.clone()], image_copies(dec, tokens, range, images)))
    }

    /// The batched step [`Self::begin_batched`] or [`Self::begin_batched_chunk`] prepared
    /// was submitted: its `n` tokens are cached.
    pub(super) fn end_batched(&mut self, n: u32) {
        self.n_past += n;
        self.rec_pos = self.n_past;
    }

    /// Forgets the steps whose tokens were not read (their maps abandoned); the cache keeps
    /// their entries.
    fn forget_in_flight(&mut self) {
        for mut step in self.in_flight.drain(..) {
            step.readback.cancel();
            self.spare.push(step.readback);
        }
    }

    /// Drops the recorded steps (the buffers they bind changed).
    fn drop_programs(&mut self) {
        self.programs.clear();
        self.epoch += 1;
    }

    fn programs(&mut self, dev: &Device, dec: &Decoder, n: u32, mode: LogitsMode) -> GpuResult<&StepPrograms> {
        if !self.programs.contains_key(&(n, mode)) {
            let body = dec.record(dev, &Rows::one(&self.b, &self.scratch, &self.state, n), mode)?;
            let programs = StepPrograms { embed: dec.record_embed(dev, &self.b, n)?, body };
            // Keep the steady-state programs (decode and full chunks); drop odd-sized ones.
            self.programs.retain(|&(m, _), _| m == 1 || m == self.opts.max_chunk);
            self.programs.insert((n, mode), programs);
        }
        Ok(&self.programs[&(n, mode)])
    }
}

/// Copies of image feature rows into a chunk's rows of `x`: (source, source offset, offset
/// from the chunk's first row, bytes).
pub(super) type ImageCopies<'i> = Vec<(&'i Buffer, u64, u64, u64)>;

/// The copies of `images`' feature rows over the `[IMG]` rows of `tokens[range]`.
fn image_copies<'i>(
    dec: &Decoder,
    tokens: &[u32],
    range: std::ops::Range<usize>,
    images: Option<&PromptImages<'i>>,
) -> ImageCopies<'i> {
    let Some(images) = images else { return Vec::new() };
    let (row, features) = (dec.cfg.n_embd as u64 * 4, images.images);
    let runs = images.runs(tokens, range.start, range.len()).into_iter();
    runs.map(|r| (&features[r.image].buffer, r.src_row as u64 * row, r.dst_row as u64 * row, r.rows as u64 * row)).collect()
}

/// The precision contexts of `opts` run at on `dev`: what the device cannot do falls back to
/// f32 (the CPU backend keeps f32 caches).
fn precision_on(dev: &Device, opts: ContextOptions) -> Precision {
    let caps = dev.caps();
    Precision { compute_f16: opts.precision.compute_f16 && caps.f16, kv_f16: opts.precision.kv_f16 && caps.kv_f16 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::Geometry;

    fn caps(geometry: Geometry, f16: bool) -> Caps {
        Caps {
            kv_f16: true,
            f16,
            subgroups: false,
            max_storage_binding: 128 << 20,
            max_buffer: 256 << 20,
            max_workgroup_invocations: 256,
            max_workgroup_storage: 16384,
            max_storage_buffers_per_stage: 8,
            min_uniform_offset_alignment: 256,
            max_uniform_binding: 64 << 10,
            adapter: "test".into(),
            backend: "none".into(),
            software: geometry == Geometry::Cpu,
            geometry,
            prefill_chunk: if geometry == Geometry::Cpu { 128 } else { 512 },
            repacked_weights: false,
        }
    }

    #[test]
    fn adapter_defaults_follow_the_launch_shape_and_shader_f16() {
        let dev = ContextOptions::for_adapter(&caps(Geometry::Gpu, true));
        assert_eq!((dev.max_chunk, dev.precision), (512, Precision { kv_f16: true, compute_f16: true }));
        let no_f16 = ContextOptions::for_adapter(&caps(Geometry::Gpu, false));
        assert_eq!((no_f16.max_chunk, no_f16.precision), (512, Precision::default()));
        let cpu = ContextOptions::for_adapter(&caps(Geometry::Cpu, true));
        assert_eq!((cpu.max_chunk, cpu.precision), (128, Precision::default()));
        assert_eq!(cpu.max_ctx, ContextOptions::default().max_ctx);
    }
}
