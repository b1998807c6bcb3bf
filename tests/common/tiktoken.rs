//! A `GgufVocab` from a tiktoken rank file, the way transformers' `TikTokenConverter`
//! (`extract_vocab_merges_from_model`) turns tiktoken ranks into BPE merges: every rank's
//! bytes in the GPT-2 byte alphabet are the token list, and every split of a token into two
//! vocabulary entries is a merge, ordered by the token's rank (then by the parts' ranks).
//! That is tiktoken's rule (merge the adjacent pair whose concatenation has the lowest
//! rank); a single merge per token, as llama.cpp's `_set_vocab_qwen` finds with
//! `QwenModel.bpe(.., max_rank)`, cannot reach the 232 Qwen3.5 ranks that no two lower
//! ranks make (e.g. "人力资源"), which tiktoken still produces. Special tokens follow as
//! control tokens. The result goes through `Tokenizer::from_gguf_vocab`, the
//! constructor a GGUF file's vocabulary takes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use webvlm::tokenizer::{token_type, GgufVocab};

/// GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves, the other 68
/// bytes in order to U+0100.. .
pub fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).expect("valid char");
            next += 1;
            c
        };
    }
    table
}

/// The ranks of a tiktoken file (`base64 rank` per line), as token bytes by rank.
pub fn read_ranks(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut ranks = Vec::new();
    for (i, line) in text.lines().filter(|l| !l.is_empty()).enumerate() {
        let (b64, rank) = line.split_once(' ').expect("`token rank` line");
        assert_eq!(rank.parse::<usize>().expect("rank"), i, "ranks are dense and in order");
        ranks.push(base64::engine::general_purpose::STANDARD.decode(b64).expect("base64 token"));
    }
    ranks
}

/// `tokenizer.ggml.*` for the ranks plus `specials` (ids after the ranks, control type),
/// with pre-tokenizer `pre`.
pub fn vocab_from_ranks(ranks: &[Vec<u8>], specials: &[String], pre: &str) -> GgufVocab {
    let alphabet = byte_alphabet();
    let spell = |bytes: &[u8]| bytes.iter().map(|&b| alphabet[b as usize]).collect::<String>();
    let rank_of: HashMap<&[u8], usize> = ranks.iter().enumerate().map(|(i, t)| (t.as_slice(), i)).collect();
    let mut merges = Vec::new();
    for token in ranks {
        let mut local: Vec<(usize, usize, usize)> = (1..token.len())
            .filter_map(|i| Some((rank_of.get(&token[..i])?.to_owned(), rank_of.get(&token[i..])?.to_owned(), i)))
            .collect();
        local.sort_unstable();
        for (_, _, i) in local {
            merges.push(format!("{} {}", spell(&token[..i]), spell(&token[i..])));
        }
    }
    let mut tokens: Vec<String> = ranks.iter().map(|t| spell(t)).collect();
    let mut types = vec![token_type::NORMAL; tokens.len()];
    tokens.extend(specials.iter().cloned());
    types.resize(tokens.len(), token_type::CONTROL);
    GgufVocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types: Some(types),
        merges: Some(merges),
        add_bos: Some(false),
        ..GgufVocab::default()
    }
}
