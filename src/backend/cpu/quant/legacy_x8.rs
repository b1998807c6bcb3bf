//! Q4_0, Q4_1 and Q8_0 rows repacked once, eight at a time, so that a product of any number of
//! tokens reads them with no decoding step (llama.cpp's `block_q4_0x8` and `block_q8_0x8` of
//! `ggml-cpu/repack.cpp`: eight rows' blocks, the codes interleaved by eight bytes). An
//! [`LBlockX8`] holds eight rows' block: vector `v` holds bytes `8v..8v + 8` of every row's codes
//! (row `r` at bytes `8r..8r + 8`) — Q4_0 and Q4_1 their 16 packed bytes in two vectors, whose
//! low nibbles are the codes `8v..8v + 8` and high nibbles the codes `16 + 8v..`; Q8_0 its 32
//! codes plus 128, unsigned, in four — and the rows' f16 scales (and Q4_1's mins).
//!
//! The AVX-512 tile takes all eight rows in one vector: per eight codes of every row and a
//! token, one `vpdpbusd` (or `maddubs` + `madd`) against the token's eight activations
//! broadcast, so that row `r`'s sums lie in lanes `2r` (codes `8c..8c + 4` of each eight) and
//! `2r + 1` (`8c + 4..8c + 8`). The codes' offset (Q4_0's 8, Q8_0's 128) comes off as
//! `−offset·Σx` (the activation block's integer sum) in the first lane of each pair; without
//! VNNI, Q8_0's codes go in as `|w|` against `x` with `w`'s sign (`maddubs` pairs of `w + 128`
//! would saturate). Two tokens' sums then share a vector, each row's pair of lanes added (two
//! `shufps` and an add), so that the f32 step, `acc += (d·xd)·dot` and Q4_1's
//! `acc += m·(xd·Σx)` (`Σx·xd` rounded once, at quantization), takes one conversion, one
//! product and one or two FMAs for 16 (row, token) sums, not 8.
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

    /// What the stored codes add to the format's: Q4_0's 8 (its codes are unsigned already),
    /// Q8_0's 128 (its signed codes stored unsigned).
    const OFFSET: i32 = match Self::KIND {
        Kind::Q4_0 => 8,
        Kind::Q4_1 => 0,
        Kind::Q8_0 => 128,
    };

    /// Row `r`'s stored code of element `e` (0..32): the nibble, or Q8_0's code plus 128.
    fn code(&self, r: usize, e: usize) -> i32 {
        match Self::KIND {
            Kind::Q8_0 => self.qs[e / 8][8 * r + e % 8] as i32,
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
                if Self::KIND == Kind::Q8_0 {
                    dst[8 * r..8 * r + 8].iter_mut().for_each(|q| *q ^= 0x80);
                }
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
/// p.len()`), scalar, in the AVX-512 tile's order (see the module header).
fn tile_scalar<const V: usize, const M: usize>(w: &[LBlockX8<V, M>], xs: &[&[BlockQ8]], p: &mut [[f32; 8]]) {
    let f16 = |bits: u16| f16_at(&bits.to_le_bytes(), 0);
    for (i, x) in xs.iter().enumerate() {
        for (r, pr) in p[i].iter_mut().enumerate() {
            let mut acc = 0f32;
            for (b, xb) in w.iter().zip(x.iter()) {
                let dot: i32 = (0..32).map(|e| b.code(r, e) * xb.qs[e] as i32).sum::<i32>() - LBlockX8::<V, M>::OFFSET * xb.sum;
                acc = (f16(b.d[r]) * xb.d).mul_add(dot as f32, acc);
                if LBlockX8::<V, M>::KIND == Kind::Q4_1 {
                    acc = f16(b.mins()[r]).mul_add(xb.ds, acc);
                }
            }
            *pr += acc;
        }
    }
}

/// Bytes ahead of the block being computed that the AVX-512 passes ask the memory for (about
/// `q4k_x8.rs`'s distance).
#[cfg(target_arch = "x86_64")]
const AHEAD_BYTES: usize = 4096;

/// [`tile_scalar`] with AVX-512 (`tile_512`: `maddubs` + `madd`; `tile_512_vnni`: `vpdpbusd`),
/// all eight rows in one vector and up to four pairs of tokens per pass, the pass's token
/// count a constant so that its loops unroll without branches (an odd count leaves its last
/// pair's second lanes zero): per block the codes unpacked once (Q4: an `and`,
/// or a shift and an `and`; Q8_0 without VNNI: `|w|` and the sign mask) and the rows' scales
/// spread to the lanes of a pair's sums (lane `4k + j`: row `2k + j % 2` of the pair's token
/// `j / 2`).
macro_rules! legacy_tile_512 {
    ($features:literal, $dot4:path, unsigned_q8: $unsigned_q8:literal: $name:ident, $pass:ident) => {
        /// # Safety
        /// Needs the CPU features named in its `target_feature`; every token of `xs` holds
        /// `w.len()` blocks.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const V: usize, const M: usize>(w: &[LBlockX8<V, M>], xs: &[&[BlockQ8]], p: &mut [[f32; 8]]) {
            let mut i0 = 0;
            while i0 < xs.len() {
                let xs = &xs[i0..];
                i0 += match xs.len() {
                    1 => $pass::<V, M, 1, 1>(w, xs, p, i0),
                    2 => $pass::<V, M, 1, 2>(w, xs, p, i0),
                    3 => $pass::<V, M, 2, 3>(w, xs, p, i0),
                    4 => $pass::<V, M, 2, 4>(w, xs, p, i0),
                    5 => $pass::<V, M, 3, 5>(w, xs, p, i0),
                    6 => $pass::<V, M, 3, 6>(w, xs, p, i0),
                    7 => $pass::<V, M, 4, 7>(w, xs, p, i0),
                    _ => $pass::<V, M, 4, 8>(w, xs, p, i0),
                };
            }
        }

        /// One pass of the `T` tokens from `xs[0]` (`P` pairs, `T ≤ 2P`), added to `p` from
        /// token `i0`; returns `T`.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $pass<const V: usize, const M: usize, const P: usize, const T: usize>(
            w: &[LBlockX8<V, M>],
            xs: &[&[BlockQ8]],
            p: &mut [[f32; 8]],
            i0: usize,
        ) -> usize {
            let (kind, taken) = (LBlockX8::<V, M>::KIND, T);
            // Q8_0's codes go in signed, their offset not stored, where `maddubs` takes them.
            let (signed_q8, offset) = match kind {
                Kind::Q8_0 if !$unsigned_q8 => (true, 0),
                _ => (false, LBlockX8::<V, M>::OFFSET),
            };
            // A loop: `array::from_fn`'s closure was left a call here (`perf`).
            // Each token's first block; its block `s` is `s` on (every token holds `w.len()`).
            let mut xt = [[xs[0].as_ptr(); 2]; P];
            for k in 0..taken {
                debug_assert!(xs[k].len() >= w.len());
                xt[k / 2][k % 2] = xs[k].as_ptr();
            }
            let low4 = _mm512_set1_epi8(0x0F);
            let by_pair = _mm512_setr_epi32(0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7);
            let spread = |h: &[u16; 8]| {
                _mm512_permutexvar_ps(by_pair, _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast()))))
            };
            // Lanes `4k..4k + 2` token `a`'s `v`, lanes `4k + 2..4k + 4` token `b`'s.
            let two = |a: f32, b: f32| _mm512_shuffle_ps::<0>(_mm512_set1_ps(a), _mm512_set1_ps(b));
            let mut acc = [_mm512_setzero_ps(); P];
            for (s, b) in w.iter().enumerate() {
                let ahead = (b as *const LBlockX8<V, M>).wrapping_byte_add(AHEAD_BYTES).cast::<i8>();
                for line in 0..size_of::<LBlockX8<V, M>>().div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
                }
                let load = |v: usize| _mm512_loadu_si512(b.qs[v].as_ptr().cast());
                // Code vector `c` holds codes `8c..8c + 8` of every row, unsigned; Q8_0's signs
                // in `negative[c]` where they go in signed.
                let mut codes = [_mm512_setzero_si512(); 4];
                let mut negative = [0; 4];
                if kind == Kind::Q8_0 {
                    for c in 0..4 {
                        codes[c] = load(c);
                        if signed_q8 {
                            let v = _mm512_xor_si512(codes[c], _mm512_set1_epi8(-128));
                            (codes[c], negative[c]) = (_mm512_abs_epi8(v), _mm512_movepi8_mask(v));
                        }
                    }
                } else {
                    for v in 0..2 {
                        let q = load(v);
                        codes[v] = _mm512_and_si512(q, low4);
                        codes[2 + v] = _mm512_and_si512(_mm512_srli_epi16(q, 4), low4);
                    }
                }
                let d = spread(&b.d);
                let m = match kind {
                    Kind::Q4_1 => spread(&b.mins()),
                    _ => _mm512_setzero_ps(),
                };
                for (k, (acc, pair)) in acc.iter_mut().zip(xt).enumerate() {
                    let mut dot = [_mm512_setzero_si512(); 2];
                    for (dot, x) in dot.iter_mut().zip(pair).take(taken.saturating_sub(2 * k)) {
                        let xb = &*x.add(s);
                        *dot = _mm512_maskz_set1_epi32(0x5555, -offset * xb.sum);
                        for (c, &codes) in codes.iter().enumerate() {
                            // SAFETY: `8c + 8 ≤ 32`.
                            let mut x = _mm512_set1_epi64(eight(xb.qs.as_ptr().add(8 * c)));
                            if signed_q8 {
                                x = _mm512_mask_sub_epi8(x, negative[c], _mm512_setzero_si512(), x);
                            }
                            *dot = $dot4(*dot, codes, x);
                        }
                    }
                    // Each row's pair of lanes added, the two tokens' rows side by side.
                    let [a, b] = dot.map(|v| _mm512_castsi512_ps(v));
                    let halves = [_mm512_shuffle_ps::<0b10_00_10_00>(a, b), _mm512_shuffle_ps::<0b11_01_11_01>(a, b)];
                    let sums = _mm512_add_epi32(_mm512_castps_si512(halves[0]), _mm512_castps_si512(halves[1]));
                    let [xa, xb] = pair.map(|x| &*x.add(s));
                    *acc = _mm512_fmadd_ps(_mm512_mul_ps(d, two(xa.d, xb.d)), _mm512_cvtepi32_ps(sums), *acc);
                    if kind == Kind::Q4_1 {
                        *acc = _mm512_fmadd_ps(m, two(xa.ds, xb.ds), *acc);
                    }
                }
            }
            for (k, acc) in acc.iter().enumerate() {
                // Lanes `4k, 4k + 1` of every `k` the pair's first token's rows, the others its second's.
                for (t, lanes) in [0x3333, 0xCCCC].into_iter().enumerate() {
                    if 2 * k + t < taken {
                        let rows = _mm512_castps512_ps256(_mm512_maskz_compress_ps(lanes, *acc));
                        let at = p[i0 + 2 * k + t].as_mut_ptr();
                        _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), rows));
                    }
                }
            }
            taken
        }
    };
}

legacy_tile_512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl", dot4_512, unsigned_q8: false: tile_512, pass_512);
legacy_tile_512!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    dot4_512_vnni,
    unsigned_q8: true: tile_512_vnni,
    pass_512_vnni
);
