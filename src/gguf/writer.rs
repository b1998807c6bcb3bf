//! A small GGUF writer (v3 by default, v2 on request) for tests and synthetic models.
//!
//! Reference: GGUF spec (`ggml/docs/gguf.md`, "File Structure"): header, key/value
//! pairs, tensor infos, zero padding to the alignment, then each tensor's bytes padded to
//! the alignment. It writes what it is told, so tests can also build malformed files:
//! duplicate keys, any `general.alignment` value, raw tensor infos with arbitrary type
//! ids and offsets.

use super::error::GgufError;
use super::header::DEFAULT_ALIGNMENT;
use super::types::GgmlType;
use super::value::{MetaValue, ValueType};

struct WriterTensor {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    /// `None`: placed automatically in the data section; `Some`: written verbatim.
    offset: Option<u64>,
    data: TensorData,
}

enum TensorData {
    Bytes(Vec<u8>),
    /// This many zero bytes, never held in memory.
    Zeros(u64),
}

impl TensorData {
    fn len(&self) -> u64 {
        match self {
            TensorData::Bytes(b) => b.len() as u64,
            TensorData::Zeros(n) => *n,
        }
    }
}

/// Builds a GGUF file in memory.
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    kvs: Vec<(String, MetaValue)>,
    tensors: Vec<WriterTensor>,
    extra_data: Vec<u8>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// A written header: its bytes, each automatically placed tensor with its offset in the
/// data section, and the data section's length.
type Header<'a> = (Vec<u8>, Vec<(u64, &'a TensorData)>, u64);

impl GgufWriter {
    /// An empty v3 file with the default alignment (32).
    pub fn new() -> Self {
        Self { version: 3, alignment: DEFAULT_ALIGNMENT, kvs: Vec::new(), tensors: Vec::new(), extra_data: Vec::new() }
    }

    /// Sets the version field written (2 and 3 share one layout).
    pub fn set_version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Uses `alignment` for padding and records it as `general.alignment` (u32).
    pub fn set_alignment(&mut self, alignment: u32) -> Result<&mut Self, GgufError> {
        if !alignment.is_power_of_two() {
            return Err(GgufError::BadAlignment(alignment.into()));
        }
        self.alignment = alignment.into();
        self.kvs.retain(|(k, _)| k != "general.alignment");
        self.kvs.push(("general.alignment".into(), MetaValue::U32(alignment)));
        Ok(self)
    }

    /// Appends a key/value pair verbatim (duplicates are written as given).
    pub fn add_kv(&mut self, key: impl Into<String>, value: MetaValue) -> &mut Self {
        self.kvs.push((key.into(), value));
        self
    }

