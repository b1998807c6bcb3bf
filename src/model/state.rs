//! One sequence's state across steps: what each layer keeps between tokens. Attention layers
//! keep a KV cache (one row per position); a recurrent layer (the Gated DeltaNet layers of
//! hybrid decoders such as Qwen3.5) keeps a fixed-size state that each token overwrites: the
//! conv's last inputs and the delta rule's matrices, f32, zeroed at a sequence's start
//! ([`SequenceState::clear_recurrent`], which the context records when a step starts at
//! position 0). Families say what their layers keep ([`LayerKind`]), the context allocates
//! it once.
//!
//! Snapshots copy a sequence's first positions to other GPU buffers so that a sequence the
//! context is about to overwrite can be brought back later (the engine's saved prompt
//! prefixes). A KV cache can be cut at any position; a recurrent state cannot be rewound, so
//! a snapshot of a state with recurrent layers restores only at the exact position it was
//! taken ([`SequenceState::restore`] reports 0 positions restored otherwise, and the caller
//! prefills again from the start).

use super::kv_arena::ArenaSlot;
use super::positions::RopeDeltas;
use crate::backend::gpu::Result as GpuResult;
use crate::backend::{Buffer, Device, Program};
use crate::kernels::attention::KvDtype;

/// What one layer keeps between tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// A KV cache of `kv_dim` keys and values per position.
    Attention { kv_dim: u32 },
    /// A fixed-size recurrent state: `conv_floats` f32 of the conv's rolling window and
    /// `ssm_floats` f32 of the recurrence's matrices, whatever the position.
    Recurrent { conv_floats: u64, ssm_floats: u64 },
}

impl LayerKind {
    /// Elements of one position's keys (and of its values): `Some(kv_dim)` for an attention
    /// layer, `None` for a recurrent one.
    pub fn kv_dim(&self) -> Option<u32> {
        match *self {
            LayerKind::Attention { kv_dim } => Some(kv_dim),
            LayerKind::Recurrent { .. } => None,
        }
    }
}

/// One layer's state on the GPU.
pub enum LayerState {
    /// Keys and values, `[rows][kv_dim]` each, in the cache's dtype.
    Attention { k: Buffer, v: Buffer },
    /// The conv window `[channels][kernel - 1]` and the recurrence's state (for Gated
    /// DeltaNet `[Hv][dk][dv]`), f32.
    Recurrent { conv: Buffer, ssm: Buffer },
}

/// Every layer's state of one sequence.
pub struct SequenceState {
    layers: Vec<LayerState>,
    /// A copy of every recurrent layer's `(conv, ssm)` taken before a decode step, so that a
    /// step the pipelined decode loop submitted past the end can be undone
    /// ([`Self::record_checkpoint`], [`Self::restore_checkpoint`]).
    checkpoint: Vec<(Buffer, Buffer)>,
    kinds: Vec<LayerKind>,
    kv: KvDtype,
    /// Most positions the caches hold.
    rows: u32,
    /// The arena slot whose range of rows the KV caches are (`None`: caches of its own).
    slot: Option<ArenaSlot>,
}

impl SequenceState {
    /// Allocates the state of `layers` for `rows` positions (0: recurrent states only), KV
    /// caches in `kv`.
    pub fn new(dev: &Device, layers: &[LayerKind], rows: u32, kv: KvDtype) -> GpuResult<SequenceState> {
        let kinds = layers.to_vec();
        let layers = (layers.iter().enumerate())
            .map(|(i, kind)| match *kind {
                LayerKind::Attention { kv_dim } => LayerState::kv_cache(dev, i, kv.cache_bytes(rows, kv_dim)),
                LayerKind::Recurrent { conv_floats, ssm_floats } => Ok(LayerState::Recurrent {
                    conv: dev.storage(&format!("conv_state.{i}"), 4 * conv_floats.max(1))?,
                    ssm: dev.storage(&format!("ssm_state.{i}"), 4 * ssm_floats.max(1))?,
                }),
            })
            .collect::<GpuResult<Vec<_>>>()?;
        let checkpoint = (layers.iter().enumerate())
            .filter_map(|(i, l)| match l {
                LayerState::Recurrent { conv, ssm } => Some((i, conv.size(), ssm.size())),
                LayerState::Attention { .. } => None,
            })
            .map(|(i, conv, ssm)| {
                Ok((dev.storage(&format!("conv_checkpoint.{i}"), conv)?, dev.storage(&format!("ssm_checkpoint.{i}"), ssm)?))
            })
            .collect::<GpuResult<Vec<_>>>()?;
        Ok(SequenceState { layers, checkpoint, kinds, kv, rows, slot: None })
    }

