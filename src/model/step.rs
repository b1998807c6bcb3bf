//! The buffers every family's recorded step binds: the step uniform (positions), token ids
//! and their multimodal RoPE positions, the residual stream, logits and the GPU sampler.
//! Families add their own scratch; the per-sequence caches are in [`super::state`]. All are
//! allocated once per context, sized for the largest chunk.

use crate::backend::gpu::{Caps, Geometry, Result};
use crate::backend::{Buffer, Device};
use crate::kernels::attention::{KvDtype, StepParams};
use crate::kernels::matmul::MatmulCompute;
use crate::kernels::sample::Sampler;

/// Which logits a forward pass computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogitsMode {
    /// None (a prefill chunk that is not the last).
    None,
    /// The last token's, then a token is selected on the GPU (the CPU backend has no device
    /// sampler: the host picks from the logits).
    LastAndSample,
    /// Every token's (teacher forcing, the `logits` command).
    All,
    /// Each sequence's last token's (a batched step: the host samples each).
    LastOfEach,
}

/// Reduced-precision paths. [`Precision::for_adapter`] is what users get: an f16 KV cache
/// wherever the device keeps one (every wgpu device; the CPU backend's caches are f32: half
/// the cache memory and attention reads) and f16 matmul tiles on GPUs with
/// `shader-f16`; [`Precision::F32`] is the exact path that matches the f32 reference (the
/// logits tests ask for it). Their error is measured on SmolLM2 in `tests/model_f16.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Precision {
    /// f16 KV cache: half the cache memory and half the attention reads. Needs no
    /// `shader-f16` (packed with `pack2x16float`), so it works on every adapter.
    pub kv_f16: bool,
    /// f16 tiles and math in the prefill matmuls (f32 accumulation across K steps). Only
    /// where `caps.f16`; elsewhere the context falls back to f32.
    pub compute_f16: bool,
}

impl Default for Precision {
    /// The f16 KV cache (every adapter), f32 matmuls: the adapter-independent default.
    fn default() -> Self {
        Precision { kv_f16: true, compute_f16: false }
    }
}

impl Precision {
    /// f32 everywhere: matches transformers' f32 logits.
    pub const F32: Precision = Precision { kv_f16: false, compute_f16: false };

    /// The default for an adapter: the f16 KV cache, and f16 matmul tiles where the adapter
    /// has `shader-f16` and takes the GPU launch shape (GPUs run f16 math at up to twice the
    /// f32 rate; CPU adapters emulate it, so they keep f32).
    pub fn for_adapter(caps: &Caps) -> Precision {
        Precision { kv_f16: caps.kv_f16, compute_f16: caps.f16 && caps.geometry == Geometry::Gpu }
    }

    /// Every reduced-precision path the device supports.
    pub fn reduced(caps: &Caps) -> Precision {
        Precision { kv_f16: caps.kv_f16, compute_f16: caps.f16 }
    }

    pub fn kv_dtype(&self) -> KvDtype {
        if self.kv_f16 {
            KvDtype::F16
        } else {
            KvDtype::F32
        }
    }

    pub fn matmul(&self) -> MatmulCompute {
        if self.compute_f16 {
            MatmulCompute::F16
        } else {
            MatmulCompute::F32
        }
    }
}

/// Which kernel a step's products run on: the decode kernel (one token, or one token of each
/// sequence of a batched step: each row computed exactly as it would be alone) or the tiled
/// matmul at a precision (prefill chunks, and batched steps holding one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Products {
    Matvec,
    Matmul(MatmulCompute),
}

/// The buffers shared by every family's step.
pub struct StepBuffers {
    /// [`StepParams`]: cache start, tokens and RoPE position of this step.
    pub step: Buffer,
    /// `[chunk]` token ids in; the sampled id out (row 0).
    pub ids: Buffer,
    /// `[3][n]` u32 (t, h, w) RoPE positions of the step's `n` tokens, for decoders with
    /// multimodal RoPE ([`super::Decoder::uses_mrope`]; written by the context each step).
    pub positions: Buffer,
    /// The residual stream, `[chunk][n_embd]`.
    pub x: Buffer,
    /// The last row of `x` (the one the head reads when sampling); a batched step's holds
    /// each sequence's last row.
    pub x_last: Buffer,
    /// A normed or projected `[chunk][n_embd]` (block inputs and outputs).
    pub h: Buffer,
    /// `[logits_rows][vocab]`.
    pub logits: Buffer,
    /// The precision in effect (`compute_f16` cleared on devices without `shader-f16`).
    pub precision: Precision,
    /// Prompt chunks' products on the decode kernel too: on CPU adapters, whose block-format
    /// matvec decodes each weight unit once for up to 8 tokens and runs a chunk at about
    /// twice the tiled matmul's rate (lavapipe, SmolLM2, 64 and 128 tokens: 2.2-2.3x); the
    /// other formats' matvec takes the chunk's tokens one grid layer each.
    pub chunks_by_matvec: bool,
    pub sampler: Option<Sampler>,
}

impl StepBuffers {
    pub fn new(dev: &Device, chunk: u32, n_embd: u32, vocab: u32, logits_rows: u32, precision: Precision) -> Result<StepBuffers> {
        let f32s = |rows: u32, cols: u32| 4 * rows as u64 * cols as u64;
        Ok(StepBuffers {
            step: StepParams::create_buffer(dev)?,
            ids: dev.storage("ids", f32s(chunk, 1))?,
            positions: dev.storage("positions", f32s(chunk, 3))?,
            x: dev.storage("x", f32s(chunk, n_embd))?,
            x_last: dev.storage("x_last", f32s(1, n_embd))?,
            h: dev.storage("h", f32s(chunk, n_embd))?,
            logits: dev.storage("logits", f32s(logits_rows, vocab))?,
            precision,
            chunks_by_matvec: matches!(dev, Device::Gpu(_)) && dev.caps().geometry == Geometry::Cpu,
            // The CPU backend samples on the host.
            sampler: match dev {
                Device::Gpu(_) => Some(Sampler::new(dev, vocab)?),
                Device::Cpu(_) => None,
            },
        })
    }

    /// The kernel of a step's products over `n` rows of one sequence: the decode kernel for
    /// one token (and for chunks where [`Self::chunks_by_matvec`]), the tiled matmul for
    /// prefill chunks (a batched step's: `super::rows::Rows::products`).
    pub fn products(&self, n: u32) -> Products {
        match n == 1 || self.chunks_by_matvec {
            true => Products::Matvec,
            false => Products::Matmul(self.precision.matmul()),
        }
    }
}
