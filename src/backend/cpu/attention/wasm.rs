//! [`attention`](super)'s two inner loops on wasm32 SIMD128, as its AVX2 ones are
//! on x86-64: the scores of four keys at a time from four independent multiply-add chains and
//! one transposing sum, and the value sums with 32 output columns in registers across a block.
//! f16 caches widen four values at a time ([`f16x4`]: wasm has no f16 conversion, and the
//! scalar one is a call per value). At relaxed SIMD the multiply-adds are `f32x4.relaxed_madd`
//! (fused where the CPU has FMA). Another summation order than the portable loops: within f32
//! rounding of them, as the attention tests allow.

use core::arch::wasm32::*;

use super::super::quant::{f16x4, load_f32};
use super::{accumulate_portable, scores_portable, KvElem};

const LANES: usize = 4;

/// `a + b·c`: fused at `R` (relaxed SIMD).
#[inline(always)]
fn madd<const R: bool>(a: v128, b: v128, c: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    if R {
        return f32x4_relaxed_madd(b, c, a);
    }
    f32x4_add(a, f32x4_mul(b, c))
}

/// The four f16 at `x[..4]` as f32 ([`KvElem::load4`] of an f16 cache).
#[inline(always)]
pub(super) fn load4_f16(x: &[u16]) -> v128 {
    let x = &x[..4];
    // SAFETY: `x` holds four u16 (eight bytes).
    let h = unsafe { v128_load64_zero(x.as_ptr().cast()) };
    f16x4(u32x4_extend_low_u16x8(h))
}

/// The lane sums of four vectors, as one vector (`[Σa, Σb, Σc, Σd]`).
#[inline(always)]
fn sum4(a: v128, b: v128, c: v128, d: v128) -> v128 {
    // Interleave pairs, add, then the halves across.
    let ab = f32x4_add(i32x4_shuffle::<0, 4, 1, 5>(a, b), i32x4_shuffle::<2, 6, 3, 7>(a, b));
    let cd = f32x4_add(i32x4_shuffle::<0, 4, 1, 5>(c, d), i32x4_shuffle::<2, 6, 3, 7>(c, d));
    f32x4_add(i32x4_shuffle::<0, 1, 4, 5>(ab, cd), i32x4_shuffle::<2, 3, 6, 7>(ab, cd))
}

/// `s[j] = q · k_j` (`k_j` at `k[j * stride..]`), four keys at a time.
pub fn scores<T: KvElem, const R: bool>(q: &[f32], k: &[T], stride: usize, s: &mut [f32]) {
    let hd = q.len();
    let mut j = 0;
    if hd.is_multiple_of(LANES) {
        while j + 4 <= s.len() {
            let rows: [&[T]; 4] = std::array::from_fn(|i| &k[(j + i) * stride..][..hd]);
            let mut acc = [f32x4_splat(0.0); 4];
            for c in (0..hd).step_by(LANES) {
                let qc = load_f32(&q[c..]);
                for (a, row) in acc.iter_mut().zip(rows) {
                    *a = madd::<R>(*a, qc, T::load4(&row[c..]));
                }
            }
            let out = &mut s[j..][..4];
            // SAFETY: `out` holds four f32.
            unsafe { v128_store(out.as_mut_ptr().cast(), sum4(acc[0], acc[1], acc[2], acc[3])) };
            j += 4;
        }
    }
    if j < s.len() {
        scores_portable(q, &k[j * stride..], stride, &mut s[j..]);
    }
}

/// `acc[c..c + 4N] += Σ_j p[j] v_j[c..c + 4N]` with the N vectors in registers over the block.
#[inline(always)]
fn accumulate_columns<T: KvElem, const R: bool, const N: usize>(acc: &mut [f32], c: usize, p: &[f32], v: &[T], stride: usize) {
    let out = &mut acc[c..][..LANES * N];
    // SAFETY: `out` holds 4N f32.
    let mut a: [v128; N] = std::array::from_fn(|i| unsafe { v128_load(out.as_ptr().add(LANES * i).cast()) });
    for (j, &pj) in p.iter().enumerate() {
        let (pj, row) = (f32x4_splat(pj), &v[j * stride + c..][..LANES * N]);
        for (i, a) in a.iter_mut().enumerate() {
            *a = madd::<R>(*a, pj, T::load4(&row[LANES * i..]));
        }
    }
    for (i, a) in a.iter().enumerate() {
        // SAFETY: as above.
        unsafe { v128_store(out.as_mut_ptr().add(LANES * i).cast(), *a) };
    }
}

/// `acc += Σ_j p[j] v_j`: 32 columns at a time (eight independent chains), then 4, then the rest.
pub fn accumulate<T: KvElem, const R: bool>(acc: &mut [f32], p: &[f32], v: &[T], stride: usize) {
    let hd = acc.len();
    let mut c = 0;
    while c + 8 * LANES <= hd {
        accumulate_columns::<T, R, 8>(acc, c, p, v, stride);
        c += 8 * LANES;
    }
    while c + LANES <= hd {
        accumulate_columns::<T, R, 1>(acc, c, p, v, stride);
        c += LANES;
    }
    if c < hd {
        accumulate_portable(&mut acc[c..], p, &v[c..], stride);
    }
}
