//! Copies of the first rows of a context's KV cache, so that a sequence the context is about
//! to overwrite can be brought back later (the engine's saved prompt prefixes). The copies
//! stay on the GPU: one buffer per layer holds the K rows, then the V rows.

use crate::gpu::{Gpu, Result as GpuResult};

use super::Context;

/// The first `rows` KV-cache rows of every layer.
pub struct KvSnapshot {
    layers: Vec<wgpu::Buffer>,
    rows: u32,
    /// Bytes of one layer's K (or V) rows, rounded up to WebGPU's 4-byte copy alignment.
    span: u64,
}

impl KvSnapshot {
    /// Cached positions it holds.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// GPU memory it takes.
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(wgpu::Buffer::size).sum()
    }
}

impl Context {
    /// Bytes one cached position takes in all layers' K and V.
    pub fn kv_bytes_per_token(&self) -> u64 {
        2 * self.b.kv.len() as u64 * self.kv_row_bytes()
    }

    fn kv_row_bytes(&self) -> u64 {
        // The cache buffers hold exactly `max_ctx` rows (padded to 4 bytes at most).
        self.b.kv[0].0.size() / self.opts.max_ctx as u64
    }

    /// Bytes of `rows` rows, rounded up to 4 (the rounding stays inside the padded buffer).
    fn kv_span(&self, rows: u32) -> u64 {
        (rows as u64 * self.kv_row_bytes()).next_multiple_of(4)
    }

    /// Copies the first `rows` cached positions (at most those in the cache) to new buffers.
    pub fn save_kv(&mut self, gpu: &Gpu, rows: u32) -> GpuResult<KvSnapshot> {
        let rows = rows.min(self.n_past);
        let span = self.kv_span(rows);
        let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kv snapshot") });
        let mut layers = Vec::with_capacity(self.b.kv.len());
        for (i, (k, v)) in self.b.kv.iter().enumerate() {
            let copy = gpu.storage(&format!("kv_snapshot.{i}"), 2 * span)?;
            enc.copy_buffer_to_buffer(k, 0, &copy, 0, span);
            enc.copy_buffer_to_buffer(v, 0, &copy, span, span);
            layers.push(copy);
        }
        gpu.queue.submit([enc.finish()]);
        self.counters.submits += 1;
        Ok(KvSnapshot { layers, rows, span })
    }

    /// Puts the first `rows` positions of `snapshot` back; the cache then holds those.
    pub fn restore_kv(&mut self, gpu: &Gpu, snapshot: &KvSnapshot, rows: u32) {
        let rows = rows.min(snapshot.rows);
        let span = self.kv_span(rows);
        let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kv restore") });
        for ((k, v), copy) in self.b.kv.iter().zip(&snapshot.layers) {
            enc.copy_buffer_to_buffer(copy, 0, k, 0, span);
            enc.copy_buffer_to_buffer(copy, snapshot.span, v, 0, span);
        }
        gpu.queue.submit([enc.finish()]);
        self.counters.submits += 1;
        self.n_past = rows;
    }
}
