//! Split GGUF models (`name-00001-of-00003.gguf`) merged into one tensor index.
//!
//! Reference: llama.cpp's `gguf-split` tool and `llama_split_path`: parts are named
//! `{prefix}-{no:05}-of-{count:05}.gguf` with `no` counted from 1; each part carries
//! `split.no` (0-based), `split.count`, and the first part `split.tensors.count` (the total
//! number of tensors). Model metadata is read from the first part. A single unsplit file
//! is a model of one part.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::ops::Range;

use super::error::GgufError;
use super::header::{GgufHeader, TensorInfo};
use super::metadata::Metadata;
use super::value::MetaValue;
use super::writer::GgufWriter;

/// Metadata key: number of parts.
pub const KEY_SPLIT_COUNT: &str = "split.count";
/// Metadata key: this part's 0-based index.
pub const KEY_SPLIT_NO: &str = "split.no";
/// Metadata key: total tensors across all parts.
pub const KEY_SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// The split keys of one part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitInfo {
    /// 0-based part index (`split.no`, 0 when absent).
    pub no: u64,
    /// Number of parts (`split.count`).
    pub count: u64,
    /// Total tensors over all parts (`split.tensors.count`), if present.
    pub tensors_count: Option<u64>,
}

impl SplitInfo {
    /// Reads the split keys; `None` when `split.count` is absent.
    pub fn from_metadata(m: &Metadata) -> Result<Option<Self>, GgufError> {
        let Some(count) = m.get_opt_u64(KEY_SPLIT_COUNT)? else {
            return Ok(None);
        };
        let no = m.get_opt_u64(KEY_SPLIT_NO)?.unwrap_or(0);
        let tensors_count = m.get_opt_u64(KEY_SPLIT_TENSORS_COUNT)?;
        Ok(Some(Self { no, count, tensors_count }))
    }
}

/// Splits `dir/name-00001-of-00003.gguf` into (`dir/name`, 1, 3).
pub fn parse_split_name(path: &str) -> Option<(&str, u64, u64)> {
    let stem = path.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() >= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(count) || !digits(no) {
        return None;
    }
    let (no, count) = (no.parse().ok()?, count.parse().ok()?);
    (no >= 1 && no <= count).then_some((prefix, no, count))
}

/// The paths of all parts of the model whose part `path` is given, in order; just
/// `[path]` when the name does not follow the split pattern.
pub fn split_paths(path: &str) -> Vec<String> {
    match parse_split_name(path) {
        Some((prefix, _, count)) => (1..=count).map(|i| split_name(prefix, i, count)).collect(),
        None => vec![path.to_owned()],
    }
}

/// Where one tensor's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorLocation {
    /// Index of the part (file) holding it.
    pub file: usize,
    /// Index into that part's `tensors`.
    pub tensor: usize,
    /// Absolute byte range within that file.
    pub range: Range<u64>,
}

/// Tensor name → location over all parts of a model.
#[derive(Clone, Debug, Default)]
pub struct TensorIndex {
    locations: Vec<TensorLocation>,
    by_name: HashMap<String, usize>,
}

impl TensorIndex {
    /// Checks the split keys of `headers` (given in part order) and indexes every tensor.
    pub fn build<H: Borrow<GgufHeader>>(headers: &[H]) -> Result<Self, GgufError> {
        let first = headers.first().ok_or(GgufError::MissingSplit { no: 0, count: 1 })?.borrow();
        let first_info = SplitInfo::from_metadata(&first.metadata)?;
        let count = first_info.map_or(1, |s| s.count);
        if count == 0 {
            return Err(GgufError::SplitMismatch("split.count is 0".into()));
        }
        if (headers.len() as u64) < count {
            return Err(GgufError::MissingSplit { no: headers.len() as u64, count });
        }
        if headers.len() as u64 > count {
            return Err(GgufError::SplitMismatch(format!("{} files given for split.count {count}", headers.len())));
        }
        let mut index = Self::default();
        for (file, h) in headers.iter().enumerate() {
            let h = h.borrow();
            let info = SplitInfo::from_metadata(&h.metadata)?;
            let (no, c) = info.map_or((0, 1), |s| (s.no, s.count));
            if c != count {
                return Err(GgufError::SplitMismatch(format!("part {file} has split.count {c}, part 0 has {count}")));
            }
            if no != file as u64 {
                return Err(GgufError::SplitMismatch(format!("file {file} has split.no {no}")));
            }
            for (i, t) in h.tensors.iter().enumerate() {
                if index.by_name.contains_key(&t.name) {
                    return Err(GgufError::DuplicateTensor(t.name.clone()));
                }
                index.by_name.insert(t.name.clone(), index.locations.len());
                index.locations.push(TensorLocation { file, tensor: i, range: h.absolute_range(t)? });
            }
        }
        if let Some(total) = first_info.and_then(|s| s.tensors_count) {
            if total != index.locations.len() as u64 {
                return Err(GgufError::SplitMismatch(format!(
                    "split.tensors.count {total}, parts hold {}",
                    index.locations.len()
                )));
            }
        }
        Ok(index)
    }

