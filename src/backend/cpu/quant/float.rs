//! Row dot products of F32, F16 and BF16 weights with f32 activations (both modes): scalar,
//! and AVX2 + FMA + F16C with four independent accumulators of eight lanes (F16 widened by
//! `_mm256_cvtph_ps`, BF16 by a 16-bit shift into the high half), as llama.cpp's
//! `ggml_vec_dot_f16` / `ggml_vec_dot_bf16` and its `GGML_F32_VEC` FMA loops (ggml-cpu
//! `vec.cpp`, `simd-mappings.h`) do. The AVX2 path covers whole chunks of 32 and leaves the
//! rest to the scalar loop.

use half::f16;

fn f32_at(c: &[u8]) -> f32 {
    f32::from_le_bytes([c[0], c[1], c[2], c[3]])
}

fn f16_at(c: &[u8]) -> f32 {
    f16::from_le_bytes([c[0], c[1]]).to_f32()
}

fn bf16_at(c: &[u8]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)
}

fn dot(row: &[u8], x: &[f32], size: usize, read: fn(&[u8]) -> f32) -> f32 {
    row.chunks_exact(size).zip(x).fold(0.0, |acc, (c, &v)| acc + read(c) * v)
}

pub(super) fn f32_row(row: &[u8], x: &[f32]) -> f32 {
    dot(row, x, 4, f32_at)
}

pub(super) fn f16_row(row: &[u8], x: &[f32]) -> f32 {
    dot(row, x, 2, f16_at)
}

pub(super) fn bf16_row(row: &[u8], x: &[f32]) -> f32 {
    dot(row, x, 2, bf16_at)
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use super::super::legacy_avx2::{fma4, sum4};

    /// Whole chunks of 32 through `load` (eight weights from a pointer to a chunk's `8k`th
    /// weight), the rest through the scalar `read`. Needs AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot(row: &[u8], x: &[f32], size: usize, load: impl Fn(*const u8) -> __m256, read: fn(&[u8]) -> f32) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let whole = x.len() / 32 * 32;
        for (c, xs) in row[..whole * size].chunks_exact(32 * size).zip(x.chunks_exact(32)) {
            fma4(&mut acc, [0, 1, 2, 3].map(|k| load(c[8 * k * size..].as_ptr())), xs);
        }
        sum4(acc) + super::dot(&row[whole * size..], &x[whole..], size, read)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in super::super) unsafe fn f32_row(row: &[u8], x: &[f32]) -> f32 {
        dot(row, x, 4, |p| _mm256_loadu_ps(p.cast()), super::f32_at)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in super::super) unsafe fn f16_row(row: &[u8], x: &[f32]) -> f32 {
        dot(row, x, 2, |p| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())), super::f16_at)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in super::super) unsafe fn bf16_row(row: &[u8], x: &[f32]) -> f32 {
        let load = |p: *const u8| _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())), 16));
        dot(row, x, 2, load, super::bf16_at)
    }
}
