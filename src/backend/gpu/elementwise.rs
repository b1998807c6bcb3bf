//! The element-wise dispatches (`shaders/elementwise.wgsl`): residual add, SiLU-gated product
//! (of two buffers, or of the two halves of a stacked [gate; up] product's rows), the copy and
//! sigmoid gate of rows' halves, GELU. One invocation per output element, 256 per workgroup.

use bytemuck::{Pod, Zeroable};

use super::{grid_1d, Access, Arg, Gpu, KernelSpec, Launch, Program, Result};

pub(super) const SHADER: &str = include_str!("../../../shaders/elementwise.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::ReadWrite];
const GELU_BINDINGS: &[Access] = &[Access::Uniform, Access::ReadWrite];
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    half: u32,
    _pad: [u32; 2],
}

/// Records `entry` (`add_inplace`, `silu_mul_inplace`) over the first `n` elements of `a`
/// (read) and `b` (updated in place).
pub fn pair(prog: &mut Program, gpu: &Gpu, entry: &'static str, a: &wgpu::Buffer, b: &wgpu::Buffer, n: u32) -> Result<()> {
    halves(prog, gpu, entry, a, b, n, 0)
}

/// Records `entry` (`silu_mul_halves`, `copy_first_halves`, `sigmoid_mul_second_halves`) over
/// `n` outputs, rows of `half` of them against input rows of `2 half`.
pub fn halves(
    prog: &mut Program,
    gpu: &Gpu,
    entry: &'static str,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    n: u32,
    half: u32,
) -> Result<()> {
    let spec = KernelSpec::new("elementwise", SHADER, entry, BINDINGS);
    let params = Params { n, half, _pad: [0; 2] };
    prog.push_with_params(gpu, &spec, &params, &[Arg::Buf(a), Arg::Buf(b)], grid_1d(n.div_ceil(WG)))?;
    prog.set_launch(Launch::threads(WG));
    Ok(())
}

/// Records `x[i] = gelu(x[i])` (erf form, Numerical Recipes' `erfcc` in the shader) for the
/// first `n` elements.
pub fn gelu_inplace(prog: &mut Program, gpu: &Gpu, x: &wgpu::Buffer, n: u32) -> Result<()> {
    let spec = KernelSpec::new("elementwise", SHADER, "gelu_inplace", GELU_BINDINGS);
    let params = Params { n, half: 0, _pad: [0; 2] };
    prog.push_with_params(gpu, &spec, &params, &[Arg::Buf(x)], grid_1d(n.div_ceil(WG)))?;
    prog.set_launch(Launch::threads(WG));
    Ok(())
}
