//! Steps of many sequences at once: the step of continuous batching. A [`StepBatch`] holds
//! the buffers of up to `max_seqs` sequences' rows and a prompt chunk's; [`StepBatch::step`]
//! runs, in one pass, the next token of each sequence being decoded and a chunk of each
//! prompt being prefilled ([`BatchInput`]) on their own [`Context`]s — one product dispatch
//! over all rows, attention and recurrences per sequence against its own state (see
//! `super::rows`) — and returns each sequence's last row's logits, for the host to sample
//! with the sequence's own options. A step of tokens only runs each row by the same kernels
//! in the same order as that sequence's decode step alone, so its logits are bit for bit
//! the ones it would get alone; a step holding a chunk runs its products on the prefill
//! kernel, so the chunk's rows are computed as alone and the tokens' within its rounding.
//!
//! On the GPU, a step of tokens whose sequences' KV caches are ranges of one arena
//! (`super::kv_arena`, the contexts of `Context::in_arena`) runs RoPE with the cache store
//! and attention of all of them in one dispatch each, the steps of the sequences written to
//! one buffer; other steps run those per sequence.
//!
//! The recorded step binds its sequences' buffers, so it is kept per set of sequences and
//! row counts (the few most recent; a new set records a new one, which costs a host-side
//! pass over the layers).

use std::collections::HashMap;

use crate::backend::gpu::{Gpu, GpuError, Readback, Result as GpuResult};
use crate::backend::{Buffer, Device, Program};
use crate::kernels::attention::StepParams;

use super::context::{Context, StepPrograms};
use super::decoder::Decoder;
use super::families::Scratch;
use super::rows::{ArenaStep, Rows};
use super::step::{LogitsMode, Precision, StepBuffers};
use super::vision::PromptImages;
use super::ModelError;

/// Recorded steps kept (sets of sequences seen most recently).
const KEPT_STEPS: usize = 8;

/// What a batched step runs of one sequence.
pub enum BatchInput<'i> {
    /// The next token of a prefilled sequence.
    Token(u32),
    /// `tokens[n_past..end]` of the sequence's prompt (at most a chunk), with its images.
    Chunk { tokens: &'i [u32], end: usize, images: Option<PromptImages<'i>> },
}

/// A recorded step's key: each sequence's [`Context::binding`] and row count, in row order.
type StepKey = Vec<((u64, u64), u32)>;

/// The row buffers of batched steps of up to `max_seqs` sequences.
pub struct StepBatch {
    b: StepBuffers,
    scratch: Scratch,
    max_seqs: u32,
    /// Rows of prompt chunks one step takes besides a token per sequence.
    max_chunk: u32,
    /// Recorded steps by their sequences, logits and whether they ran in one KV arena (a
    /// prompt chunk of one row has a token's key, not its arena step).
    programs: HashMap<(StepKey, LogitsMode, bool), StepPrograms>,
    /// The GPU's staging buffer for the logits, kept rather than allocated each step (as
    /// `Context::read_logits` keeps its own).
    logits_readback: Option<Readback>,
    /// The commands of the next decode step of the sequences keyed, encoded during this one
    /// (GPU): a step's dispatches do not depend on its tokens, which are written before its
    /// submit.
    prepared: Option<(StepKey, wgpu::CommandBuffer)>,
    /// The steps made to fail ([`Self::fail_steps_when`]).
    failing: Option<FailWhen>,
    /// The steps of a step's sequences when their caches share a KV arena (one per row).
    arena_steps: Buffer,
    /// The scratch of such steps (decode partials of `max_seqs` rows), made for the
    /// contexts' `max_ctx` (the first field) at the first one.
    arena_scratch: Option<(u32, Scratch)>,
}

/// Picks steps to fail by the token ids of each sequence's rows.
type FailWhen = Box<dyn FnMut(&[&[u32]]) -> bool>;

impl StepBatch {
    /// Buffers for steps of up to `max_seqs` sequences and `max_chunk` rows of prompt chunks
    /// of contexts at `precision`.
    pub fn new(dev: &Device, dec: &Decoder, max_seqs: u32, max_chunk: u32, precision: Precision) -> GpuResult<StepBatch> {
        let (c, max_seqs) = (&dec.cfg, max_seqs.max(1));
        let rows = max_seqs + max_chunk;
        let mut b = StepBuffers::new(dev, rows, c.n_embd, c.vocab, max_seqs, precision)?;
        // The host samples each row with its sequence's options.
        b.sampler = None;
        b.x_last = dev.storage("x_last", 4 * max_seqs as u64 * c.n_embd as u64)?;
        // Attention runs on each sequence's own decode scratch: this one's is never used.
        let scratch = dec.scratch(dev, rows, 1, 1)?;
        let programs = HashMap::new();
        let arena_steps = StepParams::create_rows_buffer(dev, max_seqs)?;
        Ok(StepBatch {
            b,
            scratch,
            max_seqs,
            max_chunk,
            programs,
            logits_readback: None,
            prepared: None,
            failing: None,
            arena_steps,
            arena_scratch: None,
        })
    }

