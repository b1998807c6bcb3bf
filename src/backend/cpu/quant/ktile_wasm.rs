//! K-quant super-blocks decoded once for many tokens at the wasm32 levels (the fast mode of
//! [`matmul`](crate::backend::cpu::matmul) at [`Simd::Simd128`] and [`Simd::Relaxed`]).
//!
//! A panel row's super-block is decoded once into a [`KRow`]: its 256 codes as bytes in
//! element order (`kquant_wasm.rs`'s SIMD unpacking), its scales and min factors per group of
//! 16 as i16. [`tile_wasm`] then runs one row against four tokens at a time, the tokens in the
//! lanes: each 16 codes are loaded once for the four, dotted with each token's activation
//! codes (`dot16_u6`: one relaxed dot, or SIMD128's widening products) into i16 lanes,
//! scaled by `i32x4.dot_i16x8_s` (Q4_K/Q5_K: a sub-block's two halves added in i16 first, as
//! the row dots do), and the four tokens' lanes are summed across at once per super-block.
//! The mins (Q6_K: its `-32` offset times the scales) meet the activations' per-16 sums in
//! one `dot_i16x8` per eight groups. Where the row dots decode a super-block's codes and scales
//! for every token, the tile decodes them once per panel: the blocking of llama.cpp's repacked
//! `ggml-cpu/repack.cpp` layouts, in the shape of the 128-bit tiles of `ltile.rs`.
//!
//! The integer sums are exact (`kquant_wasm.rs`'s bounds), and each super-block's f32 step is
//! `scalar.rs`'s, `(d·xd)·dot − (dmin·xd)·min` (Q6_K `(d·xd)·(dot + min)`), in the four tokens'
//! lanes, added in super-block order: a product equals the matvec's bit for bit.

use core::arch::wasm32::*;

use super::kquant_wasm::{codes45, codes6};
use super::scalar::scales_k4;
use super::wasm::{dot16_u6, f16_at, hsum4_i32, load, load_i8};
use super::BlockQ8K;
use crate::backend::cpu::simd::Simd;
use crate::gguf::GgmlType;

/// One row's super-block, decoded (see the module header).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(16))]
pub(in crate::backend::cpu) struct KRow {
    /// The codes in element order (Q4_K below 16, Q5_K below 32, Q6_K below 64).
    codes: [u8; 256],
    /// The scale of each group of 16 codes (Q4_K/Q5_K: its sub-block of 32's).
    scales: [i16; 16],
    /// The min factor of each group of 16, against the activations' per-16 sums: Q4_K/Q5_K
    /// its sub-block's min, Q6_K `-32 × scale` (its codes are offset by 32).
    mins: [i16; 16],
    d: f32,
    /// Q4_K/Q5_K's `dmin`; Q6_K: none (its mins fold into the integer sum).
    dmin: Option<f32>,
}

impl Default for KRow {
    fn default() -> KRow {
        KRow { codes: [0; 256], scales: [0; 16], mins: [0; 16], d: 0.0, dmin: None }
    }
}

impl KRow {
    /// Decodes super-block `b` of a `ty` row (Q4_K, Q5_K or Q6_K; layouts in
    /// `gguf/quant/dequant.rs`).
    pub(in crate::backend::cpu) fn decode(ty: GgmlType, b: &[u8], out: &mut KRow) {
        let mut store = |g: usize, v: v128| {
            // SAFETY: group `g < 16` is 16 of the 256 code bytes; wasm stores take any alignment.
            unsafe { v128_store(out.codes[16 * g..16 * g + 16].as_mut_ptr().cast(), v) }
        };
        if ty == GgmlType::Q6_K {
            for (g, c) in codes6(b).into_iter().enumerate() {
                store(g, c);
            }
            out.scales = std::array::from_fn(|g| (b[192 + g] as i8).into());
            out.mins = out.scales.map(|s| -32 * s);
            (out.d, out.dmin) = (f16_at(b, 208), None);
            return;
        }
        let (qs_at, mut qh) = match ty {
            GgmlType::Q5_K => (48, Some([load(&b[16..]), load(&b[32..])])),
            _ => (16, None),
        };
        for j in 0..4 {
            let [lo, hi] = codes45(&b[qs_at + 32 * j..], &mut qh);
            for (g, c) in [lo[0], lo[1], hi[0], hi[1]].into_iter().enumerate() {
                store(4 * j + g, c);
            }
        }
        let (scales, mins) = scales_k4(&b[4..16]);
        out.scales = std::array::from_fn(|g| scales[g / 2].into());
        out.mins = std::array::from_fn(|g| mins[g / 2].into());
        (out.d, out.dmin) = (f16_at(b, 0), Some(f16_at(b, 2)));
    }
}

