//! Text tokenizer built from the `tokenizer.ggml.*` metadata of a GGUF file.
//!
//! Reference: llama.cpp's `llama-vocab.cpp` (how each vocabulary type, pre-tokenizer and
//! special-token flag is read) and transformers `integrations/gguf/gguf_tokenizer_mapping.py`
//! (how the same metadata becomes a Hugging Face `tokenizers` pipeline). Where the two
//! disagree, the model's own Hugging Face tokenizer decides (it is what the fixtures in
//! `tests/fixtures/tokenizer/` record). Two vocabulary types:
//!
//! - `gpt2`: byte-level BPE with an explicit merge list; the split regexes come from
//!   `tokenizer.ggml.pre` ([`PreTokenizerSpec`]), decoding maps the byte alphabet back to
//!   bytes.
//! - `llama`: SentencePiece BPE with byte fallback; merges are derived from the scores
//!   ([`merges_from_scores`]).
//!
//! Tokens of type control (3), user-defined (4) and unknown (2) are registered as added
//! tokens, so their text in the input (`<|im_start|>`, `[INST]`, `[IMG]`) maps to their id
//! instead of being split. Control and unknown tokens are *special*: `decode(.., true)`
//! drops them. BOS/EOS are added by `encode(.., true)` as `tokenizer.ggml.add_bos_token` /
//! `add_eos_token` say, with llama.cpp's defaults when absent (BOS for SentencePiece, Llama 3
//! and Tekken vocabularies). Streaming decode is [`TextStream`].
//!
//! A Hugging Face folder's `tokenizer.json` is run as is instead ([`Tokenizer::from_hf`],
//! `hf.rs`).

mod build;
mod gguf_vocab;
mod hf;
mod pretok;
mod spm;
mod stream;

use build::{build_byte_level, build_sentencepiece, per_token, register_added_tokens, token_ids};

pub use hf::HfTokenizerConfig;
pub use pretok::{PreTokenizerSpec, SharedPreTokenizer};
pub use spm::merges_from_scores;
pub use stream::TextStream;

/// Everything `tokenizer.ggml.*` in a GGUF file says about the vocabulary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name, e.g. `"smollm"`, `"tekken"`.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token text by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`: SentencePiece piece scores by id.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: byte-level BPE merges as `"left right"`, best first.
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece; default true).
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// Token type codes of `tokenizer.ggml.token_type` (llama.cpp `llama_token_type`).
pub mod token_type {
    /// Ordinary vocabulary entry.
    pub const NORMAL: i32 = 1;
    /// The unknown token.
    pub const UNKNOWN: i32 = 2;
    /// Control token (BOS, EOS, chat markers): special.
    pub const CONTROL: i32 = 3;
    /// User-defined token: matched whole in text, but not special.
    pub const USER_DEFINED: i32 = 4;
    /// Reserved, never produced.
    pub const UNUSED: i32 = 5;
    /// SentencePiece byte-fallback token `<0xNN>`.
    pub const BYTE: i32 = 6;
}

/// Token texts that end generation besides EOS (llama.cpp's `special_eog_ids` list).
const END_OF_GENERATION: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "</s>",
];

