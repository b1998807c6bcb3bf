//! Mllama's cross-attention of text tokens over the image states, the op of
//! [`kernels::cross_attention`](crate::kernels::cross_attention) (transformers
//! `MllamaTextCrossAttention`): no RoPE, no causality; keys are `n_tiles` tiles of `tile_keys`
//! rows and token t sees the tiles its mask row marks. Layouts and [`CrossAttnShape`] are the
//! GPU kernel's (q `[n_tok][q_stride]` with head h at `h*head_dim`, k/v
//! `[n_tiles*tile_keys][n_kv_head*head_dim]`, mask `[n_tok][n_tiles]`, out
//! `[n_tok][n_head*head_dim]`). Each (token, head) is one pool task running
//! [`attention`](super::attention)'s online softmax over its visible tiles only; a token that
//! sees no tile gets a zero row, as [`cross_attention_ref`](crate::kernels::cross_attention::cross_attention_ref).
//! Also the tanh-gated residual add of the cross layers ([`gated_add`]).

use super::attention::{attend, Kv};
use super::ops::{check_len, check_min_len, for_each_chunk, invalid, rows_per_task, ShapeError};
use super::pool::ThreadPool;
use super::simd;
use crate::kernels::shapes::CrossAttnShape;

const OP: &str = "cross_attention";

/// `out = softmax_masked(q k^T * scale) v` per token and head (see the module docs).
pub fn cross_attention(
    pool: &ThreadPool,
    s: &CrossAttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[u32],
    out: &mut [f32],
) -> Result<(), ShapeError> {
    let (n_tok, n_head, n_kv, hd) = (s.n_tok as usize, s.n_head as usize, s.n_kv_head as usize, s.head_dim as usize);
    let (n_tiles, tile_keys, q_stride) = (s.n_tiles as usize, s.tile_keys as usize, s.q_stride as usize);
    if hd == 0 || n_kv == 0 || !n_head.is_multiple_of(n_kv) || q_stride < n_head * hd {
        return Err(invalid(OP, format!("{n_head} heads, {n_kv} KV heads of {hd}, q stride {q_stride}")));
    }
    if n_tiles == 0 || tile_keys == 0 {
        return Err(invalid(OP, format!("{n_tiles} tiles of {tile_keys} keys")));
    }
    let q_span = if n_tok == 0 { 0 } else { (n_tok - 1) * q_stride + n_head * hd };
    check_min_len(OP, "q", q.len(), q_span)?;
    let kvs = n_kv * hd;
    check_len(OP, "k", k.len(), n_tiles * tile_keys * kvs)?;
    check_len(OP, "v", v.len(), n_tiles * tile_keys * kvs)?;
    check_len(OP, "mask", mask.len(), n_tok * n_tiles)?;
    check_len(OP, "out", out.len(), n_tok * n_head * hd)?;
    let group = n_head / n_kv;
    let simd = simd::level();
    for_each_chunk(pool, out, hd, |task, acc| {
        let (t, h) = (task / n_head, task % n_head);
        let qr = &q[t * q_stride + h * hd..][..hd];
        let col = (h / group) * hd;
        let kv = Kv { k: &k[col..], v: &v[col..], stride: kvs };
        let tiles = mask[t * n_tiles..][..n_tiles].iter().enumerate().filter(|(_, &m)| m != 0);
        attend(simd, qr, acc, kv, tiles.map(|(tile, _)| tile * tile_keys..(tile + 1) * tile_keys), hd, 1, s.scale);
    });
    Ok(())
}

/// `x[t][i] += tanh(gate) * row_mask[t] * y[t][i]` over rows of `dim` (Mllama's gated
/// residual; `row_mask` `[rows]`, or `None` for a factor of 1); `y` as long as `x`.
pub fn gated_add(
    pool: &ThreadPool,
    gate: f32,
    row_mask: Option<&[f32]>,
    y: &[f32],
    x: &mut [f32],
    dim: usize,
) -> Result<(), ShapeError> {
    const OP: &str = "gated_add";
    if dim == 0 || !x.len().is_multiple_of(dim) {
        return Err(invalid(OP, format!("{} elements are not rows of {dim}", x.len())));
    }
    check_len(OP, "y", y.len(), x.len())?;
    let rows = x.len() / dim;
    if let Some(m) = row_mask {
        check_len(OP, "row_mask", m.len(), rows)?;
    }
    // tanh in f64, as the reference; the product is f32.
    let g = (gate as f64).tanh() as f32;
    let per = rows_per_task(pool, rows, dim);
    for_each_chunk(pool, x, per * dim, |i, x| {
        let y = &y[i * per * dim..];
        for (r, (xr, yr)) in x.chunks_exact_mut(dim).zip(y.chunks_exact(dim)).enumerate() {
            let f = g * row_mask.map_or(1.0, |m| m[i * per + r]);
            for (x, &y) in xr.iter_mut().zip(yr) {
                *x += f * y;
            }
        }
    });
    Ok(())
}
