//! Token embedding gather (`shaders/embedding.wgsl`): `out[i] = W[ids[i]]` as f32 for a
//! [`Weight`] table in any supported format (llama.cpp `get_rows`). Out-of-range ids
//! (`>= w.rows`) never read the weight: their output row is zero.

use bytemuck::{Pod, Zeroable};

use super::matvec::check_len;
use super::quant::{CpuWeight, WLayout, Weight};
use crate::backend::{cpu, Buffer, Device, On, Program};
use crate::gpu::{grid_1d, Access, Arg, KernelSpec, Launch, Result};

pub(super) const SHADER: &str = include_str!("../../shaders/embedding.wgsl");
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

/// Records `out[i][c] = w[ids[i]][c]` for `i < n`: `ids` holds `n` u32, `out` is
/// `[n][w.cols]` f32. One dispatch per weight part; ids `>= w.rows` give zero rows.
pub fn record(prog: &mut Program, dev: &Device, w: &Weight, ids: &Buffer, out: &Buffer, n: u32) -> Result<()> {
    let (prog, gpu) = match prog.on(dev)? {
        On::Gpu(prog, gpu) => (prog, gpu),
        On::Cpu(prog, _) => {
            let (weight, ids, out) = (CpuWeight::of(w)?, ids.cpu()?.clone(), out.cpu()?.clone());
            let (cols, n) = (w.cols as usize, n as usize);
            prog.push("embedding", move |pool| {
                let (ids, mut out) = (ids.read_u32(n)?, out.write_n(n * cols)?);
                weight.with(|w| Ok(cpu::embedding::embedding(pool, w, &ids, &mut out)?))
            });
            return Ok(());
        }
    };
    let (ids, out) = (ids.gpu()?, out.gpu()?);
    check_len("embedding ids", ids, n as u64)?;
    check_len("embedding out", out, n as u64 * w.cols as u64)?;
    let spec = w.specialise(KernelSpec::new("embedding", SHADER, "embedding", BINDINGS));
    for (i, part) in w.parts.iter().enumerate() {
        let params = Params {
            layout: w.layout(part),
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

/// CPU reference of [`record`] on a dequantized `[rows][cols]` table.
pub fn embedding_ref(w: &[f32], cols: usize, ids: &[u32]) -> Vec<f32> {
    let rows = w.len() / cols;
    ids.iter()
        .flat_map(|&id| {
            let id = id as usize;
            if id < rows {
                w[id * cols..(id + 1) * cols].to_vec()
            } else {
                vec![0.0; cols]
            }
        })
        .collect()
}
