//! RMSNorm (`shaders/norm.wgsl`): one workgroup per row, f32 reduction in workgroup memory.

use bytemuck::{Pod, Zeroable};

use crate::backend::{cpu, Buffer, Device, On, Program};
use crate::gpu::{grid_1d, Access, Arg, KernelSpec, Launch, Result};

pub(super) const SHADER: &str = include_str!("../../shaders/norm.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

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
    let (prog, gpu) = match prog.on(dev)? {
        On::Gpu(prog, gpu) => (prog, gpu),
        On::Cpu(prog, _) => {
            let (x, w, y) = (x.cpu()?.clone(), w.cpu()?.clone(), y.cpu()?.clone());
            let (n, dim) = (rows as usize * dim as usize, dim as usize);
            prog.push("rms_norm", move |pool| {
                Ok(cpu::norm::rms_norm(pool, &x.read_n(n)?, &w.read_n(dim)?, &mut y.write_n(n)?, dim, eps)?)
            });
            return Ok(());
        }
    };
    let (x, w, y) = (x.gpu()?, w.gpu()?, y.gpu()?);
    let spec = KernelSpec::new("rms_norm", SHADER, "rms_norm", BINDINGS);
    let params = Params { rows, dim, eps, _pad: 0 };
    prog.push_with_params(gpu, &spec, &params, &[Arg::Buf(x), Arg::Buf(w), Arg::Buf(y)], grid_1d(rows))?;
    prog.set_launch(Launch::threads(256)); // WG in norm.wgsl
    Ok(())
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
