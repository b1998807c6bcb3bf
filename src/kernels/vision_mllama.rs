//! Ops of the Mllama (Llama 3.2 Vision) encoder: the tile sequences (class token + patch
//! embeddings, zeroed padding rows), the tanh-gated per-tile and position embedding adds, the
//! tanh-gated residual add and a strided column scatter. The GPU side in
//! `backend::gpu::vision_mllama` (`shaders/vision_mllama.wgsl`), the CPU side in
//! `backend::cpu::vision_mllama`. Gates are 1-element f32 buffers read when the op runs
//! (streamed weights are filled after the pass is recorded). CPU references alongside, tested
//! in `tests/kernels_vision_mllama.rs`. Reference: transformers' `modeling_mllama.py`.

use crate::backend::gpu::{self, Result};
use crate::backend::{cpu, Buffer, Device, On, Program};

/// Records `x` (`[rows][dim]`): rows `t * tokens + s` below `tiles * tokens` hold tile `t`'s
/// token `s`, the class embedding (`s = 0`) or row `t * (tokens - 1) + s - 1` of `patches`;
/// the remaining rows (padding) are zeroed.
#[allow(clippy::too_many_arguments)]
pub fn assemble(
    prog: &mut Program,
    dev: &Device,
    patches: &Buffer,
    class: &Buffer,
    x: &Buffer,
    tiles: u32,
    tokens: u32,
    rows: u32,
    dim: u32,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            gpu::vision_mllama::assemble(prog, gpu, patches.gpu()?, class.gpu()?, x.gpu()?, tiles, tokens, rows, dim)
        }
        On::Cpu(prog, _) => {
            let [patches, class, x] = Buffer::cpu_handles([patches, class, x])?;
            prog.push("assemble", move |pool| {
                let (tiles, tokens, n) = (tiles as usize, tokens as usize, rows as usize * dim as usize);
                let (patches, class, mut x) = (patches.read()?, class.read_n(dim as usize)?, x.write_n(n)?);
                Ok(cpu::vision_mllama::assemble(pool, &patches, &class, &mut x, tiles, tokens, dim as usize)?)
            });
            Ok(())
        }
    }
}

/// CPU reference of [`assemble`].
pub fn assemble_ref(patches: &[f32], class: &[f32], tiles: usize, tokens: usize, rows: usize, dim: usize) -> Vec<f32> {
    let mut x = vec![0f32; rows * dim];
    for t in 0..tiles {
        for s in 0..tokens {
            let src = if s == 0 { class } else { &patches[(t * (tokens - 1) + s - 1) * dim..][..dim] };
            x[(t * tokens + s) * dim..][..dim].copy_from_slice(src);
        }
    }
    x
}

/// Records `x[row0 + r] += tanh(gate[0]) * table[r / rows_per_tile]` for `r < rows` (`x` and
/// `table` rows of `dim`).
#[allow(clippy::too_many_arguments)]
pub fn tile_add(
    prog: &mut Program,
    dev: &Device,
    table: &Buffer,
    gate: &Buffer,
    x: &Buffer,
    row0: u32,
    rows: u32,
    rows_per_tile: u32,
    dim: u32,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            gpu::vision_mllama::tile_add(prog, gpu, table.gpu()?, gate.gpu()?, x.gpu()?, row0, rows, rows_per_tile, dim)
        }
        On::Cpu(prog, _) => {
            let [table, gate, x] = Buffer::cpu_handles([table, gate, x])?;
            prog.push("tile_add", move |pool| {
                let (table, gate, mut x) = (table.read()?, gate.read_n(1)?[0], x.write()?);
                let (row0, rows, per_tile, dim) = (row0 as usize, rows as usize, rows_per_tile as usize, dim as usize);
                Ok(cpu::vision_mllama::tile_add(pool, &table, gate, &mut x, row0, rows, per_tile, dim)?)
            });
            Ok(())
        }
    }
}

/// CPU reference of [`tile_add`] (in place on `x`).
pub fn tile_add_ref(x: &mut [f32], table: &[f32], gate: f32, row0: usize, rows: usize, rows_per_tile: usize, dim: usize) {
    let g = gate.tanh();
    for r in 0..rows {
        for c in 0..dim {
            x[(row0 + r) * dim + c] += g * table[(r / rows_per_tile) * dim + c];
        }
    }
}