    /// The state of `layers` whose KV caches are `slot`'s range of its arena (recurrent
    /// states of its own).
    pub fn in_arena(dev: &Device, layers: &[LayerKind], slot: ArenaSlot) -> GpuResult<SequenceState> {
        let (rows, kv) = (slot.arena.rows(), slot.arena.kv_dtype());
        let mut state = SequenceState::new(dev, layers, 0, kv)?;
        for (i, layer) in state.layers.iter_mut().enumerate() {
            if let Some((k, v)) = slot.arena.layer(i) {
                *layer = LayerState::Attention { k: k.clone(), v: v.clone() };
            }
        }
        (state.rows, state.slot) = (rows, Some(slot));
        Ok(state)
    }

    /// The arena slot the KV caches are a range of.
    pub fn arena_slot(&self) -> Option<&ArenaSlot> {
        self.slot.as_ref()
    }

    /// The first row of the KV caches in their buffers (the arena slot's; 0 for caches of
    /// its own): the step's `kv_base`.
    pub fn kv_base(&self) -> u32 {
        self.slot.as_ref().map_or(0, ArenaSlot::base)
    }

    /// Positions the KV caches hold.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// The same state with room for `rows` positions: new KV buffers holding the first
    /// `keep` positions of these (at most `rows`); the recurrent states and their checkpoint
    /// are these very buffers.
    ///
    /// # Panics
    /// For a state in an arena, whose range is fixed (the context never resizes one).
    pub fn resized(&self, dev: &Device, rows: u32, keep: u32) -> GpuResult<SequenceState> {
        assert!(self.slot.is_none(), "a KV range of an arena is not resized");
        let keep = keep.min(rows);
        let mut p = Program::new();
        let layers = (self.layers.iter().zip(&self.kinds).enumerate())
            .map(|(i, (layer, kind))| match (layer, *kind) {
                (LayerState::Attention { k, v }, LayerKind::Attention { kv_dim }) => {
                    let resized = LayerState::kv_cache(dev, i, self.kv.cache_bytes(rows, kv_dim))?;
                    let [span, _] = self.spans(i, keep);
                    let [to_k, to_v] = resized.buffers();
                    p.copy(k, 0, to_k, 0, span)?;
                    p.copy(v, 0, to_v, 0, span)?;
                    Ok(resized)
                }
                (LayerState::Recurrent { conv, ssm }, _) => Ok(LayerState::Recurrent { conv: conv.clone(), ssm: ssm.clone() }),
                (LayerState::Attention { .. }, LayerKind::Recurrent { .. }) => unreachable!("layer {i} was made of its kind"),
            })
            .collect::<GpuResult<Vec<_>>>()?;
        p.run(dev)?;
        let (checkpoint, kinds) = (self.checkpoint.clone(), self.kinds.clone());
        Ok(SequenceState { layers, checkpoint, kinds, kv: self.kv, rows, slot: None })
    }

    /// The KV cache of layer `i` (families call this for their attention layers).
    ///
    /// # Panics
    /// If layer `i` is recurrent (a family bug: it said what its layers keep).
    pub fn kv(&self, i: usize) -> (&Buffer, &Buffer) {
        match &self.layers[i] {
            LayerState::Attention { k, v } => (k, v),
            LayerState::Recurrent { .. } => panic!("layer {i} is recurrent, not attention"),
        }
    }

    /// The conv window and recurrence state of layer `i` (families call this for their
    /// recurrent layers).
    ///
    /// # Panics
    /// If layer `i` keeps a KV cache (a family bug).
    pub fn recurrent(&self, i: usize) -> (&Buffer, &Buffer) {
        match &self.layers[i] {
            LayerState::Recurrent { conv, ssm } => (conv, ssm),
            LayerState::Attention { .. } => panic!("layer {i} keeps a KV cache, not a recurrent state"),
        }
    }

