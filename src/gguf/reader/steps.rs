//! The GGUF header parser's state machine steps: each reads one whole primitive or
//! nothing, validates it, and moves to the next state.
//!
//! Reference: GGUF spec (`ggml/docs/gguf.md`, "File Structure"). Limits are those of
//! the parent module; the file layout is magic, version, counts, key/value pairs
//! (arrays possibly nested), tensor infos.

use super::input::{decode_scalar, le_u32, le_u64, Input};
use super::{
    ArrayFrame, GgufHeaderParser, State, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_KV, MAX_METADATA_ELEMENTS, MAX_NAME_LEN,
    MAX_STRING_LEN, MAX_TENSORS, MIN_KV_BYTES, MIN_TENSOR_INFO_BYTES,
};
use crate::gguf::error::GgufError;
use crate::gguf::header::{GgufHeader, TensorInfo, MAX_DIMS};
use crate::gguf::types::GgmlType;
use crate::gguf::value::{MetaValue, ValueType};

impl GgufHeaderParser {
    fn advance(&mut self, input: &mut Input<'_>, n: usize) {
        input.off += n;
        self.pos += n as u64;
    }

    /// Truncated if the file is known to end before `n` more bytes.
    fn need_remaining(&self, n: u64) -> Result<(), GgufError> {
        match self.file_len {
            Some(len) if self.pos.saturating_add(n) > len => Err(GgufError::Truncated { section: self.section(), offset: len }),
            _ => Ok(()),
        }
    }

    fn check_count(&self, field: &'static str, value: u64, limit: u64, min_item: u64, header: u64) -> Result<(), GgufError> {
        if value > limit {
            return Err(GgufError::AbsurdCount { field, value, limit });
        }
        self.need_remaining(header.saturating_add(value.saturating_mul(min_item)))
    }

    fn read_u32(&mut self, input: &mut Input<'_>) -> Option<u32> {
        let b = input.peek_array::<4>()?;
        self.advance(input, 4);
        Some(u32::from_le_bytes(b))
    }

