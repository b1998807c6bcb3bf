//! Errors of a Hugging Face model folder: a file missing or malformed, a config webvlm cannot
//! map to its GGUF form, tensors that do not fit the config.

/// Why a Hugging Face folder cannot be read as a model.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// A file the folder must have is absent (`config.json`, `tokenizer.json`, the weights).
    #[error("the model folder has no {0}")]
    MissingFile(String),
    /// A file could not be read.
    #[error("{file}: {error}")]
    Io { file: String, error: String },
    /// A JSON file that does not parse, or is not an object.
    #[error("{file}: malformed JSON: {error}")]
    Json { file: String, error: String },
    /// `config.json` names an architecture webvlm does not map.
    #[error("unsupported architecture {arch:?} in config.json (supported: {supported:?})")]
    UnsupportedArch { arch: String, supported: &'static [&'static str] },
    /// A key `config.json` must have for this architecture is absent.
    #[error("config.json has no {0}")]
    MissingKey(String),
    /// A key of `config.json` holds a value of the wrong type or out of range.
    #[error("config.json: {key} = {value} is not valid ({why})")]
    BadValue { key: String, value: String, why: &'static str },
    /// An image-processor setting (`processor_config.json`, `preprocessor_config.json`) of
    /// the wrong type or out of range, or one webvlm cannot reproduce for this model.
    #[error("{file}: {key} = {value} is not valid ({why})")]
    Processor { file: String, key: String, value: String, why: &'static str },
    /// A RoPE scaling type the decoders do not implement.
    #[error("config.json: unsupported rope_type {0:?}")]
    RopeScaling(String),
    /// A tensor of the weights that has no GGUF name (llama.cpp's converter refuses it too).
    #[error("tensor {0} has no GGUF name for this architecture")]
    UnmappedTensor(String),
    /// A tensor stored in a type webvlm does not load as weights (only F32, F16, BF16).
    #[error("tensor {name} is stored as {dtype}; webvlm loads F32, F16 and BF16 weights")]
    Dtype { name: String, dtype: String },
    /// The safetensors files are missing or malformed.
    #[error(transparent)]
    Safetensors(#[from] crate::safetensors::SafetensorsError),
    /// A tensor whose shape does not fit the config (e.g. q_proj rows not whole heads).
    #[error("tensor {name} has shape {shape:?}: {why}")]
    TensorShape { name: String, shape: Vec<u64>, why: &'static str },
}
