//! Incremental detokenization: generated ids in, UTF-8 text deltas out.
//!
//! Reference: Hugging Face `tokenizers` `DecodeStream` (`tokenizer/mod.rs`,
//! `step_decode_stream`). Decoding one id at a time is wrong twice over: a character can be
//! spread over several byte tokens (an emoji is four `<0xNN>` or byte-level tokens), and
//! some decoders depend on context (SentencePiece strips the space of the *first* token).
//! So the stream keeps a small window of ids, decodes the window, and emits only what grew
//! past the text it already emitted for that window — unless the decoded text ends in
//! U+FFFD, the mark of an incomplete UTF-8 sequence, in which case it waits for more ids.
//!
//! The stream owns no reference to the [`Tokenizer`], so it can live in a generation loop
//! next to a mutable engine; pass the tokenizer to every call.

use super::{Tokenizer, TokenizerError};

/// The replacement character lossy UTF-8 decoding emits for incomplete sequences.
const REPLACEMENT: char = '\u{FFFD}';

/// Turns generated ids into text deltas without splitting multi-byte characters.
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    skip_special: bool,
    /// Special tokens shown all the same (a tool call's markers, for its parser).
    kept: Vec<u32>,
    /// Ids still needed: the ids of the last emitted delta (context), then pending ids.
    window: Vec<u32>,
    /// How many leading ids of `window` are context that was already emitted.
    context: usize,
    /// Decoded text of `window[..context]`, already emitted.
    emitted: String,
}

impl TextStream {
    /// A fresh stream; `skip_special` drops control tokens as [`Tokenizer::decode`] does.
    pub fn new(skip_special: bool) -> Self {
        Self { skip_special, ..Self::default() }
    }

    /// Shows the special tokens `kept` as text although the stream skips the others.
    pub fn keeping(mut self, kept: Vec<u32>) -> Self {
        self.kept = kept;
        self
    }

