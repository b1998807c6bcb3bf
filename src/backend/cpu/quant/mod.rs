//! Row dot products of GGUF weight rows, read in their block layout straight from bytes
//! (layouts in `gguf/quant/dequant.rs`), for every format the GPU path takes, in two modes:
//! - fast: activations quantized once per op to 8 bits per block ([`BlockQ8`] for Q4_0,
//!   Q4_1, Q8_0; [`BlockQ8K`] for the K-quants) and integer dot products, as llama.cpp's CPU
//!   backend does (`scalar.rs`; x86-64 `legacy_avx2.rs`, `kquant_avx2.rs`; aarch64
//!   `legacy_neon.rs`, `kquant_neon.rs`; wasm32 `legacy_wasm.rs`, `kquant_wasm.rs`);
//! - exact: f32 activations, weights dequantized to f32 in registers (`*_avx2.rs`,
//!   `*_neon.rs`, `*_wasm.rs`; on the scalar path by the reference block dequantizer,
//!   `dequant_dot`), equal to dequantize-then-dot up to f32 rounding.
//!
//! F32, F16 and BF16 rows are f32 dot products in both modes (`float.rs`; NEON in `neon.rs`,
//! wasm32 SIMD128 in `wasm.rs`).
//! `Kernel::of` picks the function for a format, mode and [`Simd`] level once per op.
//!
//! The tiles of the prefill matmul: K-quant super-blocks decoded once for many tokens and
//! dotted eight rows at a time (`ktile.rs`; at the wasm32 levels one row against four tokens,
//! `ktile_wasm.rs`), the same for Q4_0 / Q4_1 / Q8_0 blocks
//! (`ltile.rs`), and the f32 4 x 2 micro-kernel of its exact mode (`ftile.rs`). Rows repacked
//! once for products with no decoding step ([`BlockX8`]: `q4k_x8.rs`, `q6k_x8.rs`,
//! `legacy_x8.rs`).

/// The body of a [`BlockX8::tile`]: the calling module's `tile_512_vnni` / `tile_512` at the
/// AVX-512 levels, its `tile_scalar` (the same lanes and order) at the others.
macro_rules! x8_tile_at_level {
    ($simd:expr, $w:expr, $xs:expr, $p:expr) => {{
        let (w, xs, p) = ($w, $xs, $p);
        match $simd {
            // SAFETY: each level implies the features its tile needs (`Simd::is_supported`),
            // and every slice of `xs` holds `w.len()` blocks.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512Vnni => unsafe { tile_512_vnni(w, xs, p) },
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { tile_512(w, xs, p) },
            _ => tile_scalar(w, xs, p),
        }
    }};
}

mod float;
pub(super) mod ftile;
#[cfg(target_arch = "x86_64")]
mod kquant_avx2;
#[cfg(target_arch = "aarch64")]
mod kquant_neon;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod kquant_wasm;
pub(super) mod ktile;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(super) mod ktile_wasm;
#[cfg(target_arch = "x86_64")]
mod legacy_avx2;
#[cfg(target_arch = "aarch64")]
mod legacy_neon;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod legacy_wasm;
pub(super) mod legacy_x8;
pub(super) mod ltile;
#[cfg(target_arch = "aarch64")]
mod neon;
pub(super) mod q4k_x8;
pub(super) mod q6k_x8;
mod q8;
mod scalar;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(super) use wasm::{f16x4, load_f32};

pub use q8::{quantize_q8, quantize_q8k, BlockQ8, BlockQ8K, QuantError};

use super::simd::Simd;
use crate::gguf::quant::{block_dequantizer, BlockDequantizer};
use crate::gguf::{GgmlType, QK_K};

