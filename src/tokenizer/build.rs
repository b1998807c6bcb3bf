//! Assembly of the `tokenizers` pipeline for each vocabulary type.
//!
//! Reference: llama.cpp's `llama-vocab.cpp` (`llama_vocab::impl::load`: token list, merge
//! parsing, duplicate check) and transformers `integrations/gguf/gguf_tokenizer_mapping.py`
//! (`byte_level_tokenizer`, `sentencepiece_tokenizer`, `add_gguf_special_tokens`).

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{AddedToken, DecoderWrapper};

use super::{spm, token_type, GgufVocab, Pipeline, PreTokenizerSpec, TokenizerError};

/// Capacity of the BPE model's cache of merged words: none. `tokenizers` 0.23.2 keeps that
/// cache in a thread-local map keyed by model instance and never removes a dropped model's
/// entries, so every tokenizer built and used leaked its cached words (about 2 KB a build in
/// the `tokenizer_vocab` fuzz target, up to 10,000 words for a real model). Without it a word
/// is merged again each time it is encoded: the same tokens.
pub(super) const NO_WORD_CACHE: usize = 0;

/// Map from token text to id, rejecting duplicates as llama.cpp does.
pub(super) fn token_ids(tokens: &[String]) -> Result<Vocab, TokenizerError> {
    let mut ids = Vocab::with_capacity(tokens.len());
    for (id, token) in (0u32..).zip(tokens) {
        if let Some(first) = ids.insert(token.clone(), id) {
            return Err(TokenizerError::DuplicateToken { token: token.clone(), first, second: id });
        }
    }
    Ok(ids)
}

/// A per-token array checked against the vocabulary size.
pub(super) fn per_token<'a, T>(
    values: Option<&'a [T]>,
    key: &'static str,
    expected: usize,
) -> Result<Option<&'a [T]>, TokenizerError> {
    match values {
        Some(v) if v.len() < expected => Err(TokenizerError::LengthMismatch { key, expected, got: v.len() }),
        Some(v) => Ok(Some(&v[..expected])),
        None => Ok(None),
    }
}

/// Byte-level BPE (`gpt2`): explicit merges, regex splits, byte alphabet.
pub(super) fn build_byte_level(vocab: &GgufVocab, ids: Vocab) -> Result<Pipeline, TokenizerError> {
    let spec = PreTokenizerSpec::for_pre(vocab.pre.as_deref())?;
    let lines = vocab.merges.as_ref().ok_or(TokenizerError::Missing("tokenizer.ggml.merges"))?;
    let mut merges = Vec::with_capacity(lines.len());
    for line in lines {
        // llama.cpp splits at the first space after the first byte, so a merge whose left
        // side starts with a space (never in the byte alphabet, but harmless) still parses.
        let first = line.chars().next().map_or(0, char::len_utf8);
        let split = line[first..].find(' ').map(|i| i + first);
        let Some(split) = split else {
            return Err(TokenizerError::BadMerge(line.clone()));
        };
        let (left, right) = (&line[..split], &line[split + 1..]);
        // Checked here: `tokenizers` indexes a buffer as long as the longest token with the
        // merged length before it looks the result up, and panics on a longer one.
        let known = |token: &str| ids.contains_key(token);
        if !(known(left) && known(right) && known(&format!("{left}{right}"))) {
            return Err(TokenizerError::MergeOutOfVocabulary(line.clone()));
        }
        merges.push((left.to_string(), right.to_string()));
    }
    let model = BPE::builder()
        .vocab_and_merges(ids, merges)
        .ignore_merges(spec.ignore_merges)
        .cache_capacity(NO_WORD_CACHE)
        .build()
        .map_err(TokenizerError::Backend)?;
    let mut tokenizer = Pipeline::new(model.into());
    if spec.nfc {
        tokenizer
            .with_normalizer(Some(tokenizers::NormalizerWrapper::NFC(tokenizers::normalizers::unicode::NFC)))
            .map_err(TokenizerError::Backend)?;
    }
    tokenizer.with_pre_tokenizer(Some(spec.build()?));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(false, false, false))));
    Ok(tokenizer)
}

/// SentencePiece BPE (`llama`): merges from scores, `▁` pre-tokenization, byte fallback.
pub(super) fn build_sentencepiece(vocab: &GgufVocab, ids: Vocab, types: Option<&[i32]>) -> Result<Pipeline, TokenizerError> {
    let n = vocab.tokens.len();
    let scores = per_token(vocab.scores.as_deref(), "tokenizer.ggml.scores", n)?
        .ok_or(TokenizerError::Missing("tokenizer.ggml.scores"))?;
    let merges = spm::merges_from_scores(&vocab.tokens, scores);
    let unk = vocab.unk_id.or_else(|| {
        let types = types?;
        types.iter().position(|&t| t == token_type::UNKNOWN).map(|i| i as u32)
    });
    let mut builder = BPE::builder().vocab_and_merges(ids, merges).byte_fallback(true).cache_capacity(NO_WORD_CACHE);
    if let Some(unk) = unk {
        builder = builder.unk_token(vocab.tokens[unk as usize].clone()).fuse_unk(true);
    }
    let model = builder.build().map_err(TokenizerError::Backend)?;
    let add_space_prefix = vocab.add_space_prefix.unwrap_or(true);
    let mut tokenizer = Pipeline::new(model.into());
    tokenizer.with_pre_tokenizer(Some(spm::pre_tokenizer(add_space_prefix)));
    tokenizer.with_decoder(Some(spm::decoder(add_space_prefix)?));
    Ok(tokenizer)
}

/// Added tokens kept by `decode(.., skip_special = true)` even when typed control.
const THINK_TAGS: &[&str] = &["<think>", "</think>"];

/// Registers control/unknown tokens as special and user-defined ones as plain added tokens.
pub(super) fn register_added_tokens(tokenizer: &mut Pipeline, tokens: &[String], types: &[i32]) -> Result<(), TokenizerError> {
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (token, &ty) in tokens.iter().zip(types) {
        match ty {
            // Think tags are added tokens but not special in the Hugging Face tokenizers of
            // the models that use them (Qwen3, Qwen3.5: `"special": false`), so a reply's
            // decoded text keeps them for the reasoning split, whatever type the GGUF gives.
            token_type::CONTROL if THINK_TAGS.contains(&token.as_str()) => {
                user.push(AddedToken::from(token.clone(), false).normalized(false));
            }
            token_type::CONTROL | token_type::UNKNOWN => {
                special.push(AddedToken::from(token.clone(), true).normalized(false));
            }
            token_type::USER_DEFINED => {
                user.push(AddedToken::from(token.clone(), false).normalized(false));
            }
            _ => {}
        }
    }
    tokenizer.add_special_tokens(special).map_err(TokenizerError::Backend)?;
    tokenizer.add_tokens(user).map_err(TokenizerError::Backend)?;
    Ok(())
}
