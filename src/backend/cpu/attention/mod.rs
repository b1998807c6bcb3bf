//! Scaled dot-product attention over a KV cache, with grouped-query heads (query head `h`
//! reads KV head `h / (n_head / n_kv_head)`), causal (text: new token `t` at cache row
//! `kv_start + t` sees rows `0..=kv_start + t`) or not (vision: every row sees all
//! `kv_start + n_tok` keys), and Mllama's `valid_rows` padding mask, as
//! [`kernels::attention`](crate::kernels::attention) and its
//! [`attention_ref`](crate::kernels::attention::attention_ref); layouts are the GPU kernels'
//! (q `[n_tok][q_stride]` with head h at `q_offset + h*head_dim`, caches
//! `[rows][n_kv_head*head_dim]`, out `[n_tok][n_head*head_dim]`); caches of f32 or of f16
//! ([`KvElem`]: converted to f32 as they are read, `vcvtph2ps` with AVX2).
//!
//! In prefill each (query row, KV head) is one pool task, in decode each run of KV heads (one
//! run per thread; a batched step's sequences share one pool run, [`attention_seqs`]); a task
//! walks its keys once, in blocks of [`BLOCK`], each block for all its query heads (read from
//! memory once, and in decode as whole stretches of the caches' rows), with the online softmax
//! of FlashAttention (Dao et al. 2022; Milakov & Gimelshein 2018; ggml-cpu
//! `ggml_compute_forward_flash_attn_ext_f16`): per head a running maximum `m`, denominator `l`
//! and f32 output accumulator, rescaled by `exp(m_old - m_new)` when a block raises the
//! maximum. With AVX2 the scores of eight keys come from eight FMA chains and one
//! `hadd` tree, the softmax's exponentials run eight at a time (the scalar `exp`'s operations,
//! so its bits), and the value sums keep 64 output columns in registers across a block (on
//! wasm32 SIMD128 the same loops four lanes wide: `wasm.rs`). Decode is the same with one row.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;

use super::elementwise::exp;
#[cfg(target_arch = "x86_64")]
use super::elementwise::exp8_avx2;
use super::ops::{check_len, check_min_len, invalid, prefetch, ShapeError};
use super::pool::ThreadPool;
use super::simd::{self, Simd};
use crate::kernels::shapes::{AttnShape, KvDtype};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Keys per block: scores of a block are computed first, then the maximum is updated once.
pub const BLOCK: usize = 32;
const LANES: usize = 8;

#[inline(always)]
fn dot<T: KvElem>(a: &[f32], b: &[T]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y.to_f32()).sum();
    for (x, y) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y.to_f32();
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One query head's online softmax: running maximum `m` and denominator `l` (its output
/// accumulator is the head's slice of the output).
#[derive(Clone, Copy)]
struct OnlineSoftmax {
    m: f32,
    l: f32,
}

impl OnlineSoftmax {
    const NEW: OnlineSoftmax = OnlineSoftmax { m: f32::NEG_INFINITY, l: 0.0 };

    /// Turns a block's raw scores `s` into softmax weights against the running maximum
    /// (raised first if the block holds a larger score, rescaling `l` and `acc`), and adds
    /// them to `l`; `exps(s, m)` sets `s[j] = exp(s[j] - m)` and returns their sums by lane
    /// (lane `j % 8`), as [`exps_portable`] does.
    #[inline(always)]
    fn weigh(&mut self, s: &mut [f32], scale: f32, acc: &mut [f32], exps: impl Fn(&mut [f32], f32) -> [f32; LANES]) {
        // Per lane of eight, so that the loops vectorize (`f32::max` and one running sum
        // would be a scalar chain per key).
        let mut lanes = [f32::NEG_INFINITY; LANES];
        for c in s.chunks_mut(LANES) {
            for (m, x) in lanes.iter_mut().zip(c) {
                *x *= scale;
                *m = if *x > *m { *x } else { *m };
            }
        }
        let block_max = lanes.into_iter().fold(f32::NEG_INFINITY, f32::max);
        if block_max > self.m {
            // exp(-inf) = 0 on the first block, where acc and l are still 0.
            let corr = (self.m - block_max).exp();
            self.l *= corr;
            acc.iter_mut().for_each(|a| *a *= corr);
            self.m = block_max;
        }
        self.l += exps(s, self.m).iter().sum::<f32>();
    }

