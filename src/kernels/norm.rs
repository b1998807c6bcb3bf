//! RMSNorm: the GPU side in `backend::gpu::norm` (`shaders/norm.wgsl`), the CPU side in
//! `backend::cpu::norm`.

use crate::backend::gpu::{self, Result};
use crate::backend::{cpu, Buffer, Device, On, Program};

/// Records `y[r] = rmsnorm(x[r]) * w` for `rows` rows of length `dim` (`y` may not alias `x`).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm(
    prog: &mut Program,
    dev: &Device,
    x: &Buffer,
    w: &Buffer,
    y: &Buffer,
    rows: u32,
    dim: u32,
    eps: f32,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::norm::rms_norm(prog, gpu, x.gpu()?, w.gpu()?, y.gpu()?, rows, dim, eps),
        On::Cpu(prog, _) => {
            let (x, w, y) = (x.cpu()?.clone(), w.cpu()?.clone(), y.cpu()?.clone());
            let (n, dim) = (rows as usize * dim as usize, dim as usize);
            prog.push("rms_norm", move |pool| {
                Ok(cpu::norm::rms_norm(pool, &x.read_n(n)?, &w.read_n(dim)?, &mut y.write_n(n)?, dim, eps)?)
            });
            Ok(())
        }
    }
}

/// CPU reference of [`rms_norm`].
pub fn rms_norm_ref(x: &[f32], w: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    x.chunks(dim)
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
            let s = 1.0 / (ms + eps).sqrt();
            row.iter().zip(w).map(move |(v, w)| v * s * w)
        })
        .collect()
}
