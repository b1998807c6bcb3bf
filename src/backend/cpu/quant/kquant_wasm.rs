//! wasm32 SIMD128 (and relaxed SIMD) row dot products of Q4_K, Q5_K and Q6_K (256-element
//! super-blocks).
//!
//! Fast mode, after llama.cpp's `ggml_vec_dot_q4_K_q8_K` / `q5_K_q8_K` / `q6_K_q8_K` on WASM
//! SIMD (ggml-cpu `arch/wasm/quants.c`) and candle's `quantized/simd128.rs`: the codes as bytes
//! (Q4_K the nibbles of 32 packed bytes, low for sub-block `2j`, high for `2j + 1`; Q5_K with
//! the fifth bits of `qh`, two per pass, moved to bit 4; Q6_K four bits of `ql` and two of `qh`
//! per code, a quarter of its half at a time), all below 64. Each 16 against 16 activation
//! codes in eight i16 lanes of two products ([`dot16_u6`]: the SIMD128 widening products, or
//! one relaxed dot, the codes being its 7-bit operand), which `i32x4.dot_i16x8_s` against the
//! sub-block's (Q6_K: group of 16's) scale adds in pairs to i32 lanes, scaled (Q4_K/Q5_K: a
//! sub-block's two halves added in i16 first, one scaling per 32 codes); the lanes are
//! added across once per super-block. Q4_K/Q5_K's packed 6-bit scales and mins are unpacked in
//! lanes (shuffles and masks for `scalar.rs`'s `scales_k4`); the mins (Q4_K, Q5_K) and Q6_K's
//! `-32` meet the activations' per-16 sums in `dot_i16x8` lanes. Per super-block the f32 step of
//! `scalar.rs`, so the rows equal the scalar path's (and the K-quant tiles', `ktile.rs` and
//! `ktile_wasm.rs`) bit for bit: every integer sum is exact
//! (codes below 64 times activations of at most 128 in magnitude, times scales below 128, far
//! below i32 per super-block).
//!
//! Exact mode: per sub-block (Q6_K: per group of 16) the codes widened to f32 and dequantized in
//! registers (`d sc q - dmin m`, `d sc (q - 32)`), multiplied into four independent
//! accumulators (another order than the scalar `dequant_dot`'s, within f32 rounding of it).
//!
//! Callers pass one row of whole super-blocks and as many activation blocks (or 256 values per
//! block).

use core::arch::wasm32::*;

use super::scalar::scales_k4;
use super::wasm::{dot16_u6, f16_at, hsum_i32, load, load_i8, madd, madd16, sum4, widen16};
use super::BlockQ8K;

/// `acc + sc Σ w·x` in i32 lanes over 16 codes `w` (below 64) and activations `x`.
#[inline(always)]
fn dot16_scaled<const R: bool>(acc: v128, w: v128, x: v128, sc: i16) -> v128 {
    i32x4_add(acc, i32x4_dot_i16x8(dot16_u6::<R>(w, x), i16x8_splat(sc)))
}

/// The 64 codes of sub-blocks `2j` and `2j + 1` of a Q4_K/Q5_K super-block, two vectors of 16
/// each: the low and high nibbles of `qs[..32]` (its `32j..32j + 32`), with Q5_K's fifth bits
/// from the two lowest bits of `qh`'s bytes, which are then shifted out for the next `j`.
#[inline(always)]
pub(super) fn codes45(qs: &[u8], qh: &mut Option<[v128; 2]>) -> [[v128; 2]; 2] {
    let q = [load(qs), load(&qs[16..])];
    let (mut lo, mut hi) = (q.map(|q| v128_and(q, u8x16_splat(0x0F))), q.map(|q| u8x16_shr(q, 4)));
    if let Some(qh) = qh {
        for k in 0..2 {
            lo[k] = v128_or(lo[k], i8x16_shl(v128_and(qh[k], u8x16_splat(1)), 4));
            hi[k] = v128_or(hi[k], i8x16_shl(v128_and(qh[k], u8x16_splat(2)), 3));
            qh[k] = u8x16_shr(qh[k], 2);
        }
    }
    [lo, hi]
}

