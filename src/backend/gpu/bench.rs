//! The roofline dispatches for benchmarks (`shaders/bench.wgsl`, GPU-only): a plain vec4 copy
//! (attainable read+write bandwidth, the STREAM "copy" of McCalpin 1995), a read-only xor
//! reduction (attainable read bandwidth) and a register-only FMA chain (peak f32 FLOP/s). The
//! real kernels' GB/s and GFLOP/s are reported as fractions of these on the same adapter.

use bytemuck::{Pod, Zeroable};

use super::{grid_1d, Access, Arg, Gpu, GpuError, KernelSpec, Program, Result};

pub(super) const SHADER: &str = include_str!("../../../shaders/bench.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::ReadWrite];
/// Invocations per workgroup (`WG`), vec4 loads per invocation of `read_sum` (`PER`).
const WG: u32 = 256;
const READ_PER: u32 = 16;
/// Independent vec4 FMA chains per invocation of `fma_peak` (`CHAINS`).
pub const FMA_CHAINS: u64 = 8;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    iters: u32,
    stride: u32,
    _pad: u32,
}

/// Most vec4 elements one dispatch addresses (keeps linear ids below 2^32).
fn check_vec4s(what: &str, buf: &wgpu::Buffer, n_vec4: u64) -> Result<u32> {
    if buf.size() < n_vec4 * 16 {
        return Err(GpuError::Shape(format!("{what}: buffer of {} bytes, {} needed", buf.size(), n_vec4 * 16)));
    }
    u32::try_from(n_vec4).map_err(|_| GpuError::Shape(format!("{what}: {n_vec4} elements exceed one dispatch")))
}

/// Records `dst[i] = src[i]` for the first `n_vec4` 16-byte elements.
pub fn copy(prog: &mut Program, gpu: &Gpu, src: &wgpu::Buffer, dst: &wgpu::Buffer, n_vec4: u64) -> Result<()> {
    let n = check_vec4s("bench copy src", src, n_vec4)?;
    check_vec4s("bench copy dst", dst, n_vec4)?;
    let spec = KernelSpec::new("bench", SHADER, "copy", BINDINGS);
    let params = Params { n, iters: 0, stride: 0, _pad: 0 };
    prog.push_with_params(gpu, &spec, &params, &[Arg::Buf(src), Arg::Buf(dst)], grid_1d(n.div_ceil(WG)))
}

/// Records a read of the first `n_vec4` elements of `src`; `sink` is written only in the
/// never-taken case.
pub fn read(prog: &mut Program, gpu: &Gpu, src: &wgpu::Buffer, sink: &wgpu::Buffer, n_vec4: u64) -> Result<()> {
    let n = check_vec4s("bench read src", src, n_vec4)?;
    check_vec4s("bench read sink", sink, 1)?;
    let spec = KernelSpec::new("bench", SHADER, "read_sum", BINDINGS);
    let grid = grid_1d(n.div_ceil(WG * READ_PER));
    let stride = grid[0] * grid[1] * WG;
    let params = Params { n, iters: 0, stride, _pad: 0 };
    prog.push_with_params(gpu, &spec, &params, &[Arg::Buf(src), Arg::Buf(sink)], grid)
}

/// Records `invocations` FMA chains of `iters` iterations each; returns the FLOP count
/// ([`fma_flops`]).
pub fn fma(prog: &mut Program, gpu: &Gpu, src: &wgpu::Buffer, sink: &wgpu::Buffer, invocations: u32, iters: u32) -> Result<u64> {
    check_vec4s("bench fma sink", sink, 1)?;
    let spec = KernelSpec::new("bench", SHADER, "fma_peak", BINDINGS);
    let params = Params { n: invocations, iters, stride: 0, _pad: 0 };
    prog.push_with_params(gpu, &spec, &params, &[Arg::Buf(src), Arg::Buf(sink)], grid_1d(invocations.div_ceil(WG)))?;
    Ok(fma_flops(invocations, iters))
}

/// FLOP of one [`fma`] dispatch: `2 * 4 * FMA_CHAINS * iters * invocations`.
pub fn fma_flops(invocations: u32, iters: u32) -> u64 {
    2 * 4 * FMA_CHAINS * iters as u64 * invocations as u64
}
