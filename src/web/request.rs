//! JSON shapes crossing the wasm boundary: engine options and a generation request (a chat in
//! OpenAI's message format plus the sampling fields the engine implements so far).

use serde::Deserialize;

use crate::chat::ChatMessage;
use crate::engine::{EngineError, GenerateOptions};

/// `WebEngine.create` options.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineOptions {
    pub max_context: Option<u32>,
    pub max_chunk: Option<u32>,
    #[serde(default)]
    pub f16: bool,
    pub kv_f16: Option<bool>,
    pub vision_quant: Option<String>,
}

/// One generation: OpenAI field names.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    /// Prompt ids instead of messages (tests).
    pub tokens: Option<Vec<u32>>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub seed: Option<u64>,
    /// Longest image edge before tiling into 28-pixel tokens (default 1540).
    pub image_max_edge: Option<u32>,
}

impl GenerateRequest {
    pub fn options(&self) -> Result<GenerateOptions, EngineError> {
        let d = GenerateOptions::default();
        if self.messages.is_empty() && self.tokens.is_none() {
            return Err(EngineError::InvalidParameter { name: "messages", reason: "must not be empty".into() });
        }
        if self.image_max_edge == Some(0) {
            return Err(EngineError::InvalidParameter { name: "image_max_edge", reason: "must be positive".into() });
        }
        Ok(GenerateOptions {
            max_tokens: self.max_completion_tokens.or(self.max_tokens).unwrap_or(d.max_tokens),
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k.unwrap_or(d.top_k),
            seed: self.seed.unwrap_or(d.seed),
            ..d
        })
    }
}

/// The bytes the page resolved for an image URL (blob: and http(s): URLs are fetched by
/// the worker before the request reaches the engine).
pub fn image_bytes(images: &js_sys::Map, url: &str) -> Result<Vec<u8>, EngineError> {
    let value = images.get(&wasm_bindgen::JsValue::from_str(url));
    if value.is_undefined() {
        return Err(EngineError::BadImageUrl(format!("{url}: not fetched by the page")));
    }
    Ok(js_sys::Uint8Array::new(&value).to_vec())
}
