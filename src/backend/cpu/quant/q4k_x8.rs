//! Q4_K rows repacked once, eight at a time, so that a product of any number of tokens reads
//! them with no decoding step (llama.cpp's `block_q4_Kx8` of `ggml-cpu/repack.cpp`, the
//! layout its `gemv` and `gemm` share). [`Q4KBlockX8`] holds eight rows' super-block `s`: the
//! 4-bit codes kept packed and interleaved by eight bytes — vector `4j + m` holds bytes
//! `32j + 8m..32j + 8m + 8` of every row, whose low nibbles are the codes `64j + 8m..` (sub-block
//! `2j`) and high nibbles the codes `64j + 32 + 8m..` (sub-block `2j + 1`) — so that one `and`
//! (and a shift) gives the eight rows' eight codes that `ktile.rs`'s `KRows` holds decoded, and
//! the tile runs as `ktile.rs`'s: one `vpdpbusd` per eight codes of all eight rows and a token,
//! the sums times each sub-block's scale, the mins against the token's per-16 sums, and the
//! f32 step per super-block. Scales and mins stay 6-bit bytes, per sub-block and row.
//!
//! The integer sums are exact and each super-block's f32 step is the matvec's,
//! `(d·xd)·dot − (dmin·xd)·min`, added in super-block order: a product equals the matvec's
//! (`scalar.rs`, `kquant_avx2.rs`) bit for bit on every level.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::ktile::{dot4_512, dot4_512_vnni, eight};
use super::scalar::scales_k4;
use super::{f16_at, quantize_q8k, BlockQ8K, BlockX8, QuantError};
use crate::backend::cpu::simd::Simd;

/// How many super-blocks ahead of the one being computed the AVX-512 passes ask the memory
/// for (about 5 KiB: the hardware prefetchers alone leave the pass waiting on the first
/// bytes of each).
#[cfg(target_arch = "x86_64")]
const AHEAD_BLOCKS: usize = 4;

/// Eight rows' super-block `s`, repacked (see the module header).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(in crate::backend::cpu) struct Q4KBlockX8 {
    /// `qs[4j + m][8r..8r + 8]`: row `r`'s code bytes `32j + 8m..32j + 8m + 8`.
    qs: [[u8; 64]; 16],
    /// `scales[s][r]`, `mins[s][r]`: row `r`'s 6-bit scale and min of sub-block `s`.
    scales: [[u8; 8]; 8],
    mins: [[u8; 8]; 8],
    /// Per row the f16 `d` and `dmin`, as f32.
    d: [f32; 8],
    dmin: [f32; 8],
}

impl Default for Q4KBlockX8 {
    fn default() -> Q4KBlockX8 {
        Q4KBlockX8 { qs: [[0; 64]; 16], scales: [[0; 8]; 8], mins: [[0; 8]; 8], d: [0.0; 8], dmin: [0.0; 8] }
    }
}

impl BlockX8 for Q4KBlockX8 {
    type Act = BlockQ8K;

