//! AVX2 + FMA + F16C row dot products of Q4_K, Q5_K and Q6_K (256-element super-blocks).
//!
//! Fast mode, after llama.cpp's x86 `ggml_vec_dot_q4_K_q8_K` / `q5_K_q8_K` / `q6_K_q8_K`
//! (ggml-cpu `arch/x86/quants.c`) and candle's `quantized/avx.rs`: 32 codes (unsigned: 4, 5
//! or 6 bits) against 32 activation codes in one `_mm256_maddubs_epi16` (at most 2·63·127 per
//! i16 lane), then `_mm256_madd_epi16` by the sub-block scales (to i32); per super-block one
//! horizontal integer sum and the f32 step of `scalar.rs`, so results equal the scalar path's
//! bit for bit. Mins (Q4_K, Q5_K) and Q6_K's `-32` come from the activations' per-16 sums.
//!
//! Exact mode: per sub-block the codes widened to f32 and dequantized in registers
//! (`d sc q - dmin m`, `d sc (q - 32)`), multiplied into four independent FMA accumulators.
//!
//! At the AVX-512 levels the fast Q4_K and Q6_K dots run on 512-bit vectors, two sub-blocks
//! per op, with the same integer sums, for one to four rows: the activations are loaded once
//! for the rows, and each row asks the memory for its bytes [`AHEAD`] ahead (or a row's length:
//! [`ahead`]).
//!
//! Callers pass one row of whole super-blocks (the `_512` ones one to four consecutive rows)
//! and as many activation blocks (or 256 values per block), and call only on CPUs with AVX2,
//! FMA and F16C (AVX-512F/BW/VL for the `_512` ones).

use std::arch::x86_64::*;

use super::legacy_avx2::{f16, f16x8, fma4, sum4, widen};
use super::scalar::scales_k4;
use super::{ahead, BlockQ8K, AHEAD};

#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)))
}

/// The 32 codes of sub-blocks `2j` and `2j + 1` of a Q4_K/Q5_K super-block, as bytes: low and
/// high nibbles of `qs[32j..32j + 32]`, plus the fifth bits (bits `2j`, `2j + 1` of `qh`).
///
/// # Safety
/// `qs` must point at 32 readable bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn codes45(qs: *const u8, qh: Option<__m256i>, j: i32) -> [__m256i; 2] {
    let (q, low4) = (_mm256_loadu_si256(qs.cast()), _mm256_set1_epi8(0x0F));
    let mut out = [_mm256_and_si256(q, low4), _mm256_and_si256(_mm256_srli_epi16(q, 4), low4)];
    if let Some(qh) = qh {
        for (i, o) in out.iter_mut().enumerate() {
            // Bit 2j + i of each byte to bit 4 (16-bit shifts: the bits that cross a byte are masked off).
            let bit = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * j + i as i32)), _mm256_set1_epi8(1));
            *o = _mm256_or_si256(*o, _mm256_slli_epi16(bit, 4));
        }
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_x(x: &[i8]) -> __m256i {
    _mm256_loadu_si256(x[..32].as_ptr().cast())
}

/// The `pshufb` indices (bytes `2 lane`, `2 lane + 1`) that copy i16 lane `lane` of each 128
/// bits into every i16 lane of them.
fn pick_i16(lane: usize) -> i16 {
    (((2 * lane + 1) << 8) | (2 * lane)) as i16
}

/// The eight 6-bit scales and mins of a Q4_K/Q5_K super-block `b` (packed in its bytes
/// `4..16`) as i16 lanes: the scales in both halves of the first vector (for the per-sub-block
/// shuffles), the mins in the second (`scalar.rs`'s `scales_k4`, in registers: with `a`, `m`,
/// `c` its three words, the scales are `a & 0x3F…` and `(c & 0x0F…) | ((a >> 2) & 0x30…)`,
/// the mins the same of `m` and `c >> 4`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales_mins(b: &[u8]) -> (__m256i, __m128i) {
    let v = _mm_loadu_si128(b[4..20].as_ptr().cast());
    // (a, c, m, c >> 4), masked to their low bits.
    let low = _mm_srlv_epi32(_mm_shuffle_epi32::<0b10_01_10_00>(v), _mm_setr_epi32(0, 0, 0, 4));
    let low = _mm_and_si128(low, _mm_setr_epi32(0x3F3F_3F3F, 0x0F0F_0F0F, 0x3F3F_3F3F, 0x0F0F_0F0F));
    // (a, a, m, m): the top two bits of each byte, to bits 4 and 5 of the second and fourth.
    let high = _mm_srli_epi32::<2>(_mm_shuffle_epi32::<0b01_01_00_00>(v));
    let high = _mm_and_si128(high, _mm_setr_epi32(0, 0x3030_3030, 0, 0x3030_3030));
    let both = _mm256_cvtepu8_epi16(_mm_or_si128(low, high));
    (_mm256_permute2x128_si256(both, both, 0x00), _mm256_extracti128_si256(both, 1))
}

