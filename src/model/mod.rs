//! Models: configuration from GGUF metadata, weights, the decoder and its per-sequence
//! context (KV cache, buffers, recorded programs).

pub mod config;
pub mod context;
pub mod decoder;
pub mod loader;
pub mod prompt_images;
pub mod source;
pub mod stream;
mod stream_parts;
pub mod synthetic;
pub mod vision;
pub mod vision_config;
pub mod vision_weights;
pub mod vocab;
pub mod weights;

pub use config::{ConfigError, ModelConfig};
pub use context::{Context, ContextError, ContextOptions, Counters, KvSnapshot, Precision};
pub use decoder::{Decoder, LogitsMode, ModelError};
pub use loader::{Eager, LoadQuant, WeightLoader};
pub use prompt_images::PromptImages;
pub use source::{GgufBytes, TensorSource};
pub use stream::GgufStream;
pub use stream_parts::GgufParts;
pub use vision::{ImageFeatures, VisionEncoder};
pub use vision_config::VisionConfig;
pub use vision_weights::{VisionLayerWeights, VisionWeights};
pub use weights::{DecoderWeights, LoadError};
