//! The GPU side of the backends: one code path for native `wgpu` (Vulkan/Metal/DX12) and the
//! browser's WebGPU, and the WGSL dispatches of every op.
//!
//! - [`Gpu`]: adapter + device created with the adapter's own limits, capability detection
//!   (`shader-f16`, subgroups) and readback.
//! - [`pipeline`]: kernels described by [`KernelSpec`], compiled once into a typed cache.
//! - [`params`]: a uniform arena that holds every dispatch's shape parameters.
//! - [`program`]: a recorded list of dispatches, encoded into one compute pass per step.
//! - One module per op, under the name of its CPU twin in `backend::cpu` ([`matvec`],
//!   [`attention`], [`rope`], ...): the WGSL side of the wrappers of `crate::kernels` (the
//!   shader sources, params structs, bindings, launch shapes and dispatches), called with the
//!   GPU program, the [`Gpu`] and `wgpu::Buffer`s once the wrapper has picked this side.
//!   `bench` and `sample` are GPU-only; `quant` holds the weight decoders every product
//!   prepends. (Gated DeltaNet's dispatches are still in `kernels::delta_net`.)

pub mod attention;
pub mod bench;
pub mod cross_attention;
pub mod delta_net;
mod device;
pub mod elementwise;
pub mod embedding;
pub mod gdn_prep;
pub mod matmul;
pub mod matvec;
pub mod norm;
pub mod params;
pub mod pipeline;
#[cfg(not(target_arch = "wasm32"))]
pub mod profile;
pub mod program;
pub mod quant;
pub mod rope;
pub mod sample;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod validate;
pub mod vision;
pub mod vision_mllama;
pub mod vision_qwen;

pub use device::{Adapter, BufferRegistry, Caps, DeviceLoss, Geometry, Gpu, GpuOptions, MemoryStats, Readback};
pub use params::{ParamSlot, ParamsArena};
pub use pipeline::{Access, KernelSpec, Pipeline, COMMON_WGSL};
pub use program::{Arg, Dispatch, Launch, Op, Program, WeightRead};

/// Errors of the GPU layer.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter matched the request (no WebGPU, or no Vulkan/Metal/DX12 driver).
    #[error("no GPU adapter available: {0}")]
    NoAdapter(String),
    /// The adapter refused the device request.
    #[error("GPU device request failed: {0}")]
    RequestDevice(String),
    /// A WGSL shader failed to compile or a pipeline failed validation.
    #[error("pipeline {label} failed to compile: {message}")]
    Pipeline { label: String, message: String },
    /// A buffer could not be mapped for reading.
    #[error("buffer readback failed: {0}")]
    Readback(String),
    /// The device reported a validation error.
    #[error("GPU error: {0}")]
    Device(String),
    /// The device was lost (destroyed, driver reset, GPU process crash): every later GPU
    /// operation fails too, so the model must be loaded again on a new device.
    #[error("the GPU device was lost ({0}); load the model again")]
    DeviceLost(String),
    /// The device could not allocate memory (a buffer larger than what is left).
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    /// A buffer larger than the device allows was requested.
    #[error("buffer {label} of {size} bytes exceeds the device limit of {limit} bytes")]
    BufferTooLarge { label: String, size: u64, limit: u64 },
    /// A buffer is too small for the shape a kernel was asked to process.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A kernel was given a different number of arguments than it declares.
    #[error("kernel {label} takes {expected} bindings, got {got}")]
    BindingCount { label: String, expected: usize, got: usize },
    /// Buffers, programs and devices of different backends were mixed (a programming error).
    #[error("backend mismatch: {0}")]
    WrongBackend(&'static str),
    /// An op the CPU backend does not implement yet.
    #[error("{0} has no CPU implementation yet")]
    CpuUnsupported(&'static str),
    /// A CPU op failed (a shape, a borrow): `backend::cpu::ProgramError`'s message (its
    /// allocation failures become [`GpuError::OutOfMemory`]).
    #[error("CPU backend: {0}")]
    Cpu(String),
}

pub type Result<T> = std::result::Result<T, GpuError>;

/// Workgroups per grid dimension that every adapter accepts (WebGPU's default
/// `maxComputeWorkgroupsPerDimension`).
pub const MAX_GRID_DIM: u32 = 65535;

/// Splits a 1D workgroup count into a grid that respects the [`MAX_GRID_DIM`] limit (x =
/// `ceil(n / y)`, so the grid may hold a few more workgroups than asked: kernels bound-check).
/// Kernels recover the linear index as `linear_workgroup(wid, num_workgroups)`
/// ([`COMMON_WGSL`]), i.e. `wid.x + wid.y * num_workgroups.x`.
pub fn grid_1d(n_workgroups: u32) -> [u32; 3] {
    if n_workgroups <= MAX_GRID_DIM {
        [n_workgroups.max(1), 1, 1]
    } else {
        let y = n_workgroups.div_ceil(MAX_GRID_DIM);
        [n_workgroups.div_ceil(y), y, 1]
    }
}

/// Fails when `buf` holds fewer than `floats` f32 values.
pub(crate) fn check_len(what: &str, buf: &wgpu::Buffer, floats: u64) -> Result<()> {
    if buf.size() < floats * 4 {
        return Err(GpuError::Shape(format!("{what}: buffer of {} bytes, {} needed", buf.size(), floats * 4)));
    }
    Ok(())
}
