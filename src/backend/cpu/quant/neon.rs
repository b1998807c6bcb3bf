//! aarch64 NEON + dot-product (`+dotprod`) kernels: the helpers the block formats' rows share
//! (`legacy_neon.rs`, `kquant_neon.rs`), and the F32, F16 and BF16 row dot products (both
//! modes).
//!
//! Float rows, as llama.cpp's `ggml_vec_dot_f32` / `ggml_vec_dot_f16` / `ggml_vec_dot_bf16`
//! and their `GGML_F32_VEC` loops on NEON (ggml-cpu `vec.cpp`, `simd-mappings.h`: steps of 16
//! in four accumulators of four lanes): each step's 16 weights widened to f32 (F16 by `fcvtl` /
//! `fcvtl2`, BF16 by interleaving its bits above zero halves: a shift left by 16) and
//! multiplied into the accumulators with `vfmaq_f32`. Whole steps of 16 in NEON, the rest by
//! `float.rs`'s scalar loop; another summation order than the scalar path's (within f32
//! rounding of it).
//!
//! Two instructions stable Rust has no intrinsic for are written with `asm!`: `sdot` (the signed
//! byte dot product, `vdotq_s32`, still unstable: `stdarch_neon_dotprod`) and `fcvt` / `fcvtl`
//! (f16 to f32, whose intrinsics take the unstable `f16` vector types); the one sums, the
//! other converts, exactly. Every function here needs NEON and the dot-product extension,
//! which [`Simd::Neon`](super::Simd::Neon) implies.

use std::arch::aarch64::*;
use std::arch::asm;

use super::float;

