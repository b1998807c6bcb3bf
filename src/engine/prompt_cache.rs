//! Prompt caching: a new prompt that starts like an earlier one (the next turn of a chat, a
//! repeated system prompt, the same image asked about again) prefills only what follows the
//! longest common prefix.
//!
//! The context's KV cache holds the live sequence (the last request's). When a prompt would
//! overwrite a part of it worth keeping, that sequence is first copied to a saved prefix on
//! the GPU; a later prompt that matches a saved prefix better than the live sequence gets it
//! copied back. Saved prefixes share a byte budget and the least recently used go first, so
//! two chats taken in turns, or many chats over one long system prompt, all stay cached.
//!
//! Every cached position has a key ([`PosKey`]): its token id, or for an image position the
//! SHA-256 of the image's file and preprocessing settings (the whole digest, shared by the
//! image's positions) with the position's index in the image. Two positions match when their
//! keys are equal; KV entries depend only on the positions up to
//! theirs (causal attention), so an equal prefix has equal entries. At least the prompt's last
//! token is always run again, since its logits choose the first new token.
//!
//! A decoder with recurrent layers (Qwen3.5's Gated DeltaNet) cannot cut its state back: a
//! live sequence or saved prefix is reusable only whole. So the engine saves such a state at
//! the prompt's turn boundaries while it prefills ([`turn_boundaries`]: after the first and
//! the last end-of-turn token, that is the end of the system prompt and of the last message)
//! and at the prompt's end, where the next turn of the chat, a regenerated reply or a new
//! chat with the same system prompt pick it up.
//!
//! The saved prefixes belong to the engine, not to one context: a parallel run's slots
//! save the sequences they overwrite there and copy back from there too
//! ([`PromptCache::reuse_in`]).

use std::rc::Rc;

use crate::backend::gpu::Result as GpuResult;
use crate::backend::Device;
use crate::model::{Context, StateSnapshot};

use super::{ImageDigest, Prompt};

/// The key of one cached position (16 bytes: an image's digest is shared by its positions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PosKey {
    /// A text token.
    Token(u32),
    /// Position `index` (from 1) of the image with this digest.
    Image { digest: Rc<ImageDigest>, index: u32 },
    /// An image position of unknown content: it never matches.
    Unknown,
}
/// Shorter sequences are not worth a copy: they prefill in about one chunk.
const MIN_SAVED_TOKENS: usize = 32;
/// GPU memory for saved prefixes unless the engine is told otherwise: ~2,500 positions of
/// Ministral 3 3B with an f16 cache (104 KiB each), ~5,800 of SmolLM2 with an f32 one.
pub const DEFAULT_PROMPT_CACHE_BYTES: u64 = 256 << 20;

/// The keys of the live sequence and the saved prefixes.
pub struct PromptCache {
    live: Vec<PosKey>,
    saved: Vec<Saved>,
    budget: u64,
    /// Counts uses, for least-recently-used eviction.
    clock: u64,
    /// Saved prefixes dropped for the budget so far.
    evicted: u64,
}

struct Saved {
    keys: Vec<PosKey>,
    /// Shared so that a prefix being copied back outlives its eviction by this very request.
    kv: Rc<StateSnapshot>,
    last_used: u64,
}

/// What the prompt cache holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PromptCacheStats {
    /// Positions of the live sequence (in the context's KV cache).
    pub live_tokens: usize,
    /// Positions of each saved prefix, most recently used first.
    pub saved_tokens: Vec<usize>,
    /// GPU memory of the saved prefixes, and its limit.
    pub saved_bytes: u64,
    pub budget_bytes: u64,
    /// Saved prefixes evicted for the budget since the engine was made (least recently
    /// used first).
    pub evicted: u64,
}

impl PromptCache {
    /// An empty cache keeping at most `budget` bytes of saved prefixes.
    pub fn new(budget: u64) -> PromptCache {
        PromptCache { live: Vec::new(), saved: Vec::new(), budget, clock: 0, evicted: 0 }
    }

    /// The keys of `prompt`'s positions (`img`: the token whose positions take image features,
    /// when a vision encoder is loaded).
    pub fn keys(prompt: &Prompt, img: Option<u32>) -> Vec<PosKey> {
        let images: Vec<_> = prompt.images.iter().map(|f| (f.content, f.n_tokens())).collect();
        keys_of(&prompt.tokens, &images, img)
    }

    /// Readies `ctx` for a prompt with `keys`: keeps the live sequence's common prefix or
    /// copies back a saved prefix that matches further, saving the live sequence first when a
    /// part worth keeping would be overwritten. Returns the positions reused (at most all but
    /// the last). The live keys stay empty until [`Self::set`] records the new sequence, so a
    /// generation that fails half way leaves nothing stale behind.
    pub fn reuse(&mut self, dev: &Device, ctx: &mut Context, keys: &[PosKey]) -> GpuResult<usize> {
        let live = std::mem::take(&mut self.live);
        self.reuse_in(dev, ctx, live, keys)
    }

