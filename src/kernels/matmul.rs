//! Tiled matrix products for prefill (`shaders/matmul.wgsl`): `Y = X · Wᵀ` with X `[m][k]`
//! f32 and W a [`GpuWeight`] `[n][k]` in any supported format, dequantized tile by tile into
//! workgroup memory. Shared-memory SGEMM tiling (64 x 64 output tile, K step 32, 4 x 4
//! register block per thread); reference: llama.cpp `mul_mat` (ggml-webgpu / ggml-vulkan).

use bytemuck::{Pod, Zeroable};

use super::matvec::check_len;
use super::quant::{GpuWeight, WLayout};
use crate::gpu::{grid_1d, Access, Arg, Gpu, KernelSpec, Program, Result};

const SHADER: &str = include_str!("../../shaders/matmul.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];
/// Output tile (`BM`, `BN` in the shader).
const TILE_M: u32 = 64;
const TILE_N: u32 = 64;

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
    _pad: [u32; 2],
}

/// Records `y[i][r] = sum_k x[i][k] * w[r][k]` for `i < m`: `x` is `[m][w.cols]` f32, `y` is
/// `[m][w.rows]` f32. One dispatch per weight part.
pub fn record(prog: &mut Program, gpu: &Gpu, w: &GpuWeight, x: &wgpu::Buffer, y: &wgpu::Buffer, m: u32) -> Result<()> {
    check_len("matmul x", x, m as u64 * w.cols as u64)?;
    check_len("matmul y", y, m as u64 * w.rows as u64)?;
    let spec = w.specialise(KernelSpec::new("matmul", SHADER, "matmul", BINDINGS));
    for part in &w.parts {
        let params = Params {
            layout: w.layout(part),
            m,
            n: part.rows,
            k: w.cols,
            row_offset: part.row_offset,
            y_stride: w.rows,
            x_stride: w.cols,
            _pad: [0; 2],
        };
        let mut grid = grid_1d(part.rows.div_ceil(TILE_N));
        grid[2] = m.div_ceil(TILE_M).max(1);
        let args = [Arg::Buf(&part.buffer), Arg::Buf(x), Arg::Buf(y)];
        prog.push_with_params(gpu, &spec, &params, &args, grid)?;
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
