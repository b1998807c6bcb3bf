//! Token embedding gather: `out[i] = W[ids[i]]` as f32 for a [`Weight`] table in any
//! supported format (llama.cpp `get_rows`). Out-of-range ids (`>= w.rows`) never read the
//! weight: their output row is zero. The GPU side in `backend::gpu::embedding`
//! (`shaders/embedding.wgsl`), the CPU side in `backend::cpu::embedding`.

use super::quant::{CpuWeight, Weight};
use crate::backend::gpu::{self, Result};
use crate::backend::{cpu, Buffer, Device, On, Program};

/// Records `out[i][c] = w[ids[i]][c]` for `i < n`: `ids` holds `n` u32, `out` is
/// `[n][w.cols]` f32. One dispatch per weight part; ids `>= w.rows` give zero rows.
pub fn record(prog: &mut Program, dev: &Device, w: &Weight, ids: &Buffer, out: &Buffer, n: u32) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::embedding::embedding(prog, gpu, w, ids.gpu()?, out.gpu()?, n),
        On::Cpu(prog, _) => {
            let (weight, ids, out) = (CpuWeight::of(w)?, ids.cpu()?.clone(), out.cpu()?.clone());
            let (cols, n) = (w.cols as usize, n as usize);
            prog.push("embedding", move |pool| {
                let (ids, mut out) = (ids.read_u32(n)?, out.write_n(n * cols)?);
                weight.with(|w| Ok(cpu::embedding::embedding(pool, w, &ids, &mut out)?))
            });
            Ok(())
        }
    }
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
