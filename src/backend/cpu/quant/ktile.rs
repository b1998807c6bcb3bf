//! K-quant super-blocks decoded once for many tokens (the fast mode of
//! [`matmul`](crate::backend::cpu::matmul)). [`KBlock`] decodes one row's Q4_K, Q5_K or Q6_K
//! super-block: its 256 codes as unsigned bytes in element order, its scales and mins per
//! group of 16. [`KRows`] interleaves eight rows' decoded super-blocks by four codes, so that
//! one 32-byte vector holds codes `4g..4g + 4` of all eight rows and a token's four activation
//! codes, broadcast, meet them in one `vpdpbusd` (`maddubs` + `madd` without VNNI): every
//! lane is a row, and the scales, mins and f32 steps are row vectors, with no horizontal sum
//! (the repacked eight-row layouts of llama.cpp's `ggml-cpu/repack.cpp`, `block_q4_Kx8`).
//! [`tile`] runs a tile of tokens against them, four tokens per pass so that each code vector
//! is loaded once for the four.
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
use crate::gguf::GgmlType;

/// One row's decoded super-block.
#[derive(Clone, Copy, Debug)]
pub(in crate::backend::cpu) struct KBlock {
    /// Element `e`'s code, unsigned (Q4_K below 16, Q5_K below 32, Q6_K below 64).
    codes: [u8; 256],
    /// The scale of group `g` of 16 codes (Q4_K/Q5_K: its sub-block of 32's).
    scales: [i16; 16],
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
        KBlock { codes: [0; 256], scales: [0; 16], mins: [0; 16], d: 0.0, dmin: 0.0, six: false }
    }
}

