//! The passes a [`Context`] submits — prompt chunks, decode steps that feed the last sampled
//! token or one the host picked, teacher-forced logits — and the tokens and logits it reads
//! back (a step's token while later steps run: see the module's header).

use crate::backend::gpu::{GpuError, Readback, Result as GpuResult};
use crate::backend::{Buffer, Device, Program};
use crate::kernels::attention::StepParams;
use crate::kernels::sample::SamplerState;

use super::{image_copies, Context, InFlight};
use crate::model::decoder::Decoder;
use crate::model::positions::PassPositions;
use crate::model::step::LogitsMode;
use crate::model::vision::PromptImages;
use crate::model::ModelError;

impl Context {
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

    pub(super) fn check_room(&self, n: u64) -> Result<(), ModelError> {
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

    /// Checks `tokens` (with `images`) as the prompt of this context, whose cached tokens are
    /// its first ones, before any of the rest runs (so that a prompt prefilled a chunk at a
    /// time fails here, not midway).
    pub fn check_prompt(&self, dec: &Decoder, tokens: &[u32], images: Option<&PromptImages<'_>>) -> Result<(), ModelError> {
        self.check(dec, tokens, self.n_past as usize, images)
    }

    /// Checks a pass over `tokens[from..]`, appended to the `n_past` cached tokens.
    pub(super) fn check(
        &self,
        dec: &Decoder,
        tokens: &[u32],
        from: usize,
        images: Option<&PromptImages<'_>>,
    ) -> Result<(), ModelError> {
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
    pub(super) fn pass_positions(
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
    pub(super) fn write_step_inputs(
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
}
