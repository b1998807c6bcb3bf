//! Routing a streamed file's bytes into GPU buffers: each tensor asked for is a [`Target`]
//! (its absolute byte range in the file and a [`Sink`]); [`Router::route`] hands each pushed
//! range to the targets it overlaps. Whole rows are repacked (requantized, permuted) and
//! written with `queue.write_buffer` a group at a time, vectors when complete. Host memory:
//! less than one row group per tensor in flight. Shared by the GGUF stream and the Hugging
//! Face (safetensors) stream.

use crate::backend::{Buffer, Device};
use crate::gguf::{dequantize_to_vec, GgmlType};
use crate::kernels::quant::Weight;

use super::gguf_out::GgufOut;
use super::hf::permute_rows;
use super::loader::requantize;
use super::LoadError;

/// Rows are written in groups of about this many source bytes (an even row count).
const ROW_GROUP_BYTES: usize = 1 << 20;

/// Where a tensor's bytes go.
pub(super) enum Sink {
    /// Whole rows of `file_ty`, written into `weight` from row `done_rows` on (requantized
    /// when its type differs; with `head_rows`, each head's rows in llama.cpp's q/k order).
    Rows { weight: Weight, file_ty: GgmlType, done_rows: u32, group_rows: u32, head_rows: Option<u32> },
    /// A vector dequantized to f32 once complete.
    Vector { buffer: Buffer, ty: GgmlType, n: u32 },
}

impl Sink {
    /// Rows of `file_ty` into `target` from `row0`; `head_rows` (even) permutes each run of
    /// that many rows from transformers' rotate-half order to adjacent pairs.
    pub(super) fn rows(file_ty: GgmlType, target: &Weight, row0: u32, head_rows: Option<u32>) -> Sink {
        let row = (target.cols as usize / file_ty.block_size() * file_ty.type_size()).max(1);
        let unit = head_rows.unwrap_or(2).max(2) as usize;
        let group_rows = ((ROW_GROUP_BYTES / row / unit).max(1) * unit) as u32;
        Sink::Rows { weight: target.clone(), file_ty, done_rows: row0, group_rows, head_rows }
    }
}

/// One tensor's bytes in flight.
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

/// The targets of one file, sorted by offset once sealed.
#[derive(Default)]
pub(super) struct Router {
    targets: Vec<Target>,
    sealed: bool,
}

impl Router {
    /// Adds tensor `name` at bytes `start..end` of the file (before [`Router::seal`]).
    pub(super) fn add(&mut self, name: &str, start: u64, end: u64, sink: Sink) -> Result<(), LoadError> {
        if self.sealed {
            return Err(LoadError::Stream(format!("tensor {name} asked for after the stream was sealed")));
        }
        self.targets.push(Target { name: name.into(), start, end, pending: Vec::new(), received: 0, sink });
        Ok(())
    }

    /// Fixes the targets (no two may overlap).
    pub(super) fn seal(&mut self) -> Result<(), LoadError> {
        self.targets.sort_by_key(|t| t.start);
        if let Some(w) = self.targets.windows(2).find(|w| w[0].end > w[1].start) {
            return Err(LoadError::Stream(format!("tensors {} and {} overlap", w[0].name, w[1].name)));
        }
        self.sealed = true;
        Ok(())
    }

    pub(super) fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Bytes held for partial row groups and incomplete vectors.
    pub(super) fn held_bytes(&self) -> usize {
        self.targets.iter().map(|t| t.pending.len()).sum()
    }

    /// Hands `data` (starting at absolute offset `at`) to the targets it overlaps; `out`
    /// gets each tensor's bytes as they are written to the GPU.
    pub(super) fn route(&mut self, dev: &Device, at: u64, data: &[u8], mut out: Option<&mut GgufOut>) -> Result<(), LoadError> {
        let end = at + data.len() as u64;
        let first = self.targets.partition_point(|t| t.end <= at);
        for t in &mut self.targets[first..] {
            if t.start >= end {
                break;
            }
            let (lo, hi) = (t.start.max(at), t.end.min(end));
            t.feed(dev, &data[(lo - at) as usize..(hi - at) as usize], out.as_deref_mut())?;
        }
        Ok(())
    }

    /// Fails unless every target has all its bytes (`pushed`: how far the file came).
    pub(super) fn finish(&self, pushed: u64) -> Result<(), LoadError> {
        match self.targets.iter().find(|t| t.received < t.end - t.start) {
            Some(t) => Err(LoadError::Stream(format!(
                "the file ended at byte {pushed} before tensor {} ({} of {} bytes)",
                t.name,
                t.received,
                t.end - t.start
            ))),
            None => Ok(()),
        }
    }
}

impl Target {
    /// Takes the next bytes of the tensor. Rows go to the GPU a group at a time, straight
    /// from `data` where a whole group is there; only a partial group is copied to
    /// `pending`, so host memory stays at one group per tensor in flight (freed when done).
    fn feed(&mut self, dev: &Device, mut data: &[u8], mut out: Option<&mut GgufOut>) -> Result<(), LoadError> {
        self.received += data.len() as u64;
        let complete = self.received == self.end - self.start;
        let (weight, file_ty, done_rows, group_rows, head_rows) = match &mut self.sink {
            Sink::Rows { weight, file_ty, done_rows, group_rows, head_rows } => {
                (weight, *file_ty, done_rows, *group_rows, *head_rows)
            }
            Sink::Vector { buffer, ty, n } => {
                self.pending.extend_from_slice(data);
                if complete {
                    let values = dequantize_to_vec(*ty, &self.pending, *n as usize)?;
                    dev.write(buffer, 0, bytemuck::cast_slice(&values))?;
                    if let Some(out) = out {
                        out.write(&self.name, bytemuck::cast_slice(&values))?;
                    }
                    self.pending = Vec::new();
                }
                return Ok(());
            }
        };
        let name = &self.name;
        let row = (weight.cols as usize / file_ty.block_size()) * file_ty.type_size();
        let group = group_rows as usize * row;
        let mut write = |bytes: &[u8]| -> Result<(), LoadError> {
            let rows = (bytes.len() / row) as u32;
            let permuted;
            let bytes = match head_rows {
                Some(h) if rows.is_multiple_of(h) => {
                    permuted = permute_rows(bytes, (rows / h) as usize, row);
                    &permuted[..]
                }
                Some(_) => return Err(LoadError::Stream(format!("tensor {}: rows end inside a head", weight.label))),
                None => bytes,
            };
            let converted;
            let bytes = if weight.ty == file_ty {
                bytes
            } else {
                let values = dequantize_to_vec(file_ty, bytes, rows as usize * weight.cols as usize)?;
                converted = requantize(weight.ty, &values)?;
                &converted[..]
            };
            weight.write_rows(dev, *done_rows, bytes)?;
            if let Some(out) = out.as_deref_mut() {
                out.write(name, bytes)?;
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