    /// Appends a tensor whose data is placed (aligned) in the data section.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, GgufError> {
        let data = data.into();
        let info = Self::tensor_info(name.into(), dims, ty)?;
        if info.n_bytes()? != data.len() as u64 {
            let elements = info.n_elements() as usize;
            return Err(GgufError::SizeMismatch { ty, bytes: data.len(), elements });
        }
        self.push_placed(info, TensorData::Bytes(data));
        Ok(self)
    }

    /// Appends a tensor of zeros without holding them: [`Self::write_to`] seeks over them, so
    /// a file gets a hole (no disk blocks) where the filesystem supports sparse files.
    pub fn add_zero_tensor(&mut self, name: impl Into<String>, dims: &[u64], ty: GgmlType) -> Result<&mut Self, GgufError> {
        let info = Self::tensor_info(name.into(), dims, ty)?;
        let len = info.n_bytes()?;
        self.push_placed(info, TensorData::Zeros(len));
        Ok(self)
    }

    fn tensor_info(name: String, dims: &[u64], ty: GgmlType) -> Result<super::header::TensorInfo, GgufError> {
        let info = super::header::TensorInfo { name, dims: dims.to_vec(), ty, offset: 0 };
        info.check_shape()?;
        Ok(info)
    }

    fn push_placed(&mut self, info: super::header::TensorInfo, data: TensorData) {
        self.tensors.push(WriterTensor { name: info.name, dims: info.dims, type_id: info.ty.id(), offset: None, data });
    }

    /// Appends a tensor info written verbatim (any type id, any offset), with no data.
    pub fn add_raw_tensor_info(&mut self, name: impl Into<String>, dims: &[u64], type_id: u32, offset: u64) -> &mut Self {
        self.tensors.push(WriterTensor {
            name: name.into(),
            dims: dims.to_vec(),
            type_id,
            offset: Some(offset),
            data: TensorData::Bytes(Vec::new()),
        });
        self
    }

    /// Bytes appended after the placed tensors' data (for raw tensor infos).
    pub fn append_raw_data(&mut self, bytes: &[u8]) -> &mut Self {
        self.extra_data.extend_from_slice(bytes);
        self
    }

    /// Serializes the file.
    pub fn write(&self) -> Result<Vec<u8>, GgufError> {
        let (mut out, placed, data_len) = self.header()?;
        let data_start = out.len() as u64;
        out.reserve(data_len as usize + self.extra_data.len());
        for (offset, data) in placed {
            out.resize((data_start + offset) as usize, 0);
            if let TensorData::Bytes(bytes) = data {
                out.extend_from_slice(bytes);
            }
        }
        out.resize((data_start + data_len) as usize, 0);
        out.extend_from_slice(&self.extra_data);
        Ok(out)
    }

    /// Serializes the file into `out` (from its start) tensor by tensor, without a second
    /// copy of the data in memory (a 3B model's file is as large as its tensors). Padding and
    /// zero tensors are seeked over, not written: a file gets holes there.
    pub fn write_to<W: std::io::Write + std::io::Seek>(&self, out: &mut W) -> std::io::Result<()> {
        use std::io::SeekFrom;
        let invalid = |e: GgufError| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let (header, placed, data_len) = self.header().map_err(invalid)?;
        out.write_all(&header)?;
        let data_start = header.len() as u64;
        for (offset, data) in placed {
            if let TensorData::Bytes(bytes) = data {
                out.seek(SeekFrom::Start(data_start + offset))?;
                out.write_all(bytes)?;
            }
        }
        let end = data_start + data_len + self.extra_data.len() as u64;
        if !self.extra_data.is_empty() {
            out.seek(SeekFrom::Start(data_start + data_len))?;
            out.write_all(&self.extra_data)?;
        } else if out.stream_position()? < end {
            // A trailing hole still needs the file's length: its last byte.
            out.seek(SeekFrom::Start(end - 1))?;
            out.write_all(&[0])?;
        }
        Ok(())
    }

    /// The header bytes (padded to the alignment), the data-section offset of each
    /// automatically placed tensor in the order added, and the data section's length: what a
    /// writer that streams the tensors' bytes itself needs ([`crate::source::hf::HfStream`]'s
    /// GGUF output).
    pub fn layout(&self) -> Result<(Vec<u8>, Vec<u64>, u64), GgufError> {
        let (header, placed, data_len) = self.header()?;
        Ok((header, placed.into_iter().map(|(offset, _)| offset).collect(), data_len))
    }

    /// The header (magic to tensor infos, padded to the alignment), where each automatically
    /// placed tensor's data goes relative to the data section, and the data section's length.
    fn header(&self) -> Result<Header<'_>, GgufError> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (key, value) in &self.kvs {
            write_str(&mut out, key);
            out.extend_from_slice(&value.value_type().id().to_le_bytes());
            write_value(&mut out, key, value)?;
        }
        let mut next = 0u64;
        let mut placed = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let offset = match t.offset {
                Some(o) => o,
                None => {
                    let o = next;
                    next = align_up(o + t.data.len(), self.alignment);
                    placed.push((o, &t.data));
                    o
                }
            };
            write_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.type_id.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        let data_start = align_up(out.len() as u64, self.alignment);
        out.resize(data_start as usize, 0);
        Ok((out, placed, next))
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, key: &str, value: &MetaValue) -> Result<(), GgufError> {
    match value {
        MetaValue::U8(v) => out.push(*v),
        MetaValue::I8(v) => out.push(*v as u8),
        MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(u8::from(*v)),
        MetaValue::String(s) => write_str(out, s),
        MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Array { elem, items } => {
            out.extend_from_slice(&elem.id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                if item.value_type() != *elem {
                    return Err(GgufError::WrongType {
                        key: key.to_owned(),
                        expected: elem.name(),
                        found: item.value_type().name(),
                    });
                }
                write_value(out, key, item)?;
            }
        }
    }
    Ok(())
}

/// Convenience: an array value of `elem` items.
pub fn meta_array(elem: ValueType, items: Vec<MetaValue>) -> MetaValue {
    MetaValue::Array { elem, items }
}
