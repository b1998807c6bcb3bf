//! Native safetensors access through memory maps (not built for wasm32): one file, or a
//! model folder with `model.safetensors` or an index and its shards.
//!
//! Reference: the safetensors format and transformers' sharded checkpoints (see
//! `header.rs`, `index.rs`); mapping as in `gguf::MappedGguf`. Every file is mapped
//! read-only, its header parsed and its tensor ranges checked against the file length, so
//! `tensor()` slices are always in bounds; nothing reads a whole shard into memory.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::SafetensorsError;
use super::header::{SafetensorsHeader, TensorEntry};
use super::index::{check_index_len, ShardIndex, INDEX_FILE, SINGLE_FILE};
use super::parser::parse_header;

/// One safetensors file, mapped.
pub struct MappedSafetensors {
    path: PathBuf,
    map: Mmap,
    header: SafetensorsHeader,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SafetensorsError + '_ {
    move |source| SafetensorsError::Io { path: path.display().to_string(), source }
}

impl MappedSafetensors {
    /// Maps `path`, parses its header and checks every tensor lies inside the file.
    /// Errors about the contents come wrapped in [`SafetensorsError::InFile`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SafetensorsError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(io_error(path))?;
        // SAFETY: the map is read-only; like every mmap-based model loader we assume the
        // file is not truncated or rewritten by another process while it is mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(io_error(path))?;
        let name = path.display().to_string();
        let header = parse_header(&map).map_err(|e| e.in_file(&name))?;
        header.validate_data(map.len() as u64).map_err(|e| e.in_file(&name))?;
        Ok(Self { path: path.to_owned(), map, header })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header.
    pub fn header(&self) -> &SafetensorsHeader {
        &self.header
    }

    /// An entry's bytes (it must come from this file's header).
    pub fn data(&self, entry: &TensorEntry) -> Result<&[u8], SafetensorsError> {
        let range = self.header.file_range(entry);
        let truncated = || SafetensorsError::TruncatedData {
            tensor: entry.name.clone(),
            start: entry.start,
            end: entry.end,
            data_len: (self.map.len() as u64).saturating_sub(self.header.data_start),
        };
        let start = usize::try_from(range.start).map_err(|_| truncated())?;
        let end = usize::try_from(range.end).map_err(|_| truncated())?;
        self.map.get(start..end).ok_or_else(truncated)
    }

    /// A tensor's entry and bytes (row-major, little-endian, in its dtype).
    pub fn tensor(&self, name: &str) -> Result<(&TensorEntry, &[u8]), SafetensorsError> {
        let entry = self.header.tensor(name).ok_or_else(|| SafetensorsError::MissingTensor(name.to_owned()))?;
        Ok((entry, self.data(entry)?))
    }
}

/// A Hugging Face model folder's weights: `model.safetensors`, or
/// `model.safetensors.index.json` and every shard it names, mapped and cross-checked.
pub struct SafetensorsFolder {
    dir: PathBuf,
    index: Option<ShardIndex>,
    shards: Vec<MappedSafetensors>,
    /// Tensor name → (shard, position in that shard's header).
    lookup: HashMap<String, (usize, usize)>,
}

impl SafetensorsFolder {
    /// Opens the folder: the index and its shards when the index exists (it wins over a
    /// `model.safetensors` beside it, as in transformers), else `model.safetensors`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, SafetensorsError> {
        let dir = dir.as_ref().to_owned();
        let index_path = dir.join(INDEX_FILE);
        let (index, shards) = if index_path.is_file() {
            let len = std::fs::metadata(&index_path).map_err(io_error(&index_path))?.len();
            check_index_len(len).map_err(|e| e.in_file(INDEX_FILE))?;
            let json = std::fs::read(&index_path).map_err(io_error(&index_path))?;
            let index = ShardIndex::parse(&json).map_err(|e| e.in_file(INDEX_FILE))?;
            let mut shards = Vec::new();
            for file in index.files() {
                let path = dir.join(file);
                if !path.is_file() {
                    return Err(SafetensorsError::MissingShard { file: file.to_owned() });
                }
                let shard = MappedSafetensors::open(&path)?;
                index.check_shard(file, shard.header())?;
                shards.push(shard);
            }
            (Some(index), shards)
        } else if dir.join(SINGLE_FILE).is_file() {
            (None, vec![MappedSafetensors::open(dir.join(SINGLE_FILE))?])
        } else {
            return Err(SafetensorsError::NoModelFile { dir: dir.display().to_string() });
        };
        let mut lookup = HashMap::new();
        for (s, shard) in shards.iter().enumerate() {
            for (t, entry) in shard.header().tensors.iter().enumerate() {
                // Unreachable with an index (check_shard), kept for safety.
                if lookup.insert(entry.name.clone(), (s, t)).is_some() {
                    return Err(SafetensorsError::DuplicateKey(entry.name.clone()));
                }
            }
        }
        Ok(Self { dir, index, shards, lookup })
    }

    /// The folder's path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shard index, for a sharded folder.
    pub fn index(&self) -> Option<&ShardIndex> {
        self.index.as_ref()
    }

    /// The mapped files: shards in the index's sorted order, or the single file.
    pub fn shards(&self) -> &[MappedSafetensors] {
        &self.shards
    }

    /// Every tensor entry, shard by shard, each shard's in offset order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorEntry> {
        self.shards.iter().flat_map(|s| s.header().tensors.iter())
    }

    /// Number of tensors over all shards.
    pub fn len(&self) -> usize {
        self.lookup.len()
    }

    /// Whether the folder holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.lookup.is_empty()
    }

    /// A tensor's entry and bytes, from whichever shard holds it.
    pub fn tensor(&self, name: &str) -> Result<(&TensorEntry, &[u8]), SafetensorsError> {
        let &(s, t) = self.lookup.get(name).ok_or_else(|| SafetensorsError::MissingTensor(name.to_owned()))?;
        let shard = &self.shards[s];
        let entry = &shard.header().tensors[t];
        Ok((entry, shard.data(entry)?))
    }
}
