//! Rotary position embedding (Su et al. 2021; transformers `apply_rotary_pos_emb`, ggml-cpu
//! `ggml_compute_forward_rope_f32`) in place, with the GPU side's plain-data types
//! ([`RopeLayout`], [`RopeTable`], [`QScale`], [`RopeMode`]): both pairings (adjacent, llama.cpp
//! "normal"; rotate-half, "neox"), partial rotation (`n_rot = 2 * table.inv_freq.len()` of
//! each head's dims; the rest pass through), YaRN tables and the Llama-4 / Ministral 3 query
//! scale; and interleaved multimodal RoPE (transformers `apply_interleaved_mrope`, Qwen3-VL /
//! Qwen3.5) with per-axis positions ([`mrope_axis`]). The f32 math is
//! [`kernels::rope::rope_ref`](crate::kernels::rope::rope_ref)'s and
//! [`mrope_ref`](crate::kernels::rope::mrope_ref)'s step by step; each token's cos/sin are
//! computed once for all its heads (and, in [`rope_qkv_store`], for its q and k heads). Tokens
//! are split over the pool.

use std::sync::{Mutex, PoisonError};

use super::attention::KvElem;
use super::ops::{check_min_len, for_each_chunk, invalid, ShapeError};
use super::pool::ThreadPool;
use crate::kernels::shapes::{mrope_axis, QScale, QkvRope, RopeLayout, RopeMode, RopeTable};

/// Checks the layout against the table and `x` for `n_tok` rows; returns the row chunk
/// (`stride`) and the elements the rows span.
fn check(op: &'static str, x: &[f32], l: &RopeLayout, t: &RopeTable, n_tok: usize) -> Result<(usize, usize), ShapeError> {
    let (hd, half_rot) = (l.head_dim as usize, t.inv_freq.len());
    if !hd.is_multiple_of(2) || 2 * half_rot > hd {
        return Err(invalid(op, format!("{} rotated dims in heads of {hd}", 2 * half_rot)));
    }
    if let Some(f) = &t.freq_factors {
        if f.len() != half_rot {
            return Err(invalid(op, format!("{} frequency divisors for {half_rot} frequencies", f.len())));
        }
    }
    let row = l.offset as usize + l.n_heads as usize * hd;
    let stride = l.stride as usize;
    if n_tok > 1 && row > stride {
        return Err(invalid(op, format!("heads span {row} elements of rows of {stride}")));
    }
    let span = if n_tok == 0 { 0 } else { (n_tok - 1) * stride + row };
    check_min_len(op, "x", x.len(), span)?;
    // One token: its row is the whole span, whatever the stride.
    Ok((if n_tok > 1 { stride } else { span.max(1) }, span))
}

/// Rotates (and scales) the heads of one token row `x` (starting at the row's first element).
pub(super) fn rotate_row(x: &mut [f32], l: &RopeLayout, cs: &[(f32, f32)], scale: f32) {
    let (hd, half_rot) = (l.head_dim as usize, cs.len());
    let heads = &mut x[l.offset as usize..][..l.n_heads as usize * hd];
    for head in heads.chunks_exact_mut(hd) {
        let (rot, rest) = head.split_at_mut(2 * half_rot);
        match l.mode {
            RopeMode::RotateHalf => {
                let (a, b) = rot.split_at_mut(half_rot);
                for ((x0, x1), &(c, s)) in a.iter_mut().zip(b.iter_mut()).zip(cs) {
                    let (v0, v1) = (*x0, *x1);
                    *x0 = (v0 * c - v1 * s) * scale;
                    *x1 = (v1 * c + v0 * s) * scale;
                }
            }
            RopeMode::Adjacent => {
                for (p, &(c, s)) in rot.chunks_exact_mut(2).zip(cs) {
                    let (v0, v1) = (p[0], p[1]);
                    p[0] = (v0 * c - v1 * s) * scale;
                    p[1] = (v1 * c + v0 * s) * scale;
                }
            }
        }
        if scale != 1.0 {
            rest.iter_mut().for_each(|v| *v *= scale);
        }
    }
}

fn cos_sin(table: &RopeTable, i: usize, pos: u32) -> (f32, f32) {
    let angle = table.angle(pos, i);
    (angle.cos() * table.attn_factor, angle.sin() * table.attn_factor)
}

/// RoPE in place on `n_tok` token rows of `x` (laid out as `layout`): token `t` at position
/// `pos0 + t`, then the query scale `q_scale.factor(pos)` on all of the heads' dims.
pub fn rope_inplace(
    pool: &ThreadPool,
    x: &mut [f32],
    layout: &RopeLayout,
    n_tok: usize,
    table: &RopeTable,
    pos0: u32,
    q_scale: QScale,
) -> Result<(), ShapeError> {
    let (stride, span) = check("rope_inplace", x, layout, table, n_tok)?;
    for_each_chunk(pool, &mut x[..span], stride, |t, row| {
        let pos = pos0 + t as u32;
        let cs: Vec<(f32, f32)> = (0..table.inv_freq.len()).map(|i| cos_sin(table, i, pos)).collect();
        rotate_row(row, layout, &cs, q_scale.factor(pos));
    });
    Ok(())
}

