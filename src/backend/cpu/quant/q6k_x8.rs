//! Q6_K rows repacked once, eight at a time, so that a product of any number of tokens reads
//! them with no decoding step (`q4k_x8.rs`'s layout for Q6_K's two code arrays). [`Q6KBlockX8`]
//! holds eight rows' super-block: the low nibbles (`ql`) and the high bit pairs (`qh`) each
//! interleaved by eight bytes, so that code vector `q` of `ktile.rs`'s `KRows` (codes `8q..8q
//! + 8` of all eight rows; `q = 16h + 4k + m`, half `h`, quarter `k`) is an `and` of the
//! half's `ql` vector `4(k & 1) + m` (shifted by 4 for `k ≥ 2`) or'ed with its `qh` vector
//! `m` shifted to bits 4-5 (`gguf/quant/dequant.rs` has the element order); each half's
//! vectors lie in the order the tile reads them, for the prefetchers. The tile then runs
//! as `ktile.rs`'s Q6_K tile: one `vpdpbusd` per eight codes of all eight rows and a token,
//! the sums of each group of 16 times its signed scale, and the offset of 32 as
//! `−32 Σ_g scale_g · bsum_g` against the token's per-16 sums, the scales widened to 16 bits
//! and turned to rows by one `vpermw` per four groups.
//!
//! The integer sums are exact and each super-block's f32 step is the matvec's,
//! `(d·xd)·(dot − 32·min)`, added in super-block order: a product equals the matvec's
//! (`scalar.rs`, `kquant_avx2.rs`) bit for bit on every level.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::ktile::{dot4_512, dot4_512_vnni, eight};
use super::{f16_at, quantize_q8k, BlockQ8K, BlockX8, QuantError};
use crate::backend::cpu::simd::Simd;

/// How many super-blocks ahead of the one being computed the AVX-512 passes ask the memory
/// for (as in `q4k_x8.rs`, but at every pass: the one-token pass of the two code arrays
/// measured 1.4x slower without it).
#[cfg(target_arch = "x86_64")]
const AHEAD_BLOCKS: usize = 3;

/// Eight rows' super-block, repacked (see the module header), in the order the tiles read it.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(in crate::backend::cpu) struct Q6KBlockX8 {
    /// The codes `128h..128h + 128` of every row.
    halves: [Half; 2],
    /// `scales[g][r]`: row `r`'s scale of the codes `16g..16g + 16`.
    scales: [[i8; 8]; 16],
    /// Per row the f16 `d`, as f32.
    d: [f32; 8],
}

/// Half `h` of eight rows' super-block.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Half {
    /// `qh[m][8r..8r + 8]`: row `r`'s high-bit bytes `32h + 8m..32h + 8m + 8`.
    qh: [[u8; 64]; 4],
    /// `ql[4c + m][8r..8r + 8]`: row `r`'s low-nibble bytes `64h + 32c + 8m..` (low nibbles the
    /// quarter `k = c`, high ones `k = c + 2`).
    ql: [[u8; 64]; 8],
}

impl Default for Q6KBlockX8 {
    fn default() -> Q6KBlockX8 {
        Q6KBlockX8 { halves: [Half { qh: [[0; 64]; 4], ql: [[0; 64]; 8] }; 2], scales: [[0; 8]; 16], d: [0.0; 8] }
    }
}

impl BlockX8 for Q6KBlockX8 {
    type Act = BlockQ8K;

    /// Repacks super-block `rows[r]` (210 bytes each) of eight Q6_K rows.
    fn pack(rows: [&[u8]; 8]) -> Q6KBlockX8 {
        let mut out = Q6KBlockX8::default();
        for (r, b) in rows.into_iter().enumerate() {
            for (h, half) in out.halves.iter_mut().enumerate() {
                for (v, dst) in half.ql.iter_mut().enumerate() {
                    dst[8 * r..8 * r + 8].copy_from_slice(&b[64 * h + 8 * v..][..8]);
                }
                for (m, dst) in half.qh.iter_mut().enumerate() {
                    dst[8 * r..8 * r + 8].copy_from_slice(&b[128 + 32 * h + 8 * m..][..8]);
                }
            }
            for (g, s) in out.scales.iter_mut().enumerate() {
                s[r] = b[192 + g] as i8;
            }
            out.d[r] = f16_at(b, 208);
        }
        out
    }

