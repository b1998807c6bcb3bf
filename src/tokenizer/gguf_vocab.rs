//! Fills the tokenizer's [`GgufVocab`] from a GGUF file's `tokenizer.*` metadata.

use super::GgufVocab;
use crate::gguf::{GgufError, Metadata};

impl GgufVocab {
    /// Reads `tokenizer.ggml.*` and `tokenizer.chat_template`.
    pub fn from_metadata(md: &Metadata) -> Result<GgufVocab, GgufError> {
        let owned = |v: Option<Vec<&str>>| v.map(|v| v.into_iter().map(str::to_string).collect());
        Ok(GgufVocab {
            model: md.get_str("tokenizer.ggml.model")?.to_string(),
            pre: md.get_opt_str("tokenizer.ggml.pre")?.map(str::to_string),
            tokens: owned(Some(md.get_str_array("tokenizer.ggml.tokens")?)).unwrap_or_default(),
            scores: md.get_opt_f32_array("tokenizer.ggml.scores")?,
            token_types: md.get_opt_i32_array("tokenizer.ggml.token_type")?,
            merges: owned(md.get_opt_str_array("tokenizer.ggml.merges")?),
            bos_id: md.get_opt_u32("tokenizer.ggml.bos_token_id")?,
            eos_id: md.get_opt_u32("tokenizer.ggml.eos_token_id")?,
            unk_id: md.get_opt_u32("tokenizer.ggml.unknown_token_id")?,
            pad_id: md.get_opt_u32("tokenizer.ggml.padding_token_id")?,
            add_bos: md.get_opt_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: md.get_opt_bool("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: md.get_opt_bool("tokenizer.ggml.add_space_prefix")?,
            chat_template: md.get_opt_str("tokenizer.chat_template")?.map(str::to_string),
        })
    }
}