/// `Σ_s mins[s] (bsums[2s] + bsums[2s + 1])` ([`scales_mins`]'s mins; `scalar.rs`'s `min_sum`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn min_sum_avx2(mins: __m128i, bsums: &[i16; 16]) -> i32 {
    let bs = _mm256_loadu_si256(bsums.as_ptr().cast());
    let pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    let p = _mm_madd_epi16(mins, pairs);
    let p = _mm_add_epi32(p, _mm_unpackhi_epi64(p, p));
    _mm_cvtsi128_si32(_mm_add_epi32(p, _mm_shuffle_epi32(p, 1)))
}

/// Fast Q4_K (`qh_at: None`) or Q5_K (fifth bits at `qh_at`), codes at `qs_at`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45(row: &[u8], x: &[BlockQ8K], size: usize, qs_at: usize, qh_at: Option<usize>) -> f32 {
    let mut acc = 0.0;
    for (b, xb) in row.chunks_exact(size).zip(x) {
        let (scales, mins) = scales_mins(b);
        let qh = qh_at.map(|at| _mm256_loadu_si256(b[at..at + 32].as_ptr().cast()));
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let codes = codes45(b[qs_at + 32 * j..qs_at + 32 * j + 32].as_ptr(), qh, j as i32);
            for (i, &q) in codes.iter().enumerate() {
                let s = 2 * j + i;
                // Scale s (i16 lane s: bytes 2s, 2s + 1) in every lane.
                let scale = _mm256_shuffle_epi8(scales, _mm256_set1_epi16(pick_i16(s)));
                let dot = _mm256_maddubs_epi16(q, load_x(&xb.qs[32 * s..]));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(dot, scale));
            }
        }
        let (d, dmin) = (f16(b) * xb.d, f16(&b[2..]) * xb.d);
        acc += d * hsum_i32(sumi) as f32 - dmin * min_sum_avx2(mins, &xb.bsums) as f32;
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    q45(row, x, 144, 16, None)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q5_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    q45(row, x, 176, 48, Some(16))
}

/// Codes `32q..32q + 32` (values 0..64) of a Q6_K super-block `b`: quarter `k = q % 4` of
/// half `h = q / 4`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn codes6(b: &[u8], q: usize) -> __m256i {
    let (h, k) = (q / 4, q % 4);
    let ql = _mm256_loadu_si256(b[64 * h + 32 * (k & 1)..][..32].as_ptr().cast());
    let qh = _mm256_loadu_si256(b[128 + 32 * h..][..32].as_ptr().cast());
    let low = _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (k / 2) as i32)), _mm256_set1_epi8(0x0F));
    let high = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32)), _mm256_set1_epi8(3));
    _mm256_or_si256(low, _mm256_slli_epi16(high, 4))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q6_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0;
    for (b, xb) in row.chunks_exact(210).zip(x) {
        let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b[192..208].as_ptr().cast()));
        // Groups 0..8 in both halves of the first, 8..16 in both halves of the second.
        let halves = [_mm256_permute2x128_si256(scales16, scales16, 0x00), _mm256_permute2x128_si256(scales16, scales16, 0x11)];
        let mut sumi = _mm256_setzero_si256();
        for q in 0..8 {
            // Quarter q of the 256 codes: the first 16 in scale group 2q, the next 16 in 2q + 1
            // (i16 lanes g % 8 of `halves[g / 8]`: bytes 2g, 2g + 1 of its half).
            let lane = |g: usize| _mm_set1_epi16(pick_i16(g % 8));
            let pick = _mm256_set_m128i(lane(2 * q + 1), lane(2 * q));
            let scales = _mm256_shuffle_epi8(halves[q / 4], pick);
            let dot = _mm256_maddubs_epi16(codes6(b, q), load_x(&xb.qs[32 * q..]));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(dot, scales));
        }
        let offset = _mm256_madd_epi16(scales16, _mm256_loadu_si256(xb.bsums.as_ptr().cast()));
        acc += f16(&b[208..]) * xb.d * (hsum_i32(sumi) - 32 * hsum_i32(offset)) as f32;
    }
    acc
}

/// The sums of four vectors' i32 lanes, lane `r` of the result vector `r`'s.
#[target_feature(enable = "avx2,fma,f16c")]
fn sum4_i32(v: [__m128i; 4]) -> __m128i {
    _mm_hadd_epi32(_mm_hadd_epi32(v[0], v[1]), _mm_hadd_epi32(v[2], v[3]))
}

