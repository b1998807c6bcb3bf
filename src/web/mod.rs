//! The wasm-bindgen surface: the only place `JsValue` appears. Grows into the engine API in
//! the browser issue; for now it proves the core builds and opens a WebGPU device on wasm32.

use wasm_bindgen::prelude::*;

use crate::gpu::{Gpu, GpuOptions};

/// The crate version, for the page footer.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Opens the WebGPU device and describes the adapter, or fails with a readable error.
#[wasm_bindgen(js_name = adapterInfo)]
pub async fn adapter_info() -> Result<String, JsError> {
    let gpu = Gpu::new(GpuOptions::default()).await.map_err(|e| JsError::new(&e.to_string()))?;
    let c = &gpu.caps;
    Ok(format!(
        "{} [{}] f16={} max storage binding={} MiB",
        c.adapter,
        c.backend,
        c.f16,
        c.max_storage_binding >> 20
    ))
}
