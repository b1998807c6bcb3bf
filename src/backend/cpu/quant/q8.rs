//! Activations quantized to 8 bits once per op, for the integer dot products of the fast mode:
//! [`BlockQ8`] (32 values, for Q4_0/Q4_1/Q8_0 weights) after llama.cpp's `quantize_row_q8_0`
//! and `quantize_row_q8_1`, [`BlockQ8K`] (256 values with sums per 16, for the K-quants) after
//! its `quantize_row_q8_K` (ggml-cpu `quants.c`, `arch/x86/quants.c`).
//!
//! Per block `d = max|x| / 127` and `q = round(x / d)`, rounded to nearest even on every path
//! from the same f32 products, so every SIMD level writes the same bytes. Unlike ggml the
//! scale is f32 (its Q8_0 keeps an f16) and the block carries the integer sum of its codes
//! (its Q8_1 keeps `d * sum` as f16): Q4_0's `-8` and Q4_1's min then fold in exactly.
//! Activations are finite (a NaN or infinity gives codes that differ between levels).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::backend::cpu::simd::{self, Simd};

/// 32 activations: `x[i] ≈ d * qs[i]`, `sum = Σ qs`, `ds = d * sum` (what a Q4_1 min
/// multiplies, rounded once here).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f32,
    pub sum: i32,
    pub ds: f32,
    pub qs: [i8; 32],
}

/// 256 activations: `x[i] ≈ d * qs[i]`, `bsums[g] = Σ qs[16g..16g + 16]`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

/// Activations that cannot be quantized.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("{len} activations are not whole blocks of {block}")]
    Blocks { len: usize, block: usize },
    /// The allocator refused the blocks (a long prompt in wasm32's 4 GiB).
    #[error("cannot allocate {bytes} bytes of quantized activations")]
    OutOfMemory { bytes: usize },
}

fn blocks(x: &[f32], block: usize) -> Result<std::slice::ChunksExact<'_, f32>, QuantError> {
    match x.len().is_multiple_of(block) {
        true => Ok(x.chunks_exact(block)),
        false => Err(QuantError::Blocks { len: x.len(), block }),
    }
}

/// An empty vector with room for `n` blocks, or the typed error where the allocator refuses.
fn with_room<T>(n: usize) -> Result<Vec<T>, QuantError> {
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| QuantError::OutOfMemory { bytes: n.saturating_mul(size_of::<T>()) })?;
    Ok(out)
}

/// `x` (whole blocks of 32) as [`BlockQ8`]s, at [`simd::level`].
pub fn quantize_q8(x: &[f32]) -> Result<Vec<BlockQ8>, QuantError> {
    let blocks = blocks(x, 32)?;
    let mut out = with_room(blocks.len())?;
    match simd::level() {
        // SAFETY: these levels are chosen only where the CPU has AVX2.
        #[cfg(target_arch = "x86_64")]
        l if l.avx2() => unsafe { quantize_q8_avx2(x, &mut out) },
        simd => out.extend(blocks.map(|xb| {
            let mut qs = [0; 32];
            let d = quantize(simd, xb, &mut qs);
            let sum = qs.iter().map(|&q| q as i32).sum();
            BlockQ8 { d, sum, ds: d * sum as f32, qs }
        })),
    }
    Ok(out)
}

/// [`quantize_q8`] with AVX2, into `out` (with room for the blocks): [`quantize_avx2`]'s codes,
/// their sum taken from the same vectors, in one loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_avx2(x: &[f32], out: &mut Vec<BlockQ8>) {
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for xb in x.chunks_exact(32) {
        let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(xb.as_ptr().add(8 * k)));
        let [a, b, c, e] = v.map(|v| _mm256_and_ps(abs, v));
        let m = _mm256_max_ps(_mm256_max_ps(a, b), _mm256_max_ps(c, e));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let (d, id) = scales(_mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m))));
        let id = _mm256_set1_ps(id);
        let [q0, q1, q2, q3] = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, id)));
        // The codes lie in -127..=127: their i32 sum is the bytes' sum.
        let s = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)));
        let mut qs = [0i8; 32];
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
        _mm256_storeu_si256(qs.as_mut_ptr().cast(), _mm256_permutevar8x32_epi32(packed, order));
        out.push(BlockQ8 { d, sum, ds: d * sum as f32, qs });
    }
}

/// `x` (whole blocks of 256) as [`BlockQ8K`]s, at [`simd::level`].
pub fn quantize_q8k(x: &[f32]) -> Result<Vec<BlockQ8K>, QuantError> {
    let simd = simd::level();
    let blocks = blocks(x, 256)?;
    let mut out = with_room(blocks.len())?;
    for xb in blocks {
        let mut qs = [0; 256];
        let d = quantize(simd, xb, &mut qs);
        let mut bsums = [0; 16];
        for (s, g) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        out.push(BlockQ8K { d, qs, bsums });
    }
    Ok(out)
}

/// Quantizes `x` (a multiple of 32 values) with one scale into `qs`; returns the scale.
fn quantize(simd: Simd, x: &[f32], qs: &mut [i8]) -> f32 {
    match simd {
        // SAFETY: these levels are chosen only where the CPU has AVX2.
        #[cfg(target_arch = "x86_64")]
        l if l.avx2() => unsafe { quantize_avx2(x, qs) },
        _ => {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let (d, id) = scales(amax);
            for (q, &v) in qs.iter_mut().zip(x) {
                *q = (v * id).round_ties_even() as i8;
            }
            d
        }
    }
}

/// The scale and its inverse for a block whose largest magnitude is `amax`.
fn scales(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_avx2(x: &[f32], qs: &mut [i8]) -> f32 {
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let mut m = _mm256_setzero_ps();
    for c in x.chunks_exact(8) {
        m = _mm256_max_ps(m, _mm256_and_ps(abs, _mm256_loadu_ps(c.as_ptr())));
    }
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let (d, id) = scales(_mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m))));
    let id = _mm256_set1_ps(id);
    // `packs` interleaves the 128-bit halves: this puts the 32 bytes back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (xc, qc) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)) {
        // The default MXCSR rounding (nearest even) converts the products.
        let q = |k: usize| _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xc.as_ptr().add(8 * k)), id));
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(q(0), q(1)), _mm256_packs_epi32(q(2), q(3)));
        _mm256_storeu_si256(qc.as_mut_ptr().cast(), _mm256_permutevar8x32_epi32(packed, order));
    }
    d
}

#[cfg(test)]
mod tests {
    /// A request the allocator cannot meet is the typed error, not an abort.
    #[test]
    fn refused_room_is_out_of_memory() {
        let err = super::with_room::<super::BlockQ8K>(usize::MAX / 64).unwrap_err();
        assert!(matches!(err, super::QuantError::OutOfMemory { bytes } if bytes >= usize::MAX / 64), "{err:?}");
    }
}