/// Interleaved M-RoPE in place: token `t`'s pair `i` turns by
/// `positions[mrope_axis(i, sections)][t]` (`n_tok` = the positions' length, equal on all three
/// axes); no query scale.
pub fn rope_inplace_mrope(
    pool: &ThreadPool,
    x: &mut [f32],
    layout: &RopeLayout,
    table: &RopeTable,
    positions: [&[u32]; 3],
    sections: [u32; 3],
) -> Result<(), ShapeError> {
    const OP: &str = "rope_inplace_mrope";
    let n_tok = positions[0].len();
    if positions.iter().any(|p| p.len() != n_tok) {
        return Err(invalid(OP, format!("position axes of {:?} tokens", positions.map(<[u32]>::len))));
    }
    if sections.iter().map(|&s| s as usize).sum::<usize>() > table.inv_freq.len() {
        return Err(invalid(OP, format!("sections {sections:?} for {} rotated pairs", table.inv_freq.len())));
    }
    let (stride, span) = check(OP, x, layout, table, n_tok)?;
    for_each_chunk(pool, &mut x[..span], stride, |t, row| {
        let cs: Vec<(f32, f32)> =
            (0..table.inv_freq.len()).map(|i| cos_sin(table, i, positions[mrope_axis(i, sections)][t])).collect();
        rotate_row(row, layout, &cs, 1.0);
    });
    Ok(())
}

/// The positions a step's tokens turn by.
#[derive(Clone, Copy, Debug)]
pub enum Positions<'a> {
    /// Token `t` at `pos0 + t`.
    From(u32),
    /// Interleaved M-RoPE: pair `i` of token `t` at `positions[mrope_axis(i, sections)][t]`.
    Mrope { positions: [&'a [u32]; 3], sections: [u32; 3] },
}

/// The KV-cache store of a step (`kernels::rope::rope_kv_store` and `_mrope`): `n_tok` rows of
/// k heads (`k_layout`) and v heads (`v_layout`) go to cache rows `kv_start..`, dense
/// (`[row][n_heads * head_dim]`, f32 or f16: [`KvElem`]), k rotated at `positions` (no query
/// scale) in f32 before it is stored.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_store<T: KvElem>(
    pool: &ThreadPool,
    (k, k_layout): (&[f32], &RopeLayout),
    (v, v_layout): (&[f32], &RopeLayout),
    (k_cache, v_cache): (&mut [T], &mut [T]),
    n_tok: usize,
    kv_start: usize,
    table: &RopeTable,
    positions: Positions<'_>,
) -> Result<(), ShapeError> {
    const OP: &str = "rope_kv_store";
    if (v_layout.n_heads, v_layout.head_dim) != (k_layout.n_heads, k_layout.head_dim) {
        return Err(invalid(OP, format!("v heads {v_layout:?} unlike k heads {k_layout:?}")));
    }
    let width = k_layout.n_heads as usize * k_layout.head_dim as usize;
    let end = (kv_start + n_tok) * width;
    check_min_len(OP, "k_cache", k_cache.len(), end)?;
    check_min_len(OP, "v_cache", v_cache.len(), end)?;
    fn rows(x: &[f32], l: RopeLayout, n_tok: usize, width: usize) -> Result<impl Iterator<Item = &[f32]>, ShapeError> {
        let (stride, offset) = (l.stride as usize, l.offset as usize);
        let span = if n_tok == 0 { 0 } else { (n_tok - 1) * stride + offset + width };
        check_min_len(OP, "k or v", x.len(), span)?;
        Ok((0..n_tok).map(move |t| &x[t * stride + offset..][..width]))
    }
    // k gathered dense and rotated, then both stored.
    let mut rotated: Vec<f32> = rows(k, *k_layout, n_tok, width)?.flatten().copied().collect();
    let dense = RopeLayout { stride: width as u32, offset: 0, ..*k_layout };
    match positions {
        Positions::From(pos0) => rope_inplace(pool, &mut rotated, &dense, n_tok, table, pos0, QScale::NONE)?,
        Positions::Mrope { positions, sections } => rope_inplace_mrope(pool, &mut rotated, &dense, table, positions, sections)?,
    }
    for (c, &x) in k_cache[kv_start * width..end].iter_mut().zip(&rotated) {
        *c = T::from_f32(x);
    }
    for (row, x) in v_cache[kv_start * width..end].chunks_exact_mut(width).zip(rows(v, *v_layout, n_tok, width)?) {
        row.iter_mut().zip(x).for_each(|(c, &x)| *c = T::from_f32(x));
    }
    Ok(())
}