/// Folds a 512-bit vector's i32 lanes to 128 bits (lanes `i`, `i + 4`, `i + 8`, `i + 12`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
fn fold512(v: __m512i) -> __m128i {
    let v = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1))
}

/// Four f16 (as bits) as f32.
#[target_feature(enable = "avx2,fma,f16c")]
fn f16x4(h: [u16; 4]) -> __m128 {
    _mm_cvtph_ps(_mm_set_epi64x(0, u64::from_le_bytes(bytemuck::cast(h)) as i64))
}

/// The f16 at `b[at..at + 2]`, as bits.
fn f16_bits(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The first `R` lanes of `v`.
#[target_feature(enable = "avx2,fma,f16c")]
fn lanes<const R: usize>(v: __m128) -> [f32; R] {
    let mut all = [0f32; 4];
    // SAFETY: `all` holds four f32.
    unsafe { _mm_storeu_ps(all.as_mut_ptr(), v) };
    std::array::from_fn(|r| all[r])
}

/// Fast Q4_K of `R` rows (1 to 4) on 512-bit vectors: each 32 bytes of nibbles is sub-blocks
/// `2j` (low nibbles) and `2j + 1` (high) in one vector of 64 codes, against 64 activation
/// codes (loaded once for the rows), each half with its sub-block's scale; per super-block
/// the rows' sums reduced together (`hadd`) and their f32 steps in one vector. The same
/// integer sums and f32 operations per row as [`q45`]: the same bits.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn q4_k_512<const R: usize>(rows: [&[u8]; R], x: &[BlockQ8K]) -> [f32; R] {
    // Shifts of the low and high 256 bits, and the scale lanes of sub-blocks 2j and 2j + 1.
    let shifts = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    let low4 = _mm512_set1_epi8(0x0F);
    let lane = |s: usize| _mm256_set1_epi16(pick_i16(s));
    let picks: [__m512i; 4] =
        std::array::from_fn(|j| _mm512_inserti64x4(_mm512_castsi256_si512(lane(2 * j)), lane(2 * j + 1), 1));
    let mut acc = _mm_setzero_ps();
    for (s, xb) in x.iter().enumerate() {
        let mut xq = [_mm512_setzero_si512(); 4];
        for (j, xq) in xq.iter_mut().enumerate() {
            *xq = _mm512_loadu_si512(xb.qs[64 * j..][..64].as_ptr().cast());
        }
        let bs = _mm256_loadu_si256(xb.bsums.as_ptr().cast());
        let pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        let (mut dots, mut mins) = ([_mm_setzero_si128(); 4], [_mm_setzero_si128(); 4]);
        let (mut d, mut dmin) = ([0; 4], [0; 4]);
        for (r, row) in rows.iter().enumerate() {
            ahead(row, 144 * s + AHEAD.min(row.len()), R, 3);
            let b = &row[144 * s..][..144];
            (d[r], dmin[r]) = (f16_bits(b, 0), f16_bits(b, 2));
            let (scales, m) = scales_mins(b);
            let scales = _mm512_broadcast_i64x4(scales);
            let mut sumi = _mm512_setzero_si512();
            for (j, (&xq, &pick)) in xq.iter().zip(&picks).enumerate() {
                let q = _mm512_broadcast_i64x4(_mm256_loadu_si256(b[16 + 32 * j..][..32].as_ptr().cast()));
                let codes = _mm512_and_si512(_mm512_srlv_epi16(q, shifts), low4);
                let dot = _mm512_maddubs_epi16(codes, xq);
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(dot, _mm512_shuffle_epi8(scales, pick)));
            }
            dots[r] = fold512(sumi);
            mins[r] = _mm_madd_epi16(m, pairs);
        }
        let (d, dmin, xd) = (f16x4(d), f16x4(dmin), _mm_set1_ps(xb.d));
        let sub = _mm_mul_ps(_mm_mul_ps(dmin, xd), _mm_cvtepi32_ps(sum4_i32(mins)));
        acc = _mm_add_ps(acc, _mm_sub_ps(_mm_mul_ps(_mm_mul_ps(d, xd), _mm_cvtepi32_ps(sum4_i32(dots))), sub));
    }
    lanes(acc)
}

