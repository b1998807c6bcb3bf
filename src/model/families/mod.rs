//! Decoder families, one folder each: its config read from GGUF metadata, its weight names
//! and the recording of one step from the shared [`super::blocks`]. [`Family`] dispatches on
//! the architecture (`super::Decoder` only calls its methods); adding a family adds a
//! variant here (see `docs/ARCHITECTURE.md`, "Adding a model family").

pub mod llama;
pub mod mllama;
pub mod qwen35;

use crate::backend::gpu::Result as GpuResult;
use crate::backend::{Buffer, Device, Program};
use crate::kernels::quant::Weight;
use crate::source::WeightLoader;

use super::blocks::head::Head;
use super::rows::Rows;
use super::state::LayerKind;
use super::step::LogitsMode;
use super::ModelError;

/// The architectures of every family, for error messages.
pub const SUPPORTED: &str = "llama, mistral3, mllama, qwen35";

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

impl TextConfig {
    /// Fails on zero or out-of-range sizes and head counts the attention kernels cannot run.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if [self.n_layer, self.n_embd, self.n_ff, self.n_head, self.n_head_kv, self.head_dim, self.vocab].contains(&0) {
            return bad(format!("zero dimension in {self:?}"));
        }
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad(format!("{} query heads not a multiple of {} KV heads", self.n_head, self.n_head_kv));
        }
        if !self.head_dim.is_multiple_of(4) || self.head_dim > crate::kernels::attention::MAX_HEAD_DIM {
            return bad(format!(
                "head_dim {} must be a multiple of 4 and at most {}",
                self.head_dim,
                crate::kernels::attention::MAX_HEAD_DIM
            ));
        }
        if self.n_layer > 1024 || self.n_embd > 65_536 || self.n_ff > 262_144 || self.n_head > 1024 {
            return bad("hyperparameters beyond the supported range".into());
        }
        Ok(())
    }

    /// Width of the query projection (`n_head * head_dim`, not always `n_embd`).
    pub fn q_dim(&self) -> u32 {
        self.n_head * self.head_dim
    }

    /// Width of each of the key and value projections.
    pub fn kv_dim(&self) -> u32 {
        self.n_head_kv * self.head_dim
    }
}

/// A loaded decoder of one family.
pub enum Family {
    Llama(llama::Llama),
    Mllama(mllama::Mllama),
    Qwen35(qwen35::Qwen35),
}

/// A family's per-context step scratch.
pub enum Scratch {
    Llama(Box<llama::Scratch>),
    Mllama(Box<mllama::Scratch>),
    Qwen35(Box<qwen35::Scratch>),
}

impl Scratch {
    fn llama(&self) -> Option<&llama::Scratch> {
        match self {
            Scratch::Llama(s) => Some(s),
            _ => None,
        }
    }

    fn mllama(&self) -> Option<&mllama::Scratch> {
        match self {
            Scratch::Mllama(s) => Some(s),
            _ => None,
        }
    }

    fn qwen35(&self) -> Option<&qwen35::Scratch> {
        match self {
            Scratch::Qwen35(s) => Some(s),
            _ => None,
        }
    }

    /// Writes the step's per-token inputs other than ids and positions (Mllama's
    /// cross-attention mask rows) for positions `start..start + n`.
    pub fn write_step(&self, dev: &Device, start: u32, n: u32) -> GpuResult<()> {
        match self {
            Scratch::Mllama(s) => s.write_step(dev, start, n),
            _ => Ok(()),
        }
    }

    /// Whether the scratch holds image keys for cross-attention layers.
    pub fn has_cross(&self) -> bool {
        matches!(self, Scratch::Mllama(s) if s.cross.is_some())
    }

    /// Bytes of the image keys, values and mask rows held for cross-attention layers.
    pub fn cross_bytes(&self) -> u64 {
        match self {
            Scratch::Mllama(s) => s.cross.as_ref().map_or(0, mllama::CrossStore::bytes),
            _ => 0,
        }
    }

    /// Drops the image keys (a new sequence without images).
    pub fn clear_cross(&mut self) {
        if let Scratch::Mllama(s) = self {
            s.cross = None;
        }
    }
}

