//! Element-wise ops, named as [`kernels::elementwise`](crate::kernels::elementwise) and
//! [`kernels::vision_qwen`](crate::kernels::vision_qwen): residual add, SiLU-gated products
//! (transformers `ACT2FN["silu"](gate) * up`, ggml-cpu `ggml_vec_swiglu_f32`), the sigmoid gate
//! of Qwen3.5's attention output, GELU in its erf form (transformers `GELUActivation`; erfc by
//! Numerical Recipes' `erfcc`, fractional error < 1.2e-7, evaluated in f64 so the negative
//! tail keeps its relative precision) and its tanh form (transformers `gelu_pytorch_tanh`,
//! ggml-cpu `ggml_gelu_f32`, written `x * sigmoid(2 u)` = `0.5 x (1 + tanh u)`, which does not
//! cancel for negative x, also in f64). Plain loops over slices, split over the pool in chunks.

use super::ops::{check_len, for_each_chunk, invalid, rows_per_task, ShapeError};
use super::pool::ThreadPool;
use super::simd::Simd;

/// Elements per task of the flat ops.
const CHUNK: usize = 16384;

/// `residual[i] += a[i]` (equal lengths).
pub fn add_inplace(pool: &ThreadPool, a: &[f32], residual: &mut [f32]) -> Result<(), ShapeError> {
    check_len("add_inplace", "a", a.len(), residual.len())?;
    for_each_chunk(pool, residual, CHUNK, |i, r| {
        for (r, &a) in r.iter_mut().zip(&a[i * CHUNK..]) {
            *r += a;
        }
    });
    Ok(())
}

/// `e^x` within 2 ulp, 0 below -87.3 (where f32 turns subnormal) and infinity from 88.37 (the
/// last third of a binade below f32's largest value is not kept): `x = n ln 2 + r` with
/// `|r| ≤ ln 2 / 2`, `e^r` by Cephes' `expf` polynomial (Moshier 1989; ggml-cpu's
/// `ggml_v_expf` is the same idea), `2^n` written into the exponent. Branch-free, `n` rounded
/// by adding and taking away 1.5 · 2^23, so a loop of it vectorizes (libm's `expf`, and
/// `floorf` below SSE4.1, are a call per value).
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    let n = ((x * std::f32::consts::LOG2_E + EXP_ROUND) - EXP_ROUND).clamp(-126.0, 127.0);
    let r = x - n * EXP_LN2_HI - n * EXP_LN2_LO;
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &c| p * r + c);
    let e = (p * r * r + r + 1.0) * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < EXP_ZERO_BELOW {
        0.0
    } else if x >= EXP_INFINITE_FROM {
        f32::INFINITY
    } else {
        e
    }
}

/// [`exp`]'s constants: ln 2 in two parts (Cody and Waite), the rounding constant, the
/// polynomial's coefficients from the highest power, and where it gives 0 and infinity.
const EXP_LN2_HI: f32 = 0.693_359_4;
const EXP_LN2_LO: f32 = -2.121_944_4e-4;
const EXP_ROUND: f32 = 12_582_912.0;
const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
const EXP_ZERO_BELOW: f32 = -87.3;
const EXP_INFINITE_FROM: f32 = 88.37;

/// `g · σ(g)`: SiLU, the gate of the gated FFNs (also the matvec and matmul epilogues).
#[inline]
pub fn silu(g: f32) -> f32 {
    g / (1.0 + exp(-g))
}

/// `silu(g[r]) · u[r]` for a tile's row of eight outputs (the matmul's gated epilogue): on AVX2
/// vectors where the level has them, [`silu`]'s operations in its order (no fused
/// multiply-adds), so the bits are the scalar loop's.
#[inline]
pub(super) fn silu_mul8(simd: Simd, g: &[f32; 8], u: &[f32; 8]) -> [f32; 8] {
    match simd {
        // SAFETY: each of these levels implies AVX2 (`Simd::is_supported`).
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 | Simd::Avx512 | Simd::Avx512Vnni => unsafe { silu_mul8_avx2(g, u) },
        _ => std::array::from_fn(|r| silu(g[r]) * u[r]),
    }
}