    /// Divides by the denominator (no key: the output stays zero).
    fn finish(self, acc: &mut [f32]) {
        if self.l > 0.0 {
            let inv = 1.0 / self.l;
            acc.iter_mut().for_each(|a| *a *= inv);
        }
    }
}

/// `s[j] = exp(s[j] - m)`, returning the sums of lanes `j % 8` (per lane, so that the loop
/// vectorizes and each lane's sum runs in key order).
#[inline(always)]
fn exps_portable(s: &mut [f32], m: f32) -> [f32; LANES] {
    let mut sums = [0f32; LANES];
    for c in s.chunks_mut(LANES) {
        for (sum, x) in sums.iter_mut().zip(c) {
            *x = exp(*x - m);
            *sum += *x;
        }
    }
    sums
}

/// [`exps_portable`] on AVX2 vectors (`exp8_avx2`, the scalar [`exp`]'s bits) for whole runs
/// of eight, the rest portable: the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn exps_avx2(s: &mut [f32], m: f32) -> [f32; LANES] {
    let whole = s.len() / LANES * LANES;
    let (body, rest) = s.split_at_mut(whole);
    let mut sums = _mm256_setzero_ps();
    for c in body.chunks_exact_mut(LANES) {
        // SAFETY: `c` holds eight f32.
        unsafe {
            let x = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), _mm256_set1_ps(m)));
            _mm256_storeu_ps(c.as_mut_ptr(), x);
            sums = _mm256_add_ps(sums, x);
        }
    }
    // SAFETY: an `__m256` is eight f32.
    let mut sums: [f32; LANES] = unsafe { std::mem::transmute::<__m256, [f32; LANES]>(sums) };
    for (sum, x) in sums.iter_mut().zip(rest) {
        *x = exp(*x - m);
        *sum += *x;
    }
    sums
}

/// An element of a KV cache: `f32`, or `u16` holding f16 bits ([`KvDtype::F16`]: two per
/// word of the buffer, the GPU's layout).
pub trait KvElem: Copy + Send + Sync + 'static {
    const DTYPE: KvDtype;
    fn to_f32(self) -> f32;
    /// Rounded to nearest (even).
    fn from_f32(x: f32) -> Self;
    /// Eight elements from `p` as f32 lanes.
    ///
    /// # Safety
    /// AVX2 and F16C; `p` points at eight readable elements.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> __m256;
    /// Four elements from `x[..4]` as f32 lanes.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn load4(x: &[Self]) -> core::arch::wasm32::v128;
}

impl KvElem for f32 {
    const DTYPE: KvDtype = KvDtype::F32;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline(always)]
    fn from_f32(x: f32) -> f32 {
        x
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    fn load4(x: &[f32]) -> core::arch::wasm32::v128 {
        super::quant::load_f32(x)
    }
}

impl KvElem for u16 {
    const DTYPE: KvDtype = KvDtype::F16;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::from_bits(self).to_f32()
    }

    #[inline(always)]
    fn from_f32(x: f32) -> u16 {
        half::f16::from_f32(x).to_bits()
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    fn load4(x: &[u16]) -> core::arch::wasm32::v128 {
        wasm::load4_f16(x)
    }
}

/// A KV cache's columns from one KV head on: KV head `i` of them has key `j` at
/// `k[j * stride + i * head_dim..][..head_dim]`, its value likewise in `v`.
#[derive(Clone, Copy)]
pub(super) struct Kv<'a, T> {
    pub(super) k: &'a [T],
    pub(super) v: &'a [T],
    pub(super) stride: usize,
}

/// Query heads per [`attend`] pass (more are taken in turns): their online-softmax states
/// live on the stack.
const MAX_HEADS: usize = 64;

