//! The KV pool of a [`Parallel`] run: the rows its slots' contexts hold together. Each context
//! holds one range of rows that grows by whole pages as its sequence does
//! ([`Context::reserve_kv`]); the pool caps their sum. A sequence that needs a page the pool no
//! longer has takes it from a free slot's kept sequence first (saved to the engine's prompt
//! cache, for a later turn to copy back), then from the newest running sequence newer than
//! itself, which is preempted: its rows are given back and its prompt and the tokens it was fed
//! are prefilled again later (it keeps its sampler, constraint and text, so it goes on where it
//! stopped), as vLLM recomputes a preempted request. The oldest sequence can always take rows
//! from every newer one, so a pool of at least `max_ctx` rows never deadlocks; a sequence that
//! cannot take a page waits a step.
//!
//! The default pool is every slot's whole range (`max_seqs * max_ctx` rows): it never
//! preempts. On a GPU its slots are then the ranges of one KV arena, allocated with the
//! first context (`crate::model::KvArena`: a batched step runs its sequences' attention
//! together), and elsewhere a slot holds only the pages its sequence reached. A smaller pool
//! admits more sequences of mixed lengths into the same memory, at the cost of recomputing
//! the newest when the long ones need the rows; contexts made in the arena before it was
//! set keep their ranges until they go idle, and then leave.

use crate::backend::Device;
use crate::model::Context;

use super::{Parallel, Running, SeqId};
use crate::engine::{Engine, EngineError, Prompt};

/// Rows a context's KV caches grow by by default. Each growth copies the rows held to new
/// buffers: with pages of 64, a sequence of 2048 positions copies each row 16 times on
/// average.
pub const DEFAULT_KV_PAGE: u32 = 64;

/// The KV rows a run's contexts may hold together, and the page they grow by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvPool {
    pub rows: u64,
    pub page: u32,
}

impl Parallel {
    /// The run's KV pool.
    pub fn kv_pool(&self) -> KvPool {
        self.pool
    }

    /// Caps the KV rows the run's contexts hold together at `pool.rows`, growing by
    /// `pool.page` rows (see the module docs). Fails, changing nothing, with
    /// [`EngineError::KvPoolTooSmall`] for a pool smaller than one sequence's whole context
    /// or a page of 0 rows. Contexts already made keep their page.
    pub fn set_kv_pool(&mut self, pool: KvPool) -> Result<(), EngineError> {
        if pool.rows < self.slot_rows as u64 || pool.page == 0 {
            return Err(EngineError::KvPoolTooSmall { rows: pool.rows, page: pool.page, least: self.slot_rows });
        }
        if pool.rows < self.max_seqs() as u64 * self.slot_rows as u64 {
            // New contexts grow ranges of their own; those in the arena leave as they go idle.
            self.arena = Some(Err(()));
        }
        self.pool = pool;
        Ok(())
    }

    /// KV rows the contexts hold now: the running sequences' and the free slots'.
    pub fn kv_rows_held(&self) -> u64 {
        let running = self.running.iter().map(|r| r.ctx.kv_rows() as u64);
        running.chain(self.idle.iter().map(|idle| idle.ctx.kv_rows() as u64)).sum()
    }

    /// Sequences preempted so far (each recomputed later).
    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// A new context for a slot: on a GPU with the default pool, a slot of the run's KV
    /// arena (its steps run the sequences' attention together); otherwise no rows until its
    /// sequence runs.
    pub(super) fn new_context(&mut self, engine: &Engine) -> Result<Context, EngineError> {
        let (dev, dec, opts) = (&engine.dev, &engine.decoder, engine.ctx.options());
        let whole = self.pool.rows >= self.max_seqs() as u64 * self.slot_rows as u64;
        if whole && matches!(dev, Device::Gpu(_)) {
            let arena = self.arena.get_or_insert_with(|| Context::arena(dev, dec, opts, self.batch.max_seqs()).map_err(|_| ()));
            if let Ok(arena) = arena {
                if let Some(ctx) = Context::in_arena(dev, dec, opts, arena)? {
                    return Ok(ctx);
                }
            }
        }
        Ok(Context::paged(dev, dec, opts, self.pool.page, 0)?)
    }

    /// Makes `ctx`, of sequence `id` and not counted in the pool now (taken out of the run),
    /// hold `rows` positions within the pool: rows are taken from free slots, then from
    /// running sequences newer than `id` (preempted). Whether it could.
    pub(super) fn reserve(&mut self, engine: &mut Engine, id: SeqId, ctx: &mut Context, rows: u32) -> Result<bool, EngineError> {
        let grown = ctx.kv_rows_for(rows);
        if grown > ctx.kv_rows() {
            if !self.free_rows(engine, id, grown as u64)? {
                return Ok(false);
            }
            ctx.reserve_kv(&engine.dev, rows)?;
            self.batch.forget(ctx);
        }
        Ok(true)
    }

    /// Frees pool rows until `rows` more fit, from free slots' kept sequences (saved to the
    /// prompt cache), then from the newest running sequences newer than `id`; false when
    /// those are not enough.
    pub(super) fn free_rows(&mut self, engine: &mut Engine, id: SeqId, rows: u64) -> Result<bool, EngineError> {
        while self.kv_rows_held() + rows > self.pool.rows {
            if let Some(i) = self.idle.iter().position(|idle| idle.ctx.kv_rows() > 0) {
                // Its kept sequence goes to the engine's prompt cache (as when a prompt
                // overwrites it), for a later turn to copy back.
                let idle = &mut self.idle[i];
                let live = std::mem::take(&mut idle.live);
                engine.prompt_cache.save_prefix(&engine.dev, &mut idle.ctx, &live)?;
                self.batch.forget(&idle.ctx);
                match idle.ctx.arena_slot() {
                    // Its range is the arena's (under a pool made smaller): it leaves.
                    Some(_) => drop(self.idle.swap_remove(i)),
                    None => idle.ctx.release_kv(&engine.dev)?,
                }
                continue;
            }
            // A sequence in the arena keeps its range until it leaves.
            let newer = self.running.iter_mut().filter(|r| r.id > id && r.ctx.kv_rows() > 0 && r.ctx.arena_slot().is_none());
            match newer.max_by_key(|r| r.id) {
                Some(victim) => {
                    victim.preempt(engine)?;
                    self.batch.forget(&victim.ctx);
                    self.preemptions += 1;
                }
                None => return Ok(false),
            }
        }
        Ok(true)
    }
}

impl Running {
    /// Gives back the sequence's rows; it is prefilled again from its start: a sequence that
    /// was decoding, its prompt and the tokens it was fed (its last picked token is fed after
    /// them, by the next decode step); one still prefilling, its prompt (none of it cached
    /// now).
    pub(super) fn preempt(&mut self, engine: &Engine) -> Result<(), EngineError> {
        match self.prefill.is_none() {
            true => {
                let fed = (self.ctx.n_past() as usize).saturating_sub(self.prompt.tokens.len());
                let tokens = [&self.prompt.tokens[..], &self.out.tokens[..fed]].concat();
                self.prefill = Some(Prompt { tokens, images: self.prompt.images.clone() });
                self.recompute = true;
            }
            false if !self.recompute => self.out.cached_tokens = 0,
            false => {}
        }
        Ok(self.ctx.release_kv(&engine.dev)?)
    }
}
