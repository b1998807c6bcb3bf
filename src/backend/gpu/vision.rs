//! The Pixtral vision encoder's dispatches (`shaders/vision.wgsl`): the patch unfold (im2col)
//! before the patch convolution's matmul, axial 2D RoPE and the 2x2 patch merger's unfold. One
//! invocation per output element (per rotated pair for RoPE), 256 per workgroup; the layouts
//! are `kernels::vision`'s.

use bytemuck::{Pod, Zeroable};

use super::{check_len, grid_1d, Access, Arg, Gpu, GpuError, KernelSpec, Launch, Program, Result};
use crate::kernels::shapes::{PatchGrid, Rope2dLayout, RopeMode};

pub(super) const SHADER: &str = include_str!("../../../shaders/vision.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::ReadWrite];
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct UnfoldParams {
    channels: u32,
    height: u32,
    width: u32,
    patch: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MergeParams {
    hidden: u32,
    rows: u32,
    cols: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Rope2dParams {
    n_tok: u32,
    n_heads: u32,
    head_dim: u32,
    cols: u32,
    stride: u32,
    offset: u32,
    row0: u32,
    neox: u32,
}

/// Records the unfold of `pixels` (`[channels][height][width]`) into `patches`
/// (`[n_patches][channels*patch*patch]`) over `grid`, the image's patch grid.
#[allow(clippy::too_many_arguments)]
pub fn patch_unfold(
    prog: &mut Program,
    gpu: &Gpu,
    pixels: &wgpu::Buffer,
    patches: &wgpu::Buffer,
    grid: PatchGrid,
    channels: u32,
    height: u32,
    width: u32,
    patch: u32,
) -> Result<()> {
    let n = grid.rows * grid.cols * channels * patch * patch;
    check_len("patch_unfold pixels", pixels, channels as u64 * height as u64 * width as u64)?;
    check_len("patch_unfold patches", patches, n as u64)?;
    let spec = KernelSpec::new("vision", SHADER, "patch_unfold", BINDINGS);
    let p = UnfoldParams { channels, height, width, patch };
    prog.push_with_params(gpu, &spec, &p, &[Arg::Buf(pixels), Arg::Buf(patches)], grid_1d(n.div_ceil(WG)))?;
    prog.set_launch(Launch::threads(WG));
    Ok(())
}

/// Records 2D RoPE in place on the `grid` token rows of one image in `x`, with the table
/// `inv_freq` made for heads of `table_head_dim`.
pub fn rope_2d(
    prog: &mut Program,
    gpu: &Gpu,
    (inv_freq, table_head_dim): (&wgpu::Buffer, u32),
    x: &wgpu::Buffer,
    layout: &Rope2dLayout,
    grid: PatchGrid,
) -> Result<()> {
    let l = layout;
    if !l.head_dim.is_multiple_of(4) || l.head_dim != table_head_dim || l.offset + l.n_heads * l.head_dim > l.stride {
        return Err(GpuError::Shape(format!(
            "rope_2d: {} heads of {} (table for {}) in rows of {} from {}",
            l.n_heads, l.head_dim, table_head_dim, l.stride, l.offset
        )));
    }
    let n_tok = grid.rows * grid.cols;
    check_len("rope_2d x", x, (l.row0 + n_tok) as u64 * l.stride as u64)?;
    let p = Rope2dParams {
        n_tok,
        n_heads: l.n_heads,
        head_dim: l.head_dim,
        cols: grid.cols,
        stride: l.stride,
        offset: l.offset,
        row0: l.row0,
        neox: (l.mode == RopeMode::RotateHalf) as u32,
    };
    let spec = KernelSpec::new("vision", SHADER, "rope_2d", BINDINGS);
    let wgs = (n_tok * l.n_heads * l.head_dim / 2).div_ceil(WG);
    prog.push_with_params(gpu, &spec, &p, &[Arg::Buf(inv_freq), Arg::Buf(x)], grid_1d(wgs))?;
    prog.set_launch(Launch::threads(WG));
    Ok(())
}

/// Records the 2x2 merge of one image's patch rows `x` (`[rows*cols][hidden]`) into `out`
/// (`[(rows/2)*(cols/2)][4*hidden]`).
pub fn patch_merge(
    prog: &mut Program,
    gpu: &Gpu,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    hidden: u32,
    grid: PatchGrid,
) -> Result<()> {
    let n = (grid.rows / 2) * (grid.cols / 2) * 4 * hidden;
    check_len("patch_merge x", x, (grid.rows * grid.cols) as u64 * hidden as u64)?;
    check_len("patch_merge out", out, n as u64)?;
    let spec = KernelSpec::new("vision", SHADER, "patch_merge", BINDINGS);
    let p = MergeParams { hidden, rows: grid.rows, cols: grid.cols, _pad: 0 };
    prog.push_with_params(gpu, &spec, &p, &[Arg::Buf(x), Arg::Buf(out)], grid_1d(n.div_ceil(WG)))?;
    prog.set_launch(Launch::threads(WG));
    Ok(())
}
