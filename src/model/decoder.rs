//! A loaded text decoder of any family: the shape every caller may read ([`TextConfig`]) and
//! the family behind it ([`Family`]), which records one step — the embedding gather, then
//! the blocks and the head — into two [`Program`]s against a context's buffers, replayed
//! every step with only the step uniform changing. Between the two the context may
//! overwrite rows of the embeddings (image features at the prompt's image positions).

use crate::backend::gpu::Result as GpuResult;
use crate::backend::{Buffer, Device, Program};
use crate::kernels::quant::Weight;
use crate::source::{Eager, LoadError, TensorSource, WeightLoader};

use super::families::{Family, Scratch, TextConfig};
use super::rows::Rows;
use super::state::LayerKind;
use super::step::{LogitsMode, StepBuffers};
use super::ModelError;

/// A loaded decoder.
pub struct Decoder {
    pub cfg: TextConfig,
    family: Family,
}

impl Decoder {
    /// Reads the config and uploads every weight.
    pub fn load(dev: &Device, src: &dyn TensorSource) -> Result<Decoder, ModelError> {
        Self::load_from(dev, &mut Eager(src))
    }

    /// Reads the config and has `src` allocate (and fill, or stream in) every weight.
    pub fn load_from(dev: &Device, src: &mut dyn WeightLoader) -> Result<Decoder, ModelError> {
        let vocab = src
            .tensor_info("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| LoadError::Missing("token_embd.weight".into()))?;
        let vocab = u32::try_from(vocab).map_err(|_| ModelError::Invalid(format!("vocabulary of {vocab}")))?;
        let arch = src.metadata().architecture()?.to_string();
        let family = Family::load_from(dev, src, &arch, vocab)?;
        let cfg = family.text_config().clone();
        Ok(Decoder { cfg, family })
    }

    /// Whether the decoder rotates with multimodal (t, h, w) positions read from
    /// [`StepBuffers::positions`], which the context then writes every step.
    pub fn uses_mrope(&self) -> bool {
        self.family.uses_mrope()
    }

    /// What each layer keeps between tokens (the context allocates it).
    pub fn layers(&self) -> Vec<LayerKind> {
        self.family.layers()
    }

    /// The matrices of every block (what a decode step reads besides the LM head).
    pub fn layer_matrices(&self) -> Vec<&Weight> {
        self.family.layer_matrices()
    }

    /// The LM head (the tied token embedding when the file has no `output.weight`).
    pub fn lm_head(&self) -> &Weight {
        self.family.head().lm_head()
    }

    /// Bytes of weights held on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.family.weight_bytes()
    }

    /// Ids a prompt may hold (the token embedding's rows; at least `cfg.vocab`).
    pub fn token_rows(&self) -> u32 {
        self.family.token_rows()
    }

    /// Computes a cross-attention decoder's image keys and values into `s`.
    pub(super) fn set_cross(
        &self,
        dev: &Device,
        s: &mut Scratch,
        states: &Buffer,
        n_tiles: u32,
        mask: &[u32],
    ) -> Result<(), ModelError> {
        self.family.set_cross(dev, s, states, n_tiles, mask)
    }

    pub(super) fn scratch(&self, dev: &Device, chunk: u32, max_ctx: u32, decode_seqs: u32) -> GpuResult<Scratch> {
        self.family.scratch(dev, chunk, max_ctx, decode_seqs)
    }

    /// Records the embedding gather of `n` tokens (ids in `b.ids`) into `b.x`.
    pub(super) fn record_embed(&self, dev: &Device, b: &StepBuffers, n: u32) -> GpuResult<Program> {
        let mut p = Program::new();
        self.family.head().record_embed(&mut p, dev, b, n)?;
        Ok(p)
    }

    /// Records the blocks and the head over the step's embedded rows in `rows.b.x`.
    pub(super) fn record(&self, dev: &Device, rows: &Rows<'_, Scratch>, mode: LogitsMode) -> GpuResult<Program> {
        let mut p = Program::new();
        self.family.record(&mut p, dev, rows, mode)?;
        Ok(p)
    }
}
