//! Reference round-to-nearest quantizers for Q8_0, Q4_0 and Q4_1, byte-identical to
//! llama.cpp's (the load-time requantization and test/bench helpers).
//!
//! Reference: ggml's `quantize_row_q8_0_ref`, `quantize_row_q4_0_ref` and
//! `quantize_row_q4_1_ref` (`ggml-quants.c`), which `ggml_quantize_chunk` runs when no
//! importance matrix is given: per block of 32, one f16 scale (and for Q4_1 an f16 min), the
//! inverse scale taken from the unrounded f32 scale. The float-to-integer casts follow x86-64
//! C (`c_int`), which matters only for blocks of tiny values whose inverse scale overflows.
//! Block layouts are documented in `dequant.rs`; checked against llama.cpp's own build in
//! `tests/quantizers.rs`.

use half::f16;

use crate::gguf::error::GgufError;
use crate::gguf::types::GgmlType;

const QK: usize = 32;

fn blocks(ty: GgmlType, src: &[f32]) -> Result<std::slice::ChunksExact<'_, f32>, GgufError> {
    if !src.len().is_multiple_of(QK) {
        return Err(GgufError::SizeMismatch { ty, bytes: 0, elements: src.len() });
    }
    Ok(src.chunks_exact(QK))
}

fn push_f16(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// A C cast of a float to an integer as x86-64 compiles it (`cvttss2si`): truncated toward
/// zero, NaN and out-of-range values become `i32::MIN`; a cast to a narrower type then keeps
/// the low bits (`as i8`). Rust's saturating `as` differs exactly where the scale's inverse
/// overflowed to infinity.
fn c_int(v: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        v as i32
    } else {
        i32::MIN
    }
}

/// Two 4-bit codes in one byte, as C's `qs = lo; qs |= hi << 4` on a `uint8_t`: codes from
/// the casts above can exceed 15, and their bits then overlap.
fn nibbles(lo: u8, hi: u8) -> u8 {
    lo | (hi << 4)
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Q8_0: `d = max|x| / 127`, `q = round(x / d)` (half away from zero).
pub fn quantize_q8_0(src: &[f32]) -> Result<Vec<u8>, GgufError> {
    let mut out = Vec::with_capacity(src.len() / QK * 34);
    for x in blocks(GgmlType::Q8_0, src)? {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = inverse(d);
        push_f16(&mut out, d);
        out.extend(x.iter().map(|v| c_int((v * id).round()) as u8));
    }
    Ok(out)
}

/// Q4_0: `d = -m / 8` where `m` is the value of largest magnitude (first one on ties),
/// `q = min(15, trunc(x / d + 8.5))`.
pub fn quantize_q4_0(src: &[f32]) -> Result<Vec<u8>, GgufError> {
    let mut out = Vec::with_capacity(src.len() / QK * 18);
    for x in blocks(GgmlType::Q4_0, src)? {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = inverse(d);
        push_f16(&mut out, d);
        let q = |v: f32| (c_int(v * id + 8.5) as i8).min(15) as u8;
        out.extend((0..QK / 2).map(|j| nibbles(q(x[j]), q(x[j + QK / 2]))));
    }
    Ok(out)
}

/// Q4_1: `d = (max - min) / 15`, `m = min`, `q = min(15, trunc((x - min) / d + 0.5))`.
pub fn quantize_q4_1(src: &[f32]) -> Result<Vec<u8>, GgufError> {
    let mut out = Vec::with_capacity(src.len() / QK * 20);
    for x in blocks(GgmlType::Q4_1, src)? {
        let min = x.iter().fold(f32::MAX, |m, &v| if v < m { v } else { m });
        let max = x.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
        let d = (max - min) / 15.0;
        let id = inverse(d);
        push_f16(&mut out, d);
        push_f16(&mut out, min);
        let q = |v: f32| (c_int((v - min) * id + 0.5) as i8).min(15) as u8;
        out.extend((0..QK / 2).map(|j| nibbles(q(x[j]), q(x[j + QK / 2]))));
    }
    Ok(out)
}