/// A Q4_K/Q5_K super-block's eight 6-bit scales (bytes 0..8) and mins (bytes 8..16), unpacked
/// from its twelve bytes `b[4..16]` as `scalar.rs`'s `scales_k4` does, in lanes: scales 0..4
/// and mins 0..4 are the low six bits of bytes 0..4 and 4..8; scales 4..8 (mins 4..8) the low
/// (high) nibbles of bytes 8..12 with the top two bits of bytes 0..4 (4..8) above them.
#[inline(always)]
fn scales_mins(b: &[u8]) -> v128 {
    let (v, zero) = (load(b), u8x16_splat(0));
    let low = i8x16_shuffle::<4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15>(v, v);
    let low = v128_bitselect(u8x16_shr(low, 4), low, u32x4(0, 0, 0, u32::MAX));
    let low = v128_and(low, u8x16(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15));
    let top = i8x16_shuffle::<16, 16, 16, 16, 4, 5, 6, 7, 16, 16, 16, 16, 8, 9, 10, 11>(v, zero);
    v128_or(low, u8x16_shr(v128_and(top, u8x16_splat(0xC0)), 2))
}

/// `[Σ a, Σ b]`: the lane sums of two i32 vectors (wrapping).
#[inline(always)]
fn hsum2_i32(a: v128, b: v128) -> [i32; 2] {
    let t = i32x4_add(i32x4_shuffle::<0, 1, 4, 5>(a, b), i32x4_shuffle::<2, 3, 6, 7>(a, b));
    let t = i32x4_add(t, i32x4_shuffle::<1, 0, 3, 2>(t, t));
    [i32x4_extract_lane::<0>(t), i32x4_extract_lane::<2>(t)]
}

/// `Σ_s m_s (bsums[2s] + bsums[2s + 1])` in i32 lanes: the mins (bytes 8..16 of
/// [`scales_mins`]) each widened into two i16 lanes, against the per-16 sums.
#[inline(always)]
fn min_lanes(sm: v128, bsums: &[i16; 16]) -> v128 {
    let zero = u8x16_splat(0);
    let m0 = i8x16_shuffle::<8, 16, 8, 16, 9, 16, 9, 16, 10, 16, 10, 16, 11, 16, 11, 16>(sm, zero);
    let m1 = i8x16_shuffle::<12, 16, 12, 16, 13, 16, 13, 16, 14, 16, 14, 16, 15, 16, 15, 16>(sm, zero);
    // SAFETY: `bsums` holds 16 i16 (32 bytes); wasm loads take any alignment.
    let (b0, b1) = unsafe { (v128_load(bsums.as_ptr().cast()), v128_load(bsums[8..].as_ptr().cast())) };
    i32x4_add(i32x4_dot_i16x8(m0, b0), i32x4_dot_i16x8(m1, b1))
}

/// Fast Q4_K (`qh_at: None`) or Q5_K (fifth bits at `qh_at`), codes at `qs_at`.
#[inline(always)]
fn q45<const R: bool>(row: &[u8], x: &[BlockQ8K], size: usize, qs_at: usize, qh_at: Option<usize>) -> f32 {
    let mut acc = 0.0;
    for (b, xb) in row.chunks_exact(size).zip(x) {
        let sm = scales_mins(b);
        // SAFETY: a v128 is 16 bytes.
        let scales: [u8; 16] = unsafe { core::mem::transmute(sm) };
        let mut qh = qh_at.map(|at| [load(&b[at..]), load(&b[at + 16..])]);
        let mut sumi = i32x4_splat(0);
        for j in 0..4 {
            for (i, c) in codes45(&b[qs_at + 32 * j..], &mut qh).into_iter().enumerate() {
                let s = 2 * j + i;
                let xs = &xb.qs[32 * s..];
                // The sub-block's two halves share its scale: their i16 lanes (at most
                // 2·2·31·128 in magnitude, exact) are added before the scaling.
                let p = i16x8_add(dot16_u6::<R>(c[0], load_i8(xs)), dot16_u6::<R>(c[1], load_i8(&xs[16..])));
                sumi = i32x4_add(sumi, i32x4_dot_i16x8(p, i16x8_splat(scales[s].into())));
            }
        }
        let [sumi, min] = hsum2_i32(sumi, min_lanes(sm, &xb.bsums));
        let (d, dmin) = (f16_at(b, 0) * xb.d, f16_at(b, 2) * xb.d);
        acc += d * sumi as f32 - dmin * min as f32;
    }
    acc
}

pub(super) fn q4_k<const R: bool>(row: &[u8], x: &[BlockQ8K]) -> f32 {
    q45::<R>(row, x, 144, 16, None)
}

pub(super) fn q5_k<const R: bool>(row: &[u8], x: &[BlockQ8K]) -> f32 {
    q45::<R>(row, x, 176, 48, Some(16))
}

