//! Decoder weights on the GPU, loaded by llama.cpp tensor name. Matrices keep their GGUF
//! quantization (see `kernels::quant` for the GPU layout); norm vectors become f32.

use crate::gguf::GgufError;
use crate::gpu::Gpu;
use crate::kernels::quant::{GpuWeight, WeightError};

use super::config::ModelConfig;
use super::loader::{LoadQuant, WeightLoader};

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
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Weight(#[from] WeightError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    /// A streamed file ended before this tensor's bytes, or its bytes came out of order.
    #[error("model stream: {0}")]
    Stream(String),
    /// The file's bytes do not hash to the SHA-256 its source published (a corrupt download).
    #[error("sha256 mismatch: the source publishes {want}, the bytes hash to {got}")]
    Checksum { want: String, got: String },
    /// An error in one part of a split model (numbered from 1, as in the file names).
    #[error("part {no} of {count}: {error}")]
    InPart { no: usize, count: usize, error: Box<LoadError> },
}

/// One transformer block.
pub struct LayerWeights {
    pub attn_norm: wgpu::Buffer, // [n_embd] f32
    pub wq: GpuWeight,           // [q_dim][n_embd]
    pub wk: GpuWeight,           // [kv_dim][n_embd]
    pub wv: GpuWeight,           // [kv_dim][n_embd]
    pub wo: GpuWeight,           // [n_embd][q_dim]
    pub ffn_norm: wgpu::Buffer,  // [n_embd] f32
    pub w_gate: GpuWeight,       // [n_ff][n_embd]
    pub w_up: GpuWeight,         // [n_ff][n_embd]
    pub w_down: GpuWeight,       // [n_embd][n_ff]
}

/// All decoder weights.
pub struct DecoderWeights {
    pub token_embd: GpuWeight, // [vocab][n_embd]
    pub layers: Vec<LayerWeights>,
    pub output_norm: wgpu::Buffer, // [n_embd] f32
    /// The LM head `[vocab][n_embd]`; `None` when tied to `token_embd`.
    pub output: Option<GpuWeight>,
}

impl DecoderWeights {
    pub fn load_from(gpu: &Gpu, src: &mut dyn WeightLoader, cfg: &ModelConfig) -> Result<Self, LoadError> {
        let (d, q, kv, ff) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff);
        let matrix = |src: &mut dyn WeightLoader, name: &str, rows, cols| src.matrix(gpu, name, rows, cols, LoadQuant::Keep);
        let vector = |src: &mut dyn WeightLoader, name: &str, n| src.vector(gpu, name, n);
        let mut layers = Vec::with_capacity(cfg.n_layer as usize);
        for i in 0..cfg.n_layer {
            let name = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(LayerWeights {
                attn_norm: vector(src, &name("attn_norm"), d)?,
                wq: matrix(src, &name("attn_q"), q, d)?,
                wk: matrix(src, &name("attn_k"), kv, d)?,
                wv: matrix(src, &name("attn_v"), kv, d)?,
                wo: matrix(src, &name("attn_output"), d, q)?,
                ffn_norm: vector(src, &name("ffn_norm"), d)?,
                w_gate: matrix(src, &name("ffn_gate"), ff, d)?,
                w_up: matrix(src, &name("ffn_up"), ff, d)?,
                w_down: matrix(src, &name("ffn_down"), d, ff)?,
            });
        }
        let output = match src.tensor_info("output.weight") {
            Some(_) => Some(matrix(src, "output.weight", cfg.vocab, d)?),
            None => None,
        };
        Ok(DecoderWeights {
            token_embd: matrix(src, "token_embd.weight", cfg.vocab, d)?,
            layers,
            output_norm: vector(src, "output_norm.weight", d)?,
            output,
        })
    }

    /// The LM head: `output.weight`, or the tied token embedding.
    pub fn lm_head(&self) -> &GpuWeight {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// Bytes of weights held on the GPU.
    pub fn bytes_on_gpu(&self) -> u64 {
        let per_layer = |l: &LayerWeights| {
            [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].iter().map(|w| w.bytes_on_gpu()).sum::<u64>()
                + l.attn_norm.size()
                + l.ffn_norm.size()
        };
        self.token_embd.bytes_on_gpu()
            + self.output.as_ref().map_or(0, |w| w.bytes_on_gpu())
            + self.output_norm.size()
            + self.layers.iter().map(per_layer).sum::<u64>()
    }
}
