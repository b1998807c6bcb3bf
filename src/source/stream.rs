//! A GGUF file streamed into GPU buffers chunk by chunk, in file order, without ever
//! holding the file: the browser's loading path (weights come from Cache Storage or the
//! network a few MiB at a time), tested natively against the in-memory loader.
//!
//! 1. [`GgufStream::push`] feeds the header parser until the header is complete;
//! 2. the model is built on the stream as its [`WeightLoader`]: each tensor asked for gets
//!    zeroed GPU buffers and becomes a *target* (its byte range in the file);
//! 3. later pushes route each byte range to its target: whole rows are repacked (or
//!    requantized) and written with `queue.write_buffer` as soon as a group of rows is
//!    complete, vectors when complete. Host memory: the header plus less than one row group
//!    per tensor in flight ([`GgufStream::held_bytes`] reports it);
//! 4. [`GgufStream::finish`] fails unless every target received all its bytes, and, when the
//!    source published the file's SHA-256 ([`GgufStream::expect_sha256`]), unless the bytes
//!    pushed hash to it.

use sha2::{Digest, Sha256};

use crate::gguf::{dequantize_to_vec, GgmlType, GgufHeader, GgufHeaderParser, Metadata, TensorInfo};
use crate::gpu::Gpu;
use crate::kernels::quant::GpuWeight;

use super::loader::{check_dims, requantize, WeightLoader};
use super::LoadError;

/// Rows are written in groups of about this many source bytes (an even row count).
const ROW_GROUP_BYTES: usize = 1 << 20;
/// Most data bytes kept while the model is not yet planned (pushed past the header).
const MAX_EARLY_BYTES: usize = 64 << 20;

/// Where a tensor's bytes go.
enum Sink {
    /// Whole rows of `file_ty`, written into `weight` from row `done_rows` on (requantized
    /// when its type differs).
    Rows { weight: GpuWeight, file_ty: GgmlType, done_rows: u32, group_rows: u32 },
    /// A vector dequantized to f32 once complete.
    Vector { buffer: wgpu::Buffer, ty: GgmlType, n: u32 },
}

