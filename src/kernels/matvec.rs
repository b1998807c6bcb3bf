//! Matrix-vector products for decode: `y[t] = W · x[t]` for a few tokens, W a [`Weight`] in
//! any supported format, with epilogues that fold the residual add and the SiLU-gated product
//! into the op ([`Epilogue`]). The GPU side in `backend::gpu::matvec` (`shaders/matvec.wgsl`,
//! its launch shapes), the CPU side in `backend::cpu::matvec`; `cpu_product` records either
//! CPU product (this one and the prefill matmul).

pub use super::shapes::{Epilogue, Output};

use super::quant::{CpuWeight, Weight};
use crate::backend::gpu::{self, GpuError, Result};
use crate::backend::{cpu, Buffer, Device, On, Program};

impl Output {
    /// `y` is `[n_tok][outputs]`: the weight's rows, or half of them for [`Epilogue::SiluMul`].
    pub fn dense(w: &Weight, epilogue: Epilogue) -> Output {
        let stride = if epilogue == Epilogue::SiluMul { w.rows / 2 } else { w.rows };
        Output { stride, offset: 0, epilogue }
    }
}

/// Which CPU kernel computes a product: the decode matvec or the prefill matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Product {
    Matvec,
    Matmul,
}

/// Records a product of `w` on the CPU: token `t` reads row `x.1 + t` of `x.0` and writes row
/// `y.1 + t` of `y.0` as `out` says. The weight's bytes are borrowed when the op runs.
#[allow(clippy::too_many_arguments)]
pub(super) fn cpu_product(
    prog: &mut cpu::Program,
    dev: &cpu::Device,
    product: Product,
    w: &Weight,
    (x, x_row0): (&Buffer, u32),
    (y, y_row0): (&Buffer, u32),
    out: Output,
    n_tok: u32,
) -> Result<()> {
    let (weight, x, y) = (CpuWeight::of(w)?, x.cpu()?.clone(), y.cpu()?.clone());
    let (rows, cols) = (w.rows as usize, w.cols as usize);
    let (n, mode) = (n_tok as usize, dev.mode);
    let outputs = if out.epilogue == Epilogue::SiluMul { rows / 2 } else { rows };
    let x_range = x_row0 as usize * cols..(x_row0 as usize + n) * cols;
    let y_start = y_row0 as usize * out.stride as usize;
    let y_end = y_start + (n.max(1) - 1) * out.stride as usize + out.offset as usize + outputs;
    let name = match product {
        Product::Matvec => "matvec",
        Product::Matmul => "matmul",
    };
    if x_range.end as u64 * 4 > x.size() || y_end as u64 * 4 > y.size() {
        let (x, y) = (x.size(), y.size());
        return Err(GpuError::Shape(format!("{name} {}: {n} rows need x {x_range:?}, y ..{y_end} (x {x} B, y {y} B)", w.label)));
    }
    prog.push(name, move |pool| {
        let (x, mut y) = (x.read_n(x_range.end)?, y.write_n(y_end)?);
        let (x, y) = (&x[x_range.clone()], &mut y[y_start..]);
        weight.with(|w| {
            // The weight repacked where that is faster, else a batched step's tokens on the
            // matmul's tiles where that is: the same bits every way.
            if let Some(packed) = weight.packed(pool, w, mode, out) {
                cpu::matmul_repacked_into(pool, &packed, x, y, out, n)?;
                return Ok(());
            }
            match product {
                Product::Matvec if !cpu::matmul::takes_decode(w.ty(), mode, n) => cpu::matvec_into(pool, w, x, y, out, n, mode)?,
                Product::Matvec | Product::Matmul => cpu::matmul_into(pool, w, x, y, out, n, mode)?,
            }
            Ok(())
        })
    });
    Ok(())
}

/// Records `y[t][r] = sum_k w[r][k] * x[t][k]` for `t < n_tok`: `x` is `[n_tok][w.cols]` f32,
/// `y` is `[n_tok][w.rows]` f32. Meant for small `n_tok` (decode); prefill uses
/// [`super::matmul::record`]. One dispatch per weight part.
pub fn record(prog: &mut Program, dev: &Device, w: &Weight, x: &Buffer, y: &Buffer, n_tok: u32) -> Result<()> {
    record_into(prog, dev, w, x, y, Output::dense(w, Epilogue::Store), n_tok)
}

/// [`record`] into the columns `out` names, with its epilogue.
pub fn record_into(prog: &mut Program, dev: &Device, w: &Weight, x: &Buffer, y: &Buffer, out: Output, n_tok: u32) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::matvec::record_into(prog, gpu, w, x.gpu()?, y.gpu()?, out, n_tok),
        On::Cpu(prog, cpu) => cpu_product(prog, cpu, Product::Matvec, w, (x, 0), (y, 0), out, n_tok),
    }
}

/// CPU reference of [`record`] on dequantized `w` (`[rows][cols]` f32), f64 accumulation.
pub fn matvec_ref(w: &[f32], rows: usize, cols: usize, x: &[f32], n_tok: usize) -> Vec<f32> {
    let mut y = vec![0.0; n_tok * rows];
    for t in 0..n_tok {
        let xt = &x[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let wr = &w[r * cols..(r + 1) * cols];
            y[t * rows + r] = wr.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32;
        }
    }
    y
}
