//! webvlm: a vision-language model runtime for WebGPU (browser) and wgpu (native).
//!
//! Layout (`docs/ARCHITECTURE.md` has the map): [`backend`] (the two backends side by side:
//! `backend::gpu`, device, pipelines, params, programs and each op's WGSL dispatches;
//! `backend::cpu`, the CPU kernels), [`kernels`] (the seam: one wrapper per op, recording it
//! on either backend, and the references the tests use), [`gguf`] and [`safetensors`] (file formats), [`source`] (weight sources: files, streams,
//! split parts), [`model`] (decoder families, vision encoders, shared blocks, per-sequence
//! state), [`tokenizer`], [`chat`] (templates), [`image`] (preprocessing), [`sampling`] and [`constraint`] (host-side token choice),
//! [`engine`] (the generation loop), [`api`] (OpenAI's chat-completions shapes), [`error`]
//! (what each failure means to a caller), [`web`] (the wasm-bindgen surface); `fuzz` holds the
//! fuzz targets' entry points (feature `fuzzing`).

pub mod api;
/// Compute backends: the GPU side (wgpu, the WGSL dispatches) and the CPU kernels (SIMD
/// dispatch, thread pool), behind the handles the model code records with.
pub mod backend;
pub mod chat;
pub mod constraint;
pub mod engine;
pub mod error;
#[doc(hidden)]
#[cfg(all(feature = "fuzzing", not(target_arch = "wasm32")))]
pub mod fuzz;
pub mod gguf;
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
