//! Matrix-vector products for decode (`shaders/matvec.wgsl`): `y[t] = W · x[t]` for a few
//! tokens, W a [`GpuWeight`] in any supported format. GEMV with coalesced weight reads, 4 rows
//! per thread (8 or 16 on the block path), whole-block decoding from vec4 loads for the block formats, and a one-barrier
//! workgroup-memory reduction (details in the shader); reference: llama.cpp `mul_mat_vec` (ggml-vulkan / ggml-webgpu).

use bytemuck::{Pod, Zeroable};

use super::quant::{GpuWeight, WLayout, WeightFormat};
use crate::gpu::{grid_1d, Access, Arg, Gpu, GpuError, KernelSpec, Program, Result};

pub(super) const SHADER: &str = include_str!("../../shaders/matvec.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];
/// `matvec_blk`: also vec4 views of x (binding 4) and of the weight (binding 5).
const BINDINGS_BLK: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite, Access::Read, Access::Read];
/// Rows per thread (`NR` in the shader) and threads per workgroup (`WG`).
const ROWS_PER_THREAD: u32 = 4;
/// Rows per thread of the block path (`NRB`): 16 on CPU adapters, where every storage load
/// costs a per-invocation loop, so sharing each x load among 16 rows instead of 8 saves loads
/// (measured on lavapipe: in-cache Q4_K/Q4_0 up to 2x, the other types +0-50%, noisy); 8
/// elsewhere, so that a GPU keeps twice as many workgroups.
fn rows_per_thread_blk(gpu: &Gpu) -> u32 {
    if gpu.caps.software {
        16
    } else {
        8
    }
}
const WG: u32 = 256;

/// Threads per row group of the generic path (`TPR`): 32, or one per unit of 8 columns
/// (rounded up to a power of two) when rows are shorter, so that no lane idles. On a CPU
/// adapter, where every workgroup barrier costs, this also means far fewer workgroups.
fn generic_tpr(cols: u32) -> u32 {
    cols.div_ceil(8).next_power_of_two().min(32)
}

/// Threads per row group of the block path (`TPB`), `None`: generic path. 16 threads per row
/// group (64 rows per workgroup) is faster on lavapipe (fewer idle iterations per thread);
/// matrices with fewer rows keep 32 (32 rows per workgroup) so that a GPU still gets enough
/// workgroups (3072 rows: 96).
fn block_tpb(format: WeightFormat, rows: u32) -> Option<u32> {
    use WeightFormat as W;
    match format {
        W::Q8_0 | W::Q4_0 | W::Q4_1 | W::Q4_K | W::Q6_K => Some(if rows >= 8192 { 16 } else { 32 }),
        _ => None,
    }
}

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
    let tpb = block_tpb(w.format, w.rows);
    // Q4_0 rows of an even number of blocks: two blocks per unit (their f16 scales share a
    // word). Measured on lavapipe: Q4_0 +7-25%, Q8_0 no gain.
    let pair = w.format == WeightFormat::Q4_0 && (w.cols / 32).is_multiple_of(2);
    let (spec, rows_per_wg) = match tpb {
        Some(t) => (
            w.specialise(KernelSpec::new("matvec_blk", SHADER, "matvec_blk", BINDINGS_BLK))
                .with_constant("TPB", t as i64)
                .with_constant("PAIR", pair as i64)
                .with_constant("NRB", rows_per_thread_blk(gpu) as i64),
            WG / t * rows_per_thread_blk(gpu),
        ),
        None => {
            let tpr = generic_tpr(w.cols);
            let spec = w.specialise(KernelSpec::new("matvec", SHADER, "matvec", BINDINGS)).with_constant("TPR", tpr as i64);
            (spec, WG / tpr * ROWS_PER_THREAD)
        }
    };
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
        let mut grid = grid_1d(part.rows.div_ceil(rows_per_wg));
        grid[2] = n_tok.max(1);
        if tpb.is_some() {
            let args = [Arg::Buf(&part.buffer), Arg::Buf(x), Arg::Buf(y), Arg::Buf(x), Arg::Buf(&part.buffer)];
            prog.push_with_params(gpu, &spec, &params, &args, grid)?;
        } else {
            let args = [Arg::Buf(&part.buffer), Arg::Buf(x), Arg::Buf(y)];
            prog.push_with_params(gpu, &spec, &params, &args, grid)?;
        }
    }
    Ok(())
}

/// Fails when `buf` holds fewer than `floats` f32 values.
pub(crate) fn check_len(what: &str, buf: &wgpu::Buffer, floats: u64) -> Result<()> {
    if buf.size() < floats * 4 {
        return Err(GpuError::Shape(format!("{what}: buffer of {} bytes, {} needed", buf.size(), floats * 4)));
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
