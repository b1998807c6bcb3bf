//! The SiLU-gated MLP (SwiGLU, Shazeer 2020): `down(silu(gate(x)) * up(x))`, as in
//! transformers' `LlamaMLP`, added into the residual stream.
//!
//! gate and up are stacked `[gate; up]` at load when their types allow: one decode dispatch
//! then computes both products and the SiLU-gated one in its epilogue; prefill (and
//! unstacked weights) write `[n][2 n_ff]` and gate it with `silu_mul_halves`. `down` adds
//! into the residual in its epilogue.

use crate::backend::gpu::Result;
use crate::backend::{Buffer, Device, Program};
use crate::kernels::elementwise;
use crate::kernels::matvec::{self, Epilogue, Output};
use crate::kernels::quant::Weight;
use crate::source::{load_stacked, LoadError, LoadQuant, Stacked, WeightLoader};

use super::{linear_into, linear_stacked};
use crate::model::step::Products;

/// The matrices of a gated MLP.
pub struct GatedFfn {
    /// gate and up, `[n_ff][n_embd]` each, stacked.
    pub gate_up: Stacked,
    pub down: Weight, // [n_embd][n_ff]
}

/// Scratch of the largest chunk: `gate_up` `[rows][2 n_ff]`, `act` `[rows][n_ff]` f32.
pub struct FfnScratch<'a> {
    pub gate_up: &'a Buffer,
    pub act: &'a Buffer,
}

impl GatedFfn {
    /// Loads `{prefix}_gate`, `{prefix}_up` (stacked where their types allow) and
    /// `{prefix}_down` (llama.cpp's `blk.N.ffn`), requantized to `quant`.
    pub fn load(
        dev: &Device,
        src: &mut dyn WeightLoader,
        prefix: &str,
        d: u32,
        ff: u32,
        quant: LoadQuant,
    ) -> std::result::Result<GatedFfn, LoadError> {
        let (gate, up) = (format!("{prefix}_gate.weight"), format!("{prefix}_up.weight"));
        Ok(GatedFfn {
            gate_up: load_stacked(dev, src, &format!("{prefix}_gate_up"), &[(&gate, ff), (&up, ff)], d, quant)?,
            down: src.matrix(dev, &format!("{prefix}_down.weight"), d, ff, quant)?,
        })
    }

    /// `residual += down(silu(gate(x)) * up(x))` over `n` rows.
    pub fn record(
        &self,
        p: &mut Program,
        dev: &Device,
        x: &Buffer,
        s: FfnScratch<'_>,
        residual: &Buffer,
        n: u32,
        mm: Products,
    ) -> Result<()> {
        let ff = self.down.cols;
        match self.gate_up.one() {
            Some(w) if mm == Products::Matvec => {
                matvec::record_into(p, dev, w, x, s.act, Output::dense(w, Epilogue::SiluMul), n)?
            }
            _ => {
                linear_stacked(p, dev, &self.gate_up, x, (s.gate_up, 2 * ff), n, mm)?;
                elementwise::silu_mul_halves(p, dev, s.gate_up, s.act, n, ff)?;
            }
        }
        let out = Output { stride: self.down.rows, offset: 0, epilogue: Epilogue::Add };
        linear_into(p, dev, &self.down, s.act, residual, out, n, mm)
    }

    pub fn matrices(&self) -> Vec<&Weight> {
        self.gate_up.weights().iter().chain([&self.down]).collect()
    }
}
