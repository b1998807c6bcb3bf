//! Token embedding lookup, the op of [`kernels::embedding`](crate::kernels::embedding)
//! (llama.cpp `get_rows`, ggml-cpu `ggml_compute_forward_get_rows`): `out[i] = W[ids[i]]`, the
//! row of a [`Weight`] in any supported GGUF format dequantized to f32 block by block with
//! [`gguf::quant`](crate::gguf::quant)'s block dequantizers. Out-of-range ids (`>= w.rows`)
//! read nothing and give a zero row, as the GPU kernel and its
//! [`embedding_ref`](crate::kernels::embedding::embedding_ref). Tokens split over the pool.

use super::matvec::Weight;
use super::ops::{check_len, for_each_chunk, invalid, rows_per_task, ShapeError};
use super::pool::ThreadPool;
use crate::gguf::quant::block_dequantizer;

/// `out[i][c] = w[ids[i]][c]` for each of the `ids`: `out` is `[ids.len()][w.cols]`.
pub fn embedding(pool: &ThreadPool, w: &Weight, ids: &[u32], out: &mut [f32]) -> Result<(), ShapeError> {
    const OP: &str = "embedding";
    let cols = w.cols();
    check_len(OP, "out", out.len(), ids.len() * cols)?;
    let ty = w.ty();
    let block = block_dequantizer(ty).ok_or_else(|| invalid(OP, format!("no CPU dequantizer for {ty}")))?;
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let per = rows_per_task(pool, ids.len(), cols);
    for_each_chunk(pool, out, per * cols, |i, out| {
        for (o, &id) in out.chunks_exact_mut(cols).zip(&ids[i * per..]) {
            if (id as usize) < w.rows() {
                for (b, y) in w.row(id as usize).chunks_exact(ts).zip(o.chunks_exact_mut(bs)) {
                    block(b, y);
                }
            } else {
                o.fill(0.0);
            }
        }
    });
    Ok(())
}
