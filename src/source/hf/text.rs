//! The text files of a Hugging Face folder besides the weights: `tokenizer.json`,
//! `tokenizer_config.json`, `chat_template.jinja`, `generation_config.json`. Held as bytes so
//! that any reader (a folder on disk, a repository fetched over HTTP) can fill them; the
//! engine builds the tokenizer and template from them
//! ([`crate::engine::Engine::load_hf`]).

use super::generation::GenerationDefaults;
use super::HfError;

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
}

/// The file names, for readers that fetch them.
pub const TOKENIZER_JSON: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub const CHAT_TEMPLATE: &str = "chat_template.jinja";
pub const GENERATION_CONFIG: &str = "generation_config.json";

impl HfTextFiles {
    /// Assembles the files as read: `read(name)` gives a file's bytes or `None` when the
    /// folder lacks it. A missing `tokenizer.json`, a template that is not UTF-8 or a
    /// malformed `generation_config.json` is an error.
    pub fn from_reader(mut read: impl FnMut(&str) -> Result<Option<Vec<u8>>, HfError>) -> Result<Self, HfError> {
        let tokenizer_json = read(TOKENIZER_JSON)?.ok_or_else(|| HfError::MissingFile(TOKENIZER_JSON.into()))?;
        let chat_template = read(CHAT_TEMPLATE)?
            .map(|b| String::from_utf8(b).map_err(|e| HfError::Io { file: CHAT_TEMPLATE.into(), error: e.to_string() }))
            .transpose()?;
        let generation = read(GENERATION_CONFIG)?.map(|b| GenerationDefaults::parse(&b)).transpose()?.unwrap_or_default();
        Ok(HfTextFiles { tokenizer_json, tokenizer_config: read(TOKENIZER_CONFIG)?, chat_template, generation })
    }
}
