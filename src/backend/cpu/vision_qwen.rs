//! The Qwen2-VL-family vision encoder's data-movement ops, those of
//! [`kernels::vision_qwen`](crate::kernels::vision_qwen) without a CPU twin elsewhere (its
//! LayerNorm is [`norm::layer_norm`](super::norm::layer_norm), its GELU
//! [`elementwise::gelu_tanh`](super::elementwise::gelu_tanh)): the row-broadcast bias add, the
//! column-slice copy (q/k/v out of the fused qkv product) and the weighted row gather (the
//! bilinearly interpolated position embeddings, the patch reordering into 2x2 merge windows),
//! whose f32 sums run in the order of
//! [`gather_rows_ref`](crate::kernels::vision_qwen::gather_rows_ref). Rows split over the pool.

use super::ops::{check_len, check_min_len, for_each_chunk, invalid, rows_per_task, ShapeError};
use super::pool::ThreadPool;
pub use crate::kernels::shapes::Tap;

/// `x[r][c] += bias[c]` over the rows of `dim` of `x`.
pub fn add_bias(pool: &ThreadPool, bias: &[f32], x: &mut [f32], dim: usize) -> Result<(), ShapeError> {
    const OP: &str = "add_bias";
    if dim == 0 || !x.len().is_multiple_of(dim) {
        return Err(invalid(OP, format!("{} elements are not rows of {dim}", x.len())));
    }
    check_len(OP, "bias", bias.len(), dim)?;
    let per = rows_per_task(pool, x.len() / dim, dim);
    for_each_chunk(pool, x, per * dim, |_, x| {
        for row in x.chunks_exact_mut(dim) {
            row.iter_mut().zip(bias).for_each(|(x, &b)| *x += b);
        }
    });
    Ok(())
}

/// `out[r][c] = x[r * stride + offset + c]` for the rows of `dim` of `out`.
pub fn copy_cols(
    pool: &ThreadPool,
    x: &[f32],
    out: &mut [f32],
    dim: usize,
    stride: usize,
    offset: usize,
) -> Result<(), ShapeError> {
    const OP: &str = "copy_cols";
    if dim == 0 || !out.len().is_multiple_of(dim) || offset + dim > stride {
        return Err(invalid(OP, format!("{} outputs in rows of {dim}, columns {offset}.. of {stride}", out.len())));
    }
    let rows = out.len() / dim;
    check_min_len(OP, "x", x.len(), rows * stride)?;
    let per = rows_per_task(pool, rows, dim);
    for_each_chunk(pool, out, per * dim, |i, out| {
        for (j, o) in out.chunks_exact_mut(dim).enumerate() {
            o.copy_from_slice(&x[(i * per + j) * stride + offset..][..dim]);
        }
    });
    Ok(())
}

/// `out[r] = Σ_k taps[r*k_per_row + k].weight * src[taps[..].row]` over rows of `dim` (`taps`
/// holds `k_per_row` taps for each output row, each naming a row of `src`).
pub fn gather_rows(
    pool: &ThreadPool,
    src: &[f32],
    taps: &[Tap],
    out: &mut [f32],
    k_per_row: usize,
    dim: usize,
) -> Result<(), ShapeError> {
    const OP: &str = "gather_rows";
    if dim == 0 || k_per_row == 0 || !out.len().is_multiple_of(dim) {
        return Err(invalid(OP, format!("{} outputs in rows of {dim}, {k_per_row} taps a row", out.len())));
    }
    let rows = out.len() / dim;
    check_len(OP, "taps", taps.len(), rows * k_per_row)?;
    let src_rows = src.len() / dim;
    if let Some(t) = taps.iter().find(|t| t.row as usize >= src_rows) {
        return Err(invalid(OP, format!("a tap reads row {} of {src_rows}", t.row)));
    }
    let per = rows_per_task(pool, rows, dim * k_per_row);
    for_each_chunk(pool, out, per * dim, |i, out| {
        for (o, row_taps) in out.chunks_exact_mut(dim).zip(taps[i * per * k_per_row..].chunks_exact(k_per_row)) {
            o.fill(0.0);
            // Tap by tap, each a pass over the row: the reference's order of the sums.
            for t in row_taps {
                let s = &src[t.row as usize * dim..][..dim];
                o.iter_mut().zip(s).for_each(|(o, &v)| *o += t.weight * v);
            }
        }
    });
    Ok(())
}