    /// Most sequences one step takes.
    pub fn max_seqs(&self) -> u32 {
        self.max_seqs
    }

    /// Makes the steps `when` picks (given the token ids of each sequence's rows) fail once
    /// they have run, before their sequences count their rows: as a device refusing an
    /// allocation midway would leave them (tests of what a failed step costs the run).
    pub fn fail_steps_when(&mut self, when: impl FnMut(&[&[u32]]) -> bool + 'static) {
        self.failing = Some(Box::new(when));
    }

    /// Drops the steps recorded (or encoded ahead) against `ctx`'s buffers, which it no
    /// longer uses (its KV cache given back), so that they are freed.
    pub fn forget(&mut self, ctx: &Context) {
        let id = ctx.binding().0;
        self.programs.retain(|(key, ..), _| key.iter().all(|&((i, _), _)| i != id));
        self.prepared.take_if(|(key, _)| key.iter().any(|&((i, _), _)| i == id));
    }

    /// Feeds `tokens[j]` to `seqs[j]` (each prefilled, with room for one more token) in one
    /// pass and returns their logits, `[seqs.len()][vocab]` row-major.
    pub async fn decode(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        seqs: &mut [&mut Context],
        tokens: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        let inputs: Vec<_> = tokens.iter().map(|&t| BatchInput::Token(t)).collect();
        self.step(dev, dec, seqs, inputs).await
    }

