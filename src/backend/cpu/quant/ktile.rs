//! K-quant super-blocks decoded once for many tokens (the fast mode of
//! [`matmul`](crate::backend::cpu::matmul)). [`KRows`] holds eight rows' super-block `s`,
//! decoded (codes as unsigned bytes, scales and mins per group of 16) and interleaved by
//! eight codes: one 64-byte vector holds codes `8q..8q + 8` of all eight rows, so that a
//! token's eight activation codes, broadcast, meet them in one 512-bit `vpdpbusd` (`maddubs` +
//! `madd` without VNNI). Lane `2r` sums row `r`'s first four codes, lane `2r + 1` its next
//! four; the scales are stored once per lane, and a pair is added into its row once per
//! super-block, where the f32 steps run as row vectors with no horizontal sum (the repacked
//! eight-row layouts of llama.cpp's `ggml-cpu/repack.cpp`, `block_q4_Kx8`). The AVX2 tile
//! reads the same layout as two halves of four rows side by side, 256 bits at a time. [`tile`]
//! and its SIMD forms run a tile of tokens against a panel, several tokens per pass so that
//! each code vector is loaded once for them.
//!
//! The integer sums are exact and the same as `scalar.rs` / `kquant_avx2.rs`'s (no i16 lane
//! saturates: codes below 64 times activations of at most 127, two per lane; groups of 16
//! stay far below i32), and each super-block's f32 step is theirs, `(d·xd)·dot − (dmin·xd)·min`
//! (Q6_K `(d·xd)·(dot + min)`), added in super-block order: a product equals the matvec's bit
//! for bit on every level.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::scalar::scales_k4;
use super::{f16_at, BlockQ8K};
use crate::backend::cpu::simd::Simd;
use crate::gguf::GgmlType;

/// Eight rows' super-block `s`, interleaved (see the module header).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(in crate::backend::cpu) struct KRows {
    /// `codes[q][8r..8r + 8]`: row `r`'s codes `8q..8q + 8` (unsigned: Q4_K below 16, Q5_K
    /// below 32, Q6_K below 64).
    codes: [[u8; 64]; 32],
    /// `scales[h][2r]` and `scales[h][2r + 1]`: row `r`'s scale of the codes `16h..16h + 16`
    /// (Q4_K/Q5_K: its sub-block of 32's), once per lane of its pair.
    scales: [[i32; 16]; 16],
    /// `mins[j][4r..4r + 4]`: row `r`'s min factors of groups `4j..4j + 4` (against the
    /// activations' per-16 sums: Q4_K/Q5_K the sub-block's min, Q6_K `-32 × scale`, as its
    /// codes are offset by 32), so that a `madd` with a token's four sums broadcast leaves
    /// them in the codes' pairs of lanes.
    mins: [[i16; 32]; 4],
    /// Per row the f16 `d` and `dmin` (Q6_K: `d` only, its mins fold into the integer sum).
    d: [f32; 8],
    dmin: [f32; 8],
    six: bool,
}

impl Default for KRows {
    fn default() -> KRows {
        KRows { codes: [[0; 64]; 32], scales: [[0; 16]; 16], mins: [[0; 32]; 4], d: [0.0; 8], dmin: [0.0; 8], six: false }
    }
}

