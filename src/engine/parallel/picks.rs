//! The picks of a batched step's sequences on a thread pool: each sequence picks from its
//! own row of the step's logits with its own sampler and constraint, so the picks are
//! independent, and one costs the host 0.05-2.3 ms (greedy to top-p, 49k to 248k tokens of
//! vocabulary: BENCHMARKS.md), which a step of eight would otherwise pay one after another
//! while the pool waits. On the CPU backend the pool is the device's (idle between steps);
//! on a GPU, one of the host's cores kept for the run.

use std::sync::{Mutex, PoisonError};

use crate::backend::cpu::ThreadPool;
use crate::backend::Device;
use crate::sampling::TokenLogprob;

use super::super::generate::HostPicker;
use super::super::EngineError;

/// A sequence's pick: its token and its logprob when asked for.
pub(super) type Picked = Result<(u32, Option<TokenLogprob>), EngineError>;

/// The pool a run's picks use: the CPU backend's own, or threads of the run's.
pub(super) enum PickPool {
    Device,
    Own(ThreadPool),
}

impl PickPool {
    /// For a run of up to `max_seqs` sequences on `dev`: on a GPU, a pool of as many threads
    /// as the host has cores and the run sequences (one, where the build has no threads).
    pub(super) fn for_device(dev: &Device, max_seqs: u32) -> PickPool {
        if let Device::Cpu(_) = dev {
            return PickPool::Device;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = cores.min(max_seqs as usize).max(1);
        let pool = ThreadPool::new(threads).or_else(|_| ThreadPool::new(1)).expect("a pool of the calling thread");
        PickPool::Own(pool)
    }

    fn pool<'a>(&'a self, dev: &'a Device) -> Option<&'a ThreadPool> {
        match (self, dev) {
            (PickPool::Own(pool), _) => Some(pool),
            (PickPool::Device, Device::Cpu(cpu)) => Some(&cpu.pool),
            (PickPool::Device, Device::Gpu(_)) => None,
        }
    }

    /// `pickers[j]`'s pick from row `j` of `logits` (`vocab` wide), where it is `Some`.
    pub(super) fn pick_all(
        &self,
        dev: &Device,
        pickers: Vec<Option<&mut HostPicker>>,
        logits: &[f32],
        vocab: usize,
    ) -> Vec<Option<Picked>> {
        let pick = |j: usize, picker: &mut HostPicker| {
            let row = logits.get(j * vocab..(j + 1) * vocab).unwrap_or_default();
            picker.mask().and_then(|mask| picker.pick(row, mask.as_deref()))
        };
        let Some(pool) = self.pool(dev).filter(|p| p.threads() > 1) else {
            return pickers.into_iter().enumerate().map(|(j, p)| p.map(|p| pick(j, p))).collect();
        };
        // One uncontended lock per task hands it its own picker and result without `unsafe`.
        let tasks: Vec<Mutex<(Option<&mut HostPicker>, Option<Picked>)>> =
            pickers.into_iter().map(|p| Mutex::new((p, None))).collect();
        pool.run(tasks.len(), &|j| {
            let mut task = tasks[j].lock().unwrap_or_else(PoisonError::into_inner);
            let (picker, picked) = &mut *task;
            *picked = picker.as_deref_mut().map(|p| pick(j, p));
        });
        tasks.into_iter().map(|t| t.into_inner().unwrap_or_else(PoisonError::into_inner).1).collect()
    }
}
