//! The dispatches of the per-token kernels around Qwen3.5's Gated DeltaNet layer
//! (`shaders/gdn_prep.wgsl`, after `shaders/step.wgsl`): the causal conv1d + SiLU (two
//! dispatches: the outputs, then the state update), the decay and beta gates, and the gated
//! RMSNorm (one workgroup of 128 invocations per token and head). Each covers
//! `min(step.n_tok, max_tok)` token rows; the math is `kernels::gdn_prep`'s.

use bytemuck::{Pod, Zeroable};

use super::attention::STEP;
use super::{check_len, grid_1d, Access, Arg, Gpu, GpuError, KernelSpec, Launch, Program, Result};
use crate::kernels::shapes::{ConvShape, GatedNormShape, RowWindow};

pub(super) const SHADER: &str = include_str!("../../../shaders/gdn_prep.wgsl");
const CONV_STEP: &[Access] = &[Access::Uniform, Access::Uniform, Access::Read, Access::Read, Access::Read, Access::ReadWrite];
const CONV_STATE: &[Access] = &[Access::Uniform, Access::Uniform, Access::Read, Access::ReadWrite];
const DECAY: &[Access] = &[
    Access::Uniform,
    Access::Uniform,
    Access::Read,
    Access::Read,
    Access::Read,
    Access::Read,
    Access::ReadWrite,
    Access::ReadWrite,
];
const NORM: &[Access] = &[Access::Uniform, Access::Uniform, Access::Read, Access::Read, Access::Read, Access::ReadWrite];
/// `WG` and `NORM_WG` in gdn_prep.wgsl.
const WG: u32 = 256;
const NORM_WG: u32 = 128;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    max_tok: u32,
    width: u32,
    kernel: u32,
    x_stride: u32,
    x_offset: u32,
    b_stride: u32,
    b_offset: u32,
    eps: f32,
}

/// Checks that `width` elements fit each row of `win` and that `buf` holds `rows` of them.
fn check_window(win: RowWindow, what: &str, buf: &wgpu::Buffer, rows: u32, width: u32) -> Result<()> {
    if win.offset as u64 + width as u64 > win.stride as u64 {
        return Err(GpuError::Shape(format!(
            "{what}: a window of {width} at offset {} does not fit rows of {}",
            win.offset, win.stride
        )));
    }
    check_len(what, buf, (rows as u64 - 1) * win.stride as u64 + win.offset as u64 + width as u64)
}

fn shape_err<T>(msg: String) -> Result<T> {
    Err(GpuError::Shape(msg))
}

/// `n * per` rows of work must index in u32 (the kernels' linear index).
fn check_grid(what: &str, max_tok: u32, per: u32) -> Result<u32> {
    if max_tok == 0 || per == 0 {
        return shape_err(format!("{what}: empty shape ({max_tok} tokens x {per})"));
    }
    max_tok.checked_mul(per).ok_or_else(|| GpuError::Shape(format!("{what}: {max_tok} x {per} overflows the grid")))
}

/// Records the causal depthwise conv1d + SiLU of the step's rows `x` (window `x_win`) into
/// `y`, reading and then advancing `state`: the outputs, then the state update.
#[allow(clippy::too_many_arguments)]
pub fn conv(
    prog: &mut Program,
    gpu: &Gpu,
    step: &wgpu::Buffer,
    x: &wgpu::Buffer,
    x_win: RowWindow,
    weight: &wgpu::Buffer,
    state: &wgpu::Buffer,
    y: &wgpu::Buffer,
    shape: &ConvShape,
) -> Result<()> {
    let ConvShape { max_tok, channels: c, kernel: k } = *shape;
    let n = check_grid("gdn conv", max_tok, c)?;
    if !(2..=64).contains(&k) {
        return shape_err(format!("gdn conv: kernel size {k} (2..=64 supported)"));
    }
    check_window(x_win, "gdn conv x", x, max_tok, c)?;
    check_len("gdn conv weight", weight, c as u64 * k as u64)?;
    check_len("gdn conv state", state, c as u64 * (k - 1) as u64)?;
    check_len("gdn conv y", y, n as u64)?;
    let params = Params {
        max_tok,
        width: c,
        kernel: k,
        x_stride: x_win.stride,
        x_offset: x_win.offset,
        b_stride: 0,
        b_offset: 0,
        eps: 0.0,
    };
    let spec = KernelSpec::new("gdn_prep", SHADER, "conv_step", CONV_STEP).with_prefix(STEP);
    let args = [Arg::Buf(step), Arg::Buf(x), Arg::Buf(weight), Arg::Buf(state), Arg::Buf(y)];
    prog.push_with_params(gpu, &spec, &params, &args, grid_1d(n.div_ceil(WG)))?;
    prog.set_launch(Launch::threads(WG));
    let spec = KernelSpec::new("gdn_prep", SHADER, "conv_state", CONV_STATE).with_prefix(STEP);
    prog.push_with_params(gpu, &spec, &params, &[Arg::Buf(step), Arg::Buf(x), Arg::Buf(state)], grid_1d(c.div_ceil(WG)))?;
    prog.set_launch(Launch::threads(WG));
    Ok(())
}

