//! The prefill matmul's dispatches (`shaders/matmul.wgsl`, after the decoders of
//! `shaders/quant.wgsl`, a shape prelude and a precision prelude): `Y = X · Wᵀ` with X `[m][k]`
//! f32 and W a [`Weight`] `[n][k]` in any supported format, dequantized tile by tile into
//! workgroup memory, one dispatch per weight part. Shared-memory SGEMM tiling, K step 32;
//! reference: llama.cpp `mul_mat` (ggml-webgpu / ggml-vulkan).
//!
//! Launch shapes ([`MatmulLaunch`], from the adapter's [`Geometry`] and workgroup memory):
//! - CPU: 64 x 64 output tiles, 4 x 4 register blocks per thread, load / barrier / products /
//!   barrier (the shape tuned on lavapipe).
//! - GPU: 128 (tokens) x 64 (features) tiles, 8 x 4 register blocks, the next K tile read
//!   and decoded into registers during the current tile's products, conflict-free
//!   workgroup-memory stores. The 128 side is M: each weight is decoded once per 128 tokens
//!   (4 times in a GPU's 512-token prefill chunk), and short prompts keep N / 64 workgroups. It needs 24 KiB of workgroup
//!   memory with f32 tiles (12 KiB f16); an adapter with less gets the CPU shape.
//!
//! [`MatmulCompute::F16`] (devices with `shader-f16` only) stages f16 tiles and sums f16
//! products per K step of 32 into f32 totals: half the workgroup memory and, on GPUs with
//! fast f16, twice the math rate, for ~1e-3 relative error (see `tests/kernels_matmul.rs`).
//! [`record`] writes into a column window of a wider output and can add into it (the
//! residual add of `wo` and `ffn_down`).

use bytemuck::{Pod, Zeroable};

use super::quant::{layout, specialise, WLayout};
use super::{check_len, grid_1d, Access, Arg, Caps, Geometry, Gpu, GpuError, KernelSpec, Launch, Program, Result, WeightRead};
use crate::kernels::quant::Weight;
use crate::kernels::shapes::{Epilogue, MatmulCompute, Output};

pub(super) const SHADER: &str = include_str!("../../../shaders/matmul.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];
/// Invocations per workgroup, K step (`BK` in the shader).
const INVOCATIONS: u32 = 256;
const TILE_K: u32 = 32;

/// The prelude that sets the shader's tile type for `compute` (`enable f16;` comes first in
/// the module).
pub(super) fn compute_prelude(compute: MatmulCompute) -> &'static str {
    match compute {
        MatmulCompute::F32 => "alias MMT = f32;\nconst MM_F16 = false;\n",
        MatmulCompute::F16 => "enable f16;\nalias MMT = f16;\nconst MM_F16 = true;\n",
    }
}

/// The launch shape of the tiled matmul (the shader's `MM_BM` / `MM_GPU` prelude).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulLaunch {
    /// Output rows (tokens) per workgroup: 64 (CPU) or 128 (GPU).
    pub tile_m: u32,
    /// Output columns (features) per workgroup.
    pub tile_n: u32,
    pub invocations: u32,
    /// The GPU shape: 8 x 4 register blocks, next tile prefetched into registers, rows-first
    /// loader order.
    pub gpu: bool,
    /// Workgroup memory of the X and W tiles.
    pub workgroup_bytes: u32,
}

impl MatmulLaunch {
    /// The shape for `geometry`, or the CPU shape where the device's workgroup memory
    /// (`caps.max_workgroup_storage`) is smaller than the GPU shape's tiles.
    pub fn of(geometry: Geometry, caps: &Caps, compute: MatmulCompute) -> MatmulLaunch {
        let gpu = MatmulLaunch::shape(true, compute);
        if geometry == Geometry::Gpu && gpu.workgroup_bytes <= caps.max_workgroup_storage {
            gpu
        } else {
            MatmulLaunch::shape(false, compute)
        }
    }

    fn shape(gpu: bool, compute: MatmulCompute) -> MatmulLaunch {
        let tile_m = if gpu { 128 } else { 64 };
        let tile_n = 64;
        let elem = if compute == MatmulCompute::F16 { 2 } else { 4 };
        MatmulLaunch { tile_m, tile_n, invocations: INVOCATIONS, gpu, workgroup_bytes: (tile_m + tile_n) * TILE_K * elem }
    }

