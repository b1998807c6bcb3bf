//! The RoPE dispatches (`shaders/rope.wgsl`, after `shaders/step.wgsl`): rotation in place of q
//! or k (with the query scaling), the fused "rotate k and store k, v in the KV cache" kernel
//! (f32 or f16 caches), the fused q|k|v one, and their interleaved M-RoPE variants, whose
//! positions come from a buffer. One invocation per rotated pair, 256 per workgroup; the
//! frequency table is a buffer of two rows (the inverse frequencies, the divisors), positions
//! the per-step uniform's `rope_pos0 + t`.

use bytemuck::{Pod, Zeroable};

use super::attention::{Steps, SEQ_ONE, SEQ_ROWS, STEP};
use super::{grid_1d, Access, Arg, Gpu, KernelSpec, Launch, Program, Result};
use crate::kernels::shapes::{KvDtype, QScale, QkvRope, RopeLayout, RopeMode};

pub(super) const SHADER: &str = include_str!("../../../shaders/rope.wgsl");
const INPLACE: &[Access] = &[Access::Uniform, Access::Uniform, Access::Read, Access::ReadWrite];
const KV_STORE: &[Access] =
    &[Access::Uniform, Access::Uniform, Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite];
/// `rope_qkv_store`: the fused rows (read and written), then the caches.
const QKV_STORE: &[Access] =
    &[Access::Uniform, Access::Uniform, Access::Read, Access::ReadWrite, Access::ReadWrite, Access::ReadWrite];
/// `rope_qkv_store` of the sequences of a batched step: a step per token row, in storage.
const QKV_STORE_SEQS: &[Access] =
    &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite, Access::ReadWrite];
/// The M-RoPE entries: the plain entry's bindings, then the positions.
const INPLACE_MROPE: &[Access] = &[Access::Uniform, Access::Uniform, Access::Read, Access::ReadWrite, Access::Read];
const KV_STORE_MROPE: &[Access] = &[
    Access::Uniform,
    Access::Uniform,
    Access::Read,
    Access::Read,
    Access::Read,
    Access::ReadWrite,
    Access::ReadWrite,
    Access::Read,
];
const WG: u32 = 256;

/// A frequency table as the kernels bind it (`kernels::rope::RopeFreqs` on the GPU).
#[derive(Clone, Copy)]
pub struct Freqs<'a> {
    /// `[2][n_rot / 2]` f32: the inverse frequencies, then the divisors.
    pub table: &'a wgpu::Buffer,
    pub attn_factor: f32,
    /// Rotated dims.
    pub n_rot: u32,
}

/// Interleaved M-RoPE positions as the kernels bind them: the `[3][n_tok]` u32 (t, h, w)
/// positions and the `mrope_section` (checked against `n_rot` by the caller).
#[derive(Clone, Copy)]
pub struct MropePositions<'a> {
    pub positions: &'a wgpu::Buffer,
    pub sections: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    max_tok: u32,
    n_heads: u32,
    head_dim: u32,
    n_rot: u32,
    x_stride: u32,
    x_offset: u32,
    v_stride: u32,
    v_offset: u32,
    cache_stride: u32,
    neox: u32,
    attn_factor: f32,
    q_beta: f32,
    q_orig_ctx: u32,
    n_q: u32,
    mrope_h: u32,
    mrope_w: u32,
}

/// The params of `l` (the caller checks `freqs.n_rot` against its heads).
fn params(l: &RopeLayout, freqs: &Freqs, v: Option<&RopeLayout>, q: QScale) -> Params {
    Params {
        max_tok: l.max_tok,
        n_heads: l.n_heads,
        head_dim: l.head_dim,
        n_rot: freqs.n_rot,
        x_stride: l.stride,
        x_offset: l.offset,
        v_stride: v.map_or(0, |v| v.stride),
        v_offset: v.map_or(0, |v| v.offset),
        cache_stride: l.n_heads * l.head_dim,
        neox: (l.mode == RopeMode::RotateHalf) as u32,
        attn_factor: freqs.attn_factor,
        q_beta: q.beta,
        q_orig_ctx: q.orig_ctx,
        n_q: 0,
        mrope_h: 0,
        mrope_w: 0,
    }
}

/// `p` turning the h and w pairs of `m`'s sections with those positions.
fn mrope(p: Params, m: &MropePositions) -> Params {
    let [_, h, w] = m.sections;
    Params { mrope_h: h, mrope_w: w, ..p }
}

fn grid(l: &RopeLayout) -> [u32; 3] {
    grid_1d((l.max_tok * l.n_heads * l.head_dim / 2).div_ceil(WG))
}

/// Records RoPE in place on `x` (q or k) for the step's `n_tok` rows at positions
/// `rope_pos0 + t`, then the multiplication by `q_scale`.
pub fn rope_inplace(
    prog: &mut Program,
    gpu: &Gpu,
    step: &wgpu::Buffer,
    freqs: &Freqs,
    x: &wgpu::Buffer,
    layout: &RopeLayout,
    q_scale: QScale,
) -> Result<()> {
    let spec = KernelSpec::new("rope", SHADER, "rope_inplace", INPLACE).with_prefix(STEP).with_prefix(SEQ_ONE);
    let p = params(layout, freqs, None, q_scale);
    prog.push_with_params(gpu, &spec, &p, &[Arg::Buf(step), Arg::Buf(freqs.table), Arg::Buf(x)], grid(layout))?;
    prog.set_launch(Launch::threads(WG));
    Ok(())
}