    /// [`Self::reuse`] on a context other than the engine's (a parallel run's slot), which
    /// holds the sequence `live`: the saved prefixes are shared by every context of the
    /// engine.
    pub fn reuse_in(&mut self, dev: &Device, ctx: &mut Context, live: Vec<PosKey>, keys: &[PosKey]) -> GpuResult<usize> {
        self.clock += 1;
        let usable = keys.len().saturating_sub(1);
        let recurrent = ctx.has_recurrent();
        let live_common = live_prefix(&live, keys, ctx);
        let best = (self.saved.iter().enumerate())
            .map(|(i, s)| (common_prefix(&s.keys, keys).min(usable), i))
            .filter(|&(n, i)| !recurrent || n == self.saved[i].keys.len())
            .filter(|&(n, _)| n > live_common)
            .max();
        let restore = best.map(|(n, i)| {
            let s = &mut self.saved[i];
            s.last_used = self.clock;
            let kv = Rc::clone(&s.kv);
            // Copied back whole, it becomes the live sequence (a recurrent state's copy
            // stays: the live sequence moves on from it and cannot come back).
            if n == s.keys.len() && !recurrent {
                self.saved.swap_remove(i);
            }
            (n, kv)
        });
        let kept = if restore.is_some() { 0 } else { live_common };
        if live.len() - kept >= MIN_SAVED_TOKENS {
            self.save(dev, ctx, live)?;
        }
        // What the context holds afterwards, not what was asked for: a decoder with
        // recurrent layers restores or keeps a prefix only where its state stands.
        match restore {
            Some((n, kv)) => ctx.restore_state(dev, &kv, n as u32)?,
            None => ctx.truncate(live_common as u32),
        }
        Ok(ctx.n_past() as usize)
    }

    /// Saves the sequence state of `ctx`, which holds exactly the positions of `keys` (a turn
    /// boundary or the end of a prompt, for a decoder with recurrent layers).
    pub fn save_prefix(&mut self, dev: &Device, ctx: &mut Context, keys: &[PosKey]) -> GpuResult<()> {
        self.save(dev, ctx, keys.to_vec())
    }

    /// Copies the live sequence's KV rows (as many as the budget allows) to a saved prefix,
    /// evicting the least recently used.
    fn save(&mut self, dev: &Device, ctx: &mut Context, mut keys: Vec<PosKey>) -> GpuResult<()> {
        let per_token = ctx.state_bytes_per_token().max(1);
        keys.truncate((ctx.n_past() as usize).min((self.budget / per_token) as usize));
        // A KV cache can be cut anywhere, so a longer saved sequence serves its prefixes; a
        // recurrent state serves only its own length.
        let covers = |longer: &[PosKey], shorter: &[PosKey]| match ctx.has_recurrent() {
            false => longer.starts_with(shorter),
            true => longer == shorter,
        };
        if keys.len() < MIN_SAVED_TOKENS || self.saved.iter().any(|s| covers(&s.keys, &keys)) {
            return Ok(());
        }
        self.saved.retain(|s| !covers(&keys, &s.keys));
        let needed = keys.len() as u64 * per_token;
        self.saved.sort_by_key(|s| std::cmp::Reverse(s.last_used));
        while self.saved_bytes() + needed > self.budget && self.saved.pop().is_some() {
            self.evicted += 1;
        }
        let kv = ctx.save_state(dev, keys.len() as u32)?;
        // A decoder with recurrent layers saves its whole sequence or nothing.
        keys.truncate(kv.rows() as usize);
        if keys.len() < MIN_SAVED_TOKENS {
            return Ok(());
        }
        self.saved.push(Saved { keys, kv: Rc::new(kv), last_used: self.clock });
        Ok(())
    }

    /// Records the sequence the KV cache now holds.
    pub fn set(&mut self, live: Vec<PosKey>) {
        self.live = live;
    }

    /// Forgets the live sequence (its KV entries were overwritten); saved prefixes stay.
    pub fn clear(&mut self) {
        self.live.clear();
    }

    /// Forgets the live sequence and every saved prefix (their image positions were computed
    /// from features the encoder would no longer give).
    pub fn clear_all(&mut self) {
        self.live.clear();
        self.saved.clear();
    }

    /// Changes the budget, evicting the least recently used saved prefixes over it.
    pub fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
        self.saved.sort_by_key(|s| std::cmp::Reverse(s.last_used));
        while self.saved_bytes() > self.budget && self.saved.pop().is_some() {
            self.evicted += 1;
        }
    }

    fn saved_bytes(&self) -> u64 {
        self.saved.iter().map(|s| s.kv.bytes()).sum()
    }

    pub fn stats(&self) -> PromptCacheStats {
        let mut saved: Vec<_> = self.saved.iter().map(|s| (s.last_used, s.keys.len())).collect();
        saved.sort_by_key(|&(used, _)| std::cmp::Reverse(used));
        PromptCacheStats {
            live_tokens: self.live.len(),
            saved_tokens: saved.into_iter().map(|(_, n)| n).collect(),
            saved_bytes: self.saved_bytes(),
            budget_bytes: self.budget,
            evicted: self.evicted,
        }
    }
}

