//! A streamed model written out as one GGUF file while it loads: every tensor as it is
//! uploaded (requantized, q/k rows permuted, vectors as f32), under the metadata the model
//! was planned with. The browser keeps this file in Cache Storage in place of a Hugging Face
//! repository's float shards, so that a second visit neither downloads nor converts them;
//! `webvlm convert` writes it to disk.
//!
//! The file is produced in the order its bytes become known: the header once the model is
//! planned (every tensor asked for, with its uploaded type and dims), then each tensor's
//! bytes as they are converted. Tensors made at planning time (synthesized ones) come first;
//! streamed ones follow in the order they arrive (by shard, then by offset), which is the
//! order of the tensor infos, so nothing is held back but the bytes not yet taken
//! ([`GgufOut::take`]).
//!
//! Reference: GGUF spec (`ggml/docs/gguf.md`), the layout [`GgufWriter`] writes.

use crate::gguf::{GgmlType, GgufWriter, MetaValue, Metadata, TensorInfo};

use super::LoadError;

/// Where a planned tensor's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Arrival {
    /// Known at planning time (written right after the header).
    Now,
    /// Streamed: byte `start` of shard `shard`.
    Streamed { shard: usize, start: u64 },
}

struct Planned {
    info: TensorInfo,
    arrival: Arrival,
    /// Bytes of an [`Arrival::Now`] tensor, until the header is out.
    bytes: Vec<u8>,
    /// Where its data starts in the file, once laid out.
    start: u64,
    len: u64,
}

/// The GGUF file of a model being streamed.
#[derive(Default)]
pub(super) struct GgufOut {
    tensors: Vec<Planned>,
    laid_out: bool,
    /// The tensor being written and how many of its bytes are out.
    next: usize,
    written: u64,
    /// Bytes produced so far (the file's length up to here).
    pos: u64,
    /// The file's length once complete.
    end: u64,
    /// Produced and not yet taken.
    pending: Vec<u8>,
}

impl GgufOut {
    /// Records tensor `name` (`dims` GGUF-ordered, uploaded as `ty`) before the layout;
    /// `bytes` for one known now.
    pub(super) fn plan(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        arrival: Arrival,
        bytes: Vec<u8>,
    ) -> Result<(), LoadError> {
        if self.laid_out {
            return Err(LoadError::Stream(format!("tensor {name} planned after the GGUF header was written")));
        }
        let info = TensorInfo { name: name.into(), dims: dims.to_vec(), ty, offset: 0 };
        let len = info.n_bytes()?;
        if arrival == Arrival::Now && bytes.len() as u64 != len {
            return Err(LoadError::Stream(format!("tensor {name}: {} bytes for {len}", bytes.len())));
        }
        self.tensors.push(Planned { info, arrival, bytes, start: 0, len });
        Ok(())
    }

    /// Lays the file out (the tensors in arrival order) and produces its header and the
    /// tensors known now; `metadata` and `extra` are its key/value pairs.
    pub(super) fn lay_out(&mut self, metadata: &Metadata, extra: Vec<(String, MetaValue)>) -> Result<(), LoadError> {
        // A stable sort keeps planning order among the tensors known now.
        self.tensors.sort_by_key(|t| t.arrival);
        let mut w = GgufWriter::new();
        for (k, v) in metadata.iter() {
            w.add_kv(k, v.clone());
        }
        for (k, v) in extra {
            w.add_kv(k, v);
        }
        for t in &self.tensors {
            w.add_zero_tensor(&t.info.name, &t.info.dims, t.info.ty)?;
        }
        let (header, offsets, data_len) = w.layout()?;
        let data_start = header.len() as u64;
        for (t, offset) in self.tensors.iter_mut().zip(offsets) {
            t.start = data_start + offset;
        }
        self.end = data_start + data_len;
        self.laid_out = true;
        self.emit(&header);
        while let Some(t) = self.tensors.get_mut(self.next).filter(|t| t.arrival == Arrival::Now) {
            let (name, bytes) = (t.info.name.clone(), std::mem::take(&mut t.bytes));
            self.write(&name, &bytes)?;
        }
        Ok(())
    }

