//! The sequences behind the rows of a recorded step. A step of one sequence runs its `n`
//! tokens in place on that sequence's own buffers. A batched decode step (`super::batch`)
//! runs one token of each of several sequences: row `j` of the batch's buffers is sequence
//! `j`'s token, every product is one dispatch over all rows (the decode kernel, so a row
//! computes exactly as it would alone; the CPU's reads each weight row once for all of
//! them), and only the token-mixing sections — RoPE and
//! attention against a KV cache, a recurrence against its state, cross-attention against a
//! sequence's images — run per sequence ([`Rows::per_sequence`]): the sequence's inputs are
//! copied from its row to row 0 of its own buffers, the section is recorded against its
//! step uniform, caches and scratch, and its output is copied back to its row.
//!
//! This is the layout vLLM and llama.cpp's server batch with (a "ragged" batch of tokens,
//! attention per sequence); the row copies keep every kernel as it is for one sequence.

use crate::backend::gpu::Result;
use crate::backend::{Buffer, Program};

use super::state::SequenceState;
use super::step::StepBuffers;

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
    /// One sequence owning `b` and `s` (all `n` rows are its tokens), or one per row.
    seqs: Vec<Seq<'a, S>>,
    batched: bool,
}

impl<'a, S> Rows<'a, S> {
    /// `n` tokens of the sequence whose buffers these are.
    pub fn one(b: &'a StepBuffers, s: &'a S, state: &'a SequenceState, n: u32) -> Rows<'a, S> {
        Rows { b, s, n, seqs: vec![Seq { b, s, state }], batched: false }
    }

    /// One token of each of `seqs`, row `j` of the batch's `b` and `s` being `seqs[j]`'s.
    pub fn batched(b: &'a StepBuffers, s: &'a S, seqs: Vec<Seq<'a, S>>) -> Rows<'a, S> {
        Rows { b, s, n: seqs.len() as u32, seqs, batched: true }
    }

    /// The same rows with each scratch seen as `T` (a family's own, out of the family enum);
    /// `None` when one is of another kind.
    pub fn map<T>(&self, f: impl Fn(&'a S) -> Option<&'a T>) -> Option<Rows<'a, T>> {
        let seqs = self.seqs.iter().map(|q| Some(Seq { b: q.b, s: f(q.s)?, state: q.state })).collect::<Option<_>>()?;
        Some(Rows { b: self.b, s: f(self.s)?, n: self.n, seqs, batched: self.batched })
    }

    /// Records `section` for every sequence: in place over all rows for one sequence;
    /// batched, for one token per sequence between the copies of its row of each input
    /// (`width` f32 per row) to its own buffers and of its output back.
    pub fn per_sequence(
        &self,
        p: &mut Program,
        inputs: &[(Pick<S>, u32)],
        output: (Pick<S>, u32),
        mut section: impl FnMut(&mut Program, &Seq<'a, S>, u32) -> Result<()>,
    ) -> Result<()> {
        if !self.batched {
            return section(p, &self.seqs[0], self.n);
        }
        for (j, q) in self.seqs.iter().enumerate() {
            for &(pick, width) in inputs {
                let row = 4 * width as u64;
                p.copy(pick(self.b, self.s), j as u64 * row, pick(q.b, q.s), 0, row)?;
            }
            section(p, q, 1)?;
            let (pick, width) = output;
            let row = 4 * width as u64;
            p.copy(pick(q.b, q.s), 0, pick(self.b, self.s), j as u64 * row, row)?;
        }
        Ok(())
    }
}
