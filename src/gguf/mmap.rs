//! Native GGUF access through memory maps (not built for wasm32).
//!
//! Reference: GGUF spec (`ggml/docs/gguf.md`); split parts follow llama.cpp's
//! `gguf-split` naming (see `split.rs`). Each part is mapped read-only, its header parsed
//! with the file length known, every tensor range validated against that length, and the
//! parts merged into one index, so `tensor()` slices are always in bounds.

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use super::error::GgufError;
use super::header::{GgufHeader, TensorInfo};
use super::metadata::Metadata;
use super::reader::parse_header;
use super::split::{split_paths, GgufModelFiles, SplitInfo};
use crate::backend::cpu::Mapped;

/// A GGUF model (one file or all parts of a split model) mapped into memory.
pub struct MappedGguf {
    paths: Vec<String>,
    /// Shared with the weights the CPU backend uses where they lie ([`Self::tensor_mapped`]).
    maps: Vec<Arc<Mmap>>,
    files: GgufModelFiles,
}

fn map_file(path: &str) -> Result<Mmap, GgufError> {
    let io = |source| GgufError::Io { path: path.to_owned(), source };
    let file = File::open(path).map_err(io)?;
    // SAFETY: the map is read-only; like every mmap-based model loader we assume the
    // file is not truncated or rewritten by another process while it is mapped.
    unsafe { Mmap::map(&file) }.map_err(io)
}

fn parse_mapped(map: &Mmap) -> Result<GgufHeader, GgufError> {
    parse_header(&map[..])
}

impl MappedGguf {
    /// Maps `path` and, when its metadata says it is part 1 of a split model, its
    /// sibling parts; parses and validates every header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let first = path.as_ref().to_string_lossy().into_owned();
        let first_map = map_file(&first)?;
        let first_header = parse_mapped(&first_map)?;
        let count = SplitInfo::from_metadata(&first_header.metadata)?.map_or(1, |s| s.count);
        let mut paths = vec![first.clone()];
        if count > 1 {
            let siblings = split_paths(&first);
            if siblings.len() as u64 != count || siblings[0] != first {
                return Err(GgufError::SplitMismatch(format!(
                    "{first} declares split.count {count} but is not named -00001-of-{count:05}.gguf"
                )));
            }
            paths = siblings;
        }
        let mut maps = vec![Arc::new(first_map)];
        let mut headers = vec![first_header];
        for (no, p) in paths.iter().enumerate().skip(1) {
            if !Path::new(p).exists() {
                return Err(GgufError::MissingSplit { no: no as u64, count });
            }
            let map = map_file(p)?;
            headers.push(parse_mapped(&map)?);
            maps.push(Arc::new(map));
        }
        let files = GgufModelFiles::new(headers)?;
        let lens: Vec<u64> = maps.iter().map(|m| m.len() as u64).collect();
        files.validate_file_lens(&lens)?;
        Ok(Self { paths, maps, files })
    }

    /// The model metadata (first part).
    pub fn metadata(&self) -> &Metadata {
        self.files.metadata()
    }

    /// All tensor infos over all parts.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.files.tensors()
    }

    /// The parsed parts and merged index.
    pub fn files(&self) -> &GgufModelFiles {
        &self.files
    }

    /// The part paths, in order.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// A tensor's info and raw bytes (in its GGUF block layout).
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, &[u8]), GgufError> {
        let (info, file, range) = self.locate(name)?;
        Ok((info, &self.maps[file][range]))
    }

    /// A tensor's bytes as a handle on the mapped file, which the handle keeps mapped; `None`
    /// for a tensor that does not start 4-byte aligned (GGUF aligns them to 32 by default).
    /// Asks the kernel to read the bytes ahead (`MADV_WILLNEED`, as llama.cpp populates its
    /// map), so that the first token does not wait on the disk page by page.
    pub fn tensor_mapped(&self, name: &str) -> Result<Option<Mapped>, GgufError> {
        let (_, file, range) = self.locate(name)?;
        let map = &self.maps[file];
        #[cfg(unix)]
        // A hint: the bytes are read when touched anyway.
        let _ = map.advise_range(memmap2::Advice::WillNeed, range.start, range.len());
        Ok(Mapped::new(map.clone(), range))
    }

    /// A tensor's info, part and byte range in that part.
    fn locate(&self, name: &str) -> Result<(&TensorInfo, usize, Range<usize>), GgufError> {
        let (info, loc) = self.files.tensor(name)?;
        let map = &self.maps[loc.file];
        let out_of_range = || GgufError::OutOfRange {
            tensor: name.to_owned(),
            start: loc.range.start,
            end: loc.range.end,
            file_len: map.len() as u64,
        };
        let start = usize::try_from(loc.range.start).map_err(|_| out_of_range())?;
        let end = usize::try_from(loc.range.end).map_err(|_| out_of_range())?;
        map.get(start..end).ok_or_else(out_of_range)?;
        Ok((info, loc.file, start..end))
    }
}
