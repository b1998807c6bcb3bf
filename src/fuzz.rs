//! Fuzz entry points: one function per parser of untrusted bytes, shared by the libFuzzer
//! targets of `fuzz/` (`cargo fuzz run NAME`, `scripts/fuzz.sh`) and the short mutation run
//! of `tests/fuzz_smoke.rs` in CI. Each takes arbitrary bytes and must return without
//! panicking, hanging or allocating without bound; errors are the expected outcome for most
//! inputs. A panic here is a bug: a parser that panics, or a differential check (chunked
//! parsing against whole-buffer parsing) that disagrees. `docs/RELIABILITY.md` lists the
//! targets, their seeds and the figures of the long runs.

use std::sync::{Arc, OnceLock};

use crate::api::ChatRequest;
use crate::chat::{ChatMessage, ChatTemplate};
use crate::constraint::ConstraintFactory;
use crate::gguf::{self, GgufHeaderParser, SplitMix64, TensorIndex};
use crate::image::{self, mllama::MllamaPreprocess, qwen::QwenPreprocess, PreprocessOptions};
use crate::model::memory_plan::{MemoryPlan, ModelHeaders, PlanLimits, PlanOptions};
use crate::safetensors::{self, HeaderParser};
use crate::tokenizer::{GgufVocab, Tokenizer};

/// A fuzz target: arbitrary bytes in, nothing out.
pub type Target = fn(&[u8]);

/// The targets by name (the file names of `fuzz/fuzz_targets/` and `fuzz/seeds/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("gguf_header", gguf_header),
    ("gguf_chunks", gguf_chunks),
    ("safetensors_header", safetensors_header),
    ("image", image),
    ("chat_request", chat_request),
    ("chat_template", chat_template),
    ("tokenizer_vocab", tokenizer_vocab),
    ("json_schema", json_schema),
];

/// A whole GGUF file, then everything the engine reads from its header before touching a
/// GPU: the tensor layout and index, the vocabulary, tokenizer and chat template, and the
/// memory plan (the model's configuration, with the header as text model and as mmproj).
pub fn gguf_header(data: &[u8]) {
    let Ok(header) = gguf::parse_header(data) else { return };
    let _ = header.validate_layout();
    let _ = TensorIndex::build(&[&header]);
    if let Ok(vocab) = GgufVocab::from_metadata(&header.metadata) {
        if let Ok(tokenizer) = Tokenizer::from_gguf_vocab(&vocab) {
            let _ = ChatTemplate::from_vocab(&vocab, &tokenizer);
        }
    }
    let limits = PlanLimits { max_buffer: 1 << 30, max_storage_binding: 1 << 28, repacked_weights: false };
    let text = ModelHeaders::from(&header);
    let _ = MemoryPlan::new(text, None, limits, PlanOptions::default());
    let _ = MemoryPlan::new(text, Some(text), limits, PlanOptions::default());
}

/// The streaming GGUF reader fed in chunks of random sizes must agree with the whole-buffer
/// parse: the same header, or an error.
pub fn gguf_chunks(file: &[u8]) {
    let whole = gguf::parse_header(file);
    let mut parser = GgufHeaderParser::with_file_len(file.len() as u64);
    let chunked = feed_chunks(file, |chunk| parser.feed(chunk)).unwrap_or_else(|| Err(parser.eof_error()));
    agree("GGUF", whole, chunked);
}

/// A safetensors header, whole and chunked (as [`gguf_chunks`]).
pub fn safetensors_header(file: &[u8]) {
    let whole = safetensors::parse_header(file);
    let mut parser = HeaderParser::new();
    let chunked = feed_chunks(file, |chunk| parser.feed(chunk)).unwrap_or_else(|| Err(parser.eof_error()));
    agree("safetensors", whole, chunked);
}

/// Feeds `file` to `feed` in chunks of 1 byte to 4 KiB, their sizes drawn from a generator
/// seeded by the file's length (so the fuzzer varies them as it varies lengths); returns the
/// first result that is an error or a finished header, `None` when the bytes ran out first.
fn feed_chunks<T, E>(file: &[u8], mut feed: impl FnMut(&[u8]) -> Result<Option<T>, E>) -> Option<Result<T, E>> {
    let mut rng = SplitMix64::new(file.len() as u64);
    let mut rest = file;
    while !rest.is_empty() {
        let scale = 1usize << (rng.next_u64() % 13);
        let n = (1 + rng.next_u64() as usize % scale).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        match feed(chunk) {
            Ok(None) => {}
            Ok(Some(header)) => return Some(Ok(header)),
            Err(e) => return Some(Err(e)),
        }
    }
    None
}

/// Panics unless both parses succeeded with the same header or both failed.
fn agree<T: PartialEq + std::fmt::Debug, E: std::fmt::Display>(what: &str, whole: Result<T, E>, chunked: Result<T, E>) {
    match (whole, chunked) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}: chunked and whole parses differ"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "{what}: whole parse {} but chunked parse {}",
            a.map_or_else(|e| format!("failed ({e})"), |_| "succeeded".into()),
            b.map_or_else(|e| format!("failed ({e})"), |_| "succeeded".into()),
        ),
    }
}

