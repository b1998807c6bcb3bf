//! Weights repacked once for the matmul, so that its panels are read as they lie: no decoding
//! step per product, from one token (a decode step) up (llama.cpp's `ggml-cpu/repack.cpp`
//! eight-row layouts, which its `gemv` and `gemm` share). A [`Repacked`] weight holds each
//! panel of [`ROWS`] rows as eight rows' blocks in a row (`quant/q4k_x8.rs`,
//! `quant/q6k_x8.rs`, `quant/legacy_x8.rs`: the codes interleaved by eight bytes and kept at
//! their width), and [`matmul_repacked`] runs the matmul's chunks of panels and tiles of tokens
//! on them. A token's result is the same bits whatever tokens share the product: for Q4_K and
//! Q6_K the matvec's (and [`matmul`](super::matmul::matmul)'s); for Q4_0, Q4_1 and Q8_0 its own
//! order of f32 steps, within rounding of the matvec's.
//!
//! Repacking pays where the tiles that read the layout are faster than the ones that decode:
//! at the AVX-512 levels ([`Repacked::takes`]). The repacked copy is about as large as the
//! weight (`Q4_K` 152 bytes per row's super-block against 144, `Q6_K` 216 against 210, the
//! 32-element formats the same bytes).

use std::mem::MaybeUninit;
use std::sync::{Mutex, PoisonError};

use super::matmul::{Panel, Run, Tile, ROWS, TASKS_PER_THREAD, TOKENS};
use super::matvec::{check, MatvecError, Rows, Weight};
use super::pool::ThreadPool;
use super::quant::legacy_x8::{Q40BlockX8, Q41BlockX8, Q80BlockX8};
use super::quant::q4k_x8::Q4KBlockX8;
use super::quant::q6k_x8::Q6KBlockX8;
use super::quant::{BlockX8, QuantError};
use super::simd::{self, Simd};
use crate::gguf::GgmlType;
use crate::kernels::shapes::{Epilogue, Output};

/// A weight repacked once, eight rows at a time (see the module header).
pub struct Repacked {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    panels: Panels,
}

/// `[panel][block]`; the last panel's missing rows repeat its last row.
enum Panels {
    Q4K(Vec<Q4KBlockX8>),
    Q6K(Vec<Q6KBlockX8>),
    Q40(Vec<Q40BlockX8>),
    Q41(Vec<Q41BlockX8>),
    Q80(Vec<Q80BlockX8>),
}

impl Repacked {
    /// Whether `ty` weights are repacked for their fast-mode products at level `simd`: where
    /// the repacked tiles are faster than the matvec and the decoding tiles (`cpu_bench batch`).
    pub fn takes(ty: GgmlType, simd: Simd) -> bool {
        Repacked::block_bytes(ty).is_some() && Repacked::at_level(simd)
    }

    /// Whether level `simd` repacks any format.
    pub fn at_level(simd: Simd) -> bool {
        matches!(simd, Simd::Avx512 | Simd::Avx512Vnni)
    }

    /// Bytes of a repacked `rows x cols` matrix of `ty` (0 for a format never repacked).
    pub fn bytes_for(ty: GgmlType, rows: usize, cols: usize) -> u64 {
        let blocks = rows.div_ceil(ROWS) as u64 * (cols / ty.block_size()) as u64;
        Repacked::block_bytes(ty).map_or(0, |b| blocks * b as u64)
    }

    /// Bytes of eight rows' repacked block of `ty`, for the formats repacked.
    fn block_bytes(ty: GgmlType) -> Option<usize> {
        match ty {
            GgmlType::Q4_K => Some(size_of::<Q4KBlockX8>()),
            GgmlType::Q6_K => Some(size_of::<Q6KBlockX8>()),
            GgmlType::Q4_0 => Some(size_of::<Q40BlockX8>()),
            GgmlType::Q4_1 => Some(size_of::<Q41BlockX8>()),
            GgmlType::Q8_0 => Some(size_of::<Q80BlockX8>()),
            _ => None,
        }
    }

