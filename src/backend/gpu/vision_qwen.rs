//! The Qwen2-VL-family vision encoder's dispatches (`shaders/vision_qwen.wgsl`): LayerNorm with
//! bias (one workgroup per row), row-broadcast bias add, GELU (tanh), a column-slice copy and a
//! weighted row gather (one invocation per output element, 256 per workgroup).

use bytemuck::{Pod, Zeroable};

use super::{check_len, grid_1d, Access, Arg, Gpu, GpuError, KernelSpec, Launch, Program, Result};

pub(super) const SHADER: &str = include_str!("../../../shaders/vision_qwen.wgsl");
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    n: u32,
    stride: u32,
    offset: u32,
    _pad: [u32; 2],
}

fn push(
    prog: &mut Program,
    gpu: &Gpu,
    entry: &'static str,
    bindings: &'static [Access],
    p: Params,
    args: &[Arg],
    wgs: u32,
) -> Result<()> {
    let spec = KernelSpec::new("vision_qwen", SHADER, entry, bindings);
    prog.push_with_params(gpu, &spec, &p, args, grid_1d(wgs))?;
    prog.set_launch(Launch::threads(WG));
    Ok(())
}

/// Records `y[r] = layernorm(x[r]) * w + b` for `rows` rows of `dim`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    prog: &mut Program,
    gpu: &Gpu,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    b: &wgpu::Buffer,
    y: &wgpu::Buffer,
    rows: u32,
    dim: u32,
    eps: f32,
) -> Result<()> {
    const B: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::Read, Access::ReadWrite];
    let n = rows as u64 * dim as u64;
    check_len("layer_norm x", x, n)?;
    check_len("layer_norm y", y, n)?;
    check_len("layer_norm w", w, dim as u64)?;
    check_len("layer_norm b", b, dim as u64)?;
    let p = Params { rows, dim, eps, ..Params::default() };
    push(prog, gpu, "layer_norm", B, p, &[Arg::Buf(x), Arg::Buf(w), Arg::Buf(b), Arg::Buf(y)], rows)
}

/// Records `x[i] += bias[i % dim]` for the first `rows * dim` elements.
pub fn add_bias(prog: &mut Program, gpu: &Gpu, bias: &wgpu::Buffer, x: &wgpu::Buffer, rows: u32, dim: u32) -> Result<()> {
    const B: &[Access] = &[Access::Uniform, Access::Read, Access::ReadWrite];
    let n = rows * dim;
    check_len("add_bias x", x, n as u64)?;
    check_len("add_bias bias", bias, dim as u64)?;
    let p = Params { dim, n, ..Params::default() };
    push(prog, gpu, "add_bias", B, p, &[Arg::Buf(bias), Arg::Buf(x)], n.div_ceil(WG))
}

/// Records `out[r][c] = x[r * stride + offset + c]` for `rows` rows and `dim` columns.
#[allow(clippy::too_many_arguments)]
pub fn copy_cols(
    prog: &mut Program,
    gpu: &Gpu,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: u32,
    dim: u32,
    stride: u32,
    offset: u32,
) -> Result<()> {
    const B: &[Access] = &[Access::Uniform, Access::Read, Access::ReadWrite];
    check_len("copy_cols x", x, rows as u64 * stride as u64)?;
    check_len("copy_cols out", out, rows as u64 * dim as u64)?;
    if offset + dim > stride {
        return Err(GpuError::Shape(format!("copy_cols: columns {offset}..{} of {stride}", offset + dim)));
    }
    let p = Params { rows, dim, stride, offset, ..Params::default() };
    push(prog, gpu, "copy_cols", B, p, &[Arg::Buf(x), Arg::Buf(out)], (rows * dim).div_ceil(WG))
}

/// Records `out[r] = Σ_k taps[r*k_per_row + k].weight * src[taps[..].row]` over rows of `dim`.
#[allow(clippy::too_many_arguments)]
pub fn gather_rows(
    prog: &mut Program,
    gpu: &Gpu,
    src: &wgpu::Buffer,
    taps: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: u32,
    k_per_row: u32,
    dim: u32,
) -> Result<()> {
    const B: &[Access] = &[Access::Uniform, Access::Read, Access::ReadWrite, Access::Read];
    check_len("gather_rows out", out, rows as u64 * dim as u64)?;
    check_len("gather_rows taps", taps, 2 * rows as u64 * k_per_row as u64)?;
    let p = Params { rows, dim, n: k_per_row, stride: dim, ..Params::default() };
    push(prog, gpu, "gather_rows", B, p, &[Arg::Buf(src), Arg::Buf(out), Arg::Buf(taps)], (rows * dim).div_ceil(WG))
}

/// Records `x[i] = gelu_tanh(x[i])` for the first `n` elements.
pub fn gelu_tanh(prog: &mut Program, gpu: &Gpu, x: &wgpu::Buffer, n: u32) -> Result<()> {
    const B: &[Access] = &[Access::Uniform, Access::ReadWrite];
    check_len("gelu_tanh x", x, n as u64)?;
    let p = Params { n, ..Params::default() };
    push(prog, gpu, "gelu_tanh", B, p, &[Arg::Buf(x)], n.div_ceil(WG))
}
