//! wasm32 SIMD128 kernels (and relaxed SIMD): the helpers the block formats' rows share
//! (`legacy_wasm.rs`, `kquant_wasm.rs`), and the F32, F16 and BF16 row dot products (both
//! modes).
//!
//! Every kernel takes a const parameter `R`: whether it runs at
//! [`Simd::Relaxed`](super::Simd::Relaxed), whose build has `relaxed-simd`. There the byte dots
//! of 7-bit weight codes (the 4-, 5- and 6-bit formats') take `i16x8.relaxed_dot_i8x16_i7x16_s`
//! (V8 on x86: `pmaddubsw`), and the f32 products `f32x4.relaxed_madd` (a fused multiply-add
//! where the CPU has one). The relaxed dot's lanes
//! are the exact sums of their two products whenever its second operand's bytes are below 128
//! (any engine's choice of signed or unsigned reading, with or without i16 saturation, agrees
//! there: a pair of products is at most 2·127·128 in magnitude), so both levels give the same
//! integer sums. The SIMD128 byte dots widen the products to i16
//! (`i16x8.extmul_{low,high}_i8x16_s`, exact: at most 128²) and add them to i32 in pairs
//! (`i32x4.extadd_pairwise_i16x8_s`, or `i32x4.dot_i16x8_s` against a scale; Q8_0 widens both
//! sides first, [`dot_i8`]), as llama.cpp's
//! `__wasm_simd128__` paths (ggml-cpu `arch/wasm/quants.c`) and candle's `quantized/simd128.rs`
//! widen theirs.
//!
//! Float rows, as llama.cpp's `ggml_vec_dot_f32` / `_f16` / `_bf16` on WASM SIMD (ggml-cpu
//! `simd-mappings.h`'s `GGML_F32x4` loops): steps of 16 into four accumulators of four lanes,
//! the rest by `float.rs`'s scalar loop; another summation order than the scalar path's
//! (within f32 rounding of it). wasm has no f16 conversion: F16 widens in vectors by moving
//! the exponent and mantissa bits into place and scaling by 2^112 (exact, subnormals
//! included; three times as fast as a table of 65536 f32 read per weight: 865 against 2547 ns
//! per 1536-column row under Node 20); BF16 is its bits shifted above sixteen zero bits.
//!
//! The whole module is built only with `simd128` (a wasm module holding SIMD instructions does
//! not load in an engine without them), and the relaxed forms only with `relaxed-simd`; the
//! intrinsics are safe functions in such a build.

use core::arch::wasm32::*;

use super::float;

/// The 16 bytes at `b[..16]`.
#[inline(always)]
pub(super) fn load(b: &[u8]) -> v128 {
    let b = &b[..16];
    // SAFETY: `b` holds 16 bytes; wasm loads take any alignment.
    unsafe { v128_load(b.as_ptr().cast()) }
}

/// The 16 signed bytes at `b[..16]`.
#[inline(always)]
pub(super) fn load_i8(b: &[i8]) -> v128 {
    let b = &b[..16];
    // SAFETY: as in `load`.
    unsafe { v128_load(b.as_ptr().cast()) }
}

/// The four f32 at `x[..4]`.
#[inline(always)]
pub(in crate::backend::cpu) fn load_f32(x: &[f32]) -> v128 {
    let x = &x[..4];
    // SAFETY: `x` holds four f32; wasm loads take any alignment.
    unsafe { v128_load(x.as_ptr().cast()) }
}

/// The f16 with bits `h` as f32, exact (subnormals, infinities; a NaN stays a NaN):
/// exponent and mantissa moved to f32's places, scaled by 2^112 (the exponents' bias apart,
/// exact also for subnormal halves, which land on f32 subnormals first), the exponent of
/// infinities and NaNs set to all ones, the sign put back.
#[inline(always)]
pub(super) fn f16_to_f32(h: u16) -> f32 {
    let magnitude = u32::from(h & 0x7FFF);
    let scaled = f32::from_bits(magnitude << 13) * f32::from_bits(0x7780_0000);
    let bits = if magnitude >= 0x7C00 { (magnitude << 13) | 0x7F80_0000 } else { scaled.to_bits() };
    f32::from_bits(bits | u32::from(h & 0x8000) << 16)
}

