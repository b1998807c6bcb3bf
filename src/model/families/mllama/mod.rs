//! The Mllama family (Llama 3.2 Vision's text decoder, GGUF-keyed `mllama` from a Hugging
//! Face `MllamaForConditionalGeneration` folder): Llama 3 self-attention layers with
//! cross-attention layers in between that attend to the projected image states.
//! Reference: transformers' `MllamaTextModel` (`modeling_mllama.py`); the math is in
//! `docs/MODELS.md`, "Llama 3.2 Vision".
//!
//! In progress: the config and the cross-attention mask are here; the weights, the step
//! recording and the registration as a [`super::Family`] are not yet.

mod config;
mod mask;

pub use config::{MllamaConfig, ARCH};
pub use mask::{kernel_mask, processor_mask};
