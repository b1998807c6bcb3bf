//! A [`Context`]'s part in a batched step of many sequences (`crate::model::batch`): the
//! buffers it binds, and its rows' inputs written before the step and counted in after it.

use crate::backend::{Device, Program};
use crate::kernels::attention::StepParams;

use super::{image_copies, Context, ImageCopies};
use crate::model::decoder::Decoder;
use crate::model::families::Scratch;
use crate::model::rows::Seq;
use crate::model::vision::PromptImages;
use crate::model::ModelError;

impl Context {
    /// What a recorded batched step binds of this sequence: its step buffers, scratch and
    /// state (see `super::batch`).
    pub(in crate::model) fn seq(&self) -> Seq<'_, Scratch> {
        Seq { b: &self.b, s: &self.scratch, state: &self.state }
    }

    /// Names the buffers [`Self::seq`] hands out: equal keys, the same buffers.
    pub(in crate::model) fn binding(&self) -> (u64, u64) {
        (self.id, self.epoch)
    }

    /// Prepares this sequence's row of a batched decode step that feeds `token`: checks
    /// that the sequence was prefilled and has room, forgets steps in flight and writes the
    /// step's inputs. [`Self::end_batched`] counts the token in once the step is submitted.
    /// Returns the step it wrote.
    pub(in crate::model) fn begin_batched(&mut self, dev: &Device, dec: &Decoder, token: u32) -> Result<StepParams, ModelError> {
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
    pub(in crate::model) fn begin_batched_chunk<'i>(
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
    pub(in crate::model) fn end_batched(&mut self, n: u32) {
        self.n_past += n;
        self.rec_pos = self.n_past;
    }
}
