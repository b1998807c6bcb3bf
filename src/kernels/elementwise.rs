//! Element-wise kernels (`shaders/elementwise.wgsl`): residual add, SiLU-gated product.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Access, Arg, Gpu, KernelSpec, Program, Result};

const SHADER: &str = include_str!("../../shaders/elementwise.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::ReadWrite];
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

fn push(prog: &mut Program, gpu: &Gpu, entry: &'static str, a: &wgpu::Buffer, b: &wgpu::Buffer, n: u32) -> Result<()> {
    let spec = KernelSpec::new("elementwise", SHADER, entry, BINDINGS);
    let params = Params { n, _pad: [0; 3] };
    prog.push_with_params(gpu, &spec, &params, &[Arg::Buf(a), Arg::Buf(b)], grid_1d(n.div_ceil(WG)))
}

/// Records `residual[i] += a[i]` for the first `n` elements.
pub fn add_inplace(prog: &mut Program, gpu: &Gpu, a: &wgpu::Buffer, residual: &wgpu::Buffer, n: u32) -> Result<()> {
    push(prog, gpu, "add_inplace", a, residual, n)
}

/// Records `gate[i] = silu(gate[i]) * up[i]` for the first `n` elements.
pub fn silu_mul_inplace(prog: &mut Program, gpu: &Gpu, up: &wgpu::Buffer, gate: &wgpu::Buffer, n: u32) -> Result<()> {
    push(prog, gpu, "silu_mul_inplace", up, gate, n)
}

/// CPU reference of [`silu_mul_inplace`].
pub fn silu_mul_ref(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()
}
