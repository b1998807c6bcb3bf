//! K-quant super-blocks decoded once for many tokens (the fast mode of
//! [`matmul`](crate::backend::cpu::matmul)): [`KBlock`] holds a Q4_K, Q5_K or Q6_K
//! super-block's 256 codes as unsigned bytes in element order with its scales spread over the
//! 16 pair lanes of each 32-code chunk, so that the row dot against a [`BlockQ8K`] is one
//! `maddubs` / `madd` / `add` per chunk and nothing format-specific is left in the loop that
//! runs for every token. [`tile`] takes four rows' blocks against a tile of tokens: each
//! activation chunk is loaded once for the four rows (ggml's `vec_dot_num_rows`, the 4x4 tile
//! idea of llamafile's `tinyBLAS`, Tunney 2024).
//!
//! The integer sums are those of `scalar.rs` / `kquant_avx2.rs` (no i16 lane saturates: codes
//! below 64 times activations of at most 127, two per lane), and [`KBlock::step`] is their
//! f32 step, so a product equals the matvec's bit for bit on every level.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::scalar::scales_k4;
use super::{f16_at, BlockQ8K};
use crate::gguf::GgmlType;

/// One decoded super-block (aligned for 32-byte loads).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub(in crate::backend::cpu) struct KBlock {
    /// Element `e`'s code, unsigned (Q4_K below 16, Q5_K below 32, Q6_K below 64).
    codes: [u8; 256],
    /// Chunk `q`'s scale per `maddubs` pair lane: lanes 0..8 hold group `2q`'s (elements
    /// `32q..32q + 16`), lanes 8..16 group `2q + 1`'s.
    scales: [[i16; 16]; 8],
    /// The factor of the activations' sum over group `g` of 16: Q4_K/Q5_K the min of its
    /// sub-block of 32, Q6_K `-32 × scale` (its codes are offset by 32).
    mins: [i16; 16],
    /// f16 `d` and `dmin` (Q6_K: `d` only, its mins fold into the integer sum).
    d: f32,
    dmin: f32,
    six: bool,
}

impl Default for KBlock {
    fn default() -> KBlock {
        KBlock { codes: [0; 256], scales: [[0; 16]; 8], mins: [0; 16], d: 0.0, dmin: 0.0, six: false }
    }
}

impl KBlock {
    /// Decodes super-block `b` of a `ty` row (Q4_K, Q5_K or Q6_K; layouts in
    /// `gguf/quant/dequant.rs`, unpacking as in `scalar.rs`); `avx2`: the codes with
    /// `kquant_avx2.rs`'s unpacking (the CPU has AVX2, FMA and F16C).
    pub(in crate::backend::cpu) fn decode(ty: GgmlType, b: &[u8], out: &mut KBlock, avx2: bool) {
        match avx2 {
            // SAFETY: as documented.
            #[cfg(target_arch = "x86_64")]
            true => unsafe { codes_avx2(ty, b, &mut out.codes) },
            _ => codes(ty, b, &mut out.codes),
        }
        let mut group = [0i16; 16];
        match ty {
            GgmlType::Q6_K => {
                for (g, s) in group.iter_mut().enumerate() {
                    *s = b[192 + g] as i8 as i16;
                    out.mins[g] = -32 * *s;
                }
                (out.d, out.dmin, out.six) = (f16_at(b, 208), 0.0, true);
            }
            _ => {
                let (scales, mins) = scales_k4(&b[4..16]);
                for g in 0..16 {
                    (group[g], out.mins[g]) = (scales[g / 2] as i16, mins[g / 2] as i16);
                }
                (out.d, out.dmin, out.six) = (f16_at(b, 0), f16_at(b, 2), false);
            }
        }
        for (q, lanes) in out.scales.iter_mut().enumerate() {
            lanes[..8].fill(group[2 * q]);
            lanes[8..].fill(group[2 * q + 1]);
        }
    }

    /// The block's share of a row product from its integer sums (`dot`: codes times
    /// activation codes by scale, `min`: mins times the activations' per-16 sums), as the
    /// matvec kernels form it.
    #[inline]
    fn step(&self, dot: i32, min: i32, xd: f32) -> f32 {
        if self.six {
            self.d * xd * (dot + min) as f32
        } else {
            self.d * xd * dot as f32 - self.dmin * xd * min as f32
        }
    }
}