/// Records RoPE of the new k rows and their store, with the v rows, into the caches of `kv`
/// at rows `kv_start + t` (`k` and `v` may be one buffer).
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_store(
    prog: &mut Program,
    gpu: &Gpu,
    step: &wgpu::Buffer,
    freqs: &Freqs,
    (k, k_layout): (&wgpu::Buffer, &RopeLayout),
    (v, v_layout): (&wgpu::Buffer, &RopeLayout),
    (k_cache, v_cache): (&wgpu::Buffer, &wgpu::Buffer),
    kv: KvDtype,
) -> Result<()> {
    let entry = match kv {
        KvDtype::F32 => "rope_kv_store",
        KvDtype::F16 => "rope_kv_store_f16",
    };
    let spec = KernelSpec::new("rope", SHADER, entry, KV_STORE).with_prefix(STEP).with_prefix(SEQ_ONE);
    let p = params(k_layout, freqs, Some(v_layout), QScale::NONE);
    let args = [Arg::Buf(step), Arg::Buf(freqs.table), Arg::Buf(k), Arg::Buf(v), Arg::Buf(k_cache), Arg::Buf(v_cache)];
    prog.push_with_params(gpu, &spec, &p, &args, grid(k_layout))?;
    prog.set_launch(Launch::threads(WG));
    Ok(())
}

/// [`rope_inplace`] of q and [`rope_kv_store`] of k and v in one dispatch over fused q|k|v
/// rows (`qkv`, bound once, read and written), at one sequence's step; or, with
/// [`Steps::PerRow`], of `layout.k.max_tok` sequences of one token each, token row t at its
/// own step `steps[t]`, stored in its range of the caches (the sequences' KV arena) from the
/// step's `kv_base`.
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv_store(
    prog: &mut Program,
    gpu: &Gpu,
    steps: Steps,
    freqs: &Freqs,
    qkv: &wgpu::Buffer,
    layout: &QkvRope,
    (k_cache, v_cache): (&wgpu::Buffer, &wgpu::Buffer),
    kv: KvDtype,
) -> Result<()> {
    let entry = match kv {
        KvDtype::F32 => "rope_qkv_store",
        KvDtype::F16 => "rope_qkv_store_f16",
    };
    let (step, bindings, seq_of) = match steps {
        Steps::One(step) => (step, QKV_STORE, SEQ_ONE),
        Steps::PerRow(steps) => (steps, QKV_STORE_SEQS, SEQ_ROWS),
    };
    let spec = KernelSpec::new("rope", SHADER, entry, bindings).with_prefix(STEP).with_prefix(seq_of);
    let v = RopeLayout { offset: layout.v_offset, ..layout.k };
    let p = Params { n_q: layout.n_q_heads, ..params(&layout.k, freqs, Some(&v), layout.q_scale) };
    let all_heads = RopeLayout { n_heads: layout.n_q_heads + layout.k.n_heads, ..layout.k };
    let args = [Arg::Buf(step), Arg::Buf(freqs.table), Arg::Buf(qkv), Arg::Buf(k_cache), Arg::Buf(v_cache)];
    prog.push_with_params(gpu, &spec, &p, &args, grid(&all_heads))?;
    prog.set_launch(Launch::threads(WG));
    Ok(())
}

/// [`rope_inplace`] at the positions of `m` (no query scaling).
pub fn rope_inplace_mrope(
    prog: &mut Program,
    gpu: &Gpu,
    step: &wgpu::Buffer,
    freqs: &Freqs,
    x: &wgpu::Buffer,
    layout: &RopeLayout,
    m: &MropePositions,
) -> Result<()> {
    let spec = KernelSpec::new("rope", SHADER, "rope_inplace_mrope", INPLACE_MROPE).with_prefix(STEP).with_prefix(SEQ_ONE);
    let p = mrope(params(layout, freqs, None, QScale::NONE), m);
    let args = [Arg::Buf(step), Arg::Buf(freqs.table), Arg::Buf(x), Arg::Buf(m.positions)];
    prog.push_with_params(gpu, &spec, &p, &args, grid(layout))?;
    prog.set_launch(Launch::threads(WG));
    Ok(())
}

/// [`rope_kv_store`] at the positions of `m`.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_store_mrope(
    prog: &mut Program,
    gpu: &Gpu,
    step: &wgpu::Buffer,
    freqs: &Freqs,
    (k, k_layout): (&wgpu::Buffer, &RopeLayout),
    (v, v_layout): (&wgpu::Buffer, &RopeLayout),
    (k_cache, v_cache): (&wgpu::Buffer, &wgpu::Buffer),
    kv: KvDtype,
    m: &MropePositions,
) -> Result<()> {
    let entry = match kv {
        KvDtype::F32 => "rope_kv_store_mrope",
        KvDtype::F16 => "rope_kv_store_mrope_f16",
    };
    let spec = KernelSpec::new("rope", SHADER, entry, KV_STORE_MROPE).with_prefix(STEP).with_prefix(SEQ_ONE);
    let p = mrope(params(k_layout, freqs, Some(v_layout), QScale::NONE), m);
    let args = [
        Arg::Buf(step),
        Arg::Buf(freqs.table),
        Arg::Buf(k),
        Arg::Buf(v),
        Arg::Buf(k_cache),
        Arg::Buf(v_cache),
        Arg::Buf(m.positions),
    ];
    prog.push_with_params(gpu, &spec, &p, &args, grid(k_layout))?;
    prog.set_launch(Launch::threads(WG));
    Ok(())
}
