//! Matrix-vector products on the CPU, the op of `kernels::matvec`: `y[t] = W · x[t]` for a
//! few tokens, W a GGUF weight read in its block layout from bytes (a memory map needs no
//! copy), with the same [`Epilogue`]s. As llama.cpp's `ggml_compute_forward_mul_mat` does
//! for one token, the fast mode quantizes the activations once per op, and the output rows
//! are split into chunks that the pool's threads claim; a chunk runs its rows for every token
//! while they are in L1, four rows per call where the format has a four-row kernel (Q4_0,
//! Q4_1 and Q8_0 with AVX2 or NEON, Q4_K and Q6_K with AVX-512: each activation block loaded
//! once for the four).

use super::elementwise::silu;
use super::ops::prefetch;
use super::pool::ThreadPool;
use super::quant::{dequant_dot, quantize_q8, quantize_q8k, Dot4, Kernel, QuantError};
use super::simd;
use crate::gguf::GgmlType;
pub use crate::kernels::shapes::{Epilogue, Output};

/// Chunks per thread: enough for uneven progress to balance.
const TASKS_PER_THREAD: usize = 4;
/// Weight bytes below which a chunk is not worth a thread (about a microsecond of reading).
const MIN_TASK_BYTES: usize = 16 << 10;

/// How far ahead of the row being computed [`Weight::prefetch`] reads: about a memory latency
/// of streaming at one core's bandwidth. Measured on the machine this was written on (one
/// thread, 128-512 MiB matrices): fast mode +10-30%, exact mode up to 2x over no prefetch;
/// 1-2 KiB best, 4 KiB and more (or into L2 only) worse.
const PREFETCH: usize = 2 << 10;

/// How activations meet the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Activations quantized to 8 bits per block (for the block formats), integer dot products.
    Fast,
    /// f32 activations: dequantize-then-dot up to f32 rounding.
    Exact,
}

/// A matvec that cannot run as asked.
#[derive(Debug, thiserror::Error)]
pub enum MatvecError {
    #[error("no CPU matvec for {0} weights")]
    Unsupported(GgmlType),
    #[error("a {ty} weight of {rows}x{cols} cannot be {bytes} bytes (rows of whole blocks of {block})")]
    WeightBytes { ty: GgmlType, rows: usize, cols: usize, bytes: usize, block: usize },
    #[error("matvec {what}: {got} values, {need} needed")]
    Length { what: &'static str, got: usize, need: usize },
    #[error("a SiLU-gated product needs an even row count, not {0}")]
    OddGated(usize),
    #[error("a SiLU-gated product of a repacked weight needs whole panels of {panel} rows per half, not {outputs}")]
    GatedPanels { outputs: usize, panel: usize },
    #[error("output stride {stride} is below the {outputs} outputs of a token")]
    Stride { stride: usize, outputs: usize },
    #[error(transparent)]
    Quant(#[from] QuantError),
}

impl MatvecError {
    /// Whether the allocator refused the op's memory (not a wrong shape or format).
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, MatvecError::Quant(QuantError::OutOfMemory { .. }))
    }
}

/// A `[rows][cols]` weight matrix in a GGUF format: `rows` rows of whole blocks, in one run of
/// bytes or in several (a stack of matrices used where each lies in a mapped file).
#[derive(Clone, Copy, Debug)]
pub struct Weight<'a> {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// The first part's rows, and the other parts in row order (each whole rows).
    first: &'a [u8],
    rest: &'a [&'a [u8]],
}

