//! Errors of the weight sources: a tensor missing or misshapen, a malformed file, a stream
//! that ends early or does not hash to its published digest.

/// Errors while loading weights.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A required tensor is absent.
    #[error("tensor {0} is missing")]
    Missing(String),
    /// A tensor's shape disagrees with the config.
    #[error("tensor {name} has shape {got}, expected {want}")]
    Shape { name: String, got: String, want: String },
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error(transparent)]
    Weight(#[from] crate::kernels::quant::WeightError),
    #[error(transparent)]
    Gpu(#[from] crate::backend::gpu::GpuError),
    /// A streamed file ended before this tensor's bytes, or its bytes came out of order.
    #[error("model stream: {0}")]
    Stream(String),
    /// The file's bytes do not hash to the SHA-256 its source published (a corrupt download).
    #[error("sha256 mismatch: the source publishes {want}, the bytes hash to {got}")]
    Checksum { want: String, got: String },
    /// A Hugging Face folder or repository that cannot be read as a model.
    #[error(transparent)]
    Hf(#[from] super::hf::HfError),
    /// An error in one part of a split model (numbered from 1, as in the file names).
    #[error("part {no} of {count}: {error}")]
    InPart { no: usize, count: usize, error: Box<LoadError> },
}
