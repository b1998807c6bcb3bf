//! The Llama-family decoder (GGUF `llama`, `mistral3`): pre-norm blocks of grouped-query
//! attention with RoPE (YaRN for Ministral 3) and a SiLU-gated MLP.
//! Reference: transformers' `LlamaModel` / `Ministral3Model`; llama.cpp `build_llama`.
//!
//! [`Decoder`] holds the weights; [`Decoder::record_embed`] and [`Decoder::record`] record
//! one forward pass over `n` tokens (the embedding gather, then the blocks and the head)
//! into two [`Program`]s against a context's buffers, so they can be replayed every step
//! with only the step uniform changing. Between the two, the context may overwrite rows of
//! the embeddings (image features at `[IMG]` positions).

use crate::gpu::{Gpu, Program, Result as GpuResult};
use crate::kernels::attention::{attention_decode, attention_prefill, AttnShape, KvDtype};
use crate::kernels::matmul::MatmulCompute;
use crate::kernels::quant::GpuWeight;
use crate::kernels::rope::{rope_inplace, rope_kv_store, rope_table, QScale, RopeFreqs, RopeLayout, RopeMode};
use crate::kernels::{elementwise, embedding, matmul, matvec, norm};

use super::config::{ConfigError, ModelConfig};
use super::context::Buffers;
use super::loader::{Eager, WeightLoader};
use super::source::TensorSource;
use super::weights::{DecoderWeights, LoadError};

/// Errors while opening a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
}

/// Which logits a forward pass computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogitsMode {
    /// None (a prefill chunk that is not the last).
    None,
    /// The last token's, then a token is selected on the GPU.
    LastAndSample,
    /// Every token's (teacher forcing, the `logits` command).
    All,
}

/// A loaded decoder.
pub struct Decoder {
    pub cfg: ModelConfig,
    pub weights: DecoderWeights,
    rope: RopeFreqs,
}

impl Decoder {
    /// Reads the config and uploads every weight.
    pub fn load(gpu: &Gpu, src: &dyn TensorSource) -> Result<Decoder, ModelError> {
        Self::load_from(gpu, &mut Eager(src))
    }

