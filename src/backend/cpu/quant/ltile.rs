//! Q4_0, Q4_1 and Q8_0 blocks decoded once for many tokens (the fast mode of
//! [`matmul`](crate::backend::cpu::matmul)): [`LBlock`] holds a block's 32 codes as bytes in
//! element order (Q4_0 / Q4_1 nibbles as they are, below 16; Q8_0's signed codes) with its
//! f16 scale (and Q4_1's min) as f32, so that nothing format-specific but the integer dot is
//! left in the loop that runs for every token. [`tile`] takes four rows' blocks against a tile
//! of tokens ([`BlockQ8`] activations), the companion of `ktile.rs` for the 32-element blocks.
//!
//! Every (row, token) product is the matvec's to the bit on each level: the scalar tile is
//! `scalar.rs`'s loop, `tile_wasm` the same with `legacy_wasm.rs`'s integer dots, and
//! [`tile_avx2`] runs `legacy_avx2.rs`'s integer lanes (a block's
//! `maddubs` / `madd` sums of four byte products), its f32 step per block and its two
//! accumulators (even blocks in one, odd in the other), summed the same way at the end.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{f16_at, BlockQ8};
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use crate::backend::cpu::simd::Simd;
use crate::gguf::GgmlType;

/// One decoded 32-element block.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub(in crate::backend::cpu) struct LBlock {
    /// Element `e`'s code: Q4_0 / Q4_1 the unsigned nibble, Q8_0 the signed code.
    codes: [i8; 32],
    /// The f16 scale `d` and Q4_1's min `m` (0 otherwise).
    d: f32,
    m: f32,
}

impl LBlock {
    /// Decodes block `b` of a `ty` row (Q4_0, Q4_1 or Q8_0; layouts in `gguf/quant/dequant.rs`).
    pub(in crate::backend::cpu) fn decode(ty: GgmlType, b: &[u8], out: &mut LBlock) {
        out.d = f16_at(b, 0);
        let qs = match ty {
            GgmlType::Q8_0 => {
                for (c, &q) in out.codes.iter_mut().zip(&b[2..34]) {
                    *c = q as i8;
                }
                out.m = 0.0;
                return;
            }
            GgmlType::Q4_1 => {
                out.m = f16_at(b, 2);
                &b[4..20]
            }
            _ => {
                out.m = 0.0;
                &b[2..18]
            }
        };
        let (lo, hi) = out.codes.split_at_mut(16);
        for ((&q, l), h) in qs.iter().zip(lo).zip(hi) {
            (*l, *h) = ((q & 0x0F) as i8, (q >> 4) as i8);
        }
    }
}

/// `p[r][i] = ` row `r`'s blocks `w[r]` times token `i`'s activation blocks `xs[i]`
/// (`xs.len() ≤ N`), scalar: `scalar.rs`'s sums and steps in its order.
pub(in crate::backend::cpu) fn tile<const N: usize>(ty: GgmlType, w: [&[LBlock]; 4], xs: &[&[BlockQ8]], p: &mut [[f32; N]; 4]) {
    for (i, x) in xs.iter().enumerate() {
        for (pr, w) in p.iter_mut().zip(w) {
            let mut acc = 0.0;
            for (b, xb) in w.iter().zip(x.iter()) {
                let dot: i32 = b.codes.iter().zip(&xb.qs).map(|(&c, &v)| c as i32 * v as i32).sum();
                acc += match ty {
                    GgmlType::Q4_0 => b.d * xb.d * (dot - 8 * xb.sum) as f32,
                    GgmlType::Q4_1 => b.d * xb.d * dot as f32 + b.m * xb.d * xb.sum as f32,
                    _ => b.d * xb.d * dot as f32,
                };
            }
            pr[i] = acc;
        }
    }
}

/// Blocks per stretch of [`tile_avx2`]: four rows' and eight tokens' 32 blocks (15 KiB) and
/// their scale products (4 KiB; Q4_1's min terms as much again) stay in L1 while the register
/// tiles pass over them.
#[cfg(target_arch = "x86_64")]
const STRETCH: usize = 32;

/// Tokens per group of [`tile_avx2`] (two register tiles' worth).
#[cfg(target_arch = "x86_64")]
const GROUP: usize = 8;

#[cfg(target_arch = "x86_64")]
use super::{Q4_0, Q4_1, Q8_0};

