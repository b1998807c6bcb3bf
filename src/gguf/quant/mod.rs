//! GGUF quantization block formats: CPU reference dequantization, quantizers
//! byte-identical to llama.cpp's (Q8_0, Q4_0, Q4_1 in `quantize.rs`, Q4_K in
//! `quantize_k.rs`; used to requantize while loading) and random-block generators for tests
//! and benchmarks.
//!
//! Reference: ggml's `ggml-common.h` (block structs) and `ggml-quants.c`
//! (`dequantize_row_*`, `quantize_row_*_ref`); gguf-py's `quants.py`. The byte layout
//! of every supported block is documented in `dequant.rs`.

mod dequant;
mod quantize;
mod quantize_k;
mod random;

pub use dequant::{block_dequantizer, dequantize, dequantize_to_vec, scale_min_k4, BlockDequantizer};
pub use quantize::{quantize_q4_0, quantize_q4_1, quantize_q8_0};
pub use quantize_k::quantize_q4_k;
pub use random::{random_blocks, SplitMix64};

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::gguf::error::GgufError;
    use crate::gguf::types::GgmlType;

    fn f16b(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    /// Packs (scale, min) pairs the way `scale_min_k4` unpacks them.
    fn pack_k4(sm: &[(u8, u8); 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for (j, &(sc, m)) in sm.iter().enumerate() {
            if j < 4 {
                s[j] |= sc & 63;
                s[j + 4] |= m & 63;
            } else {
                s[j + 4] = (sc & 0x0F) | ((m & 0x0F) << 4);
                s[j - 4] |= (sc >> 4) << 6;
                s[j] |= (m >> 4) << 6;
            }
        }
        s
    }

    const SM: [(u8, u8); 8] = [(1, 2), (63, 0), (17, 33), (40, 63), (5, 48), (62, 1), (32, 31), (16, 60)];

    #[test]
    fn scale_min_unpacks_all_eight() {
        let packed = pack_k4(&SM);
        for (j, &want) in SM.iter().enumerate() {
            assert_eq!(scale_min_k4(j, &packed), want, "sub-block {j}");
        }
    }

    #[test]
    fn q4_k_and_q5_k_follow_layout() {
        let (d, dmin) = (0.5f32, 0.25f32);
        let mut rng = SplitMix64::new(3);
        let mut qs = [0u8; 128];
        let mut qh = [0u8; 32];
        rng.fill_bytes(&mut qs);
        rng.fill_bytes(&mut qh);
        let mut q4 = Vec::new();
        q4.extend(f16b(d));
        q4.extend(f16b(dmin));
        q4.extend(pack_k4(&SM));
        let mut q5 = q4.clone();
        q4.extend(qs);
        q5.extend(qh);
        q5.extend(qs);
        let y4 = dequantize_to_vec(GgmlType::Q4_K, &q4, 256).unwrap();
        let y5 = dequantize_to_vec(GgmlType::Q5_K, &q5, 256).unwrap();
        for i in 0..256 {
            let (sub, l) = (i / 32, i % 32);
            let byte = qs[(sub / 2) * 32 + l];
            let q = if sub % 2 == 0 { byte & 15 } else { byte >> 4 };
            let hi = (qh[l] >> sub) & 1;
            let (sc, m) = SM[sub];
            assert_eq!(y4[i], d * sc as f32 * q as f32 - dmin * m as f32, "q4_k {i}");
            let q5 = q as f32 + 16.0 * hi as f32;
            assert_eq!(y5[i], d * sc as f32 * q5 - dmin * m as f32, "q5_k {i}");
        }
    }

    #[test]
    fn q6_k_follows_layout() {
        let mut rng = SplitMix64::new(9);
        let mut b = vec![0u8; 210];
        rng.fill_bytes(&mut b);
        b[208..210].copy_from_slice(&f16b(0.125));
        let y = dequantize_to_vec(GgmlType::Q6_K, &b, 256).unwrap();
        for (i, &yi) in y.iter().enumerate() {
            let (h, k, l) = (i / 128, (i % 128) / 32, i % 32);
            let low = b[64 * h + l + 32 * (k % 2)];
            let low = if k < 2 { low & 15 } else { low >> 4 };
            let high = (b[128 + 32 * h + l] >> (2 * k)) & 3;
            let q = (low | (high << 4)) as i32 - 32;
            let sc = b[192 + i / 16] as i8;
            assert_eq!(yi, 0.125 * sc as f32 * q as f32, "{i}");
        }
    }

    #[test]
    fn quantizers_round_trip_within_one_step() {
        let mut rng = SplitMix64::new(1);
        let x: Vec<f32> = (0..32 * 8).map(|_| rng.uniform(-2.0, 2.0)).collect();
        for (ty, q) in [
            (GgmlType::Q8_0, quantize_q8_0(&x).unwrap()),
            (GgmlType::Q4_0, quantize_q4_0(&x).unwrap()),
            (GgmlType::Q4_1, quantize_q4_1(&x).unwrap()),
        ] {
            assert_eq!(q.len() as u64, ty.row_bytes(x.len() as u64).unwrap());
            let y = dequantize_to_vec(ty, &q, x.len()).unwrap();
            for (blk_x, blk_y) in x.chunks(32).zip(y.chunks(32)) {
                let amax = blk_x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                // Q8_0 rounds to nearest; Q4_0 may clamp its extreme by one step of amax/8.
                let tol = if ty == GgmlType::Q8_0 { amax / 127.0 * 0.51 } else { amax / 8.0 };
                for (a, b) in blk_x.iter().zip(blk_y) {
                    assert!((a - b).abs() <= tol + 2e-3 * amax, "{ty}: {a} vs {b}");
                }
            }
        }
        assert!(matches!(quantize_q8_0(&x[..31]), Err(GgufError::SizeMismatch { .. })));
    }

    #[test]
    fn random_blocks_are_finite_and_sizes_checked() {
        for ty in GgmlType::SUPPORTED {
            let bytes = random_blocks(ty, 4, 7);
            assert_eq!(bytes, random_blocks(ty, 4, 7), "deterministic");
            let n = 4 * ty.block_size();
            let y = dequantize_to_vec(ty, &bytes, n).unwrap();
            assert!(y.iter().all(|v| v.is_finite() && v.abs() < 64.0), "{ty}");
        }
        let mut out = [0.0f32; 32];
        assert!(matches!(dequantize(GgmlType::Q8_0, &[0; 33], &mut out), Err(GgufError::SizeMismatch { .. })));
        assert!(matches!(dequantize(GgmlType::Q5_0, &[0; 22], &mut out), Err(GgufError::UnsupportedType(_))));
    }
}
