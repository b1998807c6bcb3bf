//! webvlm: a vision-language model runtime for WebGPU (browser) and wgpu (native).
//!
//! Layout (`docs/ARCHITECTURE.md` has the map): [`gpu`] (device, pipelines, params,
//! programs), [`kernels`] (one module per WGSL kernel family), [`backend`] (the CPU kernels),
//! [`gguf`] and [`safetensors`] (file formats), [`source`] (weight sources: files, streams,
//! split parts), [`model`] (decoder families, vision encoders, shared blocks, per-sequence
//! state), [`tokenizer`], [`chat`] (templates), [`image`] (preprocessing), [`sampling`] and [`constraint`] (host-side token choice),
//! [`engine`] (the generation loop), [`api`] (OpenAI's chat-completions shapes), [`error`]
//! (what each failure means to a caller), [`web`] (the wasm-bindgen surface); `fuzz` holds the
//! fuzz targets' entry points (feature `fuzzing`).

pub mod api;
/// Compute backends: the CPU kernels (SIMD dispatch, thread pool); the GPU side is `gpu` + `kernels`.
pub mod backend;
pub mod chat;
pub mod constraint;
pub mod engine;
pub mod error;
#[doc(hidden)]
#[cfg(all(feature = "fuzzing", not(target_arch = "wasm32")))]
pub mod fuzz;
pub mod gguf;
pub mod gpu;
pub mod image;
pub mod kernels;
pub mod model;
pub mod npy;
pub mod safetensors;
pub mod sampling;
pub mod source;
pub mod tokenizer;

#[cfg(target_arch = "wasm32")]
pub mod web;
