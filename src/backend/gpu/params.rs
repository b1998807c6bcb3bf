//! The params arena: every dispatch's shape parameters live in slots of a few large uniform
//! buffers, written once when a program is built and never touched in the decode loop.

use super::Gpu;

const CHUNK_BYTES: u64 = 64 * 1024;

/// A uniform range holding one dispatch's parameters.
#[derive(Clone, Debug)]
pub struct ParamSlot {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

/// Grows in 64 KiB uniform buffers; slots are aligned to the device's uniform offset alignment.
#[derive(Default)]
pub struct ParamsArena {
    chunks: Vec<wgpu::Buffer>,
    used: u64,
}

impl ParamsArena {
    /// Stores `value` (a `#[repr(C)]` struct mirrored in WGSL) and returns its slot.
    pub fn push<T: bytemuck::Pod>(&mut self, gpu: &Gpu, value: &T) -> ParamSlot {
        let bytes = bytemuck::bytes_of(value);
        let size = (bytes.len() as u64).next_multiple_of(16);
        let align = gpu.caps.min_uniform_offset_alignment.max(16) as u64;
        let mut offset = self.used.next_multiple_of(align);
        if self.chunks.is_empty() || offset + size > CHUNK_BYTES {
            self.chunks.push(gpu.buffer(&wgpu::BufferDescriptor {
                label: Some("params"),
                size: CHUNK_BYTES,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
            offset = 0;
        }
        let buffer = self.chunks.last().expect("a chunk was just ensured").clone();
        let mut padded = bytes.to_vec();
        padded.resize(size as usize, 0);
        gpu.queue.write_buffer(&buffer, offset, &padded);
        self.used = offset + size;
        ParamSlot { buffer, offset, size }
    }

    /// Bytes of uniform memory held.
    pub fn capacity(&self) -> u64 {
        self.chunks.len() as u64 * CHUNK_BYTES
    }
}
