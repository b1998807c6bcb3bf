//! Q4_0, Q4_1 and Q8_0 rows repacked once, eight at a time, so that a product of any number of
//! tokens reads them with no decoding step (llama.cpp's `block_q4_0x8` and `block_q8_0x8` of
//! `ggml-cpu/repack.cpp`: eight rows' blocks, the codes interleaved by eight bytes). An
//! [`LBlockX8`] holds eight rows' block: vector `v` holds bytes `8v..8v + 8` of every row's codes
//! (row `r` at bytes `8r..8r + 8`) — Q4_0 and Q4_1 their 16 packed bytes in two vectors, whose
//! low nibbles are the codes `8v..8v + 8` and high nibbles the codes `16 + 8v..`; Q8_0 its 32
//! signed codes in four — and the rows' f16 scales (and Q4_1's mins).
//!
//! The AVX-512 tile takes all eight rows in one vector: per eight codes of every row and a
//! token, one `vpdpbusd` (or `maddubs` + `madd`) against the token's eight activations
//! broadcast, so that row `r`'s sums lie in lanes `2r` (codes `8c..8c + 4` of each eight) and
//! `2r + 1` (`8c + 4..8c + 8`). Q4_0's offset of 8 comes off as `−8·Σx` (the activation
//! block's integer sum) in the first lane of each pair; Q8_0's signed codes go in as `|w|`
//! against `x` with `w`'s sign (unsigned times signed, as the instruction takes them; no pair
//! of products saturates). The f32 step per block and lane is `acc += (d·xd)·dot`, Q4_1's min
//! then `acc += m·(xd·Σx)` in the first lane, and the pair's lanes are added at the end.
//!
//! Each (row, token) product takes the same operations whatever tokens share its pass, and
//! [`tile_scalar`] takes them in the same order: a product of N tokens gives each token the
//! bits it gets alone, at every level. They differ from the matvec's (`legacy_avx2.rs`, which
//! keeps eight lanes of sums per row) by f32 rounding.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::ktile::{dot4_512, dot4_512_vnni, eight};
use super::{f16_at, quantize_q8, BlockQ8, BlockX8, QuantError};
use crate::backend::cpu::simd::Simd;

/// The format a block holds, for what differs between them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Q4_0,
    Q4_1,
    Q8_0,
}

/// Eight rows' block of a 32-element format, as many bytes as the eight blocks: `V` code
/// vectors (`qs[v][8r..8r + 8]`: row `r`'s code bytes `8v..8v + 8`), the rows' f16 scales
/// and, where `M` is 8, Q4_1's f16 mins.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(in crate::backend::cpu) struct LBlockX8<const V: usize, const M: usize> {
    qs: [[u8; 64]; V],
    d: [u16; 8],
    m: [u16; M],
}

pub(in crate::backend::cpu) type Q40BlockX8 = LBlockX8<2, 0>;
pub(in crate::backend::cpu) type Q41BlockX8 = LBlockX8<2, 8>;
pub(in crate::backend::cpu) type Q80BlockX8 = LBlockX8<4, 0>;

impl<const V: usize, const M: usize> LBlockX8<V, M> {
    const KIND: Kind = match (V, M) {
        (4, _) => Kind::Q8_0,
        (_, 8) => Kind::Q4_1,
        _ => Kind::Q4_0,
    };

    /// The rows' mins, f16 bits (zeros but for Q4_1).
    fn mins(&self) -> [u16; 8] {
        std::array::from_fn(|r| self.m.get(r).copied().unwrap_or(0))
    }

    /// Row `r`'s code of element `e` (0..32): Q4_0 / Q4_1 the nibble, Q8_0 the signed code.
    fn code(&self, r: usize, e: usize) -> i32 {
        match Self::KIND {
            Kind::Q8_0 => self.qs[e / 8][8 * r + e % 8] as i8 as i32,
            _ if e < 16 => (self.qs[e / 8][8 * r + e % 8] & 0x0F) as i32,
            _ => (self.qs[(e - 16) / 8][8 * r + e % 8] >> 4) as i32,
        }
    }
}

impl<const V: usize, const M: usize> BlockX8 for LBlockX8<V, M> {
    type Act = BlockQ8;

