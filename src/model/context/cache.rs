//! What a [`Context`] holds of its sequence: forgetting or rewinding it, KV rows that grow by
//! pages and go back to a pool, snapshots of its state, and another sequence's prefix copied
//! in on the device.

use crate::backend::gpu::Result as GpuResult;
use crate::backend::{Buffer, Device};

use super::Context;
use crate::model::decoder::Decoder;
use crate::model::kv_arena::ArenaSlot;
use crate::model::positions::RopeDeltas;
use crate::model::state::StateSnapshot;
use crate::model::ModelError;

impl Context {
    /// Gives the sequence images for a cross-attention decoder (Mllama): `states` is
    /// `[n_tiles * tile_keys][n_embd]` f32 (the projected vision output, `max_tiles` tiles per
    /// image, image after image), `mask` the dense `[tokens][n_tiles]` tile mask of the
    /// prompt from its first token (`mllama::processor_mask`; later positions repeat its last
    /// row). Keys and values are computed here, once; [`Self::reset`] drops them.
    pub fn set_cross_attention(
        &mut self,
        dev: &Device,
        dec: &Decoder,
        states: &Buffer,
        n_tiles: u32,
        mask: &[u32],
    ) -> Result<(), ModelError> {
        self.forget_in_flight();
        dec.set_cross(dev, &mut self.scratch, states, n_tiles, mask)?;
        // The recorded steps bind the store's buffers and tile count.
        self.drop_programs();
        Ok(())
    }

    /// Forgets the sequence (the cache is overwritten by the next tokens).
    pub fn reset(&mut self) {
        self.forget_in_flight();
        if self.scratch.has_cross() {
            self.scratch.clear_cross();
            self.drop_programs();
        }
        self.n_past = 0;
        self.rec_pos = 0;
        self.deltas = RopeDeltas::default();
    }

    /// Keeps only the first `n` cached tokens (a prompt-cache hit: the next prefill starts
    /// there). A decoder with recurrent layers cannot rewind them: unless `n` is where their
    /// state stands, the whole sequence is forgotten ([`Self::n_past`] tells what was kept).
    pub fn truncate(&mut self, n: u32) {
        self.forget_in_flight();
        self.n_past = self.n_past.min(n);
        self.sync_recurrent();
        self.deltas.truncate(self.n_past);
    }

    /// Recurrent states hold a summary of every token they consumed and cannot be rewound:
    /// when the cached length is not where they stand (a pipelined decode's surplus step was
    /// dropped, or the cache was cut), nothing of the sequence is reusable, so it starts over
    /// (the next step at position 0 zeroes the states). A no-op without recurrent layers.
    ///
    /// Design note: the pipelined decode loop (`engine::generate`) submits one step past the
    /// last token it keeps. Every one-token sampled step of a hybrid decoder first copies the
    /// recurrent states to a checkpoint (on the GPU, in the step's own command buffer: about
    /// 50 MiB per token for the 9B, small next to its weights), so [`Self::drop_last_step`]
    /// undoes that step exactly and the next turn reuses the cache; other rewinds start over.
    pub(super) fn sync_recurrent(&mut self) {
        if self.state.has_recurrent() && self.rec_pos != self.n_past {
            self.n_past = 0;
            self.rec_pos = 0;
        }
    }

    /// Whether the sequence state has recurrent layers (which restore only where they stand).
    pub fn has_recurrent(&self) -> bool {
        self.state.has_recurrent()
    }

    /// Positions the KV caches have room for now (`max_ctx` but for a [`Self::paged`]
    /// context).
    pub fn kv_rows(&self) -> u32 {
        self.state.rows()
    }

    /// Makes room for `rows` positions (at most `max_ctx`), growing the KV caches to the
    /// next whole page: new buffers, the cached positions copied over, the recorded steps
    /// dropped. Steps grow a paged context themselves; a pool reserves ahead of them.
    pub fn reserve_kv(&mut self, dev: &Device, rows: u32) -> GpuResult<()> {
        let grown = self.kv_rows_for(rows);
        if grown > self.kv_rows() {
            self.resize_kv(dev, grown)?;
        }
        Ok(())
    }