/// The 256 codes (values 0..64) of a Q6_K super-block `b` in element order, in groups of 16
/// (group `g` is the `g`th vector): half `h`, quarter `k`, lanes `16i..16i + 16` is group
/// `8h + 2k + i`, its low four bits from `ql` (the low or high nibbles of one of its half's
/// 64 bytes' two halves), its top two from bits `2k, 2k + 1` of the half's 32 `qh` bytes,
/// shifted straight to bits 4 and 5.
#[inline(always)]
pub(super) fn codes6(b: &[u8]) -> [v128; 16] {
    let mut out = [u8x16_splat(0); 16];
    let (nibble, top) = (u8x16_splat(0x0F), u8x16_splat(0x30));
    for h in 0..2 {
        let ql: [v128; 4] = std::array::from_fn(|i| load(&b[64 * h + 16 * i..]));
        for i in 0..2 {
            let qh = load(&b[128 + 32 * h + 16 * i..]);
            let high = [i8x16_shl(qh, 4), i8x16_shl(qh, 2), qh, u8x16_shr(qh, 2)];
            for (k, high) in high.into_iter().enumerate() {
                let low = ql[2 * (k & 1) + i];
                let low = if k < 2 { v128_and(low, nibble) } else { u8x16_shr(low, 4) };
                out[8 * h + 2 * k + i] = v128_or(low, v128_and(high, top));
            }
        }
    }
    out
}

/// `Σ_g sc_g bsums_g` in i32 lanes over a Q6_K super-block's 16 signed scales (`b[192..208]`).
#[inline(always)]
fn scaled_bsums(b: &[u8], bsums: &[i16; 16]) -> v128 {
    let sc = load(&b[192..208]);
    // SAFETY: `bsums` holds 16 i16 (32 bytes); wasm loads take any alignment.
    let (b0, b1) = unsafe { (v128_load(bsums.as_ptr().cast()), v128_load(bsums[8..].as_ptr().cast())) };
    i32x4_add(i32x4_dot_i16x8(i16x8_extend_low_i8x16(sc), b0), i32x4_dot_i16x8(i16x8_extend_high_i8x16(sc), b1))
}

pub(super) fn q6_k<const R: bool>(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0;
    for (b, xb) in row.chunks_exact(210).zip(x) {
        let mut sumi = i32x4_splat(0);
        for (g, c) in codes6(b).into_iter().enumerate() {
            sumi = dot16_scaled::<R>(sumi, c, load_i8(&xb.qs[16 * g..]), (b[192 + g] as i8).into());
        }
        // The codes' offset of 32, in the same lanes before the one sum across.
        let sumi = hsum_i32(i32x4_sub(sumi, i32x4_shl(scaled_bsums(b, &xb.bsums), 5)));
        acc += f16_at(b, 208) * xb.d * sumi as f32;
    }
    acc
}

/// Exact Q4_K / Q5_K, laid out as [`q45`] takes them.
#[inline(always)]
fn q45_exact<const R: bool>(row: &[u8], x: &[f32], size: usize, qs_at: usize, qh_at: Option<usize>) -> f32 {
    let mut acc = [f32x4_splat(0.0); 4];
    for (b, xs) in row.chunks_exact(size).zip(x.chunks_exact(256)) {
        let (scales, mins) = scales_k4(&b[4..16]);
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let mut qh = qh_at.map(|at| [load(&b[at..]), load(&b[at + 16..])]);
        for j in 0..4 {
            for (i, c) in codes45(&b[qs_at + 32 * j..], &mut qh).into_iter().enumerate() {
                let s = 2 * j + i;
                let (a, m) = (f32x4_splat(d * scales[s] as f32), f32x4_splat(-(dmin * mins[s] as f32)));
                for (c, xs) in c.into_iter().zip(xs[32 * s..32 * s + 32].chunks_exact(16)) {
                    madd16::<R>(&mut acc, widen16(c, false).map(|q| madd::<R>(a, q, m)), xs);
                }
            }
        }
    }
    sum4(acc)
}

pub(super) fn q4_k_exact<const R: bool>(row: &[u8], x: &[f32]) -> f32 {
    q45_exact::<R>(row, x, 144, 16, None)
}

pub(super) fn q5_k_exact<const R: bool>(row: &[u8], x: &[f32]) -> f32 {
    q45_exact::<R>(row, x, 176, 48, Some(16))
}

pub(super) fn q6_k_exact<const R: bool>(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [f32x4_splat(0.0); 4];
    for (b, xs) in row.chunks_exact(210).zip(x.chunks_exact(256)) {
        let d = f16_at(b, 208);
        for ((g, c), xs) in codes6(b).into_iter().enumerate().zip(xs.chunks_exact(16)) {
            let q = i8x16_sub(c, i8x16_splat(32));
            let dg = f32x4_splat(d * b[192 + g] as i8 as f32);
            madd16::<R>(&mut acc, widen16(q, true).map(|q| f32x4_mul(dg, q)), xs);
        }
    }
    sum4(acc)
}
