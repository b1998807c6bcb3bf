//! The per-token ops around Qwen3.5's Gated DeltaNet layer, those of `kernels::gdn_prep`
//! (`shaders/gdn_prep.wgsl`; reference: transformers `modeling_qwen3_5.py`,
//! `Qwen3_5GatedDeltaNet.forward`, `causal_conv1d_update` / `causal_conv1d_fn`,
//! `Qwen3_5RMSNormGated`); the delta rule between them is [`super::delta_net`]. Inputs, their
//! GGUF tensors and layouts as in `src/kernels/gdn_prep.rs`:
//!
//! - [`conv`]: causal depthwise conv1d (kernel K, no bias) over the mixed q|k|v rows, then
//!   SiLU: `y[t][c] = silu(Σ_j w[c][j] · xe[t + j][c])`, `xe` the rolling state (the K-1
//!   inputs before this step, oldest first) followed by the step's rows; the state then keeps
//!   the last K-1 rows of `xe`, so chunk after chunk equals one pass. Token rows split over the
//!   pool, then the state advanced.
//! - [`decay`]: `g = A · softplus(a + dt_bias)` (`A = -exp(A_log)`, as the GGUF stores it;
//!   torch's softplus, threshold 20) and `beta = sigmoid(b)` per token and v head.
//! - [`gated_norm`]: per (token, v head) row of `o`: `o / sqrt(mean(o²) + eps) · w · silu(z)`
//!   (norm before gate, weight as is), rows split over the pool.

use super::elementwise::silu;
use super::ops::{check_min_len, for_each_chunk, invalid, rows_per_task, ShapeError};
use super::pool::ThreadPool;
pub use crate::kernels::shapes::{RowWindow, SOFTPLUS_THRESHOLD};

/// Element `(t, i)` of a window.
fn at(w: RowWindow, t: usize, i: usize) -> usize {
    t * w.stride as usize + w.offset as usize + i
}

/// Checks that `width` elements fit `w`'s rows and that `buf` holds `rows` of them.
fn check_window(
    op: &'static str,
    what: &'static str,
    buf: &[f32],
    w: RowWindow,
    rows: usize,
    width: usize,
) -> Result<(), ShapeError> {
    if w.offset as usize + width > w.stride as usize {
        return Err(invalid(op, format!("{what}: a window of {width} at offset {} does not fit rows of {}", w.offset, w.stride)));
    }
    check_min_len(op, what, buf.len(), if rows == 0 { 0 } else { at(w, rows - 1, width) })
}

/// The causal conv1d + SiLU of the `n_tok` rows of `x` (window `x_win`, `channels` wide) into
/// `y` (`[n_tok][channels]`), reading then advancing `state` (`[channels][kernel - 1]`,
/// oldest first; zeros at a sequence's start). `weight` is `[channels][kernel]`.
#[allow(clippy::too_many_arguments)]
pub fn conv(
    pool: &ThreadPool,
    x: &[f32],
    x_win: RowWindow,
    n_tok: usize,
    weight: &[f32],
    state: &mut [f32],
    y: &mut [f32],
    channels: usize,
    kernel: usize,
) -> Result<(), ShapeError> {
    const OP: &str = "gdn conv";
    if !(2..=64).contains(&kernel) {
        return Err(invalid(OP, format!("kernel size {kernel} (2..=64 supported)")));
    }
    let hist = kernel - 1;
    check_window(OP, "x", x, x_win, n_tok, channels)?;
    check_min_len(OP, "weight", weight.len(), channels * kernel)?;
    check_min_len(OP, "state", state.len(), channels * hist)?;
    check_min_len(OP, "y", y.len(), n_tok * channels)?;
    if n_tok == 0 || channels == 0 {
        return Ok(());
    }
    // xe[e][c]: the state's slot e, or the step's row e - (K - 1).
    let xe = |state: &[f32], e: usize, c: usize| if e < hist { state[c * hist + e] } else { x[at(x_win, e - hist, c)] };
    let rows = rows_per_task(pool, n_tok, channels);
    let old: &[f32] = state;
    for_each_chunk(pool, &mut y[..n_tok * channels], rows * channels, |i, y| {
        for (r, yr) in y.chunks_exact_mut(channels).enumerate() {
            let t = i * rows + r;
            for (c, out) in yr.iter_mut().enumerate() {
                let w = &weight[c * kernel..][..kernel];
                *out = silu(w.iter().enumerate().fold(0.0, |acc, (j, &w)| acc + w * xe(old, t + j, c)));
            }
        }
    });
    // New slot j is xe[n_tok + j]: an old slot n_tok + j > j (not yet overwritten, j ascends)
    // or a row.
    for c in 0..channels {
        for j in 0..hist {
            state[c * hist + j] = xe(state, n_tok + j, c);
        }
    }
    Ok(())
}