    /// Repacks block `rows[r]` of eight rows (layouts in `gguf/quant/dequant.rs`: the f16
    /// scale, Q4_1's f16 min, the codes).
    fn pack(rows: [&[u8]; 8]) -> Self {
        let f16_bits = |at: usize| rows.map(|b| u16::from_le_bytes([b[at], b[at + 1]]));
        let codes_at = 2 + M / 4;
        let mut qs = [[0; 64]; V];
        for (r, b) in rows.iter().enumerate() {
            for (v, dst) in qs.iter_mut().enumerate() {
                dst[8 * r..8 * r + 8].copy_from_slice(&b[codes_at + 8 * v..][..8]);
            }
        }
        let mins = f16_bits(2);
        LBlockX8 { qs, d: f16_bits(0), m: std::array::from_fn(|r| mins[r]) }
    }

    fn quantize(x: &[f32]) -> Result<Vec<BlockQ8>, QuantError> {
        quantize_q8(x)
    }

    fn tile(simd: Simd, w: &[Self], xs: &[&[BlockQ8]], p: &mut [[f32; 8]]) {
        x8_tile_at_level!(simd, w, xs, p)
    }
}

/// `p[i][r] +=` row `r` of blocks `w` times token `i`'s activation blocks `xs[i]` (`xs.len() ≤
/// p.len()`), scalar, in the AVX-512 tile's lanes and order (see the module header).
fn tile_scalar<const V: usize, const M: usize>(w: &[LBlockX8<V, M>], xs: &[&[BlockQ8]], p: &mut [[f32; 8]]) {
    let (kind, f16) = (LBlockX8::<V, M>::KIND, |bits: u16| f16_at(&bits.to_le_bytes(), 0));
    for (i, x) in xs.iter().enumerate() {
        for (r, pr) in p[i].iter_mut().enumerate() {
            let mut acc = [0f32; 2];
            for (b, xb) in w.iter().zip(x.iter()) {
                let mut dot = [0i32; 2];
                for e in 0..32 {
                    dot[e % 8 / 4] += b.code(r, e) * xb.qs[e] as i32;
                }
                if kind == Kind::Q4_0 {
                    dot[0] -= 8 * xb.sum;
                }
                let d = f16(b.d[r]) * xb.d;
                acc[0] = d.mul_add(dot[0] as f32, acc[0]);
                if kind == Kind::Q4_1 {
                    acc[0] = f16(b.mins()[r]).mul_add(xb.d * xb.sum as f32, acc[0]);
                }
                acc[1] = d.mul_add(dot[1] as f32, acc[1]);
            }
            *pr += acc[0] + acc[1];
        }
    }
}

/// Bytes ahead of the block being computed that the AVX-512 passes ask the memory for (about
/// `q4k_x8.rs`'s distance).
#[cfg(target_arch = "x86_64")]
const AHEAD_BYTES: usize = 4096;

