//! A GGUF file streamed into GPU buffers chunk by chunk, in file order, without ever
//! holding the file: the browser's loading path (weights come from Cache Storage or the
//! network a few MiB at a time), tested natively against the in-memory loader.
//!
//! 1. [`GgufStream::push`] feeds the header parser until the header is complete;
//! 2. the model is built on the stream as its [`WeightLoader`]: each tensor asked for gets
//!    zeroed GPU buffers and becomes a *target* (its byte range in the file);
//! 3. later pushes route each byte range to its target (`route.rs`): whole rows are
//!    repacked (or requantized) and written with `queue.write_buffer` as soon as a group of
//!    rows is complete, vectors when complete. Host memory: the header plus less than one row
//!    group per tensor in flight ([`GgufStream::held_bytes`] reports it);
//! 4. [`GgufStream::finish`] fails unless every target received all its bytes, and, when the
//!    source published the file's SHA-256 ([`GgufStream::expect_sha256`]), unless the bytes
//!    pushed hash to it.

use crate::backend::{Buffer, Device};
use crate::gguf::{GgmlType, GgufHeader, GgufHeaderParser, Metadata, TensorInfo};
use crate::kernels::quant::Weight;

use super::digest::Sha256Check;
use super::loader::{check_dims, WeightLoader};
use super::route::{Router, Sink};
use super::LoadError;

/// Most data bytes kept while the model is not yet planned (pushed past the header).
const MAX_EARLY_BYTES: usize = 64 << 20;

/// One GGUF file being streamed into GPU buffers.
pub struct GgufStream {
    parser: GgufHeaderParser,
    header: Option<GgufHeader>,
    /// Bytes pushed so far (the absolute offset of the next push).
    pushed: u64,
    /// Where the data section starts (the header's length, once parsed).
    data_start: u64,
    /// Data bytes pushed before the targets were sealed (they start at `data_start`).
    early: Vec<u8>,
    targets: Router,
    /// The file's published SHA-256 and the hash of the bytes pushed so far.
    sha256: Option<Sha256Check>,
}

impl Default for GgufStream {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufStream {
    pub fn new() -> GgufStream {
        GgufStream {
            parser: GgufHeaderParser::new(),
            header: None,
            pushed: 0,
            data_start: 0,
            early: Vec::new(),
            targets: Router::default(),
            sha256: None,
        }
    }

    /// Checks the whole file against `digest` in [`Self::finish`] (call before the first push).
    pub fn expect_sha256(&mut self, digest: [u8; 32]) -> Result<(), LoadError> {
        if self.pushed > 0 {
            return Err(LoadError::Stream("the expected SHA-256 must be set before the first push".into()));
        }
        self.sha256 = Some(Sha256Check::new(digest));
        Ok(())
    }

    /// The header, once parsed: build the model on the stream then, then [`Self::seal`].
    pub fn header(&self) -> Option<&GgufHeader> {
        self.header.as_ref()
    }

    /// Bytes pushed so far.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// File bytes the stream holds in host memory now (not counting the parsed header).
    pub fn held_bytes(&self) -> usize {
        self.early.len() + self.targets.held_bytes()
    }

    /// Parses the header from the file's first bytes, keeping none of the data bytes that
    /// follow it; returns true once it is complete. For split models, whose every part's
    /// header is needed before the model can be planned: each part is pushed again from
    /// byte 0 with [`Self::push`] afterwards, which skips the header bytes.
    pub fn push_header(&mut self, chunk: &[u8]) -> Result<bool, LoadError> {
        if self.pushed > 0 {
            return Err(LoadError::Stream("push_header after the file's bytes were pushed".into()));
        }
        Ok(self.header.is_some() || self.parse_header(chunk)?)
    }

    fn parse_header(&mut self, chunk: &[u8]) -> Result<bool, LoadError> {
        let Some(header) = self.parser.feed(chunk)? else { return Ok(false) };
        header.validate_layout()?;
        self.data_start = self.parser.bytes_consumed();
        self.header = Some(header);
        Ok(true)
    }

    /// Feeds the next bytes of the file. Returns true once the header is available.
    pub fn push(&mut self, dev: &Device, chunk: &[u8]) -> Result<bool, LoadError> {
        if let Some(check) = &mut self.sha256 {
            check.update(chunk);
        }
        let at = self.pushed;
        self.pushed += chunk.len() as u64;
        if self.header.is_none() && !self.parse_header(chunk)? {
            return Ok(false);
        }
        let data = &chunk[(self.data_start.saturating_sub(at) as usize).min(chunk.len())..];
        if data.is_empty() {
            return Ok(true);
        }
        if self.targets.is_sealed() {
            self.targets.route(dev, self.pushed - data.len() as u64, data, None)?;
        } else {
            if self.early.len() + data.len() > MAX_EARLY_BYTES {
                return Err(LoadError::Stream("more than 64 MiB pushed before the model was built on the stream".into()));
            }
            self.early.extend_from_slice(data);
        }
        Ok(true)
    }

    /// Ends planning: the targets are fixed and the bytes pushed early are routed.
    pub fn seal(&mut self, dev: &Device) -> Result<(), LoadError> {
        if self.header.is_none() {
            return Err(LoadError::Stream("sealed before the header was complete".into()));
        }
        self.targets.seal()?;
        let early = std::mem::take(&mut self.early);
        self.targets.route(dev, self.data_start, &early, None)
    }

    /// Fails unless every target has all its bytes (call after the last push).
    pub fn finish(&mut self) -> Result<(), LoadError> {
        if self.header.is_none() {
            return Err(LoadError::Gguf(self.parser.eof_error()));
        }
        self.targets.finish(self.pushed)?;
        self.sha256.take().map_or(Ok(()), Sha256Check::finish)
    }

    fn header_ref(&self) -> Result<&GgufHeader, LoadError> {
        self.header.as_ref().ok_or_else(|| LoadError::Stream("the header is not complete yet".into()))
    }

    fn add_target(&mut self, name: &str, sink: Sink) -> Result<(), LoadError> {
        let header = self.header_ref()?;
        let info = header.tensor(name).ok_or_else(|| LoadError::Missing(name.into()))?;
        let range = header.absolute_range(info)?;
        self.targets.add(name, range.start, range.end, sink)
    }

    fn file_type(&self, name: &str) -> Result<GgmlType, LoadError> {
        Ok(self.header_ref()?.tensor(name).ok_or_else(|| LoadError::Missing(name.into()))?.ty)
    }
}

impl WeightLoader for GgufStream {
    fn metadata(&self) -> &Metadata {
        static EMPTY: std::sync::OnceLock<Metadata> = std::sync::OnceLock::new();
        self.header.as_ref().map_or_else(|| EMPTY.get_or_init(Metadata::new), |h| &h.metadata)
    }

    fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.header.as_ref()?.tensor(name)
    }

    fn fill(&mut self, _gpu: &Device, name: &str, target: &Weight, row0: u32) -> Result<(), LoadError> {
        let sink = Sink::rows(self.file_type(name)?, target, row0, None);
        self.add_target(name, sink)
    }

    fn vector(&mut self, dev: &Device, name: &str, n: u32) -> Result<Buffer, LoadError> {
        check_dims(name, self.tensor_info(name), &[n as u64])?;
        let ty = self.file_type(name)?;
        let buffer = dev.storage(name, n as u64 * 4)?;
        self.add_target(name, Sink::Vector { buffer: buffer.clone(), ty, n })?;
        Ok(buffer)
    }
}
