//! GGUF vocabularies and fixture paths for the tokenizer and chat-template tests: the
//! header is parsed with the crate's own streaming reader (`webvlm::gguf`), fed from the
//! file in chunks until the metadata is complete, and turned into a `GgufVocab` by
//! `webvlm::tokenizer::GgufVocab::from_metadata`, the same path the engine takes.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

use webvlm::gguf::{GgufHeader, GgufHeaderParser};
use webvlm::tokenizer::GgufVocab;

pub use crate::common::cache::cached;

/// The header (metadata and tensor index) of the GGUF file at `path`.
pub fn read_header(path: &Path) -> GgufHeader {
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let len = file.metadata().expect("file metadata").len();
    let mut parser = GgufHeaderParser::with_file_len(len);
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk).expect("read GGUF");
        assert!(n > 0, "{}: {}", path.display(), parser.eof_error());
        if let Some(header) = parser.feed(&chunk[..n]).expect("GGUF header parses") {
            return header;
        }
    }
}

/// The `tokenizer.*` metadata of a GGUF file as a [`GgufVocab`].
pub fn read_vocab(path: &Path) -> GgufVocab {
    GgufVocab::from_metadata(&read_header(path).metadata).expect("tokenizer metadata")
}

/// Repository root (where `Cargo.toml` is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(rel)
}

/// The real SmolLM2-135M-Instruct GGUF fetched by `scripts/fetch_smollm2.sh`.
pub fn smollm2_gguf() -> PathBuf {
    let path = cached("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run `bash scripts/fetch_smollm2.sh`", path.display());
    path
}

/// The tokenizer fixtures: which GGUF each `expected_<name>.json` was made for.
pub fn vocab_for(name: &str) -> GgufVocab {
    match name {
        "smollm2" => read_vocab(&smollm2_gguf()),
        "tekken" | "tiny_mistral3_tekken" => read_vocab(&fixture("tiny_mistral3_tekken/model.gguf")),
        "llama_spm" => read_vocab(&fixture("tiny_llama_spm/model.gguf")),
        other => panic!("no GGUF for tokenizer fixture {other}"),
    }
}