/// [`silu_mul8`] on AVX2, [`exp`] step by step.
///
/// # Safety
/// Needs AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn silu_mul8_avx2(g: &[f32; 8], u: &[f32; 8]) -> [f32; 8] {
    use std::arch::x86_64::*;
    let g = _mm256_loadu_ps(g.as_ptr());
    let e = exp8_avx2(_mm256_xor_ps(g, _mm256_set1_ps(-0.0)));
    let y = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e)), _mm256_loadu_ps(u.as_ptr()));
    std::mem::transmute::<__m256, [f32; 8]>(y)
}

/// [`exp`] of eight lanes, its operations in its order (no fused multiply-adds): the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) fn exp8_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let k = |c: f32| _mm256_set1_ps(c);
    let (add, sub, mul) = (|a, b| _mm256_add_ps(a, b), |a, b| _mm256_sub_ps(a, b), |a, b| _mm256_mul_ps(a, b));
    let n = sub(add(mul(x, k(std::f32::consts::LOG2_E)), k(EXP_ROUND)), k(EXP_ROUND));
    // `f32::clamp`'s order, which keeps a NaN.
    let n = _mm256_min_ps(k(127.0), _mm256_max_ps(k(-126.0), n));
    let r = sub(sub(x, mul(n, k(EXP_LN2_HI))), mul(n, k(EXP_LN2_LO)));
    let p = EXP_POLY[1..].iter().fold(k(EXP_POLY[0]), |p, &c| add(mul(p, r), k(c)));
    let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127))));
    let e = mul(add(add(mul(mul(p, r), r), r), k(1.0)), two_n);
    let e = _mm256_blendv_ps(e, k(f32::INFINITY), _mm256_cmp_ps::<_CMP_GE_OQ>(x, k(EXP_INFINITE_FROM)));
    _mm256_blendv_ps(e, k(0.0), _mm256_cmp_ps::<_CMP_LT_OQ>(x, k(EXP_ZERO_BELOW)))
}

/// `gate[i] = silu(gate[i]) * up[i]` (equal lengths).
pub fn silu_mul_inplace(pool: &ThreadPool, up: &[f32], gate: &mut [f32]) -> Result<(), ShapeError> {
    check_len("silu_mul_inplace", "up", up.len(), gate.len())?;
    for_each_chunk(pool, gate, CHUNK, |i, g| {
        for (g, &u) in g.iter_mut().zip(&up[i * CHUNK..]) {
            *g = silu(*g) * u;
        }
    });
    Ok(())
}

/// Rows of `x` (`[rows][2 half]`) for an output of `[rows][half]`.
fn halves(op: &'static str, x: &[f32], out: &[f32], half: usize) -> Result<usize, ShapeError> {
    if half == 0 || !out.len().is_multiple_of(half) {
        return Err(invalid(op, format!("{} output elements are not rows of {half}", out.len())));
    }
    let rows = out.len() / half;
    check_len(op, "x", x.len(), 2 * rows * half)?;
    Ok(rows)
}

/// `out[t][r] = silu(gate_up[t][r]) * gate_up[t][half + r]`: `gate_up` `[rows][2 half]`, `out`
/// `[rows][half]`.
pub fn silu_mul_halves(pool: &ThreadPool, gate_up: &[f32], out: &mut [f32], half: usize) -> Result<(), ShapeError> {
    let rows = halves("silu_mul_halves", gate_up, out, half)?;
    let per = rows_per_task(pool, rows, half);
    for_each_chunk(pool, out, per * half, |i, out| {
        let x = &gate_up[i * per * 2 * half..];
        for (o, x) in out.chunks_exact_mut(half).zip(x.chunks_exact(2 * half)) {
            let (g, u) = x.split_at(half);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = silu(g) * u;
            }
        }
    });
    Ok(())
}

/// `out[t][r] = x[t][r]`: `x` `[rows][2 half]`, `out` `[rows][half]`.
pub fn copy_first_halves(pool: &ThreadPool, x: &[f32], out: &mut [f32], half: usize) -> Result<(), ShapeError> {
    let rows = halves("copy_first_halves", x, out, half)?;
    let per = rows_per_task(pool, rows, half);
    for_each_chunk(pool, out, per * half, |i, out| {
        let x = &x[i * per * 2 * half..];
        for (o, x) in out.chunks_exact_mut(half).zip(x.chunks_exact(2 * half)) {
            o.copy_from_slice(&x[..half]);
        }
    });
    Ok(())
}