/// Attention of the query heads `qs` (contiguous heads of `head_dim`; head `i` reads KV head
/// `i / group` of `kv`) over the keys in `ranges`, into `out` (the same layout): scores
/// `q · k * scale`, in blocks of [`BLOCK`] keys, each block for every head of the pass before
/// the next. A block's rows are read from memory once: from L1 for the other query heads of a
/// KV head (grouped-query attention), and with several KV heads (decode) as whole stretches
/// of the cache's rows, which the hardware prefetchers follow. At `simd` levels with AVX2 the
/// scores of eight keys at a time and the value sums run on vectors.
#[allow(clippy::too_many_arguments)]
pub(super) fn attend<T: KvElem, R>(
    simd: Simd,
    qs: &[f32],
    out: &mut [f32],
    kv: Kv<T>,
    ranges: R,
    head_dim: usize,
    group: usize,
    scale: f32,
) where
    R: Iterator<Item = Range<usize>> + Clone,
{
    #[cfg(target_arch = "x86_64")]
    if simd.avx2() {
        // SAFETY: the level implies AVX2, FMA and F16C.
        return unsafe { attend_avx2(qs, out, kv, ranges, head_dim, group, scale) };
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    match simd {
        Simd::Relaxed => return attend_wasm::<T, R, true>(qs, out, kv, ranges, head_dim, group, scale),
        Simd::Simd128 => return attend_wasm::<T, R, false>(qs, out, kv, ranges, head_dim, group, scale),
        _ => {}
    }
    let _ = simd;
    attend_with(qs, out, kv, ranges, head_dim, group, scale, scores_portable, accumulate_portable, exps_portable)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2<T: KvElem, R>(qs: &[f32], out: &mut [f32], kv: Kv<T>, ranges: R, head_dim: usize, group: usize, scale: f32)
where
    R: Iterator<Item = Range<usize>> + Clone,
{
    // SAFETY (every closure): this function runs only where AVX2, FMA and F16C are.
    attend_with(
        qs,
        out,
        kv,
        ranges,
        head_dim,
        group,
        scale,
        |q, k, stride, s| unsafe { scores_avx2(q, k, stride, s) },
        |acc, p, v, stride| unsafe { accumulate_avx2(acc, p, v, stride) },
        |s, m| exps_avx2(s, m),
    )
}

/// [`attend`] with `wasm.rs`'s loops (`RELAXED`: relaxed SIMD's).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn attend_wasm<T: KvElem, R, const RELAXED: bool>(
    qs: &[f32],
    out: &mut [f32],
    kv: Kv<T>,
    ranges: R,
    head_dim: usize,
    group: usize,
    scale: f32,
) where
    R: Iterator<Item = Range<usize>> + Clone,
{
    let (scores, accumulate) = (wasm::scores::<T, RELAXED>, wasm::accumulate::<T, RELAXED>);
    attend_with(qs, out, kv, ranges, head_dim, group, scale, scores, accumulate, exps_portable)
}

/// [`attend`] with its inner loops: `scores(q, k, stride, s)` sets `s[j] = q · k_j` for the
/// block's keys (`k_j` at `k[j * stride..]`), `accumulate(acc, p, v, stride)` adds
/// `Σ_j p[j] v_j` to `acc`, and `exps` is [`OnlineSoftmax::weigh`]'s.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_with<T: KvElem, R>(
    qs: &[f32],
    out: &mut [f32],
    kv: Kv<T>,
    ranges: R,
    hd: usize,
    group: usize,
    scale: f32,
    scores: impl Fn(&[f32], &[T], usize, &mut [f32]),
    accumulate: impl Fn(&mut [f32], &[f32], &[T], usize),
    exps: impl Fn(&mut [f32], f32) -> [f32; LANES],
) where
    R: Iterator<Item = Range<usize>> + Clone,
{
    let mut s = [0f32; BLOCK];
    let n_heads = qs.len() / hd;
    for first in (0..n_heads).step_by(MAX_HEADS) {
        let pass = first..n_heads.min(first + MAX_HEADS);
        let (qs, out) = (&qs[pass.start * hd..pass.end * hd], &mut out[pass.start * hd..pass.end * hd]);
        // The cache columns of the pass's KV heads.
        let cols = (first / group) * hd..((pass.end - 1) / group + 1) * hd;
        let mut heads = [OnlineSoftmax::NEW; MAX_HEADS];
        out.fill(0.0);
        for range in ranges.clone() {
            for k0 in range.clone().step_by(BLOCK) {
                let n = BLOCK.min(range.end - k0);
                // The next block's rows (the pass's columns of them), while this one computes.
                for j in k0 + BLOCK..range.end.min(k0 + 2 * BLOCK) {
                    for c in cols.clone().step_by(64 / size_of::<T>()) {
                        prefetch(&kv.k[j * kv.stride + c]);
                        prefetch(&kv.v[j * kv.stride + c]);
                    }
                }
                let span = (n - 1) * kv.stride + hd;
                for (i, ((head, q), acc)) in heads.iter_mut().zip(qs.chunks_exact(hd)).zip(out.chunks_exact_mut(hd)).enumerate() {
                    let at = k0 * kv.stride + (first + i) / group * hd;
                    let (k, v) = (&kv.k[at..][..span], &kv.v[at..][..span]);
                    let s = &mut s[..n];
                    scores(q, k, kv.stride, s);
                    head.weigh(s, scale, acc, &exps);
                    accumulate(acc, s, v, kv.stride);
                }
            }
        }
        for (head, acc) in heads.iter().zip(out.chunks_exact_mut(hd)) {
            head.finish(acc);
        }
    }
}

