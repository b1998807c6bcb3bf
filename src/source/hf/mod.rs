//! A Hugging Face model folder as a weight source: `config.json` becomes the GGUF metadata
//! llama.cpp's converter would write, the safetensors tensors appear under llama.cpp's GGUF
//! names and dims with the converter's q/k row permutation (and synthesized tensors such as
//! Llama 3's `rope_freqs.weight`), so the families and the engine load it like the GGUF the
//! converter makes of the same folder. Tensors keep their file type (F32/F16/BF16);
//! `WeightLoader::fill` requantizes where asked.
//!
//! The mapping (`config.rs`, `names.rs`, `tensors.rs`) does not depend on how the bytes are
//! held; [`HfModel`] is the native reader over memory-mapped shards, [`HfStream`] the
//! streamed one (the browser's).
//!
//! Reference: llama.cpp `convert_hf_to_gguf.py` (`conversion/base.py`, `conversion/llama.py`).

mod config;
mod error;
#[cfg(not(target_arch = "wasm32"))]
mod folder;
mod generation;
mod json;
mod mllama;
mod names;
mod processor;
mod stream;
mod tensors;
mod text;

pub use config::{HfConfig, RopeScaling, ARCHITECTURES, SUPPORTED};
pub use error::HfError;
#[cfg(not(target_arch = "wasm32"))]
pub use folder::HfModel;
pub use generation::GenerationDefaults;
pub use mllama::{MllamaConfig, MllamaVisionConfig};
pub use names::{gguf_name, permute_rows, Mapped, Permute};
pub use processor::{mllama_preprocess, HfImageProcessor, PREPROCESSOR_CONFIG, PROCESSOR_CONFIG};
pub use stream::HfStream;
pub use tensors::{HfTensor, HfTensors, Origin};
pub use text::{HfTextFiles, CHAT_TEMPLATE, GENERATION_CONFIG, METADATA_PREFIX, TOKENIZER_CONFIG, TOKENIZER_JSON};