    /// Whether any layer keeps a recurrent state (which cannot be rewound).
    pub fn has_recurrent(&self) -> bool {
        self.layers.iter().any(|l| matches!(l, LayerState::Recurrent { .. }))
    }

    /// Records the zeroing of every recurrent state (a new sequence starts).
    pub fn clear_recurrent(&self, p: &mut Program) -> GpuResult<()> {
        for (conv, ssm) in self.recurrent_buffers() {
            p.clear(conv)?;
            p.clear(ssm)?;
        }
        Ok(())
    }

    /// Records a copy of every recurrent state into the checkpoint (before a step that may
    /// have to be undone).
    pub fn record_checkpoint(&self, p: &mut Program) -> GpuResult<()> {
        for ((conv, ssm), (c, s)) in self.recurrent_buffers().zip(&self.checkpoint) {
            p.copy(conv, 0, c, 0, conv.size())?;
            p.copy(ssm, 0, s, 0, ssm.size())?;
        }
        Ok(())
    }

    /// Puts the checkpoint back into the recurrent states (undoes the steps since
    /// [`Self::record_checkpoint`]).
    pub fn restore_checkpoint(&self, dev: &Device) -> GpuResult<()> {
        let mut p = Program::new();
        for ((conv, ssm), (c, s)) in self.recurrent_buffers().zip(&self.checkpoint) {
            p.copy(c, 0, conv, 0, conv.size())?;
            p.copy(s, 0, ssm, 0, ssm.size())?;
        }
        p.run(dev)
    }

    fn recurrent_buffers(&self) -> impl Iterator<Item = (&Buffer, &Buffer)> {
        self.layers.iter().filter_map(|l| match l {
            LayerState::Recurrent { conv, ssm } => Some((conv, ssm)),
            LayerState::Attention { .. } => None,
        })
    }

    /// GPU memory of every layer's state (with the recurrent states' checkpoint).
    pub fn bytes(&self) -> u64 {
        let checkpoint: u64 = self.checkpoint.iter().map(|(c, s)| c.size() + s.size()).sum();
        let layer = |(i, l): (usize, &LayerState)| match (l, &self.slot) {
            (LayerState::Attention { .. }, Some(_)) => 2 * self.rows as u64 * self.row_bytes(i),
            _ => l.buffers().iter().map(|b| b.size()).sum::<u64>(),
        };
        self.layers.iter().enumerate().map(layer).sum::<u64>() + checkpoint
    }

    /// Bytes one position takes in all KV caches (recurrent states take the same bytes at
    /// every position).
    pub fn bytes_per_position(&self) -> u64 {
        (0..self.layers.len()).map(|i| 2 * self.row_bytes(i)).sum()
    }

    /// Bytes of one position in layer `i`'s K or V cache (0 for a recurrent layer).
    fn row_bytes(&self, i: usize) -> u64 {
        match self.kinds[i] {
            LayerKind::Attention { kv_dim } => self.kv.cache_bytes(1, kv_dim),
            LayerKind::Recurrent { .. } => 0,
        }
    }

    /// Bytes of each of a layer's two buffers a snapshot of `rows` positions copies: the first
    /// `rows` rows of a KV cache, rounded up to WebGPU's 4-byte copy alignment (the rounding
    /// stays inside the padded buffer); a recurrent state whole.
    fn spans(&self, i: usize, rows: u32) -> [u64; 2] {
        match &self.layers[i] {
            LayerState::Attention { .. } => [(rows as u64 * self.row_bytes(i)).next_multiple_of(4); 2],
            LayerState::Recurrent { conv, ssm } => [conv.size(), ssm.size()],
        }
    }

    /// Where layer `i`'s first position lies in its buffers (bytes): its arena range's first
    /// row for a KV cache (rows of 4-byte multiples: `kv_dim` is), 0 otherwise.
    fn offset(&self, i: usize) -> u64 {
        self.kv_base() as u64 * self.row_bytes(i)
    }