/// [`tile_scalar`] with AVX-512 (`tile_512`: `maddubs` + `madd`; `tile_512_vnni`: `vpdpbusd`),
/// all eight rows in one vector and `T` tokens per pass (`T` independent chains; a pass of
/// fewer tokens than `T` repeats its last, whose sums are dropped): the codes unpacked (Q4:
/// an `and`, or a shift and an `and`; Q8_0: `|w|` and the sign mask) and the rows' scales
/// widened to lane pairs once per block for the pass's tokens.
macro_rules! legacy_tile_512 {
    ($features:literal, $dot4:path: $name:ident, $pass:ident) => {
        /// # Safety
        /// Needs the CPU features named in its `target_feature`; every token of `xs` holds
        /// `w.len()` blocks.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const V: usize, const M: usize>(w: &[LBlockX8<V, M>], xs: &[&[BlockQ8]], p: &mut [[f32; 8]]) {
            let mut i0 = 0;
            while i0 < xs.len() {
                i0 += match xs.len() - i0 {
                    1 => $pass::<V, M, 1>(w, &xs[i0..], p, i0),
                    2 => $pass::<V, M, 2>(w, &xs[i0..], p, i0),
                    3 | 4 => $pass::<V, M, 4>(w, &xs[i0..], p, i0),
                    _ => $pass::<V, M, 8>(w, &xs[i0..], p, i0),
                };
            }
        }

        /// One pass of up to `T` tokens from `xs[0]`, added to `p` from token `i0`; returns how
        /// many it took.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $pass<const V: usize, const M: usize, const T: usize>(
            w: &[LBlockX8<V, M>],
            xs: &[&[BlockQ8]],
            p: &mut [[f32; 8]],
            i0: usize,
        ) -> usize {
            let (kind, taken) = (LBlockX8::<V, M>::KIND, T.min(xs.len()));
            // A loop: `array::from_fn`'s closure was left a call here (`perf`).
            let mut xt = [xs[0]; T];
            for (k, x) in xt.iter_mut().enumerate() {
                *x = xs[k.min(taken - 1)];
            }
            let low4 = _mm512_set1_epi8(0x0F);
            // Each row's f32 twice: its pair of lanes.
            let pairs = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
            let widen = |h: &[u16; 8]| _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast())));
            let mut acc = [_mm512_setzero_ps(); T];
            for (s, b) in w.iter().enumerate() {
                let ahead = (b as *const LBlockX8<V, M>).wrapping_byte_add(AHEAD_BYTES).cast::<i8>();
                for line in 0..size_of::<LBlockX8<V, M>>().div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
                }
                let load = |v: usize| _mm512_loadu_si512(b.qs[v].as_ptr().cast());
                // Code vector `c` holds codes `8c..8c + 8` of every row, unsigned; Q8_0's signs
                // in `negative[c]`.
                let mut codes = [_mm512_setzero_si512(); 4];
                let mut negative = [0; 4];
                if kind == Kind::Q8_0 {
                    for c in 0..4 {
                        let v = load(c);
                        (codes[c], negative[c]) = (_mm512_abs_epi8(v), _mm512_movepi8_mask(v));
                    }
                } else {
                    for v in 0..2 {
                        let q = load(v);
                        codes[v] = _mm512_and_si512(q, low4);
                        codes[2 + v] = _mm512_and_si512(_mm512_srli_epi16(q, 4), low4);
                    }
                }
                let d = _mm512_permutexvar_ps(pairs, widen(&b.d));
                // Q4_1's mins in each pair's first lane.
                let m = match kind {
                    Kind::Q4_1 => _mm512_maskz_permutexvar_ps(0x5555, pairs, widen(&b.mins())),
                    _ => _mm512_setzero_ps(),
                };
                for (acc, x) in acc.iter_mut().zip(xt) {
                    let xb = &x[s];
                    let mut dot = match kind {
                        Kind::Q4_0 => _mm512_maskz_set1_epi32(0x5555, -8 * xb.sum),
                        _ => _mm512_setzero_si512(),
                    };
                    for (c, &codes) in codes.iter().enumerate() {
                        // SAFETY: `8c + 8 ≤ 32`.
                        let mut x = _mm512_set1_epi64(eight(xb.qs.as_ptr().add(8 * c)));
                        if kind == Kind::Q8_0 {
                            x = _mm512_mask_sub_epi8(x, negative[c], _mm512_setzero_si512(), x);
                        }
                        dot = $dot4(dot, codes, x);
                    }
                    let dxd = _mm512_mul_ps(d, _mm512_set1_ps(xb.d));
                    *acc = _mm512_fmadd_ps(dxd, _mm512_cvtepi32_ps(dot), *acc);
                    if kind == Kind::Q4_1 {
                        *acc = _mm512_fmadd_ps(m, _mm512_set1_ps(xb.d * xb.sum as f32), *acc);
                    }
                }
            }
            for (k, acc) in acc.iter().enumerate().take(taken) {
                // Each pair's lanes added (both lanes of the pair get the sum), the rows packed low.
                let both = _mm512_add_ps(*acc, _mm512_permute_ps::<0b10_11_00_01>(*acc));
                let rows = _mm512_castps512_ps256(_mm512_maskz_compress_ps(0x5555, both));
                let at = p[i0 + k].as_mut_ptr();
                _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), rows));
            }
            taken
        }
    };
}

legacy_tile_512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl", dot4_512: tile_512, pass_512);
legacy_tile_512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", dot4_512_vnni: tile_512_vnni, pass_512_vnni);
