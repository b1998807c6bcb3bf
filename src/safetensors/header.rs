//! The parsed safetensors header: tensor entries (dtype, shape, byte range) and
//! `__metadata__`, checked as a whole.
//!
//! Reference: the safetensors format (<https://github.com/huggingface/safetensors>, "Format"):
//! a little-endian u64 N, N bytes of JSON (an object of tensor entries
//! `{"dtype", "shape", "data_offsets": [begin, end]}` plus an optional `"__metadata__"`
//! string map), then the data section, to which the offsets are relative. Shapes are
//! row-major (last dimension contiguous), the reverse of GGUF's dims.
//!
//! Stricter than the reference reader where it guards against hostile files (duplicate
//! keys, which JSON parsers resolve differently), more lenient where nothing is at stake:
//! gaps between tensors and bytes after the last one are allowed.

use std::collections::BTreeMap;
use std::ops::Range;

use super::dtype::Dtype;
use super::error::SafetensorsError;
use super::json::Node;
use crate::gguf::GgmlType;

/// Longest JSON header accepted (checked before anything is allocated from it).
pub const MAX_HEADER_LEN: u64 = 100 << 20;
/// Most dimensions a tensor may have.
pub const MAX_DIMS: usize = 8;
/// The header key holding the string metadata.
pub const METADATA_KEY: &str = "__metadata__";

/// One tensor's entry in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// The tensor name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    pub dtype: Dtype,
    /// Row-major dimensions: the last one is contiguous. Empty for a scalar.
    pub shape: Vec<u64>,
    /// First byte, relative to the data section.
    pub start: u64,
    /// One past the last byte, relative to the data section.
    pub end: u64,
}

impl TensorEntry {
    /// Bytes of tensor data.
    pub fn byte_len(&self) -> u64 {
        self.end - self.start
    }

    /// Number of elements (1 for a scalar); cannot overflow once parsed.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// The dimensions in GGUF order (`[0]` contiguous): the shape reversed.
    pub fn ggml_dims(&self) -> Vec<u64> {
        self.shape.iter().rev().copied().collect()
    }

    /// The byte range relative to the data section.
    pub fn range(&self) -> Range<u64> {
        self.start..self.end
    }

    /// The GGML type to load this tensor as a weight, or
    /// [`SafetensorsError::UnsupportedDtype`] for a dtype webvlm does not load.
    pub fn ggml_type(&self) -> Result<GgmlType, SafetensorsError> {
        self.dtype
            .ggml_type()
            .ok_or_else(|| SafetensorsError::UnsupportedDtype { tensor: self.name.clone(), dtype: self.dtype.name() })
    }
}

/// A parsed and checked safetensors header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// Every tensor, sorted by start offset (ties: by end); no two share a byte.
    pub tensors: Vec<TensorEntry>,
    /// The `__metadata__` map (empty when absent).
    pub metadata: BTreeMap<String, String>,
    /// Absolute file offset of the data section: 8 + the JSON length.
    pub data_start: u64,
}

impl SafetensorsHeader {
    /// The entry named `name` (a linear search; index it for many lookups).
    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's byte range in the whole file.
    pub fn file_range(&self, entry: &TensorEntry) -> Range<u64> {
        // Parsing ruled out overflow (`end <= u64::MAX - data_start`).
        self.data_start + entry.start..self.data_start + entry.end
    }

    /// Bytes from the start of the data section to the end of the last tensor.
    pub fn data_len(&self) -> u64 {
        self.tensors.iter().map(|t| t.end).max().unwrap_or(0)
    }

    /// Checks the header against the length of its file: the data section starts inside
    /// it and every tensor ends inside it.
    pub fn validate_data(&self, file_len: u64) -> Result<(), SafetensorsError> {
        let data_len = file_len
            .checked_sub(self.data_start)
            .ok_or(SafetensorsError::TruncatedFile { file_len, data_start: self.data_start })?;
        match self.tensors.iter().find(|t| t.end > data_len) {
            Some(t) => Err(SafetensorsError::TruncatedData { tensor: t.name.clone(), start: t.start, end: t.end, data_len }),
            None => Ok(()),
        }
    }