    /// Accumulators per invocation (the register block).
    pub fn outputs_per_invocation(&self) -> u32 {
        self.tile_m * self.tile_n / self.invocations
    }

    /// The grid of an `m`-row product with a weight part of `rows` rows: x/y = N tiles, z = M tiles.
    pub fn grid(&self, rows: u32, m: u32) -> [u32; 3] {
        let mut grid = grid_1d(rows.div_ceil(self.tile_n));
        grid[2] = m.div_ceil(self.tile_m).max(1);
        grid
    }

    /// The prelude that sets the shape's constants.
    pub(super) fn prelude(&self) -> &'static str {
        match self.gpu {
            true => SHAPE_GPU,
            false => SHAPE_CPU,
        }
    }
}

/// Shape preludes of the shader (after the precision prelude, which may hold `enable f16;`).
pub(super) const SHAPE_CPU: &str = "const MM_BM = 64u;\nconst MM_GPU = false;\n";
pub(super) const SHAPE_GPU: &str = "const MM_BM = 128u;\nconst MM_GPU = true;\n";

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    layout: WLayout,
    m: u32,
    n: u32,
    k: u32,
    row_offset: u32,
    y_stride: u32,
    x_stride: u32,
    x_row0: u32,
    y_row0: u32,
}

/// Records `y[y_row0 + i][r] (+)= sum_k x[x_row0 + i][k] * w[r][k]` for `i < m` into the
/// columns `out` names ([`Epilogue::Store`] or [`Epilogue::Add`]) at `compute`'s precision
/// ([`MatmulCompute::F16`] fails on a device without `shader-f16`).
#[allow(clippy::too_many_arguments)]
pub fn record(
    prog: &mut Program,
    gpu: &Gpu,
    w: &Weight,
    (x, x_row0): (&wgpu::Buffer, u32),
    (y, y_row0): (&wgpu::Buffer, u32),
    out: Output,
    m: u32,
    compute: MatmulCompute,
) -> Result<()> {
    if out.epilogue == Epilogue::SiluMul {
        return Err(GpuError::Shape(format!("matmul {}: no SiLU-gated epilogue (use elementwise::silu_mul_halves)", w.label)));
    }
    check_len("matmul x", x, (x_row0 as u64 + m as u64) * w.cols as u64)?;
    check_len("matmul y", y, (y_row0 as u64 + m.max(1) as u64 - 1) * out.stride as u64 + out.offset as u64 + w.rows as u64)?;
    if compute == MatmulCompute::F16 && !gpu.caps.f16 {
        return Err(GpuError::Pipeline {
            label: "matmul (f16)".into(),
            message: "the device has no shader-f16; use MatmulCompute::F32".into(),
        });
    }
    let launch = MatmulLaunch::of(gpu.caps.geometry, &gpu.caps, compute);
    let spec = specialise(w, KernelSpec::new("matmul", SHADER, "matmul", BINDINGS))
        .with_prefix(launch.prelude())
        .with_prefix(compute_prelude(compute))
        .with_constant("ADD", (out.epilogue == Epilogue::Add) as i64);
    for part in &w.parts {
        let params = Params {
            layout: layout(w, part),
            m,
            n: part.rows,
            k: w.cols,
            row_offset: out.offset + part.row_offset,
            y_stride: out.stride,
            x_stride: w.cols,
            x_row0,
            y_row0,
        };
        let args = [Arg::Buf(part.buffer.gpu()?), Arg::Buf(x), Arg::Buf(y)];
        let grid = launch.grid(part.rows, m);
        prog.push_with_params(gpu, &spec, &params, &args, grid)?;
        // Each M tile (grid z) decodes the whole part again; each workgroup reads its tile_m rows of X.
        let activation_bytes = 4 * w.cols as u64 * launch.tile_m.min(m) as u64;
        let weight = WeightRead { label: w.label.clone(), bytes: part.bytes * grid[2] as u64, activation_bytes };
        prog.set_launch(Launch { invocations: launch.invocations, weight: Some(weight) });
    }
    Ok(())
}