    /// Repacks `w` (Q4_K, Q6_K, Q4_0, Q4_1 or Q8_0), its panels shared out to the pool's
    /// threads.
    pub fn pack(pool: &ThreadPool, w: &Weight) -> Result<Repacked, MatvecError> {
        let panels = match w.ty() {
            GgmlType::Q4_K => Panels::Q4K(pack_panels(pool, w)?),
            GgmlType::Q6_K => Panels::Q6K(pack_panels(pool, w)?),
            GgmlType::Q4_0 => Panels::Q40(pack_panels(pool, w)?),
            GgmlType::Q4_1 => Panels::Q41(pack_panels(pool, w)?),
            GgmlType::Q8_0 => Panels::Q80(pack_panels(pool, w)?),
            ty => return Err(MatvecError::Unsupported(ty)),
        };
        Ok(Repacked { ty: w.ty(), rows: w.rows(), cols: w.cols(), panels })
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// `w`'s panels of `B` blocks, written by the pool's tasks (the pages come to each thread as it
/// first writes them).
fn pack_panels<B: BlockX8>(pool: &ThreadPool, w: &Weight) -> Result<Vec<B>, MatvecError> {
    let (rows, size) = (w.rows(), w.ty().type_size());
    let (n_panels, n_sb) = (rows.div_ceil(ROWS), w.cols() / w.ty().block_size());
    let n = n_panels * n_sb;
    let mut panels = Vec::new();
    panels.try_reserve_exact(n).map_err(|_| QuantError::OutOfMemory { bytes: n.saturating_mul(size_of::<B>()) })?;
    let per_task = n_panels.div_ceil(pool.threads() * TASKS_PER_THREAD);
    let chunks: Vec<Mutex<&mut [MaybeUninit<B>]>> =
        panels.spare_capacity_mut()[..n].chunks_mut(per_task * n_sb).map(Mutex::new).collect();
    let task = |i: usize| {
        let mut chunk = chunks[i].lock().unwrap_or_else(PoisonError::into_inner);
        for (p, panel) in chunk.chunks_exact_mut(n_sb).enumerate() {
            let o0 = (i * per_task + p) * ROWS;
            let row: [&[u8]; ROWS] = std::array::from_fn(|r| w.row((o0 + r).min(rows - 1)));
            for (s, dst) in panel.iter_mut().enumerate() {
                dst.write(B::pack(row.map(|b| &b[s * size..][..size])));
            }
        }
    };
    pool.run(chunks.len(), &task);
    drop(chunks);
    // SAFETY: the tasks wrote every one of the `n` (whole chunks of whole panels, each
    // super-block of each).
    unsafe { panels.set_len(n) };
    Ok(panels)
}

/// The matmul of a [`Repacked`] weight (fast mode): `y[t][r] = Σ_k w[r][k] x[t][k]` for
/// `t < n_tok`, `x` `[n_tok][w.cols]`, `y` `[n_tok][w.rows]`.
pub fn matmul_repacked(pool: &ThreadPool, w: &Repacked, x: &[f32], y: &mut [f32], n_tok: usize) -> Result<(), MatvecError> {
    let out = Output { stride: w.rows as u32, offset: 0, epilogue: Epilogue::Store };
    matmul_repacked_into(pool, w, x, y, out, n_tok)
}

/// [`matmul_repacked`] into the columns `out` names, with its epilogue (a SiLU-gated one where
/// each half of the rows is whole panels: its up rows are panels of their own).
pub fn matmul_repacked_into(
    pool: &ThreadPool,
    w: &Repacked,
    x: &[f32],
    y: &mut [f32],
    out: Output,
    n_tok: usize,
) -> Result<(), MatvecError> {
    let outputs = check((w.rows, w.cols), x, y, out, n_tok)?;
    if out.epilogue == Epilogue::SiluMul && !outputs.is_multiple_of(ROWS) {
        return Err(MatvecError::GatedPanels { outputs, panel: ROWS });
    }
    if n_tok == 0 || outputs == 0 {
        return Ok(());
    }
    let run = Run { pool, n_tok, outputs, out, y: Rows(y.as_mut_ptr()) };
    let (x, blocks, simd) = (&x[..n_tok * w.cols], w.cols / w.ty.block_size(), simd::level());
    match &w.panels {
        Panels::Q4K(p) => run.panels(&RepackedPanel::new(p, blocks, x, simd)?),
        Panels::Q6K(p) => run.panels(&RepackedPanel::new(p, blocks, x, simd)?),
        Panels::Q40(p) => run.panels(&RepackedPanel::new(p, blocks, x, simd)?),
        Panels::Q41(p) => run.panels(&RepackedPanel::new(p, blocks, x, simd)?),
        Panels::Q80(p) => run.panels(&RepackedPanel::new(p, blocks, x, simd)?),
    }
    Ok(())
}

/// A repacked weight's panels of `B` blocks against the tokens' quantized activations:
/// loading a panel is naming its first block.
struct RepackedPanel<'a, B: BlockX8> {
    panels: &'a [B],
    /// Blocks per row.
    blocks: usize,
    x: Vec<B::Act>,
    simd: Simd,
}

impl<'a, B: BlockX8> RepackedPanel<'a, B> {
    fn new(panels: &'a [B], blocks: usize, x: &[f32], simd: Simd) -> Result<Self, QuantError> {
        Ok(RepackedPanel { panels, blocks, x: B::quantize(x)?, simd })
    }
}

impl<B: BlockX8> Panel for RepackedPanel<'_, B> {
    /// The panel's first block.
    type Buf = usize;

    fn buf(&self) -> usize {
        0
    }

    fn load(&self, buf: &mut usize, rows: [usize; ROWS]) {
        *buf = rows[0] / ROWS * self.blocks;
    }

    fn tile(&self, buf: &usize, t0: usize, n: usize) -> Tile {
        let xs: [&[B::Act]; TOKENS] = std::array::from_fn(|i| &self.x[(t0 + i.min(n - 1)) * self.blocks..][..self.blocks]);
        let mut p: Tile = [[0.0; ROWS]; TOKENS];
        B::tile(self.simd, &self.panels[*buf..][..self.blocks], &xs[..n], &mut p);
        p
    }
}
