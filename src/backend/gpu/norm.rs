//! The RMSNorm dispatch (`shaders/norm.wgsl`): one workgroup of 256 invocations per row, the
//! f32 sum of squares reduced in workgroup memory.

use bytemuck::{Pod, Zeroable};

use super::{grid_1d, Access, Arg, Gpu, KernelSpec, Launch, Program, Result};

pub(super) const SHADER: &str = include_str!("../../../shaders/norm.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

/// Records `y[r] = rmsnorm(x[r]) * w` for `rows` rows of length `dim`.
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