/// The f16 at `b[at..at + 2]` as f32 ([`f16_to_f32`]).
#[inline(always)]
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Four f16 (the low 16 bits of each u32 lane, the high bits zero) as f32: [`f16_to_f32`] in
/// lanes.
#[inline(always)]
pub(in crate::backend::cpu) fn f16x4(h: v128) -> v128 {
    let magnitude = v128_and(h, u32x4_splat(0x7FFF));
    let shifted = i32x4_shl(magnitude, 13);
    let scaled = f32x4_mul(shifted, f32x4_splat(f32::from_bits(0x7780_0000)));
    let special = i32x4_ge(magnitude, i32x4_splat(0x7C00));
    let out = v128_bitselect(v128_or(shifted, u32x4_splat(0x7F80_0000)), scaled, special);
    v128_or(out, i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16))
}

/// `Σ a·b` per i32 lane over four pairs of signed bytes (which four differs from `sdot`'s;
/// only lane sums are used): both widened to i16, multiplied and added in pairs to i32 by
/// `i32x4.dot_i16x8_s` (exact). Measured faster than widening products (`extmul`) added in
/// pairs (`extadd_pairwise`), whose i16 sums could overflow here (two products of -128²).
#[inline(always)]
pub(super) fn dot_i8(a: v128, b: v128) -> v128 {
    let lo = i32x4_dot_i16x8(i16x8_extend_low_i8x16(a), i16x8_extend_low_i8x16(b));
    i32x4_add(lo, i32x4_dot_i16x8(i16x8_extend_high_i8x16(a), i16x8_extend_high_i8x16(b)))
}

/// `Σ w·x` over 16 pairs of bytes as eight i16 lanes of two products each (which two differs
/// between the levels; only lane sums are used), `w` codes below 64 and `x` signed (a lane is
/// at most 2·63·128 in magnitude: exact in i16). At `R` one relaxed dot (`w` is its 7-bit
/// operand).
#[inline(always)]
pub(super) fn dot16_u6<const R: bool>(w: v128, x: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    if R {
        return i16x8_relaxed_dot_i8x16_i7x16(x, w);
    }
    i16x8_add(i16x8_extmul_low_i8x16(w, x), i16x8_extmul_high_i8x16(w, x))
}

/// `Σ w·x` in i32 lanes over the 32 pairs of bytes of `w` (codes below 16) and `x` (signed):
/// i16 lanes of four products (at most 4·15·128 in magnitude, exact) added in pairs. At `R` the
/// products in pairs by two relaxed dots (`w` is their 7-bit operand). Not the accumulating
/// `i32x4.relaxed_dot_i8x16_i7x16_add_s`: fed its own previous result, it gave wrong sums in
/// the baseline compiler (Liftoff) of Node 20's V8 (11.3).
#[inline(always)]
pub(super) fn dot32_u4<const R: bool>(w: [v128; 2], x: [v128; 2]) -> v128 {
    let p = |k: usize| dot16_u6::<R>(w[k], x[k]);
    i32x4_extadd_pairwise_i16x8(i16x8_add(p(0), p(1)))
}

/// The sum of the four i32 lanes of `v` (wrapping, as exact sums never wrap).
#[inline(always)]
pub(super) fn hsum_i32(v: v128) -> i32 {
    let v = i32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    let v = i32x4_add(v, i32x4_shuffle::<1, 0, 3, 2>(v, v));
    i32x4_extract_lane::<0>(v)
}

/// The lane sums of four i32 vectors, as one vector (`[Σa, Σb, Σc, Σd]`, wrapping).
#[inline(always)]
pub(super) fn hsum4_i32(v: [v128; 4]) -> v128 {
    let ab = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(v[0], v[1]), i32x4_shuffle::<2, 6, 3, 7>(v[0], v[1]));
    let cd = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(v[2], v[3]), i32x4_shuffle::<2, 6, 3, 7>(v[2], v[3]));
    i32x4_add(i32x4_shuffle::<0, 1, 4, 5>(ab, cd), i32x4_shuffle::<2, 3, 6, 7>(ab, cd))
}

/// `acc + w·x` in f32 lanes: at `R` a relaxed multiply-add (fused or not, the engine's choice).
#[inline(always)]
pub(super) fn madd<const R: bool>(w: v128, x: v128, acc: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    if R {
        return f32x4_relaxed_madd(w, x, acc);
    }
    f32x4_add(acc, f32x4_mul(w, x))
}

