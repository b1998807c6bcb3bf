//! The sequences behind the rows of a recorded step. A step of one sequence runs its `n`
//! tokens in place on that sequence's own buffers. A batched step (`super::batch`) runs
//! rows of several sequences — one token of a sequence being decoded, a prompt chunk of one
//! being prefilled — one section after another in the batch's buffers: every product is
//! one dispatch over all rows (each weight read once for all of them), and only the
//! token-mixing sections — RoPE and attention against a KV cache, a recurrence against its
//! state, cross-attention against a sequence's images — run per sequence
//! ([`Rows::per_sequence`]): the sequence's inputs are copied from its section to row 0 of
//! its own buffers, the section is recorded against its step uniform, caches and scratch
//! for its row count, and its output is copied back. A part of a section that a backend
//! runs for all the sequences at once (the CPU's attention: one pool run) is recorded once
//! for them ([`Rows::per_sequence_then`]).
//!
//! A batched step of decode rows whose sequences' KV caches are ranges of one arena
//! (`super::kv_arena`) runs RoPE with the cache store and attention once for all of them,
//! in place on the batch's rows, each sequence at its own step ([`Rows::arena`]).
//!
//! A step of decode rows only runs its products on the decode kernel, so each row computes
//! exactly as it would alone; a step holding a prompt chunk runs them on the tiled matmul,
//! as the chunk alone does (a decode row then differs from alone by the kernels' rounding).
//! This is the layout vLLM and llama.cpp's server batch with (a "ragged" batch of tokens,
//! attention per sequence); the row copies keep every kernel as it is for one sequence.

use crate::backend::gpu::Result;
use crate::backend::{Buffer, Program};

use super::state::SequenceState;
use super::step::{Products, StepBuffers};

/// One sequence of a step: its step buffers (the step uniform, M-RoPE positions), its
/// family's scratch `S` and its state.
pub struct Seq<'a, S> {
    pub b: &'a StepBuffers,
    pub s: &'a S,
    pub state: &'a SequenceState,
}

/// Picks one buffer of a step's buffers or a family's scratch (a section's input or output).
pub type Pick<S> = for<'x> fn(&'x StepBuffers, &'x S) -> &'x Buffer;

/// The rows a step runs and the sequences they belong to.
pub struct Rows<'a, S> {
    /// The buffers the step's row-wise ops use: the one sequence's, or the batch's.
    pub b: &'a StepBuffers,
    pub s: &'a S,
    /// Rows of `b` and `s` the step runs.
    pub n: u32,
    /// One sequence owning `b` and `s` (all `n` rows are its tokens), or the sequences of a
    /// batch with their row counts, in row order.
    seqs: Vec<(Seq<'a, S>, u32)>,
    batched: bool,
    arena: Option<ArenaStep<'a, S>>,
}

/// What a batched step of sequences whose caches share a KV arena runs their attention with:
/// their steps (row t: sequence t's, `kernels::attention::StepParams` with its `kv_base`) and
/// a scratch whose decode partials hold all their rows.
pub struct ArenaStep<'a, S> {
    pub steps: &'a Buffer,
    pub s: &'a S,
}