    /// Runs `inputs[j]` on `seqs[j]` in one pass and returns the logits of each sequence's
    /// last row, `[seqs.len()][vocab]` row-major (none when no input ends a prompt or feeds
    /// a token). A chunk of a prompt runs from its sequence's cached tokens.
    pub async fn step(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        seqs: &mut [&mut Context],
        inputs: Vec<BatchInput<'_>>,
    ) -> Result<Vec<f32>, ModelError> {
        let n = seqs.len();
        if n == 0 || n > self.max_seqs as usize || inputs.len() != n {
            let max = self.max_seqs;
            return Err(ModelError::Invalid(format!("a batched step of {n} sequences, {} inputs (at most {max})", inputs.len())));
        }
        if let Some(c) = seqs.iter().find(|c| c.precision() != self.b.precision) {
            let (got, want) = (c.precision(), self.b.precision);
            return Err(ModelError::Invalid(format!("a context at {got:?} in a batch at {want:?}")));
        }
        let rows: usize = seqs
            .iter()
            .zip(&inputs)
            .map(|(c, input)| match input {
                BatchInput::Token(_) => 1,
                BatchInput::Chunk { end, .. } => end.saturating_sub(c.n_past() as usize),
            })
            .sum();
        if rows > (self.max_seqs + self.max_chunk) as usize {
            let max = self.max_seqs + self.max_chunk;
            return Err(ModelError::Invalid(format!("a batched step of {rows} rows (at most {max})")));
        }
        let (mut ids, mut counts, mut before, mut copies) = (Vec::new(), Vec::new(), Program::new(), Program::new());
        let row = 4 * dec.cfg.n_embd as u64;
        let (mut logits, mut steps) = (false, Vec::new());
        for (c, input) in seqs.iter_mut().zip(&inputs) {
            let first = ids.len();
            match input {
                BatchInput::Token(token) => {
                    steps.push(c.begin_batched(dev, dec, *token)?);
                    ids.push(*token);
                    logits = true;
                }
                BatchInput::Chunk { tokens, end, images } => {
                    let (chunk, image_rows) = c.begin_batched_chunk(dev, dec, (tokens, *end, images.as_ref()), &mut before)?;
                    for (src, src_offset, offset, size) in image_rows {
                        copies.copy(src, src_offset, &self.b.x, ids.len() as u64 * row + offset, size)?;
                    }
                    ids.extend_from_slice(chunk);
                    logits |= *end == tokens.len();
                }
            }
            counts.push((ids.len() - first) as u32);
        }
        dev.write(&self.b.ids, 0, bytemuck::cast_slice(&ids))?;
        let decode_only = inputs.iter().all(|i| matches!(i, BatchInput::Token(_)));
        let in_one_arena = decode_only && matches!(dev, Device::Gpu(_)) && one_arena(seqs);
        if in_one_arena {
            dev.write(&self.arena_steps, 0, bytemuck::cast_slice(&steps))?;
            let max_ctx = seqs[0].max_ctx();
            if self.arena_scratch.as_ref().is_none_or(|(made_for, _)| *made_for != max_ctx) {
                self.arena_scratch = Some((max_ctx, dec.scratch(dev, self.max_seqs, max_ctx, self.max_seqs)?));
            }
        }
        let mode = if logits { LogitsMode::LastOfEach } else { LogitsMode::None };
        let key: StepKey = seqs.iter().map(|c| c.binding()).zip(counts.iter().copied()).collect();
        // Steps recorded against these contexts' buffers of before (a KV cache grown or
        // given back) would keep those buffers alive.
        let stale = |k: &StepKey| k.iter().any(|&((id, epoch), _)| key.iter().any(|&((i, e), _)| i == id && e != epoch));
        self.programs.retain(|(k, ..), _| !stale(k));
        let programs_key = (key, mode, in_one_arena);
        if !self.programs.contains_key(&programs_key) {
            let seqs_rows = seqs.iter().map(|c| c.seq()).zip(counts.iter().copied()).collect();
            let arena = match (in_one_arena, &self.arena_scratch) {
                (true, Some((_, s))) => Some(ArenaStep { steps: &self.arena_steps, s }),
                _ => None,
            };
            let rows = Rows::batched(&self.b, &self.scratch, seqs_rows, arena);
            let programs = StepPrograms { embed: dec.record_embed(dev, &self.b, rows.n)?, body: dec.record(dev, &rows, mode)? };
            if self.programs.len() >= KEPT_STEPS {
                self.programs.clear();
            }
            self.programs.insert(programs_key.clone(), programs);
        }
        let programs = &self.programs[&programs_key];
        let key = &programs_key.0;
        let in_order = [&before, &programs.embed, &copies, &programs.body];
        let bytes = if logits { n * dec.cfg.vocab as usize * 4 } else { 0 };
        let Device::Gpu(gpu) = dev else {
            in_order.iter().try_for_each(|p| p.run(dev))?;
            fail_on_purpose(&mut self.failing, &ids, &counts)?;
            seqs.iter_mut().zip(&counts).for_each(|(c, &rows)| c.end_batched(rows));
            return Ok(dev.read_f32(&self.b.logits, 0, bytes / 4).await?);
        };
        let profiling = gpu.profiling();
        if profiling {
            in_order.iter().try_for_each(|p| p.run(dev))?;
        } else {
            let commands = match self.prepared.take() {
                Some((prepared, commands)) if decode_only && prepared == *key => commands,
                _ => encode(gpu, &in_order)?,
            };
            gpu.queue.submit([commands]);
            gpu.check_errors()?;
        }
        fail_on_purpose(&mut self.failing, &ids, &counts)?;
        seqs.iter_mut().zip(&counts).for_each(|(c, &rows)| c.end_batched(rows));
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let size = self.max_seqs as u64 * dec.cfg.vocab as u64 * 4;
        let readback = self.logits_readback.get_or_insert_with(|| Readback::new(gpu, size));
        let mut copy = gpu.device.create_command_encoder(&Default::default());
        readback.copy_from(&mut copy, self.b.logits.gpu()?, 0, bytes as u64);
        let submission = gpu.queue.submit([copy.finish()]);
        readback.map(bytes as u64, submission);
        // The next decode step of these sequences, encoded while the GPU runs this one (a
        // step of 8 sequences of a 3B model is ~800 dispatches: ~14 ms of encoding on an
        // H200's host).
        if decode_only && !profiling {
            self.prepared = Some((key.clone(), encode(gpu, &[&programs.embed, &programs.body])?));
        }
        let bytes = readback.read(gpu).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

/// Whether the KV caches of all of `seqs` are ranges of one arena.
fn one_arena(seqs: &[&mut Context]) -> bool {
    let slots = seqs.iter().map(|c| c.arena_slot());
    let first = seqs.first().and_then(|c| c.arena_slot());
    first.is_some_and(|first| slots.into_iter().all(|s| s.is_some_and(|s| s.shares_arena(first))))
}

/// The failure [`StepBatch::fail_steps_when`] asks of a step of `counts` rows of `ids`.
fn fail_on_purpose(failing: &mut Option<FailWhen>, ids: &[u32], counts: &[u32]) -> Result<(), GpuError> {
    let Some(when) = failing.as_mut() else { return Ok(()) };
    let mut rest = ids;
    let rows: Vec<&[u32]> = counts
        .iter()
        .map(|&n| {
            let (seq, tail) = rest.split_at(n as usize);
            rest = tail;
            seq
        })
        .collect();
    match when(&rows) {
        true => Err(GpuError::OutOfMemory("a step failed on purpose".into())),
        false => Ok(()),
    }
}

/// The commands of recorded programs, in order.
fn encode(gpu: &Gpu, programs: &[&Program]) -> GpuResult<wgpu::CommandBuffer> {
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    for program in programs.iter().filter(|p| !matches!(p, Program::Empty)) {
        program.as_gpu().ok_or(GpuError::WrongBackend("a CPU program encoded for the GPU"))?.encode(&mut encoder);
    }
    Ok(encoder.finish())
}
