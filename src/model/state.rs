//! One sequence's state across steps: what each layer keeps between tokens. Attention layers
//! keep a KV cache (one row per position); a recurrent layer (the linear-attention layers of
//! hybrid decoders) will keep a fixed-size state that each token overwrites. Families say
//! what their layers keep ([`LayerKind`]), the context allocates it once.
//!
//! Snapshots copy a sequence's first positions to other GPU buffers so that a sequence the
//! context is about to overwrite can be brought back later (the engine's saved prompt
//! prefixes). A KV cache can be cut at any position; a recurrent state cannot be rewound, so
//! a snapshot of a state with recurrent layers will only restore at the exact position it was
//! taken.

use crate::gpu::{Gpu, Result as GpuResult};
use crate::kernels::attention::KvDtype;

/// What one layer keeps between tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// A KV cache of `kv_dim` keys and values per position.
    Attention { kv_dim: u32 },
}

/// One layer's state on the GPU.
pub enum LayerState {
    /// Keys and values, `[max_ctx][kv_dim]` each, in the cache's dtype.
    Attention { k: wgpu::Buffer, v: wgpu::Buffer },
}

/// Every layer's state of one sequence.
pub struct SequenceState {
    layers: Vec<LayerState>,
    /// Most positions the caches hold.
    max_ctx: u32,
}

impl SequenceState {
    /// Allocates the state of `layers` for `max_ctx` positions, KV caches in `kv`.
    pub fn new(gpu: &Gpu, layers: &[LayerKind], max_ctx: u32, kv: KvDtype) -> GpuResult<SequenceState> {
        let layers = (layers.iter().enumerate())
            .map(|(i, kind)| match *kind {
                LayerKind::Attention { kv_dim } => {
                    let bytes = kv.cache_bytes(max_ctx, kv_dim);
                    Ok(LayerState::Attention {
                        k: gpu.storage(&format!("k_cache.{i}"), bytes)?,
                        v: gpu.storage(&format!("v_cache.{i}"), bytes)?,
                    })
                }
            })
            .collect::<GpuResult<Vec<_>>>()?;
        Ok(SequenceState { layers, max_ctx })
    }

    /// The KV cache of layer `i` (families call this for their attention layers).
    pub fn kv(&self, i: usize) -> (&wgpu::Buffer, &wgpu::Buffer) {
        match &self.layers[i] {
            LayerState::Attention { k, v } => (k, v),
        }
    }

    /// GPU memory of every layer's state.
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.buffers().iter().map(|b| b.size()).sum::<u64>()).sum()
    }

    /// Bytes one position takes in all KV caches.
    pub fn bytes_per_position(&self) -> u64 {
        (self.layers.iter()).map(|l| 2 * self.row_bytes(l)).sum()
    }

    fn row_bytes(&self, layer: &LayerState) -> u64 {
        match layer {
            // The cache buffers hold exactly `max_ctx` rows (padded to 4 bytes at most).
            LayerState::Attention { k, .. } => k.size() / self.max_ctx as u64,
        }
    }

    /// Bytes of a layer's first `rows` rows, rounded up to WebGPU's 4-byte copy alignment
    /// (the rounding stays inside the padded buffer).
    fn span(&self, layer: &LayerState, rows: u32) -> u64 {
        (rows as u64 * self.row_bytes(layer)).next_multiple_of(4)
    }

    /// Copies the first `rows` positions of every layer to new buffers.
    pub fn snapshot(&self, gpu: &Gpu, rows: u32) -> GpuResult<StateSnapshot> {
        let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("state snapshot") });
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let span = self.span(layer, rows);
            let copy = gpu.storage(&format!("state_snapshot.{i}"), 2 * span)?;
            let LayerState::Attention { k, v } = layer;
            enc.copy_buffer_to_buffer(k, 0, &copy, 0, span);
            enc.copy_buffer_to_buffer(v, 0, &copy, span, span);
            layers.push((copy, span));
        }
        gpu.queue.submit([enc.finish()]);
        Ok(StateSnapshot { layers, rows })
    }

    /// Puts the first `rows` positions of `snapshot` back (at most those it holds); returns
    /// the positions restored.
    pub fn restore(&self, gpu: &Gpu, snapshot: &StateSnapshot, rows: u32) -> u32 {
        let rows = rows.min(snapshot.rows);
        let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("state restore") });
        for (layer, (copy, copy_span)) in self.layers.iter().zip(&snapshot.layers) {
            let span = self.span(layer, rows);
            let LayerState::Attention { k, v } = layer;
            enc.copy_buffer_to_buffer(copy, 0, k, 0, span);
            enc.copy_buffer_to_buffer(copy, *copy_span, v, 0, span);
        }
        gpu.queue.submit([enc.finish()]);
        rows
    }
}

impl LayerState {
    fn buffers(&self) -> [&wgpu::Buffer; 2] {
        match self {
            LayerState::Attention { k, v } => [k, v],
        }
    }
}

/// The first `rows` positions of every layer's state, on the GPU.
pub struct StateSnapshot {
    /// Per layer: one buffer holding the K rows then the V rows, and the bytes of each half.
    layers: Vec<(wgpu::Buffer, u64)>,
    rows: u32,
}

impl StateSnapshot {
    /// Positions it holds.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// GPU memory it takes.
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(|(b, _)| b.size()).sum()
    }
}