#[inline(always)]
fn scores_portable<T: KvElem>(q: &[f32], k: &[T], stride: usize, s: &mut [f32]) {
    for (j, s) in s.iter_mut().enumerate() {
        *s = dot(q, &k[j * stride..][..q.len()]);
    }
}

#[inline(always)]
fn accumulate_portable<T: KvElem>(acc: &mut [f32], p: &[f32], v: &[T], stride: usize) {
    let hd = acc.len();
    for (j, &p) in p.iter().enumerate() {
        for (a, &vv) in acc.iter_mut().zip(&v[j * stride..][..hd]) {
            *a += p * vv.to_f32();
        }
    }
}

/// The eight lanes' sums of eight vectors, as one vector (`hadd` tree).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn sum8(a: [__m256; 8]) -> __m256 {
    let s0123 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    let s4567 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    // s0123 = [Σlo a0..a3 | Σhi a0..a3], s4567 likewise: add the halves across.
    _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31))
}

/// [`scores_portable`] eight keys at a time: eight independent FMA chains, one per key, and
/// one [`sum8`] instead of eight horizontal sums; the last few keys one chain each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_avx2<T: KvElem>(q: &[f32], k: &[T], stride: usize, s: &mut [f32]) {
    let hd = q.len();
    if !hd.is_multiple_of(LANES) {
        return scores_portable(q, k, stride, s);
    }
    assert!(s.is_empty() || k.len() >= (s.len() - 1) * stride + hd);
    let mut j = 0;
    while j + 8 <= s.len() {
        // SAFETY: key j + i < s.len() ends by (s.len() - 1) * stride + hd ≤ k.len().
        let rows: [*const T; 8] = std::array::from_fn(|i| k.as_ptr().add((j + i) * stride));
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..hd).step_by(LANES) {
            let qc = _mm256_loadu_ps(q.as_ptr().add(c));
            for (a, row) in acc.iter_mut().zip(rows) {
                *a = _mm256_fmadd_ps(qc, T::load8(row.add(c)), *a);
            }
        }
        _mm256_storeu_ps(s.as_mut_ptr().add(j), sum8(acc));
        j += 8;
    }
    for (j, s) in s.iter_mut().enumerate().skip(j) {
        // SAFETY: as above.
        let row = k.as_ptr().add(j * stride);
        let mut acc = _mm256_setzero_ps();
        for c in (0..hd).step_by(LANES) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(c)), T::load8(row.add(c)), acc);
        }
        // The eight lanes' sum: halves, then pairs, then the last two.
        let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        *s = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
    }
}