/// Eight rows' block repacked once for the matmul's tiles: K-quant super-blocks against
/// [`BlockQ8K`] activations (`q4k_x8.rs`, `q6k_x8.rs`), Q4_0 / Q4_1 / Q8_0 blocks against
/// [`BlockQ8`] (`legacy_x8.rs`).
pub(super) trait BlockX8: Copy + Send + Sync {
    /// The activation blocks the tile reads.
    type Act: Sync;
    /// Repacks block `rows[r]` of eight GGUF rows.
    fn pack(rows: [&[u8]; 8]) -> Self;
    /// Activations quantized for the tile.
    fn quantize(x: &[f32]) -> Result<Vec<Self::Act>, QuantError>;
    /// `p[i][r] +=` row `r` of blocks `w` times token `i`'s activation blocks `xs[i]`
    /// (`xs.len() ≤ p.len()`, each `w.len()` long) at level `simd`: the same bits for a token
    /// whatever tokens share the call (the K-quants: the matvec's bits).
    fn tile(simd: Simd, w: &[Self], xs: &[&[Self::Act]], p: &mut [[f32; 8]]);
}

/// The f16 at `b[at..at + 2]` as f32.
fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// How far ahead of the block being computed the four-row kernels ask the memory for a row's
/// bytes: this, or the row's length where that is shorter.
#[cfg(target_arch = "x86_64")]
const AHEAD: usize = 4 << 10;

/// Asks for `lines` cache lines at byte `at` (below twice its length) of `row`, one of `rows`
/// consecutive rows computed side by side; past its end, the same place in the row `rows`
/// rows further (the next group). Four rows side by side are four streams of the weight,
/// which the whole-row prefetches of `matvec.rs` alone leave waiting on long rows.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn ahead(row: &[u8], at: usize, rows: usize, lines: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let at = if at < row.len() { at } else { at + (rows - 1) * row.len() };
    for line in 0..lines {
        // SAFETY: a prefetch, which cannot fault (the address may lie past the weight).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(at + 64 * line).cast()) };
    }
}

/// The 32-element block formats, the const parameter of the SIMD kernels of `legacy_*.rs`
/// (and of `ltile.rs`'s AVX2 tiles).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", all(target_arch = "wasm32", target_feature = "simd128")))]
mod legacy_formats {
    pub(super) const Q4_0: u8 = 0;
    pub(super) const Q4_1: u8 = 1;
    pub(super) const Q8_0: u8 = 2;

