//! Building blocks the decoder families share, each recording its dispatches into a
//! [`Program`]: [`attention`] (grouped-query self-attention with RoPE and its KV cache),
//! [`ffn`] (the gated MLP), [`head`] (token embedding, final norm, LM head and sampling).
//! Norms, RoPE tables and the kernels themselves live in `crate::kernels`.

pub mod attention;
pub mod ffn;
pub mod head;

use crate::backend::gpu::Result;
use crate::backend::{Buffer, Device, Program};
use crate::kernels::matmul;
use crate::kernels::matvec::{self, Epilogue, Output};
use crate::kernels::quant::Weight;
use crate::model::step::Products;
use crate::source::Stacked;

/// `y = x W^T` for `n` rows, by the kernel `mm` names.
pub fn linear(p: &mut Program, dev: &Device, w: &Weight, x: &Buffer, y: &Buffer, n: u32, mm: Products) -> Result<()> {
    linear_into(p, dev, w, x, y, Output::dense(w, Epilogue::Store), n, mm)
}

/// [`linear`] into the columns `out` names, with its epilogue (the tiled kernel has no
/// SiLU-gated one).
#[allow(clippy::too_many_arguments)]
pub fn linear_into(
    p: &mut Program,
    dev: &Device,
    w: &Weight,
    x: &Buffer,
    y: &Buffer,
    out: Output,
    n: u32,
    mm: Products,
) -> Result<()> {
    match mm {
        Products::Matvec => matvec::record_into(p, dev, w, x, y, out, n),
        Products::Matmul(compute) => matmul::record_into(p, dev, w, x, y, out, n, compute),
    }
}

/// The matrices of `stack` side by side: rows of `y` hold each matrix's outputs in the order
/// they were stacked (`stride` floats per row), whether the stack is one weight or several.
pub fn linear_stacked(
    p: &mut Program,
    dev: &Device,
    stack: &Stacked,
    x: &Buffer,
    (y, stride): (&Buffer, u32),
    n: u32,
    mm: Products,
) -> Result<()> {
    let mut offset = 0;
    for w in stack.weights() {
        linear_into(p, dev, w, x, y, Output { stride, offset, epilogue: Epilogue::Store }, n, mm)?;
        offset += w.rows;
    }
    Ok(())
}