/// `acc[c..c + 8N] += Σ_j p[j] v_j[c..c + 8N]` with the N vectors in registers over the block.
///
/// # Safety
/// AVX2, FMA and F16C; `acc[c..c + 8N]` in bounds and `v` holding `(p.len() - 1) * stride + c + 8N`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate_columns<T: KvElem, const N: usize>(acc: &mut [f32], c: usize, p: &[f32], v: &[T], stride: usize) {
    let at = acc.as_mut_ptr().add(c);
    let mut a: [__m256; N] = std::array::from_fn(|i| _mm256_loadu_ps(at.add(LANES * i)));
    for (j, &pj) in p.iter().enumerate() {
        let (pj, row) = (_mm256_set1_ps(pj), v.as_ptr().add(j * stride + c));
        for (i, a) in a.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(pj, T::load8(row.add(LANES * i)), *a);
        }
    }
    for (i, a) in a.iter().enumerate() {
        _mm256_storeu_ps(at.add(LANES * i), *a);
    }
}

/// [`accumulate_portable`] with the accumulator in registers: 64 columns at a time (eight
/// independent chains), then 8 at a time, then the rest.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate_avx2<T: KvElem>(acc: &mut [f32], p: &[f32], v: &[T], stride: usize) {
    let hd = acc.len();
    if p.is_empty() {
        return;
    }
    assert!(v.len() >= (p.len() - 1) * stride + hd);
    let mut c = 0;
    while c + 8 * LANES <= hd {
        accumulate_columns::<T, 8>(acc, c, p, v, stride);
        c += 8 * LANES;
    }
    while c + LANES <= hd {
        accumulate_columns::<T, 1>(acc, c, p, v, stride);
        c += LANES;
    }
    if c < hd {
        accumulate_portable(&mut acc[c..], p, &v[c..], stride);
    }
}