    /// Parses the JSON header bytes (without the length prefix) of a file whose data
    /// section starts at `data_start`.
    pub(crate) fn from_json(json: &[u8], data_start: u64) -> Result<Self, SafetensorsError> {
        let text = std::str::from_utf8(json).map_err(|e| SafetensorsError::HeaderNotUtf8 { valid_up_to: e.valid_up_to() })?;
        let Node::Object(members) = Node::parse(text).map_err(SafetensorsError::HeaderNotJson)? else {
            return Err(SafetensorsError::HeaderNotObject);
        };
        if let Some(key) = Node::duplicate_key(&members) {
            return Err(SafetensorsError::DuplicateKey(key.to_owned()));
        }
        let mut header = SafetensorsHeader { data_start, ..Default::default() };
        for (name, node) in members {
            if name == METADATA_KEY {
                header.metadata = parse_metadata(node)?;
            } else {
                header.tensors.push(parse_entry(name, node, data_start)?);
            }
        }
        header.tensors.sort_by_key(|t| (t.start, t.end));
        check_overlaps(&header.tensors)?;
        Ok(header)
    }
}

fn parse_metadata(node: Node) -> Result<BTreeMap<String, String>, SafetensorsError> {
    let Node::Object(members) = node else {
        return Err(SafetensorsError::BadMetadata { key: METADATA_KEY.to_owned() });
    };
    if let Some(key) = Node::duplicate_key(&members) {
        return Err(SafetensorsError::DuplicateKey(format!("{METADATA_KEY}.{key}")));
    }
    members
        .into_iter()
        .map(|(key, value)| match value {
            Node::String(s) => Ok((key, s)),
            _ => Err(SafetensorsError::BadMetadata { key }),
        })
        .collect()
}

fn parse_entry(name: String, node: Node, data_start: u64) -> Result<TensorEntry, SafetensorsError> {
    let wrong = |field, expected| SafetensorsError::WrongJsonType { tensor: name.clone(), field, expected };
    let Node::Object(members) = node else {
        return Err(wrong("entry", "an object"));
    };
    if let Some(key) = Node::duplicate_key(&members) {
        return Err(SafetensorsError::DuplicateKey(format!("{name}.{key}")));
    }
    let field = |field: &'static str| {
        members
            .iter()
            .find(|(k, _)| k == field)
            .map(|(_, v)| v)
            .ok_or_else(|| SafetensorsError::MissingField { tensor: name.clone(), field })
    };
    let dtype = match field("dtype")? {
        Node::String(s) => {
            Dtype::from_name(s).ok_or_else(|| SafetensorsError::UnknownDtype { tensor: name.clone(), dtype: s.clone() })?
        }
        _ => return Err(wrong("dtype", "a string")),
    };
    let shape = uint_array(field("shape")?).ok_or_else(|| wrong("shape", "an array of non-negative integers"))?;
    let (begin, end) = match uint_array(field("data_offsets")?).as_deref() {
        Some(&[begin, end]) => (begin, end),
        _ => return Err(wrong("data_offsets", "two non-negative integers")),
    };
    if shape.len() > MAX_DIMS {
        return Err(SafetensorsError::TooManyDims { tensor: name, n_dims: shape.len(), limit: MAX_DIMS });
    }
    if begin > end {
        return Err(SafetensorsError::ReversedOffsets { tensor: name, begin, end });
    }
    if end > u64::MAX - data_start {
        return Err(SafetensorsError::TruncatedData { tensor: name, start: begin, end, data_len: u64::MAX - data_start });
    }
    let overflow = |name: String, shape: Vec<u64>| SafetensorsError::ShapeOverflow { tensor: name, shape };
    let Some(n) = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)) else {
        return Err(overflow(name, shape));
    };
    let Some(bits) = n.checked_mul(dtype.bits()) else {
        return Err(overflow(name, shape));
    };
    // A sub-byte dtype whose elements do not fill whole bytes can never match.
    let expected = bits.div_ceil(8);
    if bits % 8 != 0 || end - begin != expected {
        return Err(SafetensorsError::LengthMismatch { tensor: name, dtype: dtype.name(), shape, bytes: end - begin, expected });
    }
    Ok(TensorEntry { name, dtype, shape, start: begin, end })
}

fn uint_array(node: &Node) -> Option<Vec<u64>> {
    match node {
        Node::Array(items) => items.iter().map(|i| if let Node::Uint(v) = i { Some(*v) } else { None }).collect(),
        _ => None,
    }
}

/// `tensors` sorted by start: each non-empty tensor must start at or after the furthest
/// end so far (empty tensors hold no bytes and overlap nothing).
fn check_overlaps(tensors: &[TensorEntry]) -> Result<(), SafetensorsError> {
    let mut furthest: Option<&TensorEntry> = None;
    for t in tensors.iter().filter(|t| t.start < t.end) {
        if let Some(prev) = furthest {
            if t.start < prev.end {
                return Err(SafetensorsError::Overlap { first: prev.name.clone(), second: t.name.clone() });
            }
        }
        if furthest.is_none_or(|prev| t.end > prev.end) {
            furthest = Some(t);
        }
    }
    Ok(())
}