    fn quantize(x: &[f32]) -> Result<Vec<BlockQ8K>, QuantError> {
        quantize_q8k(x)
    }

    fn tile(simd: Simd, w: &[Self], xs: &[&[BlockQ8K]], p: &mut [[f32; 8]]) {
        x8_tile_at_level!(simd, w, xs, p)
    }
}

impl Q6KBlockX8 {
    /// Row `r`'s code `e` (0..256, unsigned: the weight is `code − 32`).
    fn code(&self, r: usize, e: usize) -> i32 {
        let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
        let half = &self.halves[h];
        let low = (half.ql[4 * (k & 1) + l / 8][8 * r + l % 8] >> (4 * (k / 2))) & 0x0F;
        let high = (half.qh[l / 8][8 * r + l % 8] >> (2 * k)) & 3;
        (low | (high << 4)) as i32
    }
}

/// `p[i][r] += Σ_s` row `r` of super-blocks `w[s]` times token `i`'s activation blocks
/// `xs[i][s]` (`xs.len() ≤ p.len()`), scalar, in `scalar.rs`'s order of f32 steps.
fn tile_scalar(w: &[Q6KBlockX8], xs: &[&[BlockQ8K]], p: &mut [[f32; 8]]) {
    for (i, x) in xs.iter().enumerate() {
        for (r, pr) in p[i].iter_mut().enumerate() {
            for (b, xb) in w.iter().zip(x.iter()) {
                let mut sum = 0;
                for g in 0..16 {
                    let dot: i32 = (16 * g..16 * g + 16).map(|e| b.code(r, e) * xb.qs[e] as i32).sum();
                    sum += b.scales[g][r] as i32 * (dot - 32 * xb.bsums[g] as i32);
                }
                *pr += b.d[r] * xb.d * sum as f32;
            }
        }
    }
}

