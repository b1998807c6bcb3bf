//! Ops of the Qwen2-VL-family vision encoder: LayerNorm with bias, row-broadcast bias add,
//! GELU (tanh), a column-slice copy (q/k/v out of the fused qkv product) and a weighted row
//! gather (the interpolated position embeddings; the patch reordering into 2x2 merge windows).
//! The GPU side in `backend::gpu::vision_qwen` (`shaders/vision_qwen.wgsl`), the CPU side in
//! `backend::cpu::vision_qwen` (LayerNorm in `backend::cpu::norm`). CPU references alongside,
//! tested in `tests/kernels_vision.rs`.

pub use super::shapes::Tap;
use crate::backend::gpu::{self, Result};
use crate::backend::{cpu, Buffer, Device, On, Program};

/// Records `y[r] = layernorm(x[r]) * w + b` for `rows` rows of `dim` (`y` may not alias `x`).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    prog: &mut Program,
    dev: &Device,
    x: &Buffer,
    w: &Buffer,
    b: &Buffer,
    y: &Buffer,
    rows: u32,
    dim: u32,
    eps: f32,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::vision_qwen::layer_norm(prog, gpu, x.gpu()?, w.gpu()?, b.gpu()?, y.gpu()?, rows, dim, eps),
        On::Cpu(prog, _) => {
            let [x, w, b, y] = Buffer::cpu_handles([x, w, b, y])?;
            prog.push("layer_norm", move |pool| {
                let (n, dim) = (rows as usize * dim as usize, dim as usize);
                let (x, w, b, mut y) = (x.read_n(n)?, w.read_n(dim)?, b.read_n(dim)?, y.write_n(n)?);
                Ok(cpu::norm::layer_norm(pool, &x, &w, &b, &mut y, dim, eps)?)
            });
            Ok(())
        }
    }
}

/// CPU reference of [`layer_norm`] (f32, two passes as PyTorch).
pub fn layer_norm_ref(x: &[f32], w: &[f32], b: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    x.chunks(dim)
        .flat_map(|row| {
            let mean = row.iter().sum::<f32>() / dim as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
            let s = 1.0 / (var + eps).sqrt();
            row.iter().zip(w).zip(b).map(move |((v, w), b)| (v - mean) * s * w + b)
        })
        .collect()
}

/// Records `x[i] += bias[i % dim]` for the first `rows * dim` elements.
pub fn add_bias(prog: &mut Program, dev: &Device, bias: &Buffer, x: &Buffer, rows: u32, dim: u32) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::vision_qwen::add_bias(prog, gpu, bias.gpu()?, x.gpu()?, rows, dim),
        On::Cpu(prog, _) => {
            let [bias, x] = Buffer::cpu_handles([bias, x])?;
            prog.push("add_bias", move |pool| {
                Ok(cpu::vision_qwen::add_bias(
                    pool,
                    &bias.read_n(dim as usize)?,
                    &mut x.write_n((rows * dim) as usize)?,
                    dim as usize,
                )?)
            });
            Ok(())
        }
    }
}

/// Records `out[r][c] = x[r * stride + offset + c]` for `rows` rows and `dim` columns.
#[allow(clippy::too_many_arguments)]
pub fn copy_cols(
    prog: &mut Program,
    dev: &Device,
    x: &Buffer,
    out: &Buffer,
    rows: u32,
    dim: u32,
    stride: u32,
    offset: u32,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::vision_qwen::copy_cols(prog, gpu, x.gpu()?, out.gpu()?, rows, dim, stride, offset),
        On::Cpu(prog, _) => {
            let [x, out] = Buffer::cpu_handles([x, out])?;
            prog.push("copy_cols", move |pool| {
                let (dim, stride, offset) = (dim as usize, stride as usize, offset as usize);
                Ok(cpu::vision_qwen::copy_cols(pool, &x.read()?, &mut out.write_n(rows as usize * dim)?, dim, stride, offset)?)
            });
            Ok(())
        }
    }
}

/// Records `out[r] = Σ_k taps[r*k_per_row + k].weight * src[taps[..].row]` over rows of `dim`
/// values (`taps` holds `rows * k_per_row` [`Tap`]s).
#[allow(clippy::too_many_arguments)]
pub fn gather_rows(
    prog: &mut Program,
    dev: &Device,
    src: &Buffer,
    taps: &Buffer,
    out: &Buffer,
    rows: u32,
    k_per_row: u32,
    dim: u32,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::vision_qwen::gather_rows(prog, gpu, src.gpu()?, taps.gpu()?, out.gpu()?, rows, k_per_row, dim),
        On::Cpu(prog, _) => {
            let [src, taps, out] = Buffer::cpu_handles([src, taps, out])?;
            prog.push("gather_rows", move |pool| {
                let (k, dim) = (k_per_row as usize, dim as usize);
                let taps = taps.read_n(2 * rows as usize * k)?;
                let out = &mut out.write_n(rows as usize * dim)?;
                Ok(cpu::vision_qwen::gather_rows(pool, &src.read()?, bytemuck::cast_slice(&taps), out, k, dim)?)
            });
            Ok(())
        }
    }
}

/// CPU reference of [`gather_rows`].
pub fn gather_rows_ref(src: &[f32], taps: &[Tap], k_per_row: usize, dim: usize) -> Vec<f32> {
    taps.chunks(k_per_row)
        .flat_map(|row| (0..dim).map(move |c| row.iter().fold(0f32, |acc, t| acc + t.weight * src[t.row as usize * dim + c])))
        .collect()
}

/// Records `x[i] = gelu_tanh(x[i])` for the first `n` elements.
pub fn gelu_tanh(prog: &mut Program, dev: &Device, x: &Buffer, n: u32) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::vision_qwen::gelu_tanh(prog, gpu, x.gpu()?, n),
        On::Cpu(prog, _) => {
            let [x] = Buffer::cpu_handles([x])?;
            prog.push("gelu_tanh", move |pool| {
                cpu::elementwise::gelu_tanh(pool, &mut x.write_n(n as usize)?);
                Ok(())
            });
            Ok(())
        }
    }
}

/// CPU reference of [`gelu_tanh`] in f64: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu_tanh_ref(x: &[f32]) -> Vec<f64> {
    x.iter()
        .map(|&v| {
            let v = v as f64;
            0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
        })
        .collect()
}
