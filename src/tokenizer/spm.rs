//! SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`) rebuilt as a `tokenizers` BPE.
//!
//! A SentencePiece BPE model stores no merge list, only pieces and scores: at every step it
//! merges the adjacent pair whose concatenation is the highest-scoring piece (llama.cpp
//! `llm_tokenizer_spm_session`). The same ranking as an ordered merge list is what
//! transformers builds for a GGUF vocabulary (`generate_merges` in
//! `tokenization_utils_base.py`, called from `integrations/gguf/gguf_tokenizer_mapping.py`):
//! for every piece, each split into two pieces that are both in the vocabulary is a merge;
//! merges are ordered by the merged piece's score, highest first, ties broken by the longer
//! left half, then the longer right half, then vocabulary order.
//!
//! Text is pre-tokenized like transformers' (non-legacy) `LlamaTokenizer`: spaces become `▁`
//! and one `▁` is prepended to the start of the text unless it already starts with one
//! (`Metaspace`, `prepend_scheme = "first"`); text after a special token gets no prefix.
//! llama.cpp differs there (it prefixes every fragment after a special token, and always):
//! the reference fixtures follow transformers and the `sentencepiece` library. Bytes with no
//! piece fall back to `<0xNN>` tokens. Decoding reverses it: `▁` to space, byte tokens fused
//! to UTF-8, one leading space stripped.

use std::cmp::Ordering;
use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{DecoderWrapper, PreTokenizerWrapper};

use super::TokenizerError;

/// SentencePiece's word-boundary marker (U+2581).
pub const SPACE_MARKER: char = '\u{2581}';

/// One merge candidate: the two halves, and the keys it is ranked by.
struct Candidate<'a> {
    left: &'a str,
    right: &'a str,
    score: f32,
}

/// Merges implied by `tokens` and their `scores`, best first.
///
/// Mirrors transformers' `generate_merges(vocab, vocab_scores)`: pieces are visited in
/// vocabulary order (a later duplicate overrides the score of an earlier one but keeps its
/// position), each piece's candidate splits sorted by the ids of their halves, and the
/// whole list stably sorted by (score, left length, right length), descending.
pub fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let mut id_of: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        id_of.entry(token.as_str()).or_insert(id);
    }
    let mut score_of: HashMap<&str, f32> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (token, &score) in tokens.iter().zip(scores) {
        if score_of.insert(token.as_str(), score).is_none() {
            order.push(token.as_str());
        }
    }

    let mut candidates: Vec<Candidate> = Vec::new();
    for &piece in &order {
        let score = score_of[piece];
        let start = candidates.len();
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if id_of.contains_key(left) && id_of.contains_key(right) {
                candidates.push(Candidate { left, right, score });
            }
        }
        candidates[start..].sort_by_key(|c| (id_of[c.left], id_of[c.right]));
    }
    let chars = |s: &str| s.chars().count();
    candidates.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| chars(b.left).cmp(&chars(a.left)))
            .then_with(|| chars(b.right).cmp(&chars(a.right)))
    });
    candidates.into_iter().map(|c| (c.left.to_string(), c.right.to_string())).collect()
}

/// Spaces to `▁`, and `▁` prepended to the text's start when `add_space_prefix`.
pub fn pre_tokenizer(add_space_prefix: bool) -> PreTokenizerWrapper {
    let scheme = if add_space_prefix { PrependScheme::First } else { PrependScheme::Never };
    PreTokenizerWrapper::Metaspace(Metaspace::new(SPACE_MARKER, scheme, false))
}

/// `▁` back to spaces, `<0xNN>` runs to UTF-8, all fused, the prefix space stripped.
pub fn decoder(add_space_prefix: bool) -> Result<DecoderWrapper, TokenizerError> {
    let replace = Replace::new(SPACE_MARKER.to_string(), " ").map_err(TokenizerError::Backend)?;
    let mut steps = vec![
        DecoderWrapper::Replace(replace),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        steps.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    Ok(DecoderWrapper::Sequence(DecoderSequence::new(steps)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn merges_are_ranked_by_merged_score() {
        let tokens = strings(&["a", "b", "c", "ab", "bc", "abc"]);
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let merges = merges_from_scores(&tokens, &scores);
        let pairs: Vec<(&str, &str)> = merges.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        // "bc" (-1), then "ab" (-2), then the two ways to make "abc" (-3): "ab"+"c" first,
        // since its left half is longer.
        assert_eq!(pairs, [("b", "c"), ("a", "b"), ("ab", "c"), ("a", "bc")]);
    }

    #[test]
    fn multibyte_pieces_split_on_char_boundaries() {
        let tokens = strings(&["é", "t", "ét"]);
        let merges = merges_from_scores(&tokens, &[0.0, 0.0, -1.0]);
        assert_eq!(merges, [("é".to_string(), "t".to_string())]);
    }
}
