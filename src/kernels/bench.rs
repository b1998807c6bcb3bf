//! Roofline ops for benchmarks, GPU-only (`backend::gpu::bench`, `shaders/bench.wgsl`; the
//! CPU roofline is `backend::cpu::bench`): a plain vec4 copy (attainable read+write bandwidth,
//! the STREAM "copy" of McCalpin 1995), a read-only xor reduction (attainable read bandwidth)
//! and a register-only FMA chain (peak f32 FLOP/s). The real kernels' GB/s and GFLOP/s are
//! reported as fractions of these on the same adapter.

pub use crate::backend::gpu::bench::{fma_flops, FMA_CHAINS};
use crate::backend::gpu::{self, Result};
use crate::backend::{Buffer, Device, Program};

/// Records `dst[i] = src[i]` for the first `n_vec4` 16-byte elements: moves `32 * n_vec4`
/// bytes (read + write).
pub fn record_copy(prog: &mut Program, dev: &Device, src: &Buffer, dst: &Buffer, n_vec4: u64) -> Result<()> {
    let (prog, gpu) = prog.gpu(dev, "bench copy")?;
    gpu::bench::copy(prog, gpu, src.gpu()?, dst.gpu()?, n_vec4)
}

/// Records a read of the first `n_vec4` elements of `src` (`16 * n_vec4` bytes); `sink`
/// (any size, at least 16 bytes) is written only in the never-taken case.
pub fn record_read(prog: &mut Program, dev: &Device, src: &Buffer, sink: &Buffer, n_vec4: u64) -> Result<()> {
    let (prog, gpu) = prog.gpu(dev, "bench read")?;
    gpu::bench::read(prog, gpu, src.gpu()?, sink.gpu()?, n_vec4)
}

/// Records `invocations` FMA chains of `iters` iterations each; returns the FLOP count
/// (`2 * 4 * FMA_CHAINS * iters * invocations`). `sink` (at least 16 bytes) receives results;
/// `src` is bound but not read.
pub fn record_fma(prog: &mut Program, dev: &Device, src: &Buffer, sink: &Buffer, invocations: u32, iters: u32) -> Result<u64> {
    let (prog, gpu) = prog.gpu(dev, "bench fma")?;
    gpu::bench::fma(prog, gpu, src.gpu()?, sink.gpu()?, invocations, iters)
}