impl KRows {
    /// Decodes super-block `rows[r]` of eight `ty` rows (Q4_K, Q5_K or Q6_K; layouts in
    /// `gguf/quant/dequant.rs`, unpacking as in `scalar.rs`) at the SIMD level `simd` (from
    /// AVX2 the codes with `kquant_avx2.rs`'s unpacking; at AVX-512 interleaved in registers).
    pub(in crate::backend::cpu) fn decode(ty: GgmlType, rows: [&[u8]; 8], out: &mut KRows, simd: Simd) {
        out.six = ty == GgmlType::Q6_K;
        match simd {
            // SAFETY: the AVX-512 levels have the features (`Simd::is_supported`).
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 | Simd::Avx512Vnni => unsafe { codes_512(ty, rows, &mut out.codes) },
            _ => {
                for (r, b) in rows.into_iter().enumerate() {
                    let mut codes = [0; 256];
                    match simd.avx2() {
                        // SAFETY: as documented.
                        #[cfg(target_arch = "x86_64")]
                        true => unsafe { codes_avx2(ty, b, &mut codes) },
                        _ => codes_scalar(ty, b, &mut codes),
                    }
                    for (q, dst) in out.codes.iter_mut().enumerate() {
                        dst[8 * r..8 * r + 8].copy_from_slice(&codes[8 * q..8 * q + 8]);
                    }
                }
            }
        }
        for (r, b) in rows.into_iter().enumerate() {
            let mut scales = [0i16; 16];
            if out.six {
                for (g, s) in scales.iter_mut().enumerate() {
                    *s = b[192 + g] as i8 as i16;
                }
                (out.d[r], out.dmin[r]) = (f16_at(b, 208), 0.0);
            } else {
                let (sc, mins) = scales_k4(&b[4..16]);
                for g in 0..16 {
                    out.mins[g / 4][4 * r + g % 4] = mins[g / 2] as i16;
                }
                scales = std::array::from_fn(|g| sc[g / 2] as i16);
                (out.d[r], out.dmin[r]) = (f16_at(b, 0), f16_at(b, 2));
            }
            for (h, &s) in scales.iter().enumerate() {
                out.scales[h][2 * r..2 * r + 2].fill(s as i32);
                if out.six {
                    out.mins[h / 4][4 * r + h % 4] = -32 * s;
                }
            }
        }
    }

    /// Row `r`'s share of a product: the scalar form of the tiles' lane `r`.
    fn step(&self, r: usize, dot: i32, min: i32, xd: f32) -> f32 {
        if self.six {
            self.d[r] * xd * (dot + min) as f32
        } else {
            self.d[r] * xd * dot as f32 - self.dmin[r] * xd * min as f32
        }
    }
}

/// The 256 codes of super-block `b`, in element order.
fn codes_scalar(ty: GgmlType, b: &[u8], codes: &mut [u8; 256]) {
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

/// [`codes_scalar`] with AVX2, 32 at a time.
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

/// The eight rows' codes interleaved with AVX-512: per quarter `j` of the super-block, each
/// row's codes `64j..64j + 64` in one vector (`kquant_avx2.rs`'s unpacking, two halves), the
/// eight vectors transposed by 64-bit lanes, so that vector `8j + i` holds every row's codes
/// `64j + 8i..64j + 8i + 8`.
///
/// # Safety
/// Needs AVX2, FMA, F16C and AVX-512F/BW/VL; each row holds a whole `ty` super-block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn codes_512(ty: GgmlType, rows: [&[u8]; 8], codes: &mut [[u8; 64]; 32]) {
    use super::kquant_avx2::{codes45, codes6};
    let (qs_at, qh_at) = if ty == GgmlType::Q5_K { (48, Some(16)) } else { (16, None) };
    for j in 0..4 {
        let mut v = [_mm512_setzero_si512(); 8];
        for (v, b) in v.iter_mut().zip(rows) {
            let [lo, hi] = if ty == GgmlType::Q6_K {
                [codes6(b, 2 * j), codes6(b, 2 * j + 1)]
            } else {
                let qh = qh_at.map(|at| _mm256_loadu_si256(b[at..at + 32].as_ptr().cast()));
                codes45(b[qs_at + 32 * j..][..32].as_ptr(), qh, j as i32)
            };
            *v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        }
        for (i, t) in transpose_8x8_i64(v).into_iter().enumerate() {
            _mm512_store_si512(codes[8 * j + i].as_mut_ptr().cast(), t);
        }
    }
}