/// `acc[k] += w[k] * x[4k..4k + 4]` for sixteen weights.
#[inline(always)]
pub(super) fn madd16<const R: bool>(acc: &mut [v128; 4], w: [v128; 4], x: &[f32]) {
    let x = &x[..16];
    for k in 0..4 {
        acc[k] = madd::<R>(w[k], load_f32(&x[4 * k..]), acc[k]);
    }
}

/// The sum of four accumulators' lanes.
#[inline(always)]
pub(super) fn sum4(acc: [v128; 4]) -> f32 {
    let v = f32x4_add(f32x4_add(acc[0], acc[1]), f32x4_add(acc[2], acc[3]));
    let v = f32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    let v = f32x4_add(v, i32x4_shuffle::<1, 0, 3, 2>(v, v));
    f32x4_extract_lane::<0>(v)
}

/// 16 bytes as four vectors of four f32, in order (`signed`: the bytes are i8, else u8).
#[inline(always)]
pub(super) fn widen16(q: v128, signed: bool) -> [v128; 4] {
    let (lo, hi) = match signed {
        true => (i16x8_extend_low_i8x16(q), i16x8_extend_high_i8x16(q)),
        false => (u16x8_extend_low_u8x16(q), u16x8_extend_high_u8x16(q)),
    };
    // The i16 lanes are non-negative when unsigned: the signed widening keeps them.
    [i32x4_extend_low_i16x8(lo), i32x4_extend_high_i16x8(lo), i32x4_extend_low_i16x8(hi), i32x4_extend_high_i16x8(hi)]
        .map(|v| f32x4_convert_i32x4(v))
}

const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;

/// Sixteen weights of format `F` from `c` (their bytes) as f32.
#[inline(always)]
fn load16<const F: u8>(c: &[u8]) -> [v128; 4] {
    match F {
        F32 => {
            let c = &c[..64];
            [0, 16, 32, 48].map(|k| load(&c[k..]))
        }
        _ => {
            let c = &c[..32];
            let h = [load(c), load(&c[16..])];
            let wide = h.map(|h| [u32x4_extend_low_u16x8(h), u32x4_extend_high_u16x8(h)]);
            let [[a, b], [c, d]] = wide;
            match F {
                F16 => [a, b, c, d].map(f16x4),
                _ => [a, b, c, d].map(|v| i32x4_shl(v, 16)),
            }
        }
    }
}

/// A float row of format `F` (`size` bytes per weight): whole steps of 16 into four
/// accumulators, the rest by `tail` (`float.rs`'s scalar row).
#[inline(always)]
fn float_row<const F: u8, const R: bool>(row: &[u8], x: &[f32], size: usize, tail: fn(&[u8], &[f32]) -> f32) -> f32 {
    let mut acc = [f32x4_splat(0.0); 4];
    let whole = x.len() / 16 * 16;
    for (c, xs) in row[..whole * size].chunks_exact(16 * size).zip(x.chunks_exact(16)) {
        madd16::<R>(&mut acc, load16::<F>(c), xs);
    }
    sum4(acc) + tail(&row[whole * size..], &x[whole..])
}

pub(super) fn f32_row<const R: bool>(row: &[u8], x: &[f32]) -> f32 {
    float_row::<F32, R>(row, x, 4, float::f32_row)
}

pub(super) fn f16_row<const R: bool>(row: &[u8], x: &[f32]) -> f32 {
    float_row::<F16, R>(row, x, 2, float::f16_row)
}

pub(super) fn bf16_row<const R: bool>(row: &[u8], x: &[f32]) -> f32 {
    float_row::<BF16, R>(row, x, 2, float::bf16_row)
}

#[cfg(test)]
mod tests {
    use core::arch::wasm32::*;

    /// Every f16 converts as `half` converts it, in the scalar and the vector form (NaNs to
    /// NaNs of the same sign: `half` also sets their quiet bit).
    #[test]
    fn f16_conversions_are_exact() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let lanes = super::f16x4(u32x4_splat(u32::from(h)));
            for got in [super::f16_to_f32(h), f32x4_extract_lane::<0>(lanes), f32x4_extract_lane::<3>(lanes)] {
                let same = got.to_bits() == want.to_bits()
                    || (got.is_nan() && want.is_nan() && got.is_sign_negative() == want.is_sign_negative());
                assert!(same, "f16 {h:#06x}: {got:e} ({:#010x}), want {want:e}", got.to_bits());
            }
        }
    }
}
