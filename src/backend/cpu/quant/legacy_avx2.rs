//! AVX2 + FMA + F16C row dot products of Q4_0, Q4_1 and Q8_0 (32-element blocks).
//!
//! Fast mode, after llama.cpp's x86 `ggml_vec_dot_q4_0_q8_0` / `q4_1_q8_1` / `q8_0_q8_0`
//! (ggml-cpu `arch/x86/quants.c`): a block's 32 weight codes as unsigned bytes against the
//! 32 signed activation codes in one `_mm256_maddubs_epi16` (u8·i8 pairs summed to i16; at
//! most 2·15·127 for nibbles, 2·128·127 for Q8_0's magnitudes, below i16's limit) and
//! `_mm256_madd_epi16` by ones (to i32), scaled in f32 per block; Q8_0's signed codes go in
//! as magnitudes with the sign moved onto the activations (`_mm256_sign_epi8`). Q4_0's code-sum
//! term is taken off the integer lanes; Q4_1's min term is spread over the f32 lanes.
//!
//! Exact mode: each block's codes widened to f32 in registers, scaled (`d (q - 8)`,
//! `d q + m`, `d q`) and multiplied into four independent FMA accumulators.
//!
//! With AVX-512 VNNI, `vpdpbusd` does the work of `maddubs` + `madd` in one instruction to
//! the same lanes (`*_vnni`: the fast kernels compiled again with it, [`fast_dots`]).
//!
//! Callers pass one row of whole blocks and as many activation blocks (or 32 values per block),
//! and call only on CPUs with AVX2, FMA and F16C (and AVX-512 VNNI for `*_vnni`).

use std::arch::x86_64::*;

use super::{ahead, block_bytes, BlockQ8, AHEAD, Q4_0, Q4_1};

/// Row bytes from which the four-row kernels ask for their rows' bytes ahead themselves.
const LONG_ROW: usize = 1 << 10;

/// The f16 at `b[0..2]` as f32.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16(b: &[u8]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([b[0], b[1]]) as i32)))
}

/// The f16 at `b[0..2]` as f32 in all eight lanes. (A broadcast, not [`f16`]: LLVM turns a
/// one-lane f16 load into an insert into whatever register it likes, the accumulator
/// included, which chains the blocks of a loop together.)
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16x8(b: &[u8]) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes([b[0], b[1]])))
}

/// Horizontal sum of eight f32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Σ u8·i8 over 32 byte pairs, as eight i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// [`dot_u8_i8`] in one `vpdpbusd` (AVX-512 VNNI on 256-bit vectors): the same lanes, since
/// the `maddubs` pair sums it replaces never saturate here (at most 2·128·127).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn dot_u8_i8_vnni(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

/// 32 bytes, as four vectors of eight f32 (`signed`: the bytes are i8, else u8).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn widen(q: __m256i, signed: bool) -> [__m256; 4] {
    let (lo, hi) = (_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)]
        .map(|h| _mm256_cvtepi32_ps(if signed { _mm256_cvtepi8_epi32(h) } else { _mm256_cvtepu8_epi32(h) }))
}

/// A 4-bit block's 16 bytes of nibbles as 32 bytes in element order.
///
/// # Safety
/// `qs` must point at 16 readable bytes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(qs: *const u8) -> __m256i {
    let raw = _mm_loadu_si128(qs.cast());
    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load(b: &[i8; 32]) -> __m256i {
    _mm256_loadu_si256(b.as_ptr().cast())
}

