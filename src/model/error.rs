//! The model layer's one error type: a model that cannot be opened (architecture, config,
//! weights) and a sequence that cannot run (context full, bad tokens, images that do not fit
//! the prompt).

use crate::backend::gpu::GpuError;
use crate::gguf::GgufError;
use crate::source::LoadError;

/// Errors of the model layer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file's `general.architecture` is not a decoder family we implement.
    #[error("unsupported architecture {arch:?} (supported: {supported})")]
    UnsupportedArch { arch: String, supported: &'static str },
    /// A vision projector file whose `general.architecture` is not `clip`.
    #[error("not a vision projector: architecture {0:?} (expected clip)")]
    NotVisionProjector(String),
    /// A `clip` file whose `clip.projector_type` is not an encoder we implement.
    #[error("unsupported vision projector type {projector:?} (supported: {supported})")]
    UnsupportedProjector { projector: String, supported: &'static str },
    /// A hyperparameter is zero, out of range or inconsistent with the others.
    #[error("invalid hyperparameter: {0}")]
    Invalid(String),
    /// A metadata key is missing or has the wrong type.
    #[error(transparent)]
    Metadata(#[from] GgufError),
    /// A weight is missing, misshapen or could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The prompt plus generated tokens would not fit in the context.
    #[error("context full: {needed} tokens needed, the context holds {max_ctx}")]
    ContextFull { needed: u64, max_ctx: u32 },
    /// An empty token list was given.
    #[error("no tokens to process")]
    Empty,
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: u32 },
    /// The prompt's image-token positions and the images' feature rows differ in number.
    #[error("the prompt has {slots} image-token positions but the images give {rows} feature rows")]
    ImageTokens { slots: u64, rows: u64 },
    /// Image features of another width than the text model's embeddings (wrong mmproj).
    #[error("image features of width {got} for a text model of width {want}")]
    ImageWidth { got: u32, want: u32 },
    /// A step after the cache was cut or restored where the recurrent layers' states do not
    /// stand (they cannot be rewound).
    #[error("the recurrent layers have consumed {consumed} tokens but the cache holds {cached}: prefill the sequence again")]
    RecurrentPosition { consumed: u32, cached: u32 },
    /// The model at the asked context needs more GPU memory than the budget
    /// (`memory_plan::MemoryPlan::check`).
    /// With several sequences (`seqs`), the state and buffers are those of all their
    /// contexts, and `largest_seqs` is the most that fit at `ctx`.
    #[error(
        "the model needs {} MiB of GPU memory ({} MiB weights + {} MiB KV cache at {ctx} tokens{} + {} MiB buffers) but {} MiB are available; {}{}",
        mib(*needed), mib(*weights), mib(*state), if *seqs > 1 { format!(" for {seqs} sequences") } else { String::new() },
        mib(*other), mib(*available),
        if *largest_ctx > 0 { format!("the largest context that fits is {largest_ctx} tokens") } else { "no context fits".to_string() },
        if *seqs > 1 { format!("; the most sequences that fit at {ctx} tokens: {largest_seqs}") } else { String::new() }
    )]
    DoesNotFit {
        needed: u64,
        available: u64,
        weights: u64,
        state: u64,
        ctx: u32,
        other: u64,
        largest_ctx: u32,
        seqs: u32,
        largest_seqs: u32,
    },
    /// One buffer the model needs exceeds the adapter's buffer or binding limit.
    #[error("{what} needs a buffer of {bytes} bytes; the adapter allows {limit}")]
    BufferTooLarge { what: String, bytes: u64, limit: u64 },
    /// The GPU failed (out of memory, device lost, ...).
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// Bytes in MiB with one decimal, for messages.
fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1048576.0)
}
