//! The Qwen3.5 family (GGUF `qwen35`): a hybrid decoder whose layers come in groups of Gated
//! DeltaNet (linear attention with a recurrent state, Yang et al. 2024) layers and one gated
//! full-attention layer (partial NeoX RoPE, per-head q/k RMSNorm, a sigmoid output gate),
//! each followed by a SiLU-gated MLP. Reference: transformers' `modeling_qwen3_5.py`,
//! llama.cpp's `src/models/qwen35.cpp`; the GGUF conventions are in `docs/MODELS.md`.
//!
//! So far: the config, the weights and what each layer keeps between tokens. The step
//! (recording the layers) is not written yet, so [`super::Family`] does not load it.

mod config;
mod weights;

pub use config::{Qwen35Config, SsmConfig};
pub use weights::{DeltaNetWeights, GatedAttentionWeights, LayerWeights, Mixer, Qwen35Weights};

use crate::gpu::Gpu;
use crate::model::state::LayerKind;
use crate::model::ModelError;
use crate::source::WeightLoader;

/// The GGUF architectures this family reads.
pub const ARCHITECTURES: [&str; 1] = ["qwen35"];

/// A loaded Qwen3.5 decoder.
pub struct Qwen35 {
    pub cfg: Qwen35Config,
    pub weights: Qwen35Weights,
}

impl Qwen35 {
    /// Reads the config (`vocab` from the embedding's rows) and has `src` load every weight.
    pub fn load_from(gpu: &Gpu, src: &mut dyn WeightLoader, vocab: u32) -> Result<Qwen35, ModelError> {
        let cfg = Qwen35Config::from_metadata(src.metadata(), vocab)?;
        let weights = Qwen35Weights::load_from(gpu, src, &cfg)?;
        Ok(Qwen35 { cfg, weights })
    }

    /// Full-attention layers keep a KV cache, DeltaNet layers their conv and delta-rule state.
    pub fn layers(&self) -> Vec<LayerKind> {
        layer_kinds(&self.cfg)
    }
}

/// What each layer of `cfg` keeps between tokens.
pub fn layer_kinds(cfg: &Qwen35Config) -> Vec<LayerKind> {
    let (conv, ssm) = cfg.ssm.state_floats();
    (cfg.recurrent.iter())
        .map(|&r| match r {
            true => LayerKind::Recurrent { conv_floats: conv, ssm_floats: ssm },
            false => LayerKind::Attention { kv_dim: cfg.text.kv_dim() },
        })
        .collect()
}
