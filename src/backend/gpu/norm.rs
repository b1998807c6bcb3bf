//! The RMSNorm dispatch (`shaders/norm.wgsl`): one workgroup per row (256 invocations, 64 on
//! CPU adapters), the f32 sum of squares reduced in workgroup memory.

use bytemuck::{Pod, Zeroable};

use super::{grid_1d, Access, Arg, Geometry, Gpu, KernelSpec, Launch, Program, Result};

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

/// Invocations per row (the shader's `WG`). A CPU adapter runs a workgroup's invocations as
/// SIMD lanes and switches between groups of them at every barrier of the reduction: 64
/// halve a decode step's norms on lavapipe against 256 (SmolLM2: 2.2-2.4 against 4.0 ms
/// per token, 61 dispatches), where a GPU wants the wide row.
fn norm_invocations(geometry: Geometry) -> u32 {
    match geometry {
        Geometry::Cpu => 64,
        Geometry::Gpu => 256,
    }
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
    let wg = norm_invocations(gpu.caps.geometry);
    let spec = KernelSpec::new("rms_norm", SHADER, "rms_norm", BINDINGS).with_constant("WG", wg as i64);
    let params = Params { rows, dim, eps, _pad: 0 };
    prog.push_with_params(gpu, &spec, &params, &[Arg::Buf(x), Arg::Buf(w), Arg::Buf(y)], grid_1d(rows))?;
    prog.set_launch(Launch::threads(wg)); // WG in norm.wgsl
    Ok(())
}
