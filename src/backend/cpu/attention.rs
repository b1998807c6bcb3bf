//! Scaled dot-product attention over a KV cache, with grouped-query heads (query head `h`
//! reads KV head `h / (n_head / n_kv_head)`), causal (text: new token `t` at cache row
//! `kv_start + t` sees rows `0..=kv_start + t`) or not (vision: every row sees all
//! `kv_start + n_tok` keys), and Mllama's `valid_rows` padding mask, as
//! [`kernels::attention`](crate::kernels::attention) and its
//! [`attention_ref`](crate::kernels::attention::attention_ref); layouts are the GPU kernels'
//! (q `[n_tok][q_stride]` with head h at `q_offset + h*head_dim`, caches
//! `[rows][n_kv_head*head_dim]`, out `[n_tok][n_head*head_dim]`), f32 caches only.
//!
//! Each (query row, head) is one pool task that walks its keys once, in blocks of [`BLOCK`],
//! with the online softmax of FlashAttention (Dao et al. 2022; Milakov & Gimelshein 2018;
//! ggml-cpu `ggml_compute_forward_flash_attn_ext_f16`): a running maximum `m`, denominator `l`
//! and f32 output accumulator, rescaled by `exp(m_old - m_new)` when a block raises the
//! maximum. Decode is the same with one row.

use super::ops::{check_len, check_min_len, for_each_chunk, invalid, ShapeError};
use super::pool::ThreadPool;
#[cfg(target_arch = "x86_64")]
use super::simd;
use crate::kernels::shapes::{AttnShape, KvDtype};

/// Keys per block: scores of a block are computed first, then the maximum is updated once.
pub const BLOCK: usize = 32;
const LANES: usize = 8;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `e^x` for `x ≤ 0` (a score less the running maximum) within 2 ulp, 0 below -87.3 (where
/// f32 turns subnormal): `x = n ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by Cephes' `expf`
/// polynomial (Moshier 1989; ggml-cpu's `ggml_v_expf` is the same idea), `2^n` written into
/// the exponent. Branch-free, so a loop of it vectorizes (libm's `expf` is a call per value).
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor().max(-126.0);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 0.5;
    let e = (p * r * r + r + 1.0) * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        e
    }
}

/// One query row's online softmax over the keys given to [`keys`](Self::keys): running
/// maximum `m`, denominator `l`, and the output accumulator `acc` (head_dim values).
pub(super) struct OnlineSoftmax<'a> {
    m: f32,
    l: f32,
    acc: &'a mut [f32],
}

impl<'a> OnlineSoftmax<'a> {
    pub(super) fn new(acc: &'a mut [f32]) -> Self {
        acc.fill(0.0);
        OnlineSoftmax { m: f32::NEG_INFINITY, l: 0.0, acc }
    }

