//! Tiled matrix products for prefill (`shaders/matmul.wgsl`): `Y = X · Wᵀ` with X `[m][k]`
//! f32 and W a [`GpuWeight`] `[n][k]` in any supported format, dequantized tile by tile into
//! workgroup memory. Shared-memory SGEMM tiling (64 x 64 output tile, K step 32, 4 x 4
//! register block per thread); reference: llama.cpp `mul_mat` (ggml-webgpu / ggml-vulkan).
//!
//! [`MatmulCompute::F16`] (devices with `shader-f16` only) stages f16 tiles and sums f16
//! products per K step of 32 into f32 totals: half the workgroup memory and, on GPUs with
//! fast f16, twice the math rate, for ~1e-3 relative error (see `tests/kernels_matmul.rs`).
//! [`record_into`] writes into a column window of a wider output and can add into it (the
//! residual add of `wo` and `ffn_down`).

use bytemuck::{Pod, Zeroable};

use super::matvec::{check_len, Epilogue, Output};
use super::quant::{GpuWeight, WLayout};
use crate::gpu::{grid_1d, Access, Arg, Gpu, GpuError, KernelSpec, Launch, Program, Result, WeightRead};

pub(super) const SHADER: &str = include_str!("../../shaders/matmul.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];
/// Output tile (`BM`, `BN` in the shader).
const TILE_M: u32 = 64;
const TILE_N: u32 = 64;

/// Tile type and inner-product precision of the tiled matmul.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatmulCompute {
    /// f32 tiles, f32 accumulation: the default, on every adapter.
    #[default]
    F32,
    /// f16 tiles and f16 products summed per K step of 32, accumulated in f32 across steps.
    /// Needs `shader-f16` ([`Caps::f16`](crate::gpu::Caps)); inputs beyond ±65504 are clamped.
    F16,
}

impl MatmulCompute {
    /// The prelude that sets the shader's tile type (`enable f16;` comes first in the module).
    pub(super) fn prelude(self) -> &'static str {
        match self {
            MatmulCompute::F32 => "alias MMT = f32;\nconst MM_F16 = false;\n",
            MatmulCompute::F16 => "enable f16;\nalias MMT = f16;\nconst MM_F16 = true;\n",
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    layout: WLayout,
    m: u32,
    n: u32,
    k: u32,
    row_offset: u32,
    y_stride: u32,
    x_stride: u32,
    x_row0: u32,
    y_row0: u32,
}

/// Records `y[i][r] = sum_k x[i][k] * w[r][k]` for `i < m`: `x` is `[m][w.cols]` f32, `y` is
/// `[m][w.rows]` f32. One dispatch per weight part. f32 math ([`record_with`] picks).
pub fn record(prog: &mut Program, gpu: &Gpu, w: &GpuWeight, x: &wgpu::Buffer, y: &wgpu::Buffer, m: u32) -> Result<()> {
    record_with(prog, gpu, w, x, y, m, MatmulCompute::F32)
}

/// [`record`] with the given precision; [`MatmulCompute::F16`] fails on a device without
/// `shader-f16` (callers check [`Caps::f16`](crate::gpu::Caps) and fall back to f32).
pub fn record_with(
    prog: &mut Program,
    gpu: &Gpu,
    w: &GpuWeight,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    m: u32,
    compute: MatmulCompute,
) -> Result<()> {
    record_rows(prog, gpu, w, (x, 0), (y, 0), m, compute)
}

/// [`record_with`] on a window of rows: product row `i < m` reads row `x.1 + i` of `x.0`
/// (`[..][w.cols]`) and writes row `y.1 + i` of `y.0` (`[..][w.rows]`), so a long sequence
/// can go through a weight in chunks with a chunk-sized output buffer.
pub fn record_rows(
    prog: &mut Program,
    gpu: &Gpu,
    w: &GpuWeight,
    x: (&wgpu::Buffer, u32),
    y: (&wgpu::Buffer, u32),
    m: u32,
    compute: MatmulCompute,
) -> Result<()> {
    push(prog, gpu, w, x, y, Output::dense(w, Epilogue::Store), m, compute)
}

/// [`record_with`] into the columns `out` names ([`Epilogue::Store`] or [`Epilogue::Add`]).
#[allow(clippy::too_many_arguments)]
pub fn record_into(
    prog: &mut Program,
    gpu: &Gpu,
    w: &GpuWeight,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    out: Output,
    m: u32,
    compute: MatmulCompute,
) -> Result<()> {
    push(prog, gpu, w, (x, 0), (y, 0), out, m, compute)
}

#[allow(clippy::too_many_arguments)]
fn push(
    prog: &mut Program,
    gpu: &Gpu,
    w: &GpuWeight,
    (x, x_row0): (&wgpu::Buffer, u32),
    (y, y_row0): (&wgpu::Buffer, u32),
    out: Output,
    m: u32,
    compute: MatmulCompute,
) -> Result<()> {
    if out.epilogue == Epilogue::SiluMul {
        return Err(GpuError::Shape(format!("matmul {}: no SiLU-gated epilogue (use elementwise::silu_mul_halves)", w.label)));
    }
    check_len("matmul x", x, (x_row0 as u64 + m as u64) * w.cols as u64)?;
    check_len("matmul y", y, (y_row0 as u64 + m.max(1) as u64 - 1) * out.stride as u64 + out.offset as u64 + w.rows as u64)?;
    if compute == MatmulCompute::F16 && !gpu.caps.f16 {
        return Err(GpuError::Pipeline {
            label: "matmul (f16)".into(),
            message: "the device has no shader-f16; use MatmulCompute::F32".into(),
        });
    }
    let spec = w
        .specialise(KernelSpec::new("matmul", SHADER, "matmul", BINDINGS))
        .with_prefix(compute.prelude())
        .with_constant("ADD", (out.epilogue == Epilogue::Add) as i64);
    for part in &w.parts {
        let params = Params {
            layout: w.layout(part),
            m,
            n: part.rows,
            k: w.cols,
            row_offset: out.offset + part.row_offset,
            y_stride: out.stride,
            x_stride: w.cols,
            x_row0,
            y_row0,
        };
        let mut grid = grid_1d(part.rows.div_ceil(TILE_N));
        grid[2] = m.div_ceil(TILE_M).max(1);
        let args = [Arg::Buf(&part.buffer), Arg::Buf(x), Arg::Buf(y)];
        prog.push_with_params(gpu, &spec, &params, &args, grid)?;
        // Each workgroup reads its TILE_M rows of X.
        let activation_bytes = 4 * w.cols as u64 * TILE_M.min(m) as u64;
        let weight = WeightRead { label: w.label.clone(), bytes: part.bytes, activation_bytes };
        prog.set_launch(Launch { invocations: 256, weight: Some(weight) });
    }
    Ok(())
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