/// Widest head [`rope_qkv_store`] rotates on the stack.
const MAX_HEAD_DIM: usize = 512;

/// One sequence's rows for [`rope_qkv_store`]: its fused q|k|v rows (read and written) laid
/// out as `layout` says, its caches, its `n_tok` tokens from cache row `kv_start` and
/// position `pos0`.
pub struct QkvRows<'a, T> {
    pub qkv: &'a mut [f32],
    pub layout: QkvRope,
    pub caches: (&'a mut [T], &'a mut [T]),
    pub n_tok: usize,
    pub kv_start: usize,
    pub pos0: u32,
}

/// [`rope_inplace`] of the q heads of fused q|k|v rows and [`rope_kv_store`] of their k and v
/// heads in one op (`kernels::rope::rope_qkv_store`), for the rows of every sequence of a
/// batched step at once (their tokens shared out to the pool together): per token its cos/sin
/// computed once, the q heads rotated (and scaled by the layout's `q_scale`) in place, each k
/// head rotated on the stack into cache row `kv_start + t` and the v heads stored beside them;
/// k and v in `qkv` stay as they were. The same f32 operations as the two ops, so the same
/// bits.
pub fn rope_qkv_store<T: KvElem>(pool: &ThreadPool, table: &RopeTable, seqs: Vec<QkvRows<'_, T>>) -> Result<(), ShapeError> {
    const OP: &str = "rope_qkv_store";
    // A token's rows: its q|k|v row, its k and v cache rows, its position and layout.
    let mut tokens = Vec::new();
    for QkvRows { qkv, layout, caches: (k_cache, v_cache), n_tok, kv_start, pos0 } in seqs {
        let k = layout.k;
        let (q, v) = (RopeLayout { n_heads: layout.n_q_heads, offset: 0, ..k }, RopeLayout { offset: layout.v_offset, ..k });
        let hd = k.head_dim as usize;
        if hd > MAX_HEAD_DIM {
            return Err(invalid(OP, format!("heads of {hd} (at most {MAX_HEAD_DIM})")));
        }
        let spans = [q, k, v].map(|l| check(OP, qkv, &l, table, n_tok).map(|(_, span)| span));
        let span = spans.into_iter().try_fold(0, |max, span| span.map(|s| s.max(max)))?;
        // One token: its row is the whole span, whatever the stride.
        let stride = if n_tok > 1 { k.stride as usize } else { span.max(1) };
        let width = k.n_heads as usize * hd;
        let end = (kv_start + n_tok) * width;
        check_min_len(OP, "k_cache", k_cache.len(), end)?;
        check_min_len(OP, "v_cache", v_cache.len(), end)?;
        let (k_rows, v_rows) =
            (k_cache[kv_start * width..end].chunks_mut(width), v_cache[kv_start * width..end].chunks_mut(width));
        let rows = qkv[..span].chunks_mut(stride).zip(k_rows).zip(v_rows);
        tokens.extend(rows.zip(0..).map(|(((row, k_row), v_row), t)| (row, k_row, v_row, pos0 + t, layout)));
    }
    // One uncontended lock per task hands it its own rows without `unsafe`.
    let tasks: Vec<_> = tokens.into_iter().map(Mutex::new).collect();
    pool.run(tasks.len(), &|t| {
        let mut claimed = tasks[t].lock().unwrap_or_else(PoisonError::into_inner);
        let (row, k_row, v_row, pos, layout) = &mut *claimed;
        let (k, hd) = (layout.k, layout.k.head_dim as usize);
        let width = k.n_heads as usize * hd;
        let mut cs = [(0f32, 0f32); MAX_HEAD_DIM / 2];
        let cs = &mut cs[..table.inv_freq.len()];
        cs.iter_mut().enumerate().for_each(|(i, c)| *c = cos_sin(table, i, *pos));
        let one_head = RopeLayout { n_heads: 1, offset: 0, ..k };
        let mut rotated = [0f32; MAX_HEAD_DIM];
        let rotated = &mut rotated[..hd];
        for (head, cached) in row[k.offset as usize..][..width].chunks_exact(hd).zip(k_row.chunks_exact_mut(hd)) {
            rotated.copy_from_slice(head);
            rotate_row(rotated, &one_head, cs, 1.0);
            cached.iter_mut().zip(&*rotated).for_each(|(c, &x)| *c = T::from_f32(x));
        }
        v_row.iter_mut().zip(&row[layout.v_offset as usize..][..width]).for_each(|(c, &x)| *c = T::from_f32(x));
        let q = RopeLayout { n_heads: layout.n_q_heads, offset: 0, ..k };
        rotate_row(row, &q, cs, layout.q_scale.factor(*pos));
    });
    Ok(())
}
