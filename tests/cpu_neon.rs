//! The CPU backend's NEON level (aarch64 with the dot-product extension; on x86-64 machines
//! under qemu-user: `scripts/test_neon.sh`), beside what `cpu_matvec.rs` and `cpu_matmul.rs`
//! check on every level: that the level runs where a run expects it (`WEBVLM_EXPECT_SIMD`), and
//! that its fast rows equal the scalar ones bit for bit, on weights of the extreme codes as well
//! as random ones. No GPU.

mod cpu_common;

use cpu_common::activations;
use webvlm::backend::cpu::{matvec, simd, Mode, Simd, ThreadPool, Weight};
use webvlm::gguf::{random_blocks, GgmlType};

/// A run that names a level in `WEBVLM_EXPECT_SIMD` (scripts/test_neon.sh: `neon`) fails where
/// the machine cannot run it: every other test would pass on the levels below it alone.
#[test]
fn the_expected_level_runs() {
    let Ok(name) = std::env::var("WEBVLM_EXPECT_SIMD") else { return };
    let level: Simd = name.parse().unwrap();
    assert!(Simd::available().contains(&level), "{level} expected; this machine runs {:?}", Simd::available());
}

/// The fast rows of every block format at the NEON level equal the scalar level's bit for bit
/// (exact integer sums and `scalar.rs`'s f32 steps, which the scalar matmul tiles share): on
/// random blocks, blocks of all-ones bytes (codes 15, Q5_K 31, Q6_K 63 with scales of -1,
/// Q8_0 -1) and of 0x80 bytes (Q8_0 codes of -128, Q6_K scales of -128), against activations
/// whose blocks quantize to ±127 codes.
#[test]
fn neon_fast_rows_equal_the_scalar_ones() {
    if !Simd::Neon.is_supported() {
        eprintln!("this CPU has no NEON with the dot-product extension: nothing to compare");
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
        let (neon, scalar) = (run(Simd::Neon), run(Simd::Scalar));
        for (i, (a, b)) in neon.iter().zip(&scalar).enumerate() {
            assert!(a.to_bits() == b.to_bits(), "{ty}: output {i}: NEON {a:e}, scalar {b:e}");
        }
    }
}