    /// Bytes per block of format `F`.
    pub(super) const fn block_bytes<const F: u8>() -> usize {
        match F {
            Q4_0 => 18,
            Q4_1 => 20,
            _ => 34,
        }
    }
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", all(target_arch = "wasm32", target_feature = "simd128")))]
use legacy_formats::{block_bytes, Q4_0, Q4_1, Q8_0};

/// One weight row (whole blocks) against one token's activations.
pub(super) type Dot<A> = fn(&[u8], &[A]) -> f32;

/// Four weight rows against one token's activations, each to the bits of the row's [`Dot`].
pub(super) type Dot4<A> = fn([&[u8]; 4], &[A]) -> [f32; 4];

/// The row kernel of one format, mode and level.
#[derive(Clone, Copy)]
pub(super) enum Kernel {
    /// f32 activations.
    F32(Dot<f32>),
    /// f32 activations through the reference dequantizer of `ty`'s blocks ([`dequant_dot`]).
    Dequant(GgmlType, BlockDequantizer),
    /// [`BlockQ8`] activations, and where the level has one a four-row kernel.
    Q8(Dot<BlockQ8>, Option<Dot4<BlockQ8>>),
    /// [`BlockQ8K`] activations, and where the level has one a four-row kernel.
    Q8K(Dot<BlockQ8K>, Option<Dot4<BlockQ8K>>),
}

impl Kernel {
    /// The kernel for `ty` in the fast (`fast`) or exact mode at `simd`; `None` for formats
    /// without a CPU path.
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64", all(target_arch = "wasm32", target_feature = "simd128"))),
        allow(unused_variables)
    )]
    pub(super) fn of(ty: GgmlType, fast: bool, simd: Simd) -> Option<Kernel> {
        use GgmlType as T;
        #[cfg(target_arch = "x86_64")]
        if simd.avx2() {
            return Self::avx2(ty, fast, simd);
        }
        #[cfg(target_arch = "aarch64")]
        if simd == Simd::Neon {
            return Self::neon(ty, fast);
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
        if simd == Simd::Relaxed {
            return Self::wasm::<true>(ty, fast);
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if matches!(simd, Simd::Simd128 | Simd::Relaxed) {
            return Self::wasm::<false>(ty, fast);
        }
        Some(match (ty, fast) {
            (T::F32, _) => Kernel::F32(float::f32_row),
            (T::F16, _) => Kernel::F32(float::f16_row),
            (T::BF16, _) => Kernel::F32(float::bf16_row),
            (T::Q4_0, true) => Kernel::Q8(scalar::q4_0, None),
            (T::Q4_1, true) => Kernel::Q8(scalar::q4_1, None),
            (T::Q8_0, true) => Kernel::Q8(scalar::q8_0, None),
            (T::Q4_K, true) => Kernel::Q8K(scalar::q4_k, None),
            (T::Q5_K, true) => Kernel::Q8K(scalar::q5_k, None),
            (T::Q6_K, true) => Kernel::Q8K(scalar::q6_k, None),
            _ => Kernel::Dequant(ty, block_dequantizer(ty)?),
        })
    }

    /// The AVX2 kernels, and at the AVX-512 levels the fast Q4_K and Q6_K ones on 512-bit
    /// vectors (with VNNI: Q4_0, Q4_1 and Q8_0's fast ones too). The wrappers are safe fns for
    /// the table; they are only chosen at the levels that imply the features they need
    /// ([`Simd::is_supported`]).
    #[cfg(target_arch = "x86_64")]
    fn avx2(ty: GgmlType, fast: bool, simd: Simd) -> Option<Kernel> {
        use float::avx2 as f;
        use kquant_avx2 as k;
        use legacy_avx2 as l;
        use GgmlType as T;
        let (avx512, vnni) = (matches!(simd, Simd::Avx512 | Simd::Avx512Vnni), simd == Simd::Avx512Vnni);
        // SAFETY (every closure): see above.
        Some(match (ty, fast) {
            (T::Q4_K, true) if avx512 => {
                Kernel::Q8K(|r, x| unsafe { k::q4_k_512([r], x)[0] }, Some(|r, x| unsafe { k::q4_k_512(r, x) }))
            }
            (T::Q6_K, true) if avx512 => {
                Kernel::Q8K(|r, x| unsafe { k::q6_k_512([r], x)[0] }, Some(|r, x| unsafe { k::q6_k_512(r, x) }))
            }
            (T::Q4_0, true) if vnni => {
                Kernel::Q8(|r, x| unsafe { l::row_vnni::<Q4_0>(r, x) }, Some(|r, x| unsafe { l::rows4_vnni::<Q4_0>(r, x) }))
            }
            (T::Q4_1, true) if vnni => {
                Kernel::Q8(|r, x| unsafe { l::row_vnni::<Q4_1>(r, x) }, Some(|r, x| unsafe { l::rows4_vnni::<Q4_1>(r, x) }))
            }
            (T::Q8_0, true) if vnni => {
                Kernel::Q8(|r, x| unsafe { l::row_vnni::<Q8_0>(r, x) }, Some(|r, x| unsafe { l::rows4_vnni::<Q8_0>(r, x) }))
            }
            (T::F32, _) => Kernel::F32(|r, x| unsafe { f::f32_row(r, x) }),
            (T::F16, _) => Kernel::F32(|r, x| unsafe { f::f16_row(r, x) }),
            (T::BF16, _) => Kernel::F32(|r, x| unsafe { f::bf16_row(r, x) }),
            (T::Q4_0, true) => Kernel::Q8(|r, x| unsafe { l::row::<Q4_0>(r, x) }, Some(|r, x| unsafe { l::rows4::<Q4_0>(r, x) })),
            (T::Q4_1, true) => Kernel::Q8(|r, x| unsafe { l::row::<Q4_1>(r, x) }, Some(|r, x| unsafe { l::rows4::<Q4_1>(r, x) })),
            (T::Q8_0, true) => Kernel::Q8(|r, x| unsafe { l::row::<Q8_0>(r, x) }, Some(|r, x| unsafe { l::rows4::<Q8_0>(r, x) })),
            (T::Q4_K, true) => Kernel::Q8K(|r, x| unsafe { k::q4_k(r, x) }, None),
            (T::Q5_K, true) => Kernel::Q8K(|r, x| unsafe { k::q5_k(r, x) }, None),
            (T::Q6_K, true) => Kernel::Q8K(|r, x| unsafe { k::q6_k(r, x) }, None),
            (T::Q4_0, false) => Kernel::F32(|r, x| unsafe { l::q4_0_exact(r, x) }),
            (T::Q4_1, false) => Kernel::F32(|r, x| unsafe { l::q4_1_exact(r, x) }),
            (T::Q8_0, false) => Kernel::F32(|r, x| unsafe { l::q8_0_exact(r, x) }),
            (T::Q4_K, false) => Kernel::F32(|r, x| unsafe { k::q4_k_exact(r, x) }),
            (T::Q5_K, false) => Kernel::F32(|r, x| unsafe { k::q5_k_exact(r, x) }),
            (T::Q6_K, false) => Kernel::F32(|r, x| unsafe { k::q6_k_exact(r, x) }),
            _ => return None,
        })
    }

    /// The NEON + dot-product kernels (`neon.rs`, `legacy_neon.rs`, `kquant_neon.rs`): every
    /// format the AVX2 table has, in both modes, with four-row kernels for the fast Q4_0, Q4_1
    /// and Q8_0; the other formats take the scalar path. The wrappers are safe fns for the table;
    /// they are only chosen at [`Simd::Neon`], which implies NEON and the dot-product extension
    /// ([`Simd::is_supported`]).
    #[cfg(target_arch = "aarch64")]
    fn neon(ty: GgmlType, fast: bool) -> Option<Kernel> {
        use kquant_neon as k;
        use legacy_neon as l;
        use GgmlType as T;
        // SAFETY (every closure): see above.
        Some(match (ty, fast) {
            (T::F32, _) => Kernel::F32(|r, x| unsafe { neon::f32_row(r, x) }),
            (T::F16, _) => Kernel::F32(|r, x| unsafe { neon::f16_row(r, x) }),
            (T::BF16, _) => Kernel::F32(|r, x| unsafe { neon::bf16_row(r, x) }),
            (T::Q4_0, true) => Kernel::Q8(|r, x| unsafe { l::row::<Q4_0>(r, x) }, Some(|r, x| unsafe { l::rows4::<Q4_0>(r, x) })),
            (T::Q4_1, true) => Kernel::Q8(|r, x| unsafe { l::row::<Q4_1>(r, x) }, Some(|r, x| unsafe { l::rows4::<Q4_1>(r, x) })),
            (T::Q8_0, true) => Kernel::Q8(|r, x| unsafe { l::row::<Q8_0>(r, x) }, Some(|r, x| unsafe { l::rows4::<Q8_0>(r, x) })),
            (T::Q4_K, true) => Kernel::Q8K(|r, x| unsafe { k::q4_k(r, x) }, None),
            (T::Q5_K, true) => Kernel::Q8K(|r, x| unsafe { k::q5_k(r, x) }, None),
            (T::Q6_K, true) => Kernel::Q8K(|r, x| unsafe { k::q6_k(r, x) }, None),
            (T::Q4_0, false) => Kernel::F32(|r, x| unsafe { l::q4_0_exact(r, x) }),
            (T::Q4_1, false) => Kernel::F32(|r, x| unsafe { l::q4_1_exact(r, x) }),
            (T::Q8_0, false) => Kernel::F32(|r, x| unsafe { l::q8_0_exact(r, x) }),
            (T::Q4_K, false) => Kernel::F32(|r, x| unsafe { k::q4_k_exact(r, x) }),
            (T::Q5_K, false) => Kernel::F32(|r, x| unsafe { k::q5_k_exact(r, x) }),
            (T::Q6_K, false) => Kernel::F32(|r, x| unsafe { k::q6_k_exact(r, x) }),
            _ => Kernel::Dequant(ty, block_dequantizer(ty)?),
        })
    }

    /// The wasm32 SIMD128 kernels (`wasm.rs`, `legacy_wasm.rs`, `kquant_wasm.rs`), at the relaxed
    /// level (`R`) with relaxed SIMD's byte dots and multiply-adds: the formats and modes of
    /// [`Kernel::neon`], with a four-row kernel for the fast Q4_0 (Q4_1's and Q8_0's measured
    /// slower than one row at a time under V8: SmolLM2-135M's Q8_0 matvecs 38 ms per token
    /// against 21 on one thread, `cpu_bench -- levels`). The build has
    /// the features they use (the modules are compiled only with `simd128`, `R` only with
    /// `relaxed-simd`), so they are safe fns.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn wasm<const R: bool>(ty: GgmlType, fast: bool) -> Option<Kernel> {
        use kquant_wasm as k;
        use legacy_wasm as l;
        use GgmlType as T;
        Some(match (ty, fast) {
            (T::F32, _) => Kernel::F32(wasm::f32_row::<R>),
            (T::F16, _) => Kernel::F32(wasm::f16_row::<R>),
            (T::BF16, _) => Kernel::F32(wasm::bf16_row::<R>),
            (T::Q4_0, true) => Kernel::Q8(l::row::<Q4_0, R>, Some(l::rows4::<Q4_0, R>)),
            (T::Q4_1, true) => Kernel::Q8(l::row::<Q4_1, R>, None),
            (T::Q8_0, true) => Kernel::Q8(l::row::<Q8_0, R>, None),
            (T::Q4_K, true) => Kernel::Q8K(k::q4_k::<R>, None),
            (T::Q5_K, true) => Kernel::Q8K(k::q5_k::<R>, None),
            (T::Q6_K, true) => Kernel::Q8K(k::q6_k::<R>, None),
            (T::Q4_0, false) => Kernel::F32(l::q4_0_exact::<R>),
            (T::Q4_1, false) => Kernel::F32(l::q4_1_exact::<R>),
            (T::Q8_0, false) => Kernel::F32(l::q8_0_exact::<R>),
            (T::Q4_K, false) => Kernel::F32(k::q4_k_exact::<R>),
            (T::Q5_K, false) => Kernel::F32(k::q5_k_exact::<R>),
            (T::Q6_K, false) => Kernel::F32(k::q6_k_exact::<R>),
            _ => Kernel::Dequant(ty, block_dequantizer(ty)?),
        })
    }
}

/// Scalar exact mode: each block dequantized by `block` (the reference dequantizer of `ty`)
/// into a stack buffer and multiplied into one f32 accumulator in order: the f32 operations
/// of dequantize-then-dot.
pub(super) fn dequant_dot(ty: GgmlType, block: BlockDequantizer, row: &[u8], x: &[f32]) -> f32 {
    let mut buf = [0.0; QK_K];
    let w = &mut buf[..ty.block_size()];
    let mut acc = 0.0;
    for (b, xs) in row.chunks_exact(ty.type_size()).zip(x.chunks_exact(w.len())) {
        block(b, w);
        acc = w.iter().zip(xs).fold(acc, |acc, (w, x)| acc + w * x);
    }
    acc
}
