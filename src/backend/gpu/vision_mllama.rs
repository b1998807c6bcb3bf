//! The Mllama (Llama 3.2 Vision) encoder's dispatches (`shaders/vision_mllama.wgsl`): the tile
//! sequences' assembly, the tanh-gated per-tile and position embedding adds, the tanh-gated
//! residual add and the strided column scatter; one invocation per element, 256 per
//! workgroup. Gates are 1-element f32 buffers read by the shader.

use bytemuck::{Pod, Zeroable};

use super::{check_len, grid_1d, Access, Arg, Gpu, GpuError, KernelSpec, Launch, Program, Result};

pub(super) const SHADER: &str = include_str!("../../../shaders/vision_mllama.wgsl");
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    n: u32,
    dim: u32,
    rows_per_tile: u32,
    row0: u32,
    stride: u32,
    offset: u32,
    step: u32,
    _pad: u32,
}

fn push(prog: &mut Program, gpu: &Gpu, entry: &'static str, bindings: &'static [Access], p: Params, args: &[Arg]) -> Result<()> {
    let spec = KernelSpec::new("vision_mllama", SHADER, entry, bindings);
    prog.push_with_params(gpu, &spec, &p, args, grid_1d(p.n.div_ceil(WG)))?;
    prog.set_launch(Launch::threads(WG));
    Ok(())
}

/// Elements of `rows x dim`, checked to fit the shaders' u32 indices.
fn elems(what: &str, rows: u32, dim: u32) -> Result<u32> {
    u32::try_from(rows as u64 * dim as u64).map_err(|_| GpuError::Shape(format!("{what}: {rows} x {dim} elements")))
}

/// Records the tile sequences `x` (`[rows][dim]`): tile `t`'s class embedding and patch rows,
/// then zeroed padding rows.
#[allow(clippy::too_many_arguments)]
pub fn assemble(
    prog: &mut Program,
    gpu: &Gpu,
    patches: &wgpu::Buffer,
    class: &wgpu::Buffer,
    x: &wgpu::Buffer,
    tiles: u32,
    tokens: u32,
    rows: u32,
    dim: u32,
) -> Result<()> {
    const B: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];
    let n = elems("assemble", rows, dim)?;
    let main = tiles * tokens;
    if tokens == 0 || main > rows {
        return Err(GpuError::Shape(format!("assemble: {tiles} tiles of {tokens} tokens in {rows} rows")));
    }
    check_len("assemble x", x, n as u64)?;
    check_len("assemble patches", patches, tiles as u64 * (tokens as u64 - 1) * dim as u64)?;
    check_len("assemble class", class, dim as u64)?;
    let p = Params { n, dim, rows_per_tile: tokens, row0: main, ..Params::default() };
    push(prog, gpu, "assemble", B, p, &[Arg::Buf(patches), Arg::Buf(class), Arg::Buf(x)])
}

/// Records `x[row0 + r] += tanh(gate[0]) * table[r / rows_per_tile]` for `r < rows`.
#[allow(clippy::too_many_arguments)]
pub fn tile_add(
    prog: &mut Program,
    gpu: &Gpu,
    table: &wgpu::Buffer,
    gate: &wgpu::Buffer,
    x: &wgpu::Buffer,
    row0: u32,
    rows: u32,
    rows_per_tile: u32,
    dim: u32,
) -> Result<()> {
    const B: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];
    let n = elems("tile_add", rows, dim)?;
    if rows_per_tile == 0 {
        return Err(GpuError::Shape("tile_add: 0 rows per tile".into()));
    }
    check_len("tile_add x", x, (row0 as u64 + rows as u64) * dim as u64)?;
    check_len("tile_add table", table, rows.div_ceil(rows_per_tile) as u64 * dim as u64)?;
    check_len("tile_add gate", gate, 1)?;
    let p = Params { n, dim, rows_per_tile, row0, ..Params::default() };
    push(prog, gpu, "tile_add", B, p, &[Arg::Buf(table), Arg::Buf(gate), Arg::Buf(x)])
}

/// Records `x[r] += (1 - tanh(g)) * pos[r % tokens] + tanh(g) * tile_pos[r]` for `r < rows`.
#[allow(clippy::too_many_arguments)]
pub fn gated_pos(
    prog: &mut Program,
    gpu: &Gpu,
    pos: &wgpu::Buffer,
    tile_pos: &wgpu::Buffer,
    gate: &wgpu::Buffer,
    x: &wgpu::Buffer,
    rows: u32,
    tokens: u32,
    dim: u32,
) -> Result<()> {
    const B: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::Read, Access::ReadWrite];
    let n = elems("gated_pos", rows, dim)?;
    if tokens == 0 {
        return Err(GpuError::Shape("gated_pos: 0 tokens per tile".into()));
    }
    check_len("gated_pos x", x, n as u64)?;
    check_len("gated_pos tile_pos", tile_pos, n as u64)?;
    check_len("gated_pos pos", pos, tokens as u64 * dim as u64)?;
    check_len("gated_pos gate", gate, 1)?;
    let p = Params { n, dim, rows_per_tile: tokens, ..Params::default() };
    push(prog, gpu, "gated_pos", B, p, &[Arg::Buf(pos), Arg::Buf(tile_pos), Arg::Buf(gate), Arg::Buf(x)])
}

/// Records `x[i] += tanh(gate[0]) * y[i]` for `i < n`.
pub fn gated_add(prog: &mut Program, gpu: &Gpu, y: &wgpu::Buffer, gate: &wgpu::Buffer, x: &wgpu::Buffer, n: u32) -> Result<()> {
    const B: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];
    check_len("gated_add x", x, n as u64)?;
    check_len("gated_add y", y, n as u64)?;
    check_len("gated_add gate", gate, 1)?;
    let p = Params { n, ..Params::default() };
    push(prog, gpu, "gated_add", B, p, &[Arg::Buf(y), Arg::Buf(gate), Arg::Buf(x)])
}

/// Records `out[r * stride + offset + c * step] = src[(src_row0 + r) * dim + c]` for `rows` rows.
#[allow(clippy::too_many_arguments)]
pub fn scatter_cols_from(
    prog: &mut Program,
    gpu: &Gpu,
    (src, src_row0): (&wgpu::Buffer, u32),
    out: &wgpu::Buffer,
    rows: u32,
    dim: u32,
    stride: u32,
    offset: u32,
    step: u32,
) -> Result<()> {
    const B: &[Access] = &[Access::Uniform, Access::Read, Access::ReadWrite];
    let n = elems("scatter_cols", rows, dim)?;
    let last = offset as u64 + (dim.max(1) as u64 - 1) * step as u64;
    if dim == 0 || last >= stride as u64 || (step == 0 && dim > 1) {
        return Err(GpuError::Shape(format!("scatter_cols: {dim} columns at {offset} + c * {step} in rows of {stride}")));
    }
    let src_rows = src_row0
        .checked_add(rows)
        .ok_or_else(|| GpuError::Shape(format!("scatter_cols: rows {src_row0} + {rows} of the source")))?;
    elems("scatter_cols src", src_rows, dim)?;
    elems("scatter_cols out", rows, stride)?;
    check_len("scatter_cols src", src, src_rows as u64 * dim as u64)?;
    check_len("scatter_cols out", out, rows as u64 * stride as u64)?;
    let p = Params { n, dim, row0: src_row0, stride, offset, step, ..Params::default() };
    push(prog, gpu, "scatter_cols", B, p, &[Arg::Buf(src), Arg::Buf(out)])
}