/// The 8 x 8 matrix of 64-bit lanes whose row `r` is `v[r]`, transposed: 64-bit interleaves
/// of row pairs, then 128-bit lane picks of pairs of those, twice.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
fn transpose_8x8_i64(v: [__m512i; 8]) -> [__m512i; 8] {
    // a[2p]: (v[2p][2k], v[2p + 1][2k]) in 128-bit lane k; a[2p + 1]: the odd columns.
    let mut a = [_mm512_setzero_si512(); 8];
    for p in 0..4 {
        a[2 * p] = _mm512_unpacklo_epi64(v[2 * p], v[2 * p + 1]);
        a[2 * p + 1] = _mm512_unpackhi_epi64(v[2 * p], v[2 * p + 1]);
    }
    // b[4h + 2e + c]: for rows 4h..4h + 4, columns m = 2c + e and m + 4, as 128-bit lanes
    // (rows 4h, 4h + 1 of m; of m + 4; rows 4h + 2, 4h + 3 of m; of m + 4).
    let mut b = [_mm512_setzero_si512(); 8];
    for h in 0..2 {
        for e in 0..2 {
            let (x, y) = (a[4 * h + e], a[4 * h + 2 + e]);
            b[4 * h + 2 * e] = _mm512_shuffle_i64x2::<0x88>(x, y);
            b[4 * h + 2 * e + 1] = _mm512_shuffle_i64x2::<0xDD>(x, y);
        }
    }
    let mut out = [_mm512_setzero_si512(); 8];
    for e in 0..2 {
        for c in 0..2 {
            let (x, y) = (b[2 * e + c], b[4 + 2 * e + c]);
            out[2 * c + e] = _mm512_shuffle_i64x2::<0x88>(x, y);
            out[2 * c + e + 4] = _mm512_shuffle_i64x2::<0xDD>(x, y);
        }
    }
    out
}

/// `p[r][i] += Σ_s` row `r` of super-blocks `w[s]` times token `i`'s activation block
/// `xs[i][s]`, in super-block order (`xs.len() ≤ N`), scalar.
pub(in crate::backend::cpu) fn tile<const N: usize>(w: &[KRows], xs: &[&[BlockQ8K]], p: &mut [[f32; N]; 8]) {
    for (i, x) in xs.iter().enumerate() {
        for (r, pr) in p.iter_mut().enumerate() {
            for (w, x) in w.iter().zip(x.iter()) {
                let mut dot = 0;
                for (h, scales) in w.scales.iter().enumerate() {
                    let sum: i32 = (16 * h..16 * h + 16).map(|e| w.codes[e / 8][8 * r + e % 8] as i32 * x.qs[e] as i32).sum();
                    dot += scales[2 * r] * sum;
                }
                let min = (0..16).map(|g| w.mins[g / 4][4 * r + g % 4] as i32 * x.bsums[g] as i32).sum();
                pr[i] += w.step(r, dot, min, x.d);
            }
        }
    }
}

/// The eight bytes at `p` (a token's activation codes `8q..8q + 8`, or its sums of groups
/// `4j..4j + 4`) as an i64.
///
/// # Safety
/// `p` must point at eight readable bytes.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn eight<T>(p: *const T) -> i64 {
    std::ptr::read_unaligned(p.cast::<i64>())
}

