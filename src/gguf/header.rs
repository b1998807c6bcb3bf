//! The parsed GGUF header: metadata, tensor infos (and row sizes), alignment and data offset.
//!
//! Reference: GGUF spec (`ggml/docs/gguf.md`, "gguf_tensor_info_t" and "File
//! Structure"). Tensor offsets are relative to the data section, which starts at the end
//! of the tensor infos rounded up to `general.alignment` (default 32).

use std::ops::Range;

use super::error::GgufError;
use super::metadata::Metadata;
use super::types::GgmlType;

/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Most elements a tensor may have (2^40).
pub const MAX_ELEMENTS: u64 = 1 << 40;
/// Alignment used when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

// Here rather than in `types.rs`: `GgufError` names `GgmlType`, so `types` sits below `error`.
impl GgmlType {
    /// Bytes of a row of `n` elements; `n` must be a multiple of the block size.
    pub fn row_bytes(self, n: u64) -> Result<u64, GgufError> {
        let bs = self.block_size() as u64;
        if !n.is_multiple_of(bs) {
            return Err(GgufError::NotBlockMultiple { ty: self, n });
        }
        (n / bs).checked_mul(self.type_size() as u64).ok_or(GgufError::DimsOverflow { tensor: String::new() })
    }
}

/// One tensor's description from the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` is the contiguous one (the row length).
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Checks dims (≤ 4, each > 0, ≤ 2^40 elements) and the row's block multiple.
    pub fn check_shape(&self) -> Result<(), GgufError> {
        if self.dims.len() > MAX_DIMS as usize {
            return Err(GgufError::TooManyDims { tensor: self.name.clone(), n_dims: self.dims.len() as u32 });
        }
        if let Some(index) = self.dims.iter().position(|&d| d == 0) {
            return Err(GgufError::ZeroDim { tensor: self.name.clone(), index });
        }
        let overflow = || GgufError::DimsOverflow { tensor: self.name.clone() };
        let n = self.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(overflow)?;
        if n > MAX_ELEMENTS {
            return Err(overflow());
        }
        self.n_bytes().map(|_| ())
    }

    /// Number of elements (product of dims; 1 for a scalar). Saturates on overflow,
    /// which `check_shape` (run by the parser) rules out.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Elements per row (`dims[0]`, or 1 for a scalar).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of `dims[1..]`).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Bytes of tensor data; errors if the row length is not a block multiple.
    pub fn n_bytes(&self) -> Result<u64, GgufError> {
        self.ty
            .row_bytes(self.row_len())?
            .checked_mul(self.n_rows())
            .ok_or_else(|| GgufError::DimsOverflow { tensor: self.name.clone() })
    }

    /// Dims as text, e.g. `[3072, 131072]`.
    pub fn shape_str(&self) -> String {
        let parts: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        format!("[{}]", parts.join(", "))
    }

    /// Byte range relative to the data section.
    pub fn relative_range(&self) -> Result<Range<u64>, GgufError> {
        let len = self.n_bytes()?;
        let end = self.offset.checked_add(len).ok_or_else(|| GgufError::OutOfRange {
            tensor: self.name.clone(),
            start: self.offset,
            end: u64::MAX,
            file_len: 0,
        })?;
        Ok(self.offset..end)
    }
}

/// A complete GGUF header.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    /// File format version (2 or 3).
    pub version: u32,
    /// Metadata key/value pairs.
    pub metadata: Metadata,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment` (a power of two, default 32).
    pub alignment: u64,
    /// Absolute byte offset of the (aligned) tensor data section.
    pub data_offset: u64,
}

impl GgufHeader {
    /// The tensor info with this name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Absolute byte range of a tensor's data in the file.
    pub fn absolute_range(&self, t: &TensorInfo) -> Result<Range<u64>, GgufError> {
        let r = t.relative_range()?;
        let out_of_range = || GgufError::OutOfRange { tensor: t.name.clone(), start: r.start, end: r.end, file_len: 0 };
        let start = self.data_offset.checked_add(r.start).ok_or_else(out_of_range)?;
        let end = self.data_offset.checked_add(r.end).ok_or_else(out_of_range)?;
        Ok(start..end)
    }

    /// Bytes the data section must span: the largest tensor end offset.
    pub fn data_len(&self) -> Result<u64, GgufError> {
        self.tensors.iter().try_fold(0u64, |m, t| Ok(m.max(t.relative_range()?.end)))
    }

    /// Checks shapes, offset alignment and that no two tensors overlap.
    pub fn validate_layout(&self) -> Result<(), GgufError> {
        let mut ranges = Vec::with_capacity(self.tensors.len());
        for (i, t) in self.tensors.iter().enumerate() {
            t.check_shape()?;
            if self.alignment == 0 || !t.offset.is_multiple_of(self.alignment) {
                return Err(GgufError::MisalignedOffset { tensor: t.name.clone(), offset: t.offset, alignment: self.alignment });
            }
            ranges.push((t.relative_range()?, i));
        }
        ranges.sort_by_key(|(r, _)| r.start);
        let mut furthest: Option<(u64, usize)> = None;
        for (r, i) in ranges {
            if let Some((end, j)) = furthest {
                if r.start < end {
                    return Err(GgufError::Overlap { first: self.tensors[j].name.clone(), second: self.tensors[i].name.clone() });
                }
            }
            if furthest.is_none_or(|(end, _)| r.end > end) {
                furthest = Some((r.end, i));
            }
        }
        Ok(())
    }

    /// `validate_layout`, plus every tensor lies inside a file of `file_len` bytes.
    pub fn validate_data(&self, file_len: u64) -> Result<(), GgufError> {
        self.validate_layout()?;
        for t in &self.tensors {
            let r = self.absolute_range(t)?;
            if r.end > file_len {
                return Err(GgufError::OutOfRange { tensor: t.name.clone(), start: r.start, end: r.end, file_len });
            }
        }
        Ok(())
    }
}
