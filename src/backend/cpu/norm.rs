//! RMSNorm (Zhang & Sennrich 2019; transformers `LlamaRMSNorm`, llama.cpp ggml-cpu
//! `ggml_compute_forward_rms_norm_f32` then the weight multiply) and LayerNorm with bias
//! (transformers `nn.LayerNorm`, ggml-cpu `ggml_compute_forward_norm_f32`), row by row, rows split
//! over the pool. Sums are f32 in eight lanes (vectorised); they match
//! [`kernels::norm::rms_norm_ref`](crate::kernels::norm::rms_norm_ref) and
//! [`kernels::vision_qwen::layer_norm_ref`](crate::kernels::vision_qwen::layer_norm_ref).

use super::ops::{check_len, for_each_chunk, invalid, rows_per_task, ShapeError};
use super::pool::ThreadPool;

const LANES: usize = 8;

/// `Σ f(v)` over `x` in f32, in [`LANES`] partial sums.
#[inline]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|&v| f(v)).sum::<f32>()
}

fn check(op: &'static str, x: &[f32], y: &[f32], w: &[f32], dim: usize) -> Result<(), ShapeError> {
    if dim == 0 || !x.len().is_multiple_of(dim) {
        return Err(invalid(op, format!("{} elements are not rows of {dim}", x.len())));
    }
    check_len(op, "y", y.len(), x.len())?;
    check_len(op, "w", w.len(), dim)
}

/// `y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w` for each row of `dim` elements of `x` (rows:
/// `x.len() / dim`); `w` has `dim` elements, `y` as many as `x`.
pub fn rms_norm(pool: &ThreadPool, x: &[f32], w: &[f32], y: &mut [f32], dim: usize, eps: f32) -> Result<(), ShapeError> {
    check("rms_norm", x, y, w, dim)?;
    let rows = rows_per_task(pool, x.len() / dim, dim);
    for_each_chunk(pool, y, rows * dim, |i, y| {
        let x = &x[i * rows * dim..][..y.len()];
        for (xr, yr) in x.chunks_exact(dim).zip(y.chunks_exact_mut(dim)) {
            let ms = lane_sum(xr, |v| v * v) / dim as f32;
            let s = 1.0 / (ms + eps).sqrt();
            for ((o, &v), &w) in yr.iter_mut().zip(xr).zip(w) {
                *o = v * s * w;
            }
        }
    });
    Ok(())
}

/// `y[r] = (x[r] - mean) / sqrt(var + eps) * w + b` for each row of `dim` elements (biased
/// variance, two passes as PyTorch); `w`, `b` have `dim` elements, `y` as many as `x`.
pub fn layer_norm(
    pool: &ThreadPool,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    dim: usize,
    eps: f32,
) -> Result<(), ShapeError> {
    check("layer_norm", x, y, w, dim)?;
    check_len("layer_norm", "b", b.len(), dim)?;
    let rows = rows_per_task(pool, x.len() / dim, dim);
    for_each_chunk(pool, y, rows * dim, |i, y| {
        let x = &x[i * rows * dim..][..y.len()];
        for (xr, yr) in x.chunks_exact(dim).zip(y.chunks_exact_mut(dim)) {
            let mean = lane_sum(xr, |v| v) / dim as f32;
            let var = lane_sum(xr, |v| (v - mean) * (v - mean)) / dim as f32;
            let s = 1.0 / (var + eps).sqrt();
            for (((o, &v), &w), &b) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                *o = (v - mean) * s * w + b;
            }
        }
    });
    Ok(())
}