    /// Repacks super-block `rows[r]` (144 bytes each) of eight Q4_K rows.
    fn pack(rows: [&[u8]; 8]) -> Q4KBlockX8 {
        let mut out = Q4KBlockX8::default();
        for (r, b) in rows.into_iter().enumerate() {
            for (v, dst) in out.qs.iter_mut().enumerate() {
                dst[8 * r..8 * r + 8].copy_from_slice(&b[16 + 8 * v..][..8]);
            }
            let (sc, mins) = scales_k4(&b[4..16]);
            for s in 0..8 {
                (out.scales[s][r], out.mins[s][r]) = (sc[s], mins[s]);
            }
            (out.d[r], out.dmin[r]) = (f16_at(b, 0), f16_at(b, 2));
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

impl Q4KBlockX8 {
    /// Row `r`'s code `e` (0..256).
    fn code(&self, r: usize, e: usize) -> i32 {
        let (j, high, l) = (e / 64, (e % 64) / 32, e % 32);
        let byte = self.qs[4 * j + l / 8][8 * r + l % 8];
        (if high == 1 { byte >> 4 } else { byte & 0x0F }) as i32
    }
}

/// `p[i][r] += Σ_s` row `r` of super-blocks `w[s]` times token `i`'s activation blocks
/// `xs[i][s]` (`xs.len() ≤ p.len()`), scalar, in `scalar.rs`'s order of f32 steps.
fn tile_scalar(w: &[Q4KBlockX8], xs: &[&[BlockQ8K]], p: &mut [[f32; 8]]) {
    for (i, x) in xs.iter().enumerate() {
        for (r, pr) in p[i].iter_mut().enumerate() {
            for (b, xb) in w.iter().zip(x.iter()) {
                let mut dot = 0;
                let mut min = 0;
                for s in 0..8 {
                    let sum: i32 = (32 * s..32 * s + 32).map(|e| b.code(r, e) * xb.qs[e] as i32).sum();
                    dot += b.scales[s][r] as i32 * sum;
                    min += b.mins[s][r] as i32 * (xb.bsums[2 * s] as i32 + xb.bsums[2 * s + 1] as i32);
                }
                *pr += b.d[r] * xb.d * dot as f32 - b.dmin[r] * xb.d * min as f32;
            }
        }
    }
}

/// [`tile_scalar`] with AVX-512 (`tile_512`: `maddubs` + `madd`; `tile_512_vnni`: `vpdpbusd`), all eight
/// rows in one vector and `T` tokens per pass (`T` independent chains; a pass of fewer tokens
/// than `T` repeats its last, whose sums are dropped): `ktile.rs`'s passes, the codes unpacked
/// from their bytes (an `and`, or a shift and an `and`) once per pass. A sub-block's sums of
/// two tokens are packed to 16 bits (`packssdw`: a lane holds 16 products of a 4-bit code and
/// an 8-bit value, which fit) and multiplied by the rows' scales in one `vpmaddwd`, which
/// also adds each row's pair of lanes (a pass of one token keeps a `vpmulld`: packing it
/// with itself made its pass of streamed weights 1.6x slower); the mins of two sub-blocks go
/// to a `madd` with the token's four per-16 sums (`vpmovzxbw`).
macro_rules! q4k_tile_512 {
    ($features:literal, $dot4:path: $name:ident, $pass:ident) => {
        /// # Safety
        /// Needs the CPU features named in its `target_feature`; every token of `xs` holds
        /// `w.len()` super-blocks.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(w: &[Q4KBlockX8], xs: &[&[BlockQ8K]], p: &mut [[f32; 8]]) {
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
        unsafe fn $pass<const T: usize>(w: &[Q4KBlockX8], xs: &[&[BlockQ8K]], p: &mut [[f32; 8]], i0: usize) -> usize {
            let taken = T.min(xs.len());
            let xt: [&[BlockQ8K]; T] = std::array::from_fn(|k| xs[k.min(taken - 1)]);
            let low4 = _mm512_set1_epi8(0x0F);
            // Each row's scale twice (its pair of lanes: one token's `vpmulld`); two sub-blocks'
            // mins, each twice, per row (the `madd` with the token's four per-16 sums).
            let pairs = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
            let min_pairs = _mm256_setr_epi8(
                0, 0, 8, 8, 1, 1, 9, 9, 2, 2, 10, 10, 3, 3, 11, 11, 4, 4, 12, 12, 5, 5, 13, 13, 6, 6, 14, 14, 7, 7, 15, 15,
            );
            // Pairs of lanes into rows: the low half of each 64-bit lane's two sums.
            let rows = |v: __m512i| _mm256_cvtepi32_ps(_mm512_cvtepi64_epi32(_mm512_add_epi32(v, _mm512_srli_epi64(v, 32))));
            // Each row's scale as the 16-bit lanes of `_mm512_packs_epi32`'s rows: per 128-bit
            // lane `q`, rows `2q, 2q, 2q + 1, 2q + 1` twice.
            let pack_pairs =
                _mm256_setr_epi8(0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3, 4, 4, 5, 5, 4, 4, 5, 5, 6, 6, 7, 7, 6, 6, 7, 7);
            // Two tokens' rows from `packs`' order (per 128-bit lane: token a's two rows, then
            // token b's): token a's eight rows low, token b's high.
            let unpair = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
            let mut sums = [_mm256_setzero_ps(); T];
            for (s, b) in w.iter().enumerate() {
                // The super-block `AHEAD_BLOCKS` on (past the panel: the next panel's, which
                // follows it in memory) comes from memory meanwhile.
                if T > 1 {
                    let ahead = (b as *const Q4KBlockX8).wrapping_add(AHEAD_BLOCKS).cast::<i8>();
                    for line in 0..size_of::<Q4KBlockX8>() / 64 {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
                    }
                }
                let xb = xt.map(|x| &x[s]);
                // Token pair `q`'s sums in `dot[q]` (`packs`' order; one token's in `dot[0]`,
                // each row's pair of lanes).
                let mut dot = [_mm512_setzero_si512(); T];
                for j in 0..4 {
                    let v: [__m512i; 4] = std::array::from_fn(|m| _mm512_load_si512(b.qs[4 * j + m].as_ptr().cast()));
                    for half in 0..2 {
                        let sub = 2 * j + half;
                        let mut part = [_mm512_setzero_si512(); T];
                        for (m, &v) in v.iter().enumerate() {
                            let codes = if half == 0 { v } else { _mm512_srli_epi16(v, 4) };
                            let codes = _mm512_and_si512(codes, low4);
                            for k in 0..T {
                                // SAFETY: `32 sub + 8m + 8 ≤ 256`.
                                let x = _mm512_set1_epi64(eight(xb[k].qs.as_ptr().add(32 * sub + 8 * m)));
                                part[k] = $dot4(part[k], codes, x);
                            }
                        }
                        if T == 1 {
                            let scales = _mm_shuffle_epi8(_mm_loadl_epi64(b.scales[sub].as_ptr().cast()), pairs);
                            dot[0] = _mm512_add_epi32(dot[0], _mm512_mullo_epi32(part[0], _mm512_cvtepu8_epi32(scales)));
                            continue;
                        }
                        let scales = _mm256_set1_epi64x(eight(b.scales[sub].as_ptr()));
                        let scales = _mm512_cvtepu8_epi16(_mm256_shuffle_epi8(scales, pack_pairs));
                        for q in 0..T.div_ceil(2) {
                            // Each lane's 16 products fit 16 bits: `packs` keeps them whole.
                            let two = _mm512_packs_epi32(part[2 * q], part[(2 * q + 1).min(T - 1)]);
                            dot[q] = _mm512_add_epi32(dot[q], _mm512_madd_epi16(two, scales));
                        }
                    }
                }
                let (d, dmin) = (_mm256_loadu_ps(b.d.as_ptr()), _mm256_loadu_ps(b.dmin.as_ptr()));
                let mins: [__m512i; 4] = std::array::from_fn(|j| {
                    let two = _mm256_broadcastsi128_si256(_mm_loadu_si128(b.mins[2 * j].as_ptr().cast()));
                    _mm512_cvtepu8_epi16(_mm256_shuffle_epi8(two, min_pairs))
                });
                for k in 0..T {
                    let mut min = _mm512_setzero_si512();
                    for (j, &mins) in mins.iter().enumerate() {
                        let bsums = _mm512_set1_epi64(eight(xb[k].bsums[4 * j..].as_ptr()));
                        min = _mm512_add_epi32(min, _mm512_madd_epi16(mins, bsums));
                    }
                    let xd = _mm256_set1_ps(xb[k].d);
                    let sub = _mm256_mul_ps(_mm256_mul_ps(dmin, xd), rows(min));
                    let dot = if T == 1 {
                        rows(dot[0])
                    } else {
                        let two = _mm512_permutexvar_epi32(unpair, dot[k / 2]);
                        _mm256_cvtepi32_ps(if k % 2 == 0 {
                            _mm512_castsi512_si256(two)
                        } else {
                            _mm512_extracti64x4_epi64::<1>(two)
                        })
                    };
                    let step = _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(d, xd), dot), sub);
                    sums[k] = _mm256_add_ps(sums[k], step);
                }
            }
            for (k, sum) in sums.iter().enumerate().take(taken) {
                let at = p[i0 + k].as_mut_ptr();
                _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), *sum));
            }
            taken
        }
    };
}

q4k_tile_512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl", dot4_512: tile_512, pass_512);
q4k_tile_512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", dot4_512_vnni: tile_512_vnni, pass_512_vnni);
