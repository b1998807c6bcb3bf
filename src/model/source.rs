//! Where tensor bytes come from: a memory-mapped file natively, a byte buffer (synthetic
//! models, tests), and later the browser's streamed chunks.

use std::borrow::Cow;

use crate::gguf::{GgufError, GgufHeader, Metadata, TensorInfo};

/// Read access to a GGUF model's metadata and tensors.
pub trait TensorSource {
    fn metadata(&self) -> &Metadata;
    fn tensor_info(&self, name: &str) -> Option<&TensorInfo>;
    /// The tensor's raw bytes in GGUF layout.
    fn tensor_data(&self, name: &str) -> Result<Cow<'_, [u8]>, GgufError>;
}

#[cfg(not(target_arch = "wasm32"))]
impl TensorSource for crate::gguf::MappedGguf {
    fn metadata(&self) -> &Metadata {
        crate::gguf::MappedGguf::metadata(self)
    }
    fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor(name).ok().map(|(info, _)| info)
    }
    fn tensor_data(&self, name: &str) -> Result<Cow<'_, [u8]>, GgufError> {
        self.tensor(name).map(|(_, bytes)| Cow::Borrowed(bytes))
    }
}

/// A whole GGUF file held in memory.
pub struct GgufBytes {
    header: GgufHeader,
    bytes: Vec<u8>,
}

impl GgufBytes {
    pub fn parse(bytes: Vec<u8>) -> Result<GgufBytes, GgufError> {
        let header = crate::gguf::parse_header(&bytes)?;
        header.validate_data(bytes.len() as u64)?;
        Ok(GgufBytes { header, bytes })
    }
}

impl TensorSource for GgufBytes {
    fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }
    fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensor(name)
    }
    fn tensor_data(&self, name: &str) -> Result<Cow<'_, [u8]>, GgufError> {
        let info = self.header.tensor(name).ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        let range = self.header.absolute_range(info)?;
        // validate_data checked every range against the length at parse time.
        Ok(Cow::Borrowed(&self.bytes[range.start as usize..range.end as usize]))
    }
}
