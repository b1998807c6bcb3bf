//! Grouped-query self-attention (Ainslie et al. 2023) with rotary position embeddings and a
//! KV cache, as in transformers' `LlamaAttention`: q/k/v projections, RoPE on q and k (the
//! rotated k and v are stored in the cache at the step's positions), causal attention over
//! the cached positions, the output projection. Decode (one token) uses the split-K decode
//! kernel, longer chunks the tiled prefill kernel.

use crate::gpu::{Gpu, Program, Result};
use crate::kernels::attention::{attention_decode, attention_prefill, AttnShape, DecodeScratch, KvDtype};
use crate::kernels::matmul::MatmulCompute;
use crate::kernels::quant::GpuWeight;
use crate::kernels::rope::{rope_inplace, rope_kv_store, QScale, RopeFreqs, RopeLayout, RopeMode};
use crate::source::{LoadError, LoadQuant, WeightLoader};

use super::linear;

/// The four projections of one attention layer.
pub struct AttentionWeights {
    pub wq: GpuWeight, // [n_head * head_dim][n_embd]
    pub wk: GpuWeight, // [n_kv_head * head_dim][n_embd]
    pub wv: GpuWeight, // [n_kv_head * head_dim][n_embd]
    pub wo: GpuWeight, // [n_embd][n_head * head_dim]
}

/// Head counts, RoPE and the query scaling of one family's attention.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub n_head: u32,
    pub n_kv_head: u32,
    pub head_dim: u32,
    /// Ministral 3's position-dependent query scaling (beta 0: off).
    pub q_scale: QScale,
}

/// The buffers one attention pass reads and writes: `x` the normed input `[n][n_embd]`,
/// `out` the projected output `[n][n_embd]`, the rest scratch sized for the largest chunk.
pub struct AttentionIo<'a> {
    pub step: &'a wgpu::Buffer,
    pub x: &'a wgpu::Buffer,
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub attn: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    pub decode_scratch: &'a DecodeScratch,
    /// This layer's cache.
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    pub kv: KvDtype,
}

impl AttentionWeights {
    /// Loads `{prefix}_q`, `_k`, `_v`, `_output` (llama.cpp's `blk.N.attn`).
    pub fn load(
        gpu: &Gpu,
        src: &mut dyn WeightLoader,
        prefix: &str,
        n_embd: u32,
        s: &AttentionShape,
    ) -> std::result::Result<AttentionWeights, LoadError> {
        let (q, kv) = (s.n_head * s.head_dim, s.n_kv_head * s.head_dim);
        let mut matrix =
            |name: &str, rows, cols| src.matrix(gpu, &format!("{prefix}_{name}.weight"), rows, cols, LoadQuant::Keep);
        Ok(AttentionWeights {
            wq: matrix("q", q, n_embd)?,
            wk: matrix("k", kv, n_embd)?,
            wv: matrix("v", kv, n_embd)?,
            wo: matrix("output", n_embd, q)?,
        })
    }

    pub fn matrices(&self) -> [&GpuWeight; 4] {
        [&self.wq, &self.wk, &self.wv, &self.wo]
    }

    /// Records the layer over `n` tokens at the step's positions.
    pub fn record(
        &self,
        p: &mut Program,
        gpu: &Gpu,
        s: &AttentionShape,
        rope: &RopeFreqs,
        io: &AttentionIo<'_>,
        n: u32,
        mm: MatmulCompute,
    ) -> Result<()> {
        let q_layout = RopeLayout::dense(s.n_head, s.head_dim, n, RopeMode::Adjacent);
        let kv_layout = RopeLayout::dense(s.n_kv_head, s.head_dim, n, RopeMode::Adjacent);
        let shape = AttnShape { kv: io.kv, ..AttnShape::new(s.n_head, s.n_kv_head, s.head_dim, n) };
        linear(p, gpu, &self.wq, io.x, io.q, n, mm)?;
        linear(p, gpu, &self.wk, io.x, io.k, n, mm)?;
        linear(p, gpu, &self.wv, io.x, io.v, n, mm)?;
        rope_inplace(p, gpu, io.step, rope, io.q, &q_layout, s.q_scale)?;
        rope_kv_store(p, gpu, io.step, rope, io.k, &kv_layout, io.v, &kv_layout, io.k_cache, io.v_cache, io.kv)?;
        if n == 1 {
            attention_decode(p, gpu, &shape, io.step, io.q, io.k_cache, io.v_cache, io.decode_scratch, io.attn)?;
        } else {
            attention_prefill(p, gpu, &shape, io.step, io.q, io.k_cache, io.v_cache, io.attn)?;
        }
        linear(p, gpu, &self.wo, io.attn, io.out, n, mm)
    }
}