/// The fast-mode row dots of Q4_0, Q4_1 and Q8_0 (format `F`) compiled for `features` with
/// `dot` as the byte dot product: once with `maddubs` + `madd` (AVX2) and once with `vpdpbusd`
/// (AVX-512 VNNI), the same integer lanes either way. `$row` dots one row, `$rows4` four rows
/// against the same activations (each block's codes, scale and sum loaded once for four rows,
/// and four rows' worth of independent work per block), each row to the bits of `$row`.
macro_rules! fast_dots {
    ($features:literal, $dot:ident: $step:ident, $row:ident, $rows4:ident, $rows4_with:ident) => {
        /// `acc` plus block `b`'s products with `xb`, the block's f32 step formed off the
        /// accumulator's chain: Q4_0 `fma(d dx, lanes - Σqx, acc)` (the lanes add up to
        /// `Σ q qx - 8 Σ qx`); Q4_1 `acc + fma(d dx, lanes, m dx Σqx / 8)` (each lane takes an
        /// eighth, exact as a power of two, of the min term); Q8_0 `fma(d dx, lanes, acc)`.
        #[target_feature(enable = $features)]
        #[inline]
        fn $step<const F: u8>(acc: __m256, b: &[u8], xb: &BlockQ8) -> __m256 {
            let xd = _mm256_set1_ps(xb.d);
            let d = _mm256_mul_ps(f16x8(b), xd);
            // SAFETY: `b` is a whole block of format F (its codes end the block).
            unsafe {
                match F {
                    Q4_0 => {
                        let dot = $dot(nibbles(b[2..].as_ptr()), load(&xb.qs));
                        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(dot, _mm256_set1_epi32(xb.sum))), acc)
                    }
                    Q4_1 => {
                        let dot = _mm256_cvtepi32_ps($dot(nibbles(b[4..].as_ptr()), load(&xb.qs)));
                        let min = _mm256_mul_ps(_mm256_mul_ps(f16x8(&b[2..]), xd), _mm256_set1_ps(xb.sum as f32 * 0.125));
                        _mm256_add_ps(acc, _mm256_fmadd_ps(d, dot, min))
                    }
                    _ => {
                        let w = _mm256_loadu_si256(b[2..34].as_ptr().cast());
                        let dot = $dot(_mm256_sign_epi8(w, w), _mm256_sign_epi8(load(&xb.qs), w));
                        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), acc)
                    }
                }
            }
        }

        /// One row of format `F`: even blocks into one accumulator and odd blocks into another,
        /// so each step waits on the one two blocks back (one chain would hold a block to an
        /// FMA's latency), summed at the end.
        #[target_feature(enable = $features)]
        pub(super) fn $row<const F: u8>(row: &[u8], x: &[BlockQ8]) -> f32 {
            let (mut acc, mut other) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for (b, xb) in row.chunks_exact(block_bytes::<F>()).zip(x) {
                (acc, other) = (other, $step::<F>(acc, b, xb));
            }
            hsum(_mm256_add_ps(acc, other))
        }

        /// [`$row`] of four rows at once; rows longer than [`LONG_ROW`] each ask for their bytes
        /// [`AHEAD`] ahead (or a row's length); shorter ones are `matvec.rs`'s prefetches' whole,
        /// and the extra instructions would cost SmolLM2's one-thread decode several percent.
        #[target_feature(enable = $features)]
        pub(super) fn $rows4<const F: u8>(rows: [&[u8]; 4], x: &[BlockQ8]) -> [f32; 4] {
            if rows[0].len() > LONG_ROW {
                $rows4_with::<F, true>(rows, x)
            } else {
                $rows4_with::<F, false>(rows, x)
            }
        }

        #[target_feature(enable = $features)]
        fn $rows4_with<const F: u8, const LONG: bool>(rows: [&[u8]; 4], x: &[BlockQ8]) -> [f32; 4] {
            let mut blocks = rows.map(|r| r.chunks_exact(block_bytes::<F>()));
            let mut acc = [[_mm256_setzero_ps(); 2]; 4];
            let dist = AHEAD.min(rows[0].len());
            for (i, xb) in x.iter().enumerate() {
                for ((a, blocks), row) in acc.iter_mut().zip(&mut blocks).zip(rows) {
                    if LONG {
                        ahead(row, i * block_bytes::<F>() + dist, 4, 1);
                    }
                    let Some(b) = blocks.next() else { break };
                    *a = [a[1], $step::<F>(a[0], b, xb)];
                }
            }
            acc.map(|[a, other]| hsum(_mm256_add_ps(a, other)))
        }
    };
}

fast_dots!("avx2,fma,f16c", dot_u8_i8: step, row, rows4, rows4_with);
fast_dots!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", dot_u8_i8_vnni: step_vnni, row_vnni, rows4_vnni, rows4_with_vnni);

/// `acc[k] += w[k] * x[8k..8k + 8]` for the four vectors of a 32-weight sub-block.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn fma4(acc: &mut [__m256; 4], w: [__m256; 4], x: &[f32]) {
    let x = &x[..32];
    for k in 0..4 {
        // SAFETY: `x` holds 32 values.
        acc[k] = _mm256_fmadd_ps(w[k], unsafe { _mm256_loadu_ps(x[8 * k..].as_ptr()) }, acc[k]);
    }
}

/// The sum of four accumulators' lanes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn sum4(acc: [__m256; 4]) -> f32 {
    hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_0_exact(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, xs) in row.chunks_exact(18).zip(x.chunks_exact(32)) {
        let d = f16x8(b);
        let q = widen(_mm256_sub_epi8(nibbles(b[2..].as_ptr()), _mm256_set1_epi8(8)), true);
        fma4(&mut acc, q.map(|q| _mm256_mul_ps(d, q)), xs);
    }
    sum4(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_1_exact(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, xs) in row.chunks_exact(20).zip(x.chunks_exact(32)) {
        let (d, m) = (f16x8(b), f16x8(&b[2..]));
        let q = widen(nibbles(b[4..].as_ptr()), false);
        fma4(&mut acc, q.map(|q| _mm256_fmadd_ps(d, q, m)), xs);
    }
    sum4(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8_0_exact(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, xs) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
        let d = f16x8(b);
        let q = widen(_mm256_loadu_si256(b[2..].as_ptr().cast()), true);
        fma4(&mut acc, q.map(|q| _mm256_mul_ps(d, q)), xs);
    }
    sum4(acc)
}
