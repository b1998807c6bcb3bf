//! Reference Q4_K quantizer, byte-identical to llama.cpp's.
//!
//! Reference: ggml's `quantize_row_q4_K_ref` with its helpers `make_qkx2_quants` and
//! `nearest_int` (`ggml-quants.c`), which `ggml_quantize_chunk` runs when no importance matrix
//! is given (as llama-quantize does without `--imatrix`). Every f32 operation happens in the
//! same order as there and nothing is fused, so the bytes match for every input (checked
//! against llama.cpp's own build in `tests/quantizers.rs`). That reference is llama.cpp as
//! built for x86-64, where `ggml-quants.c` gets no `-march` and so no fused multiply-adds;
//! a build that contracts to FMA (llama.cpp's arm64 clang toolchain files) can round a sum
//! differently and pick another grid in rare blocks.
//!
//! A super-block of 256 values is 8 sub-blocks of 32. Each sub-block gets a scale and a min
//! from a weighted least-squares search over 21 candidate grids; those 8 + 8 floats are then
//! quantized to 6 bits against the super-block's f16 `d` and `dmin`, and the values are
//! requantized to 4 bits against the rounded scales. Layout: `d`, `dmin` (f16), 12 bytes of
//! packed 6-bit scales/mins (see `scale_min_k4`), 128 bytes of nibbles.

use half::f16;

use super::dequant::scale_min_k4;
use crate::gguf::error::GgufError;
use crate::gguf::types::GgmlType;

const QK_K: usize = 256;
const SUB: usize = 32;
/// Largest 4-bit level.
const NMAX: i32 = 15;
/// Bytes of one Q4_K block.
const BLOCK_BYTES: usize = 144;

