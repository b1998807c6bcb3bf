//! Decoder families, one folder each: its config read from GGUF metadata, its weight names
//! and the recording of one step from the shared [`super::blocks`]. [`Family`] dispatches on
//! the architecture (`super::Decoder` only calls its methods); adding a family adds a
//! variant here (see `docs/ARCHITECTURE.md`, "Adding a model family").

pub mod llama;

use crate::gpu::{Gpu, Program, Result as GpuResult};
use crate::kernels::quant::GpuWeight;
use crate::source::WeightLoader;

use super::blocks::head::Head;
use super::state::{LayerKind, SequenceState};
use super::step::{LogitsMode, StepBuffers};
use super::ModelError;

/// The architectures of every family, for error messages.
pub const SUPPORTED: &str = "llama, mistral3";

/// The shape of a decoder, whatever its family (sizes of its attention layers; families
/// with other layer kinds keep their own config besides).
#[derive(Clone, Debug)]
pub struct TextConfig {
    /// GGUF `general.architecture`.
    pub arch: String,
    pub name: Option<String>,
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_ff: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    pub vocab: u32,
    /// Training context length.
    pub context_length: u32,
}

/// A loaded decoder of one family.
pub enum Family {
    Llama(llama::Llama),
}

/// A family's per-context step scratch.
pub enum Scratch {
    Llama(llama::Scratch),
}

impl Family {
    /// Loads the family `arch` names.
    pub fn load_from(gpu: &Gpu, src: &mut dyn WeightLoader, arch: &str, vocab: u32) -> Result<Family, ModelError> {
        if llama::ARCHITECTURES.contains(&arch) {
            return Ok(Family::Llama(llama::Llama::load_from(gpu, src, vocab)?));
        }
        Err(ModelError::UnsupportedArch { arch: arch.to_string(), supported: SUPPORTED })
    }

    /// The shape every caller may read.
    pub fn text_config(&self) -> TextConfig {
        match self {
            Family::Llama(m) => m.cfg.text(),
        }
    }

    /// Token embedding, final norm and LM head.
    pub fn head(&self) -> &Head {
        match self {
            Family::Llama(m) => &m.weights.head,
        }
    }

    /// The matrices of every block.
    pub fn layer_matrices(&self) -> Vec<&GpuWeight> {
        match self {
            Family::Llama(m) => m.weights.layer_matrices().collect(),
        }
    }

    /// Bytes of weights held on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        match self {
            Family::Llama(m) => m.weights.bytes_on_gpu(),
        }
    }

    /// What each layer keeps between tokens.
    pub fn layers(&self) -> Vec<LayerKind> {
        match self {
            Family::Llama(m) => m.layers(),
        }
    }

    pub fn scratch(&self, gpu: &Gpu, chunk: u32, max_ctx: u32) -> GpuResult<Scratch> {
        match self {
            Family::Llama(m) => Ok(Scratch::Llama(m.scratch(gpu, chunk, max_ctx)?)),
        }
    }

    #[rustfmt::skip]
    pub fn record(
        &self, p: &mut Program, gpu: &Gpu, b: &StepBuffers, s: &Scratch, state: &SequenceState, n: u32, mode: LogitsMode,
    ) -> GpuResult<()> {
        match (self, s) {
            (Family::Llama(m), Scratch::Llama(s)) => m.record(p, gpu, b, s, state, n, mode),
        }
    }
}
