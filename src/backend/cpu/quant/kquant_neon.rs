//! NEON + dot-product row dot products of Q4_K, Q5_K and Q6_K (256-element super-blocks).
//!
//! Fast mode, after llama.cpp's NEON `ggml_vec_dot_q4_K_q8_K` / `q5_K_q8_K` / `q6_K_q8_K`
//! (ggml-cpu `arch/arm/quants.c`, the `__ARM_FEATURE_DOTPROD` paths) and candle's
//! `quantized/neon.rs`: the codes as bytes (Q4_K the nibbles of 32 packed bytes, low for
//! sub-block `2j`, high for `2j + 1`; Q5_K with the fifth bits of `qh`, two per pass, moved to
//! bit 4; Q6_K four bits of `ql` and two of `qh` per code, a quarter of its half at a time),
//! each 16 against 16 activation codes in one `sdot` (four byte products per i32 lane, exact),
//! the lanes multiplied by their sub-block's (Q6_K: group of 16's) scale and summed in i32
//! lanes (`vmlaq_n_s32`), added across once per super-block. Mins (Q4_K, Q5_K) and Q6_K's `-32`
//! come from the activations' per-16 sums. Per super-block the f32 step of `scalar.rs`, so the
//! rows equal the scalar path's (and its K-quant tiles', `ktile.rs`) bit for bit: every integer
//! sum is exact (codes below 64 times activations of at most 127, far below i32 per
//! super-block).
//!
//! Exact mode: per sub-block (Q6_K: per group of 16) the codes widened to f32 and dequantized in
//! registers (`d sc q - dmin m`, `d sc (q - 32)`), multiplied into four independent
//! `vfmaq_f32` accumulators (another order than the scalar `dequant_dot`'s, within f32 rounding
//! of it).
//!
//! Callers pass one row of whole super-blocks and as many activation blocks (or 256 values per
//! block), and call only on CPUs with NEON and the dot-product extension.

use std::arch::aarch64::*;

use super::neon::{dot32, f16_at, fma16, load_u8x16, load_u8x32, sdot, sum4, widen16};
use super::scalar::{min_sum, scales_k4};
use super::BlockQ8K;

/// The 64 codes of sub-blocks `2j` and `2j + 1` of a Q4_K/Q5_K super-block, two vectors of 16
/// each: the low and high nibbles of `qs[..32]` (its `32j..32j + 32`), with Q5_K's fifth bits
/// from the two lowest bits of `qh`'s bytes, which are then shifted out for the next `j`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn codes45(qs: &[u8], qh: &mut Option<[uint8x16_t; 2]>) -> [[int8x16_t; 2]; 2] {
    let q = load_u8x32(qs);
    let (mut lo, mut hi) = (q.map(|q| vandq_u8(q, vdupq_n_u8(0x0F))), q.map(|q| vshrq_n_u8::<4>(q)));
    if let Some(qh) = qh {
        for k in 0..2 {
            lo[k] = vorrq_u8(lo[k], vshlq_n_u8::<4>(vandq_u8(qh[k], vdupq_n_u8(1))));
            hi[k] = vorrq_u8(hi[k], vshlq_n_u8::<3>(vandq_u8(qh[k], vdupq_n_u8(2))));
            qh[k] = vshrq_n_u8::<2>(qh[k]);
        }
    }
    [lo.map(|q| vreinterpretq_s8_u8(q)), hi.map(|q| vreinterpretq_s8_u8(q))]
}

/// Fast Q4_K (`qh_at: None`) or Q5_K (fifth bits at `qh_at`), codes at `qs_at`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn q45(row: &[u8], x: &[BlockQ8K], size: usize, qs_at: usize, qh_at: Option<usize>) -> f32 {
    let mut acc = 0.0;
    for (b, xb) in row.chunks_exact(size).zip(x) {
        let (scales, mins) = scales_k4(&b[4..16]);
        let mut qh = qh_at.map(|at| load_u8x32(&b[at..at + 32]));
        let mut sumi = vdupq_n_s32(0);
        for j in 0..4 {
            for (i, c) in codes45(&b[qs_at + 32 * j..], &mut qh).into_iter().enumerate() {
                let s = 2 * j + i;
                sumi = vmlaq_n_s32(sumi, dot32(c, &xb.qs[32 * s..]), scales[s] as i32);
            }
        }
        let (d, dmin) = (f16_at(b, 0) * xb.d, f16_at(b, 2) * xb.d);
        acc += d * vaddvq_s32(sumi) as f32 - dmin * min_sum(&mins, &xb.bsums) as f32;
    }
    acc
}

#[target_feature(enable = "neon,dotprod")]
pub(super) fn q4_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    q45(row, x, 144, 16, None)
}

#[target_feature(enable = "neon,dotprod")]
pub(super) fn q5_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    q45(row, x, 176, 48, Some(16))
}