/// [`tile`] and its token groups compiled for `features` with `dot` as the byte dot product
/// (`legacy_avx2.rs`'s [`fast_dots`](super::legacy_avx2) pairs): `tile_avx2` with `maddubs` +
/// `madd`, `tile_avx2_vnni` with AVX-512 VNNI's `vpdpbusd`, to the same lanes.
#[cfg(target_arch = "x86_64")]
macro_rules! tiles {
    ($features:literal, $dot:path: $tile:ident, $group:ident) => {
        /// [`tile`] with AVX2, `legacy_avx2.rs`'s operations per (row, token): per block the integer
        /// lanes of `dot_u8_i8` (Q8_0: magnitudes against the activations carrying the codes' signs),
        /// then `acc = fma(d dx, lanes, acc)` (Q4_1: `acc + fma(d dx, lanes, m dx Σqx / 8)`), even
        /// blocks into one accumulator and odd blocks into another, the two summed at the end.
        ///
        /// Per group of [`GROUP`] tokens and stretch of [`STRETCH`] blocks, the scale products
        /// `d dx` (and Q4_1's min terms) of every (block, row, token) are formed first, eight tokens
        /// in one multiply (the same f32 products), so that the inner loop only broadcasts them from
        /// L1. Then, per parity, register tiles of two rows by four tokens (eight accumulators) run
        /// over the stretch's even or odd blocks: each chain keeps the matvec's order, and per block
        /// the two rows' codes are loaded once for four tokens and the tokens' once for two rows.
        ///
        /// # Safety
        /// Needs the features compiled in (AVX2, FMA and F16C; AVX-512 VNNI for
        /// `tile_avx2_vnni`); the rows and tokens hold as many blocks.
        #[target_feature(enable = $features)]
        pub(in crate::backend::cpu) unsafe fn $tile<const N: usize>(
            ty: GgmlType,
            w: [&[LBlock]; 4],
            xs: &[&[BlockQ8]],
            p: &mut [[f32; N]; 4],
        ) {
            for (g, xs) in xs.chunks(GROUP).enumerate() {
                let s = match ty {
                    GgmlType::Q4_0 => $group::<Q4_0>(w, xs),
                    GgmlType::Q4_1 => $group::<Q4_1>(w, xs),
                    _ => $group::<Q8_0>(w, xs),
                };
                for (pr, s) in p.iter_mut().zip(s) {
                    pr[GROUP * g..][..xs.len()].copy_from_slice(&s[..xs.len()]);
                }
            }
        }

        /// The products of up to [`GROUP`] tokens `xs` (a short group repeats its last token) for
        /// format `F`.
        ///
        /// # Safety
        /// As [`tile_avx2`].
        #[target_feature(enable = $features)]
        unsafe fn $group<const F: u8>(w: [&[LBlock]; 4], xs: &[&[BlockQ8]]) -> [[f32; GROUP]; 4] {
            let (n_b, n) = (w[0].len(), xs.len());
            let wp = w.map(|w| w.as_ptr());
            let xp: [*const BlockQ8; GROUP] = std::array::from_fn(|i| xs[i.min(n - 1)].as_ptr());
            // `acc[parity][r][i]`.
            let mut acc = [[[_mm256_setzero_ps(); GROUP]; 4]; 2];
            // `dd[j][r][i]`: block k0 + j of row r's `d` times token i's `dx`; `mn` Q4_1's min terms.
            let mut dd = [[[0f32; GROUP]; 4]; STRETCH];
            let mut mn = [[[0f32; GROUP]; 4]; STRETCH];
            for k0 in (0..n_b).step_by(STRETCH) {
                let len = STRETCH.min(n_b - k0);
                for j in 0..len {
                    let xb = xp.map(|x| &*x.add(k0 + j));
                    let xd = _mm256_loadu_ps(xb.map(|x| x.d).as_ptr());
                    let sums = _mm256_loadu_ps(xb.map(|x| x.sum as f32 * 0.125).as_ptr());
                    for r in 0..4 {
                        let b = &*wp[r].add(k0 + j);
                        _mm256_storeu_ps(dd[j][r].as_mut_ptr(), _mm256_mul_ps(_mm256_set1_ps(b.d), xd));
                        if F == Q4_1 {
                            let min = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(b.m), xd), sums);
                            _mm256_storeu_ps(mn[j][r].as_mut_ptr(), min);
                        }
                    }
                }
                for (parity, acc) in acc.iter_mut().enumerate() {
                    for r0 in [0, 2] {
                        for i0 in (0..n).step_by(4) {
                            let mut a: [[__m256; 4]; 2] = std::array::from_fn(|r| std::array::from_fn(|i| acc[r0 + r][i0 + i]));
                            for j in (parity..len).step_by(2) {
                                let k = k0 + j;
                                let c = [0, 1].map(|r| _mm256_loadu_si256((*wp[r0 + r].add(k)).codes.as_ptr().cast()));
                                let u = if F == Q8_0 { c.map(|c| _mm256_abs_epi8(c)) } else { c };
                                for i in 0..4 {
                                    let xb = &*xp[i0 + i].add(k);
                                    let xq = _mm256_loadu_si256(xb.qs.as_ptr().cast());
                                    for r in 0..2 {
                                        let s = if F == Q8_0 { _mm256_sign_epi8(xq, c[r]) } else { xq };
                                        let mut dot = $dot(u[r], s);
                                        if F == Q4_0 {
                                            dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(xb.sum));
                                        }
                                        let (d, dot) = (_mm256_broadcast_ss(&dd[j][r0 + r][i0 + i]), _mm256_cvtepi32_ps(dot));
                                        a[r][i] = if F == Q4_1 {
                                            let min = _mm256_broadcast_ss(&mn[j][r0 + r][i0 + i]);
                                            _mm256_add_ps(a[r][i], _mm256_fmadd_ps(d, dot, min))
                                        } else {
                                            _mm256_fmadd_ps(d, dot, a[r][i])
                                        };
                                    }
                                }
                            }
                            for (r, a) in a.iter().enumerate() {
                                acc[r0 + r][i0..i0 + 4].copy_from_slice(a);
                            }
                        }
                    }
                }
            }
            let mut p = [[0.0; GROUP]; 4];
            for (r, pr) in p.iter_mut().enumerate() {
                for (i, v) in pr.iter_mut().enumerate().take(n) {
                    *v = super::legacy_avx2::hsum(_mm256_add_ps(acc[0][r][i], acc[1][r][i]));
                }
            }
            p
        }
    };
}

