//! What crosses the wasm boundary besides requests (those are [`crate::api::ChatRequest`]):
//! engine options, and the image bytes the worker fetched.

use serde::Deserialize;

use crate::engine::EngineError;

/// `WebEngine.create` options.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineOptions {
    pub max_context: Option<u32>,
    pub max_chunk: Option<u32>,
    pub f16: Option<bool>,
    pub kv_f16: Option<bool>,
    pub vision_quant: Option<String>,
    /// Number of split GGUF parts of the text model (default 1).
    pub text_parts: Option<usize>,
    /// GPU memory for saved prompt prefixes (default 256 MiB; 0 keeps only the last sequence).
    pub prompt_cache_bytes: Option<u64>,
    /// Resized-area bounds of area-bounded image processors (Qwen's `min_pixels` /
    /// `max_pixels`; default: the encoder's own, the largest within the image edge's square).
    pub image_min_area: Option<u64>,
    pub image_max_area: Option<u64>,
    /// GPU memory the model may use, checked before the download (`8G`, `512M`, bytes;
    /// default 4 GiB: WebGPU reports no memory size). On the CPU backend it caps the wasm
    /// memory the plan may count on.
    pub gpu_memory: Option<String>,
    /// Where the model runs: `webgpu` (the default) or `cpu` (the CPU kernels in this wasm
    /// module; the page's `createEngine` chooses between them for `backend: "auto"`).
    pub backend: Option<String>,
    /// Threads of the CPU backend (default 1, the only count a build without threads runs).
    pub threads: Option<usize>,
    /// The CPU backend's matvec mode: `fast` (the default: 8-bit activations and integer dot
    /// products, as llama.cpp's CPU backend) or `exact` (f32 activations).
    pub cpu_mode: Option<String>,
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
