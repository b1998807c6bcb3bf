//! Fast-mode row dot products on the scalar path: the 32-element block formats (Q4_0, Q4_1,
//! Q8_0) with [`BlockQ8`] activations and the K-quants (Q4_K, Q5_K, Q6_K; 256-element
//! super-blocks) with [`BlockQ8K`] ones, after llama.cpp's `ggml_vec_dot_q4_0_q8_0`,
//! `..._q4_1_q8_1`, `..._q8_0_q8_0`, `..._q4_K_q8_K`, `..._q5_K_q8_K` and `..._q6_K_q8_K`
//! (ggml-cpu `quants.c`, the generic versions) and candle's `quantized/k_quants.rs`.
//!
//! 32-element blocks: the integer dot `Σ q·qx` is exact; Q4_0's offset and Q4_1's min use the
//! block's integer code sum:
//! - Q4_0: `Σ d(q - 8) · dx qx = d dx (Σ q qx - 8 Σ qx)`,
//! - Q4_1: `Σ (d q + m) · dx qx = d dx Σ q qx + m dx Σ qx`,
//! - Q8_0: `d dx Σ q qx`.
//!
//! K-quants: everything inside a super-block is integer; one f32 step per super-block, the
//! same expression on every SIMD level:
//! - Q4_K / Q5_K: `dx (d Σ_s sc_s Σ q qx) - dx (dmin Σ_s m_s Σ qx)`, the sub-block code sums
//!   of the activations from their per-16 sums,
//! - Q6_K: `dx d Σ_g sc_g (Σ q qx - 32 Σ qx)` over groups of 16.
//!
//! Layouts in `gguf/quant/dequant.rs`; callers pass one row of whole blocks and as many
//! activation blocks.

use super::{f16_at, BlockQ8, BlockQ8K};

/// `Σ q·qx` over a 4-bit block's 16 bytes of nibbles: element `l` is the low nibble of byte
/// `l`, element `l + 16` its high nibble.
fn dot_nibbles(qs: &[u8], x: &[i8; 32]) -> i32 {
    let (lo, hi) = x.split_at(16);
    qs.iter().zip(lo.iter().zip(hi)).map(|(&q, (&a, &b))| (q & 0x0F) as i32 * a as i32 + (q >> 4) as i32 * b as i32).sum()
}

pub(super) fn q4_0(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = 0.0;
    for (b, xb) in row.chunks_exact(18).zip(x) {
        let dot = dot_nibbles(&b[2..18], &xb.qs) - 8 * xb.sum;
        acc += f16_at(b, 0) * xb.d * dot as f32;
    }
    acc
}

pub(super) fn q4_1(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = 0.0;
    for (b, xb) in row.chunks_exact(20).zip(x) {
        let dot = dot_nibbles(&b[4..20], &xb.qs);
        acc += f16_at(b, 0) * xb.d * dot as f32 + f16_at(b, 2) * xb.d * xb.sum as f32;
    }
    acc
}

pub(super) fn q8_0(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = 0.0;
    for (b, xb) in row.chunks_exact(34).zip(x) {
        let dot: i32 = b[2..34].iter().zip(&xb.qs).map(|(&q, &v)| q as i8 as i32 * v as i32).sum();
        acc += f16_at(b, 0) * xb.d * dot as f32;
    }
    acc
}

/// The eight 6-bit scales and eight 6-bit mins packed in a Q4_K/Q5_K `scales` field (12
/// bytes), as `gguf::quant::scale_min_k4` unpacks them one by one, here four per u32: for
/// sub-blocks 0..4 the low 6 bits of bytes 0..4 (scales) and 4..8 (mins); for 4..8 the nibbles
/// of bytes 8..12 with the top 2 bits of bytes 0..4 (scales) and 4..8 (mins) above them.
#[inline]
pub(super) fn scales_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let word = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (a, b, c) = (word(0), word(4), word(8));
    let halves = |lo: u32, hi: u32| {
        let mut out = [0; 8];
        out[..4].copy_from_slice(&lo.to_le_bytes());
        out[4..].copy_from_slice(&hi.to_le_bytes());
        out
    };
    let scales = halves(a & 0x3F3F_3F3F, (c & 0x0F0F_0F0F) | ((a >> 2) & 0x3030_3030));
    let mins = halves(b & 0x3F3F_3F3F, ((c >> 4) & 0x0F0F_0F0F) | ((b >> 2) & 0x3030_3030));
    (scales, mins)
}

