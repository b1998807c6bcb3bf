//! Mllama's cross-attention dispatches: the text tokens over a fixed key set with a per-token
//! tile mask (`shaders/cross_attention.wgsl`: one workgroup of 64 invocations per token and
//! head, 4 output dims each) and the gated residual add of the cross layers
//! (`shaders/gated_add.wgsl`). Layouts are `kernels::cross_attention`'s.

use bytemuck::{Pod, Zeroable};

use super::{grid_1d, Access, Arg, Gpu, GpuError, KernelSpec, Launch, Program, Result};
use crate::kernels::shapes::CrossAttnShape;

const SHADER: &str = include_str!("../../../shaders/cross_attention.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite];
const GATED_ADD: &str = include_str!("../../../shaders/gated_add.wgsl");
const GATED_ADD_BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::Read, Access::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n_tok: u32,
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    q_stride: u32,
    n_keys: u32,
    n_tiles: u32,
    tile_keys: u32,
    scale: f32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GatedAddParams {
    n: u32,
    dim: u32,
    use_row_mask: u32,
    _pad: u32,
}

/// Records `out = softmax_masked(q k^T * scale) v` per token and head over the `n_keys` keys
/// of `s` (checked by the caller).
#[allow(clippy::too_many_arguments)]
pub fn cross_attention(
    prog: &mut Program,
    gpu: &Gpu,
    s: &CrossAttnShape,
    n_keys: u32,
    q: &wgpu::Buffer,
    k: &wgpu::Buffer,
    v: &wgpu::Buffer,
    mask: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<()> {
    let params = Params {
        n_tok: s.n_tok,
        n_head: s.n_head,
        n_kv_head: s.n_kv_head,
        head_dim: s.head_dim,
        q_stride: s.q_stride,
        n_keys,
        n_tiles: s.n_tiles,
        tile_keys: s.tile_keys,
        scale: s.scale,
        _pad: [0; 3],
    };
    let spec = KernelSpec::new("cross_attention", SHADER, "cross_attention", BINDINGS);
    let args = [Arg::Buf(q), Arg::Buf(k), Arg::Buf(v), Arg::Buf(mask), Arg::Buf(out)];
    prog.push_with_params(gpu, &spec, &params, &args, grid_1d(s.n_tok * s.n_head))?;
    prog.set_launch(Launch::threads(64)); // WG in the shader
    Ok(())
}

/// Records `x[t][i] += tanh(gate[0]) * row_mask[t] * y[t][i]` over `n_tok` rows of `dim`
/// (`row_mask` `None`: a factor of 1).
#[allow(clippy::too_many_arguments)]
pub fn gated_add(
    prog: &mut Program,
    gpu: &Gpu,
    gate: &wgpu::Buffer,
    row_mask: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
    x: &wgpu::Buffer,
    n_tok: u32,
    dim: u32,
) -> Result<()> {
    let n = n_tok.checked_mul(dim).filter(|_| dim > 0).ok_or_else(|| GpuError::Shape(format!("gated add: {n_tok} x {dim}")))?;
    let params = GatedAddParams { n, dim, use_row_mask: row_mask.is_some() as u32, _pad: 0 };
    let spec = KernelSpec::new("gated_add", GATED_ADD, "gated_add", GATED_ADD_BINDINGS);
    // Without a row mask the binding is unused: bind the gate in its place.
    let args = [Arg::Buf(gate), Arg::Buf(row_mask.unwrap_or(gate)), Arg::Buf(y), Arg::Buf(x)];
    prog.push_with_params(gpu, &spec, &params, &args, grid_1d(n.div_ceil(256)))?;
    prog.set_launch(Launch::threads(256));
    Ok(())
}
