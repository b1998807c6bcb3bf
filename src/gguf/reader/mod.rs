//! Push-based GGUF header parser: feed it chunks of any size, get the header back.
//!
//! Reference: GGUF spec (`ggml/docs/gguf.md`): magic `GGUF`, u32 version, u64 tensor
//! count, u64 metadata count, key/value pairs, tensor infos, padding to the alignment,
//! tensor data; all little-endian. The parser is a state machine whose every step reads
//! one whole primitive (a fixed-size field, or a length-prefixed string) or nothing, so
//! chunks may split any field and each byte is examined O(1) times. Only the bytes of an
//! incomplete primitive are buffered between calls. Every count and length is checked
//! against a hard limit, and against the bytes remaining when the file length is known,
//! before anything is allocated from it; vectors grow as items actually parse.

use std::collections::HashSet;

mod input;
mod steps;

use input::Input;

use super::error::{GgufError, Section};
use super::header::{GgufHeader, TensorInfo, DEFAULT_ALIGNMENT};
use super::metadata::Metadata;
use super::value::{MetaValue, ValueType};

/// Most tensors a header may declare.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most metadata pairs a header may declare.
pub const MAX_KV: u64 = 1 << 20;
/// Longest metadata string value in bytes.
pub const MAX_STRING_LEN: u64 = 1 << 26;
/// Longest metadata key or tensor name in bytes.
pub const MAX_NAME_LEN: u64 = 1 << 16;
/// Most elements in one metadata array.
pub const MAX_ARRAY_LEN: u64 = 1 << 28;
/// Most array elements in all of a header's metadata together: 6× a real vocabulary's
/// arrays (tokens, scores, types, merges: ~1.3M for the largest), so that a file of
/// millions of tiny elements, each a few bytes in the file and tens in memory, fails early.
pub const MAX_METADATA_ELEMENTS: u64 = 1 << 23;
/// Deepest nesting of metadata arrays.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Smallest encoding of a key/value pair: key length, type id, one byte of value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest encoding of a tensor info: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Magic,
    Version,
    TensorCount,
    KvCount,
    KvKey,
    KvType,
    Scalar(ValueType),
    ArrayHead,
    TensorName,
    TensorNDims,
    TensorDims,
    TensorTypeOffset,
    Done,
    Failed,
}

struct ArrayFrame {
    elem: ValueType,
    remaining: u64,
    items: Vec<MetaValue>,
}

/// Incremental GGUF header parser, independent of where the bytes come from.
pub struct GgufHeaderParser {
    state: State,
    pending: Vec<u8>,
    pos: u64,
    file_len: Option<u64>,
    version: u32,
    n_tensors: u64,
    n_kv: u64,
    metadata: Metadata,
    key: String,
    stack: Vec<ArrayFrame>,
    /// Array elements declared so far, nested ones included.
    elements: u64,
    alignment: u64,
    tensors: Vec<TensorInfo>,
    names: HashSet<String>,
    cur_name: String,
    cur_dims: Vec<u64>,
    n_dims: u32,
}

impl Default for GgufHeaderParser {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufHeaderParser {
    /// A parser for a stream of unknown length.
    pub fn new() -> Self {
        Self {
            state: State::Magic,
            pending: Vec::new(),
            pos: 0,
            file_len: None,
            version: 0,
            n_tensors: 0,
            n_kv: 0,
            metadata: Metadata::new(),
            key: String::new(),
            stack: Vec::new(),
            elements: 0,
            alignment: DEFAULT_ALIGNMENT,
            tensors: Vec::new(),
            names: HashSet::new(),
            cur_name: String::new(),
            cur_dims: Vec::new(),
            n_dims: 0,
        }
    }

    /// A parser for a file of known length: counts and lengths are also checked
    /// against the bytes remaining, and the finished header against the file length.
    pub fn with_file_len(file_len: u64) -> Self {
        Self { file_len: Some(file_len), ..Self::new() }
    }

    /// Header bytes consumed so far (once complete: the end of the tensor infos).
    pub fn bytes_consumed(&self) -> u64 {
        self.pos
    }

    /// Whether the header has been returned.
    pub fn is_complete(&self) -> bool {
        self.state == State::Done
    }

    /// The header section the parser is currently in.
    pub fn section(&self) -> Section {
        match self.state {
            State::Magic => Section::Magic,
            State::Version => Section::Version,
            State::TensorCount => Section::TensorCount,
            State::KvCount => Section::KvCount,
            State::KvKey => Section::KvKey,
            State::KvType => Section::KvType,
            State::Scalar(_) | State::ArrayHead => Section::KvValue,
            State::TensorName | State::TensorNDims | State::TensorDims => Section::TensorInfo,
            State::TensorTypeOffset | State::Failed => Section::TensorInfo,
            State::Done => Section::TensorData,
        }
    }

    /// The error to report when the input ends now, before the header is complete.
    pub fn eof_error(&self) -> GgufError {
        GgufError::Truncated { section: self.section(), offset: self.pos + self.pending.len() as u64 }
    }

    /// Feeds the next chunk. Returns the header, once, as soon as the tensor infos are
    /// complete; `Ok(None)` means more bytes are needed (or the header was returned
    /// already). The caller tracks absolute positions: tensor data starts at
    /// `header.data_offset`. After an error every call fails with `ParserFailed`.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Option<GgufHeader>, GgufError> {
        match self.state {
            State::Done => return Ok(None),
            State::Failed => return Err(GgufError::ParserFailed),
            _ => {}
        }
        let mut pending = std::mem::take(&mut self.pending);
        let mut input = Input { a: &pending, b: chunk, off: 0 };
        let result = self.run(&mut input);
        let off = input.off;
        match result {
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
            Ok(Some(header)) => Ok(Some(header)),
            Ok(None) => {
                if off == 0 {
                    pending.extend_from_slice(chunk);
                    self.pending = pending;
                } else if off >= pending.len() {
                    self.pending = chunk[off - pending.len()..].to_vec();
                } else {
                    let mut rest = pending[off..].to_vec();
                    rest.extend_from_slice(chunk);
                    self.pending = rest;
                }
                Ok(None)
            }
        }
    }

    fn run(&mut self, input: &mut Input<'_>) -> Result<Option<GgufHeader>, GgufError> {
        while self.state != State::Done {
            if !self.step(input)? {
                return Ok(None);
            }
        }
        self.finish().map(Some)
    }
}

/// Parses the header of a complete GGUF file held in memory (its length is the file
/// length, so tensor ranges are checked too). For a prefix of a file, or a stream, use
/// [`GgufHeaderParser`].
pub fn parse_header(bytes: &[u8]) -> Result<GgufHeader, GgufError> {
    let mut parser = GgufHeaderParser::with_file_len(bytes.len() as u64);
    match parser.feed(bytes)? {
        Some(header) => Ok(header),
        None => Err(parser.eof_error()),
    }
}
