//! Matrix products for prefill on the CPU, the op of `kernels::matmul`: `y[t] = W · x[t]` for
//! many tokens, W a GGUF [`Weight`] read in its block layout, with [`matvec`](mod@super::matvec)'s
//! [`Epilogue`]s (the SiLU-gated one too, which the GPU op leaves to a separate kernel) and
//! its checks and errors ([`MatvecError`]). Where a matvec reads each weight row once per
//! token, the matmul prepares a panel of [`ROWS`] rows once and runs every token against it in
//! tiles of [`TOKENS`], so that weights are read from memory once per op and decoded once
//! per panel (the blocking of Goto & van de Geijn 2008; llama.cpp's `ggml_compute_forward_mul_mat`
//! with llamafile's `tinyBLAS` 4-row tiles, and ggml-cpu's `repack.cpp` eight-row layouts).
//!
//! - Fast mode, K-quants: activations quantized once to Q8_K, the panel's eight rows decoded
//!   and interleaved by eight codes per super-block (`quant/ktile.rs`), then one 512-bit
//!   `vpdpbusd` per eight codes of all eight rows and a token (AVX2: four rows per 256 bits),
//!   every pair of lanes a row. Bit for bit the matvec's result. At the wasm32 levels, each
//!   row's super-blocks decoded once (`quant/ktile_wasm.rs`) and run against four tokens at a
//!   time, the tokens in the lanes.
//! - Fast mode, Q4_0 / Q4_1 / Q8_0: activations quantized once to Q8_0, each panel row's
//!   blocks decoded to codes and f32 scales (`quant/ltile.rs`), then register tiles of two
//!   rows by four tokens over stretches of blocks, four rows at a time, with the matvec's
//!   per-block f32 steps and accumulators (its byte dots in `vpdpbusd` at the AVX-512 VNNI
//!   level). Bit for bit the matvec's.
//! - Exact mode (and the float formats in both): the panel dequantized to f32 once (the
//!   reference block dequantizer), then the 4 x 2 FMA micro-kernel (`quant/ftile.rs`) over
//!   stretches of [`COLS`] columns that keep a tile's rows and tokens in L1, four rows at a
//!   time.
//!
//! Output rows are split into chunks of whole panels that the pool's threads claim. Weights
//! repacked once so that panels need no preparing are [`Repacked`](super::repacked)'s.

use super::elementwise::silu_mul8;
use super::matvec::{check, MatvecError, Mode, Rows, Weight};
use super::pool::ThreadPool;
use super::quant::ftile::tile4x2;
use super::quant::ktile::{self, KRows};
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use super::quant::ktile_wasm::{self, KRow};
use super::quant::ltile::{self, LBlock};
use super::quant::{quantize_q8, quantize_q8k, BlockQ8, BlockQ8K};
use super::simd::{self, Simd};
use crate::gguf::quant::block_dequantizer;
use crate::gguf::GgmlType;
pub use crate::kernels::shapes::{Epilogue, Output};

/// Weight rows per panel: the K-quant tile's eight lanes (the other micro-kernels take four
/// rows at a time, twice).
pub const ROWS: usize = 8;
/// Tokens per tile: a tile's products are written out (with the epilogue) together.
pub const TOKENS: usize = 8;
/// Columns per stretch of the exact micro-kernel: 4 rows and 8 tokens of 512 f32 are 24 KiB.
pub const COLS: usize = 512;
/// Chunks per thread: enough for uneven progress to balance.
pub(super) const TASKS_PER_THREAD: usize = 4;

/// Whether the matmul of a `ty` weight in `mode` gives the matvec's result bit for bit (the
/// block formats' fast mode: the matvec's integer sums and f32 steps in its order).
pub fn same_as_matvec(ty: GgmlType, mode: Mode) -> bool {
    mode == Mode::Fast && ty.is_quantized()
}

/// Whether a decode product of `n_tok` tokens (one of each sequence of a batched step) runs
/// faster here than in the matvec and still gives each token the bits it gets alone: from a
/// whole tile of tokens. Decoding a panel costs about four one-token matvecs of its rows, so
/// fewer tokens are faster through the matvec; at eight, SmolLM2's shapes measured 1.1-1.2x
/// (Q4_1, Q8_0) to 1.7x (Q4_K) over the matvec, at sixteen 1.1-2x.
pub fn takes_decode(ty: GgmlType, mode: Mode, n_tok: usize) -> bool {
    n_tok >= TOKENS && same_as_matvec(ty, mode)
}

