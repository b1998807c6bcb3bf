//! The CPU backend's levels whose fast rows are the scalar level's bit for bit: NEON (aarch64
//! with the dot-product extension; on x86-64 machines under qemu-user: `scripts/test_neon.sh`)
//! and wasm32's SIMD128 and relaxed SIMD (under Node: `scripts/test_wasm_simd.sh`), beside what
//! `cpu_matvec.rs` and `cpu_matmul.rs` check on every level: that the levels run where a run
//! expects them (`WEBVLM_EXPECT_SIMD`), and that their fast rows equal the scalar ones bit for
//! bit, on weights of the extreme codes as well as random ones. No GPU.

use crate::cpu_common;

use cpu_common::activations;
use webvlm::backend::cpu::{matvec, simd, Mode, Simd, ThreadPool, Weight};
use webvlm::gguf::{random_blocks, GgmlType};

/// The levels built to equal the scalar level bit for bit in the fast mode (exact integer sums
/// and `scalar.rs`'s f32 steps, which the scalar matmul tiles share).
const SCALAR_EXACT: [Simd; 3] = [Simd::Neon, Simd::Simd128, Simd::Relaxed];

/// A run that names a level in `WEBVLM_EXPECT_SIMD` (test_neon.sh: `neon`; test_wasm_simd.sh:
/// `relaxed`) fails where the machine or build cannot run it, and with it every level below it
/// on its ladder: every other test would pass on the levels below it alone.
#[test]
fn the_expected_level_runs() {
    let Ok(name) = std::env::var("WEBVLM_EXPECT_SIMD") else { return };
    let level: Simd = name.parse().unwrap();
    let available = Simd::available();
    assert!(available.contains(&level), "{level} expected; this build runs {available:?}");
    if level == Simd::Relaxed {
        assert!(available.contains(&Simd::Simd128), "relaxed without simd128: {available:?}");
    }
}

/// The fast rows of every block format at each level of [`SCALAR_EXACT`] this build runs equal
/// the scalar level's bit for bit: on random blocks, blocks of all-ones bytes (codes 15, Q5_K
/// 31, Q6_K 63 with scales of -1, Q8_0 -1) and of 0x80 bytes (Q8_0 codes of -128, Q6_K scales
/// of -128), against activations whose blocks quantize to ±127 codes, on 37 rows (nine groups
/// of four and one row alone).
#[test]
fn fast_rows_equal_the_scalar_ones() {
    let levels: Vec<Simd> = SCALAR_EXACT.into_iter().filter(|l| l.is_supported()).collect();
    if levels.is_empty() {
        eprintln!("this build runs none of {SCALAR_EXACT:?}: nothing to compare");
        return;
    }
    let (rows, cols, n_tok) = (37, 1024, 2);
    let pool = ThreadPool::new(2).unwrap();
    let mut x = activations(n_tok * cols, 13);
    x[..256].fill(-3.0);
    x[256..512].iter_mut().enumerate().for_each(|(i, v)| *v = if i % 2 == 0 { 5.0 } else { -5.0 });
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let blocks = rows * cols / ty.block_size();
        let mut bytes = random_blocks(ty, blocks, ty.id() as u64);
        let (size, scale_bytes) = (ty.type_size(), if ty == GgmlType::Q6_K { 208 } else { 4 });
        for (k, b) in bytes.chunks_exact_mut(size).enumerate().filter(|(k, _)| k % 3 != 0) {
            // Every byte but the f16 scale(s) (Q6_K: at the end; the others: at the start).
            let fill = if k % 3 == 1 { 0xFF } else { 0x80 };
            match ty {
                GgmlType::Q6_K => b[..scale_bytes].fill(fill),
                GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => b[4..].fill(fill),
                _ => b[2..].fill(fill),
            }
        }
        let w = Weight::new(ty, rows, cols, &bytes).unwrap();
        let run = |level| {
            let mut y = vec![f32::NAN; n_tok * rows];
            simd::with_level(level, || matvec(&pool, &w, &x, &mut y, n_tok, Mode::Fast)).unwrap().unwrap();
            y
        };
        let scalar = run(Simd::Scalar);
        for &level in &levels {
            for (i, (a, b)) in run(level).iter().zip(&scalar).enumerate() {
                assert!(a.to_bits() == b.to_bits(), "{ty}: output {i}: {level} {a:e}, scalar {b:e}");
            }
        }
    }
}