    /// The rows [`Self::reserve_kv`] of `rows` leaves the caches with.
    pub fn kv_rows_for(&self, rows: u32) -> u32 {
        match rows.min(self.opts.max_ctx) {
            rows if rows <= self.kv_rows() => self.kv_rows(),
            rows => rows.next_multiple_of(self.kv_page).min(self.opts.max_ctx),
        }
    }

    /// Forgets the cached positions and gives back every KV row (a sequence preempted by a
    /// pool: it is recomputed later). Llama 3.2 Vision's cross-attention store stays.
    /// A context in an arena keeps its range (the arena holds it).
    pub fn release_kv(&mut self, dev: &Device) -> GpuResult<()> {
        self.forget_in_flight();
        self.n_past = 0;
        self.rec_pos = 0;
        self.deltas = RopeDeltas::default();
        match self.state.arena_slot() {
            Some(_) => Ok(()),
            None => self.resize_kv(dev, 0),
        }
    }

    /// The arena slot whose range the KV caches are ([`Self::in_arena`]).
    pub fn arena_slot(&self) -> Option<&ArenaSlot> {
        self.state.arena_slot()
    }

    fn resize_kv(&mut self, dev: &Device, rows: u32) -> GpuResult<()> {
        self.state = self.state.resized(dev, rows, self.n_past)?;
        self.counters.submits += 1;
        self.drop_programs();
        Ok(())
    }

    /// Bytes of the sequence state (all layers' KV caches).
    pub fn state_bytes(&self) -> u64 {
        self.state.bytes()
    }

    /// Bytes of the cross-attention store (Mllama's image keys, values and mask rows; 0
    /// without images).
    pub fn cross_attention_bytes(&self) -> u64 {
        self.scratch.cross_bytes()
    }

    /// Bytes one cached position takes in all layers' state.
    pub fn state_bytes_per_token(&self) -> u64 {
        self.state.bytes_per_position()
    }

    /// Copies the first `rows` cached positions (at most those in the cache) to new buffers.
    /// With recurrent layers only the whole sequence can be saved (their state is valid at its
    /// end only): asked for fewer rows, the snapshot holds none.
    pub fn save_state(&mut self, dev: &Device, rows: u32) -> GpuResult<StateSnapshot> {
        let rows = self.copyable_rows(rows);
        let mut snapshot = self.state.snapshot(dev, rows)?;
        snapshot.rope_deltas = self.deltas.prefix(rows);
        self.counters.submits += 1;
        Ok(snapshot)
    }

    /// Of the first `rows` cached positions, those a copy can take: at most those in the
    /// cache; with recurrent layers all of them or none (their state is valid at the
    /// sequence's end only).
    fn copyable_rows(&self, rows: u32) -> u32 {
        let rows = rows.min(self.n_past);
        match self.state.has_recurrent() && (rows != self.n_past || self.rec_pos != self.n_past) {
            true => 0,
            false => rows,
        }
    }

    /// Puts the first `rows` positions of `snapshot` back; the cache then holds those (with
    /// recurrent layers, all of the snapshot's positions or none: see [`Self::n_past`]).
    pub fn restore_state(&mut self, dev: &Device, snapshot: &StateSnapshot, rows: u32) -> GpuResult<()> {
        self.forget_in_flight();
        self.n_past = 0;
        self.reserve_kv(dev, rows.min(snapshot.rows()))?;
        self.n_past = self.state.restore(dev, snapshot, rows)?;
        self.rec_pos = self.n_past;
        self.deltas = snapshot.rope_deltas.prefix(self.n_past);
        self.counters.submits += 1;
        Ok(())
    }

    /// Makes this context hold the first `rows` positions of `other`'s sequence (a context
    /// made with the same options), copied on the device: a prefix another sequence already
    /// computed. With recurrent layers only `other`'s whole sequence can be taken (fewer rows
    /// take nothing: see [`Self::n_past`]).
    pub fn copy_sequence_from(&mut self, dev: &Device, other: &Context, rows: u32) -> GpuResult<()> {
        self.forget_in_flight();
        let rows = other.copyable_rows(rows);
        if rows > 0 {
            // The rows held now are overwritten: none to carry into grown caches.
            self.n_past = 0;
            self.reserve_kv(dev, rows)?;
            self.state.copy_from(dev, &other.state, rows)?;
            self.counters.submits += 1;
        }
        self.n_past = rows;
        self.rec_pos = rows;
        self.deltas = other.deltas.prefix(rows);
        Ok(())
    }
}