impl KBlock {
    /// Decodes super-block `b` of a `ty` row (Q4_K, Q5_K or Q6_K; layouts in
    /// `gguf/quant/dequant.rs`, unpacking as in `scalar.rs`); `avx2`: the codes with
    /// `kquant_avx2.rs`'s unpacking (the CPU has AVX2, FMA and F16C).
    fn decode(ty: GgmlType, b: &[u8], out: &mut KBlock, avx2: bool) {
        match avx2 {
            // SAFETY: as documented.
            #[cfg(target_arch = "x86_64")]
            true => unsafe { codes_avx2(ty, b, &mut out.codes) },
            _ => codes(ty, b, &mut out.codes),
        }
        match ty {
            GgmlType::Q6_K => {
                for g in 0..16 {
                    out.scales[g] = b[192 + g] as i8 as i16;
                    out.mins[g] = -32 * out.scales[g];
                }
                (out.d, out.dmin, out.six) = (f16_at(b, 208), 0.0, true);
            }
            _ => {
                let (scales, mins) = scales_k4(&b[4..16]);
                for g in 0..16 {
                    (out.scales[g], out.mins[g]) = (scales[g / 2] as i16, mins[g / 2] as i16);
                }
                (out.d, out.dmin, out.six) = (f16_at(b, 0), f16_at(b, 2), false);
            }
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

/// Eight rows' super-block `s`, interleaved (see the module header).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub(in crate::backend::cpu) struct KRows {
    /// `codes[g][4r..4r + 4]`: row `r`'s codes `4g..4g + 4`.
    codes: [[u8; 32]; 64],
    /// `scales[h][r]`: row `r`'s scale of the codes `16h..16h + 16`.
    scales: [[i32; 8]; 16],
    /// `mins[j][2r..2r + 2]`: row `r`'s min factors of groups `2j` and `2j + 1` (against the
    /// activations' per-16 sums: Q4_K/Q5_K the sub-block's min, Q6_K `-32 × scale`).
    mins: [[i16; 16]; 8],
    d: [f32; 8],
    dmin: [f32; 8],
    six: bool,
}

impl Default for KRows {
    fn default() -> KRows {
        KRows { codes: [[0; 32]; 64], scales: [[0; 8]; 16], mins: [[0; 16]; 8], d: [0.0; 8], dmin: [0.0; 8], six: false }
    }
}

impl KRows {
    /// Decodes super-block `rows[r]` of eight `ty` rows (`avx2` as for [`KBlock::decode`]).
    pub(in crate::backend::cpu) fn decode(ty: GgmlType, rows: [&[u8]; 8], out: &mut KRows, avx2: bool) {
        let mut blocks = [KBlock::default(); 8];
        for ((row, b), r) in rows.iter().zip(&mut blocks).zip(0..) {
            KBlock::decode(ty, row, b, avx2);
            for (h, scales) in out.scales.iter_mut().enumerate() {
                scales[r] = b.scales[h] as i32;
            }
            for (j, mins) in out.mins.iter_mut().enumerate() {
                mins[2 * r..2 * r + 2].copy_from_slice(&b.mins[2 * j..2 * j + 2]);
            }
            (out.d[r], out.dmin[r], out.six) = (b.d, b.dmin, b.six);
        }
        // The codes as a transpose of four-byte words: (row, group) to (group, row).
        let words: [&[u32; 64]; 8] = std::array::from_fn(|r| bytemuck::cast_ref(&blocks[r].codes));
        for (g, codes) in out.codes.iter_mut().enumerate() {
            let codes: &mut [u32; 8] = bytemuck::cast_mut(codes);
            for (c, w) in codes.iter_mut().zip(words) {
                *c = w[g];
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

/// `p[r][i] += Σ_s` row `r` of super-blocks `w[s]` times token `i`'s activation block
/// `xs[i][s]`, in super-block order (`xs.len() ≤ N`), scalar.
pub(in crate::backend::cpu) fn tile<const N: usize>(w: &[KRows], xs: &[&[BlockQ8K]], p: &mut [[f32; N]; 8]) {
    for (i, x) in xs.iter().enumerate() {
        for (r, pr) in p.iter_mut().enumerate() {
            for (w, x) in w.iter().zip(x.iter()) {
                let mut dot = 0;
                for (h, scales) in w.scales.iter().enumerate() {
                    let group = (4 * h..4 * h + 4).flat_map(|g| (0..4).map(move |k| (g, k)));
                    let sum: i32 = group.map(|(g, k)| w.codes[g][4 * r + k] as i32 * x.qs[4 * g + k] as i32).sum();
                    dot += scales[r] * sum;
                }
                let min = (0..16).map(|g| w.mins[g / 2][2 * r + g % 2] as i32 * x.bsums[g] as i32).sum();
                pr[i] += w.step(r, dot, min, x.d);
            }
        }
    }
}

/// `acc +` the four-code dot products of `c` (unsigned) and `x` (signed) per i32 lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot4(acc: __m256i, c: __m256i, x: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(c, x), _mm256_set1_epi16(1)))
}

/// [`dot4`] in one `vpdpbusd` (AVX-512 VNNI on 256-bit vectors: the same lanes, since the
/// `maddubs` pairs it replaces never saturate here).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dot4_vnni(acc: __m256i, c: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, c, x)
}

/// [`tile`] with AVX2 (`tile_avx2`; `tile_vnni` with [`dot4_vnni`]), four tokens per pass:
/// per group of four codes one load of the eight rows' codes and per token one broadcast of
/// its four activation codes and one [`dot4`]; per scale (32 codes, Q6_K 16) the sums times
/// the rows' scales (`vpmulld`); per super-block the rows' mins against the token's per-16
/// sums (`madd` of pairs) and the f32 step as row vectors, with the scalar step's operations
/// (no FMA), added to the token's running sums in registers.
macro_rules! ktile {
    ($features:literal, $dot4:path: $name:ident) => {
        /// # Safety
        /// Needs the CPU features named in its `target_feature`; every token of `xs` holds
        /// `w.len()` super-blocks.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        pub(in crate::backend::cpu) unsafe fn $name<const N: usize>(w: &[KRows], xs: &[&[BlockQ8K]], p: &mut [[f32; N]; 8]) {
            let load = |p: *const u8| _mm256_loadu_si256(p.cast());
            // Four bytes (or two i16) at `p`, in every i32 lane.
            let bcast = |p: *const u8| _mm256_set1_epi32(std::ptr::read_unaligned(p.cast::<i32>()));
            for i0 in (0..xs.len()).step_by(4) {
                // A short last group repeats its last token (its sums are dropped).
                let x4: [&[BlockQ8K]; 4] = std::array::from_fn(|k| xs[(i0 + k).min(xs.len() - 1)]);
                let mut sums = [_mm256_setzero_ps(); 4];
                for (s, ws) in w.iter().enumerate() {
                    let xb = x4.map(|x| &x[s]);
                    let mut dot = [_mm256_setzero_si256(); 4];
                    // One scale per 32 codes (Q4_K, Q5_K: groups 2i and 2i + 1 share it) or 16 (Q6_K).
                    let per = if ws.six { 1 } else { 2 };
                    for (h, scales) in ws.scales.iter().enumerate().step_by(per) {
                        let mut part = [_mm256_setzero_si256(); 4];
                        for g in 4 * h..4 * (h + per) {
                            let c = load(ws.codes[g].as_ptr());
                            for k in 0..4 {
                                part[k] = $dot4(part[k], c, bcast(xb[k].qs[4 * g..].as_ptr().cast()));
                            }
                        }
                        let scales = load(scales.as_ptr().cast());
                        for k in 0..4 {
                            dot[k] = _mm256_add_epi32(dot[k], _mm256_mullo_epi32(part[k], scales));
                        }
                    }
                    let d = _mm256_loadu_ps(ws.d.as_ptr());
                    let dmin = _mm256_loadu_ps(ws.dmin.as_ptr());
                    for k in 0..4 {
                        let mut min = _mm256_setzero_si256();
                        for (j, mins) in ws.mins.iter().enumerate() {
                            let pair = bcast(xb[k].bsums[2 * j..].as_ptr().cast());
                            min = _mm256_add_epi32(min, _mm256_madd_epi16(load(mins.as_ptr().cast()), pair));
                        }
                        let xd = _mm256_set1_ps(xb[k].d);
                        let step = if ws.six {
                            _mm256_mul_ps(_mm256_mul_ps(d, xd), _mm256_cvtepi32_ps(_mm256_add_epi32(dot[k], min)))
                        } else {
                            let sub = _mm256_mul_ps(_mm256_mul_ps(dmin, xd), _mm256_cvtepi32_ps(min));
                            _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(d, xd), _mm256_cvtepi32_ps(dot[k])), sub)
                        };
                        sums[k] = _mm256_add_ps(sums[k], step);
                    }
                }
                for (k, sum) in sums.iter().enumerate().take(xs.len() - i0) {
                    let mut s = [0f32; 8];
                    _mm256_storeu_ps(s.as_mut_ptr(), *sum);
                    for (pr, s) in p.iter_mut().zip(s) {
                        pr[i0 + k] += s;
                    }
                }
            }
        }
    };
}

ktile!("avx2,fma,f16c", dot4: tile_avx2);
ktile!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", dot4_vnni: tile_vnni);