/// `acc + Σ a·b` in each i32 lane over its four pairs of signed bytes (`sdot`, exact).
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` reads and writes only these registers, and this fn's features (which its
    // callers have) include the dot-product extension.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    acc
}

/// `Σ a·b` over 32 pairs of signed bytes (`a` in two halves, `b` the 32 bytes), as four i32
/// lanes: two independent `sdot`s, added.
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn dot32(a: [int8x16_t; 2], b: &[i8]) -> int32x4_t {
    let b = load_i8x32(b);
    let zero = vdupq_n_s32(0);
    vaddq_s32(sdot(zero, a[0], b[0]), sdot(zero, a[1], b[1]))
}

/// The first 32 bytes of `b` as two vectors.
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn load_i8x32(b: &[i8]) -> [int8x16_t; 2] {
    let b = &b[..32];
    // SAFETY: `b` holds 32 bytes.
    unsafe { [vld1q_s8(b.as_ptr()), vld1q_s8(b[16..].as_ptr())] }
}

/// The first 16 bytes of `b`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn load_u8x16(b: &[u8]) -> uint8x16_t {
    let b = &b[..16];
    // SAFETY: `b` holds 16 bytes.
    unsafe { vld1q_u8(b.as_ptr()) }
}

/// The first 32 bytes of `b` as two vectors.
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn load_u8x32(b: &[u8]) -> [uint8x16_t; 2] {
    [load_u8x16(b), load_u8x16(&b[16..32])]
}

/// The f16 at `b[at..at + 2]` as f32 (`fcvt`: exact, NaN and infinities included).
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    let out: f32;
    // SAFETY: `fcvt` (f16 to f32, base floating point) reads and writes only these registers.
    unsafe {
        asm!("fcvt {o:s}, {h:h}", o = lateout(vreg) out, h = in(vreg) bits, options(pure, nomem, nostack, preserves_flags))
    };
    out
}

/// Eight f16 (as bits) as two vectors of four f32 (`fcvtl`, `fcvtl2`: exact).
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn f16x8(h: uint16x8_t) -> [float32x4_t; 2] {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY (both): `fcvtl` / `fcvtl2` (base NEON) read and write only these registers. One
    // instruction per `asm!`, so that an output may share its input's register (`lateout`).
    unsafe {
        asm!("fcvtl {o:v}.4s, {h:v}.4h", o = lateout(vreg) lo, h = in(vreg) h, options(pure, nomem, nostack, preserves_flags));
        asm!("fcvtl2 {o:v}.4s, {h:v}.8h", o = lateout(vreg) hi, h = in(vreg) h, options(pure, nomem, nostack, preserves_flags));
    }
    [lo, hi]
}

/// Sixteen f32 from `x` (at least 16 values).
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn load_f32x16(x: &[f32]) -> [float32x4_t; 4] {
    let x = &x[..16];
    // SAFETY: `x` holds 16 values.
    [0, 4, 8, 12].map(|k| unsafe { vld1q_f32(x[k..].as_ptr()) })
}

/// `acc[k] += w[k] * x[4k..4k + 4]` for sixteen weights.
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn fma16(acc: &mut [float32x4_t; 4], w: [float32x4_t; 4], x: &[f32]) {
    let x = load_f32x16(x);
    for k in 0..4 {
        acc[k] = vfmaq_f32(acc[k], w[k], x[k]);
    }
}

/// The sum of four accumulators' lanes.
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn sum4(acc: [float32x4_t; 4]) -> f32 {
    vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])))
}

/// 16 bytes widened to four vectors of four f32, in order (`signed`: the bytes are i8, else u8).
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn widen16(q: int8x16_t, signed: bool) -> [float32x4_t; 4] {
    let (lo, hi) = match signed {
        true => (vmovl_s8(vget_low_s8(q)), vmovl_high_s8(q)),
        false => {
            let u = vreinterpretq_u8_s8(q);
            (vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(u))), vreinterpretq_s16_u16(vmovl_high_u8(u)))
        }
    };
    [vmovl_s16(vget_low_s16(lo)), vmovl_high_s16(lo), vmovl_s16(vget_low_s16(hi)), vmovl_high_s16(hi)].map(|v| vcvtq_f32_s32(v))
}

const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;

/// Sixteen weights of format `F` from `c` (their bytes) as f32.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn load16<const F: u8>(c: &[u8]) -> [float32x4_t; 4] {
    match F {
        F32 => {
            let c = &c[..64];
            // SAFETY: `c` holds 16 f32 (unaligned loads).
            [0, 16, 32, 48].map(|k| unsafe { vld1q_f32(c[k..].as_ptr().cast()) })
        }
        _ => {
            let c = &c[..32];
            // SAFETY: `c` holds 16 halves (unaligned loads).
            let h = [0, 16].map(|k| unsafe { vld1q_u16(c[k..].as_ptr().cast()) });
            if F == F16 {
                let ([a, b], [c, d]) = (f16x8(h[0]), f16x8(h[1]));
                [a, b, c, d]
            } else {
                // bf16 to f32: each half above sixteen zero bits.
                let zero = vdupq_n_u16(0);
                let up = |h: uint16x8_t, k: usize| {
                    vreinterpretq_f32_u16(if k == 0 { vzip1q_u16(zero, h) } else { vzip2q_u16(zero, h) })
                };
                [up(h[0], 0), up(h[0], 1), up(h[1], 0), up(h[1], 1)]
            }
        }
    }
}

/// A float row of format `F` (`size` bytes per weight): whole steps of 16 into four
/// accumulators, the rest by `tail` (`float.rs`'s scalar row).
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn float_row<const F: u8>(row: &[u8], x: &[f32], size: usize, tail: fn(&[u8], &[f32]) -> f32) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let whole = x.len() / 16 * 16;
    for (c, xs) in row[..whole * size].chunks_exact(16 * size).zip(x.chunks_exact(16)) {
        fma16(&mut acc, load16::<F>(c), xs);
    }
    sum4(acc) + tail(&row[whole * size..], &x[whole..])
}

#[target_feature(enable = "neon,dotprod")]
pub(super) fn f32_row(row: &[u8], x: &[f32]) -> f32 {
    float_row::<F32>(row, x, 4, float::f32_row)
}

#[target_feature(enable = "neon,dotprod")]
pub(super) fn f16_row(row: &[u8], x: &[f32]) -> f32 {
    float_row::<F16>(row, x, 2, float::f16_row)
}

#[target_feature(enable = "neon,dotprod")]
pub(super) fn bf16_row(row: &[u8], x: &[f32]) -> f32 {
    float_row::<BF16>(row, x, 2, float::bf16_row)
}