/// Checks the shape and the slices for `n_tok` rows; returns the query heads per KV head.
fn check<T: KvElem>(
    s: &AttnShape,
    q: &[f32],
    k: &[T],
    v: &[T],
    out: &[f32],
    n_tok: usize,
    kv_start: usize,
) -> Result<usize, ShapeError> {
    const OP: &str = "attention";
    let (n_head, n_kv, hd) = (s.n_head as usize, s.n_kv_head as usize, s.head_dim as usize);
    if hd == 0 || n_kv == 0 || !n_head.is_multiple_of(n_kv) {
        return Err(invalid(OP, format!("{n_head} heads, {n_kv} KV heads of {hd}")));
    }
    if s.kv != T::DTYPE {
        return Err(invalid(OP, format!("{:?} caches read as {:?}", s.kv, T::DTYPE)));
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
pub fn attention_prefill<T: KvElem>(
    pool: &ThreadPool,
    shape: &AttnShape,
    q: &[f32],
    k_cache: &[T],
    v_cache: &[T],
    out: &mut [f32],
    n_tok: usize,
    kv_start: usize,
) -> Result<(), ShapeError> {
    attention_seqs(pool, vec![SeqAttention { shape: *shape, q, k_cache, v_cache, out, n_tok, kv_start }])
}

/// One sequence's side of [`attention_seqs`]: what [`attention_prefill`] takes.
pub struct SeqAttention<'a, T> {
    pub shape: AttnShape,
    pub q: &'a [f32],
    pub k_cache: &'a [T],
    pub v_cache: &'a [T],
    pub out: &'a mut [f32],
    pub n_tok: usize,
    pub kv_start: usize,
}

/// [`attention_prefill`] of each of `seqs` (the sequences of a batched step) in one pool run,
/// so that one sequence's few tasks do not leave threads idle and each sequence costs no
/// hand-off of its own.
///
/// A task is a run of KV heads of one token of one sequence, and the query heads that read
/// them: query head h of token t is its `out`'s chunk t * n_head + h, so a run is one chunk.
/// Prompt rows take one KV head per task (enough tasks, and other tokens' tasks read the same
/// cache rows); a decode row splits its heads into as many runs as the threads per sequence,
/// so that each task reads whole stretches of the caches' rows.
pub fn attention_seqs<T: KvElem>(pool: &ThreadPool, seqs: Vec<SeqAttention<T>>) -> Result<(), ShapeError> {
    let threads_per_seq = pool.threads().div_ceil(seqs.len().max(1));
    let (mut views, mut tasks) = (Vec::with_capacity(seqs.len()), Vec::new());
    for SeqAttention { shape, q, k_cache, v_cache, out, n_tok, kv_start } in seqs {
        let group = check(&shape, q, k_cache, v_cache, out, n_tok, kv_start)?;
        let (n_kv, hd) = (shape.n_kv_head as usize, shape.head_dim as usize);
        let per_task = if n_tok == 1 { n_kv.div_ceil(threads_per_seq) } else { 1 };
        let seq = views.len();
        tasks.extend(out.chunks_mut(per_task * group * hd).enumerate().map(|(i, chunk)| Mutex::new((seq, i, chunk))));
        views.push((shape, q, Kv { k: k_cache, v: v_cache, stride: n_kv * hd }, n_tok, kv_start, group, per_task));
    }
    let simd = simd::level();
    pool.run(tasks.len(), &|i| {
        // One uncontended lock per task hands it its own `&mut` chunk without `unsafe`.
        let mut claimed = tasks[i].lock().unwrap_or_else(PoisonError::into_inner);
        let (seq, task, accs) = (claimed.0, claimed.1, &mut *claimed.2);
        let (shape, q, kv, n_tok, kv_start, group, per_task) = views[seq];
        let hd = shape.head_dim as usize;
        let tasks_per_tok = (shape.n_kv_head as usize).div_ceil(per_task);
        let (t, kvh) = (task / tasks_per_tok, task % tasks_per_tok * per_task);
        let mut n_keys = if shape.causal { kv_start + t + 1 } else { kv_start + n_tok };
        if t >= shape.valid_rows as usize {
            n_keys = n_keys.min(shape.valid_rows as usize);
        }
        let q0 = t * shape.q_stride as usize + shape.q_offset as usize + kvh * group * hd;
        let kv = Kv { k: &kv.k[kvh * hd..], v: &kv.v[kvh * hd..], stride: kv.stride };
        attend(simd, &q[q0..][..accs.len()], accs, kv, std::iter::once(0..n_keys), hd, group, shape.scale);
    });
    Ok(())
}

/// [`attention_prefill`] of one query row (decode) at cache row `kv_start`.
pub fn attention_decode<T: KvElem>(
    pool: &ThreadPool,
    shape: &AttnShape,
    q: &[f32],
    k_cache: &[T],
    v_cache: &[T],
    out: &mut [f32],
    kv_start: usize,
) -> Result<(), ShapeError> {
    attention_prefill(pool, shape, q, k_cache, v_cache, out, 1, kv_start)
}

#[cfg(test)]
mod tests {
    /// The softmax weights of a block on AVX2 vectors are the portable loop's bits: every
    /// block length (the vector body and the scalar rest), scores near and far below the
    /// maximum, and past where `exp` gives 0.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exps_avx2_gives_the_portable_bits() {
        if !crate::backend::cpu::simd::Simd::Avx2.is_supported() {
            return;
        }
        let mut rng = crate::gguf::SplitMix64::new(17);
        for n in 0..=super::BLOCK {
            for spread in [1.0, 30.0, 120.0] {
                let s: Vec<f32> = (0..n).map(|_| rng.uniform(-spread, 0.0)).collect();
                let m = rng.uniform(-1.0, 1.0);
                let (mut want, mut got) = (s.clone(), s.clone());
                let want_sums = super::exps_portable(&mut want, m);
                // SAFETY: AVX2, FMA and F16C (the level's features), checked above.
                let got_sums = unsafe { super::exps_avx2(&mut got, m) };
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{n} scores, spread {spread}");
                assert_eq!(bits(&got_sums), bits(&want_sums), "{n} scores, spread {spread}");
            }
        }
    }
}