    /// A length-prefixed UTF-8 string, read whole or not at all.
    fn read_string(&mut self, input: &mut Input<'_>, limit: u64) -> Result<Option<String>, GgufError> {
        let Some(len_bytes) = input.peek_array::<8>() else {
            return Ok(None);
        };
        let len = u64::from_le_bytes(len_bytes);
        if len > limit {
            return Err(GgufError::StringTooLong { len, limit, offset: self.pos });
        }
        self.need_remaining(8 + len)?;
        let total = 8 + len as usize;
        let Some(bytes) = input.peek(total) else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&bytes[8..]).map_err(|_| GgufError::InvalidUtf8 { offset: self.pos + 8 })?.to_owned();
        self.advance(input, total);
        Ok(Some(text))
    }

    /// One atomic step; `Ok(false)` when the input holds too few bytes for it.
    pub(super) fn step(&mut self, input: &mut Input<'_>) -> Result<bool, GgufError> {
        match self.state {
            State::Magic => {
                let Some(m) = input.peek_array::<4>() else {
                    return Ok(false);
                };
                if &m != b"GGUF" {
                    return Err(GgufError::BadMagic(m));
                }
                self.advance(input, 4);
                self.state = State::Version;
            }
            State::Version => {
                let Some(v) = self.read_u32(input) else {
                    return Ok(false);
                };
                match v {
                    2 | 3 => self.version = v,
                    _ if (1..=3).contains(&v.swap_bytes()) => return Err(GgufError::BigEndian(v.swap_bytes())),
                    _ => return Err(GgufError::UnsupportedVersion(v)),
                }
                self.state = State::TensorCount;
            }
            State::TensorCount => {
                let Some(n) = input.peek_array::<8>().map(u64::from_le_bytes) else {
                    return Ok(false);
                };
                self.check_count("tensor count", n, MAX_TENSORS, MIN_TENSOR_INFO_BYTES, 16)?;
                self.advance(input, 8);
                self.n_tensors = n;
                self.state = State::KvCount;
            }
            State::KvCount => {
                let Some(n) = input.peek_array::<8>().map(u64::from_le_bytes) else {
                    return Ok(false);
                };
                let tensor_bytes = self.n_tensors * MIN_TENSOR_INFO_BYTES;
                self.check_count("metadata count", n, MAX_KV, MIN_KV_BYTES, 8 + tensor_bytes)?;
                self.advance(input, 8);
                self.n_kv = n;
                self.state = if n > 0 { State::KvKey } else { self.end_of_metadata()? };
            }
            State::KvKey => {
                let Some(key) = self.read_string(input, MAX_NAME_LEN)? else {
                    return Ok(false);
                };
                if self.metadata.contains(&key) {
                    return Err(GgufError::DuplicateKey(key));
                }
                self.key = key;
                self.state = State::KvType;
            }
            State::KvType => {
                let at = self.pos;
                let Some(id) = self.read_u32(input) else {
                    return Ok(false);
                };
                let ty = ValueType::from_id(id).ok_or(GgufError::UnknownValueType { id, offset: at })?;
                self.state = Self::value_state(ty);
            }
            State::Scalar(ty) => return self.step_scalar(input, ty),
            State::ArrayHead => {
                let Some(h) = input.peek(12) else {
                    return Ok(false);
                };
                let (id, len) = (le_u32(&h), le_u64(&h[4..]));
                let elem = ValueType::from_id(id).ok_or(GgufError::UnknownValueType { id, offset: self.pos })?;
                if self.stack.len() >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::NestingTooDeep { limit: MAX_ARRAY_DEPTH });
                }
                self.check_count("array length", len, MAX_ARRAY_LEN, elem.min_encoded_size(), 12)?;
                self.elements = self.elements.saturating_add(len);
                if self.elements > MAX_METADATA_ELEMENTS {
                    let (field, value, limit) = ("metadata array elements", self.elements, MAX_METADATA_ELEMENTS);
                    return Err(GgufError::AbsurdCount { field, value, limit });
                }
                self.advance(input, 12);
                let items = Vec::with_capacity(len.min(1024) as usize);
                if len == 0 {
                    self.complete_value(MetaValue::Array { elem, items })?;
                } else {
                    self.stack.push(ArrayFrame { elem, remaining: len, items });
                    self.state = Self::value_state(elem);
                }
            }
            State::TensorName => {
                let Some(name) = self.read_string(input, MAX_NAME_LEN)? else {
                    return Ok(false);
                };
                if self.names.contains(&name) {
                    return Err(GgufError::DuplicateTensor(name));
                }
                self.cur_name = name;
                self.state = State::TensorNDims;
            }
            State::TensorNDims => {
                let Some(n) = input.peek_array::<4>().map(u32::from_le_bytes) else {
                    return Ok(false);
                };
                if n > MAX_DIMS {
                    return Err(GgufError::TooManyDims { tensor: self.cur_name.clone(), n_dims: n });
                }
                self.advance(input, 4);
                self.n_dims = n;
                self.cur_dims.clear();
                self.state = if n > 0 { State::TensorDims } else { State::TensorTypeOffset };
            }
            State::TensorDims => {
                let n = self.n_dims as usize * 8;
                let Some(b) = input.peek(n) else {
                    return Ok(false);
                };
                self.cur_dims = b.chunks_exact(8).map(le_u64).collect();
                self.advance(input, n);
                self.state = State::TensorTypeOffset;
            }
            State::TensorTypeOffset => {
                let Some(b) = input.peek(12) else {
                    return Ok(false);
                };
                let (id, offset) = (le_u32(&b), le_u64(&b[4..]));
                self.advance(input, 12);
                self.push_tensor(id, offset)?;
            }
            State::Done | State::Failed => return Ok(false),
        }
        Ok(true)
    }

    fn value_state(ty: ValueType) -> State {
        if ty == ValueType::Array {
            State::ArrayHead
        } else {
            State::Scalar(ty)
        }
    }

    fn step_scalar(&mut self, input: &mut Input<'_>, ty: ValueType) -> Result<bool, GgufError> {
        let value = if ty == ValueType::String {
            let Some(s) = self.read_string(input, MAX_STRING_LEN)? else {
                return Ok(false);
            };
            MetaValue::String(s)
        } else {
            let size = ty.scalar_size().unwrap_or(1);
            let Some(b) = input.peek(size) else {
                return Ok(false);
            };
            let value = decode_scalar(ty, &b, self.pos)?;
            self.advance(input, size);
            value
        };
        self.complete_value(value)?;
        Ok(true)
    }

    /// Hands a finished value to the innermost open array, closing arrays that fill
    /// up, or stores it under the current key.
    fn complete_value(&mut self, mut value: MetaValue) -> Result<(), GgufError> {
        while let Some(frame) = self.stack.last_mut() {
            frame.items.push(value);
            frame.remaining -= 1;
            if frame.remaining > 0 {
                self.state = Self::value_state(frame.elem);
                return Ok(());
            }
            let full = std::mem::take(&mut frame.items);
            value = MetaValue::Array { elem: frame.elem, items: full };
            self.stack.pop();
        }
        self.metadata.insert(std::mem::take(&mut self.key), value)?;
        self.state = if (self.metadata.len() as u64) < self.n_kv { State::KvKey } else { self.end_of_metadata()? };
        Ok(())
    }

    fn end_of_metadata(&mut self) -> Result<State, GgufError> {
        if let Some(v) = self.metadata.get("general.alignment") {
            let a = match v.as_i128() {
                Some(a) => u64::try_from(a).map_err(|_| GgufError::BadAlignment(0))?,
                None => {
                    return Err(GgufError::WrongType {
                        key: "general.alignment".into(),
                        expected: "u32",
                        found: v.value_type().name(),
                    })
                }
            };
            if !a.is_power_of_two() {
                return Err(GgufError::BadAlignment(a));
            }
            self.alignment = a;
        }
        Ok(if self.n_tensors > 0 { State::TensorName } else { State::Done })
    }

    fn push_tensor(&mut self, type_id: u32, offset: u64) -> Result<(), GgufError> {
        let name = std::mem::take(&mut self.cur_name);
        let Some(ty) = GgmlType::from_id(type_id) else {
            return Err(GgufError::UnknownTensorType { tensor: name, id: type_id });
        };
        let info = TensorInfo { name, dims: std::mem::take(&mut self.cur_dims), ty, offset };
        info.check_shape()?;
        if !offset.is_multiple_of(self.alignment) {
            return Err(GgufError::MisalignedOffset { tensor: info.name, offset, alignment: self.alignment });
        }
        info.relative_range()?;
        self.names.insert(info.name.clone());
        self.tensors.push(info);
        if self.tensors.len() as u64 == self.n_tensors {
            self.state = State::Done;
        } else {
            self.state = State::TensorName;
        }
        Ok(())
    }

    pub(super) fn finish(&mut self) -> Result<GgufHeader, GgufError> {
        let data_offset = self.pos.div_ceil(self.alignment) * self.alignment;
        let header = GgufHeader {
            version: self.version,
            metadata: std::mem::take(&mut self.metadata),
            tensors: std::mem::take(&mut self.tensors),
            alignment: self.alignment,
            data_offset,
        };
        self.names.clear();
        match self.file_len {
            Some(len) => header.validate_data(len)?,
            None => header.validate_layout()?,
        }
        Ok(header)
    }
}
