//! The f32 micro-kernel of [`matmul`](crate::backend::cpu::matmul)'s exact mode: four weight
//! rows (dequantized once into a panel) against two tokens' activations, a 4 x 2 register
//! tile of dot products over a stretch of columns. With AVX2 + FMA each column step of eight
//! loads six vectors for eight FMAs into eight independent accumulators (the register-blocked
//! inner kernel of Goto & van de Geijn 2008, "Anatomy of high-performance matrix
//! multiplication", in the dot-product form that row-major W and X give: llamafile's
//! `tinyBLAS`).

/// `out[r][t] = Σ_k w[r][k] x[t][k]` over the common length of the slices, scalar.
pub(in crate::backend::cpu) fn tile4x2(w: [&[f32]; 4], x: [&[f32]; 2]) -> [[f32; 2]; 4] {
    w.map(|w| x.map(|x| w.iter().zip(x).fold(0.0, |acc, (a, b)| acc + a * b)))
}

/// [`tile4x2`] with AVX2 + FMA (the last `len % 8` columns scalar).
///
/// # Safety
/// Needs AVX2, FMA and F16C; the slices must be equally long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::backend::cpu) unsafe fn tile4x2_avx2(w: [&[f32]; 4], x: [&[f32]; 2]) -> [[f32; 2]; 4] {
    use std::arch::x86_64::*;

    use super::legacy_avx2::hsum;

    let n = x[0].len();
    debug_assert!(w.iter().chain(&x).all(|s| s.len() == n));
    let whole = n / 8 * 8;
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    for k in (0..whole).step_by(8) {
        let xv = [_mm256_loadu_ps(x[0].as_ptr().add(k)), _mm256_loadu_ps(x[1].as_ptr().add(k))];
        for r in 0..4 {
            let wv = _mm256_loadu_ps(w[r].as_ptr().add(k));
            acc[r][0] = _mm256_fmadd_ps(wv, xv[0], acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(wv, xv[1], acc[r][1]);
        }
    }
    let tail = tile4x2(w.map(|w| &w[whole..n]), x.map(|x| &x[whole..n]));
    // Loops, not `map` closures: a closure that captures `acc` and is left out of line puts
    // the accumulators through the stack on every step of the loop above (seen as a 25% slower
    // exact mode when other code changed LLVM's inlining).
    let mut out = [[0.0; 2]; 4];
    for (o, (acc, tail)) in out.iter_mut().zip(acc.iter().zip(&tail)) {
        for t in 0..2 {
            o[t] = hsum(acc[t]) + tail[t];
        }
    }
    out
}
