//! Test-only GGUF metadata reader: just enough of the format (GGUF v2/v3 header and
//! key/value section, per `ggml/docs/gguf.md`) to fill a `webvlm::tokenizer::GgufVocab`,
//! so the tokenizer tests do not depend on the crate's own GGUF reader.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use webvlm::tokenizer::GgufVocab;

/// One metadata value.
#[derive(Debug, Clone)]
pub enum Meta {
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Meta>),
}

/// Little-endian cursor over the file bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let end = self.pos.checked_add(n).expect("length overflow");
        assert!(end <= self.bytes.len(), "GGUF truncated at byte {}", self.pos);
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        out
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().expect("4 bytes"))
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().expect("8 bytes"))
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).expect("GGUF string is UTF-8")
    }
    fn value(&mut self, ty: u32) -> Meta {
        let b = |c: &mut Self, n| c.take(n).to_vec();
        match ty {
            0 => Meta::Uint(b(self, 1)[0] as u64),
            1 => Meta::Int(b(self, 1)[0] as i8 as i64),
            2 => Meta::Uint(u16::from_le_bytes(b(self, 2).try_into().expect("2")) as u64),
            3 => Meta::Int(i16::from_le_bytes(b(self, 2).try_into().expect("2")) as i64),
            4 => Meta::Uint(self.u32() as u64),
            5 => Meta::Int(self.u32() as i32 as i64),
            6 => Meta::Float(f32::from_bits(self.u32()) as f64),
            7 => Meta::Bool(b(self, 1)[0] != 0),
            8 => Meta::Str(self.string()),
            9 => {
                let elem = self.u32();
                let n = self.u64() as usize;
                Meta::Array((0..n).map(|_| self.value(elem)).collect())
            }
            10 => Meta::Uint(self.u64()),
            11 => Meta::Int(self.u64() as i64),
            12 => Meta::Float(f64::from_bits(self.u64())),
            other => panic!("unknown GGUF value type {other}"),
        }
    }
}

/// All metadata key/values of the GGUF file at `path`.
pub fn read_metadata(path: &Path) -> HashMap<String, Meta> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut c = Cursor { bytes: &bytes, pos: 0 };
    assert_eq!(c.take(4), b"GGUF", "{} is not a GGUF file", path.display());
    let version = c.u32();
    assert!(version == 2 || version == 3, "GGUF version {version}");
    let _tensors = c.u64();
    let n_kv = c.u64();
    (0..n_kv)
        .map(|_| {
            let key = c.string();
            let ty = c.u32();
            (key, c.value(ty))
        })
        .collect()
}

fn string(m: &HashMap<String, Meta>, key: &str) -> Option<String> {
    match m.get(key)? {
        Meta::Str(s) => Some(s.clone()),
        other => panic!("{key}: expected string, got {other:?}"),
    }
}

fn array<'a>(m: &'a HashMap<String, Meta>, key: &str) -> Option<&'a [Meta]> {
    match m.get(key)? {
        Meta::Array(v) => Some(v),
        other => panic!("{key}: expected array, got {other:?}"),
    }
}

fn strings(m: &HashMap<String, Meta>, key: &str) -> Option<Vec<String>> {
    array(m, key).map(|v| {
        v.iter()
            .map(|x| match x {
                Meta::Str(s) => s.clone(),
                other => panic!("{key}: expected strings, got {other:?}"),
            })
            .collect()
    })
}

fn id(m: &HashMap<String, Meta>, key: &str) -> Option<u32> {
    match m.get(key)? {
        Meta::Uint(v) => Some(*v as u32),
        Meta::Int(v) => Some(*v as u32),
        other => panic!("{key}: expected integer, got {other:?}"),
    }
}

fn flag(m: &HashMap<String, Meta>, key: &str) -> Option<bool> {
    match m.get(key)? {
        Meta::Bool(v) => Some(*v),
        other => panic!("{key}: expected bool, got {other:?}"),
    }
}

/// The `tokenizer.*` metadata of a GGUF file as a [`GgufVocab`].
pub fn read_vocab(path: &Path) -> GgufVocab {
    let m = read_metadata(path);
    let numbers = |key: &str| {
        array(&m, key).map(|v| {
            v.iter()
                .map(|x| match x {
                    Meta::Float(f) => *f,
                    Meta::Int(i) => *i as f64,
                    Meta::Uint(u) => *u as f64,
                    other => panic!("{key}: expected numbers, got {other:?}"),
                })
                .collect::<Vec<f64>>()
        })
    };
    GgufVocab {
        model: string(&m, "tokenizer.ggml.model").expect("tokenizer.ggml.model"),
        pre: string(&m, "tokenizer.ggml.pre"),
        tokens: strings(&m, "tokenizer.ggml.tokens").expect("tokenizer.ggml.tokens"),
        scores: numbers("tokenizer.ggml.scores").map(|v| v.into_iter().map(|x| x as f32).collect()),
        token_types: numbers("tokenizer.ggml.token_type")
            .map(|v| v.into_iter().map(|x| x as i32).collect()),
        merges: strings(&m, "tokenizer.ggml.merges"),
        bos_id: id(&m, "tokenizer.ggml.bos_token_id"),
        eos_id: id(&m, "tokenizer.ggml.eos_token_id"),
        unk_id: id(&m, "tokenizer.ggml.unknown_token_id"),
        pad_id: id(&m, "tokenizer.ggml.padding_token_id"),
        add_bos: flag(&m, "tokenizer.ggml.add_bos_token"),
        add_eos: flag(&m, "tokenizer.ggml.add_eos_token"),
        add_space_prefix: flag(&m, "tokenizer.ggml.add_space_prefix"),
        chat_template: string(&m, "tokenizer.chat_template"),
    }
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
    let cache = std::env::var_os("WEBVLM_CACHE").map_or_else(|| repo_root().join(".cache"), PathBuf::from);
    let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
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
