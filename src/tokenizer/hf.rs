//! A tokenizer straight from a Hugging Face folder's `tokenizer.json` (the `tokenizers`
//! crate runs it as is) and `tokenizer_config.json` (BOS/EOS, whether BOS is added, the chat
//! template).
//!
//! Reference: transformers' `tokenization_utils_tokenizers.py` (`TokenizersBackend`): the
//! special tokens are the added tokens marked `special`; BOS/EOS are added by the
//! post-processor, which `add_bos_token` / `add_eos_token` in `tokenizer_config.json`
//! override when present.

use serde::Deserialize;

use super::{Tokenizer, TokenizerError, END_OF_GENERATION};

/// What webvlm reads of `tokenizer_config.json`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HfTokenizerConfig {
    #[serde(default)]
    bos_token: Option<TokenSpec>,
    #[serde(default)]
    eos_token: Option<TokenSpec>,
    #[serde(default)]
    add_bos_token: Option<bool>,
    #[serde(default)]
    add_eos_token: Option<bool>,
    #[serde(default)]
    chat_template: Option<TemplateSpec>,
}

/// A special token as `"<s>"` or as an `AddedToken` object `{"content": "<s>", ...}`;
/// anything else names no token.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Text(String),
    Added { content: String },
    Other(serde::de::IgnoredAny),
}

/// `chat_template`: one template, or a list of named ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TemplateSpec {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Clone, Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

impl TokenSpec {
    fn text(&self) -> Option<&str> {
        match self {
            TokenSpec::Text(s) | TokenSpec::Added { content: s } => Some(s),
            TokenSpec::Other(_) => None,
        }
    }
}

impl HfTokenizerConfig {
    /// Parses `tokenizer_config.json`.
    pub fn parse(bytes: &[u8]) -> Result<Self, TokenizerError> {
        serde_json::from_slice(bytes).map_err(|e| TokenizerError::HfFile(format!("tokenizer_config.json: {e}")))
    }

    /// The BOS token's text, if the file names one.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_ref().and_then(TokenSpec::text)
    }

    /// The EOS token's text, if the file names one.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_ref().and_then(TokenSpec::text)
    }

    /// The chat template: the string, or of a list of named templates the one named
    /// `default`.
    pub fn chat_template(&self) -> Option<&str> {
        match self.chat_template.as_ref()? {
            TemplateSpec::One(s) => Some(s),
            TemplateSpec::Named(list) => list.iter().find(|t| t.name == "default").map(|t| t.template.as_str()),
        }
    }
}

impl Tokenizer {
    /// Builds the tokenizer of a Hugging Face folder from its `tokenizer.json` and (when the
    /// folder has one) `tokenizer_config.json`.
    pub fn from_hf(tokenizer_json: &[u8], tokenizer_config: Option<&[u8]>) -> Result<Self, TokenizerError> {
        let config = tokenizer_config.map(HfTokenizerConfig::parse).transpose()?.unwrap_or_default();
        let mut inner =
            super::Pipeline::from_bytes(tokenizer_json).map_err(|e| TokenizerError::HfFile(format!("tokenizer.json: {e}")))?;
        // No cache of merged words (see `NO_WORD_CACHE`); only an empty map is left per thread.
        let mut model = inner.get_model().clone();
        model.resize_cache(super::build::NO_WORD_CACHE);
        inner.with_model(model);
        let vocab_size = inner.get_vocab_size(true);
        if vocab_size > super::MAX_VOCAB {
            return Err(TokenizerError::VocabTooLarge(vocab_size));
        }
        let id_of = |name: &'static str, text: Option<&str>| -> Result<Option<u32>, TokenizerError> {
            match text {
                None => Ok(None),
                Some(t) => inner.token_to_id(t).map(Some).ok_or_else(|| {
                    TokenizerError::HfFile(format!("tokenizer_config.json: {name} {t:?} is not in the vocabulary"))
                }),
            }
        };
        let bos = id_of("bos_token", config.bos_token())?;
        let eos = id_of("eos_token", config.eos_token())?;

        // What the post-processor adds around an empty input tells whether BOS / EOS are added.
        let probe = inner.encode_fast("", true).map_err(TokenizerError::Backend)?;
        let probe = probe.get_ids();
        let add_bos = config.add_bos_token.unwrap_or(bos.is_some() && probe.first().copied() == bos) && bos.is_some();
        let add_eos =
            config.add_eos_token.unwrap_or(eos.is_some() && probe.len() > usize::from(add_bos) && probe.last().copied() == eos)
                && eos.is_some();

        let mut eos_ids: Vec<u32> = eos.into_iter().collect();
        eos_ids.extend(END_OF_GENERATION.iter().filter_map(|text| inner.token_to_id(text)));
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Tokenizer { inner, vocab_size, bos, eos, eos_ids, add_bos, add_eos })
    }

    /// Adds ids that end generation (a `generation_config.json`'s `eos_token_id` list); ids
    /// outside the vocabulary are an error.
    pub fn add_eos_ids(&mut self, ids: &[u32]) -> Result<(), TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::SpecialIdOutOfRange { name: "eos", id, vocab_size: self.vocab_size });
        }
        self.eos_ids.extend_from_slice(ids);
        self.eos_ids.sort_unstable();
        self.eos_ids.dedup();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::HfTokenizerConfig;

    #[test]
    fn config_tokens_and_templates() {
        let cfg = HfTokenizerConfig::parse(
            br#"{"bos_token": {"content": "<s>", "special": true}, "eos_token": "</s>",
                "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!((cfg.bos_token(), cfg.eos_token(), cfg.chat_template()), (Some("<s>"), Some("</s>"), Some("D")));
        let cfg = HfTokenizerConfig::parse(br#"{"eos_token": null, "chat_template": "X"}"#).unwrap();
        assert_eq!((cfg.bos_token(), cfg.eos_token(), cfg.chat_template()), (None, None, Some("X")));
        assert!(HfTokenizerConfig::parse(b"{\"bos_token\": ").is_err());
    }
}