/// [`tile`] with AVX2 (`maddubs` + `madd` of four codes into each i32 lane), the panel's two
/// halves of four rows side by side and two tokens per pass (what sixteen registers hold):
/// per eight codes one load of each half's codes and per token one broadcast and a product per
/// half; per scale (32 codes, Q6_K 16) the sums times the lanes' scales (`vpmulld`); per
/// super-block the pairs added into rows (`hadd` of the halves), the rows' mins against the
/// token's per-16 sums (`madd` of pairs) and the f32 step as row vectors, with the scalar
/// step's operations (no FMA), added to the token's running sums in registers.
///
/// # Safety
/// Needs AVX2, FMA and F16C; every token of `xs` holds `w.len()` super-blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::backend::cpu) unsafe fn tile_avx2<const N: usize>(w: &[KRows], xs: &[&[BlockQ8K]], p: &mut [[f32; N]; 8]) {
    match w.first().map(|w| w.six) {
        Some(true) => passes_avx2::<N, 1>(w, xs, p),
        Some(false) => passes_avx2::<N, 2>(w, xs, p),
        None => {}
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn passes_avx2<const N: usize, const PER: usize>(w: &[KRows], xs: &[&[BlockQ8K]], p: &mut [[f32; N]; 8]) {
    const T: usize = 2;
    let ones = _mm256_set1_epi16(1);
    // Pairs of lanes into rows: halves (r0, r0, r1, r1 | r2, r2, r3, r3) and (r4 .. r7), whose
    // `hadd` is (r0, r1, r4, r5 | r2, r3, r6, r7), to (r0 .. r7).
    let rows =
        |lo: __m256i, hi: __m256i| _mm256_cvtepi32_ps(_mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(lo, hi)));
    for i0 in (0..xs.len()).step_by(T) {
        // A short last pair repeats its last token (its sums are dropped).
        let xt: [&[BlockQ8K]; T] = [xs[i0], xs[(i0 + 1).min(xs.len() - 1)]];
        let mut sums = [_mm256_setzero_ps(); T];
        for (s, ws) in w.iter().enumerate() {
            let xb = [&xt[0][s], &xt[1][s]];
            let mut dot = [[_mm256_setzero_si256(); T]; 2];
            for h in (0..16).step_by(PER) {
                let mut part = [[_mm256_setzero_si256(); T]; 2];
                for (q, codes) in ws.codes[2 * h..2 * (h + PER)].iter().enumerate() {
                    let c = [_mm256_load_si256(codes.as_ptr().cast()), _mm256_load_si256(codes[32..].as_ptr().cast())];
                    for k in 0..T {
                        // SAFETY: `8 (2h + q) + 8 ≤ 256`.
                        let x = _mm256_set1_epi64x(eight(xb[k].qs.as_ptr().add(8 * (2 * h + q))));
                        for (part, c) in part.iter_mut().zip(c) {
                            part[k] = _mm256_add_epi32(part[k], _mm256_madd_epi16(_mm256_maddubs_epi16(c, x), ones));
                        }
                    }
                }
                for (half, (dot, part)) in dot.iter_mut().zip(part).enumerate() {
                    let scales = _mm256_load_si256(ws.scales[h][8 * half..].as_ptr().cast());
                    for k in 0..T {
                        dot[k] = _mm256_add_epi32(dot[k], _mm256_mullo_epi32(part[k], scales));
                    }
                }
            }
            let d = _mm256_loadu_ps(ws.d.as_ptr());
            let dmin = _mm256_loadu_ps(ws.dmin.as_ptr());
            for k in 0..T {
                let mut min = [_mm256_setzero_si256(); 2];
                for (j, mins) in ws.mins.iter().enumerate() {
                    let sums = _mm256_set1_epi64x(eight(xb[k].bsums[4 * j..].as_ptr()));
                    for (half, min) in min.iter_mut().enumerate() {
                        let m = _mm256_loadu_si256(mins[16 * half..].as_ptr().cast());
                        *min = _mm256_add_epi32(*min, _mm256_madd_epi16(m, sums));
                    }
                }
                let xd = _mm256_set1_ps(xb[k].d);
                let step = if PER == 1 {
                    let total = rows(_mm256_add_epi32(dot[0][k], min[0]), _mm256_add_epi32(dot[1][k], min[1]));
                    _mm256_mul_ps(_mm256_mul_ps(d, xd), total)
                } else {
                    let sub = _mm256_mul_ps(_mm256_mul_ps(dmin, xd), rows(min[0], min[1]));
                    _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(d, xd), rows(dot[0][k], dot[1][k])), sub)
                };
                sums[k] = _mm256_add_ps(sums[k], step);
            }
        }
        add_sums(&sums[..T.min(xs.len() - i0)], p, i0);
    }
}

/// Adds the eight rows' running sums of tokens `i0..i0 + sums.len()` to `p`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn add_sums<const N: usize>(sums: &[__m256], p: &mut [[f32; N]; 8], i0: usize) {
    for (k, sum) in sums.iter().enumerate() {
        let mut s = [0f32; 8];
        // SAFETY: `s` holds eight f32.
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), *sum) };
        for (pr, s) in p.iter_mut().zip(s) {
            pr[i0 + k] += s;
        }
    }
}

/// `acc +` the four-code dot products of `c` (unsigned) and `x` (signed) per i32 lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub(super) fn dot4_512(acc: __m512i, c: __m512i, x: __m512i) -> __m512i {
    _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(c, x), _mm512_set1_epi16(1)))
}

/// [`dot4_512`] in one `vpdpbusd` (the same lanes: the `maddubs` pairs it replaces never
/// saturate here).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn dot4_512_vnni(acc: __m512i, c: __m512i, x: __m512i) -> __m512i {
    _mm512_dpbusd_epi32(acc, c, x)
}