impl<'a> Weight<'a> {
    /// Checks that `bytes` holds `rows` rows of `cols` (at least one) values of `ty`.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, bytes: &'a [u8]) -> Result<Weight<'a>, MatvecError> {
        let w = Self::stacked(ty, cols, bytes, &[])?;
        match w.rows == rows {
            true => Ok(w),
            false => Err(MatvecError::WeightBytes { ty, rows, cols, bytes: bytes.len(), block: ty.block_size() }),
        }
    }

    /// The rows of `first` then of each of `rest`, each a whole number of rows of `cols` (at
    /// least one) values of `ty`.
    pub fn stacked(ty: GgmlType, cols: usize, first: &'a [u8], rest: &'a [&'a [u8]]) -> Result<Weight<'a>, MatvecError> {
        if !ty.is_supported() {
            return Err(MatvecError::Unsupported(ty));
        }
        let block = ty.block_size();
        let row_bytes = cols / block * ty.type_size();
        let mut rows = 0;
        for part in std::iter::once(&first).chain(rest) {
            if cols == 0 || !cols.is_multiple_of(block) || !part.len().is_multiple_of(row_bytes) {
                return Err(MatvecError::WeightBytes { ty, rows: part.len() / row_bytes.max(1), cols, bytes: part.len(), block });
            }
            rows += part.len() / row_bytes;
        }
        Ok(Weight { ty, rows, cols, row_bytes, first, rest })
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

    /// Its bytes.
    pub fn len(&self) -> usize {
        self.rows * self.row_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// `y` as `[n_tok][outputs]`: the rows, or half of them for [`Epilogue::SiluMul`].
    pub fn output(&self, epilogue: Epilogue) -> Output {
        let stride = if epilogue == Epilogue::SiluMul { self.rows / 2 } else { self.rows };
        Output { stride: stride as u32, offset: 0, epilogue }
    }

    /// The part holding row `r`, and `r`'s byte offset in it.
    #[inline]
    fn locate(&self, r: usize) -> (&'a [u8], usize) {
        let mut at = r * self.row_bytes;
        if at < self.first.len() {
            return (self.first, at);
        }
        at -= self.first.len();
        for part in self.rest {
            if at < part.len() {
                return (part, at);
            }
            at -= part.len();
        }
        panic!("row {r} of a {}-row weight", self.rows)
    }

    pub(super) fn row(&self, r: usize) -> &'a [u8] {
        let (part, at) = self.locate(r);
        &part[at..at + self.row_bytes]
    }

    /// Row `r`, having asked for the cache lines [`PREFETCH`] bytes past it (a row's worth,
    /// within its part), so that the weights stream from memory while the row computes: the
    /// hardware prefetchers stop at each 4 KiB page and start again only after a few misses.
    fn fetch(&self, r: usize) -> &'a [u8] {
        let (part, at) = self.locate(r);
        // Only x86-64 has the instruction (`prefetch`): elsewhere the loop would be bounds checks.
        if cfg!(target_arch = "x86_64") {
            let start = (at + PREFETCH) & !63;
            let end = (at + self.row_bytes + PREFETCH).min(part.len());
            for line in (start..end).step_by(64) {
                prefetch(&part[line]);
            }
        }
        &part[at..at + self.row_bytes]
    }
}

/// `y[t][r] = Σ_k w[r][k] x[t][k]` for `t < n_tok`: `x` is `[n_tok][w.cols]`, `y` is
/// `[n_tok][w.rows]` (longer slices are fine; the rest is untouched).
pub fn matvec(pool: &ThreadPool, w: &Weight, x: &[f32], y: &mut [f32], n_tok: usize, mode: Mode) -> Result<(), MatvecError> {
    matvec_into(pool, w, x, y, w.output(Epilogue::Store), n_tok, mode)
}

/// [`matvec`] into the columns `out` names (token `t`'s output `r` is
/// `y[t * stride + offset + r]`), with its epilogue.
pub fn matvec_into(
    pool: &ThreadPool,
    w: &Weight,
    x: &[f32],
    y: &mut [f32],
    out: Output,
    n_tok: usize,
    mode: Mode,
) -> Result<(), MatvecError> {
    let outputs = check((w.rows, w.cols), x, y, out, n_tok)?;
    if n_tok == 0 || outputs == 0 {
        return Ok(());
    }
    let x = &x[..n_tok * w.cols];
    let kernel = Kernel::of(w.ty, mode == Mode::Fast, simd::level()).ok_or(MatvecError::Unsupported(w.ty))?;
    let run = Run { pool, w, n_tok, outputs, out, y: Rows(y.as_mut_ptr()) };
    match kernel {
        Kernel::F32(dot) => run.rows(x, &dot, None),
        Kernel::Dequant(ty, block) => run.rows(x, &|r, x| dequant_dot(ty, block, r, x), None),
        Kernel::Q8(dot, dot4) => run.rows(&quantize_q8(x)?, &dot, dot4.as_ref().map(|d| d as _)),
        Kernel::Q8K(dot, dot4) => run.rows(&quantize_q8k(x)?, &dot, dot4.as_ref().map(|d| d as _)),
    }
    Ok(())
}

/// Checks `x`, `y` and `out` for `n_tok` tokens of `w` (as [`matvec_into`] and
/// [`matmul_into`](super::matmul::matmul_into) take them); returns the outputs per token.
pub(super) fn check((rows, cols): (usize, usize), x: &[f32], y: &[f32], out: Output, n_tok: usize) -> Result<usize, MatvecError> {
    let gated = out.epilogue == Epilogue::SiluMul;
    if gated && !rows.is_multiple_of(2) {
        return Err(MatvecError::OddGated(rows));
    }
    let outputs = if gated { rows / 2 } else { rows };
    let (stride, offset) = (out.stride as usize, out.offset as usize);
    if n_tok > 1 && stride < outputs {
        return Err(MatvecError::Stride { stride, outputs });
    }
    let need_x = n_tok.saturating_mul(cols);
    let need_y = n_tok.saturating_sub(1).saturating_mul(stride).saturating_add(offset).saturating_add(outputs);
    if x.len() < need_x {
        return Err(MatvecError::Length { what: "x", got: x.len(), need: need_x });
    }
    if n_tok > 0 && y.len() < need_y {
        return Err(MatvecError::Length { what: "y", got: y.len(), need: need_y });
    }
    Ok(outputs)
}

/// `y`, written by the tasks at disjoint indices.
pub(super) struct Rows(pub(super) *mut f32);

// SAFETY: tasks write through the pointer only at the indices of their own rows (see `rows`).
unsafe impl Sync for Rows {}

impl Rows {
    pub(super) fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// One checked matvec: `y` validated for `n_tok` tokens of `outputs` values at `out`.
struct Run<'a> {
    pool: &'a ThreadPool,
    w: &'a Weight<'a>,
    n_tok: usize,
    outputs: usize,
    out: Output,
    y: Rows,
}

impl Run<'_> {
    /// Runs every output row against `acts` (`n_tok` equal parts) on the pool, four rows per
    /// call where the format has a four-row kernel `dot4`.
    fn rows<A: Sync>(&self, acts: &[A], dot: &(dyn Fn(&[u8], &[A]) -> f32 + Sync), dot4: Option<&Dot4<A>>) {
        let (w, outputs) = (self.w, self.outputs);
        let tasks = (w.len() / MIN_TASK_BYTES).clamp(1, self.pool.threads() * TASKS_PER_THREAD);
        // Chunks of whole quads, so that only the last one has a partial quad.
        let chunk = outputs.div_ceil(tasks).next_multiple_of(4);
        let gated = self.out.epilogue == Epilogue::SiluMul;
        let task = |i: usize| {
            let end = outputs.min((i + 1) * chunk);
            let mut r = i * chunk;
            while r < end {
                let n = if dot4.is_some() { 4.min(end - r) } else { 1 };
                // The group's rows (a partial quad repeats its last), and their SiLU gates'.
                let gate: [&[u8]; 4] = std::array::from_fn(|k| w.fetch(r + k.min(n - 1)));
                let up = gated.then(|| -> [&[u8]; 4] { std::array::from_fn(|k| w.fetch(r + outputs + k.min(n - 1))) });
                for (t, xt) in acts.chunks_exact(acts.len() / self.n_tok).enumerate() {
                    match dot4 {
                        Some(dot4) if n == 4 => {
                            let (g, u) = (dot4(gate, xt), up.map(|up| dot4(up, xt)));
                            for k in 0..4 {
                                self.store(t, r + k, g[k], u.map(|u| u[k]));
                            }
                        }
                        _ => {
                            for k in 0..n {
                                self.store(t, r + k, dot(gate[k], xt), up.map(|up| dot(up[k], xt)));
                            }
                        }
                    }
                }
                r += n;
            }
        };
        self.pool.run(outputs.div_ceil(chunk), &task);
    }

    /// Applies the epilogue to token `t`'s output `r`, `v` (and the SiLU gate's second
    /// product `up`).
    fn store(&self, t: usize, r: usize, v: f32, up: Option<f32>) {
        // SAFETY: in bounds (`matvec_into` checked `y` for `n_tok` tokens at `out`) and
        // written by this task only: `t * stride + r` differs for every (t, r < outputs) as
        // `stride ≥ outputs`, and tasks own disjoint rows.
        let y = unsafe { &mut *self.y.at(t * self.out.stride as usize + self.out.offset as usize + r) };
        match (self.out.epilogue, up) {
            (Epilogue::Store, _) => *y = v,
            (Epilogue::Add, _) => *y += v,
            (Epilogue::SiluMul, Some(up)) => *y = silu(v) * up,
            (Epilogue::SiluMul, None) => unreachable!("a gated product without its second row"),
        }
    }
}
