//! Matrix-vector products for decode (`shaders/matvec.wgsl`): `y[t] = W · x[t]` for a few
//! tokens, W a [`GpuWeight`] in any supported format. GEMV with coalesced weight reads and a
//! workgroup-memory reduction; reference: llama.cpp `mul_mat_vec` (ggml-vulkan / ggml-webgpu).

use bytemuck::{Pod, Zeroable};

use super::quant::{GpuWeight, WLayout};
use crate::gpu::{grid_1d, Access, Arg, Gpu, GpuError, KernelSpec, Program, Result};

const SHADER: &str = include_str!("../../shaders/matvec.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];
/// Rows per workgroup (`RPW` in the shader).
const ROWS_PER_WG: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    layout: WLayout,
    rows: u32,
    cols: u32,
    n_tok: u32,
    row_offset: u32,
    y_stride: u32,
    x_stride: u32,
    _pad: [u32; 2],
}

/// Records `y[t][r] = sum_k w[r][k] * x[t][k]` for `t < n_tok`: `x` is `[n_tok][w.cols]` f32,
/// `y` is `[n_tok][w.rows]` f32. Meant for small `n_tok` (decode); prefill uses
/// [`super::matmul::record`]. One dispatch per weight part.
pub fn record(prog: &mut Program, gpu: &Gpu, w: &GpuWeight, x: &wgpu::Buffer, y: &wgpu::Buffer, n_tok: u32) -> Result<()> {
    check_len("matvec x", x, n_tok as u64 * w.cols as u64)?;
    check_len("matvec y", y, n_tok as u64 * w.rows as u64)?;
    let spec = w.specialise(KernelSpec::new("matvec", SHADER, "matvec", BINDINGS));
    for part in &w.parts {
        let params = Params {
            layout: w.layout(part),
            rows: part.rows,
            cols: w.cols,
            n_tok,
            row_offset: part.row_offset,
            y_stride: w.rows,
            x_stride: w.cols,
            _pad: [0; 2],
        };
        let mut grid = grid_1d(part.rows.div_ceil(ROWS_PER_WG));
        grid[2] = n_tok.max(1);
        let args = [Arg::Buf(&part.buffer), Arg::Buf(x), Arg::Buf(y)];
        prog.push_with_params(gpu, &spec, &params, &args, grid)?;
    }
    Ok(())
}

/// Fails when `buf` holds fewer than `floats` f32 values.
pub(crate) fn check_len(what: &str, buf: &wgpu::Buffer, floats: u64) -> Result<()> {
    if buf.size() < floats * 4 {
        return Err(GpuError::Device(format!("{what}: buffer of {} bytes, {} needed", buf.size(), floats * 4)));
    }
    Ok(())
}

/// CPU reference of [`record`] on dequantized `w` (`[rows][cols]` f32), f64 accumulation.
pub fn matvec_ref(w: &[f32], rows: usize, cols: usize, x: &[f32], n_tok: usize) -> Vec<f32> {
    let mut y = vec![0.0; n_tok * rows];
    for t in 0..n_tok {
        let xt = &x[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let wr = &w[r * cols..(r + 1) * cols];
            y[t * rows + r] = wr.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32;
        }
    }
    y
}