/// `y[t][r] = Σ_k w[r][k] x[t][k]` for `t < n_tok`: `x` is `[n_tok][w.cols]`, `y` is
/// `[n_tok][w.rows]` (longer slices are fine; the rest is untouched).
pub fn matmul(pool: &ThreadPool, w: &Weight, x: &[f32], y: &mut [f32], n_tok: usize, mode: Mode) -> Result<(), MatvecError> {
    matmul_into(pool, w, x, y, w.output(Epilogue::Store), n_tok, mode)
}

/// [`matmul`] into the columns `out` names (token `t`'s output `r` is
/// `y[t * stride + offset + r]`), with its epilogue.
pub fn matmul_into(
    pool: &ThreadPool,
    w: &Weight,
    x: &[f32],
    y: &mut [f32],
    out: Output,
    n_tok: usize,
    mode: Mode,
) -> Result<(), MatvecError> {
    let outputs = check((w.rows(), w.cols()), x, y, out, n_tok)?;
    if n_tok == 0 || outputs == 0 {
        return Ok(());
    }
    let x = &x[..n_tok * w.cols()];
    let simd = simd::level();
    let avx2 = simd.avx2();
    let run = Run { pool, n_tok, outputs, out, y: Rows(y.as_mut_ptr()) };
    use GgmlType as T;
    match (w.ty(), mode) {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        (T::Q4_K | T::Q5_K | T::Q6_K, Mode::Fast) if matches!(simd, Simd::Simd128 | Simd::Relaxed) => {
            run.panels(&WasmKPanel { w, x: quantize_q8k(x)?, simd })
        }
        (T::Q4_K | T::Q5_K | T::Q6_K, Mode::Fast) => run.panels(&KPanel { w, x: quantize_q8k(x)?, simd }),
        (T::Q4_0 | T::Q4_1 | T::Q8_0, Mode::Fast) => run.panels(&LPanel { w, x: quantize_q8(x)?, simd }),
        (ty, _) => {
            let block = block_dequantizer(ty).ok_or(MatvecError::Unsupported(ty))?;
            run.panels(&F32Panel { w, x, block, avx2 })
        }
    }
    Ok(())
}

/// Products of a tile: `p[i][r]` is panel row `r` times token `t0 + i` (a token's outputs
/// side by side, as they are stored).
pub(super) type Tile = [[f32; ROWS]; TOKENS];

/// A tile the row-major way the per-row kernels (`ktile`, `ltile`, `ftile`) write it.
type RowTile = [[f32; TOKENS]; ROWS];

/// `p` token-major.
fn by_token(p: &RowTile) -> Tile {
    std::array::from_fn(|i| std::array::from_fn(|r| p[r][i]))
}

/// How one kind of weight meets the tokens: a panel of [`ROWS`] weight rows prepared into a
/// per-task buffer, then tiles of tokens against it.
pub(super) trait Panel: Sync {
    type Buf;
    fn buf(&self) -> Self::Buf;
    /// Prepares weight rows `rows` (repeated where the panel is short) into `buf`.
    fn load(&self, buf: &mut Self::Buf, rows: [usize; ROWS]);
    /// The products of tokens `t0..t0 + n` (`n ≤ TOKENS`).
    fn tile(&self, buf: &Self::Buf, t0: usize, n: usize) -> Tile;
}

/// One checked matmul: `y` validated for `n_tok` tokens of `outputs` values at `out`.
pub(super) struct Run<'a> {
    pub(super) pool: &'a ThreadPool,
    pub(super) n_tok: usize,
    pub(super) outputs: usize,
    pub(super) out: Output,
    pub(super) y: Rows,
}

impl Run<'_> {
    /// Every output row on the pool, a chunk of whole panels per task.
    pub(super) fn panels<P: Panel>(&self, panel: &P) {
        let (outputs, n_tok) = (self.outputs, self.n_tok);
        let tasks = outputs.div_ceil(ROWS).min(self.pool.threads() * TASKS_PER_THREAD);
        let chunk = outputs.div_ceil(tasks).next_multiple_of(ROWS);
        let (stride, offset) = (self.out.stride as usize, self.out.offset as usize);
        let (gated, simd) = (self.out.epilogue == Epilogue::SiluMul, simd::level());
        let task = |i: usize| {
            let (mut main, mut up) = (panel.buf(), gated.then(|| panel.buf()));
            for o0 in (i * chunk..outputs.min((i + 1) * chunk)).step_by(ROWS) {
                let n_rows = ROWS.min(outputs - o0);
                let rows = std::array::from_fn(|r| o0 + r.min(n_rows - 1));
                panel.load(&mut main, rows);
                if let Some(up) = &mut up {
                    panel.load(up, rows.map(|r| r + outputs));
                }
                for t0 in (0..n_tok).step_by(TOKENS) {
                    let n = TOKENS.min(n_tok - t0);
                    let p = panel.tile(&main, t0, n);
                    let q = up.as_ref().map(|up| panel.tile(up, t0, n));
                    for i in 0..n {
                        // SAFETY: in bounds (`check` validated `y` for `n_tok` tokens at
                        // `out`) and written by this task only: token `t`'s outputs start at
                        // `t * stride`, `stride ≥ outputs` apart, and tasks own disjoint
                        // output rows.
                        let y = unsafe { std::slice::from_raw_parts_mut(self.y.at((t0 + i) * stride + offset + o0), n_rows) };
                        store(simd, self.out.epilogue, y, &p, q.as_ref(), i);
                    }
                }
            }
        };
        self.pool.run(outputs.div_ceil(chunk), &task);
    }
}