/// The keys of positions `tokens` whose `[IMG]` runs are filled by images of
/// `(content, n_tokens)`, in order.
fn keys_of(tokens: &[u32], images: &[(Option<ImageDigest>, u32)], img: Option<u32>) -> Vec<PosKey> {
    let mut next = images.iter();
    let (mut digest, mut left, mut index) = (None, 0u32, 0u32);
    tokens
        .iter()
        .map(|&t| {
            if Some(t) != img || images.is_empty() {
                return PosKey::Token(t);
            }
            if left == 0 {
                let image = next.next();
                digest = image.and_then(|(content, _)| content.map(Rc::new));
                left = image.map_or(0, |&(_, n)| n);
                index = 0;
            }
            left = left.saturating_sub(1);
            index += 1;
            match &digest {
                Some(d) => PosKey::Image { digest: Rc::clone(d), index },
                None => PosKey::Unknown,
            }
        })
        .collect()
}

/// Where a decoder with recurrent layers saves its state while prefilling `tokens` from
/// `cached`: after the first and the last end-of-turn token (`eot`), if past `cached`, before
/// the last token and long enough to be worth a copy, in order.
pub fn turn_boundaries(tokens: &[u32], cached: usize, eot: &[u32]) -> Vec<usize> {
    let ends = || tokens.iter().enumerate().filter(|(_, t)| eot.contains(t)).map(|(i, _)| i + 1);
    let mut at: Vec<usize> = ends().take(1).chain(ends().next_back()).collect();
    at.dedup();
    at.retain(|&b| b > cached && b >= MIN_SAVED_TOKENS && b < tokens.len());
    at
}

/// Positions of `ctx`, which holds the sequence `live`, that a prompt with `keys` can keep:
/// the common prefix, short of the prompt's last token (its logits pick the first new one);
/// with recurrent layers the whole cached sequence or nothing.
pub fn live_prefix(live: &[PosKey], keys: &[PosKey], ctx: &Context) -> usize {
    prefix_of_rows(live, keys, ctx.n_past() as usize, ctx.has_recurrent())
}

/// [`live_prefix`] of a context that holds (or is about to hold) the first `rows` positions
/// of `live`.
pub fn prefix_of_rows(live: &[PosKey], keys: &[PosKey], rows: usize, recurrent: bool) -> usize {
    let common = common_prefix(live, keys).min(rows).min(keys.len().saturating_sub(1));
    match recurrent && common != rows {
        true => 0,
        false => common,
    }
}

/// Leading positions on which `a` and `b` agree.
fn common_prefix(a: &[PosKey], b: &[PosKey]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y && **x != PosKey::Unknown).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG: u32 = 10;

    #[test]
    fn turn_boundaries_follow_the_first_and_last_end_of_turn() {
        const EOT: u32 = 2;
        let turn = |n: usize| std::iter::repeat_n(5, n - 1).chain([EOT]);
        let prompt: Vec<u32> = turn(40).chain(turn(40)).chain(turn(40)).chain([5, 5]).collect();
        assert_eq!(turn_boundaries(&prompt, 0, &[EOT]), [40, 120]);
        assert_eq!(turn_boundaries(&prompt, 40, &[EOT, 7]), [120], "already cached");
        assert_eq!(turn_boundaries(&prompt[..120], 0, &[EOT]), [40], "not at the prompt's end");
        assert_eq!(turn_boundaries(&prompt[20..], 0, &[EOT]), [100], "too short a first turn");
        assert!(turn_boundaries(&prompt, 0, &[]).is_empty());
    }

    #[test]
    fn image_positions_match_by_the_whole_digest() {
        let one = [7u8; 32];
        let mut other = one;
        other[31] ^= 1;
        let tokens = [1, IMG, IMG, IMG, 2];
        let a = keys_of(&tokens, &[(Some(one), 3)], Some(IMG));
        assert_eq!(a, keys_of(&tokens, &[(Some(one), 3)], Some(IMG)), "same image, same keys");
        let b = keys_of(&tokens, &[(Some(other), 3)], Some(IMG));
        assert_eq!(common_prefix(&a, &b), 1, "images differing in the digest's last bit share no position");
        assert_eq!((&a[0], &a[4]), (&PosKey::Token(1), &PosKey::Token(2)));
        assert_eq!(a[2], PosKey::Image { digest: Rc::new(one), index: 2 });
        // Positions of one image differ from each other and from any token id.
        assert_ne!(a[1], a[2]);
        assert!(a[1..4].iter().all(|k| !matches!(k, PosKey::Token(_))));
    }

    #[test]
    fn unknown_images_never_match() {
        let tokens = [1, IMG, IMG, 2];
        let a = keys_of(&tokens, &[(None, 2)], Some(IMG));
        assert_eq!(a[1..3], [PosKey::Unknown, PosKey::Unknown]);
        assert_eq!(common_prefix(&a, &a), 1);
        // An [IMG] without images is a token like any other.
        assert_eq!(keys_of(&tokens, &[], Some(IMG))[1], PosKey::Token(IMG));
    }

    #[test]
    fn a_position_key_stays_small() {
        assert!(std::mem::size_of::<PosKey>() <= 16, "{} bytes", std::mem::size_of::<PosKey>());
    }
}
