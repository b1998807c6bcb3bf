//! The gated delta rule's dispatches (`shaders/gated_delta_net.wgsl`): `gdn_recurrent`, the
//! token-by-token recurrence (decode; `gdn_recurrent_cols`, a state column per invocation and
//! no barrier, on CPU adapters), and the chunked form of prefill, `gdn_chunk_prep` (the
//! within-chunk UT transform of every chunk at once, into a scratch buffer) then
//! `gdn_chunk_state` (the state carried across the chunks in order, 16 columns per workgroup).

use bytemuck::{Pod, Zeroable};

use super::{check_len, Access, Arg, Geometry, Gpu, GpuError, KernelSpec, Launch, Program, Result};
use crate::kernels::shapes::{DeltaNetLayout, KHeads};

pub(super) const SHADER: &str = include_str!("../../../shaders/gated_delta_net.wgsl");
const RECURRENT: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite];
const CHUNK_PREP: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::Read, Access::ReadWrite];
const CHUNK_STATE: &[Access] = &[Access::Uniform, Access::Read, Access::ReadWrite, Access::ReadWrite];
/// State columns per `gdn_chunk_state` workgroup (256 invocations, 16 lanes per column).
const BLOCK_COLS: u32 = 16;
const CHUNK_WG: u32 = 256;
/// State columns per recurrent workgroup, and its invocations (`COLS` x 4 row slices).
const COLS: u32 = 32;
const RECURRENT_WG: u32 = 128;
/// On CPU adapters (`gdn_recurrent_cols`): one invocation per state column, 16 a workgroup.
const COLS_CPU: u32 = 16;
/// Most tokens of one recurrent dispatch (each takes the state the one before left): llvmpipe
/// stops an invocation's loops after 65535 iterations in all, which a few hundred tokens' loops
/// over the d_k rows reach (the model's decode steps are one token; prompts take `chunked`).
const RECURRENT_TOKENS: usize = 128;
/// Tokens per chunk of the chunked form (torch's default `chunk_size`).
pub const CHUNK: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n_tok: u32,
    n_k_heads: u32,
    n_v_heads: u32,
    d_k: u32,
    d_v: u32,
    row_stride: u32,
    q_offset: u32,
    k_offset: u32,
    v_offset: u32,
    k_head_tiled: u32,
    q_scale: f32,
    t0: u32,
}

/// The buffers of one dispatch: the mixed rows, `g`, `beta`, the state (in place) and the
/// output, as `kernels::delta_net::DeltaNetBuffers` names them.
pub type Buffers<'a> = [&'a wgpu::Buffer; 5];

fn params(l: &DeltaNetLayout, (t0, n_tok): (usize, usize), q_scale: f32) -> Params {
    Params {
        n_tok: n_tok as u32,
        n_k_heads: l.n_k_heads,
        n_v_heads: l.n_v_heads,
        d_k: l.d_k,
        d_v: l.d_v,
        row_stride: l.row_stride,
        q_offset: l.q_offset,
        k_offset: l.k_offset,
        v_offset: l.v_offset,
        k_head_tiled: (l.k_heads == KHeads::Tiled) as u32,
        q_scale,
        t0: t0 as u32,
    }
}

/// Records `gdn_recurrent` over `n_tok` checked tokens (a dispatch per [`RECURRENT_TOKENS`]),
/// q scaled by `q_scale`: (ceil(d_v / 32),
/// Hv) workgroups of 128 invocations, each owning a quarter of one state column; on CPU
/// adapters (d_k a multiple of 4) `gdn_recurrent_cols`, (ceil(d_v / 16), Hv) workgroups of
/// 16, each invocation a whole column.
pub fn recurrent(prog: &mut Program, gpu: &Gpu, layout: &DeltaNetLayout, n_tok: usize, q_scale: f32, b: Buffers) -> Result<()> {
    let (entry, cols, invocations) = match gpu.caps.geometry {
        Geometry::Cpu if layout.d_k.is_multiple_of(4) => ("gdn_recurrent_cols", COLS_CPU, COLS_CPU),
        _ => ("gdn_recurrent", COLS, RECURRENT_WG),
    };
    let spec = KernelSpec::new("gated_delta_net", SHADER, entry, RECURRENT);
    let args = b.map(Arg::Buf);
    for t0 in (0..n_tok).step_by(RECURRENT_TOKENS) {
        let p = params(layout, (t0, RECURRENT_TOKENS.min(n_tok - t0)), q_scale);
        prog.push_with_params(gpu, &spec, &p, &args, [layout.d_v.div_ceil(cols), layout.n_v_heads, 1])?;
        prog.set_launch(Launch::threads(invocations));
    }
    Ok(())
}

/// Floats of the scratch buffer [`chunked`] needs for `n_tok` tokens: per (v head, chunk) the
/// UT matrix T and the decayed scores P (64 x 64 each), W, Qe, Kd (64 x d_k each), U (64 x d_v)
/// and the cumulative log decays (64).
pub fn chunked_scratch_len(layout: &DeltaNetLayout, n_tok: usize) -> usize {
    let (c, dk, dv) = (CHUNK, layout.d_k as usize, layout.d_v as usize);
    n_tok.div_ceil(c) * layout.n_v_heads as usize * (2 * c * c + c * (3 * dk + dv + 1))
}

/// Records the chunked form over `n_tok` checked tokens: `gdn_chunk_prep` over (chunks, Hv)
/// workgroups of 256 into `scratch` (at least [`chunked_scratch_len`] floats), then
/// `gdn_chunk_state` over (ceil(d_v / 16), Hv) workgroups of 256 (16 state columns each, kept
/// in 8 KiB of workgroup memory, carried across the chunks in order).
pub fn chunked(
    prog: &mut Program,
    gpu: &Gpu,
    layout: &DeltaNetLayout,
    n_tok: usize,
    q_scale: f32,
    b: Buffers,
    scratch: &wgpu::Buffer,
) -> Result<()> {
    let scratch_len = chunked_scratch_len(layout, n_tok);
    if scratch_len > u32::MAX as usize {
        return Err(GpuError::Shape(format!("gated delta rule: {n_tok} tokens need {scratch_len} scratch floats")));
    }
    check_len("gated delta rule scratch", scratch, scratch_len as u64)?;
    let p = params(layout, (0, n_tok), q_scale);
    let [qkv, g, beta, state, out] = b;
    let prep = KernelSpec::new("gated_delta_net", SHADER, "gdn_chunk_prep", CHUNK_PREP);
    let args = [Arg::Buf(qkv), Arg::Buf(g), Arg::Buf(beta), Arg::Buf(scratch)];
    prog.push_with_params(gpu, &prep, &p, &args, [n_tok.div_ceil(CHUNK) as u32, layout.n_v_heads, 1])?;
    prog.set_launch(Launch::threads(CHUNK_WG));
    let spec = KernelSpec::new("gated_delta_net", SHADER, "gdn_chunk_state", CHUNK_STATE);
    let args = [Arg::Buf(scratch), Arg::Buf(state), Arg::Buf(out)];
    prog.push_with_params(gpu, &spec, &p, &args, [layout.d_v.div_ceil(BLOCK_COLS), layout.n_v_heads, 1])?;
    prog.set_launch(Launch::threads(CHUNK_WG));
    Ok(())
}
