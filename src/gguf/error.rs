//! Typed errors of the GGUF reader, writer, split-file index and dequantizers.
//!
//! Format reference: the GGUF spec (`ggml/docs/gguf.md`). Every malformed or hostile
//! input maps to one variant here; no input path panics.

use std::fmt;

use super::types::GgmlType;

/// The part of a GGUF header being read when an error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// The 4-byte magic.
    Magic,
    /// The `u32` version.
    Version,
    /// The tensor count.
    TensorCount,
    /// The metadata key/value count.
    KvCount,
    /// A metadata key string.
    KvKey,
    /// A metadata value type id.
    KvType,
    /// A metadata value (scalar, string or array header).
    KvValue,
    /// A tensor info (name, dims, type, offset).
    TensorInfo,
    /// The tensor data section.
    TensorData,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::Magic => "magic",
            Section::Version => "version",
            Section::TensorCount => "tensor count",
            Section::KvCount => "metadata count",
            Section::KvKey => "metadata key",
            Section::KvType => "metadata value type",
            Section::KvValue => "metadata value",
            Section::TensorInfo => "tensor info",
            Section::TensorData => "tensor data",
        })
    }
}

/// Everything that can go wrong reading, indexing, writing or dequantizing GGUF.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The input ended (or is declared too short) inside a header section.
    #[error("truncated GGUF: input ends inside the {section} at byte {offset}")]
    Truncated { section: Section, offset: u64 },
    /// The file does not start with the bytes `GGUF`.
    #[error("not a GGUF file: magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// The version reads as a known version only when byte-swapped: a big-endian file.
    #[error("big-endian GGUF (version {0} byte-swapped) is not supported")]
    BigEndian(u32),
    /// A version other than 2 or 3.
    #[error("unsupported GGUF version {0} (expected 2 or 3)")]
    UnsupportedVersion(u32),
    /// A count or length field exceeds its hard limit.
    #[error("absurd {field}: {value} (limit {limit})")]
    AbsurdCount { field: &'static str, value: u64, limit: u64 },
    /// A string's declared length exceeds its hard limit.
    #[error("string of {len} bytes at byte {offset} exceeds the limit of {limit}")]
    StringTooLong { len: u64, limit: u64, offset: u64 },
    /// A string is not valid UTF-8.
    #[error("string at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: u64 },
    /// A bool value byte other than 0 or 1.
    #[error("invalid bool byte {value} at byte {offset}")]
    InvalidBool { value: u8, offset: u64 },
    /// A metadata value type id outside 0..=12.
    #[error("unknown metadata value type {id} at byte {offset}")]
    UnknownValueType { id: u32, offset: u64 },
    /// Arrays nested deeper than the reader allows.
    #[error("metadata arrays nested deeper than {limit}")]
    NestingTooDeep { limit: usize },
    /// A tensor type id not in the spec.
    #[error("tensor '{tensor}': unknown tensor type id {id}")]
    UnknownTensorType { tensor: String, id: u32 },
    /// More than 4 dimensions.
    #[error("tensor '{tensor}': {n_dims} dimensions (at most 4)")]
    TooManyDims { tensor: String, n_dims: u32 },
    /// A dimension of size zero.
    #[error("tensor '{tensor}': dimension {index} is zero")]
    ZeroDim { tensor: String, index: usize },
    /// The element or byte count overflows or exceeds 2^40 elements.
    #[error("tensor '{tensor}': dimensions overflow")]
    DimsOverflow { tensor: String },
    /// A row length (`dims[0]`, or any element count) not a multiple of the block size.
    #[error("{n} elements is not a multiple of the {ty} block size")]
    NotBlockMultiple { ty: GgmlType, n: u64 },
    /// `general.alignment` is zero or not a power of two.
    #[error("bad alignment {0} (must be a power of two)")]
    BadAlignment(u64),
    /// A tensor offset is not a multiple of the alignment.
    #[error("tensor '{tensor}': offset {offset} is not aligned to {alignment}")]
    MisalignedOffset { tensor: String, offset: u64, alignment: u64 },
    /// A tensor's bytes lie (partly) outside the file.
    #[error("tensor '{tensor}': bytes {start}..{end} outside the file of {file_len} bytes")]
    OutOfRange { tensor: String, start: u64, end: u64, file_len: u64 },
    /// Two tensors' byte ranges overlap.
    #[error("tensors '{first}' and '{second}' overlap")]
    Overlap { first: String, second: String },
    /// The same metadata key appears twice.
    #[error("duplicate metadata key '{0}'")]
    DuplicateKey(String),
    /// The same tensor name appears twice (in one file or across split files).
    #[error("duplicate tensor '{0}'")]
    DuplicateTensor(String),
    /// A required metadata key is absent.
    #[error("missing metadata key '{0}'")]
    MissingKey(String),
    /// A metadata value has a type the getter cannot convert.
    #[error("metadata key '{key}': expected {expected}, found {found}")]
    WrongType { key: String, expected: &'static str, found: &'static str },
    /// A numeric metadata value does not fit the requested type.
    #[error("metadata key '{key}': value {value} does not fit {target}")]
    ValueOutOfRange { key: String, value: String, target: &'static str },
    /// A requested tensor is not in the file(s).
    #[error("no tensor named '{0}'")]
    MissingTensor(String),
    /// Split metadata disagrees between parts or with the number of parts given.
    #[error("split mismatch: {0}")]
    SplitMismatch(String),
    /// A part of a split model is missing.
    #[error("split part {no} of {count} is missing")]
    MissingSplit { no: u64, count: u64 },
    /// A type the CPU dequantizer (or helper) does not implement.
    #[error("tensor type {0} is not supported here")]
    UnsupportedType(GgmlType),
    /// A byte buffer and element count that do not match the type's block layout.
    #[error("{ty}: {bytes} bytes do not hold {elements} elements")]
    SizeMismatch { ty: GgmlType, bytes: usize, elements: usize },
    /// The streaming parser was fed again after it reported an error.
    #[error("the GGUF header parser already failed")]
    ParserFailed,
    /// An I/O error opening or mapping a file.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}