/// `Σ_s m_s Σ qx` over the eight sub-blocks of 32 (two per-16 sums each).
pub(super) fn min_sum(mins: &[u8; 8], bsums: &[i16; 16]) -> i32 {
    mins.iter().zip(bsums.chunks_exact(2)).map(|(&m, p)| m as i32 * (p[0] as i32 + p[1] as i32)).sum()
}

/// Q4_K (`hbits: None`) or Q5_K (`qh`: the fifth bits): `qs` is 128 bytes of nibbles.
fn q45(b: &[u8], qs: &[u8], hbits: Option<&[u8]>, xb: &BlockQ8K) -> f32 {
    let (scales, mins) = scales_k4(&b[4..16]);
    let mut sumi = 0;
    for (s, &sc) in scales.iter().enumerate() {
        let (j, shift) = (s / 2, 4 * (s % 2));
        let x = &xb.qs[32 * s..32 * s + 32];
        let dot: i32 = (0..32)
            .map(|l| {
                let high = hbits.map_or(0, |qh| ((qh[l] >> s) & 1) << 4);
                (((qs[32 * j + l] >> shift) & 0x0F) | high) as i32 * x[l] as i32
            })
            .sum();
        sumi += sc as i32 * dot;
    }
    let (d, dmin) = (f16_at(b, 0) * xb.d, f16_at(b, 2) * xb.d);
    d * sumi as f32 - dmin * min_sum(&mins, &xb.bsums) as f32
}

pub(super) fn q4_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    row.chunks_exact(144).zip(x).fold(0.0, |acc, (b, xb)| acc + q45(b, &b[16..144], None, xb))
}

pub(super) fn q5_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    row.chunks_exact(176).zip(x).fold(0.0, |acc, (b, xb)| acc + q45(b, &b[48..176], Some(&b[16..48]), xb))
}

pub(super) fn q6_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0;
    for (b, xb) in row.chunks_exact(210).zip(x) {
        let mut sumi = 0;
        for g in 0..16 {
            // Group g: half h, quarter k, lanes l0..l0 + 16 of the 32 (see dequant.rs).
            let (h, k, l0) = (g / 8, (g % 8) / 2, 16 * (g % 2));
            let dot: i32 = (l0..l0 + 16)
                .map(|l| {
                    let low = (b[64 * h + l + 32 * (k & 1)] >> (4 * (k / 2))) & 0x0F;
                    let high = (b[128 + 32 * h + l] >> (2 * k)) & 3;
                    (low | (high << 4)) as i32 * xb.qs[128 * h + 32 * k + l] as i32
                })
                .sum();
            sumi += b[192 + g] as i8 as i32 * (dot - 32 * xb.bsums[g] as i32);
        }
        acc += f16_at(b, 208) * xb.d * sumi as f32;
    }
    acc
}

#[cfg(test)]
mod tests {
    use crate::gguf::quant::{scale_min_k4, SplitMix64};

    #[test]
    fn scales_k4_matches_the_reference_unpacking() {
        let mut rng = SplitMix64::new(5);
        for _ in 0..64 {
            let mut s = [0u8; 12];
            rng.fill_bytes(&mut s);
            let (scales, mins) = super::scales_k4(&s);
            for j in 0..8 {
                assert_eq!((scales[j], mins[j]), scale_min_k4(j, &s), "sub-block {j} of {s:?}");
            }
        }
    }
}
