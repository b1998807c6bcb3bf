//! A failed step on a device that is not lost (an allocation refused midway: wasm32's 4 GiB,
//! a GPU out of memory) fails no request by itself, as llama-server retries a batch that
//! failed in smaller ones. The step may have run in part — KV rows written, a recurrent
//! state advanced — for each of its sequences, so each is preempted (`kv_pool.rs`:
//! recomputed from its prompt and the tokens it was fed, its sampler kept) and from then on
//! runs in steps of its own: a step of one sequence that fails halves the prompt rows its
//! steps take, and one of a single row fails that sequence alone, as nothing smaller is left
//! to try. Steps of one sequence take turns with the steps of all the others, so that
//! neither waits for the other to end; a sequence in no failed step never leaves the batch.
//! Once it decodes again, a step of its own having run, it rejoins the batch: after its first
//! failed step, not after a second (which the step sizes of the batch, rather than a passing
//! shortage, may cause again).

use super::{Parallel, Running};
use crate::engine::{Engine, EngineError};

impl Parallel {
    /// Steps that failed so far on a device that was not lost.
    pub fn failed_steps(&self) -> u64 {
        self.failed_steps
    }

    /// Makes the steps `when` picks fail once they ran (tests: `StepBatch::fail_steps_when`).
    pub fn fail_steps_when(&mut self, when: impl FnMut(&[&[u32]]) -> bool + 'static) {
        self.batch.fail_steps_when(when);
    }

    /// Of the sequences ready for this step (oldest first), those that run it: the oldest
    /// of those that run alone or all the others, by turns while both wait.
    pub(super) fn take_turn(&mut self, ready: Vec<Running>) -> Vec<Running> {
        let (mut alone, together): (Vec<Running>, Vec<Running>) = ready.into_iter().partition(|r| r.alone.is_some());
        self.alone_turn = !self.alone_turn;
        if !alone.is_empty() && (self.alone_turn || together.is_empty()) {
            let later = alone.split_off(1);
            self.running.extend(later.into_iter().chain(together));
            alone
        } else {
            self.running.extend(alone);
            together
        }
    }

    /// The sequences of a step that ran: those that ran alone and decode again rejoin the
    /// batch, unless they were in more than one failed step.
    pub(super) fn rejoin(stepping: &mut [Running]) {
        let back = stepping.iter_mut().filter(|r| r.alone.is_some() && r.prefill.is_none() && r.failed < 2);
        back.for_each(|r| r.alone = None);
    }

    /// The step of `stepping` (`rows` rows) failed with `error`: preempts its sequences, each
    /// to run alone, or fails a step's only row's sequence (see the module docs). A lost
    /// device fails the call.
    pub(super) fn recover(
        &mut self,
        engine: &Engine,
        mut stepping: Vec<Running>,
        rows: usize,
        error: EngineError,
    ) -> Result<(), EngineError> {
        let error = engine.lost_or(error);
        if engine.check_device().is_err() {
            self.running.append(&mut stepping);
            return Err(error);
        }
        self.failed_steps += 1;
        stepping.iter_mut().for_each(|r| r.failed += 1);
        if let [r] = &mut stepping[..] {
            if rows == 1 {
                self.fail(stepping.pop().expect("one sequence"), error);
                return Ok(());
            }
            r.alone = Some((rows as u32 / 2).max(1));
        }
        let max_chunk = engine.ctx.options().max_chunk;
        for mut r in stepping {
            r.alone.get_or_insert(max_chunk);
            match r.preempt(engine) {
                Ok(()) => {
                    self.batch.forget(&r.ctx);
                    self.running.push(r);
                }
                Err(e) => self.fail_on_device(engine, r, e)?,
            }
        }
        Ok(())
    }
}