struct Target {
    name: String,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
    /// Bytes received but not yet written.
    pending: Vec<u8>,
    received: u64,
    sink: Sink,
}

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
    targets: Vec<Target>,
    sealed: bool,
    /// The file's published SHA-256 and the hash of the bytes pushed so far.
    sha256: Option<([u8; 32], Sha256)>,
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
            targets: Vec::new(),
            sealed: false,
            sha256: None,
        }
    }

    /// Checks the whole file against `digest` in [`Self::finish`] (call before the first push).
    pub fn expect_sha256(&mut self, digest: [u8; 32]) -> Result<(), LoadError> {
        if self.pushed > 0 {
            return Err(LoadError::Stream("the expected SHA-256 must be set before the first push".into()));
        }
        self.sha256 = Some((digest, Sha256::new()));
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
        self.early.len() + self.targets.iter().map(|t| t.pending.len()).sum::<usize>()
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
    pub fn push(&mut self, gpu: &Gpu, chunk: &[u8]) -> Result<bool, LoadError> {
        if let Some((_, hasher)) = &mut self.sha256 {
            hasher.update(chunk);
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
        if self.sealed {
            self.route(gpu, self.pushed - data.len() as u64, data)?;
        } else {
            if self.early.len() + data.len() > MAX_EARLY_BYTES {
                return Err(LoadError::Stream("more than 64 MiB pushed before the model was built on the stream".into()));
            }
            self.early.extend_from_slice(data);
        }
        Ok(true)
    }

    /// Ends planning: the targets are fixed and the bytes pushed early are routed.
    pub fn seal(&mut self, gpu: &Gpu) -> Result<(), LoadError> {
        if self.header.is_none() {
            return Err(LoadError::Stream("sealed before the header was complete".into()));
        }
        self.targets.sort_by_key(|t| t.start);
        if let Some(w) = self.targets.windows(2).find(|w| w[0].end > w[1].start) {
            return Err(LoadError::Stream(format!("tensors {} and {} overlap", w[0].name, w[1].name)));
        }
        self.sealed = true;
        let early = std::mem::take(&mut self.early);
        self.route(gpu, self.data_start, &early)
    }

    /// Fails unless every target has all its bytes (call after the last push).
    pub fn finish(&mut self) -> Result<(), LoadError> {
        if self.header.is_none() {
            return Err(LoadError::Gguf(self.parser.eof_error()));
        }
        if let Some(t) = self.targets.iter().find(|t| t.received < t.end - t.start) {
            return Err(LoadError::Stream(format!(
                "the file ended at byte {} before tensor {} ({} of {} bytes)",
                self.pushed,
                t.name,
                t.received,
                t.end - t.start
            )));
        }
        if let Some((want, hasher)) = self.sha256.take() {
            let got: [u8; 32] = hasher.finalize().into();
            if got != want {
                let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
                return Err(LoadError::Checksum { want: hex(&want), got: hex(&got) });
            }
        }
        Ok(())
    }

    /// Hands `data` (starting at absolute offset `at`) to the targets it overlaps.
    fn route(&mut self, gpu: &Gpu, at: u64, data: &[u8]) -> Result<(), LoadError> {
        let end = at + data.len() as u64;
        let first = self.targets.partition_point(|t| t.end <= at);
        for t in &mut self.targets[first..] {
            if t.start >= end {
                break;
            }
            let (lo, hi) = (t.start.max(at), t.end.min(end));
            t.feed(gpu, &data[(lo - at) as usize..(hi - at) as usize])?;
        }
        Ok(())
    }

    fn header_ref(&self) -> Result<&GgufHeader, LoadError> {
        self.header.as_ref().ok_or_else(|| LoadError::Stream("the header is not complete yet".into()))
    }

    fn add_target(&mut self, name: &str, sink: Sink) -> Result<(), LoadError> {
        if self.sealed {
            return Err(LoadError::Stream(format!("tensor {name} asked for after the stream was sealed")));
        }
        let header = self.header_ref()?;
        let info = header.tensor(name).ok_or_else(|| LoadError::Missing(name.into()))?;
        let range = header.absolute_range(info)?;
        let target = Target { name: name.into(), start: range.start, end: range.end, pending: Vec::new(), received: 0, sink };
        self.targets.push(target);
        Ok(())
    }

    fn file_type(&self, name: &str) -> Result<GgmlType, LoadError> {
        Ok(self.header_ref()?.tensor(name).ok_or_else(|| LoadError::Missing(name.into()))?.ty)
    }
}

impl Target {
    /// Takes the next bytes of the tensor. Rows go to the GPU a group at a time, straight
    /// from `data` where a whole group is there; only a partial group is copied to
    /// `pending`, so host memory stays at one group per tensor in flight (freed when done).
    fn feed(&mut self, gpu: &Gpu, mut data: &[u8]) -> Result<(), LoadError> {
        self.received += data.len() as u64;
        let complete = self.received == self.end - self.start;
        let (weight, file_ty, done_rows, group_rows) = match &mut self.sink {
            Sink::Rows { weight, file_ty, done_rows, group_rows } => (weight, file_ty, done_rows, group_rows),
            Sink::Vector { buffer, ty, n } => {
                self.pending.extend_from_slice(data);
                if complete {
                    let values = dequantize_to_vec(*ty, &self.pending, *n as usize)?;
                    gpu.write(buffer, 0, bytemuck::cast_slice(&values));
                    self.pending = Vec::new();
                }
                return Ok(());
            }
        };
        let row = (weight.cols as usize / file_ty.block_size()) * file_ty.type_size();
        let group = *group_rows as usize * row;
        let mut write = |bytes: &[u8]| -> Result<(), LoadError> {
            let rows = (bytes.len() / row) as u32;
            if weight.ty == *file_ty {
                weight.write_rows(gpu, *done_rows, bytes)?;
            } else {
                let values = dequantize_to_vec(*file_ty, bytes, rows as usize * weight.cols as usize)?;
                weight.write_rows(gpu, *done_rows, &requantize(weight.ty, &values)?)?;
            }
            *done_rows += rows;
            Ok(())
        };
        while !data.is_empty() {
            if self.pending.is_empty() && data.len() >= group {
                write(&data[..group])?;
                data = &data[group..];
                continue;
            }
            let take = (group - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == group {
                write(&self.pending)?;
                self.pending.clear();
            }
        }
        if complete {
            // The tensor's last rows (fewer than a group).
            if !self.pending.is_empty() {
                write(&self.pending)?;
            }
            self.pending = Vec::new();
        }
        Ok(())
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

    fn fill(&mut self, _gpu: &Gpu, name: &str, target: &GpuWeight, row0: u32) -> Result<(), LoadError> {
        let file_ty = self.file_type(name)?;
        let row = (target.cols as usize / file_ty.block_size() * file_ty.type_size()).max(1);
        let group_rows = ((ROW_GROUP_BYTES / row).max(2) & !1) as u32;
        let sink = Sink::Rows { weight: target.clone(), file_ty, done_rows: row0, group_rows };
        self.add_target(name, sink)
    }

    fn vector(&mut self, gpu: &Gpu, name: &str, n: u32) -> Result<wgpu::Buffer, LoadError> {
        check_dims(name, self.tensor_info(name), &[n as u64])?;
        let ty = self.file_type(name)?;
        let buffer = gpu.storage(name, n as u64 * 4)?;
        self.add_target(name, Sink::Vector { buffer: buffer.clone(), ty, n })?;
        Ok(buffer)
    }
}