/// `y[t][r] *= sigmoid(x[t][half + r])`: `x` `[rows][2 half]`, `y` `[rows][half]`.
pub fn sigmoid_mul_second_halves(pool: &ThreadPool, x: &[f32], y: &mut [f32], half: usize) -> Result<(), ShapeError> {
    let rows = halves("sigmoid_mul_second_halves", x, y, half)?;
    let per = rows_per_task(pool, rows, half);
    for_each_chunk(pool, y, per * half, |i, y| {
        let x = &x[i * per * 2 * half..];
        for (y, x) in y.chunks_exact_mut(half).zip(x.chunks_exact(2 * half)) {
            for (y, &g) in y.iter_mut().zip(&x[half..]) {
                *y /= 1.0 + exp(-g);
            }
        }
    });
    Ok(())
}

/// Numerical Recipes' `erfcc` in f64 (fractional error < 1.2e-7 everywhere).
#[inline]
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * (-z * z + poly).exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// `x[i] = 0.5 x (1 + erf(x / sqrt 2))`, as `0.5 x erfc(-x / sqrt 2)`.
pub fn gelu_inplace(pool: &ThreadPool, x: &mut [f32]) {
    for_each_chunk(pool, x, CHUNK, |_, x| {
        for v in x.iter_mut() {
            let xf = *v as f64;
            *v = (0.5 * xf * erfc(-xf * std::f64::consts::FRAC_1_SQRT_2)) as f32;
        }
    });
}

/// `x[i] = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, as `x / (1 + exp(-2u))` in f64
/// (in f32, `exp` would amplify the rounding of `u` by `|2u|`, ~4e-6 relative at x = -6).
pub fn gelu_tanh(pool: &ThreadPool, x: &mut [f32]) {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    for_each_chunk(pool, x, CHUNK, |_, x| {
        for v in x.iter_mut() {
            let xf = *v as f64;
            let u = k * (xf + 0.044715 * xf * xf * xf);
            *v = (xf / (1.0 + (-2.0 * u).exp())) as f32;
        }
    });
}

#[cfg(test)]
mod tests {
    /// Within 2 units of f32's precision (2^-23, relative) of `f64::exp` over f32's normal
    /// range; 0 below it, infinity above.
    #[test]
    fn exp_is_within_two_ulp() {
        let worst = (0..=400_000)
            .map(|i| -87.0 + 175.3 * i as f32 / 400_000.0)
            .map(|x| ((super::exp(x) as f64 / (x as f64).exp()) - 1.0).abs() / f32::EPSILON as f64)
            .fold(0.0, f64::max);
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(super::exp(-100.0), 0.0);
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::exp(89.0), f32::INFINITY);
        assert!(super::exp(f32::NAN).is_nan());
        assert_eq!(super::silu(-200.0), 0.0);
        assert_eq!(super::silu(200.0), 200.0);
    }

    /// The gated epilogue's eight-wide SiLU gives the scalar loop's bits at every level this
    /// machine runs, over f32's range and at the edges of `exp`'s.
    #[test]
    fn silu_mul8_gives_the_scalar_bits() {
        use crate::backend::cpu::simd::Simd;
        let edges = [0.0, -0.0, 87.3, -87.3, 88.37, -88.37, 87.29, -88.36, 1e-30, 1e30, -1e30, f32::INFINITY, f32::NEG_INFINITY];
        let mut rng = crate::gguf::SplitMix64::new(9);
        let g: Vec<f32> = (0..80_000).map(|i| if i < 13 { edges[i] } else { rng.uniform(-100.0, 100.0) }).collect();
        let u: Vec<f32> = (0..g.len()).map(|_| rng.uniform(-3.0, 3.0)).collect();
        let levels = [Simd::Scalar, Simd::Avx2, Simd::Avx512, Simd::Avx512Vnni].into_iter().filter(|l| l.is_supported());
        for level in levels {
            for (g, u) in g.chunks_exact(8).zip(u.chunks_exact(8)) {
                let (g, u): (&[f32; 8], &[f32; 8]) = (g.try_into().unwrap(), u.try_into().unwrap());
                let got = super::silu_mul8(level, g, u).map(f32::to_bits);
                let want: [u32; 8] = std::array::from_fn(|r| (super::silu(g[r]) * u[r]).to_bits());
                assert_eq!(got, want, "{level:?} at {g:?}");
            }
        }
        let nan = super::silu_mul8(crate::backend::cpu::simd::level(), &[f32::NAN; 8], &[1.0; 8]);
        assert!(nan.iter().all(|v| v.is_nan()));
    }
}