/// Most tokens a vocabulary may have: 8× the largest real one (Gemma 3's 262,144), so that a
/// file claiming more fails before the tokenizer's tables are built.
pub const MAX_VOCAB: usize = 1 << 21;
/// Longest token text (and merge line) in bytes. Real vocabularies stay under a few hundred;
/// the bound keeps the SentencePiece merge derivation, quadratic in a token's length, fast.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// Why a tokenizer could not be built, or could not encode or decode.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` is not a vocabulary type this crate implements.
    #[error("unsupported tokenizer model {0:?} (expected \"gpt2\" or \"llama\")")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not know.
    #[error("unsupported pre-tokenizer {0:?}")]
    UnsupportedPre(String),
    /// A metadata array the vocabulary type needs is absent.
    #[error("missing GGUF metadata {0}")]
    Missing(&'static str),
    /// A per-token metadata array is shorter than `tokenizer.ggml.tokens`.
    #[error("{key} has {got} entries for {expected} tokens")]
    LengthMismatch { key: &'static str, expected: usize, got: usize },
    /// The vocabulary has more entries than [`MAX_VOCAB`] (real ones have at most ~262k).
    #[error("vocabulary of {0} tokens is too large (at most {MAX_VOCAB})")]
    VocabTooLarge(usize),
    /// A token or merge is longer than [`MAX_TOKEN_BYTES`].
    #[error("{what} {index} has {len} bytes, more than {MAX_TOKEN_BYTES}")]
    TokenTooLong { what: &'static str, index: usize, len: usize },
    /// The same token text appears at two ids.
    #[error("token {token:?} appears at ids {first} and {second}")]
    DuplicateToken { token: String, first: u32, second: u32 },
    /// A `tokenizer.ggml.merges` entry is not two space-separated tokens.
    #[error("malformed merge {0:?}")]
    BadMerge(String),
    /// A merge whose halves or result are not tokens of the vocabulary.
    #[error("merge {0:?} names a token the vocabulary lacks")]
    MergeOutOfVocabulary(String),
    /// A special-token id in the metadata lies outside the vocabulary.
    #[error("{name} id {id} is outside the vocabulary of {vocab_size}")]
    SpecialIdOutOfRange { name: &'static str, id: u32, vocab_size: usize },
    /// `decode` was given an id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    UnknownId { id: u32, vocab_size: usize },
    /// The streaming decoder's earlier output is no longer a prefix of the decoded text.
    #[error("stream decode diverged: {emitted:?} is not a prefix of {decoded:?}")]
    StreamDiverged { emitted: String, decoded: String },
    /// A Hugging Face `tokenizer.json` or `tokenizer_config.json` that is not valid, or
    /// names a special token the vocabulary lacks (the message names the file).
    #[error("{0}")]
    HfFile(String),
    /// The `tokenizers` crate rejected the pipeline or failed while running it.
    #[error("tokenizers: {0}")]
    Backend(#[source] tokenizers::Error),
}

/// The `tokenizers` pipeline, its pre-tokenizer shared between tokenizers of the same spec.
type Pipeline = tokenizers::TokenizerImpl<
    tokenizers::ModelWrapper,
    tokenizers::NormalizerWrapper,
    SharedPreTokenizer,
    tokenizers::PostProcessorWrapper,
    tokenizers::DecoderWrapper,
>;

/// A text tokenizer for one GGUF vocabulary.
pub struct Tokenizer {
    inner: Pipeline,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

/// Fails on the first of `items` longer than [`MAX_TOKEN_BYTES`].
fn check_lengths(what: &'static str, items: &[String]) -> Result<(), TokenizerError> {
    match items.iter().position(|t| t.len() > MAX_TOKEN_BYTES) {
        Some(index) => Err(TokenizerError::TokenTooLong { what, index, len: items[index].len() }),
        None => Ok(()),
    }
}

impl Tokenizer {
    /// Builds the tokenizer for `vocab` (see the module docs for the rules).
    pub fn from_gguf_vocab(vocab: &GgufVocab) -> Result<Self, TokenizerError> {
        let n = vocab.tokens.len();
        if n > MAX_VOCAB {
            return Err(TokenizerError::VocabTooLarge(n));
        }
        check_lengths("token", &vocab.tokens)?;
        check_lengths("merge", vocab.merges.as_deref().unwrap_or_default())?;
        let ids = token_ids(&vocab.tokens)?;
        let types = per_token(vocab.token_types.as_deref(), "tokenizer.ggml.token_type", n)?;
        for (name, id) in [("bos", vocab.bos_id), ("eos", vocab.eos_id), ("unknown", vocab.unk_id), ("padding", vocab.pad_id)] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(TokenizerError::SpecialIdOutOfRange { name, id, vocab_size: n });
            }
        }

        let (mut inner, add_bos_default) = match vocab.model.as_str() {
            "gpt2" => (build_byte_level(vocab, ids)?, PreTokenizerSpec::for_pre(vocab.pre.as_deref())?.add_bos_default),
            "llama" => (build_sentencepiece(vocab, ids, types)?, true),
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        if let Some(types) = types {
            register_added_tokens(&mut inner, &vocab.tokens, types)?;
        }

        let mut eos_ids: Vec<u32> = vocab.eos_id.into_iter().collect();
        for text in END_OF_GENERATION {
            if let Some(id) = inner.token_to_id(text) {
                eos_ids.push(id);
            }
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();

        Ok(Self {
            inner,
            vocab_size: n,
            bos: vocab.bos_id,
            eos: vocab.eos_id,
            eos_ids,
            add_bos: vocab.add_bos.unwrap_or(add_bos_default) && vocab.bos_id.is_some(),
            add_eos: vocab.add_eos.unwrap_or(false) && vocab.eos_id.is_some(),
        })
    }

    /// Token ids of `text`; with `add_special`, BOS/EOS as the file's flags ask.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode_fast(text, false).map_err(TokenizerError::Backend)?;
        let body = encoding.get_ids();
        let mut ids = Vec::with_capacity(body.len() + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(body);
        if add_special && self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    /// Text of `ids`; with `skip_special`, control tokens (BOS, `[INST]`, ...) are dropped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::UnknownId { id, vocab_size: self.vocab_size });
        }
        self.inner.decode(ids, skip_special).map_err(TokenizerError::Backend)
    }

    /// The id of the token spelled `name` in the vocabulary (e.g. `"[IMG]"`).
    pub fn token_id(&self, name: &str) -> Option<u32> {
        self.inner.token_to_id(name)
    }

    /// The vocabulary entry of `id`, as stored in the file.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The beginning-of-sequence id, if the file names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence id, if the file names one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Ids that end generation: EOS plus end-of-turn tokens (`<|im_end|>`, ...), sorted.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `encode(.., true)` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of ids in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// A streaming decoder for generated ids (see [`TextStream`]).
    pub fn decode_stream(&self, skip_special: bool) -> TextStream {
        TextStream::new(skip_special)
    }

    /// The bytes token `id` contributes to `decode(.., false)`, or `None` outside the
    /// vocabulary. Byte-level BPE: each character of the entry mapped back through the GPT-2
    /// byte alphabet (an entry with a character outside it, such as an added token, is its
    /// own UTF-8, as the decoder does). SentencePiece: `<0xNN>` is the byte `NN`, otherwise
    /// the entry's UTF-8 with `▁` as a space; the one leading space that `decode` strips from
    /// the whole text is not stripped here. A special token's bytes are its text.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let text = self.inner.id_to_token(id)?;
        let byte_level = matches!(self.inner.get_decoder(), Some(tokenizers::DecoderWrapper::ByteLevel(_)));
        Some(if byte_level {
            text.chars().map(byte_level_byte).collect::<Option<Vec<u8>>>().unwrap_or_else(|| text.into_bytes())
        } else if let Some(byte) = byte_fallback_byte(&text) {
            vec![byte]
        } else {
            text.replace(spm::SPACE_MARKER, " ").into_bytes()
        })
    }

    /// Whether `id` is a special token (control or unknown type): `decode(.., true)` drops
    /// it and `encode` produces it only from its exact text.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.id_to_token(id).is_some_and(|text| self.inner.get_added_vocabulary().is_special_token(&text))
    }
}

/// The byte a character of the GPT-2 byte-level alphabet stands for: printable Latin-1
/// characters are themselves, the other 68 bytes (0x00-0x20, 0x7F-0xA0, 0xAD) were moved,
/// in order, to U+0100.. U+0143.
fn byte_level_byte(c: char) -> Option<u8> {
    match c {
        '!'..='~' | '\u{A1}'..='\u{AC}' | '\u{AE}'..='\u{FF}' => Some(c as u8),
        '\u{100}'..='\u{120}' => Some((c as u32 - 0x100) as u8),
        '\u{121}'..='\u{142}' => Some((c as u32 - 0x121 + 0x7F) as u8),
        '\u{143}' => Some(0xAD),
        _ => None,
    }
}

/// The byte of a SentencePiece byte-fallback piece `<0xNN>`.
fn byte_fallback_byte(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
