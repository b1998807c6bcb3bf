//! webvlm: a vision-language model runtime for WebGPU (browser) and wgpu (native).
//!
//! Layout: [`gpu`] (device, pipelines, params, programs), [`kernels`] (one module per WGSL
//! kernel family), [`gguf`] (file format), [`model`] (decoder, vision encoder, loaders),
//! [`tokenizer`], [`chat`] (templates), [`image`] (preprocessing), [`sampling`] and
//! [`constraint`] (host-side token choice), [`engine`] (the generation loop), [`api`]
//! (OpenAI's chat-completions shapes), [`web`] (the wasm-bindgen surface).

pub mod api;
pub mod chat;
pub mod constraint;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod gpu;
pub mod image;
pub mod kernels;
pub mod model;
pub mod npy;
pub mod sampling;
pub mod source;
pub mod tokenizer;

#[cfg(target_arch = "wasm32")]
pub mod web;
