//! GGUF: the model file format of llama.cpp/ggml, read natively and in the browser.
//!
//! Reference: the GGUF spec, <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.
//! [`GgufHeaderParser`] is push-based (feed it chunks as they stream in) and knows
//! nothing about where bytes come from; [`GgufModelFiles`] merges split parts into one
//! tensor index; [`MappedGguf`] (native only) memory-maps files; [`quant`] holds the
//! block formats with CPU reference dequantization; [`GgufWriter`] builds files for tests.

mod error;
mod header;
mod metadata;
#[cfg(not(target_arch = "wasm32"))]
mod mmap;
pub mod quant;
mod reader;
mod split;
mod types;
mod value;
mod writer;

pub use error::{GgufError, Section};
pub use header::{GgufHeader, TensorInfo, DEFAULT_ALIGNMENT, MAX_DIMS, MAX_ELEMENTS};
pub use metadata::{arch_key, Metadata};
#[cfg(not(target_arch = "wasm32"))]
pub use mmap::MappedGguf;
pub use quant::{dequantize, dequantize_to_vec, random_blocks, SplitMix64};
pub use reader::{
    parse_header, GgufHeaderParser, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_KV, MAX_METADATA_ELEMENTS, MAX_NAME_LEN, MAX_STRING_LEN,
    MAX_TENSORS,
};
pub use split::{
    parse_split_name, split_model, split_name, split_paths, GgufModelFiles, SplitInfo, TensorIndex, TensorLocation,
    KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT,
};
pub use types::{GgmlType, QK_K};
pub use value::{MetaValue, ValueType};
pub use writer::{meta_array, GgufWriter};
