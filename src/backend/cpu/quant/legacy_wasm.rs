//! wasm32 SIMD128 (and relaxed SIMD) row dot products of Q4_0, Q4_1 and Q8_0 (32-element
//! blocks).
//!
//! Fast mode, after llama.cpp's `ggml_vec_dot_q4_0_q8_0` / `q4_1_q8_1` / `q8_0_q8_0` on WASM
//! SIMD (ggml-cpu `arch/wasm/quants.c`) and candle's `quantized/simd128.rs`: a block's 32
//! weight codes as bytes (Q4_0 / Q4_1 the nibbles, below 16, by a mask and a shift of the 16
//! packed bytes; Q8_0's signed codes as they are) against the 32 activation codes, the products
//! summed exactly in integer lanes (`wasm.rs`: nibbles through [`dot32_u4`], at the relaxed
//! level two `relaxed_dot_i8x16_i7x16`; Q8_0's full-range codes, which the relaxed dot
//! cannot take, through the SIMD128 [`dot_i8`] at both levels), the lanes added across. Unlike
//! llama.cpp, which keeps f32 vector accumulators, each block's f32 step is then `scalar.rs`'s,
//! in its order: Q4_0 `d dx (Σ q qx - 8 Σ qx)`, Q4_1 `d dx Σ q qx + m dx Σ qx`, Q8_0
//! `d dx Σ q qx`, added to one accumulator block by block. The rows therefore equal the scalar
//! path's bit for bit, and with them the scalar tiles that the prefill matmul runs at these
//! levels (`ltile.rs`, which must match the matvec to the bit). [`rows4`] runs four rows
//! against the same activations (each block's activation codes loaded once, four independent
//! chains), each to the bits of [`row`]; `Kernel::wasm` takes it for Q4_0 only, where V8 runs
//! it faster than single rows.
//!
//! Exact mode: each block's codes widened to f32 in registers, scaled (`d (q - 8)`,
//! `d q + m`, `d q`) and multiplied into four independent accumulators (another order than the
//! scalar `dequant_dot`'s, within f32 rounding of it).
//!
//! Callers pass one row of whole blocks and as many activation blocks (or 32 values per
//! block).

use core::arch::wasm32::*;

use super::wasm::{dot32_u4, dot_i8, f16_at, f16x4, hsum4_i32, hsum_i32, load, load_i8, madd, madd16, sum4, widen16};
use super::{block_bytes, BlockQ8, Q4_0, Q4_1, Q8_0};

/// A 4-bit block's 16 bytes of nibbles as 32 codes in element order (element `l` the low
/// nibble of byte `l`, element `l + 16` its high nibble), two vectors of 16.
#[inline(always)]
fn nibbles(qs: &[u8]) -> [v128; 2] {
    let raw = load(qs);
    [v128_and(raw, u8x16_splat(0x0F)), u8x16_shr(raw, 4)]
}

/// The activation codes of `xb`, two vectors of 16.
#[inline(always)]
fn codes(xb: &BlockQ8) -> [v128; 2] {
    [load_i8(&xb.qs), load_i8(&xb.qs[16..])]
}

/// Block `b` of format `F` times the activation codes `xq`, in i32 lanes whose sum is the
/// block's integer dot (Q4_0's `- 8 Σ qx` apart).
#[inline(always)]
fn lanes<const F: u8, const R: bool>(b: &[u8], xq: [v128; 2]) -> v128 {
    match F {
        Q4_0 => dot32_u4::<R>(nibbles(&b[2..18]), xq),
        Q4_1 => dot32_u4::<R>(nibbles(&b[4..20]), xq),
        _ => i32x4_add(dot_i8(load(&b[2..18]), xq[0]), dot_i8(load(&b[18..34]), xq[1])),
    }
}

/// Block `b` of format `F` times the activations `xq` of `xb`, added to `acc` as `scalar.rs`
/// adds it.
#[inline(always)]
fn step<const F: u8, const R: bool>(acc: f32, b: &[u8], xb: &BlockQ8, xq: [v128; 2]) -> f32 {
    let d = f16_at(b, 0);
    let dot = hsum_i32(lanes::<F, R>(b, xq)) - if F == Q4_0 { 8 * xb.sum } else { 0 };
    match F {
        Q4_1 => acc + (d * xb.d * dot as f32 + f16_at(b, 2) * xb.d * xb.sum as f32),
        _ => acc + d * xb.d * dot as f32,
    }
}

/// The f16 at byte `at` of four blocks, as f32 lanes.
#[inline(always)]
fn f16s(b: [&[u8]; 4], at: usize) -> v128 {
    let h = |k: usize| u32::from(u16::from_le_bytes([b[k][at], b[k][at + 1]]));
    f16x4(u32x4(h(0), h(1), h(2), h(3)))
}