/// Decoding and preprocessing for each encoder family. The decoded size is capped at 4
/// megapixels here (the engine's default is larger) so that each run stays well inside
/// libFuzzer's time limit; the header checks that enforce the cap are the same code.
pub fn image(data: &[u8]) {
    let decode = PreprocessOptions { max_pixels: 1 << 22, max_edge: 448, ..PreprocessOptions::default() };
    let _ = image::preprocessed_size(data, &decode);
    let _ = image::preprocess(data, &decode);
    let qwen = QwenPreprocess { max_pixels: 1 << 18, decode: decode.clone(), ..QwenPreprocess::default() };
    let _ = image::qwen::preprocess_qwen(data, &qwen);
    let mllama = MllamaPreprocess { tile_size: 112, decode, ..MllamaPreprocess::default() };
    let _ = image::mllama::preprocess_mllama(data, &mllama);
}

/// A chat-completions request body, as `webvlm serve`, `webvlm chat` and the JS API take it.
pub fn chat_request(data: &[u8]) {
    let Ok(json) = std::str::from_utf8(data) else { return };
    let _ = ChatRequest::parse(json, 1000);
}

/// A template and the messages to render with it, separated by the first NUL byte (the
/// messages as OpenAI JSON; two plain messages when they do not parse).
pub fn chat_template(data: &[u8]) {
    let (source, messages) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(source) = std::str::from_utf8(source) else { return };
    let Ok(template) = ChatTemplate::new(source, "<s>", "</s>") else { return };
    let messages: Vec<ChatMessage> = serde_json::from_slice(messages)
        .unwrap_or_else(|_| vec![ChatMessage::text("system", "be brief"), ChatMessage::text("user", "hi")]);
    let _ = template.render(&messages, true, None);
}

/// A vocabulary from hostile metadata: lines of the input are a model kind (`gpt2` or
/// `llama`), then tokens up to an empty line, then merges; the tokenizer built from it
/// encodes and decodes a text.
pub fn tokenizer_vocab(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let model = lines.next().unwrap_or_default().to_string();
    let tokens: Vec<String> = lines.by_ref().take_while(|l| !l.is_empty()).map(str::to_string).collect();
    let merges: Vec<String> = lines.map(str::to_string).collect();
    let n = tokens.len();
    let vocab = GgufVocab {
        model,
        pre: Some("gpt2".into()),
        scores: Some((0..n).map(|i| -(i as f32)).collect()),
        token_types: Some((0..n).map(|i| [1, 3, 6, 4][i % 4]).collect()),
        merges: Some(merges),
        bos_id: n.checked_sub(1).map(|i| i as u32),
        tokens,
        ..GgufVocab::default()
    };
    let Ok(tokenizer) = Tokenizer::from_gguf_vocab(&vocab) else { return };
    if let Ok(ids) = tokenizer.encode("Hello, world! 123 ünïcödé <s>", true) {
        let _ = tokenizer.decode(&ids, false);
    }
}

/// A JSON schema compiled to a token constraint over a byte-level vocabulary (strict or not
/// by the input's length), then a few steps of masking and committing the first allowed
/// token.
pub fn json_schema(data: &[u8]) {
    let Ok(schema) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(mut constraint) = byte_level_constraints().json_schema(&schema, data.len().is_multiple_of(2)) else { return };
    for _ in 0..8 {
        let Ok(mask) = constraint.mask() else { return };
        let Some(token) = mask.iter().enumerate().find(|(_, w)| **w != 0).map(|(i, w)| i as u32 * 32 + w.trailing_zeros()) else {
            return;
        };
        if constraint.commit(token).is_err() || constraint.is_finished() {
            return;
        }
    }
}

/// A constraint factory over the 256 byte tokens and an end token, built once.
fn byte_level_constraints() -> &'static ConstraintFactory {
    static FACTORY: OnceLock<ConstraintFactory> = OnceLock::new();
    FACTORY.get_or_init(|| {
        let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
        tokens.push("<|end|>".into());
        let mut types = vec![1; 256];
        types.push(3);
        let vocab = GgufVocab {
            model: "gpt2".into(),
            pre: Some("gpt2".into()),
            tokens,
            token_types: Some(types),
            merges: Some(vec![]),
            eos_id: Some(256),
            ..GgufVocab::default()
        };
        let tokenizer = Tokenizer::from_gguf_vocab(&vocab).expect("the byte-level vocabulary builds");
        ConstraintFactory::new(Arc::new(tokenizer)).expect("the byte-level constraint factory builds")
    })
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes are themselves, the others
/// 256 + their rank among the non-printable ones.
fn byte_char(b: u8) -> char {
    let printable = |x: u8| (b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || (0xAE..=0xFF).contains(&x);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap_or(char::REPLACEMENT_CHARACTER)
}