/// The 256 codes of super-block `b`, in element order.
fn codes(ty: GgmlType, b: &[u8], codes: &mut [u8; 256]) {
    if ty == GgmlType::Q6_K {
        for (e, c) in codes.iter_mut().enumerate() {
            let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = (b[64 * h + l + 32 * (k & 1)] >> (4 * (k / 2))) & 0x0F;
            let high = (b[128 + 32 * h + l] >> (2 * k)) & 3;
            *c = low | (high << 4);
        }
        return;
    }
    let (qs, qh) = if ty == GgmlType::Q5_K { (&b[48..176], Some(&b[16..48])) } else { (&b[16..144], None) };
    for (e, c) in codes.iter_mut().enumerate() {
        let (s, l) = (e / 32, e % 32);
        let high = qh.map_or(0, |qh| ((qh[l] >> s) & 1) << 4);
        *c = ((qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0F) | high;
    }
}

/// [`codes`] with AVX2, 32 at a time.
///
/// # Safety
/// Needs AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn codes_avx2(ty: GgmlType, b: &[u8], codes: &mut [u8; 256]) {
    use super::kquant_avx2::{codes45, codes6};
    let store = |at: usize, v: __m256i, codes: &mut [u8; 256]| _mm256_storeu_si256(codes[at..at + 32].as_mut_ptr().cast(), v);
    if ty == GgmlType::Q6_K {
        for q in 0..8 {
            store(32 * q, codes6(b, q), codes);
        }
        return;
    }
    let (qs_at, qh) = if ty == GgmlType::Q5_K { (48, Some(_mm256_loadu_si256(b[16..48].as_ptr().cast()))) } else { (16, None) };
    for j in 0..4 {
        let [lo, hi] = codes45(b[qs_at + 32 * j..][..32].as_ptr(), qh, j as i32);
        store(64 * j, lo, codes);
        store(64 * j + 32, hi, codes);
    }
}

/// `p[r][i] += Σ_s` row `r`'s super-block `b[r][s]` times token `i`'s activation block
/// `xs[i][s]`, in super-block order (`xs.len() ≤ N`), scalar.
pub(in crate::backend::cpu) fn tile<const N: usize>(b: [&[KBlock]; 4], xs: &[&[BlockQ8K]], p: &mut [[f32; N]; 4]) {
    for (i, x) in xs.iter().enumerate() {
        for (pr, row) in p.iter_mut().zip(b) {
            for (b, x) in row.iter().zip(x.iter()) {
                let mut dot = 0;
                for (q, (c, xq)) in b.codes.chunks_exact(32).zip(x.qs.chunks_exact(32)).enumerate() {
                    let pairs = c
                        .chunks_exact(2)
                        .zip(xq.chunks_exact(2))
                        .map(|(c, x)| c[0] as i32 * x[0] as i32 + c[1] as i32 * x[1] as i32);
                    dot += pairs.zip(&b.scales[q]).map(|(v, &s)| v * s as i32).sum::<i32>();
                }
                let min = b.mins.iter().zip(&x.bsums).map(|(&m, &s)| m as i32 * s as i32).sum();
                pr[i] += b.step(dot, min, x.d);
            }
        }
    }
}

/// The four sums of `v`'s eight i32 lanes each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum4(v: [__m256i; 4]) -> __m128i {
    let s = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1))
}

/// `acc + Σ` of `m`'s i16 pairs times `scale`'s (two ops).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn madd_add(acc: __m256i, m: __m256i, scale: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(m, scale))
}