/// ggml's `nearest_int`: adding 1.5 * 2^23 rounds to an integer (ties to even) in the low
/// mantissa bits. Reproduced bit for bit, including its result for out-of-range inputs.
fn nearest_int(v: f32) -> i32 {
    ((v + 12_582_912.0).to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

fn level(v: f32) -> u8 {
    nearest_int(v).clamp(0, NMAX) as u8
}

/// Eight lanes, one per sub-block: lane `s` of `t[i]` is value `i` of sub-block `s`.
type Lanes<T> = [[T; 8]; SUB];

/// `make_qkx2_quants(32, 15, x, w, L, &the_min, Laux, -1, 0.1, 20, false)` on the 8
/// sub-blocks at once (independent lanes, each doing exactly the scalar operations in ggml's
/// order; the lanes only let the CPU overlap the 8 chains of sums). Writes the levels to `l`,
/// returns `(scale, the_min)` per sub-block with `x ≈ scale * l - the_min`. Starting from the
/// plain min/max grid, each candidate grid `(14 + 0.1 k) / (max - min)`, `k = 0..=20`, gets
/// the weighted least-squares scale and min of its levels; the one with the smallest weighted
/// squared error wins, and (as in ggml) its min becomes the offset of the next candidates.
fn make_qkx2(x: &Lanes<f32>, w: &Lanes<f32>, l: &mut Lanes<u8>) -> ([f32; 8], [f32; 8]) {
    let (rmin, rdelta, nstep) = (-1.0f32, 0.1f32, 20);
    let (mut min, mut max, mut sum_w) = (x[0], x[0], w[0]);
    let mut sum_x: [f32; 8] = std::array::from_fn(|s| w[0][s] * x[0][s]);
    for i in 1..SUB {
        for s in 0..8 {
            if x[i][s] < min[s] {
                min[s] = x[i][s];
            }
            if x[i][s] > max[s] {
                max[s] = x[i][s];
            }
            sum_w[s] += w[i][s];
            sum_x[s] += w[i][s] * x[i][s];
        }
    }
    for m in &mut min {
        if *m > 0.0 {
            *m = 0.0;
        }
    }
    // Lanes with max == min compute garbage below and are set at the end.
    let flat: [bool; 8] = std::array::from_fn(|s| max[s] == min[s]);
    let flat_min = min;

    let iscale: [f32; 8] = std::array::from_fn(|s| NMAX as f32 / (max[s] - min[s]));
    let mut scale: [f32; 8] = std::array::from_fn(|s| 1.0 / iscale[s]);
    let mut best_error = [0.0f32; 8];
    for i in 0..SUB {
        for s in 0..8 {
            l[i][s] = level(iscale[s] * (x[i][s] - min[s]));
            let diff = scale[s] * l[i][s] as f32 + min[s] - x[i][s];
            best_error[s] += w[i][s] * (diff * diff);
        }
    }
    let mut aux: Lanes<u8> = [[0; 8]; SUB];
    for is in 0..=nstep {
        let iscale: [f32; 8] = std::array::from_fn(|s| (rmin + rdelta * is as f32 + NMAX as f32) / (max[s] - min[s]));
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
        for i in 0..SUB {
            for s in 0..8 {
                aux[i][s] = level(iscale[s] * (x[i][s] - min[s]));
                let lf = aux[i][s] as f32;
                sum_l[s] += w[i][s] * lf;
                sum_l2[s] += w[i][s] * lf * lf;
                sum_xl[s] += w[i][s] * lf * x[i][s];
            }
        }
        let (mut this_scale, mut this_min, mut det) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
        for s in 0..8 {
            det[s] = sum_w[s] * sum_l2[s] - sum_l[s] * sum_l[s];
            this_scale[s] = (sum_w[s] * sum_xl[s] - sum_x[s] * sum_l[s]) / det[s];
            this_min[s] = (sum_l2[s] * sum_x[s] - sum_l[s] * sum_xl[s]) / det[s];
            if this_min[s] > 0.0 {
                this_min[s] = 0.0;
                this_scale[s] = sum_xl[s] / sum_l2[s];
            }
        }
        let mut cur_error = [0.0f32; 8];
        for i in 0..SUB {
            for s in 0..8 {
                let diff = this_scale[s] * aux[i][s] as f32 + this_min[s] - x[i][s];
                cur_error[s] += w[i][s] * (diff * diff);
            }
        }
        let better: [bool; 8] = std::array::from_fn(|s| det[s] > 0.0 && cur_error[s] < best_error[s]);
        for s in (0..8).filter(|&s| better[s]) {
            best_error[s] = cur_error[s];
            scale[s] = this_scale[s];
            min[s] = this_min[s];
            for i in 0..SUB {
                l[i][s] = aux[i][s];
            }
        }
    }
    for s in (0..8).filter(|&s| flat[s]) {
        (scale[s], min[s]) = (0.0, flat_min[s]);
        for li in l.iter_mut() {
            li[s] = 0;
        }
    }
    (scale, min.map(|m| -m))
}

/// Q4_K: blocks of 256 values, 144 bytes each (`quantize_row_q4_K_ref`).
pub fn quantize_q4_k(src: &[f32]) -> Result<Vec<u8>, GgufError> {
    if !src.len().is_multiple_of(QK_K) {
        return Err(GgufError::SizeMismatch { ty: GgmlType::Q4_K, bytes: 0, elements: src.len() });
    }
    let mut out = Vec::with_capacity(src.len() / QK_K * BLOCK_BYTES);
    for x in src.chunks_exact(QK_K) {
        out.extend_from_slice(&quantize_block(x));
    }
    Ok(out)
}

fn quantize_block(x: &[f32]) -> [u8; BLOCK_BYTES] {
    let (mut xt, mut wt): (Lanes<f32>, Lanes<f32>) = ([[0.0; 8]; SUB], [[0.0; 8]; SUB]);
    for (j, xs) in x.chunks_exact(SUB).enumerate() {
        let sum_x2 = xs.iter().fold(0.0f32, |s, &v| s + v * v);
        let av_x = (sum_x2 / SUB as f32).sqrt();
        for (i, &v) in xs.iter().enumerate() {
            xt[i][j] = v;
            wt[i][j] = av_x + v.abs();
        }
    }
    let mut lt: Lanes<u8> = [[0; 8]; SUB];
    let (scales, mins) = make_qkx2(&xt, &wt, &mut lt);
    let mut levels = [0u8; QK_K];
    for (i, li) in lt.iter().enumerate() {
        for (j, &v) in li.iter().enumerate() {
            levels[j * SUB + i] = v;
        }
    }
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }

    let mut b = [0u8; BLOCK_BYTES];
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let packed = &mut b[4..16];
    for j in 0..8 {
        // Wrapping to u8 before the clamp, as the C assignment to `uint8_t` does.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    b[0..2].copy_from_slice(&d.to_bits().to_le_bytes());
    b[2..4].copy_from_slice(&dmin.to_bits().to_le_bytes());

    // Requantize against the rounded scales; a sub-block whose scale rounded to 0 keeps the
    // levels of its search.
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &b[4..16]);
        let dj = d.to_f32() * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for (l, &v) in levels[j * SUB..(j + 1) * SUB].iter_mut().zip(&x[j * SUB..]) {
            *l = level((v + dm) / dj);
        }
    }
    // Sub-blocks 2k and 2k+1 share 32 bytes: low nibbles, then high nibbles.
    for (k, q) in b[16..].chunks_exact_mut(SUB).enumerate() {
        let base = 2 * k * SUB;
        for (i, byte) in q.iter_mut().enumerate() {
            *byte = levels[base + i] | (levels[base + SUB + i] << 4);
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::quant::{dequantize_to_vec, SplitMix64};

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (v, want) in [(0.5, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (7.49, 7), (-0.0, 0), (15.5, 16)] {
            assert_eq!(nearest_int(v), want, "{v}");
        }
    }

    /// Every value is within one 4-bit step of its sub-block (plus the 6-bit rounding of the
    /// scales, a relative 1/126 of the super-block's largest scale and min).
    #[test]
    fn q4_k_round_trips_within_a_step() {
        let mut rng = SplitMix64::new(11);
        for scale in [1e-3f32, 0.05, 1.0, 40.0] {
            let x: Vec<f32> = (0..QK_K * 4).map(|_| rng.uniform(-scale, scale) + rng.uniform(0.0, scale) * 0.3).collect();
            let q = quantize_q4_k(&x).unwrap();
            assert_eq!(q.len() as u64, GgmlType::Q4_K.row_bytes(x.len() as u64).unwrap());
            let y = dequantize_to_vec(GgmlType::Q4_K, &q, x.len()).unwrap();
            for (blk_x, blk_y) in x.chunks(QK_K).zip(y.chunks(QK_K)) {
                let amax = blk_x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let mut err2 = 0.0f32;
                for (sub_x, sub_y) in blk_x.chunks(SUB).zip(blk_y.chunks(SUB)) {
                    let (lo, hi) = sub_x.iter().fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                    let step = (hi - lo) / NMAX as f32;
                    for (a, b) in sub_x.iter().zip(sub_y) {
                        assert!((a - b).abs() <= step + amax / 50.0, "scale {scale}: {a} vs {b} (step {step})");
                        err2 += (a - b) * (a - b);
                    }
                }
                let rms = (err2 / QK_K as f32).sqrt();
                assert!(rms < amax / 30.0, "scale {scale}: rms {rms} vs amax {amax}");
            }
        }
    }

    #[test]
    fn q4_k_exact_on_its_own_grid_and_zero() {
        assert!(quantize_q4_k(&[0.0; QK_K]).unwrap().iter().all(|&b| b == 0));
        // Levels 0..15 in every sub-block, the same step: the search finds the grid, and only
        // the f16 rounding of `d` remains.
        let x: Vec<f32> = (0..QK_K).map(|i| (i % 16) as f32 * 0.25).collect();
        let q = quantize_q4_k(&x).unwrap();
        assert!(q[16..].iter().enumerate().all(|(i, &b)| b == (i % 16) as u8 * 0x11), "nibbles");
        let y = dequantize_to_vec(GgmlType::Q4_K, &q, QK_K).unwrap();
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-3), "{y:?}");
        assert!(matches!(quantize_q4_k(&x[..255]), Err(GgufError::SizeMismatch { .. })));
    }
}
