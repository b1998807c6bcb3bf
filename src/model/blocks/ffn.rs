//! The SiLU-gated MLP (SwiGLU, Shazeer 2020): `down(silu(gate(x)) * up(x))`, as in
//! transformers' `LlamaMLP`; the residual add is the caller's.

use crate::gpu::{Gpu, Program, Result};
use crate::kernels::elementwise;
use crate::kernels::matmul::MatmulCompute;
use crate::kernels::quant::GpuWeight;
use crate::source::{LoadError, LoadQuant, WeightLoader};

use super::linear;

/// The three matrices of a gated MLP.
pub struct GatedFfn {
    pub gate: GpuWeight, // [n_ff][n_embd]
    pub up: GpuWeight,   // [n_ff][n_embd]
    pub down: GpuWeight, // [n_embd][n_ff]
}

/// Scratch of `[rows][n_ff]` f32 each.
pub struct FfnScratch<'a> {
    pub gate: &'a wgpu::Buffer,
    pub up: &'a wgpu::Buffer,
}

impl GatedFfn {
    /// Loads `{prefix}_gate`, `{prefix}_up`, `{prefix}_down` (llama.cpp's `blk.N.ffn`), requantized
    /// to `quant`.
    pub fn load(
        gpu: &Gpu,
        src: &mut dyn WeightLoader,
        prefix: &str,
        d: u32,
        ff: u32,
        quant: LoadQuant,
    ) -> std::result::Result<GatedFfn, LoadError> {
        let mut matrix = |s: &str, rows, cols| src.matrix(gpu, &format!("{prefix}_{s}.weight"), rows, cols, quant);
        Ok(GatedFfn { gate: matrix("gate", ff, d)?, up: matrix("up", ff, d)?, down: matrix("down", d, ff)? })
    }

    /// `y = down(silu(gate(x)) * up(x))` over `n` rows.
    pub fn record(
        &self,
        p: &mut Program,
        gpu: &Gpu,
        x: &wgpu::Buffer,
        s: FfnScratch<'_>,
        y: &wgpu::Buffer,
        n: u32,
        mm: MatmulCompute,
    ) -> Result<()> {
        linear(p, gpu, &self.gate, x, s.gate, n, mm)?;
        linear(p, gpu, &self.up, x, s.up, n, mm)?;
        elementwise::silu_mul_inplace(p, gpu, s.up, s.gate, n * self.gate.rows)?;
        linear(p, gpu, &self.down, s.gate, y, n, mm)
    }

    pub fn matrices(&self) -> [&GpuWeight; 3] {
        [&self.gate, &self.up, &self.down]
    }
}