    /// Copies the first `rows` positions of every layer to new buffers. Recurrent states are
    /// copied whole: they are valid for `rows` only when the sequence holds exactly `rows`
    /// positions (the context snapshots its whole sequence), and restore only there.
    pub fn snapshot(&self, dev: &Device, rows: u32) -> GpuResult<StateSnapshot> {
        let mut p = Program::new();
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let [a, b] = layer.buffers();
            let ([span_a, span_b], at) = (self.spans(i, rows), self.offset(i));
            let copy = dev.storage(&format!("state_snapshot.{i}"), (span_a + span_b).max(4))?;
            p.copy(a, at, &copy, 0, span_a)?;
            p.copy(b, at, &copy, span_a, span_b)?;
            layers.push((copy, span_a));
        }
        p.run(dev)?;
        Ok(StateSnapshot { layers, rows, rope_deltas: RopeDeltas::default() })
    }

    /// Puts the first `rows` positions of `snapshot` back (at most those it holds); returns
    /// the positions restored. With recurrent layers only the snapshot's own position can be
    /// restored: asked for fewer rows, nothing is restored and 0 is returned.
    pub fn restore(&self, dev: &Device, snapshot: &StateSnapshot, rows: u32) -> GpuResult<u32> {
        let rows = rows.min(snapshot.rows);
        if self.has_recurrent() && rows != snapshot.rows {
            return Ok(0);
        }
        let mut p = Program::new();
        for (i, (layer, (copy, copy_span))) in self.layers.iter().zip(&snapshot.layers).enumerate() {
            let [a, b] = layer.buffers();
            let ([span_a, span_b], at) = (self.spans(i, rows), self.offset(i));
            p.copy(copy, 0, a, at, span_a)?;
            p.copy(copy, *copy_span, b, at, span_b)?;
        }
        p.run(dev)?;
        Ok(rows)
    }

    /// Copies the first `rows` positions of every layer of `from` (a state made alike) into
    /// this one, buffer to buffer: a prefix shared with another sequence. Recurrent states are
    /// copied whole (the caller copies them only where `from` stands). Two ranges of one
    /// arena go through a buffer between them (WebGPU copies between distinct buffers only).
    pub fn copy_from(&self, dev: &Device, from: &SequenceState, rows: u32) -> GpuResult<()> {
        let one_arena = matches!((&self.slot, &from.slot), (Some(a), Some(b)) if a.shares_arena(b));
        let mut p = Program::new();
        for (i, (layer, source)) in self.layers.iter().zip(&from.layers).enumerate() {
            let ([a, b], [from_a, from_b]) = (layer.buffers(), source.buffers());
            let ([span_a, span_b], (at, from_at)) = (self.spans(i, rows), (self.offset(i), from.offset(i)));
            match one_arena && self.row_bytes(i) > 0 {
                true => {
                    let between = dev.storage("kv_copy", (span_a + span_b).max(4))?;
                    p.copy(from_a, from_at, &between, 0, span_a)?;
                    p.copy(from_b, from_at, &between, span_a, span_b)?;
                    p.copy(&between, 0, a, at, span_a)?;
                    p.copy(&between, span_a, b, at, span_b)?;
                }
                false => {
                    p.copy(from_a, from_at, a, at, span_a)?;
                    p.copy(from_b, from_at, b, at, span_b)?;
                }
            }
        }
        p.run(dev)
    }
}

impl LayerState {
    /// Layer `i`'s keys and values, `bytes` each (at least 4: a range of no rows).
    fn kv_cache(dev: &Device, i: usize, bytes: u64) -> GpuResult<LayerState> {
        let (k, v) = (dev.storage(&format!("k_cache.{i}"), bytes.max(4))?, dev.storage(&format!("v_cache.{i}"), bytes.max(4))?);
        Ok(LayerState::Attention { k, v })
    }

    fn buffers(&self) -> [&Buffer; 2] {
        match self {
            LayerState::Attention { k, v } => [k, v],
            LayerState::Recurrent { conv, ssm } => [conv, ssm],
        }
    }
}

/// The first `rows` positions of every layer's state, on the GPU.
pub struct StateSnapshot {
    /// Per layer: one buffer holding the first buffer's bytes (K rows, or the conv window)
    /// then the second's (V rows, or the recurrence state), and the bytes of the first.
    layers: Vec<(Buffer, u64)>,
    rows: u32,
    /// The multimodal RoPE deltas of the saved rows (set by the context).
    pub(crate) rope_deltas: RopeDeltas,
}

impl StateSnapshot {
    /// Positions it holds.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// GPU memory it takes.
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(|(b, _)| b.size()).sum()
    }
}
