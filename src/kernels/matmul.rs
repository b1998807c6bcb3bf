//! Tiled matrix products for prefill: `Y = X · Wᵀ` with X `[m][k]` f32 and W a [`Weight`]
//! `[n][k]` in any supported format, at the [`MatmulCompute`] precision the caller picks (the
//! GPU's: the CPU's matmul runs in its device's mode). [`record_into`] writes into a column
//! window of a wider output and can add into it (the residual add of `wo` and `ffn_down`). The
//! GPU side in `backend::gpu::matmul` (`shaders/matmul.wgsl`, its launch shapes), the CPU side
//! in `backend::cpu::matmul`.

pub use super::shapes::MatmulCompute;

use super::matvec::{cpu_product, Epilogue, Output, Product};
use super::quant::Weight;
use crate::backend::gpu::{self, Result};
use crate::backend::{Buffer, Device, On, Program};

/// Records `y[i][r] = sum_k x[i][k] * w[r][k]` for `i < m`: `x` is `[m][w.cols]` f32, `y` is
/// `[m][w.rows]` f32. One dispatch per weight part. f32 math ([`record_with`] picks).
pub fn record(prog: &mut Program, dev: &Device, w: &Weight, x: &Buffer, y: &Buffer, m: u32) -> Result<()> {
    record_with(prog, dev, w, x, y, m, MatmulCompute::F32)
}

/// [`record`] with the given precision; [`MatmulCompute::F16`] fails on a device without
/// `shader-f16` (callers check [`Caps::f16`](crate::backend::gpu::Caps) and fall back to f32).
pub fn record_with(
    prog: &mut Program,
    dev: &Device,
    w: &Weight,
    x: &Buffer,
    y: &Buffer,
    m: u32,
    compute: MatmulCompute,
) -> Result<()> {
    record_rows(prog, dev, w, (x, 0), (y, 0), m, compute)
}

/// [`record_with`] on a window of rows: product row `i < m` reads row `x.1 + i` of `x.0`
/// (`[..][w.cols]`) and writes row `y.1 + i` of `y.0` (`[..][w.rows]`), so a long sequence
/// can go through a weight in chunks with a chunk-sized output buffer.
pub fn record_rows(
    prog: &mut Program,
    dev: &Device,
    w: &Weight,
    x: (&Buffer, u32),
    y: (&Buffer, u32),
    m: u32,
    compute: MatmulCompute,
) -> Result<()> {
    let out = Output::dense(w, Epilogue::Store);
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::matmul::record(prog, gpu, w, (x.0.gpu()?, x.1), (y.0.gpu()?, y.1), out, m, compute),
        On::Cpu(prog, cpu) => cpu_product(prog, cpu, Product::Matmul, w, x, y, out, m),
    }
}

/// [`record_with`] into the columns `out` names ([`Epilogue::Store`] or [`Epilogue::Add`]).
#[allow(clippy::too_many_arguments)]
pub fn record_into(
    prog: &mut Program,
    dev: &Device,
    w: &Weight,
    x: &Buffer,
    y: &Buffer,
    out: Output,
    m: u32,
    compute: MatmulCompute,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::matmul::record(prog, gpu, w, (x.gpu()?, 0), (y.gpu()?, 0), out, m, compute),
        On::Cpu(prog, cpu) => cpu_product(prog, cpu, Product::Matmul, w, (x, 0), (y, 0), out, m),
    }
}

/// CPU reference of [`record`] on dequantized `w` (`[n][k]` f32), f64 accumulation.
pub fn matmul_ref(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        let xi = &x[i * k..(i + 1) * k];
        for r in 0..n {
            let wr = &w[r * k..(r + 1) * k];
            y[i * n + r] = wr.iter().zip(xi).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32;
        }
    }
    y
}