/// Records `g = ssm_a * softplus(a + dt_bias)` and `beta = sigmoid(b)` per token and v head.
#[allow(clippy::too_many_arguments)]
pub fn decay(
    prog: &mut Program,
    gpu: &Gpu,
    step: &wgpu::Buffer,
    (a, a_win): (&wgpu::Buffer, RowWindow),
    (b, b_win): (&wgpu::Buffer, RowWindow),
    ssm_a: &wgpu::Buffer,
    dt_bias: &wgpu::Buffer,
    (g, beta): (&wgpu::Buffer, &wgpu::Buffer),
    max_tok: u32,
    n_heads: u32,
) -> Result<()> {
    let n = check_grid("gdn decay", max_tok, n_heads)?;
    check_window(a_win, "gdn decay a", a, max_tok, n_heads)?;
    check_window(b_win, "gdn decay b", b, max_tok, n_heads)?;
    check_len("gdn decay ssm_a", ssm_a, n_heads as u64)?;
    check_len("gdn decay dt_bias", dt_bias, n_heads as u64)?;
    check_len("gdn decay g", g, n as u64)?;
    check_len("gdn decay beta", beta, n as u64)?;
    let params = Params {
        max_tok,
        width: n_heads,
        kernel: 0,
        x_stride: a_win.stride,
        x_offset: a_win.offset,
        b_stride: b_win.stride,
        b_offset: b_win.offset,
        eps: 0.0,
    };
    let spec = KernelSpec::new("gdn_prep", SHADER, "gdn_decay", DECAY).with_prefix(STEP);
    let args = [Arg::Buf(step), Arg::Buf(a), Arg::Buf(b), Arg::Buf(ssm_a), Arg::Buf(dt_bias), Arg::Buf(g), Arg::Buf(beta)];
    prog.push_with_params(gpu, &spec, &params, &args, grid_1d(n.div_ceil(WG)))?;
    prog.set_launch(Launch::threads(WG));
    Ok(())
}

/// Records `out = rmsnorm(o) * weight * silu(z)` per token and v head over `head_dim`.
#[allow(clippy::too_many_arguments)]
pub fn gated_norm(
    prog: &mut Program,
    gpu: &Gpu,
    step: &wgpu::Buffer,
    o: &wgpu::Buffer,
    (z, z_win): (&wgpu::Buffer, RowWindow),
    weight: &wgpu::Buffer,
    out: &wgpu::Buffer,
    shape: &GatedNormShape,
) -> Result<()> {
    let GatedNormShape { max_tok, n_heads, head_dim, eps } = *shape;
    let rows = check_grid("gdn gated norm", max_tok, n_heads)?;
    let width = check_grid("gdn gated norm", n_heads, head_dim)?;
    let n = check_grid("gdn gated norm", max_tok, width)?;
    if !(eps.is_finite() && eps >= 0.0) {
        return shape_err(format!("gdn gated norm: eps {eps}"));
    }
    check_len("gdn gated norm o", o, n as u64)?;
    check_window(z_win, "gdn gated norm z", z, max_tok, width)?;
    check_len("gdn gated norm weight", weight, head_dim as u64)?;
    check_len("gdn gated norm out", out, n as u64)?;
    let params = Params {
        max_tok,
        width: n_heads,
        kernel: head_dim,
        x_stride: z_win.stride,
        x_offset: z_win.offset,
        b_stride: 0,
        b_offset: 0,
        eps,
    };
    let spec = KernelSpec::new("gdn_prep", SHADER, "gated_rms_norm", NORM).with_prefix(STEP);
    let args = [Arg::Buf(step), Arg::Buf(o), Arg::Buf(z), Arg::Buf(weight), Arg::Buf(out)];
    prog.push_with_params(gpu, &spec, &params, &args, grid_1d(rows))?;
    prog.set_launch(Launch::threads(NORM_WG));
    Ok(())
}