/// The 256 codes (values 0..64) of a Q6_K super-block `b` in element order, in groups of 16
/// (group `g` is the `g`th vector): half `h`, quarter `k`, lanes `16i..16i + 16` is group
/// `8h + 2k + i`, its low four bits from `ql` (the low or high nibbles of one of its half's
/// 64 bytes' two halves), its top two from bits `2k, 2k + 1` of the half's 32 `qh` bytes.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn codes6(b: &[u8]) -> [uint8x16_t; 16] {
    let mut out = [vdupq_n_u8(0); 16];
    for h in 0..2 {
        let ql: [uint8x16_t; 4] = std::array::from_fn(|i| load_u8x16(&b[64 * h + 16 * i..]));
        let mut qh = load_u8x32(&b[128 + 32 * h..]);
        for k in 0..4 {
            for i in 0..2 {
                let low = ql[2 * (k & 1) + i];
                let low = if k < 2 { vandq_u8(low, vdupq_n_u8(0x0F)) } else { vshrq_n_u8::<4>(low) };
                let high = vshlq_n_u8::<4>(vandq_u8(qh[i], vdupq_n_u8(3)));
                out[8 * h + 2 * k + i] = vorrq_u8(low, high);
                qh[i] = vshrq_n_u8::<2>(qh[i]);
            }
        }
    }
    out
}

/// `Σ_g sc_g bsums_g` over a Q6_K super-block's 16 signed scales (`b[192..208]`).
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn scaled_bsums(b: &[u8], bsums: &[i16; 16]) -> i32 {
    let sc = vreinterpretq_s8_u8(load_u8x16(&b[192..208]));
    let (lo, hi) = (vmovl_s8(vget_low_s8(sc)), vmovl_high_s8(sc));
    // SAFETY: `bsums` holds 16 i16.
    let (b0, b1) = unsafe { (vld1q_s16(bsums.as_ptr()), vld1q_s16(bsums[8..].as_ptr())) };
    let p = vmull_s16(vget_low_s16(lo), vget_low_s16(b0));
    let p = vmlal_high_s16(p, lo, b0);
    let p = vmlal_s16(p, vget_low_s16(hi), vget_low_s16(b1));
    vaddvq_s32(vmlal_high_s16(p, hi, b1))
}

#[target_feature(enable = "neon,dotprod")]
pub(super) fn q6_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0;
    for (b, xb) in row.chunks_exact(210).zip(x) {
        let mut sumi = vdupq_n_s32(0);
        for (g, c) in codes6(b).into_iter().enumerate() {
            // SAFETY: `xb.qs` holds 256 codes, `16g + 16` at most.
            let xq = unsafe { vld1q_s8(xb.qs[16 * g..][..16].as_ptr()) };
            let dot = sdot(vdupq_n_s32(0), vreinterpretq_s8_u8(c), xq);
            sumi = vmlaq_n_s32(sumi, dot, b[192 + g] as i8 as i32);
        }
        let sumi = vaddvq_s32(sumi) - 32 * scaled_bsums(b, &xb.bsums);
        acc += f16_at(b, 208) * xb.d * sumi as f32;
    }
    acc
}

/// Exact Q4_K / Q5_K, laid out as [`q45`] takes them.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn q45_exact(row: &[u8], x: &[f32], size: usize, qs_at: usize, qh_at: Option<usize>) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    for (b, xs) in row.chunks_exact(size).zip(x.chunks_exact(256)) {
        let (scales, mins) = scales_k4(&b[4..16]);
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let mut qh = qh_at.map(|at| load_u8x32(&b[at..at + 32]));
        for j in 0..4 {
            for (i, c) in codes45(&b[qs_at + 32 * j..], &mut qh).into_iter().enumerate() {
                let s = 2 * j + i;
                let (a, m) = (vdupq_n_f32(d * scales[s] as f32), vdupq_n_f32(-(dmin * mins[s] as f32)));
                for (c, xs) in c.into_iter().zip(xs[32 * s..32 * s + 32].chunks_exact(16)) {
                    fma16(&mut acc, widen16(c, false).map(|q| vfmaq_f32(m, a, q)), xs);
                }
            }
        }
    }
    sum4(acc)
}

#[target_feature(enable = "neon,dotprod")]
pub(super) fn q4_k_exact(row: &[u8], x: &[f32]) -> f32 {
    q45_exact(row, x, 144, 16, None)
}

#[target_feature(enable = "neon,dotprod")]
pub(super) fn q5_k_exact(row: &[u8], x: &[f32]) -> f32 {
    q45_exact(row, x, 176, 48, Some(16))
}

#[target_feature(enable = "neon,dotprod")]
pub(super) fn q6_k_exact(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    for (b, xs) in row.chunks_exact(210).zip(x.chunks_exact(256)) {
        let d = f16_at(b, 208);
        for ((g, c), xs) in codes6(b).into_iter().enumerate().zip(xs.chunks_exact(16)) {
            let q = vsubq_s8(vreinterpretq_s8_u8(c), vdupq_n_s8(32));
            let dg = vdupq_n_f32(d * b[192 + g] as i8 as f32);
            fma16(&mut acc, widen16(q, true).map(|q| vmulq_f32(dg, q)), xs);
        }
    }
    sum4(acc)
}