#[cfg(target_arch = "x86_64")]
tiles!("avx2,fma,f16c", super::legacy_avx2::dot_u8_i8: tile_avx2, group);
#[cfg(target_arch = "x86_64")]
tiles!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", super::legacy_avx2::dot_u8_i8_vnni: tile_avx2_vnni, group_vnni);

/// [`tile`] at the wasm32 levels ([`Simd::Simd128`], [`Simd::Relaxed`]; the build has their
/// features): per token, a block's activation codes loaded once for the four rows, each row's
/// integer dot by `legacy_wasm.rs`'s (nibbles through [`dot32_u4`](super::wasm::dot32_u4),
/// Q8_0 through [`dot_i8`](super::wasm::dot_i8)), the four summed across at once, and
/// `scalar.rs`'s f32 step in the four rows' lanes, each row's blocks in order: [`tile`]'s
/// products to the bit.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(in crate::backend::cpu) fn tile_wasm<const N: usize>(
    level: Simd,
    ty: GgmlType,
    w: [&[LBlock]; 4],
    xs: &[&[BlockQ8]],
    p: &mut [[f32; N]; 4],
) {
    #[cfg(target_feature = "relaxed-simd")]
    if level == Simd::Relaxed {
        return tile_wasm_at::<N, true>(ty, w, xs, p);
    }
    let _ = level;
    tile_wasm_at::<N, false>(ty, w, xs, p)
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn tile_wasm_at<const N: usize, const R: bool>(ty: GgmlType, w: [&[LBlock]; 4], xs: &[&[BlockQ8]], p: &mut [[f32; N]; 4]) {
    use std::arch::wasm32::*;

    use super::wasm::{dot32_u4, dot_i8, hsum4_i32, load_i8};
    let halves = |c: &[i8; 32]| [load_i8(c), load_i8(&c[16..])];
    for (i, x) in xs.iter().enumerate() {
        // The four rows' accumulators in lanes: `acc += t` is each row's `*a += t` of `tile`.
        let mut acc = f32x4_splat(0.0);
        for (k, xb) in x.iter().enumerate() {
            let xq = halves(&xb.qs);
            let b = [&w[0][k], &w[1][k], &w[2][k], &w[3][k]];
            let lanes = |b: &LBlock| {
                let c = halves(&b.codes);
                match ty {
                    GgmlType::Q4_0 | GgmlType::Q4_1 => dot32_u4::<R>(c, xq),
                    _ => i32x4_add(dot_i8(c[0], xq[0]), dot_i8(c[1], xq[1])),
                }
            };
            let mut dots = hsum4_i32([lanes(b[0]), lanes(b[1]), lanes(b[2]), lanes(b[3])]);
            if ty == GgmlType::Q4_0 {
                dots = i32x4_sub(dots, i32x4_splat(8 * xb.sum));
            }
            let dx = f32x4_splat(xb.d);
            let mut t = f32x4_mul(f32x4_mul(f32x4(b[0].d, b[1].d, b[2].d, b[3].d), dx), f32x4_convert_i32x4(dots));
            if ty == GgmlType::Q4_1 {
                let m = f32x4_mul(f32x4(b[0].m, b[1].m, b[2].m, b[3].m), dx);
                t = f32x4_add(t, f32x4_mul(m, f32x4_splat(xb.sum as f32)));
            }
            acc = f32x4_add(acc, t);
        }
        p[0][i] = f32x4_extract_lane::<0>(acc);
        p[1][i] = f32x4_extract_lane::<1>(acc);
        p[2][i] = f32x4_extract_lane::<2>(acc);
        p[3][i] = f32x4_extract_lane::<3>(acc);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{quantize_q8, Kernel};
    use super::*;
    use crate::backend::cpu::simd::{self, Simd};
    use crate::gguf::quant::{random_blocks, SplitMix64};

    /// Rows of one block, of a stretch and an odd part, of two stretches and an odd part
    /// (the odd last block and the accumulators carried between stretches): every level's
    /// tile equals its row dot bit for bit, for one token to a tile of nine.
    #[test]
    fn tiles_equal_the_row_dots() {
        let mut rng = SplitMix64::new(11);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            for n_b in [1, 33, 75] {
                let bytes = random_blocks(ty, 4 * n_b, n_b as u64);
                let rows: Vec<&[u8]> = bytes.chunks_exact(n_b * ty.type_size()).collect();
                let mut decoded = vec![LBlock::default(); 4 * n_b];
                for (b, d) in bytes.chunks_exact(ty.type_size()).zip(&mut decoded) {
                    LBlock::decode(ty, b, d);
                }
                let w: [&[LBlock]; 4] = std::array::from_fn(|r| &decoded[r * n_b..][..n_b]);
                for level in Simd::available() {
                    simd::with_level(level, || {
                        let Some(Kernel::Q8(dot, _)) = Kernel::of(ty, true, level) else { panic!("{ty}: no Q8 kernel") };
                        for n in 1..=9 {
                            let x: Vec<f32> = (0..n * n_b * 32).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
                            let x = quantize_q8(&x).unwrap();
                            let xs: Vec<&[BlockQ8]> = x.chunks_exact(n_b).collect();
                            let mut p = [[f32::NAN; 9]; 4];
                            match level {
                                // SAFETY: an available level.
                                #[cfg(target_arch = "x86_64")]
                                Simd::Avx2 | Simd::Avx512 => unsafe { tile_avx2(ty, w, &xs, &mut p) },
                                #[cfg(target_arch = "x86_64")]
                                Simd::Avx512Vnni => unsafe { tile_avx2_vnni(ty, w, &xs, &mut p) },
                                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                                Simd::Simd128 | Simd::Relaxed => tile_wasm(level, ty, w, &xs, &mut p),
                                _ => tile(ty, w, &xs, &mut p),
                            }
                            for (r, pr) in p.iter().enumerate() {
                                for (i, xi) in xs.iter().enumerate() {
                                    let want = dot(rows[r], xi);
                                    assert!(
                                        pr[i].to_bits() == want.to_bits(),
                                        "{ty} {level} {n_b} blocks, row {r} token {i} of {n}"
                                    );
                                }
                            }
                        }
                    })
                    .unwrap();
                }
            }
        }
    }
}