    /// Reads the config and has `src` allocate (and fill, or stream in) every weight.
    pub fn load_from(gpu: &Gpu, src: &mut dyn WeightLoader) -> Result<Decoder, ModelError> {
        let vocab = src
            .tensor_info("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| LoadError::Missing("token_embd.weight".into()))?;
        let vocab = u32::try_from(vocab).map_err(|_| ConfigError::Invalid(format!("vocabulary of {vocab}")))?;
        let cfg = ModelConfig::from_metadata(src.metadata(), vocab)?;
        let weights = DecoderWeights::load_from(gpu, src, &cfg)?;
        let table = rope_table(cfg.head_dim as usize, cfg.rope_theta as f64, cfg.yarn.as_ref());
        let rope = RopeFreqs::upload(gpu, &table)?;
        Ok(Decoder { cfg, weights, rope })
    }

    /// Records the embedding gather of `n` tokens (ids in `b.ids`) into `b.x`.
    pub(super) fn record_embed(&self, gpu: &Gpu, b: &Buffers, n: u32) -> GpuResult<Program> {
        let mut p = Program::new();
        embedding::record(&mut p, gpu, &self.weights.token_embd, &b.ids, &b.x, n)?;
        Ok(p)
    }

    /// Records the blocks and the head over `n` embedded tokens in `b.x` at the step's positions.
    pub(super) fn record(&self, gpu: &Gpu, b: &Buffers, n: u32, mode: LogitsMode) -> GpuResult<Program> {
        let c = &self.cfg;
        let (d, ff, hd) = (c.n_embd, c.n_ff, c.head_dim);
        let mut p = Program::new();
        let q_scale = QScale { beta: c.query_scale_beta, orig_ctx: c.query_scale_orig };
        let q_layout = RopeLayout::dense(c.n_head, hd, n, RopeMode::Adjacent);
        let kv_layout = RopeLayout::dense(c.n_head_kv, hd, n, RopeMode::Adjacent);
        let kv = if b.precision.kv_f16 { KvDtype::F16 } else { KvDtype::F32 };
        let mm = if b.precision.compute_f16 { MatmulCompute::F16 } else { MatmulCompute::F32 };
        let shape = AttnShape { kv, ..AttnShape::new(c.n_head, c.n_head_kv, hd, n) };

        for (l, (k_cache, v_cache)) in self.weights.layers.iter().zip(&b.kv) {
            norm::rms_norm(&mut p, gpu, &b.x, &l.attn_norm, &b.h, n, d, c.rms_eps)?;
            linear(&mut p, gpu, &l.wq, &b.h, &b.q, n, mm)?;
            linear(&mut p, gpu, &l.wk, &b.h, &b.k, n, mm)?;
            linear(&mut p, gpu, &l.wv, &b.h, &b.v, n, mm)?;
            rope_inplace(&mut p, gpu, &b.step, &self.rope, &b.q, &q_layout, q_scale)?;
            rope_kv_store(&mut p, gpu, &b.step, &self.rope, &b.k, &kv_layout, &b.v, &kv_layout, k_cache, v_cache, kv)?;
            if n == 1 {
                attention_decode(&mut p, gpu, &shape, &b.step, &b.q, k_cache, v_cache, &b.attn_scratch, &b.attn)?;
            } else {
                attention_prefill(&mut p, gpu, &shape, &b.step, &b.q, k_cache, v_cache, &b.attn)?;
            }
            linear(&mut p, gpu, &l.wo, &b.attn, &b.h, n, mm)?;
            elementwise::add_inplace(&mut p, gpu, &b.h, &b.x, n * d)?;
            norm::rms_norm(&mut p, gpu, &b.x, &l.ffn_norm, &b.h, n, d, c.rms_eps)?;
            linear(&mut p, gpu, &l.w_gate, &b.h, &b.gate, n, mm)?;
            linear(&mut p, gpu, &l.w_up, &b.h, &b.up, n, mm)?;
            elementwise::silu_mul_inplace(&mut p, gpu, &b.up, &b.gate, n * ff)?;
            linear(&mut p, gpu, &l.w_down, &b.gate, &b.h, n, mm)?;
            elementwise::add_inplace(&mut p, gpu, &b.h, &b.x, n * d)?;
        }
        let head = self.weights.lm_head();
        match mode {
            LogitsMode::None => {}
            LogitsMode::All => {
                norm::rms_norm(&mut p, gpu, &b.x, &self.weights.output_norm, &b.h, n, d, c.rms_eps)?;
                linear(&mut p, gpu, head, &b.h, &b.logits, n, mm)?;
            }
            LogitsMode::LastAndSample => {
                let row = 4 * d as u64;
                p.copy(&b.x, (n - 1) as u64 * row, &b.x_last, 0, row);
                norm::rms_norm(&mut p, gpu, &b.x_last, &self.weights.output_norm, &b.h, 1, d, c.rms_eps)?;
                matvec::record(&mut p, gpu, head, &b.h, &b.logits, 1)?;
                b.sampler.record(&mut p, gpu, &b.logits, 0, &b.ids, 0)?;
            }
        }
        Ok(p)
    }
}

/// `y = x W^T` for `n` rows: the matrix-vector kernel for one row, the tiled one (at `mm`
/// precision) otherwise.
#[rustfmt::skip]
fn linear(
    p: &mut Program, gpu: &Gpu, w: &GpuWeight, x: &wgpu::Buffer, y: &wgpu::Buffer, n: u32, mm: MatmulCompute,
) -> GpuResult<()> {
    if n == 1 {
        matvec::record(p, gpu, w, x, y, 1)
    } else {
        matmul::record_with(p, gpu, w, x, y, n, mm)
    }
}