/// Token `i`'s products of a tile (and of its up rows' tile, gated) into its outputs `y`, one per
/// panel row, through the epilogue.
#[inline(always)]
fn store(simd: Simd, epilogue: Epilogue, y: &mut [f32], p: &Tile, up: Option<&Tile>, i: usize) {
    let v = &p[i][..y.len()];
    match (epilogue, up) {
        (Epilogue::Add, _) => y.iter_mut().zip(v).for_each(|(y, v)| *y += v),
        (Epilogue::SiluMul, Some(up)) => y.copy_from_slice(&silu_mul8(simd, &p[i], &up[i])[..y.len()]),
        _ => y.copy_from_slice(v),
    }
}

/// K-quant rows, decoded and interleaved once per panel, against Q8_K activations.
struct KPanel<'a> {
    w: &'a Weight<'a>,
    x: Vec<BlockQ8K>,
    simd: Simd,
}

impl Panel for KPanel<'_> {
    /// `[super-blocks]` of the panel's rows.
    type Buf = Vec<KRows>;

    fn buf(&self) -> Vec<KRows> {
        vec![KRows::default(); self.w.cols() / 256]
    }

    fn load(&self, buf: &mut Vec<KRows>, rows: [usize; ROWS]) {
        let size = self.w.ty().type_size();
        for (s, dst) in buf.iter_mut().enumerate() {
            let blocks = rows.map(|r| &self.w.row(r)[s * size..][..size]);
            KRows::decode(self.w.ty(), blocks, dst, self.simd);
        }
    }

    fn tile(&self, buf: &Vec<KRows>, t0: usize, n: usize) -> Tile {
        let n_sb = buf.len();
        let xs: [&[BlockQ8K]; TOKENS] = std::array::from_fn(|i| &self.x[(t0 + i.min(n - 1)) * n_sb..][..n_sb]);
        let mut p: RowTile = [[0.0; TOKENS]; ROWS];
        match self.simd {
            // SAFETY: each level implies the features its tile needs (`Simd::is_supported`),
            // and every slice holds `n_sb` super-blocks.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512Vnni => unsafe { ktile::tile_512_vnni(buf, &xs[..n], &mut p) },
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { ktile::tile_512(buf, &xs[..n], &mut p) },
            #[cfg(target_arch = "x86_64")]
            l if l.avx2() => unsafe { ktile::tile_avx2(buf, &xs[..n], &mut p) },
            _ => ktile::tile(buf, &xs[..n], &mut p),
        }
        by_token(&p)
    }
}

/// K-quant rows at the wasm32 levels, decoded once per panel, against Q8_K activations.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
struct WasmKPanel<'a> {
    w: &'a Weight<'a>,
    x: Vec<BlockQ8K>,
    simd: Simd,
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl Panel for WasmKPanel<'_> {
    /// `[ROWS][super-blocks]`.
    type Buf = Vec<KRow>;

    fn buf(&self) -> Vec<KRow> {
        vec![KRow::default(); ROWS * self.w.cols() / 256]
    }

    fn load(&self, buf: &mut Vec<KRow>, rows: [usize; ROWS]) {
        let (ty, n_sb) = (self.w.ty(), self.w.cols() / 256);
        for (r, dst) in rows.iter().zip(buf.chunks_exact_mut(n_sb)) {
            for (b, d) in self.w.row(*r).chunks_exact(ty.type_size()).zip(dst) {
                KRow::decode(ty, b, d);
            }
        }
    }

    fn tile(&self, buf: &Vec<KRow>, t0: usize, n: usize) -> Tile {
        let n_sb = self.w.cols() / 256;
        let xs: [&[BlockQ8K]; TOKENS] = std::array::from_fn(|i| &self.x[(t0 + i.min(n - 1)) * n_sb..][..n_sb]);
        let w = std::array::from_fn(|r| &buf[r * n_sb..][..n_sb]);
        let mut p: RowTile = [[0.0; TOKENS]; ROWS];
        ktile_wasm::tile_wasm(self.simd, w, &xs[..n], &mut p);
        by_token(&p)
    }
}