    /// The location of a tensor.
    pub fn get(&self, name: &str) -> Option<&TensorLocation> {
        self.by_name.get(name).map(|&i| &self.locations[i])
    }

    /// All locations, part by part in file order of the tensor infos.
    pub fn locations(&self) -> &[TensorLocation] {
        &self.locations
    }

    /// The locations in one part, sorted by byte offset (the order bytes arrive in).
    pub fn locations_in_file(&self, file: usize) -> Vec<&TensorLocation> {
        let mut v: Vec<_> = self.locations.iter().filter(|l| l.file == file).collect();
        v.sort_by_key(|l| l.range.start);
        v
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.locations.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.locations.is_empty()
    }
}

/// The headers of every part of a model and the merged tensor index.
#[derive(Clone, Debug)]
pub struct GgufModelFiles {
    headers: Vec<GgufHeader>,
    index: TensorIndex,
}

impl GgufModelFiles {
    /// Merges the parts' headers, given in part order.
    pub fn new(headers: Vec<GgufHeader>) -> Result<Self, GgufError> {
        let index = TensorIndex::build(&headers)?;
        Ok(Self { headers, index })
    }

    /// The model metadata (from the first part).
    pub fn metadata(&self) -> &Metadata {
        &self.headers[0].metadata
    }

    /// Every part's header.
    pub fn headers(&self) -> &[GgufHeader] {
        &self.headers
    }

    /// The merged index.
    pub fn index(&self) -> &TensorIndex {
        &self.index
    }

    /// All tensor infos over all parts.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.index.locations.iter().map(|l| &self.headers[l.file].tensors[l.tensor])
    }

    /// A tensor's info and location.
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, &TensorLocation), GgufError> {
        let loc = self.index.get(name).ok_or_else(|| GgufError::MissingTensor(name.to_owned()))?;
        Ok((&self.headers[loc.file].tensors[loc.tensor], loc))
    }

    /// Checks every part against its file length (one length per part).
    pub fn validate_file_lens(&self, lens: &[u64]) -> Result<(), GgufError> {
        if lens.len() != self.headers.len() {
            return Err(GgufError::SplitMismatch(format!("{} lengths for {} parts", lens.len(), self.headers.len())));
        }
        self.headers.iter().zip(lens).try_for_each(|(h, &len)| h.validate_data(len))
    }
}

/// The file name of part `no` (1-based) of `count`: `{prefix}-{no:05}-of-{count:05}.gguf`.
pub fn split_name(prefix: &str, no: u64, count: u64) -> String {
    format!("{prefix}-{no:05}-of-{count:05}.gguf")
}

/// Splits the model in `file` (parsed as `header`) into `parts` GGUF files as llama.cpp's
/// `gguf-split` lays them out: the tensors in file order, in `parts` runs of near-equal
/// count; the first part keeps all metadata; every part carries the three split keys.
pub fn split_model(header: &GgufHeader, file: &[u8], parts: usize) -> Result<Vec<Vec<u8>>, GgufError> {
    let n = header.tensors.len();
    if parts == 0 || parts > n.max(1) || parts > u16::MAX as usize {
        return Err(GgufError::SplitMismatch(format!("cannot split {n} tensors into {parts} parts")));
    }
    (0..parts)
        .map(|no| {
            let mut w = GgufWriter::new();
            if header.alignment != super::header::DEFAULT_ALIGNMENT {
                w.set_alignment(header.alignment as u32)?;
            }
            if no == 0 {
                for (k, v) in header.metadata.iter() {
                    if !k.starts_with("split.") && k != "general.alignment" {
                        w.add_kv(k, v.clone());
                    }
                }
            }
            w.add_kv(KEY_SPLIT_NO, MetaValue::U16(no as u16));
            w.add_kv(KEY_SPLIT_COUNT, MetaValue::U16(parts as u16));
            w.add_kv(KEY_SPLIT_TENSORS_COUNT, MetaValue::I32(n as i32));
            for t in &header.tensors[no * n / parts..(no + 1) * n / parts] {
                let range = header.absolute_range(t)?;
                let data = file
                    .get(range.start as usize..range.end as usize)
                    .ok_or(GgufError::SplitMismatch(format!("tensor {} lies past the end of the file", t.name)))?;
                w.add_tensor(t.name.clone(), &t.dims, t.ty, data)?;
            }
            w.write()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names() {
        assert_eq!(parse_split_name("a/m-00002-of-00003.gguf"), Some(("a/m", 2, 3)));
        assert_eq!(parse_split_name("m-00004-of-00003.gguf"), None);
        assert_eq!(parse_split_name("m.gguf"), None);
        assert_eq!(
            split_paths("x/m-q4-00001-of-00002.gguf"),
            vec!["x/m-q4-00001-of-00002.gguf".to_string(), "x/m-q4-00002-of-00002.gguf".to_string()]
        );
        assert_eq!(split_paths("m.gguf"), vec!["m.gguf".to_string()]);
    }
}