/// [`tile`] with AVX2, for groups of four tokens: per super-block, a register tile of two
/// rows by four tokens takes each 32-code chunk's two rows of codes and lane scales once for
/// the four tokens (eight accumulators, so that loads stay below the integer ops); the four
/// rows' sums of a token are then reduced together and their f32 steps formed in one vector,
/// with the scalar step's operations (no FMA), and added to the token's running sums, which
/// stay in registers over the super-blocks. Bit for bit the scalar result.
macro_rules! ktile_avx2 {
    ($features:literal, $madd_add:path: $name:ident) => {
        /// # Safety
        /// Needs the CPU features named in its `target_feature`; every row of `b` and token of
        /// `xs` holds the same number of super-blocks.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        pub(in crate::backend::cpu) unsafe fn $name<const N: usize>(
            b: [&[KBlock]; 4],
            xs: &[&[BlockQ8K]],
            p: &mut [[f32; N]; 4],
        ) {
            let load = |p: *const u8| _mm256_loadu_si256(p.cast());
            for i0 in (0..xs.len()).step_by(4) {
                // A short last group repeats its last token (its sums are dropped).
                let x4: [&[BlockQ8K]; 4] = std::array::from_fn(|k| xs[(i0 + k).min(xs.len() - 1)]);
                // Per token, the four rows' running sums (lane r: row r).
                let mut sums = [_mm_setzero_ps(); 4];
                for s in 0..b[0].len() {
                    let blk = b.map(|row| &row[s]);
                    // Per token, rows 0 and 1 pairwise summed (after the first pair of rows).
                    let mut half = [_mm256_setzero_si256(); 4];
                    let mut dots = [_mm_setzero_si128(); 4];
                    for pair in 0..2 {
                        let (r0, r1) = (blk[2 * pair], blk[2 * pair + 1]);
                        let mut a = [[_mm256_setzero_si256(); 4]; 2];
                        for q in 0..8 {
                            let c = [load(r0.codes[32 * q..].as_ptr()), load(r1.codes[32 * q..].as_ptr())];
                            let sc = [load(r0.scales[q].as_ptr().cast()), load(r1.scales[q].as_ptr().cast())];
                            for k in 0..4 {
                                let xv = load(x4[k][s].qs[32 * q..].as_ptr().cast());
                                for r in 0..2 {
                                    a[r][k] = $madd_add(a[r][k], _mm256_maddubs_epi16(c[r], xv), sc[r]);
                                }
                            }
                        }
                        for k in 0..4 {
                            let h = _mm256_hadd_epi32(a[0][k], a[1][k]);
                            if pair == 0 {
                                half[k] = h;
                            } else {
                                let both = _mm256_hadd_epi32(half[k], h);
                                dots[k] = _mm_add_epi32(_mm256_castsi256_si128(both), _mm256_extracti128_si256(both, 1));
                            }
                        }
                    }
                    let d = _mm_setr_ps(blk[0].d, blk[1].d, blk[2].d, blk[3].d);
                    let dmin = _mm_setr_ps(blk[0].dmin, blk[1].dmin, blk[2].dmin, blk[3].dmin);
                    let mins = blk.map(|b| load(b.mins.as_ptr().cast()));
                    for (k, sum) in sums.iter_mut().enumerate() {
                        let x = &x4[k][s];
                        let bsums = load(x.bsums.as_ptr().cast());
                        let (dot, min) = (dots[k], hsum4(mins.map(|m| _mm256_madd_epi16(m, bsums))));
                        let xd = _mm_set1_ps(x.d);
                        let step = if blk[0].six {
                            _mm_mul_ps(_mm_mul_ps(d, xd), _mm_cvtepi32_ps(_mm_add_epi32(dot, min)))
                        } else {
                            let sub = _mm_mul_ps(_mm_mul_ps(dmin, xd), _mm_cvtepi32_ps(min));
                            _mm_sub_ps(_mm_mul_ps(_mm_mul_ps(d, xd), _mm_cvtepi32_ps(dot)), sub)
                        };
                        *sum = _mm_add_ps(*sum, step);
                    }
                }
                for (k, sum) in sums.iter().enumerate().take(xs.len() - i0) {
                    let mut s = [0f32; 4];
                    _mm_storeu_ps(s.as_mut_ptr(), *sum);
                    for (pr, s) in p.iter_mut().zip(s) {
                        pr[i0 + k] += s;
                    }
                }
            }
        }
    };
}

ktile_avx2!("avx2,fma,f16c", madd_add: tile_avx2);

/// `acc + Σ` of `m`'s i16 pairs times `scale`'s, 512-bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
fn madd_add512(acc: __m512i, m: __m512i, scale: __m512i) -> __m512i {
    _mm512_add_epi32(acc, _mm512_madd_epi16(m, scale))
}

