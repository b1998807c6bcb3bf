//! Building blocks the decoder families share, each recording its dispatches into a
//! [`Program`]: [`attention`] (grouped-query self-attention with RoPE and its KV cache),
//! [`ffn`] (the gated MLP), [`head`] (token embedding, final norm, LM head and sampling).
//! Norms, RoPE tables and the kernels themselves live in `crate::kernels`.

pub mod attention;
pub mod ffn;
pub mod head;

use crate::gpu::{Gpu, Program, Result};
use crate::kernels::matmul::{self, MatmulCompute};
use crate::kernels::matvec;
use crate::kernels::quant::GpuWeight;

/// `y = x W^T` for `n` rows: the matrix-vector kernel for one row, the tiled one (at `mm`
/// precision) otherwise.
pub fn linear(
    p: &mut Program,
    gpu: &Gpu,
    w: &GpuWeight,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    n: u32,
    mm: MatmulCompute,
) -> Result<()> {
    if n == 1 {
        matvec::record(p, gpu, w, x, y, 1)
    } else {
        matmul::record_with(p, gpu, w, x, y, n, mm)
    }
}