/// torch's `F.softplus` (beta 1, threshold 20).
fn softplus(x: f32) -> f32 {
    if x > SOFTPLUS_THRESHOLD {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// `g[t][h] = ssm_a[h] · softplus(a[t][h] + dt_bias[h])` and `beta[t][h] = sigmoid(b[t][h])`
/// for `n_heads` v heads (`g`, `beta`: `[n_tok][n_heads]`). Elementwise and short (a few
/// dozen heads per token): on the calling thread.
#[allow(clippy::too_many_arguments)]
pub fn decay(
    (a, a_win): (&[f32], RowWindow),
    (b, b_win): (&[f32], RowWindow),
    ssm_a: &[f32],
    dt_bias: &[f32],
    (g, beta): (&mut [f32], &mut [f32]),
    n_tok: usize,
    n_heads: usize,
) -> Result<(), ShapeError> {
    const OP: &str = "gdn decay";
    check_window(OP, "a", a, a_win, n_tok, n_heads)?;
    check_window(OP, "b", b, b_win, n_tok, n_heads)?;
    check_min_len(OP, "ssm_a", ssm_a.len(), n_heads)?;
    check_min_len(OP, "dt_bias", dt_bias.len(), n_heads)?;
    check_min_len(OP, "g", g.len(), n_tok * n_heads)?;
    check_min_len(OP, "beta", beta.len(), n_tok * n_heads)?;
    for t in 0..n_tok {
        for h in 0..n_heads {
            g[t * n_heads + h] = ssm_a[h] * softplus(a[at(a_win, t, h)] + dt_bias[h]);
            beta[t * n_heads + h] = 1.0 / (1.0 + (-b[at(b_win, t, h)]).exp());
        }
    }
    Ok(())
}

/// `out[t][h] = o[t][h] / sqrt(mean(o[t][h]²) + eps) · weight · silu(z[t][h])` over
/// `head_dim` for every head: `o` and `out` are `[n_tok][n_heads][head_dim]`, `z` a window
/// of `n_heads · head_dim` per row, `weight` `[head_dim]` (GGUF `ssm_norm.weight`, as is).
#[allow(clippy::too_many_arguments)]
pub fn gated_norm(
    pool: &ThreadPool,
    o: &[f32],
    (z, z_win): (&[f32], RowWindow),
    weight: &[f32],
    out: &mut [f32],
    n_tok: usize,
    n_heads: usize,
    head_dim: usize,
    eps: f32,
) -> Result<(), ShapeError> {
    const OP: &str = "gdn gated norm";
    if !(eps.is_finite() && eps >= 0.0) || head_dim == 0 {
        return Err(invalid(OP, format!("eps {eps}, head dim {head_dim}")));
    }
    let (rows, width) = (n_tok * n_heads, n_heads * head_dim);
    check_min_len(OP, "o", o.len(), rows * head_dim)?;
    check_window(OP, "z", z, z_win, n_tok, width)?;
    check_min_len(OP, "weight", weight.len(), head_dim)?;
    check_min_len(OP, "out", out.len(), rows * head_dim)?;
    let per = rows_per_task(pool, rows, head_dim);
    for_each_chunk(pool, &mut out[..rows * head_dim], per * head_dim, |i, out| {
        for (r, orow) in out.chunks_exact_mut(head_dim).enumerate() {
            let row = i * per + r;
            let (t, h) = (row / n_heads, row % n_heads);
            let x = &o[row * head_dim..][..head_dim];
            let scale = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / head_dim as f32 + eps).sqrt();
            let zr = &z[at(z_win, t, h * head_dim)..][..head_dim];
            for (((y, &v), &w), &zv) in orow.iter_mut().zip(x).zip(weight).zip(zr) {
                *y = v * scale * w * silu(zv);
            }
        }
    });
    Ok(())
}