/// [`madd_add512`] in one `vpdpwssd` (AVX-512 VNNI; no lane overflows here).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn madd_add512_vnni(acc: __m512i, m: __m512i, scale: __m512i) -> __m512i {
    _mm512_dpwssd_epi32(acc, m, scale)
}

/// [`tile`] with AVX-512: as the AVX2 tile, on 512-bit vectors of two chunks (64 codes, both
/// chunks' lane scales), four rows by four tokens at once (16 accumulators: the 32 vector
/// registers hold them with the rows' codes and scales); each accumulator folds to 256 bits
/// before the AVX2 tile's reduction. The same integer sums and f32 steps: bit for bit the
/// scalar result. With VNNI the scale multiply and add are one `vpdpwssd`.
macro_rules! ktile_avx512 {
    ($features:literal, $madd_add:path: $name:ident) => {
        /// # Safety
        /// Needs the CPU features named in its `target_feature`; every row of `b` and token of
        /// `xs` holds the same number of super-blocks.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        pub(in crate::backend::cpu) unsafe fn $name<const N: usize>(
            b: [&[KBlock]; 4],
            xs: &[&[BlockQ8K]],
            p: &mut [[f32; N]; 4],
        ) {
            let load = |p: *const u8| _mm512_loadu_si512(p.cast());
            let fold = |v: __m512i| _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
            for i0 in (0..xs.len()).step_by(4) {
                // A short last group repeats its last token (its sums are dropped).
                let x4: [&[BlockQ8K]; 4] = std::array::from_fn(|k| xs[(i0 + k).min(xs.len() - 1)]);
                // Per token, the four rows' running sums (lane r: row r).
                let mut sums = [_mm_setzero_ps(); 4];
                for s in 0..b[0].len() {
                    let blk = b.map(|row| &row[s]);
                    let mut a = [[_mm512_setzero_si512(); 4]; 4];
                    for q in 0..4 {
                        let c = blk.map(|r| load(r.codes[64 * q..].as_ptr()));
                        // Chunks 2q and 2q + 1's lane scales are adjacent.
                        let sc = blk.map(|r| load(r.scales.as_ptr().add(2 * q).cast()));
                        for k in 0..4 {
                            let xv = load(x4[k][s].qs[64 * q..].as_ptr().cast());
                            for r in 0..4 {
                                a[r][k] = $madd_add(a[r][k], _mm512_maddubs_epi16(c[r], xv), sc[r]);
                            }
                        }
                    }
                    let d = _mm_setr_ps(blk[0].d, blk[1].d, blk[2].d, blk[3].d);
                    let dmin = _mm_setr_ps(blk[0].dmin, blk[1].dmin, blk[2].dmin, blk[3].dmin);
                    let mins = blk.map(|b| _mm256_loadu_si256(b.mins.as_ptr().cast()));
                    for (k, sum) in sums.iter_mut().enumerate() {
                        let x = &x4[k][s];
                        let bsums = _mm256_loadu_si256(x.bsums.as_ptr().cast());
                        let dot = hsum4([0, 1, 2, 3].map(|r| fold(a[r][k])));
                        let min = hsum4(mins.map(|m| _mm256_madd_epi16(m, bsums)));
                        let xd = _mm_set1_ps(x.d);
                        let step = if blk[0].six {
                            _mm_mul_ps(_mm_mul_ps(d, xd), _mm_cvtepi32_ps(_mm_add_epi32(dot, min)))
                        } else {
                            let sub = _mm_mul_ps(_mm_mul_ps(dmin, xd), _mm_cvtepi32_ps(min));
                            _mm_sub_ps(_mm_mul_ps(_mm_mul_ps(d, xd), _mm_cvtepi32_ps(dot)), sub)
                        };
                        *sum = _mm_add_ps(*sum, step);
                    }
                }
                for (k, sum) in sums.iter().enumerate().take(xs.len() - i0) {
                    let mut s = [0f32; 4];
                    _mm_storeu_ps(s.as_mut_ptr(), *sum);
                    for (pr, s) in p.iter_mut().zip(s) {
                        pr[i0 + k] += s;
                    }
                }
            }
        }
    };
}

ktile_avx512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl", madd_add512: tile_avx512);
ktile_avx512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", madd_add512_vnni: tile_vnni);
