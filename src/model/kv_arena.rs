//! A KV arena: one K and one V buffer per attention layer, shared by the slots of a batched
//! run, each slot a fixed range of `rows` rows (slot `i` from row `i * rows`). A context in
//! an arena ([`Context::in_arena`](super::Context::in_arena)) runs every kernel as on caches
//! of its own, its step's `kv_base` pointing at its range; and the sequences of a batched
//! decode step whose caches are ranges of one arena run RoPE with the cache store and
//! attention of all of them in one dispatch each (`kernels::attention::attention_decode_seqs`),
//! where caches of their own take a dispatch per sequence (WebGPU has no arrays of buffer
//! bindings). The ranges are fixed, as in vLLM's preallocated pool: a slot's rows are
//! allocated with the arena, never grown or copied; the memory plan counts them as it counts
//! every slot's whole context.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use crate::backend::gpu::{GpuError, Result as GpuResult};
use crate::backend::{Buffer, Device};
use crate::kernels::attention::KvDtype;

/// The shared caches and which slots are taken.
pub struct KvArena {
    /// Per layer: the K and V buffers of an attention layer, `None` for a recurrent one.
    layers: Vec<Option<(Buffer, Buffer)>>,
    /// Rows of each slot.
    rows: u32,
    kv: KvDtype,
    /// Per slot: the lease of the context holding it (dead when free).
    leases: RefCell<Vec<Weak<()>>>,
}

/// One slot of an arena, held by a context while it lives.
pub struct ArenaSlot {
    pub(super) arena: Rc<KvArena>,
    index: u32,
    _lease: Rc<()>,
}

impl KvArena {
    /// Caches for `slots` slots of `rows` rows each, in `kv`, of layers whose K and V rows
    /// are `kv_dims` elements wide (`None`: a recurrent layer, which keeps no rows). Fails
    /// with [`GpuError::Shape`] where one layer's range of all slots exceeds the device's
    /// storage-binding limit (a kernel binds the whole buffer).
    pub fn new(dev: &Device, kv_dims: &[Option<u32>], slots: u32, rows: u32, kv: KvDtype) -> GpuResult<Rc<KvArena>> {
        let limit = dev.caps().max_storage_binding;
        let layers = (kv_dims.iter().enumerate())
            .map(|(i, kv_dim)| match *kv_dim {
                Some(kv_dim) => {
                    let bytes = kv.cache_bytes(slots, kv_dim).saturating_mul(rows as u64).max(4);
                    if bytes > limit {
                        return Err(GpuError::Shape(format!(
                            "a KV arena of {bytes} B per layer over the {limit} B binding limit"
                        )));
                    }
                    Ok(Some((dev.storage(&format!("k_arena.{i}"), bytes)?, dev.storage(&format!("v_arena.{i}"), bytes)?)))
                }
                None => Ok(None),
            })
            .collect::<GpuResult<Vec<_>>>()?;
        let leases = RefCell::new((0..slots).map(|_| Weak::new()).collect());
        Ok(Rc::new(KvArena { layers, rows, kv, leases }))
    }

    /// A free slot, taken until the returned one is dropped; `None` when all are taken.
    pub fn take_slot(self: &Rc<Self>) -> Option<ArenaSlot> {
        let mut leases = self.leases.borrow_mut();
        let index = leases.iter().position(|l| l.strong_count() == 0)?;
        let lease = Rc::new(());
        leases[index] = Rc::downgrade(&lease);
        Some(ArenaSlot { arena: self.clone(), index: index as u32, _lease: lease })
    }

    /// Rows of each slot.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    pub fn kv_dtype(&self) -> KvDtype {
        self.kv
    }

    /// Layer `i`'s K and V buffers (`None` for a recurrent layer).
    pub(super) fn layer(&self, i: usize) -> Option<(&Buffer, &Buffer)> {
        self.layers.get(i)?.as_ref().map(|(k, v)| (k, v))
    }
}

impl ArenaSlot {
    /// The slot's first row in the arena's buffers.
    pub fn base(&self) -> u32 {
        self.index * self.arena.rows
    }

    /// Whether `other` is a slot of the same arena.
    pub fn shares_arena(&self, other: &ArenaSlot) -> bool {
        Rc::ptr_eq(&self.arena, &other.arena)
    }
}