/// Fast Q6_K of `R` rows (1 to 4) on 512-bit vectors: quarters `2m` and `2m + 1` of the codes
/// in one vector, each 16 codes with its scale group's scale, the activations loaded once
/// for the rows and the rows' steps in one vector, as in [`q4_k_512`]. The same integer sums
/// and f32 operations per row as [`q6_k`]: the same bits.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn q6_k_512<const R: usize>(rows: [&[u8]; R], x: &[BlockQ8K]) -> [f32; R] {
    // Groups 4m..4m + 4, one per 128 bits (i16 lane g of a row's 16 scales).
    let g = |m: usize, k: usize| _mm_set1_epi16((4 * m + k) as i16);
    let idx: [__m512i; 4] = std::array::from_fn(|m| {
        _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_m128i(g(m, 1), g(m, 0))), _mm256_set_m128i(g(m, 3), g(m, 2)), 1)
    });
    let mut acc = _mm_setzero_ps();
    for (s, xb) in x.iter().enumerate() {
        let mut xq = [_mm512_setzero_si512(); 4];
        for (m, xq) in xq.iter_mut().enumerate() {
            *xq = _mm512_loadu_si512(xb.qs[64 * m..][..64].as_ptr().cast());
        }
        let bsums = _mm256_loadu_si256(xb.bsums.as_ptr().cast());
        let (mut dots, mut offsets, mut d) = ([_mm_setzero_si128(); 4], [_mm_setzero_si128(); 4], [0; 4]);
        for (r, row) in rows.iter().enumerate() {
            ahead(row, 210 * s + AHEAD.min(row.len()), R, 4);
            let b = &row[210 * s..][..210];
            d[r] = f16_bits(b, 208);
            let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b[192..208].as_ptr().cast()));
            let wide = _mm512_castsi256_si512(scales16);
            let mut sumi = _mm512_setzero_si512();
            for (m, (&xq, &idx)) in xq.iter().zip(&idx).enumerate() {
                let codes = _mm512_inserti64x4(_mm512_castsi256_si512(codes6(b, 2 * m)), codes6(b, 2 * m + 1), 1);
                let dot = _mm512_maddubs_epi16(codes, xq);
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(dot, _mm512_permutexvar_epi16(idx, wide)));
            }
            let offset = _mm256_madd_epi16(scales16, bsums);
            dots[r] = fold512(sumi);
            offsets[r] = _mm_add_epi32(_mm256_castsi256_si128(offset), _mm256_extracti128_si256(offset, 1));
        }
        let d = f16x4(d);
        let sumi = _mm_sub_epi32(sum4_i32(dots), _mm_slli_epi32(sum4_i32(offsets), 5));
        acc = _mm_add_ps(acc, _mm_mul_ps(_mm_mul_ps(d, _mm_set1_ps(xb.d)), _mm_cvtepi32_ps(sumi)));
    }
    lanes(acc)
}

/// Exact Q4_K / Q5_K, laid out as [`q45`] takes them.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45_exact(row: &[u8], x: &[f32], size: usize, qs_at: usize, qh_at: Option<usize>) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, xs) in row.chunks_exact(size).zip(x.chunks_exact(256)) {
        let (scales, mins) = scales_k4(&b[4..16]);
        let (d, dmin) = (f16x8(b), f16x8(&b[2..]));
        let qh = qh_at.map(|at| _mm256_loadu_si256(b[at..at + 32].as_ptr().cast()));
        for j in 0..4 {
            let codes = codes45(b[qs_at + 32 * j..qs_at + 32 * j + 32].as_ptr(), qh, j as i32);
            for (i, &q) in codes.iter().enumerate() {
                let s = 2 * j + i;
                let a = _mm256_mul_ps(d, _mm256_set1_ps(scales[s] as f32));
                let m = _mm256_mul_ps(dmin, _mm256_set1_ps(mins[s] as f32));
                fma4(&mut acc, widen(q, false).map(|q| _mm256_fmsub_ps(a, q, m)), &xs[32 * s..]);
            }
        }
    }
    sum4(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_k_exact(row: &[u8], x: &[f32]) -> f32 {
    q45_exact(row, x, 144, 16, None)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q5_k_exact(row: &[u8], x: &[f32]) -> f32 {
    q45_exact(row, x, 176, 48, Some(16))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q6_k_exact(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, xs) in row.chunks_exact(210).zip(x.chunks_exact(256)) {
        let d = f16x8(&b[208..]);
        for q in 0..8 {
            let c = widen(_mm256_sub_epi8(codes6(b, q), _mm256_set1_epi8(32)), true);
            // Scale groups 2q (first 16 codes) and 2q + 1.
            let sc = |g: usize| _mm256_mul_ps(d, _mm256_set1_ps(b[192 + g] as i8 as f32));
            let (d0, d1) = (sc(2 * q), sc(2 * q + 1));
            let w = [_mm256_mul_ps(d0, c[0]), _mm256_mul_ps(d0, c[1]), _mm256_mul_ps(d1, c[2]), _mm256_mul_ps(d1, c[3])];
            fma4(&mut acc, w, &xs[32 * q..]);
        }
    }
    sum4(acc)
}
