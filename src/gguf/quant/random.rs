//! Deterministic random GGUF blocks for tests and benchmarks, and the PRNG behind them.
//!
//! Reference: SplitMix64 (Steele, Lea, Flood 2014; the constants of Vigna's public-domain
//! `splitmix64.c`). Quant bytes are uniform random; every f16 scale/min field of the
//! block layouts (see `dequant.rs` and ggml's `ggml-common.h`) is overwritten with a
//! finite, moderate value so that dequantized weights stay in a sane range.

use half::{bf16, f16};

use crate::gguf::types::GgmlType;

/// The SplitMix64 generator: tiny, fast, and good enough for test data.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 24 bits of precision.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f32()
    }

    /// Fills `buf` with random bytes.
    pub fn fill_bytes(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// Byte offsets of the f16 scale fields in one block, and whether they must be positive
/// (the `d`/`dmin` of K-quants with a subtracted min).
fn scale_fields(ty: GgmlType) -> (&'static [usize], bool) {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S | IQ4_NL | IQ3_S | IQ2_S | IQ4_XS => (&[0], false),
        Q4_1 | Q5_1 | Q8_1 => (&[0, 2], false),
        Q2_K => (&[80, 82], true),
        Q3_K => (&[108], false),
        Q4_K | Q5_K => (&[0, 2], true),
        Q6_K => (&[208], false),
        TQ1_0 => (&[52], false),
        TQ2_0 => (&[64], false),
        _ => (&[], false),
    }
}

/// `n_blocks` random, valid blocks of `ty`: float types get values in `[-1, 1)`,
/// quantized types random quants with f16 scales of magnitude in `[2^-8, 2^-6)`.
/// (IQ1_M packs its scale across its `scales` words; those bits are left random.)
pub fn random_blocks(ty: GgmlType, n_blocks: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let ts = ty.type_size();
    let mut out = vec![0u8; n_blocks * ts];
    match ty {
        GgmlType::F32 => out.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&rng.uniform(-1.0, 1.0).to_le_bytes())),
        GgmlType::F64 => {
            out.chunks_exact_mut(8).for_each(|c| c.copy_from_slice(&f64::from(rng.uniform(-1.0, 1.0)).to_le_bytes()))
        }
        GgmlType::F16 => out
            .chunks_exact_mut(2)
            .for_each(|c| c.copy_from_slice(&f16::from_f32(rng.uniform(-1.0, 1.0)).to_bits().to_le_bytes())),
        GgmlType::BF16 => out
            .chunks_exact_mut(2)
            .for_each(|c| c.copy_from_slice(&bf16::from_f32(rng.uniform(-1.0, 1.0)).to_bits().to_le_bytes())),
        _ => {
            rng.fill_bytes(&mut out);
            let (fields, positive) = scale_fields(ty);
            for block in out.chunks_exact_mut(ts) {
                for &at in fields {
                    let mut d = rng.uniform(0.25, 1.0) / 64.0;
                    if !positive && rng.next_u64() & 1 == 1 {
                        d = -d;
                    }
                    block[at..at + 2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
                }
                match ty {
                    GgmlType::Q8_K => block[..4].copy_from_slice(&(rng.uniform(0.25, 1.0) / 64.0).to_le_bytes()),
                    GgmlType::MXFP4 => block[0] = 120 + (rng.next_u64() % 8) as u8,
                    _ => {}
                }
            }
        }
    }
    out
}