    /// Adds the keys `range` of `k` / `v` (row `j` at `j * stride`, `acc.len()` values read)
    /// with scores `q · k[j] * scale`, in blocks of [`BLOCK`]. Where the CPU has AVX2 the
    /// same code is compiled for it (the same operations in the same order: the same bits).
    pub(super) fn keys(&mut self, q: &[f32], k: &[f32], v: &[f32], stride: usize, range: std::ops::Range<usize>, scale: f32) {
        #[cfg(target_arch = "x86_64")]
        if simd::level().avx2() {
            // SAFETY: the level implies AVX2.
            return unsafe { self.keys_avx2(q, k, v, stride, range, scale) };
        }
        self.keys_portable(q, k, v, stride, range, scale)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn keys_avx2(&mut self, q: &[f32], k: &[f32], v: &[f32], stride: usize, range: std::ops::Range<usize>, scale: f32) {
        self.keys_portable(q, k, v, stride, range, scale)
    }

    #[inline(always)]
    fn keys_portable(&mut self, q: &[f32], k: &[f32], v: &[f32], stride: usize, range: std::ops::Range<usize>, scale: f32) {
        let hd = self.acc.len();
        let mut scores = [0f32; BLOCK];
        for k0 in range.clone().step_by(BLOCK) {
            let s = &mut scores[..BLOCK.min(range.end - k0)];
            let mut block_max = f32::NEG_INFINITY;
            for (j, s) in s.iter_mut().enumerate() {
                *s = dot(q, &k[(k0 + j) * stride..][..hd]) * scale;
                block_max = block_max.max(*s);
            }
            if block_max > self.m {
                // exp(-inf) = 0 on the first block, where acc and l are still 0.
                let corr = (self.m - block_max).exp();
                self.l *= corr;
                self.acc.iter_mut().for_each(|a| *a *= corr);
                self.m = block_max;
            }
            // The block's weights first, in one loop the compiler vectorizes.
            let m = self.m;
            s.iter_mut().for_each(|s| *s = exp_nonpositive(*s - m));
            for (j, &p) in s.iter().enumerate() {
                self.l += p;
                for (a, &vv) in self.acc.iter_mut().zip(&v[(k0 + j) * stride..][..hd]) {
                    *a += p * vv;
                }
            }
        }
    }

    /// Divides by the denominator (no key: the output stays zero).
    pub(super) fn finish(self) {
        if self.l > 0.0 {
            let inv = 1.0 / self.l;
            self.acc.iter_mut().for_each(|a| *a *= inv);
        }
    }
}

/// Checks the shape and the slices for `n_tok` rows; returns the query heads per KV head.
fn check(
    s: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    n_tok: usize,
    kv_start: usize,
) -> Result<usize, ShapeError> {
    const OP: &str = "attention";
    let (n_head, n_kv, hd) = (s.n_head as usize, s.n_kv_head as usize, s.head_dim as usize);
    if hd == 0 || n_kv == 0 || !n_head.is_multiple_of(n_kv) {
        return Err(invalid(OP, format!("{n_head} heads, {n_kv} KV heads of {hd}")));
    }
    if s.kv != KvDtype::F32 {
        return Err(invalid(OP, format!("{:?} caches (the CPU caches are f32)", s.kv)));
    }
    let q_row = s.q_offset as usize + n_head * hd;
    if n_tok > 1 && q_row > s.q_stride as usize {
        return Err(invalid(OP, format!("q heads span {q_row} elements of rows of {}", s.q_stride)));
    }
    let q_span = if n_tok == 0 { 0 } else { (n_tok - 1) * s.q_stride as usize + q_row };
    check_min_len(OP, "q", q.len(), q_span)?;
    let kv_len = (kv_start + n_tok) * n_kv * hd;
    check_min_len(OP, "k_cache", k.len(), kv_len)?;
    check_min_len(OP, "v_cache", v.len(), kv_len)?;
    check_len(OP, "out", out.len(), n_tok * n_head * hd)?;
    Ok(n_head / n_kv)
}

/// Attention of the `n_tok` query rows in `q` (new tokens at cache rows `kv_start..`) against
/// `k_cache` / `v_cache`, which already hold those rows, into `out` `[n_tok][n_head*head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill(
    pool: &ThreadPool,
    shape: &AttnShape,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    out: &mut [f32],
    n_tok: usize,
    kv_start: usize,
) -> Result<(), ShapeError> {
    let group = check(shape, q, k_cache, v_cache, out, n_tok, kv_start)?;
    let (n_head, hd) = (shape.n_head as usize, shape.head_dim as usize);
    let kvs = shape.n_kv_head as usize * hd;
    let valid = shape.valid_rows as usize;
    for_each_chunk(pool, out, hd, |task, acc| {
        let (t, h) = (task / n_head, task % n_head);
        let mut n_keys = if shape.causal { kv_start + t + 1 } else { kv_start + n_tok };
        if t >= valid {
            n_keys = n_keys.min(valid);
        }
        let qr = &q[t * shape.q_stride as usize + shape.q_offset as usize + h * hd..][..hd];
        let col = (h / group) * hd;
        let (k, v) = (&k_cache[col..], &v_cache[col..]);
        let mut sm = OnlineSoftmax::new(acc);
        sm.keys(qr, k, v, kvs, 0..n_keys, shape.scale);
        sm.finish();
    });
    Ok(())
}

/// [`attention_prefill`] of one query row (decode) at cache row `kv_start`.
pub fn attention_decode(
    pool: &ThreadPool,
    shape: &AttnShape,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    out: &mut [f32],
    kv_start: usize,
) -> Result<(), ShapeError> {
    attention_prefill(pool, shape, q, k_cache, v_cache, out, 1, kv_start)
}

#[cfg(test)]
mod tests {
    /// Within 2 units of f32's precision (2^-23, relative) of `f64::exp` over the range
    /// softmax weights take; 0 below it.
    #[test]
    fn exp_nonpositive_is_within_two_ulp() {
        let worst = (0..=200_000)
            .map(|i| -87.0 * i as f32 / 200_000.0)
            .map(|x| ((super::exp_nonpositive(x) as f64 / (x as f64).exp()) - 1.0).abs() / f32::EPSILON as f64)
            .fold(0.0, f64::max);
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(super::exp_nonpositive(-100.0), 0.0);
        assert_eq!(super::exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp_nonpositive(0.0), 1.0);
    }
}
