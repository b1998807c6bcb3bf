//! Models: decoder families and vision encoders built from shared blocks, run by a
//! [`Context`] per sequence (many at once through a [`StepBatch`]).
//!
//! - [`families`]: one folder per decoder family (config from metadata, weight names, the
//!   recording of one step); [`Decoder`] is a loaded decoder of any family.
//! - [`blocks`]: attention with its KV cache, the gated FFN, embedding and LM head.
//! - [`vision`]: one folder per vision encoder behind [`VisionEncoder`]; image features
//!   and their placement in a prompt.
//! - [`state`]: what a sequence keeps between tokens (KV caches; recurrent states next),
//!   and snapshots of it; [`step`]: the buffers every step binds.
//! - [`context`]: a sequence being run — prefill in chunks, decode, logits; `positions`:
//!   its multimodal RoPE positions and their delta from the KV rows.
//! - [`batch`]: decode steps of many contexts at once; [`rows`]: the sequences behind a
//!   recorded step's rows, and the sections that run per sequence.
//!
//! Weights come from `crate::source`; errors are [`ModelError`].

pub mod batch;
pub mod blocks;
pub mod context;
mod decoder;
mod error;
pub mod families;
pub mod kv_arena;
pub mod memory_plan;
mod positions;
pub mod rows;
pub mod state;
pub mod step;
#[cfg(feature = "synthetic")]
pub mod synthetic;
pub mod vision;

pub use batch::{BatchInput, StepBatch};
pub use context::{Context, ContextOptions, Counters};
pub use decoder::Decoder;
pub use error::ModelError;
pub use families::TextConfig;
pub use kv_arena::{ArenaSlot, KvArena};
pub use memory_plan::{MemoryBudget, MemoryPlan, ModelHeaders, PlanLimits, PlanOptions};
pub use positions::RopeDeltas;
pub use state::{LayerKind, SequenceState, StateSnapshot};
pub use step::{LogitsMode, Precision};
pub use vision::{ImageDigest, ImageFeatures, PromptImages, PromptLayout, VisionEncoder};
