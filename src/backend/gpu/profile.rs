//! GPU time per kernel, for `webvlm bench --profile` (native adapters with timestamp
//! queries). While the profiler is on ([`Profiler::set_on`]), `Program::run` gives each
//! dispatch a compute pass of its own whose start and end the GPU writes into a query set
//! (`Program::run_profiled`); this module sums the times per kernel: shader label, entry
//! point and the role of the weight it reads, over the layers. The passes' boundaries
//! serialise the dispatches, so the totals run above an ordinary run's: the split between
//! kernels is the figure.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

/// Time summed over a kernel's dispatches.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KernelTime {
    pub dispatches: u64,
    pub ns: f64,
}

/// The per-kernel sums of the programs run while on, since the last [`Profiler::take`].
#[derive(Default)]
pub struct Profiler {
    on: Cell<bool>,
    by_kernel: RefCell<BTreeMap<String, KernelTime>>,
}

impl Profiler {
    /// Times the programs run from now on (or stops).
    pub fn set_on(&self, on: bool) {
        self.on.set(on);
    }

    pub fn is_on(&self) -> bool {
        self.on.get()
    }

    /// The sums so far, cleared.
    pub fn take(&self) -> BTreeMap<String, KernelTime> {
        std::mem::take(&mut *self.by_kernel.borrow_mut())
    }

    /// Adds one dispatch of `kernel` that took `ns`.
    pub(super) fn add(&self, kernel: String, ns: f64) {
        let mut sums = self.by_kernel.borrow_mut();
        let sum = sums.entry(kernel).or_default();
        sum.dispatches += 1;
        sum.ns += ns;
    }
}

/// A weight's label without its layers' `blk.N.` prefixes (`blk.3.ffn_down.weight` ->
/// `ffn_down.weight`), so that a role's dispatches sum over the layers.
pub(super) fn role(label: &str) -> String {
    label
        .split('+')
        .map(|part| match part.strip_prefix("blk.").and_then(|rest| rest.split_once('.')) {
            Some((layer, role)) if layer.bytes().all(|b| b.is_ascii_digit()) => role,
            _ => part,
        })
        .collect::<Vec<_>>()
        .join("+")
}
