//! NEON + dot-product row dot products of Q4_0, Q4_1 and Q8_0 (32-element blocks).
//!
//! Fast mode, after llama.cpp's NEON `ggml_vec_dot_q4_0_q8_0` / `q4_1_q8_1` / `q8_0_q8_0`
//! (ggml-cpu `arch/arm/quants.c`, the `__ARM_FEATURE_DOTPROD` paths) and candle's
//! `quantized/neon.rs`: a block's 32 weight codes as bytes (Q4_0 / Q4_1 the nibbles, below 16,
//! by a mask and a shift of the 16 packed bytes; Q8_0's signed codes as they are) against the
//! 32 activation codes in two `sdot`s (four byte products per i32 lane, exact), the lanes added
//! across (`vaddv`). Unlike llama.cpp, which keeps f32 vector accumulators, each block's f32
//! step is then `scalar.rs`'s, in its order: Q4_0 `d dx (Σ q qx - 8 Σ qx)`, Q4_1
//! `d dx Σ q qx + m dx Σ qx`, Q8_0 `d dx Σ q qx`, added to one accumulator block by block. The
//! rows therefore equal the scalar path's bit for bit, and with them the scalar tiles that the
//! prefill matmul runs at this level (`ltile.rs`, which must match the matvec to the bit).
//! [`rows4`] runs four rows against the same activations (each block's codes loaded once, four
//! independent chains), each to the bits of [`row`].
//!
//! Exact mode: each block's codes widened to f32 in registers, scaled (`d (q - 8)`,
//! `d q + m`, `d q`) and multiplied into four independent `vfmaq_f32` accumulators (another
//! order than the scalar `dequant_dot`'s, within f32 rounding of it).
//!
//! Callers pass one row of whole blocks and as many activation blocks (or 32 values per block),
//! and call only on CPUs with NEON and the dot-product extension.

use std::arch::aarch64::*;

use super::neon::{dot32, f16_at, fma16, load_u8x16, load_u8x32, sum4, widen16};
use super::{block_bytes, BlockQ8, Q4_0, Q4_1, Q8_0};

/// A 4-bit block's 16 bytes of nibbles as 32 codes in element order (element `l` the low
/// nibble of byte `l`, element `l + 16` its high nibble), two vectors of 16.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn nibbles(qs: &[u8]) -> [int8x16_t; 2] {
    let raw = load_u8x16(qs);
    [vandq_u8(raw, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(raw)].map(|q| vreinterpretq_s8_u8(q))
}

/// Block `b` of format `F` times `xb`, added to `acc` as `scalar.rs` adds it.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn step<const F: u8>(acc: f32, b: &[u8], xb: &BlockQ8) -> f32 {
    let d = f16_at(b, 0);
    match F {
        Q4_0 => {
            let dot = vaddvq_s32(dot32(nibbles(&b[2..18]), &xb.qs)) - 8 * xb.sum;
            acc + d * xb.d * dot as f32
        }
        Q4_1 => {
            let dot = vaddvq_s32(dot32(nibbles(&b[4..20]), &xb.qs));
            acc + (d * xb.d * dot as f32 + f16_at(b, 2) * xb.d * xb.sum as f32)
        }
        _ => {
            let dot = vaddvq_s32(dot32(load_u8x32(&b[2..34]).map(|q| vreinterpretq_s8_u8(q)), &xb.qs));
            acc + d * xb.d * dot as f32
        }
    }
}

/// One row of format `F`.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn row<const F: u8>(row: &[u8], x: &[BlockQ8]) -> f32 {
    row.chunks_exact(block_bytes::<F>()).zip(x).fold(0.0, |acc, (b, xb)| step::<F>(acc, b, xb))
}

/// [`row`] of four rows of equal length at once.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn rows4<const F: u8>(rows: [&[u8]; 4], x: &[BlockQ8]) -> [f32; 4] {
    let mut blocks = rows.map(|r| r.chunks_exact(block_bytes::<F>()));
    let mut acc = [0.0; 4];
    for xb in x {
        for (a, blocks) in acc.iter_mut().zip(&mut blocks) {
            let Some(b) = blocks.next() else { break };
            *a = step::<F>(*a, b, xb);
        }
    }
    acc
}

/// Exact mode of format `F`: each block's 32 codes widened to f32 and scaled in registers,
/// multiplied into four accumulators.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn exact<const F: u8>(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    for (b, xs) in row.chunks_exact(block_bytes::<F>()).zip(x.chunks_exact(32)) {
        let d = vdupq_n_f32(f16_at(b, 0));
        let (codes, signed) = match F {
            Q4_0 => (nibbles(&b[2..18]).map(|q| vsubq_s8(q, vdupq_n_s8(8))), true),
            Q4_1 => (nibbles(&b[4..20]), false),
            _ => (load_u8x32(&b[2..34]).map(|q| vreinterpretq_s8_u8(q)), true),
        };
        let m = vdupq_n_f32(if F == Q4_1 { f16_at(b, 2) } else { 0.0 });
        for (q, xs) in codes.into_iter().zip(xs.chunks_exact(16)) {
            let w = widen16(q, signed).map(|q| if F == Q4_1 { vfmaq_f32(m, d, q) } else { vmulq_f32(d, q) });
            fma16(&mut acc, w, xs);
        }
    }
    sum4(acc)
}

#[target_feature(enable = "neon,dotprod")]
pub(super) fn q4_0_exact(row: &[u8], x: &[f32]) -> f32 {
    exact::<Q4_0>(row, x)
}

#[target_feature(enable = "neon,dotprod")]
pub(super) fn q4_1_exact(row: &[u8], x: &[f32]) -> f32 {
    exact::<Q4_1>(row, x)
}

#[target_feature(enable = "neon,dotprod")]
pub(super) fn q8_0_exact(row: &[u8], x: &[f32]) -> f32 {
    exact::<Q8_0>(row, x)
}