impl Family {
    /// Loads the family `arch` names.
    pub fn load_from(dev: &Device, src: &mut dyn WeightLoader, arch: &str, vocab: u32) -> Result<Family, ModelError> {
        if llama::ARCHITECTURES.contains(&arch) {
            return Ok(Family::Llama(llama::Llama::load_from(dev, src, vocab)?));
        }
        if arch == mllama::ARCH {
            return Ok(Family::Mllama(mllama::Mllama::load_from(dev, src, vocab)?));
        }
        if qwen35::ARCHITECTURES.contains(&arch) {
            return Ok(Family::Qwen35(qwen35::Qwen35::load_from(dev, src, vocab)?));
        }
        Err(ModelError::UnsupportedArch { arch: arch.to_string(), supported: SUPPORTED })
    }

    /// The shape every caller may read.
    pub fn text_config(&self) -> &TextConfig {
        match self {
            Family::Llama(m) => &m.cfg.text,
            Family::Mllama(m) => &m.cfg.llama.text,
            Family::Qwen35(m) => &m.cfg.text,
        }
    }

    /// Token embedding, final norm and LM head.
    pub fn head(&self) -> &Head {
        match self {
            Family::Llama(m) => &m.weights.head,
            Family::Mllama(m) => &m.weights.head,
            Family::Qwen35(m) => &m.weights.head,
        }
    }

    /// The matrices of every block.
    pub fn layer_matrices(&self) -> Vec<&Weight> {
        match self {
            Family::Llama(m) => m.weights.layer_matrices().collect(),
            Family::Mllama(m) => m.weights.layer_matrices().collect(),
            Family::Qwen35(m) => m.weights.layer_matrices().collect(),
        }
    }

    /// Bytes of weights held on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        match self {
            Family::Llama(m) => m.weights.bytes_on_gpu(),
            Family::Mllama(m) => m.weights.bytes_on_gpu(),
            Family::Qwen35(m) => m.weights.bytes_on_gpu(),
        }
    }

    /// Whether the family's RoPE reads (t, h, w) positions (Qwen3.5's interleaved M-RoPE).
    pub fn uses_mrope(&self) -> bool {
        matches!(self, Family::Qwen35(_))
    }

    /// What each layer keeps between tokens.
    pub fn layers(&self) -> Vec<LayerKind> {
        match self {
            Family::Llama(m) => m.layers(),
            Family::Mllama(m) => m.layers(),
            Family::Qwen35(m) => m.layers(),
        }
    }

    pub fn scratch(&self, dev: &Device, chunk: u32, max_ctx: u32, decode_seqs: u32) -> GpuResult<Scratch> {
        match self {
            Family::Llama(m) => Ok(Scratch::Llama(Box::new(m.scratch(dev, chunk, max_ctx, decode_seqs)?))),
            Family::Mllama(m) => Ok(Scratch::Mllama(Box::new(m.scratch(dev, chunk, max_ctx, decode_seqs)?))),
            Family::Qwen35(m) => Ok(Scratch::Qwen35(Box::new(m.scratch(dev, chunk, max_ctx, decode_seqs)?))),
        }
    }

    /// Computes the image keys of a cross-attention decoder into `s` (see
    /// `mllama::CrossStore::new`); other families have no cross-attention.
    pub fn set_cross(
        &self,
        dev: &Device,
        s: &mut Scratch,
        states: &Buffer,
        n_tiles: u32,
        mask: &[u32],
    ) -> Result<(), ModelError> {
        match (self, s) {
            (Family::Mllama(m), Scratch::Mllama(s)) => m.set_cross(dev, s, states, n_tiles, mask),
            _ => Err(ModelError::Invalid(format!("{} has no cross-attention layers", self.text_config().arch))),
        }
    }

    /// Rows of the token embedding: the ids a prompt may hold (Mllama's image token is one
    /// past the text vocabulary the LM head scores).
    pub fn token_rows(&self) -> u32 {
        self.head().token_embd.rows
    }

    /// Records the blocks and the head over the step's rows (see `super::rows`).
    pub fn record(&self, p: &mut Program, dev: &Device, rows: &Rows<'_, Scratch>, mode: LogitsMode) -> GpuResult<()> {
        const OWN: &str = "a context's scratch comes from its own decoder's family";
        match self {
            Family::Llama(m) => m.record(p, dev, &rows.map(Scratch::llama).expect(OWN), mode),
            Family::Mllama(m) => m.record(p, dev, &rows.map(Scratch::mllama).expect(OWN), mode),
            Family::Qwen35(m) => m.record(p, dev, &rows.map(Scratch::qwen35).expect(OWN), mode),
        }
    }
}