/// [`tile`] with AVX-512 (`tile_512`; `tile_512_vnni` with [`dot4_512_vnni`]), all eight
/// rows in one vector: [`tile_avx2`]'s passes with twice the codes per product and eight
/// tokens per pass (eight independent `vpdpbusd` chains: its latency times its throughput),
/// and each row's pair of lanes added (`vpmovqd` of the 64-bit lanes' sums) before the f32
/// step. `passes` takes the codes per scale as a constant (`PER` groups of 16), so that the
/// inner loops unroll.
macro_rules! ktile_512 {
    ($features:literal, $dot4:path: $name:ident, $passes:ident) => {
        /// # Safety
        /// Needs the CPU features named in its `target_feature`; every token of `xs` holds
        /// `w.len()` super-blocks.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        pub(in crate::backend::cpu) unsafe fn $name<const N: usize>(w: &[KRows], xs: &[&[BlockQ8K]], p: &mut [[f32; N]; 8]) {
            match w.first().map(|w| w.six) {
                Some(true) => $passes::<N, 1>(w, xs, p),
                Some(false) => $passes::<N, 2>(w, xs, p),
                None => {}
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $passes<const N: usize, const PER: usize>(w: &[KRows], xs: &[&[BlockQ8K]], p: &mut [[f32; N]; 8]) {
            const T: usize = 8;
            for i0 in (0..xs.len()).step_by(T) {
                let xt: [&[BlockQ8K]; T] = std::array::from_fn(|k| xs[(i0 + k).min(xs.len() - 1)]);
                let mut sums = [_mm256_setzero_ps(); T];
                for (s, ws) in w.iter().enumerate() {
                    let xb = xt.map(|x| &x[s]);
                    let mut dot = [_mm512_setzero_si512(); T];
                    for h in (0..16).step_by(PER) {
                        let mut part = [_mm512_setzero_si512(); T];
                        for (q, codes) in ws.codes[2 * h..2 * (h + PER)].iter().enumerate() {
                            let c = _mm512_load_si512(codes.as_ptr().cast());
                            for k in 0..T {
                                // SAFETY: `8 (2h + q) + 8 ≤ 256`.
                                let x = _mm512_set1_epi64(eight(xb[k].qs.as_ptr().add(8 * (2 * h + q))));
                                part[k] = $dot4(part[k], c, x);
                            }
                        }
                        let scales = _mm512_load_si512(ws.scales[h].as_ptr().cast());
                        for k in 0..T {
                            dot[k] = _mm512_add_epi32(dot[k], _mm512_mullo_epi32(part[k], scales));
                        }
                    }
                    let d = _mm256_loadu_ps(ws.d.as_ptr());
                    let dmin = _mm256_loadu_ps(ws.dmin.as_ptr());
                    // Pairs of lanes into rows: the low half of each 64-bit lane's two sums.
                    let rows =
                        |v: __m512i| _mm256_cvtepi32_ps(_mm512_cvtepi64_epi32(_mm512_add_epi32(v, _mm512_srli_epi64(v, 32))));
                    for k in 0..T {
                        let mut min = _mm512_setzero_si512();
                        for (j, mins) in ws.mins.iter().enumerate() {
                            let sums = _mm512_set1_epi64(eight(xb[k].bsums[4 * j..].as_ptr()));
                            min = _mm512_add_epi32(min, _mm512_madd_epi16(_mm512_load_si512(mins.as_ptr().cast()), sums));
                        }
                        let xd = _mm256_set1_ps(xb[k].d);
                        let step = if PER == 1 {
                            _mm256_mul_ps(_mm256_mul_ps(d, xd), rows(_mm512_add_epi32(dot[k], min)))
                        } else {
                            let sub = _mm256_mul_ps(_mm256_mul_ps(dmin, xd), rows(min));
                            _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(d, xd), rows(dot[k])), sub)
                        };
                        sums[k] = _mm256_add_ps(sums[k], step);
                    }
                }
                add_sums(&sums[..T.min(xs.len() - i0)], p, i0);
            }
        }
    };
}

ktile_512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl", dot4_512: tile_512, passes_512);
ktile_512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", dot4_512_vnni: tile_512_vnni, passes_512_vnni);
