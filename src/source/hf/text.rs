//! The text files of a Hugging Face folder besides the weights: `tokenizer.json`,
//! `tokenizer_config.json`, `chat_template.jinja`, `generation_config.json`, and the image
//! processor's `processor_config.json` / `preprocessor_config.json`. Held as bytes so that any
//! reader (a folder on disk, a repository fetched over HTTP) can fill them; the engine builds
//! the tokenizer, template and image preprocessing from them
//! ([`crate::engine::EngineBuilder::hf_text`]).

use super::generation::GenerationDefaults;
use super::processor::{HfImageProcessor, PREPROCESSOR_CONFIG, PROCESSOR_CONFIG};
use super::HfError;
use crate::gguf::{MetaValue, Metadata};

/// The folder's tokenizer, template and generation files.
#[derive(Clone, Debug, Default)]
pub struct HfTextFiles {
    /// `tokenizer.json` (required).
    pub tokenizer_json: Vec<u8>,
    /// `tokenizer_config.json`, if present.
    pub tokenizer_config: Option<Vec<u8>>,
    /// `chat_template.jinja`, if present (transformers 5 writes the template there).
    pub chat_template: Option<String>,
    /// `generation_config.json`, parsed (all `None` when absent).
    pub generation: GenerationDefaults,
    /// `generation_config.json` as read, kept for writing the model out.
    pub generation_json: Option<Vec<u8>>,
    /// The image-processor settings ([`HfImageProcessor::from_files`]; `None` without them).
    pub image_processor: Option<HfImageProcessor>,
    /// `processor_config.json` and `preprocessor_config.json` as read, kept for writing the
    /// model out.
    pub processor_json: Option<Vec<u8>>,
    pub preprocessor_json: Option<Vec<u8>>,
}

/// A model written out as GGUF (`HfStream::write_gguf`) carries each file as a string under
/// this prefix and the file's name, e.g. `webvlm.hf.tokenizer.json`.
pub const METADATA_PREFIX: &str = "webvlm.hf.";

/// The file names, for readers that fetch them.
pub const TOKENIZER_JSON: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub const CHAT_TEMPLATE: &str = "chat_template.jinja";
pub const GENERATION_CONFIG: &str = "generation_config.json";

impl HfTextFiles {
    /// Assembles the files as read: `read(name)` gives a file's bytes or `None` when the
    /// folder lacks it. A missing `tokenizer.json`, a template that is not UTF-8, a
    /// malformed `generation_config.json` or image-processor setting is an error.
    pub fn from_reader(mut read: impl FnMut(&str) -> Result<Option<Vec<u8>>, HfError>) -> Result<Self, HfError> {
        let tokenizer_json = read(TOKENIZER_JSON)?.ok_or_else(|| HfError::MissingFile(TOKENIZER_JSON.into()))?;
        let chat_template = read(CHAT_TEMPLATE)?
            .map(|b| String::from_utf8(b).map_err(|e| HfError::Io { file: CHAT_TEMPLATE.into(), error: e.to_string() }))
            .transpose()?;
        let generation_json = read(GENERATION_CONFIG)?;
        let generation = generation_json.as_deref().map(GenerationDefaults::parse).transpose()?.unwrap_or_default();
        let processor_json = read(PROCESSOR_CONFIG)?;
        let preprocessor_json = read(PREPROCESSOR_CONFIG)?;
        let image_processor = HfImageProcessor::from_files(processor_json.as_deref(), preprocessor_json.as_deref())?;
        Ok(HfTextFiles {
            tokenizer_json,
            tokenizer_config: read(TOKENIZER_CONFIG)?,
            chat_template,
            generation,
            generation_json,
            image_processor,
            processor_json,
            preprocessor_json,
        })
    }

    /// The files as GGUF key/value pairs ([`METADATA_PREFIX`]); each must be UTF-8.
    pub fn to_metadata(&self) -> Result<Vec<(String, MetaValue)>, HfError> {
        let files = [
            (TOKENIZER_JSON, Some(&self.tokenizer_json[..])),
            (TOKENIZER_CONFIG, self.tokenizer_config.as_deref()),
            (CHAT_TEMPLATE, self.chat_template.as_deref().map(str::as_bytes)),
            (GENERATION_CONFIG, self.generation_json.as_deref()),
            (PROCESSOR_CONFIG, self.processor_json.as_deref()),
            (PREPROCESSOR_CONFIG, self.preprocessor_json.as_deref()),
        ];
        let mut kvs = Vec::new();
        for (name, bytes) in files {
            let Some(bytes) = bytes else { continue };
            let text = std::str::from_utf8(bytes).map_err(|e| HfError::Io { file: name.into(), error: e.to_string() })?;
            kvs.push((format!("{METADATA_PREFIX}{name}"), MetaValue::String(text.into())));
        }
        Ok(kvs)
    }

    /// The files a GGUF written by webvlm carries ([`Self::to_metadata`]), or `None` for any
    /// other GGUF (one without `webvlm.hf.tokenizer.json`).
    pub fn from_metadata(md: &Metadata) -> Result<Option<Self>, HfError> {
        let get = |name: &str| -> Result<Option<Vec<u8>>, HfError> {
            let key = format!("{METADATA_PREFIX}{name}");
            let value = md.get_opt_str(&key).map_err(|e| HfError::Io { file: key.clone(), error: e.to_string() })?;
            Ok(value.map(|v| v.as_bytes().to_vec()))
        };
        if get(TOKENIZER_JSON)?.is_none() {
            return Ok(None);
        }
        Self::from_reader(get).map(Some)
    }
}
