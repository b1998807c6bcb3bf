//! Safetensors: the weight format of Hugging Face model folders, read natively and in the
//! browser beside GGUF.
//!
//! Reference: the safetensors format, <https://github.com/huggingface/safetensors>
//! ("Format"), and transformers' sharded checkpoints (`model.safetensors.index.json`).
//! [`parse_header`] and the push-based [`HeaderParser`] read and check a file's header
//! without knowing where the bytes come from; [`ShardIndex`] reads and checks a shard index;
//! [`MappedSafetensors`] and [`SafetensorsFolder`] (native only) memory-map a file or a
//! whole model folder. F32/F16/BF16 bytes decode to `f32` as GGUF's do
//! ([`crate::gguf::dequantize_to_vec`] with [`TensorEntry::ggml_type`]).

mod dtype;
mod error;
mod header;
mod index;
mod json;
#[cfg(not(target_arch = "wasm32"))]
mod mmap;
mod parser;

pub use dtype::Dtype;
pub use error::SafetensorsError;
pub use header::{SafetensorsHeader, TensorEntry, MAX_DIMS, MAX_HEADER_LEN, METADATA_KEY};
pub use index::{check_index_len, check_shard_name, ShardIndex, INDEX_FILE, MAX_INDEX_LEN, SINGLE_FILE};
#[cfg(not(target_arch = "wasm32"))]
pub use mmap::{MappedSafetensors, SafetensorsFolder};
pub use parser::{parse_header, HeaderParser, LENGTH_PREFIX};
