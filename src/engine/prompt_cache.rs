//! Prompt caching: the context's KV cache still holds the last request's sequence, so a new
//! prompt that starts the same way (the next turn of a chat, a repeated system prompt, the
//! same image asked about again) prefills only what follows the longest common prefix.
//!
//! Every cached position has a key: its token id, or for an image position the hash of the
//! image's file and preprocessing settings with the position's index in the image. Two
//! positions match when their keys are equal; KV entries depend only on the positions up to
//! theirs (causal attention), so an equal prefix has equal entries. At least the prompt's last
//! token is always run again, since its logits choose the first new token.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use super::Prompt;

/// A position that never matches (an image of unknown content).
const NEVER: u64 = u64::MAX;
/// Image keys have the top bit set; token ids never do.
const IMAGE_BIT: u64 = 1 << 63;

/// The keys of the sequence held in the KV cache.
#[derive(Default)]
pub struct PromptCache {
    live: Vec<u64>,
}

impl PromptCache {
    /// The keys of `prompt`'s positions (`img`: the `[IMG]` id, when the vocabulary has one).
    pub fn keys(prompt: &Prompt, img: Option<u32>) -> Vec<u64> {
        let mut images = prompt.images.iter();
        let (mut image, mut left, mut index) = (None, 0u32, 0u32);
        prompt
            .tokens
            .iter()
            .map(|&t| {
                if Some(t) != img || prompt.images.is_empty() {
                    return t as u64;
                }
                if left == 0 {
                    image = images.next();
                    left = image.map_or(0, |f| f.n_tokens());
                    index = 0;
                }
                left = left.saturating_sub(1);
                index += 1;
                match image.and_then(|f| f.content) {
                    Some(content) => {
                        let mut h = DefaultHasher::new();
                        (content, index).hash(&mut h);
                        h.finish() | IMAGE_BIT
                    }
                    None => NEVER,
                }
            })
            .collect()
    }

    /// How many leading positions of a prompt with `keys` the cache holds (at most all but
    /// the last). The cache is left empty until [`Self::set`] records the new sequence, so a
    /// generation that fails half way leaves nothing stale behind.
    pub fn take_reusable(&mut self, keys: &[u64]) -> usize {
        let live = std::mem::take(&mut self.live);
        let common = live.iter().zip(keys).take_while(|(a, b)| a == b && **a != NEVER).count();
        common.min(keys.len().saturating_sub(1))
    }

    /// Records the sequence the KV cache now holds.
    pub fn set(&mut self, live: Vec<u64>) {
        self.live = live;
    }

    /// Forgets the cached sequence (its KV entries were overwritten).
    pub fn clear(&mut self) {
        self.live.clear();
    }
}
