//! The chat template of a Hugging Face folder: `chat_template.jinja` (transformers 5 writes
//! the template there), else `tokenizer_config.json`'s `chat_template` (a string, or the
//! template named `default` of a list), else ChatML; `bos_token` / `eos_token` as the
//! config spells them.
//!
//! Reference: transformers' `tokenization_utils_base.py` (`from_pretrained` reads
//! `chat_template.jinja` over the config's `chat_template`).

use super::{ChatError, ChatTemplate, CHATML_TEMPLATE};
use crate::tokenizer::{HfTokenizerConfig, Tokenizer};

impl ChatTemplate {
    /// The template of a Hugging Face folder: `jinja` is the text of its
    /// `chat_template.jinja` if it has one; BOS/EOS strings missing from `config` are spelled
    /// as the tokenizer's vocabulary spells its BOS/EOS ids.
    pub fn from_hf(config: &HfTokenizerConfig, jinja: Option<&str>, tokenizer: &Tokenizer) -> Result<Self, ChatError> {
        let source = jinja.or(config.chat_template()).unwrap_or(CHATML_TEMPLATE);
        let spell = |text: Option<&str>, id: Option<u32>| {
            text.map(str::to_string).or_else(|| id.and_then(|id| tokenizer.token_text(id))).unwrap_or_default()
        };
        Self::new(source, &spell(config.bos_token(), tokenizer.bos_id()), &spell(config.eos_token(), tokenizer.eos_id()))
    }
}
