//! The shard index of a sharded Hugging Face model, `model.safetensors.index.json`.
//!
//! Reference: transformers' sharded checkpoints (`modeling_utils.py`, `save_pretrained`
//! with `max_shard_size`): `{"metadata": {"total_size": N, ...}, "weight_map": {tensor
//! name: shard file name}}`. Shard names come from the (possibly remote, untrusted) index
//! and are joined to the model folder or repository URL, so only plain file names are
//! accepted. Tensors a shard holds beyond those the index maps to it are an error
//! ([`ShardIndex::check_shard`]): a consistent checkpoint never has them, and a stale or
//! foreign shard would otherwise be read silently.

use std::collections::BTreeMap;

use super::error::SafetensorsError;
use super::header::SafetensorsHeader;
use super::json::Node;

/// The index file of a sharded model folder.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The single file of an unsharded model folder.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Largest index accepted (a 400B-parameter model's is well under 1 MiB).
pub const MAX_INDEX_LEN: u64 = 16 << 20;

/// A parsed shard index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardIndex {
    weight_map: BTreeMap<String, String>,
    /// Shard name → the tensors mapped to it, sorted.
    by_file: BTreeMap<String, Vec<String>>,
    total_size: Option<u64>,
}

impl ShardIndex {
    /// Parses the index JSON; checks every shard name ([`check_shard_name`]) and refuses
    /// tensors mapped twice.
    pub fn parse(json: &[u8]) -> Result<ShardIndex, SafetensorsError> {
        check_index_len(json.len() as u64)?;
        let text = std::str::from_utf8(json).map_err(|e| SafetensorsError::IndexNotJson(e.to_string()))?;
        let root = Node::parse(text).map_err(|e| SafetensorsError::IndexNotJson(e.to_string()))?;
        let Node::Object(members) = root else {
            return Err(SafetensorsError::IndexNotJson("not an object".to_owned()));
        };
        if let Some(key) = Node::duplicate_key(&members) {
            return Err(SafetensorsError::DuplicateKey(key.to_owned()));
        }
        let mut weight_map = None;
        let mut total_size = None;
        for (key, node) in members {
            match (key.as_str(), node) {
                ("weight_map", Node::Object(entries)) => weight_map = Some(entries),
                ("weight_map", _) => return Err(SafetensorsError::IndexNoWeightMap),
                // Other metadata (writers add their own keys) is not needed to read weights.
                ("metadata", Node::Object(meta)) => {
                    total_size = meta.iter().find_map(|(k, v)| match (k.as_str(), v) {
                        ("total_size", Node::Uint(n)) => Some(*n),
                        _ => None,
                    })
                }
                _ => {}
            }
        }
        let entries = weight_map.ok_or(SafetensorsError::IndexNoWeightMap)?;
        if let Some(key) = Node::duplicate_key(&entries) {
            return Err(SafetensorsError::DuplicateKey(format!("weight_map.{key}")));
        }
        let mut index = ShardIndex { weight_map: BTreeMap::new(), by_file: BTreeMap::new(), total_size };
        for (tensor, node) in entries {
            let Node::String(file) = node else {
                return Err(SafetensorsError::IndexBadEntry { tensor });
            };
            check_shard_name(&file)?;
            index.by_file.entry(file.clone()).or_default().push(tensor.clone());
            index.weight_map.insert(tensor, file);
        }
        index.by_file.values_mut().for_each(|names| names.sort());
        Ok(index)
    }

    /// Tensor name → shard file name.
    pub fn weight_map(&self) -> &BTreeMap<String, String> {
        &self.weight_map
    }

    /// The distinct shard file names, sorted (so `-00001-of-` first).
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.by_file.keys().map(String::as_str)
    }

    /// The shard holding `tensor`, if the index maps it.
    pub fn shard_of(&self, tensor: &str) -> Option<&str> {
        self.weight_map.get(tensor).map(String::as_str)
    }

    /// The tensors mapped to `file`, sorted (empty for a file the index does not name).
    pub fn tensors_in(&self, file: &str) -> &[String] {
        self.by_file.get(file).map_or(&[], Vec::as_slice)
    }

    /// `metadata.total_size` when present (the writers' sum of tensor bytes).
    pub fn total_size(&self) -> Option<u64> {
        self.total_size
    }

    /// Checks the header of shard `file` against the index: every tensor the index maps
    /// to `file` is in the header, and the header holds no other tensor.
    pub fn check_shard(&self, file: &str, header: &SafetensorsHeader) -> Result<(), SafetensorsError> {
        for entry in &header.tensors {
            if self.shard_of(&entry.name) != Some(file) {
                return Err(SafetensorsError::UnmappedTensor { tensor: entry.name.clone(), file: file.to_owned() });
            }
        }
        // Header names are distinct and all mapped to `file`: equal counts mean equal sets.
        let mapped = self.tensors_in(file);
        if mapped.len() != header.tensors.len() {
            let missing = mapped.iter().find(|name| header.tensor(name).is_none());
            let tensor = missing.cloned().unwrap_or_default();
            return Err(SafetensorsError::TensorNotInShard { tensor, file: file.to_owned() });
        }
        Ok(())
    }
}

/// Refuses an index longer than [`MAX_INDEX_LEN`] (check a file's or response's length
/// with it before reading the body).
pub fn check_index_len(len: u64) -> Result<(), SafetensorsError> {
    if len > MAX_INDEX_LEN {
        return Err(SafetensorsError::IndexTooLarge { len, limit: MAX_INDEX_LEN });
    }
    Ok(())
}

/// Refuses a shard name that is not a plain file name: empty, `.`/`..`, containing a
/// path separator (`/`, `\`), a drive or stream colon, or a NUL.
pub fn check_shard_name(file: &str) -> Result<(), SafetensorsError> {
    let unsafe_name = file.is_empty() || file == "." || file == ".." || file.contains(['/', '\\', ':', '\0']);
    if unsafe_name {
        return Err(SafetensorsError::UnsafeShardName { file: file.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_files_in_sorted_order() {
        let json = br#"{"metadata": {"total_size": 24, "format": "pt"}, "weight_map": {
            "b": "model-00002-of-00002.safetensors", "a": "model-00001-of-00002.safetensors",
            "c": "model-00001-of-00002.safetensors"}}"#;
        let index = ShardIndex::parse(json).unwrap();
        let files: Vec<&str> = index.files().collect();
        assert_eq!(files, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
        assert_eq!(index.tensors_in(files[0]), ["a", "c"]);
        assert_eq!(index.shard_of("b"), Some(files[1]));
        assert_eq!(index.shard_of("z"), None);
        assert_eq!(index.total_size(), Some(24));
    }

    #[test]
    fn refuses_names_that_leave_the_folder() {
        for name in ["../x.safetensors", "/etc/passwd", "a/b.safetensors", "a\\b", "C:x", "..", ".", ""] {
            assert!(matches!(check_shard_name(name), Err(SafetensorsError::UnsafeShardName { .. })), "{name}");
        }
        check_shard_name("model-00001-of-00003.safetensors").unwrap();
        check_shard_name("..model.safetensors").unwrap();
    }
}
