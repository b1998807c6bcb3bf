//! What the CPU backend's kernel tests share (`mod cpu_common;`): thread pools, random
//! activations, weights whose products f32 computes exactly, and the relative L2 error.

#![allow(dead_code)]

use half::{bf16, f16};
use webvlm::backend::cpu::ThreadPool;
use webvlm::gguf::{random_blocks, GgmlType, SplitMix64};

pub const THREADS: [usize; 3] = [1, 2, 3];

pub fn pools() -> Vec<ThreadPool> {
    THREADS.iter().map(|&t| ThreadPool::new(t).unwrap()).collect()
}

/// Uniform in [-1, 1) with one value in 64 eight times larger (activations have outliers).
pub fn activations(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|i| rng.uniform(-1.0, 1.0) * if i % 64 == 17 { 8.0 } else { 1.0 }).collect()
}

pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let err: f64 = got.iter().zip(want).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let norm: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (err / norm).sqrt()
}

/// `n` weights of `ty` whose every value is a small multiple of 2^-4 (2^-8 for the float
/// formats): scales and mins of -1/16, 0 or 1/16.
pub fn representable_weights(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut int = |span: u64| (rng.next_u64() % (2 * span + 1)) as f32 - span as f32;
    match ty {
        GgmlType::F32 => (0..n).flat_map(|_| (int(64) / 256.0).to_le_bytes()).collect(),
        GgmlType::F16 => (0..n).flat_map(|_| f16::from_f32(int(64) / 256.0).to_le_bytes()).collect(),
        GgmlType::BF16 => (0..n).flat_map(|_| bf16::from_f32(int(64) / 256.0).to_le_bytes()).collect(),
        _ => {
            let mut bytes = random_blocks(ty, n / ty.block_size(), seed);
            let scales: &[usize] = match ty {
                GgmlType::Q6_K => &[208],
                GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
                _ => &[0],
            };
            for block in bytes.chunks_exact_mut(ty.type_size()) {
                for &at in scales {
                    block[at..at + 2].copy_from_slice(&f16::from_f32(int(1) / 16.0).to_le_bytes());
                }
            }
            bytes
        }
    }
}

/// Integer activations in [-1, 1] with a ±127 opening each block of 32, so that every
/// activation block quantizes with d = 1, losslessly: with [`representable_weights`] every
/// product and partial sum is exact in f32, in any order.
pub fn representable_activations(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|i| if i % 32 == 0 { 127.0 * [-1.0, 1.0][i / 32 % 2] } else { (rng.next_u64() % 3) as f32 - 1.0 }).collect()
}
