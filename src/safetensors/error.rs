//! Typed errors of the safetensors reader: header, shard index, model folder.
//!
//! Format reference: the safetensors format description
//! (<https://github.com/huggingface/safetensors>, "Format"). Every malformed or hostile input
//! maps to one variant here, naming the tensor, key or file at fault; no input path panics.
//! Errors from one file of a folder come wrapped in [`SafetensorsError::InFile`].

/// Everything that can go wrong reading safetensors files, shard indexes and folders.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    /// The input ends before the 8-byte header length.
    #[error("truncated safetensors: {len} bytes, shorter than the 8-byte header length")]
    TruncatedLength { len: u64 },
    /// The input ends inside the JSON header.
    #[error("truncated safetensors: header of {header_len} bytes, only {available} present")]
    TruncatedHeader { header_len: u64, available: u64 },
    /// The file ends before the data section does, at `file_len`.
    #[error("truncated safetensors: file of {file_len} bytes ends before the data section at {data_start}")]
    TruncatedFile { file_len: u64, data_start: u64 },
    /// A tensor's bytes lie past the end of the data section (a truncated file).
    #[error("tensor '{tensor}': bytes {start}..{end} past the data section of {data_len} bytes")]
    TruncatedData { tensor: String, start: u64, end: u64, data_len: u64 },
    /// The declared header length exceeds the hard limit (checked before allocating).
    #[error("header length {len} exceeds the limit of {limit} bytes")]
    HeaderTooLarge { len: u64, limit: u64 },
    /// The header bytes are not UTF-8.
    #[error("header is not UTF-8 (valid up to byte {valid_up_to})")]
    HeaderNotUtf8 { valid_up_to: usize },
    /// The header is not JSON (or nests deeper than the JSON parser allows).
    #[error("header is not JSON: {0}")]
    HeaderNotJson(serde_json::Error),
    /// The header is JSON but not an object.
    #[error("header is JSON but not an object")]
    HeaderNotObject,
    /// A tensor entry lacks `dtype`, `shape` or `data_offsets`.
    #[error("tensor '{tensor}': missing field '{field}'")]
    MissingField { tensor: String, field: &'static str },
    /// A tensor entry (or one of its fields) has the wrong JSON type.
    #[error("tensor '{tensor}': '{field}' must be {expected}")]
    WrongJsonType { tensor: String, field: &'static str, expected: &'static str },
    /// `__metadata__` is not an object of strings.
    #[error("__metadata__ key '{key}': value must be a string")]
    BadMetadata { key: String },
    /// A dtype string the format does not define.
    #[error("tensor '{tensor}': unknown dtype '{dtype}'")]
    UnknownDtype { tensor: String, dtype: String },
    /// A dtype the format defines but webvlm does not load as a weight.
    #[error("tensor '{tensor}': dtype {dtype} is not a weight type webvlm loads (F32, F16, BF16)")]
    UnsupportedDtype { tensor: String, dtype: &'static str },
    /// More dimensions than the reader allows.
    #[error("tensor '{tensor}': {n_dims} dimensions (at most {limit})")]
    TooManyDims { tensor: String, n_dims: usize, limit: usize },
    /// The element count or byte length overflows 64 bits.
    #[error("tensor '{tensor}': shape {shape:?} overflows")]
    ShapeOverflow { tensor: String, shape: Vec<u64> },
    /// `data_offsets` ends before it begins.
    #[error("tensor '{tensor}': data_offsets [{begin}, {end}] are reversed")]
    ReversedOffsets { tensor: String, begin: u64, end: u64 },
    /// The byte length is not the shape's element count times the dtype size.
    #[error("tensor '{tensor}': {bytes} bytes, but {dtype} {shape:?} needs {expected}")]
    LengthMismatch { tensor: String, dtype: &'static str, shape: Vec<u64>, bytes: u64, expected: u64 },
    /// Two tensors share bytes.
    #[error("tensors '{first}' and '{second}' overlap")]
    Overlap { first: String, second: String },
    /// The same name appears twice (a header key, a field of an entry, or the index).
    #[error("duplicate key '{0}'")]
    DuplicateKey(String),
    /// The shard index is not JSON, or not an object.
    #[error("shard index is not a JSON object: {0}")]
    IndexNotJson(String),
    /// The shard index is longer than the reader accepts.
    #[error("shard index of {len} bytes exceeds the limit of {limit}")]
    IndexTooLarge { len: u64, limit: u64 },
    /// The shard index has no `weight_map` object.
    #[error("shard index has no weight_map object")]
    IndexNoWeightMap,
    /// A `weight_map` value is not a string.
    #[error("shard index: tensor '{tensor}' maps to a non-string")]
    IndexBadEntry { tensor: String },
    /// A shard name that is not a plain file name in the model folder (`..`, a path
    /// separator, an absolute path, a drive): refused, it could read outside the folder.
    #[error("shard name '{file}' is not a plain file name in the model folder")]
    UnsafeShardName { file: String },
    /// The index names a shard file that does not exist.
    #[error("shard '{file}' named by the index does not exist")]
    MissingShard { file: String },
    /// The index maps a tensor to a shard whose header does not contain it.
    #[error("tensor '{tensor}' is mapped to shard '{file}', which does not contain it")]
    TensorNotInShard { tensor: String, file: String },
    /// A shard contains a tensor the index does not map to it (a stale or foreign shard).
    #[error("shard '{file}' contains tensor '{tensor}', which the index does not map to it")]
    UnmappedTensor { tensor: String, file: String },
    /// A folder with neither `model.safetensors` nor `model.safetensors.index.json`.
    #[error("{dir}: neither model.safetensors nor model.safetensors.index.json")]
    NoModelFile { dir: String },
    /// A requested tensor is not in the file(s).
    #[error("no tensor named '{0}'")]
    MissingTensor(String),
    /// The streaming parser was fed again after it reported an error.
    #[error("the safetensors header parser already failed")]
    ParserFailed,
    /// An error in one file of a model folder.
    #[error("{file}: {source}")]
    InFile { file: String, source: Box<SafetensorsError> },
    /// An I/O error opening or mapping a file.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl SafetensorsError {
    /// This error, said to come from `file`.
    pub fn in_file(self, file: &str) -> Self {
        Self::InFile { file: file.to_owned(), source: Box::new(self) }
    }

    /// The error itself, without the [`SafetensorsError::InFile`] wrappers.
    pub fn root(&self) -> &SafetensorsError {
        match self {
            Self::InFile { source, .. } => source.root(),
            e => e,
        }
    }
}