/// Records `x[r] += (1 - tanh(g)) * pos[r % tokens] + tanh(g) * tile_pos[r]` for `r < rows`
/// (`g = gate[0]`; `pos` `[tokens][dim]`, `tile_pos` `[rows][dim]`).
#[allow(clippy::too_many_arguments)]
pub fn gated_pos(
    prog: &mut Program,
    dev: &Device,
    pos: &Buffer,
    tile_pos: &Buffer,
    gate: &Buffer,
    x: &Buffer,
    rows: u32,
    tokens: u32,
    dim: u32,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            gpu::vision_mllama::gated_pos(prog, gpu, pos.gpu()?, tile_pos.gpu()?, gate.gpu()?, x.gpu()?, rows, tokens, dim)
        }
        On::Cpu(prog, _) => {
            let [pos, tile_pos, gate, x] = Buffer::cpu_handles([pos, tile_pos, gate, x])?;
            prog.push("gated_pos", move |pool| {
                let (n, tokens, dim) = (rows as usize * dim as usize, tokens as usize, dim as usize);
                let (pos, tile_pos, gate, mut x) = (pos.read()?, tile_pos.read_n(n)?, gate.read_n(1)?[0], x.write_n(n)?);
                Ok(cpu::vision_mllama::gated_pos(pool, &pos, &tile_pos, gate, &mut x, tokens, dim)?)
            });
            Ok(())
        }
    }
}

/// CPU reference of [`gated_pos`] (in place on `x`).
pub fn gated_pos_ref(x: &mut [f32], pos: &[f32], tile_pos: &[f32], gate: f32, tokens: usize, dim: usize) {
    let g = gate.tanh();
    for (i, v) in x.iter_mut().enumerate() {
        *v += (1.0 - g) * pos[((i / dim) % tokens) * dim + i % dim] + g * tile_pos[i];
    }
}

/// Records `x[i] += tanh(gate[0]) * y[i]` for `i < n`.
pub fn gated_add(prog: &mut Program, dev: &Device, y: &Buffer, gate: &Buffer, x: &Buffer, n: u32) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::vision_mllama::gated_add(prog, gpu, y.gpu()?, gate.gpu()?, x.gpu()?, n),
        On::Cpu(prog, _) => {
            let [y, gate, x] = Buffer::cpu_handles([y, gate, x])?;
            let n = n as usize;
            prog.push("gated_add", move |pool| {
                let (y, gate, mut x) = (y.read_n(n)?, gate.read_n(1)?[0], x.write_n(n)?);
                Ok(cpu::vision_mllama::gated_add(pool, &y, gate, &mut x)?)
            });
            Ok(())
        }
    }
}

/// CPU reference of [`gated_add`] (in place on `x`).
pub fn gated_add_ref(x: &mut [f32], y: &[f32], gate: f32) {
    let g = gate.tanh();
    x.iter_mut().zip(y).for_each(|(x, y)| *x += g * y);
}

/// Records `out[r * stride + offset + c * step] = src[r * dim + c]` for `rows` rows.
#[allow(clippy::too_many_arguments)]
pub fn scatter_cols(
    prog: &mut Program,
    dev: &Device,
    src: &Buffer,
    out: &Buffer,
    rows: u32,
    dim: u32,
    stride: u32,
    offset: u32,
    step: u32,
) -> Result<()> {
    scatter_cols_from(prog, dev, (src, 0), out, rows, dim, stride, offset, step)
}

/// [`scatter_cols`] from a window of `src`'s rows: `out[r * stride + offset + c * step] =
/// src.0[(src.1 + r) * dim + c]` for `rows` rows, so that rows of one activation buffer can
/// go to an output that holds only some of them (one part of the features).
#[allow(clippy::too_many_arguments)]
pub fn scatter_cols_from(
    prog: &mut Program,
    dev: &Device,
    src: (&Buffer, u32),
    out: &Buffer,
    rows: u32,
    dim: u32,
    stride: u32,
    offset: u32,
    step: u32,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            let out = out.gpu()?;
            gpu::vision_mllama::scatter_cols_from(prog, gpu, (src.0.gpu()?, src.1), out, rows, dim, stride, offset, step)
        }
        On::Cpu(prog, _) => {
            let ((src, src_row0), out) = ((src.0.cpu()?.clone(), src.1 as usize), out.cpu()?.clone());
            let [rows, dim, stride, offset, step] = [rows, dim, stride, offset, step].map(|v| v as usize);
            prog.push("scatter_cols", move |pool| {
                let (src, mut out) = (src.read()?, out.write_n(rows * stride)?);
                Ok(cpu::vision_mllama::scatter_cols(pool, &src, src_row0, &mut out, rows, dim, stride, offset, step)?)
            });
            Ok(())
        }
    }
}

/// CPU reference of [`scatter_cols`] (into `out`).
#[allow(clippy::too_many_arguments)]
pub fn scatter_cols_ref(src: &[f32], out: &mut [f32], dim: usize, stride: usize, offset: usize, step: usize) {
    for (i, v) in src.iter().enumerate() {
        out[(i / dim) * stride + offset + (i % dim) * step] = *v;
    }
}
