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
//!
//! The context's methods, by what they do: here, making one and its recorded programs;
//! `steps` the passes it submits (prefill, decode, teacher-forced logits) and the tokens and
//! logits it reads back; `cache` what it holds of its sequence (rewinding, KV rows that grow
//! and go back to a pool, snapshots, another sequence's prefix copied in); `batched` its part
//! in a step of many sequences (`super::batch`).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::gpu::{Caps, GpuError, Readback, Result as GpuResult};
use crate::backend::{Buffer, Device, Program};

use super::decoder::Decoder;
use super::families::Scratch;
use super::kv_arena::{ArenaSlot, KvArena};
use super::positions::RopeDeltas;
use super::rows::Rows;
use super::state::{LayerKind, SequenceState};
use super::step::{LogitsMode, Precision, StepBuffers};
use super::vision::PromptImages;

mod batched;
mod cache;
mod steps;

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

    /// Tokens in the cache.
    pub fn n_past(&self) -> u32 {
        self.n_past
    }

    pub fn max_ctx(&self) -> u32 {
        self.opts.max_ctx
    }

    /// The sizes and precision asked for (what a context alike is made with).
    pub fn options(&self) -> ContextOptions {
        self.opts
    }

    /// The precision in effect.
    pub fn precision(&self) -> Precision {
        self.b.precision
    }

    /// Starts the sequence's position ids at `offset` (for tests of long-context RoPE).
    pub fn set_position_offset(&mut self, offset: u32) {
        self.pos_offset = offset;
    }

    /// Most tokens per prefill chunk.
    pub fn max_chunk(&self) -> u32 {
        self.opts.max_chunk
    }

    /// Submits, read-back bytes and host waits since the context was made, for benchmarks.
    pub fn counters(&self) -> Counters {
        self.counters
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
