//! The token environment llguidance works in ([`toktrie::TokenizerEnv`]), built from our
//! [`Tokenizer`].
//!
//! Every id's bytes come from [`Tokenizer::token_bytes`] (what the id contributes to
//! `decode`); special tokens (control and unknown types) get llguidance's
//! [`TokTrie::SPECIAL_TOKEN_MARKER`] byte `0xFF` in front of their text, a byte no UTF-8
//! text contains, so no grammar over text can ever match them. The end-of-generation ids
//! ([`Tokenizer::eos_ids`]) are the trie's EOS set: llguidance allows them exactly when the
//! grammar accepts.
//!
//! Tokenizing (llguidance uses it for forced text) is our `encode`, kept only when its
//! tokens spell back exactly the bytes asked for; anything else (invalid UTF-8, text that
//! contains a special token's spelling, SentencePiece's prefix space) falls back to the
//! trie's greedy longest match. Byte-level BPE vocabularies are declared canonical, so
//! llguidance may force the tokens of text the grammar fixes; SentencePiece ones are not
//! (`encode` always prefixes a space), so there llguidance only masks.

use std::sync::Arc;

use toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use super::ConstraintError;
use crate::tokenizer::Tokenizer;

/// Largest id the trie can store (24 bits, one value reserved for "no token").
const MAX_VOCAB: usize = 0x00ff_ffff;
/// Longest token the trie can store (its parent links have 10 bits).
const MAX_TOKEN_BYTES: usize = 1000;
/// Bound on the trie's node count (22-bit subtree sizes): all tokens' bytes together.
const MAX_TOTAL_BYTES: usize = (1 << 22) - 1;

/// Our tokenizer and the byte trie of its vocabulary.
pub(super) struct TokenEnv {
    tokenizer: Arc<Tokenizer>,
    trie: TokTrie,
    canonical: bool,
}

impl TokenEnv {
    /// Reads every id's bytes (one pass over the vocabulary) and builds the trie.
    pub(super) fn new(tokenizer: Arc<Tokenizer>) -> Result<Self, ConstraintError> {
        let n = tokenizer.vocab_size();
        if n == 0 || n >= MAX_VOCAB {
            return Err(ConstraintError::Vocabulary(format!("{n} tokens (llguidance supports 1 to {} tokens)", MAX_VOCAB - 1)));
        }
        let eos = tokenizer.eos_ids().to_vec();
        let Some(&first_eos) = eos.first() else {
            return Err(ConstraintError::NoEos);
        };
        let mut words = Vec::with_capacity(n);
        for id in (0..n).map(|i| i as u32) {
            let bytes = tokenizer
                .token_bytes(id)
                .ok_or_else(|| ConstraintError::Vocabulary(format!("token {id} has no vocabulary entry")))?;
            if bytes.len() > MAX_TOKEN_BYTES {
                return Err(ConstraintError::Vocabulary(format!(
                    "token {id} is {} bytes long (at most {MAX_TOKEN_BYTES})",
                    bytes.len()
                )));
            }
            if tokenizer.is_special(id) {
                let mut marked = Vec::with_capacity(bytes.len() + 1);
                marked.push(TokTrie::SPECIAL_TOKEN_MARKER);
                marked.extend_from_slice(&bytes);
                words.push(marked);
            } else {
                words.push(bytes);
            }
        }
        let total: usize = words.iter().map(Vec::len).sum();
        if total > MAX_TOTAL_BYTES {
            return Err(ConstraintError::Vocabulary(format!("the tokens total {total} bytes (at most {MAX_TOTAL_BYTES})")));
        }
        let info = TokRxInfo {
            vocab_size: n as u32,
            tok_eos: first_eos,
            tok_bos: tokenizer.bos_id(),
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: None,
        };
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
        // Byte-level BPE spells text exactly; SentencePiece's `encode` prefixes a space.
        let canonical = tokenizer
            .encode("{", false)
            .ok()
            .is_some_and(|ids| ids.iter().flat_map(|&id| trie.token(id).iter().copied()).eq(*b"{"));
        Ok(Self { tokenizer, trie, canonical })
    }

    /// `encode(text)` when its tokens spell `text` exactly, else the greedy trie match.
    fn encode_exact(&self, text: &str) -> Vec<TokenId> {
        if let Ok(ids) = self.tokenizer.encode(text, false) {
            let spelled = ids.iter().flat_map(|&id| self.trie.token(id).iter().copied());
            if spelled.eq(text.bytes()) {
                return ids;
            }
        }
        self.trie.greedy_tokenize(text.as_bytes())
    }
}

impl TokenizerEnv for TokenEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| self.encode_exact(text))
    }

    fn tokenize_is_canonical(&self) -> bool {
        self.canonical
    }
}
