//! A model in one GGUF file or several split parts (`gguf-split`'s
//! `name-00001-of-00003.gguf`) streamed into GPU buffers: one [`GgufStream`] per part,
//! tensors looked up across parts through the merged [`TensorIndex`].
//!
//! The model can only be planned once every part's header is known, and the first part
//! usually holds tensors too. So a split model loads in two passes over the parts:
//! [`GgufParts::push_header`] reads each part's first bytes until its header is complete
//! (keeping no data bytes), then [`GgufParts::push`] streams every part from byte 0 (the
//! header bytes are skipped). A single file needs no first pass: its header is parsed by
//! `push` as it streams, and the bytes after it wait until the model is built.

use crate::backend::{Buffer, Device};
use crate::gguf::{GgufHeader, Metadata, TensorIndex, TensorInfo};
use crate::kernels::quant::Weight;

use super::loader::WeightLoader;
use super::stream::GgufStream;
use super::LoadError;

/// The parts of one model being streamed.
pub struct GgufParts {
    parts: Vec<GgufStream>,
    /// Built once every header is in (checks the split keys across parts).
    index: Option<TensorIndex>,
}

impl GgufParts {
    /// A model of `count` parts (1 for an unsplit file).
    pub fn new(count: usize) -> Result<GgufParts, LoadError> {
        if count == 0 {
            return Err(LoadError::Stream("a model needs at least one file".into()));
        }
        Ok(GgufParts { parts: (0..count).map(|_| GgufStream::new()).collect(), index: None })
    }

    pub fn len(&self) -> usize {
        self.parts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Part `part`'s stream (to set its expected SHA-256).
    pub fn part(&mut self, part: usize) -> Result<&mut GgufStream, LoadError> {
        let count = self.parts.len();
        self.parts.get_mut(part).ok_or_else(|| LoadError::Stream(format!("part {part} of a model of {count} files")))
    }

    /// First pass: the next bytes of `part` from its start, until its header is complete.
    pub fn push_header(&mut self, part: usize, chunk: &[u8]) -> Result<bool, LoadError> {
        self.part(part)?.push_header(chunk)
    }

    /// The next bytes of `part`, in file order.
    pub fn push(&mut self, dev: &Device, part: usize, chunk: &[u8]) -> Result<(), LoadError> {
        self.part(part)?.push(dev, chunk)?;
        Ok(())
    }

    /// Whether every part's header is in, so the model can be built on these parts; the
    /// first time it is, checks that the parts form one model (split keys, no duplicates).
    pub fn headers_complete(&mut self) -> Result<bool, LoadError> {
        if self.index.is_none() {
            let Some(headers) = self.parts.iter().map(GgufStream::header).collect::<Option<Vec<&GgufHeader>>>() else {
                return Ok(false);
            };
            self.index = Some(TensorIndex::build(&headers)?);
        }
        Ok(true)
    }

    /// Every part's tensors, once every header is in (for the memory plan).
    pub fn tensor_infos(&self) -> Option<Vec<TensorInfo>> {
        let headers = self.parts.iter().map(GgufStream::header).collect::<Option<Vec<&GgufHeader>>>()?;
        Some(headers.iter().flat_map(|h| h.tensors.iter().cloned()).collect())
    }

    /// Ends planning on every part (see [`GgufStream::seal`]).
    pub fn seal(&mut self, dev: &Device) -> Result<(), LoadError> {
        self.parts.iter_mut().try_for_each(|p| p.seal(dev))
    }

    /// Fails unless every part delivered all its tensors (and its hash, when published).
    pub fn finish(&mut self) -> Result<(), LoadError> {
        let count = self.parts.len();
        for (i, p) in self.parts.iter_mut().enumerate() {
            p.finish().map_err(|e| match count {
                1 => e,
                _ => LoadError::InPart { no: i + 1, count, error: Box::new(e) },
            })?;
        }
        Ok(())
    }

    /// The stream holding tensor `name`.
    fn holder(&mut self, name: &str) -> Result<&mut GgufStream, LoadError> {
        let index =
            self.index.as_ref().ok_or_else(|| LoadError::Stream("the model was planned before every header was in".into()))?;
        let file = index.get(name).ok_or_else(|| LoadError::Missing(name.into()))?.file;
        Ok(&mut self.parts[file])
    }
}

impl WeightLoader for GgufParts {
    fn metadata(&self) -> &Metadata {
        self.parts[0].metadata()
    }

    fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        let file = self.index.as_ref()?.get(name)?.file;
        self.parts[file].tensor_info(name)
    }

    fn fill(&mut self, dev: &Device, name: &str, target: &Weight, row0: u32) -> Result<(), LoadError> {
        self.holder(name)?.fill(dev, name, target, row0)
    }

    fn vector(&mut self, dev: &Device, name: &str, n: u32) -> Result<Buffer, LoadError> {
        self.holder(name)?.vector(dev, name, n)
    }
}
