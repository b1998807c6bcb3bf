//! What a failure means to the caller, decided from error types and variants (never from
//! message text). Every error type of the crate says its [`ErrorClass`] through [`Classify`]
//! with an exhaustive `match`, so a new variant does not compile until it is classified. The
//! browser package names its JS errors after the class (`web::error`); the OpenAI layer sets
//! the `type` and `code` of errors it does not map to a request field from it. The modules
//! above this one implement it next to their own error types (`engine::EngineError`,
//! `api::ApiError`), so that this module imports none of them.

use crate::backend::gpu::GpuError;
use crate::chat::ChatError;
use crate::constraint::ConstraintError;
use crate::gguf::GgufError;
use crate::image::ImageError;
use crate::kernels::quant::WeightError;
use crate::model::ModelError;
use crate::safetensors::SafetensorsError;
use crate::sampling::{ParamError, SampleError};
use crate::source::hf::HfError;
use crate::source::LoadError;
use crate::tokenizer::TokenizerError;

/// The failures a caller can tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// No GPU adapter (no WebGPU in the browser, no Vulkan/Metal/DX12 driver natively).
    NoGpu,
    /// The adapter's limits or free memory cannot hold the model.
    AdapterTooSmall,
    /// The GPU device was lost: the model must be loaded again.
    DeviceLost,
    /// Not a model webvlm can run (architecture, tensor types, malformed file, vocabulary).
    ModelNotSupported,
    /// Downloaded bytes that do not match their published digest.
    Download,
    /// A request the engine refuses (parameters, images, prompt too long).
    BadRequest,
    /// A failure of the engine itself.
    Internal,
}

/// An error that knows its [`ErrorClass`].
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

use ErrorClass::*;

impl Classify for GpuError {
    fn class(&self) -> ErrorClass {
        match self {
            GpuError::NoAdapter(_) => NoGpu,
            GpuError::RequestDevice(_) | GpuError::BufferTooLarge { .. } | GpuError::OutOfMemory(_) => AdapterTooSmall,
            GpuError::DeviceLost(_) => DeviceLost,
            GpuError::CpuUnsupported(_) => ModelNotSupported,
            GpuError::Pipeline { .. }
            | GpuError::WrongBackend(_)
            | GpuError::Cpu(_)
            | GpuError::Readback(_)
            | GpuError::Device(_)
            | GpuError::Shape(_)
            | GpuError::BindingCount { .. } => Internal,
        }
    }
}

impl Classify for WeightError {
    fn class(&self) -> ErrorClass {
        match self {
            WeightError::Unsupported(_) | WeightError::SizeMismatch { .. } | WeightError::BadShape { .. } => ModelNotSupported,
            WeightError::RowTooLarge { .. } => AdapterTooSmall,
            WeightError::BadWrite { .. } => Internal,
            WeightError::Gpu(e) => e.class(),
        }
    }
}

impl Classify for GgufError {
    /// Every GGUF error is a file webvlm cannot read (a local file that cannot be opened
    /// included).
    fn class(&self) -> ErrorClass {
        ModelNotSupported
    }
}

impl Classify for SafetensorsError {
    /// Every safetensors error is a file or folder webvlm cannot read (a local file that
    /// cannot be opened included).
    fn class(&self) -> ErrorClass {
        ModelNotSupported
    }
}

impl Classify for HfError {
    /// Every error of a Hugging Face folder is a model webvlm cannot read: a file missing or
    /// malformed, an architecture or setting it does not map.
    fn class(&self) -> ErrorClass {
        match self {
            HfError::Safetensors(e) => e.class(),
            _ => ModelNotSupported,
        }
    }
}

impl Classify for LoadError {
    fn class(&self) -> ErrorClass {
        match self {
            LoadError::Missing(_) | LoadError::Shape { .. } | LoadError::Gguf(_) | LoadError::Stream(_) => ModelNotSupported,
            LoadError::Weight(e) => e.class(),
            LoadError::Gpu(e) => e.class(),
            LoadError::Checksum { .. } => Download,
            LoadError::InPart { error, .. } => error.class(),
            LoadError::Hf(e) => e.class(),
        }
    }
}

impl Classify for ModelError {
    fn class(&self) -> ErrorClass {
        match self {
            ModelError::UnsupportedArch { .. }
            | ModelError::NotVisionProjector(_)
            | ModelError::UnsupportedProjector { .. }
            | ModelError::Invalid(_)
            | ModelError::Metadata(_)
            // Image features of another width: the mmproj does not belong to the model.
            | ModelError::ImageWidth { .. } => ModelNotSupported,
            ModelError::Load(e) => e.class(),
            ModelError::ContextFull { .. } | ModelError::Empty | ModelError::BadToken { .. } | ModelError::ImageTokens { .. } => {
                BadRequest
            }
            // The engine never steps where the states do not stand: a bug if it does.
            ModelError::RecurrentPosition { .. } => Internal,
            ModelError::DoesNotFit { .. } | ModelError::BufferTooLarge { .. } => AdapterTooSmall,
            ModelError::Gpu(e) => e.class(),
        }
    }
}

impl Classify for TokenizerError {
    fn class(&self) -> ErrorClass {
        match self {
            TokenizerError::UnsupportedModel(_)
            | TokenizerError::UnsupportedPre(_)
            | TokenizerError::Missing(_)
            | TokenizerError::LengthMismatch { .. }
            | TokenizerError::VocabTooLarge(_)
            | TokenizerError::TokenTooLong { .. }
            | TokenizerError::DuplicateToken { .. }
            | TokenizerError::BadMerge(_)
            | TokenizerError::MergeOutOfVocabulary(_)
            | TokenizerError::SpecialIdOutOfRange { .. }
            | TokenizerError::HfFile(_) => ModelNotSupported,
            TokenizerError::UnknownId { .. } => BadRequest,
            TokenizerError::StreamDiverged { .. } | TokenizerError::Backend(_) => Internal,
        }
    }
}

impl Classify for ChatError {
    fn class(&self) -> ErrorClass {
        match self {
            // The model's template does not parse.
            ChatError::Syntax(_) => ModelNotSupported,
            // The template refused or failed on these messages.
            ChatError::Raised(_) | ChatError::Render(_) => BadRequest,
            // A template past its limits: the model's template is broken or hostile (a
            // conversation long enough to reach them is far past any context).
            ChatError::Limit(_) => ModelNotSupported,
        }
    }
}

impl Classify for ImageError {
    fn class(&self) -> ErrorClass {
        BadRequest
    }
}

impl Classify for ParamError {
    fn class(&self) -> ErrorClass {
        BadRequest
    }
}

impl Classify for SampleError {
    fn class(&self) -> ErrorClass {
        match self {
            // Every token was masked or biased away: the request asked for the impossible.
            SampleError::NoCandidates => BadRequest,
        }
    }
}

impl Classify for ConstraintError {
    fn class(&self) -> ErrorClass {
        match self {
            ConstraintError::Schema(_) => BadRequest,
            ConstraintError::Vocabulary(_) | ConstraintError::NoEos => ModelNotSupported,
            ConstraintError::Setup(_)
            | ConstraintError::UnknownToken { .. }
            | ConstraintError::Rejected { .. }
            | ConstraintError::Parser(_) => Internal,
        }
    }
}

impl Classify for serde_json::Error {
    /// JSON that does not parse is a malformed request.
    fn class(&self) -> ErrorClass {
        BadRequest
    }
}