/// [`tile_scalar`] with AVX-512 (`tile_512`: `maddubs` + `madd`; `tile_512_vnni`: `vpdpbusd`), all eight
/// rows in one vector and `T` tokens per pass, as `q4k_x8.rs`'s passes: the codes put
/// together from their two arrays once per pass, each group's scales widened to the rows'
/// pairs of lanes (`pshufb`, `vpmovsxbd`).
macro_rules! q6k_tile_512 {
    ($features:literal, $dot4:path: $name:ident, $pass:ident) => {
        /// # Safety
        /// Needs the CPU features named in its `target_feature`; every token of `xs` holds
        /// `w.len()` super-blocks.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(w: &[Q6KBlockX8], xs: &[&[BlockQ8K]], p: &mut [[f32; 8]]) {
            let mut i0 = 0;
            while i0 < xs.len() {
                let n = xs.len() - i0;
                let taken = match n {
                    1 => $pass::<1>(w, &xs[i0..], p, i0),
                    2 => $pass::<2>(w, &xs[i0..], p, i0),
                    3 | 4 => $pass::<4>(w, &xs[i0..], p, i0),
                    _ => $pass::<8>(w, &xs[i0..], p, i0),
                };
                i0 += taken;
            }
        }

        /// One pass of up to `T` tokens from `xs[0]`, added to `p` from token `i0`; returns how
        /// many it took.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $pass<const T: usize>(w: &[Q6KBlockX8], xs: &[&[BlockQ8K]], p: &mut [[f32; 8]], i0: usize) -> usize {
            let taken = T.min(xs.len());
            let xt: [&[BlockQ8K]; T] = std::array::from_fn(|k| xs[k.min(taken - 1)]);
            let (low4, high2) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
            // Each row's scale twice (its pair of lanes).
            let pairs = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
            // Four groups' scales, as 16-bit lanes `8g + r`, to lanes `4r + g` (each row's four
            // against the token's four per-16 sums broadcast).
            let by_row = _mm512_set_epi16(
                31, 23, 15, 7, 30, 22, 14, 6, 29, 21, 13, 5, 28, 20, 12, 4, 27, 19, 11, 3, 26, 18, 10, 2, 25, 17, 9, 1, 24, 16,
                8, 0,
            );
            // Pairs of lanes into rows: the low half of each 64-bit lane's two sums.
            let rows = |v: __m512i| _mm256_cvtepi32_ps(_mm512_cvtepi64_epi32(_mm512_add_epi32(v, _mm512_srli_epi64(v, 32))));
            let mut sums = [_mm256_setzero_ps(); T];
            for (s, b) in w.iter().enumerate() {
                let ahead = (b as *const Q6KBlockX8).wrapping_add(AHEAD_BLOCKS).cast::<i8>();
                for line in 0..size_of::<Q6KBlockX8>() / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
                }
                let xb = xt.map(|x| &x[s]);
                let mut dot = [_mm512_setzero_si512(); T];
                for (h, half) in b.halves.iter().enumerate() {
                    let qh: [__m512i; 4] = std::array::from_fn(|m| _mm512_load_si512(half.qh[m].as_ptr().cast()));
                    for k in 0..4 {
                        let mut part = [_mm512_setzero_si512(); T];
                        for (m, &qh) in qh.iter().enumerate() {
                            let ql = _mm512_load_si512(half.ql[4 * (k & 1) + m].as_ptr().cast());
                            let low = _mm512_and_si512(if k < 2 { ql } else { _mm512_srli_epi16(ql, 4) }, low4);
                            let high = match k {
                                0 => _mm512_slli_epi16(qh, 4),
                                1 => _mm512_slli_epi16(qh, 2),
                                2 => qh,
                                _ => _mm512_srli_epi16(qh, 2),
                            };
                            let codes = _mm512_or_si512(low, _mm512_and_si512(high, high2));
                            let q = 16 * h + 4 * k + m;
                            for t in 0..T {
                                // SAFETY: `8q + 8 ≤ 256`.
                                let x = _mm512_set1_epi64(eight(xb[t].qs.as_ptr().add(8 * q)));
                                part[t] = $dot4(part[t], codes, x);
                            }
                            if m % 2 == 1 {
                                // Group `q / 2`'s sums, times its scales.
                                let scales = _mm_shuffle_epi8(_mm_loadl_epi64(b.scales[q / 2].as_ptr().cast()), pairs);
                                let scales = _mm512_cvtepi8_epi32(scales);
                                for t in 0..T {
                                    dot[t] = _mm512_add_epi32(dot[t], _mm512_mullo_epi32(part[t], scales));
                                    part[t] = _mm512_setzero_si512();
                                }
                            }
                        }
                    }
                }
                let scales: [__m512i; 4] = std::array::from_fn(|j| {
                    let four = _mm256_load_si256(b.scales[4 * j..].as_ptr().cast());
                    _mm512_permutexvar_epi16(by_row, _mm512_cvtepi8_epi16(four))
                });
                let d = _mm256_loadu_ps(b.d.as_ptr());
                for t in 0..T {
                    let mut min = _mm512_setzero_si512();
                    for (j, &scales) in scales.iter().enumerate() {
                        let bsums = _mm512_set1_epi64(eight(xb[t].bsums[4 * j..].as_ptr()));
                        min = _mm512_add_epi32(min, _mm512_madd_epi16(scales, bsums));
                    }
                    let total = _mm512_sub_epi32(dot[t], _mm512_slli_epi32(min, 5));
                    let step = _mm256_mul_ps(_mm256_mul_ps(d, _mm256_set1_ps(xb[t].d)), rows(total));
                    sums[t] = _mm256_add_ps(sums[t], step);
                }
            }
            for (t, sum) in sums.iter().enumerate().take(taken) {
                let at = p[i0 + t].as_mut_ptr();
                _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), *sum));
            }
            taken
        }
    };
}

q6k_tile_512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl", dot4_512: tile_512, pass_512);
q6k_tile_512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", dot4_512_vnni: tile_512_vnni, pass_512_vnni);
