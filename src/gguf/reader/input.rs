//! Little-endian wire primitives for the GGUF header parser: a zero-copy view over the
//! buffered tail of earlier chunks plus the new chunk, and scalar value decoding.
//!
//! Reference: GGUF spec (`ggml/docs/gguf.md`): all fields little-endian; bools are one
//! byte, 0 or 1.

use std::borrow::Cow;

use crate::gguf::error::GgufError;
use crate::gguf::value::{MetaValue, ValueType};

/// The unread bytes of one `feed` call: the buffered tail of earlier chunks, then the
/// new chunk, read as one sequence without copying either.
pub(super) struct Input<'a> {
    pub(super) a: &'a [u8],
    pub(super) b: &'a [u8],
    pub(super) off: usize,
}

impl<'a> Input<'a> {
    pub(super) fn avail(&self) -> usize {
        self.a.len() + self.b.len() - self.off
    }

    /// The next `n` bytes, borrowed unless they straddle the two parts.
    pub(super) fn peek(&self, n: usize) -> Option<Cow<'a, [u8]>> {
        if self.avail() < n {
            return None;
        }
        let (a, b, off) = (self.a, self.b, self.off);
        Some(if off + n <= a.len() {
            Cow::Borrowed(&a[off..off + n])
        } else if off >= a.len() {
            Cow::Borrowed(&b[off - a.len()..off - a.len() + n])
        } else {
            let mut v = a[off..].to_vec();
            v.extend_from_slice(&b[..n - (a.len() - off)]);
            Cow::Owned(v)
        })
    }

    pub(super) fn peek_array<const N: usize>(&self) -> Option<[u8; N]> {
        self.peek(N).map(|s| {
            let mut out = [0u8; N];
            out.copy_from_slice(&s);
            out
        })
    }
}

pub(super) fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

pub(super) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

pub(super) fn decode_scalar(ty: ValueType, b: &[u8], offset: u64) -> Result<MetaValue, GgufError> {
    let u16v = || u16::from_le_bytes([b[0], b[1]]);
    Ok(match ty {
        ValueType::U8 => MetaValue::U8(b[0]),
        ValueType::I8 => MetaValue::I8(b[0] as i8),
        ValueType::U16 => MetaValue::U16(u16v()),
        ValueType::I16 => MetaValue::I16(u16v() as i16),
        ValueType::U32 => MetaValue::U32(le_u32(b)),
        ValueType::I32 => MetaValue::I32(le_u32(b) as i32),
        ValueType::F32 => MetaValue::F32(f32::from_bits(le_u32(b))),
        ValueType::U64 => MetaValue::U64(le_u64(b)),
        ValueType::I64 => MetaValue::I64(le_u64(b) as i64),
        ValueType::F64 => MetaValue::F64(f64::from_bits(le_u64(b))),
        ValueType::Bool => match b[0] {
            0 => MetaValue::Bool(false),
            1 => MetaValue::Bool(true),
            value => return Err(GgufError::InvalidBool { value, offset }),
        },
        // Strings and arrays never reach here (see `step_scalar` and `value_state`).
        ValueType::String | ValueType::Array => return Err(GgufError::UnknownValueType { id: ty.id(), offset }),
    })
}
