//! CPU reference dequantization of GGUF tensor blocks.
//!
//! Reference: ggml's block structs (`ggml-common.h`) and `dequantize_row_*` semantics
//! (`ggml-quants.c`), cross-checked against gguf-py's `quants.py`. Arithmetic follows
//! the same order, `(d * scale) * q - (dmin * min)`, in f32 without fused multiply-add,
//! so results match gguf-py bit for bit. All multi-byte fields are little-endian; "f16"
//! is IEEE half precision.
//!
//! Block layouts (offsets in bytes):
//! - F32 / F16 / BF16: one element per block (4 / 2 / 2 bytes); BF16 is the high half
//!   of an f32.
//! - Q8_0 (32 elements, 34 B): `d: f16 @0`, `qs: [i8; 32] @2`; `y[i] = d * qs[i]`.
//! - Q4_0 (32 elements, 18 B): `d: f16 @0`, `qs: [u8; 16] @2`; element `i < 16` is the low
//!   nibble of `qs[i]`, element `i + 16` its high nibble; `y = d * (q - 8)`.
//! - Q4_1 (32 elements, 20 B): `d: f16 @0`, `m: f16 @2`, `qs: [u8; 16] @4` (nibbles as
//!   Q4_0); `y = d * q + m`.
//! - Q4_K (256 elements, 144 B): `d: f16 @0`, `dmin: f16 @2`, `scales: [u8; 12] @4`,
//!   `qs: [u8; 128] @16`. Eight sub-blocks of 32 have a 6-bit scale `sc` and 6-bit min
//!   `m` packed in `scales` (see [`scale_min_k4`]). Sub-blocks `2j` and `2j + 1` are the
//!   low and high nibbles of `qs[32j .. 32j + 32]`; `y = d * sc * q - dmin * m`.
//! - Q5_K (256 elements, 176 B): `d: f16 @0`, `dmin: f16 @2`, `scales: [u8; 12] @4`,
//!   `qh: [u8; 32] @16`, `qs: [u8; 128] @48`. As Q4_K, plus a fifth bit: element `l` of
//!   sub-block `s` takes bit `s` of `qh[l]` as its value 16.
//! - Q6_K (256 elements, 210 B): `ql: [u8; 128] @0`, `qh: [u8; 64] @128`,
//!   `scales: [i8; 16] @192`, `d: f16 @208`. Two halves of 128; in half `h`, for
//!   `l < 32` and `k < 4`, element `128h + 32k + l` has low 4 bits from
//!   `ql[64h + l + 32(k & 1)]` (low nibble for `k < 2`, high for `k ≥ 2`) and high 2 bits
//!   from bits `2k..2k+2` of `qh[32h + l]`; `y = d * scales[i / 16] * (q - 32)`.

use half::f16;

use crate::gguf::error::GgufError;
use crate::gguf::types::GgmlType;

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Unpacks the 6-bit scale and min of sub-block `j` (0..8) from the 12-byte K-quant
/// `scales` field: sub-blocks 0..4 use the low 6 bits of bytes `j` and `j + 4`;
/// sub-blocks 4..8 use a nibble of byte `j + 4` plus the top 2 bits of bytes `j - 4`
/// (scale) and `j` (min).
pub fn scale_min_k4(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        let sc = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
        let m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (sc, m)
    }
}

fn block_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in y.iter_mut().zip(&b[2..34]) {
        *o = d * (q as i8) as f32;
    }
}

fn block_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (l, &q) in b[2..18].iter().enumerate() {
        y[l] = d * ((q & 0x0F) as i32 - 8) as f32;
        y[l + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

fn block_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (l, &q) in b[4..20].iter().enumerate() {
        y[l] = d * (q & 0x0F) as f32 + m;
        y[l + 16] = d * (q >> 4) as f32 + m;
    }
}

fn block_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for j in 0..4 {
        let (s1, m1) = scale_min_k4(2 * j, scales);
        let (s2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        let qs = &b[16 + 32 * j..16 + 32 * j + 32];
        let out = &mut y[64 * j..64 * j + 64];
        for (l, &q) in qs.iter().enumerate() {
            out[l] = d1 * (q & 0x0F) as f32 - m1;
            out[l + 32] = d2 * (q >> 4) as f32 - m2;
        }
    }
}

fn block_q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    for j in 0..4 {
        let (s1, m1) = scale_min_k4(2 * j, scales);
        let (s2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        let qs = &b[48 + 32 * j..48 + 32 * j + 32];
        let out = &mut y[64 * j..64 * j + 64];
        for (l, &q) in qs.iter().enumerate() {
            let lo = (q & 0x0F) | (((qh[l] >> (2 * j)) & 1) << 4);
            let hi = (q >> 4) | (((qh[l] >> (2 * j + 1)) & 1) << 4);
            out[l] = d1 * lo as f32 - m1;
            out[l + 32] = d2 * hi as f32 - m2;
        }
    }
}

fn block_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for h in 0..2 {
        let ql = &b[64 * h..64 * h + 64];
        let qh = &b[128 + 32 * h..128 + 32 * h + 32];
        let scales = &b[192 + 8 * h..192 + 8 * h + 8];
        let out = &mut y[128 * h..128 * h + 128];
        for l in 0..32 {
            for k in 0..4 {
                let low = ql[l + 32 * (k & 1)];
                let low = if k < 2 { low & 0x0F } else { low >> 4 };
                let q = (low | (((qh[l] >> (2 * k)) & 3) << 4)) as i32 - 32;
                let i = 32 * k + l;
                out[i] = d * (scales[i / 16] as i8) as f32 * q as f32;
            }
        }
    }
}

/// Dequantizes one block's bytes into its values.
pub type BlockDequantizer = fn(&[u8], &mut [f32]);

/// The dequantizer of one block of `ty` (`ty.type_size()` bytes to `ty.block_size()` values),
/// for the types with a CPU path.
pub fn block_dequantizer(ty: GgmlType) -> Option<BlockDequantizer> {
    Some(match ty {
        GgmlType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, y| y[0] = f16_at(b, 0),
        GgmlType::BF16 => |b, y| y[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
        GgmlType::Q8_0 => block_q8_0,
        GgmlType::Q4_0 => block_q4_0,
        GgmlType::Q4_1 => block_q4_1,
        GgmlType::Q4_K => block_q4_k,
        GgmlType::Q5_K => block_q5_k,
        GgmlType::Q6_K => block_q6_k,
        _ => return None,
    })
}

/// Dequantizes `bytes` (whole blocks of `ty`) into `out`, whose length is the element
/// count. Errors for types without a CPU path and for mismatched sizes.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    let block = block_dequantizer(ty).ok_or(GgufError::UnsupportedType(ty))?;
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if !out.len().is_multiple_of(bs) || bytes.len() != out.len() / bs * ts {
        return Err(GgufError::SizeMismatch { ty, bytes: bytes.len(), elements: out.len() });
    }
    for (b, y) in bytes.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
        block(b, y);
    }
    Ok(())
}

/// [`dequantize`] into a new vector of `n_elements`.
pub fn dequantize_to_vec(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>, GgufError> {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if !n_elements.is_multiple_of(bs) || bytes.len() != n_elements / bs * ts {
        return Err(GgufError::SizeMismatch { ty, bytes: bytes.len(), elements: n_elements });
    }
    let mut out = vec![0.0; n_elements];
    dequantize(ty, bytes, &mut out)?;
    Ok(out)
}
