//! Weight sources: where a model's tensors come from, separate from the models that
//! consume them. A [`TensorSource`] is a complete file (memory-mapped natively, or bytes in
//! memory); a [`WeightLoader`] is what the models ask for GPU weights by name — [`Eager`]
//! over a complete source, or a stream that fills the buffers as the file's bytes arrive
//! ([`GgufStream`], one file; [`GgufParts`], a model split in parts: the browser's path).
//! A Hugging Face folder (safetensors + `config.json`) is a source too ([`hf`]): it shows
//! the tensors and metadata llama.cpp's converter would write for it.

mod digest;
mod error;
mod gguf_out;
pub mod hf;
mod loader;
mod parts;
mod requant;
mod route;
mod stream;

use std::borrow::Cow;

pub use error::LoadError;
pub use loader::{check_dims, load_stacked, Eager, LoadQuant, Stacked, WeightLoader};
pub use parts::GgufParts;
pub use requant::Requantize;
pub use stream::GgufStream;

use crate::backend::cpu::Mapped;
use crate::gguf::{GgufError, GgufHeader, Metadata, TensorInfo};

/// Read access to a GGUF model's metadata and tensors.
pub trait TensorSource {
    fn metadata(&self) -> &Metadata;
    fn tensor_info(&self, name: &str) -> Option<&TensorInfo>;
    /// The tensor's raw bytes in GGUF layout.
    fn tensor_data(&self, name: &str) -> Result<Cow<'_, [u8]>, GgufError>;
    /// The tensor's GGUF bytes as a handle on memory the source maps (the CPU backend uses
    /// such weights where they lie); `None` when the source maps none.
    fn tensor_mapped(&self, _name: &str) -> Option<Mapped> {
        None
    }
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
    fn tensor_mapped(&self, name: &str) -> Option<Mapped> {
        crate::gguf::MappedGguf::tensor_mapped(self, name).ok().flatten()
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
