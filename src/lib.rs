//! webvlm: a vision-language model runtime for WebGPU (browser) and wgpu (native).
//!
//! Layout: [`gpu`] (device, pipelines, params, programs), [`kernels`] (one module per WGSL
//! kernel family), [`gguf`] (file format), [`model`] (decoder), [`tokenizer`], [`chat`].

pub mod gguf;
pub mod gpu;
pub mod image;
pub mod kernels;
pub mod engine;
pub mod model;
pub mod npy;
pub mod tokenizer;
pub mod chat;

#[cfg(target_arch = "wasm32")]
pub mod web;