/// Q4_0 / Q4_1 / Q8_0 rows, decoded once per panel, against Q8_0 activations.
struct LPanel<'a> {
    w: &'a Weight<'a>,
    x: Vec<BlockQ8>,
    simd: Simd,
}

impl Panel for LPanel<'_> {
    /// `[ROWS][blocks]`.
    type Buf = Vec<LBlock>;

    fn buf(&self) -> Vec<LBlock> {
        vec![LBlock::default(); ROWS * self.w.cols() / 32]
    }

    fn load(&self, buf: &mut Vec<LBlock>, rows: [usize; ROWS]) {
        let (ty, n_b) = (self.w.ty(), self.w.cols() / 32);
        for (r, dst) in rows.iter().zip(buf.chunks_exact_mut(n_b)) {
            for (b, d) in self.w.row(*r).chunks_exact(ty.type_size()).zip(dst) {
                LBlock::decode(ty, b, d);
            }
        }
    }

    fn tile(&self, buf: &Vec<LBlock>, t0: usize, n: usize) -> Tile {
        let (ty, n_b) = (self.w.ty(), self.w.cols() / 32);
        let xs: [&[BlockQ8]; TOKENS] = std::array::from_fn(|i| &self.x[(t0 + i.min(n - 1)) * n_b..][..n_b]);
        let mut p: RowTile = [[0.0; TOKENS]; ROWS];
        // The four-row kernels, on each half of the panel.
        for (half, p) in p.chunks_exact_mut(4).enumerate() {
            let w = [0, 1, 2, 3].map(|r| &buf[(4 * half + r) * n_b..][..n_b]);
            let p: &mut [[f32; TOKENS]; 4] = p.try_into().expect("four rows");
            match self.simd {
                // SAFETY: each level implies the features its tile needs (`Simd::is_supported`).
                #[cfg(target_arch = "x86_64")]
                Simd::Avx512Vnni => unsafe { ltile::tile_avx2_vnni(ty, w, &xs[..n], p) },
                #[cfg(target_arch = "x86_64")]
                l if l.avx2() => unsafe { ltile::tile_avx2(ty, w, &xs[..n], p) },
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                l @ (Simd::Simd128 | Simd::Relaxed) => ltile::tile_wasm(l, ty, w, &xs[..n], p),
                _ => ltile::tile(ty, w, &xs[..n], p),
            }
        }
        by_token(&p)
    }
}

/// Rows dequantized to f32 once per panel, against f32 activations.
struct F32Panel<'a> {
    w: &'a Weight<'a>,
    x: &'a [f32],
    block: crate::gguf::quant::BlockDequantizer,
    avx2: bool,
}

impl Panel for F32Panel<'_> {
    /// `[ROWS][cols]`.
    type Buf = Vec<f32>;

    fn buf(&self) -> Vec<f32> {
        vec![0.0; ROWS * self.w.cols()]
    }

    fn load(&self, buf: &mut Vec<f32>, rows: [usize; ROWS]) {
        let ty = self.w.ty();
        for (r, dst) in rows.iter().zip(buf.chunks_exact_mut(self.w.cols())) {
            for (b, d) in self.w.row(*r).chunks_exact(ty.type_size()).zip(dst.chunks_exact_mut(ty.block_size())) {
                (self.block)(b, d);
            }
        }
    }

    fn tile(&self, buf: &Vec<f32>, t0: usize, n: usize) -> Tile {
        let cols = self.w.cols();
        let mut p: RowTile = [[0.0; TOKENS]; ROWS];
        // The four-row micro-kernel, on each half of the panel.
        for (half, p) in p.chunks_exact_mut(4).enumerate() {
            for k in (0..cols).step_by(COLS) {
                let len = COLS.min(cols - k);
                let w = [0, 1, 2, 3].map(|r| &buf[(4 * half + r) * cols + k..][..len]);
                for i in (0..n).step_by(2) {
                    // An odd last token pairs with itself (its second product is dropped).
                    let x = [i, (i + 1).min(n - 1)].map(|j| &self.x[(t0 + j) * cols + k..][..len]);
                    let s = match self.avx2 {
                        // SAFETY: `avx2` is set only at the levels that imply AVX2 and FMA; the
                        // slices are `len` long.
                        #[cfg(target_arch = "x86_64")]
                        true => unsafe { super::quant::ftile::tile4x2_avx2(w, x) },
                        _ => tile4x2(w, x),
                    };
                    for (pr, s) in p.iter_mut().zip(s) {
                        pr[i] += s[0];
                        if i + 1 < n {
                            pr[i + 1] += s[1];
                        }
                    }
                }
            }
        }
        by_token(&p)
    }
}