    /// The next bytes of tensor `name`, which must be the one being written.
    pub(super) fn write(&mut self, name: &str, mut bytes: &[u8]) -> Result<(), LoadError> {
        while !bytes.is_empty() {
            let Some(t) = self.tensors.get(self.next).filter(|_| self.laid_out) else {
                return Err(LoadError::Stream(format!("GGUF output: tensor {name} after the last one")));
            };
            if t.info.name != name {
                return Err(LoadError::Stream(format!("GGUF output: tensor {name} arrived before {}", t.info.name)));
            }
            let (start, len) = (t.start, t.len);
            let take = (len - self.written).min(bytes.len() as u64) as usize;
            if self.written == 0 {
                self.pad_to(start);
            }
            self.emit(&bytes[..take]);
            bytes = &bytes[take..];
            self.written += take as u64;
            if self.written == len {
                (self.next, self.written) = (self.next + 1, 0);
            }
        }
        // A tensor of no bytes is complete as soon as it is reached.
        while self.tensors.get(self.next).is_some_and(|t| t.len == 0) {
            self.next += 1;
        }
        Ok(())
    }

    /// Ends the file (its last padding); fails unless every tensor was written whole.
    pub(super) fn finish(&mut self) -> Result<(), LoadError> {
        if let Some(t) = self.tensors.get(self.next) {
            return Err(LoadError::Stream(format!(
                "GGUF output: tensor {} has {} of {} bytes",
                t.info.name, self.written, t.len
            )));
        }
        if !self.laid_out {
            return Err(LoadError::Stream("GGUF output: the model was never planned".into()));
        }
        let end = self.end;
        self.pad_to(end);
        Ok(())
    }

    /// The bytes produced since the last call, in file order.
    pub(super) fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    fn pad_to(&mut self, at: u64) {
        let n = at.saturating_sub(self.pos) as usize;
        self.pending.resize(self.pending.len() + n, 0);
        self.pos += n as u64;
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        self.pos += bytes.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::parse_header;

    fn f32s(v: &[f32]) -> Vec<u8> {
        bytemuck::cast_slice(v).to_vec()
    }

    /// Tensors planned out of arrival order come out in it, byte-equal to the writer's file.
    #[test]
    fn streamed_tensors_make_the_writers_file() {
        let mut md = Metadata::new();
        md.insert("general.architecture".into(), MetaValue::String("llama".into())).unwrap();
        let (a, b, c) = (f32s(&[1.0, 2.0, 3.0]), f32s(&[4.0; 5]), f32s(&[7.0, 8.0]));
        let mut out = GgufOut::default();
        out.plan("b", &[5], GgmlType::F32, Arrival::Streamed { shard: 1, start: 0 }, Vec::new()).unwrap();
        out.plan("a", &[3], GgmlType::F32, Arrival::Streamed { shard: 0, start: 64 }, Vec::new()).unwrap();
        out.plan("c", &[2], GgmlType::F32, Arrival::Now, c.clone()).unwrap();
        out.lay_out(&md, vec![("x.note".into(), MetaValue::String("hi".into()))]).unwrap();
        assert!(out.write("b", &b).is_err(), "b comes after a");
        let mut file = out.take();
        out.write("a", &a[..5]).unwrap();
        out.write("a", &a[5..]).unwrap();
        out.write("b", &b).unwrap();
        assert!(out.write("b", &[0]).is_err(), "nothing after the last tensor");
        out.finish().unwrap();
        file.extend(out.take());

        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", MetaValue::String("llama".into()));
        w.add_kv("x.note", MetaValue::String("hi".into()));
        w.add_tensor("c", &[2], GgmlType::F32, c).unwrap();
        w.add_tensor("a", &[3], GgmlType::F32, a).unwrap();
        w.add_tensor("b", &[5], GgmlType::F32, b).unwrap();
        assert_eq!(file, w.write().unwrap());
        assert_eq!(parse_header(&file).unwrap().tensors.len(), 3);
    }

    #[test]
    fn a_missing_tensor_fails_finish() {
        let mut out = GgufOut::default();
        out.plan("a", &[4], GgmlType::F32, Arrival::Streamed { shard: 0, start: 0 }, Vec::new()).unwrap();
        out.lay_out(&Metadata::new(), Vec::new()).unwrap();
        out.write("a", &[0; 8]).unwrap();
        assert!(out.finish().unwrap_err().to_string().contains("8 of 16 bytes"));
        assert!(out.plan("z", &[1], GgmlType::F32, Arrival::Now, vec![0; 4]).is_err(), "planned too late");
    }
}
