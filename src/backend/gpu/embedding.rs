//! The embedding gather's dispatches (`shaders/embedding.wgsl`, after the decoders of
//! `shaders/quant.wgsl`): one per weight part, each token's row decoded by one workgroup of 256
//! invocations; the first part zeroes the rows of out-of-range ids.

use bytemuck::{Pod, Zeroable};

use super::quant::{layout, specialise, WLayout};
use super::{check_len, grid_1d, Access, Arg, Gpu, KernelSpec, Launch, Program, Result};
use crate::kernels::quant::Weight;

pub(super) const SHADER: &str = include_str!("../../../shaders/embedding.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    layout: WLayout,
    n: u32,
    cols: u32,
    row_offset: u32,
    rows: u32,
    total_rows: u32,
    zero_oob: u32,
    _pad: [u32; 2],
}

/// Records `out[i][c] = w[ids[i]][c]` for `i < n` (`ids` `n` u32, `out` `[n][w.cols]` f32).
pub fn embedding(prog: &mut Program, gpu: &Gpu, w: &Weight, ids: &wgpu::Buffer, out: &wgpu::Buffer, n: u32) -> Result<()> {
    check_len("embedding ids", ids, n as u64)?;
    check_len("embedding out", out, n as u64 * w.cols as u64)?;
    let spec = specialise(w, KernelSpec::new("embedding", SHADER, "embedding", BINDINGS));
    for (i, part) in w.parts.iter().enumerate() {
        let params = Params {
            layout: layout(w, part),
            n,
            cols: w.cols,
            row_offset: part.row_offset,
            rows: part.rows,
            total_rows: w.rows,
            zero_oob: (i == 0) as u32,
            _pad: [0; 2],
        };
        let args = [Arg::Buf(part.buffer.gpu()?), Arg::Buf(ids), Arg::Buf(out)];
        prog.push_with_params(gpu, &spec, &params, &args, grid_1d(n))?;
        prog.set_launch(Launch::threads(256)); // reads one row per token, not the weight
    }
    Ok(())
}