/// `p[r][i]` = row `r` (the super-blocks `w[r]`) times token `i` (`xs[i]`), for up to `N`
/// tokens, at `level` (a wasm level; the build has its features).
pub(in crate::backend::cpu) fn tile_wasm<const N: usize>(
    level: Simd,
    w: [&[KRow]; 8],
    xs: &[&[BlockQ8K]],
    p: &mut [[f32; N]; 8],
) {
    #[cfg(target_feature = "relaxed-simd")]
    if level == Simd::Relaxed {
        return tile_at::<N, true>(w, xs, p);
    }
    let _ = level;
    tile_at::<N, false>(w, xs, p)
}

fn tile_at<const N: usize, const R: bool>(w: [&[KRow]; 8], xs: &[&[BlockQ8K]], p: &mut [[f32; N]; 8]) {
    let six = w[0].first().is_some_and(|kr| kr.dmin.is_none());
    for i0 in (0..xs.len()).step_by(4) {
        // Four tokens (the last repeated where fewer are left).
        let x: [&[BlockQ8K]; 4] = std::array::from_fn(|i| xs[(i0 + i).min(xs.len() - 1)]);
        for (row, pr) in w.iter().zip(p.iter_mut()) {
            let lanes = if six { four_tokens::<R, true>(row, x) } else { four_tokens::<R, false>(row, x) };
            let lanes = [
                f32x4_extract_lane::<0>(lanes),
                f32x4_extract_lane::<1>(lanes),
                f32x4_extract_lane::<2>(lanes),
                f32x4_extract_lane::<3>(lanes),
            ];
            for (i, v) in lanes.into_iter().enumerate().take(xs.len() - i0) {
                pr[i0 + i] = v;
            }
        }
    }
}

/// One row against four tokens, the tokens' products in the lanes; `SIX`: Q6_K.
#[inline(always)]
fn four_tokens<const R: bool, const SIX: bool>(row: &[KRow], x: [&[BlockQ8K]; 4]) -> v128 {
    let mut acc = f32x4_splat(0.0);
    for (s, kr) in row.iter().enumerate() {
        let xb = x.map(|x| &x[s]);
        let mut dots = [i32x4_splat(0); 4];
        for k in 0..8 {
            let c = [load(&kr.codes[32 * k..]), load(&kr.codes[32 * k + 16..])];
            if !SIX {
                // A sub-block's two halves share its scale: their i16 lanes (at most
                // 2·2·31·128 in magnitude, exact) are added before the scaling.
                let sc = i16x8_splat(kr.scales[2 * k]);
                for (dot, xb) in dots.iter_mut().zip(xb) {
                    let xs = &xb.qs[32 * k..];
                    let p = i16x8_add(dot16_u6::<R>(c[0], load_i8(xs)), dot16_u6::<R>(c[1], load_i8(&xs[16..])));
                    *dot = i32x4_add(*dot, i32x4_dot_i16x8(p, sc));
                }
            } else {
                let sc = [i16x8_splat(kr.scales[2 * k]), i16x8_splat(kr.scales[2 * k + 1])];
                for (dot, xb) in dots.iter_mut().zip(xb) {
                    let xs = &xb.qs[32 * k..];
                    let p0 = i32x4_dot_i16x8(dot16_u6::<R>(c[0], load_i8(xs)), sc[0]);
                    let p1 = i32x4_dot_i16x8(dot16_u6::<R>(c[1], load_i8(&xs[16..])), sc[1]);
                    *dot = i32x4_add(*dot, i32x4_add(p0, p1));
                }
            }
        }
        let m = [load_i16(&kr.mins[..8]), load_i16(&kr.mins[8..])];
        let mins = xb.map(|xb| {
            let b = [load_i16(&xb.bsums[..8]), load_i16(&xb.bsums[8..])];
            i32x4_add(i32x4_dot_i16x8(m[0], b[0]), i32x4_dot_i16x8(m[1], b[1]))
        });
        let (dot, min) = (hsum4_i32(dots), hsum4_i32(mins));
        let xd = f32x4(xb[0].d, xb[1].d, xb[2].d, xb[3].d);
        let d = f32x4_mul(f32x4_splat(kr.d), xd);
        let step = match kr.dmin {
            Some(dmin) if !SIX => {
                let dmin = f32x4_mul(f32x4_splat(dmin), xd);
                f32x4_sub(f32x4_mul(d, f32x4_convert_i32x4(dot)), f32x4_mul(dmin, f32x4_convert_i32x4(min)))
            }
            _ => f32x4_mul(d, f32x4_convert_i32x4(i32x4_add(dot, min))),
        };
        acc = f32x4_add(acc, step);
    }
    acc
}

/// The eight i16 at `v[..8]`.
#[inline(always)]
fn load_i16(v: &[i16]) -> v128 {
    let v = &v[..8];
    // SAFETY: `v` holds eight i16; wasm loads take any alignment.
    unsafe { v128_load(v.as_ptr().cast()) }
}
