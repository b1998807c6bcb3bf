//! The CPU as a device of the model code (`backend::Device::Cpu`): the thread pool ops run
//! on, the matvec mode (fast: 8-bit activations; exact: f32), whether weights are used where
//! they lie in a mapped file, and the capabilities the model code reads to pick its shapes.

use super::matvec::Mode;
use super::pool::{PoolError, ThreadPool};
use super::repacked::Repacked;
use super::simd;
use crate::backend::gpu::{Caps, Geometry};

/// The CPU backend's device.
pub struct Device {
    pub pool: ThreadPool,
    pub mode: Mode,
    /// Whether a mapped GGUF's matrices are used where they lie (the default) rather than
    /// copied into memory.
    pub map_weights: bool,
    pub caps: Caps,
}

impl Device {
    /// A device running ops on `threads` threads in `mode`.
    pub fn new(threads: usize, mode: Mode) -> Result<Device, PoolError> {
        let pool = ThreadPool::new(threads)?;
        let level = simd::process_level();
        let caps = Caps {
            f16: false,
            // The fast mode halves the KV cache's memory and the bytes decode reads from it, as
            // llama.cpp's default f16 cache does; the exact mode keeps f32.
            kv_f16: mode == Mode::Fast,
            subgroups: false,
            max_storage_binding: isize::MAX as u64,
            max_buffer: isize::MAX as u64,
            max_workgroup_invocations: 1,
            max_workgroup_storage: 0,
            max_storage_buffers_per_stage: u32::MAX,
            min_uniform_offset_alignment: 4,
            max_uniform_binding: isize::MAX as u64,
            adapter: format!("CPU ({level}, {} threads, {mode:?} mode)", pool.threads()),
            backend: "cpu".into(),
            software: false,
            geometry: Geometry::Cpu,
            prefill_chunk: 512,
            repacked_weights: mode == Mode::Fast && Repacked::at_level(level),
        };
        Ok(Device { pool, mode, map_weights: true, caps })
    }
}
