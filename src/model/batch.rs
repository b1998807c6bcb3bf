//! Decode steps of many sequences at once: the step of continuous batching. A
//! [`DecodeBatch`] holds the buffers of up to `max_seqs` rows; [`DecodeBatch::step`] feeds
//! one token to each of several prefilled [`Context`]s in one pass — one product dispatch
//! over all of them, attention and recurrences per sequence against its own state (see
//! `super::rows`) — and returns each one's logits, for the host to sample with the
//! sequence's own options. Each row is computed by the same kernels in the same order as
//! that sequence's decode step alone, so its logits are bit for bit the ones it would get
//! alone.
//!
//! The recorded step binds its sequences' buffers, so it is kept per set of sequences (the
//! few most recent; a new set records a new one, which costs a host-side pass over the
//! layers).

use std::collections::HashMap;

use crate::backend::gpu::{Gpu, GpuError, Readback, Result as GpuResult};
use crate::backend::Device;

use super::context::{Context, StepPrograms};
use super::decoder::Decoder;
use super::families::Scratch;
use super::rows::Rows;
use super::step::{LogitsMode, Precision, StepBuffers};
use super::ModelError;

/// Recorded steps kept (sets of sequences seen most recently).
const KEPT_STEPS: usize = 8;

/// The row buffers of batched decode steps of up to `max_seqs` sequences.
pub struct DecodeBatch {
    b: StepBuffers,
    scratch: Scratch,
    max_seqs: u32,
    /// Recorded steps by their sequences' [`Context::binding`]s, in row order.
    programs: HashMap<Vec<(u64, u64)>, StepPrograms>,
    /// The GPU's staging buffer for the logits, kept rather than allocated each step (as
    /// `Context::read_logits` keeps its own).
    logits_readback: Option<Readback>,
    /// The commands of the next step of the sequences keyed, encoded during this one (GPU):
    /// a step's dispatches do not depend on its tokens, which are written before its submit.
    prepared: Option<(Vec<(u64, u64)>, wgpu::CommandBuffer)>,
}

impl DecodeBatch {
    /// Buffers for steps of up to `max_seqs` sequences of contexts at `precision`.
    pub fn new(dev: &Device, dec: &Decoder, max_seqs: u32, precision: Precision) -> GpuResult<DecodeBatch> {
        let (c, max_seqs) = (&dec.cfg, max_seqs.max(1));
        let mut b = StepBuffers::new(dev, max_seqs, c.n_embd, c.vocab, max_seqs, precision)?;
        // The host samples each row with its sequence's options.
        (b.batched, b.sampler) = (true, None);
        // Attention runs on each sequence's own decode scratch: this one's is never used.
        let scratch = dec.scratch(dev, max_seqs, 1)?;
        Ok(DecodeBatch { b, scratch, max_seqs, programs: HashMap::new(), logits_readback: None, prepared: None })
    }

    /// Most sequences one step takes.
    pub fn max_seqs(&self) -> u32 {
        self.max_seqs
    }

    /// Drops the steps recorded (or encoded ahead) against `ctx`'s buffers, which it no
    /// longer uses (its KV cache given back), so that they are freed.
    pub fn forget(&mut self, ctx: &Context) {
        let id = ctx.binding().0;
        self.programs.retain(|key, _| key.iter().all(|&(i, _)| i != id));
        self.prepared.take_if(|(key, _)| key.iter().any(|&(i, _)| i == id));
    }

    /// Feeds `tokens[j]` to `seqs[j]` (each prefilled, with room for one more token) in one
    /// pass and returns their logits, `[seqs.len()][vocab]` row-major.
    pub async fn step(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        seqs: &mut [&mut Context],
        tokens: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        let n = seqs.len();
        if n == 0 || n > self.max_seqs as usize || tokens.len() != n {
            let max = self.max_seqs;
            return Err(ModelError::Invalid(format!("a batched step of {n} sequences, {} tokens (at most {max})", tokens.len())));
        }
        if let Some(c) = seqs.iter().find(|c| c.precision() != self.b.precision) {
            let (got, want) = (c.precision(), self.b.precision);
            return Err(ModelError::Invalid(format!("a context at {got:?} in a batch at {want:?}")));
        }
        for (c, &token) in seqs.iter_mut().zip(tokens) {
            c.begin_batched(dev, dec, token)?;
        }
        dev.write(&self.b.ids, 0, bytemuck::cast_slice(tokens))?;
        let key: Vec<_> = seqs.iter().map(|c| c.binding()).collect();
        // Steps recorded against these contexts' buffers of before (a KV cache grown or
        // given back) would keep those buffers alive.
        let stale = |k: &Vec<(u64, u64)>| k.iter().any(|&(id, epoch)| key.iter().any(|&(i, e)| i == id && e != epoch));
        self.programs.retain(|k, _| !stale(k));
        if !self.programs.contains_key(&key) {
            let rows = Rows::batched(&self.b, &self.scratch, seqs.iter().map(|c| c.seq()).collect());
            let programs =
                StepPrograms { embed: dec.record_embed(dev, &self.b, n as u32)?, body: dec.record(dev, &rows, LogitsMode::All)? };
            if self.programs.len() >= KEPT_STEPS {
                self.programs.clear();
            }
            self.programs.insert(key.clone(), programs);
        }
        let programs = &self.programs[&key];
        let Device::Gpu(gpu) = dev else {
            programs.embed.run(dev)?;
            programs.body.run(dev)?;
            seqs.iter_mut().for_each(|c| c.end_batched());
            return Ok(dev.read_f32(&self.b.logits, 0, n * dec.cfg.vocab as usize).await?);
        };
        let profiling = gpu.profiling();
        if profiling {
            programs.embed.run(dev)?;
            programs.body.run(dev)?;
        } else {
            let commands = match self.prepared.take() {
                Some((prepared, commands)) if prepared == key => commands,
                _ => encode(gpu, programs)?,
            };
            gpu.queue.submit([commands]);
            gpu.check_errors()?;
        }
        seqs.iter_mut().for_each(|c| c.end_batched());
        let bytes = (n * dec.cfg.vocab as usize * 4) as u64;
        let size = self.max_seqs as u64 * dec.cfg.vocab as u64 * 4;
        let readback = self.logits_readback.get_or_insert_with(|| Readback::new(gpu, size));
        let mut copy = gpu.device.create_command_encoder(&Default::default());
        readback.copy_from(&mut copy, self.b.logits.gpu()?, 0, bytes);
        let submission = gpu.queue.submit([copy.finish()]);
        readback.map(bytes, submission);
        // The next step of these sequences, encoded while the GPU runs this one (a step of
        // 8 sequences of a 3B model is ~800 dispatches: ~14 ms of encoding on an H200's host).
        if !profiling {
            self.prepared = Some((key.clone(), encode(gpu, programs)?));
        }
        let bytes = readback.read(gpu).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

/// The commands of a recorded step (embedding, then the layers).
fn encode(gpu: &Gpu, programs: &StepPrograms) -> GpuResult<wgpu::CommandBuffer> {
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    for program in [&programs.embed, &programs.body] {
        program.as_gpu().ok_or(GpuError::WrongBackend("a CPU program encoded for the GPU"))?.encode(&mut encoder);
    }
    Ok(encoder.finish())
}