/// Four consecutive blocks of format `F` against `x`, added to `acc` block by block as
/// [`step`] adds them: their integer dots summed across in one transposing sum, their f32
/// products in lanes (each lane the scalar steps' operations in their order, so bit for bit
/// the same), then the four additions in order.
#[inline(always)]
fn step4<const F: u8, const R: bool>(acc: f32, b: [&[u8]; 4], x: &[BlockQ8]) -> f32 {
    let x = &x[..4];
    let sums = i32x4(x[0].sum, x[1].sum, x[2].sum, x[3].sum);
    let dot = |k: usize| lanes::<F, R>(b[k], codes(&x[k]));
    let mut dots = hsum4_i32([dot(0), dot(1), dot(2), dot(3)]);
    if F == Q4_0 {
        dots = i32x4_sub(dots, i32x4_shl(sums, 3));
    }
    let dx = f32x4(x[0].d, x[1].d, x[2].d, x[3].d);
    let mut t = f32x4_mul(f32x4_mul(f16s(b, 0), dx), f32x4_convert_i32x4(dots));
    if F == Q4_1 {
        t = f32x4_add(t, f32x4_mul(f32x4_mul(f16s(b, 2), dx), f32x4_convert_i32x4(sums)));
    }
    let acc = acc + f32x4_extract_lane::<0>(t);
    let acc = acc + f32x4_extract_lane::<1>(t);
    let acc = acc + f32x4_extract_lane::<2>(t);
    acc + f32x4_extract_lane::<3>(t)
}

/// One row of format `F`: four blocks at a time ([`step4`]), then the rest.
pub(super) fn row<const F: u8, const R: bool>(row: &[u8], x: &[BlockQ8]) -> f32 {
    let size = block_bytes::<F>();
    let n = x.len().min(row.len() / size);
    let whole = n / 4 * 4;
    let mut acc = 0.0;
    for (b, x) in row[..whole * size].chunks_exact(4 * size).zip(x.chunks_exact(4)) {
        let (b01, b23) = b.split_at(2 * size);
        let (b0, b1) = b01.split_at(size);
        let (b2, b3) = b23.split_at(size);
        acc = step4::<F, R>(acc, [b0, b1, b2, b3], x);
    }
    row[whole * size..n * size].chunks_exact(size).zip(&x[whole..n]).fold(acc, |acc, (b, xb)| step::<F, R>(acc, b, xb, codes(xb)))
}

/// [`row`] of four rows of equal length at once.
pub(super) fn rows4<const F: u8, const R: bool>(rows: [&[u8]; 4], x: &[BlockQ8]) -> [f32; 4] {
    let mut blocks = rows.map(|r| r.chunks_exact(block_bytes::<F>()));
    let mut acc = [0.0; 4];
    for xb in x {
        let xq = codes(xb);
        for (a, blocks) in acc.iter_mut().zip(&mut blocks) {
            let Some(b) = blocks.next() else { break };
            *a = step::<F, R>(*a, b, xb, xq);
        }
    }
    acc
}

/// Exact mode of format `F`: each block's 32 codes widened to f32 and scaled in registers,
/// multiplied into four accumulators.
#[inline(always)]
fn exact<const F: u8, const R: bool>(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [f32x4_splat(0.0); 4];
    for (b, xs) in row.chunks_exact(block_bytes::<F>()).zip(x.chunks_exact(32)) {
        let d = f32x4_splat(f16_at(b, 0));
        let (codes, signed) = match F {
            Q4_0 => (nibbles(&b[2..18]).map(|q| i8x16_sub(q, i8x16_splat(8))), true),
            Q4_1 => (nibbles(&b[4..20]), false),
            _ => ([load(&b[2..18]), load(&b[18..34])], true),
        };
        let m = f32x4_splat(if F == Q4_1 { f16_at(b, 2) } else { 0.0 });
        for (q, xs) in codes.into_iter().zip(xs.chunks_exact(16)) {
            let w = widen16(q, signed).map(|q| if F == Q4_1 { madd::<R>(d, q, m) } else { f32x4_mul(d, q) });
            madd16::<R>(&mut acc, w, xs);
        }
    }
    sum4(acc)
}

pub(super) fn q4_0_exact<const R: bool>(row: &[u8], x: &[f32]) -> f32 {
    exact::<Q4_0, R>(row, x)
}

pub(super) fn q4_1_exact<const R: bool>(row: &[u8], x: &[f32]) -> f32 {
    exact::<Q4_1, R>(row, x)
}

pub(super) fn q8_0_exact<const R: bool>(row: &[u8], x: &[f32]) -> f32 {
    exact::<Q8_0, R>(row, x)
}