    /// Adds one id; returns the new text, or `None` while a character is incomplete.
    pub fn step(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>, TokenizerError> {
        if !self.kept.is_empty() && self.skip_special && !self.kept.contains(&id) && tokenizer.is_special(id) {
            // Skipped here rather than by the decoder, which would skip the kept ones too.
            return Ok(None);
        }
        self.window.push(id);
        let decoded = self.decode(tokenizer)?;
        if decoded.len() <= self.emitted.len() || decoded.ends_with(REPLACEMENT) {
            return Ok(None);
        }
        let delta = self.delta(decoded)?;
        // The ids just emitted become the context of the next step.
        self.window.drain(..self.context);
        self.context = self.window.len();
        self.emitted = self.decode(tokenizer)?;
        Ok(Some(delta))
    }

    /// The text of the window (with kept tokens, special ones were left out of it).
    fn decode(&self, tokenizer: &Tokenizer) -> Result<String, TokenizerError> {
        tokenizer.decode(&self.window, self.skip_special && self.kept.is_empty())
    }

    /// Emits whatever is held back (incomplete characters become U+FFFD) and resets.
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>, TokenizerError> {
        let decoded = self.decode(tokenizer)?;
        let delta = if decoded.len() > self.emitted.len() { Some(self.delta(decoded)?) } else { None };
        self.reset();
        Ok(delta)
    }

    /// Forgets all ids, e.g. before a new generation.
    pub fn reset(&mut self) {
        self.window.clear();
        self.context = 0;
        self.emitted.clear();
    }

    /// Whether ids are held back waiting for the rest of a character.
    pub fn is_pending(&self) -> bool {
        self.window.len() > self.context
    }

    /// The part of `decoded` after the text already emitted.
    fn delta(&self, decoded: String) -> Result<String, TokenizerError> {
        match decoded.strip_prefix(self.emitted.as_str()) {
            Some(rest) => Ok(rest.to_string()),
            None => Err(TokenizerError::StreamDiverged { emitted: self.emitted.clone(), decoded }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{token_type, GgufVocab};

    /// GPT-2's byte-to-character map (openai/gpt-2 `encoder.py`, `bytes_to_unicode`).
    fn byte_char(b: u8) -> char {
        let printable = |x: u8| matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        if printable(b) {
            return char::from(b);
        }
        let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + rank).expect("valid char")
    }

    /// Byte-level vocabulary of the 256 bytes and no merges: every byte is one token.
    fn byte_level() -> Tokenizer {
        let vocab = GgufVocab {
            model: "gpt2".into(),
            pre: Some("gpt2".into()),
            tokens: (0..=255u8).map(|b| byte_char(b).to_string()).collect(),
            merges: Some(vec![]),
            ..GgufVocab::default()
        };
        Tokenizer::from_gguf_vocab(&vocab).expect("byte-level tokenizer")
    }

    /// SentencePiece vocabulary: specials, the 256 byte tokens, and `▁Hi` with its parts.
    fn sentencepiece() -> Tokenizer {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![token_type::UNKNOWN, token_type::CONTROL, token_type::CONTROL];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        types.extend([token_type::BYTE; 256]);
        for piece in ["▁", "H", "i", "▁H", "▁Hi"] {
            tokens.push(piece.into());
            types.push(token_type::NORMAL);
        }
        let scores = (0..tokens.len()).map(|i| -(i as f32)).collect();
        let vocab = GgufVocab {
            model: "llama".into(),
            tokens,
            scores: Some(scores),
            token_types: Some(types),
            bos_id: Some(1),
            eos_id: Some(2),
            unk_id: Some(0),
            ..GgufVocab::default()
        };
        Tokenizer::from_gguf_vocab(&vocab).expect("sentencepiece tokenizer")
    }

    /// Streams `ids` one by one, returning every step's output.
    fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<Option<String>> {
        let mut s = tok.decode_stream(false);
        let mut out: Vec<Option<String>> = ids.iter().map(|&id| s.step(tok, id).expect("step")).collect();
        assert!(!s.is_pending());
        out.push(s.flush(tok).expect("flush"));
        out
    }

    #[test]
    fn byte_level_emoji_waits_for_its_fourth_byte() {
        let tok = byte_level();
        let ids = tok.encode("a😀b", false).expect("encode");
        assert_eq!(ids.len(), 6, "one id per byte");
        let expected: Vec<Option<String>> = vec![Some("a".into()), None, None, None, Some("😀".into()), Some("b".into()), None];
        assert_eq!(stream(&tok, &ids), expected);
    }

    #[test]
    fn sentencepiece_emoji_from_byte_fallback_and_leading_space() {
        let tok = sentencepiece();
        let ids = tok.encode("Hi 😀", true).expect("encode");
        // <s>, ▁Hi, ▁, then 😀 as four <0xNN> tokens (ids 3 + byte).
        assert_eq!(ids, [1, 263, 259, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80]);
        let deltas = stream(&tok, &ids);
        let text: String = deltas.iter().flatten().cloned().collect();
        assert_eq!(text, tok.decode(&ids, false).expect("decode"));
        assert_eq!(deltas[3..7], [None, None, None, Some("😀".to_string())]);
    }

    /// Kept special tokens (a tool call's markers) appear in the text; the others do not.
    #[test]
    fn kept_special_tokens_are_shown() {
        let tok = sentencepiece();
        let ids = [1, 263, 2, 259, 263];
        let text = |mut s: TextStream| -> String {
            let mut out: String = ids.iter().filter_map(|&id| s.step(&tok, id).expect("step")).collect();
            out.extend(s.flush(&tok).expect("flush"));
            out
        };
        assert_eq!(text(tok.decode_stream(true)), tok.decode(&ids, true).expect("decode"));
        assert_eq!(text(tok.decode_stream(true).keeping(vec![2])), "Hi</s>  Hi");
        assert_eq!(text(tok.decode_stream(false)), tok.decode(&ids, false).expect("decode"));
    }

    #[test]
    fn flush_emits_an_unfinished_character_as_replacement() {
        let tok = byte_level();
        let ids = tok.encode("😀", false).expect("encode");
        let mut s = TextStream::new(false);
        for &id in &ids[..2] {
            assert_eq!(s.step(&tok, id).expect("step"), None);
        }
        assert!(s.is_pending());
        let tail = s.flush(&tok).expect("flush").expect("pending text");
        assert!(tail.chars().all(|c| c == REPLACEMENT), "{tail:?}");
    }
}
