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
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    let n = ((x * std::f32::consts::LOG2_E + ROUND) - ROUND).clamp(-126.0, 127.0);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 0.5;
    let e = (p * r * r + r + 1.0) * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else if x >= 88.37 {
        f32::INFINITY
    } else {
        e
    }
}

/// `g · σ(g)`: SiLU, the gate of the gated FFNs (also the matvec and matmul epilogues).
#[inline]
pub fn silu(g: f32) -> f32 {
    g / (1.0 + exp(-g))
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
}