impl<'a, S> Rows<'a, S> {
    /// `n` tokens of the sequence whose buffers these are.
    pub fn one(b: &'a StepBuffers, s: &'a S, state: &'a SequenceState, n: u32) -> Rows<'a, S> {
        Rows { b, s, n, seqs: vec![(Seq { b, s, state }, n)], batched: false, arena: None }
    }

    /// Rows of each of `seqs` (a sequence and its row count), one section after another in
    /// the batch's `b` and `s`; `arena` when their caches are ranges of one KV arena.
    pub fn batched(b: &'a StepBuffers, s: &'a S, seqs: Vec<(Seq<'a, S>, u32)>, arena: Option<ArenaStep<'a, S>>) -> Rows<'a, S> {
        Rows { b, s, n: seqs.iter().map(|(_, n)| n).sum(), seqs, batched: true, arena }
    }

    /// For a step of one token per sequence with the sequences' caches in one KV arena: a
    /// sequence over the batch's rows whose state's caches are the arena's (the first
    /// sequence's) and whose scratch's decode partials hold every row, and the steps of the
    /// rows. Token-mixing sections run once for all rows against these.
    pub fn arena(&self) -> Option<(Seq<'a, S>, &'a Buffer)> {
        let arena = self.arena.as_ref().filter(|_| self.seqs.iter().all(|&(_, n)| n == 1))?;
        Some((Seq { b: self.b, s: arena.s, state: self.seqs.first()?.0.state }, arena.steps))
    }

    /// The kernel of the step's products (see the module docs).
    pub fn products(&self) -> Products {
        match self.batched && self.seqs.iter().all(|&(_, n)| n == 1) {
            true => Products::Matvec,
            false => self.b.products(self.n),
        }
    }

    /// The row of `b` holding each sequence's last token, in sequence order.
    pub fn last_rows(&self) -> Vec<u32> {
        let ends = self.seqs.iter().scan(0, |end, &(_, n)| {
            *end += n;
            Some(*end - 1)
        });
        ends.collect()
    }

    /// The same rows with each scratch seen as `T` (a family's own, out of the family enum);
    /// `None` when one is of another kind.
    pub fn map<T>(&self, f: impl Fn(&'a S) -> Option<&'a T>) -> Option<Rows<'a, T>> {
        let seqs =
            self.seqs.iter().map(|&(ref q, n)| Some((Seq { b: q.b, s: f(q.s)?, state: q.state }, n))).collect::<Option<_>>()?;
        let arena = match &self.arena {
            Some(a) => Some(ArenaStep { steps: a.steps, s: f(a.s)? }),
            None => None,
        };
        Some(Rows { b: self.b, s: f(self.s)?, n: self.n, seqs, batched: self.batched, arena })
    }

    /// Records `section` for every sequence: in place over all rows for one sequence;
    /// batched, over each sequence's rows between the copies of its section of each input
    /// (`width` f32 per row) to its own buffers and of its output back.
    pub fn per_sequence(
        &self,
        p: &mut Program,
        inputs: &[(Pick<S>, u32)],
        output: (Pick<S>, u32),
        section: impl FnMut(&mut Program, &Seq<'a, S>, u32) -> Result<()>,
    ) -> Result<()> {
        self.per_sequence_then(p, inputs, output, section, |_, _| Ok(()))
    }

    /// [`Self::per_sequence`] with a part of the section recorded once for all sequences:
    /// `each` for every sequence, then `all` over the sequences and their row counts (one op
    /// where the backend runs them together), then the outputs copied back.
    pub fn per_sequence_then(
        &self,
        p: &mut Program,
        inputs: &[(Pick<S>, u32)],
        (output, output_width): (Pick<S>, u32),
        mut each: impl FnMut(&mut Program, &Seq<'a, S>, u32) -> Result<()>,
        all: impl FnOnce(&mut Program, &[(Seq<'a, S>, u32)]) -> Result<()>,
    ) -> Result<()> {
        if !self.batched {
            each(p, &self.seqs[0].0, self.n)?;
            return all(p, &self.seqs);
        }
        // Each sequence's first row in the batch's buffers, and the section's bytes of a row
        // of `width` f32.
        let firsts = self.seqs.iter().scan(0u64, |row, &(_, n)| Some(std::mem::replace(row, *row + n as u64)));
        let rows = |row0: u64, n: u32, width: u32| (row0 * 4 * width as u64, n as u64 * 4 * width as u64);
        for ((q, n), row0) in self.seqs.iter().zip(firsts.clone()) {
            for &(pick, width) in inputs {
                let (offset, size) = rows(row0, *n, width);
                p.copy(pick(self.b, self.s), offset, pick(q.b, q.s), 0, size)?;
            }
            each(p, q, *n)?;
        }
        all(p, &self.seqs)?;
        for ((q, n), row0) in self.seqs.iter().zip(firsts) {
            let (offset, size) = rows(row0, *n, output_width);
            p.copy(output(q.b, q.s), 0, output(self.b, self.s), offset, size)?;
        }
        Ok(())
    }
}
