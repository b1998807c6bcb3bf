//! The Mllama (Llama 3.2 Vision) encoder's ops, those of
//! [`kernels::vision_mllama`](crate::kernels::vision_mllama) (transformers
//! `modeling_mllama.py`): the tile sequences (class token + patch embeddings, zeroed padding
//! rows), the tanh-gated per-tile and position embedding adds, the tanh-gated residual add and
//! a strided column scatter. Gates are f32 values here (`tanh` in f32, as the references),
//! and the f32 math is the references' step by step. Rows split over the pool.

use super::ops::{check_len, check_min_len, for_each_chunk, invalid, rows_per_task, ShapeError};
use super::pool::ThreadPool;

/// Rows of `dim` in `x`, or `Err` when `x` is not whole rows.
fn rows_of(op: &'static str, x: &[f32], dim: usize) -> Result<usize, ShapeError> {
    if dim == 0 || !x.len().is_multiple_of(dim) {
        return Err(invalid(op, format!("{} elements are not rows of {dim}", x.len())));
    }
    Ok(x.len() / dim)
}

/// Fills `x` (`[rows][dim]`): rows `t * tokens + s` below `tiles * tokens` hold tile `t`'s
/// token `s`, the class embedding (`s = 0`) or row `t * (tokens - 1) + s - 1` of `patches`;
/// the remaining rows (padding) are zeroed.
pub fn assemble(
    pool: &ThreadPool,
    patches: &[f32],
    class: &[f32],
    x: &mut [f32],
    tiles: usize,
    tokens: usize,
    dim: usize,
) -> Result<(), ShapeError> {
    const OP: &str = "assemble";
    let rows = rows_of(OP, x, dim)?;
    if tokens == 0 || tiles * tokens > rows {
        return Err(invalid(OP, format!("{tiles} tiles of {tokens} tokens in {rows} rows")));
    }
    check_len(OP, "patches", patches.len(), tiles * (tokens - 1) * dim)?;
    check_len(OP, "class", class.len(), dim)?;
    let per = rows_per_task(pool, rows, dim);
    for_each_chunk(pool, x, per * dim, |i, x| {
        for (j, row) in x.chunks_exact_mut(dim).enumerate() {
            let (t, s) = ((i * per + j) / tokens, (i * per + j) % tokens);
            if t >= tiles {
                row.fill(0.0);
            } else if s == 0 {
                row.copy_from_slice(class);
            } else {
                row.copy_from_slice(&patches[(t * (tokens - 1) + s - 1) * dim..][..dim]);
            }
        }
    });
    Ok(())
}

/// `x[row0 + r] += tanh(gate) * table[r / rows_per_tile]` for `r < rows` (rows of `dim`).
#[allow(clippy::too_many_arguments)]
pub fn tile_add(
    pool: &ThreadPool,
    table: &[f32],
    gate: f32,
    x: &mut [f32],
    row0: usize,
    rows: usize,
    rows_per_tile: usize,
    dim: usize,
) -> Result<(), ShapeError> {
    const OP: &str = "tile_add";
    if dim == 0 || rows_per_tile == 0 {
        return Err(invalid(OP, format!("rows of {dim}, {rows_per_tile} rows per tile")));
    }
    check_min_len(OP, "x", x.len(), (row0 + rows) * dim)?;
    check_min_len(OP, "table", table.len(), rows.div_ceil(rows_per_tile) * dim)?;
    let g = gate.tanh();
    let per = rows_per_task(pool, rows, dim);
    for_each_chunk(pool, &mut x[row0 * dim..][..rows * dim], per * dim, |i, x| {
        for (j, row) in x.chunks_exact_mut(dim).enumerate() {
            let t = &table[(i * per + j) / rows_per_tile * dim..][..dim];
            row.iter_mut().zip(t).for_each(|(x, &t)| *x += g * t);
        }
    });
    Ok(())
}

/// `x[r] += (1 - tanh(gate)) * pos[r % tokens] + tanh(gate) * tile_pos[r]` for each row `r`
/// of `dim` of `x` (`pos` `[tokens][dim]`, `tile_pos` as long as `x`).
pub fn gated_pos(
    pool: &ThreadPool,
    pos: &[f32],
    tile_pos: &[f32],
    gate: f32,
    x: &mut [f32],
    tokens: usize,
    dim: usize,
) -> Result<(), ShapeError> {
    const OP: &str = "gated_pos";
    let rows = rows_of(OP, x, dim)?;
    if tokens == 0 {
        return Err(invalid(OP, "0 tokens per tile".into()));
    }
    check_len(OP, "tile_pos", tile_pos.len(), x.len())?;
    check_len(OP, "pos", pos.len(), tokens * dim)?;
    let g = gate.tanh();
    let per = rows_per_task(pool, rows, dim);
    for_each_chunk(pool, x, per * dim, |i, x| {
        for (j, row) in x.chunks_exact_mut(dim).enumerate() {
            let r = i * per + j;
            let (p, tp) = (&pos[r % tokens * dim..][..dim], &tile_pos[r * dim..][..dim]);
            for ((x, &p), &tp) in row.iter_mut().zip(p).zip(tp) {
                *x += (1.0 - g) * p + g * tp;
            }
        }
    });
    Ok(())
}

/// Elements per task of [`gated_add`].
const CHUNK: usize = 16384;

/// `x[i] += tanh(gate) * y[i]` (equal lengths).
pub fn gated_add(pool: &ThreadPool, y: &[f32], gate: f32, x: &mut [f32]) -> Result<(), ShapeError> {
    check_len("gated_add", "y", y.len(), x.len())?;
    let g = gate.tanh();
    for_each_chunk(pool, x, CHUNK, |i, x| {
        x.iter_mut().zip(&y[i * CHUNK..]).for_each(|(x, &y)| *x += g * y);
    });
    Ok(())
}

/// `out[r * stride + offset + c * step] = src[(src_row0 + r) * dim + c]` for `rows` rows of
/// `dim` (the rest of `out` is untouched).
#[allow(clippy::too_many_arguments)]
pub fn scatter_cols(
    pool: &ThreadPool,
    src: &[f32],
    src_row0: usize,
    out: &mut [f32],
    rows: usize,
    dim: usize,
    stride: usize,
    offset: usize,
    step: usize,
) -> Result<(), ShapeError> {
    const OP: &str = "scatter_cols";
    let last = offset + dim.max(1).saturating_sub(1) * step;
    if dim == 0 || last >= stride || (step == 0 && dim > 1) {
        return Err(invalid(OP, format!("{dim} columns at {offset} + c * {step} in rows of {stride}")));
    }
    check_min_len(OP, "src", src.len(), (src_row0 + rows) * dim)?;
    check_min_len(OP, "out", out.len(), rows * stride)?;
    let per = rows_per_task(pool, rows, dim);
    for_each_chunk(pool, &mut out[..rows * stride], per * stride, |i, out| {
        for (j, o) in out.chunks_exact_mut(stride).enumerate() {
            let s = &src[(src_row0 + i * per + j) * dim..][..dim];
            for (c, &v) in s.iter().enumerate() {
                o[offset + c * step] = v;
            }
        }
    });
    Ok(())
}
