//! RMSNorm (`shaders/norm.wgsl`): one workgroup per row, f32 reduction in workgroup memory.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Access, Arg, Gpu, KernelSpec, Launch, Program, Result};

pub(super) const SHADER: &str = include_str!("../../shaders/norm.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

/// Records `y[r] = rmsnorm(x[r]) * w` for `rows` rows of length `dim` (`y` may not alias `x`).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm(
    prog: &mut Program,
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    y: &wgpu::Buffer,
    rows: u32,
    dim: u32,
    eps: f32,
) -> Result<()> {
    let spec = KernelSpec::new("rms_norm", SHADER, "rms_norm", BINDINGS);
    let params = Params { rows, dim, eps, _pad: 0 };
    prog.push_with_params(gpu, &spec, &params, &[Arg::Buf(x), Arg::Buf(w), Arg::Buf(y)], grid_1d(rows))?;
    prog.set_launch(Launch::threads(256)); // WG in norm.wgsl
    Ok(())
}

/// CPU reference of [`rms_norm`].
pub fn rms_norm_ref(x: &[f32], w: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    x.chunks(dim)
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
            let s = 1.0 / (ms + eps).sqrt();
            row.iter().zip(w).map(move |(v, w)| v * s * w)
        })
        .collect()
}
