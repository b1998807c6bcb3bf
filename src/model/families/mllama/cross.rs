//! The per-context cross-attention store of the Mllama decoder: each cross layer's keys
//! k_norm(k_proj(S)) and values v_proj(S) of the sequence's image states S (computed once
//! per image set, on the GPU), the sequence's dense tile mask, and the two per-step inputs
//! the recorded step reads: the kernel's mask rows and the MLP row mask.
//!
//! Design: the image keys are not per-position state, so they live here (in the family's
//! scratch, owned by the context) rather than as a [`crate::model::state::LayerKind`]. The
//! recorded programs bind these buffers and the tile count, so the context drops them when
//! the store changes; with no images the step skips the cross layers (as transformers does
//! without `cross_attention_states`).
//! Reference: transformers' `MllamaTextCrossAttention` and `_prepare_cross_attention_mask`.

use crate::backend::gpu::Result as GpuResult;
use crate::backend::{Buffer, Device, Program};
use crate::kernels::norm;
use crate::model::blocks::linear;
use crate::model::step::Products;
use crate::model::ModelError;

use super::mask::kernel_mask;
use super::weights::{MllamaLayer, MllamaWeights};
use super::MllamaConfig;

/// Image keys and values of every cross layer and the sequence's tile mask.
pub struct CrossStore {
    /// Per cross layer (in layer order): `[n_tiles * tile_keys][kv_dim]` f32 each.
    pub k: Vec<Buffer>,
    pub v: Vec<Buffer>,
    /// Tiles of all images, `max_tiles` per image.
    pub n_tiles: u32,
    /// Dense mask `[tokens][n_tiles]` from the sequence's first position (the processor's
    /// rule, see [`super::processor_mask`]); positions past its end repeat its last row (as
    /// transformers extends the mask while generating).
    rows: Vec<u32>,
    /// The kernel's mask rows of the step, `[chunk][n_tiles]` u32.
    pub mask: Buffer,
}

impl CrossStore {
    /// Computes the keys and values of `states` (`[n_tiles * tile_keys][n_embd]` f32 on the
    /// GPU, the projected vision output of the sequence's images, image after image) for every
    /// cross layer, and keeps `mask` (`[tokens][n_tiles]`, 1 = visible) for the steps.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dev: &Device,
        cfg: &MllamaConfig,
        w: &MllamaWeights,
        states: &Buffer,
        n_tiles: u32,
        mask: &[u32],
        chunk: u32,
    ) -> Result<CrossStore, ModelError> {
        let t = &cfg.llama.text;
        let n_keys = n_tiles.checked_mul(cfg.tile_keys).filter(|&k| k > 0 && k <= 1 << 20);
        let Some(n_keys) = n_keys.filter(|_| n_tiles.is_multiple_of(cfg.max_tiles)) else {
            return Err(ModelError::Invalid(format!("{n_tiles} image tiles (a multiple of {} per image)", cfg.max_tiles)));
        };
        if states.size() < 4 * n_keys as u64 * t.n_embd as u64 {
            return Err(ModelError::Invalid(format!("image states of {} bytes for {n_keys} keys", states.size())));
        }
        if mask.is_empty() || !mask.len().is_multiple_of(n_tiles as usize) {
            return Err(ModelError::Invalid(format!("a mask of {} values for {n_tiles} tiles", mask.len())));
        }
        let kv_bytes = 4 * n_keys as u64 * t.kv_dim() as u64;
        let raw = dev.storage("cross_k_raw", kv_bytes)?;
        let (mut ks, mut vs) = (Vec::new(), Vec::new());
        let mut p = Program::new();
        for l in &w.layers {
            let MllamaLayer::Cross(l) = l else { continue };
            let (k, v) = (dev.storage("cross_k", kv_bytes)?, dev.storage("cross_v", kv_bytes)?);
            let mm = Products::Matmul(crate::kernels::matmul::MatmulCompute::F32);
            linear(&mut p, dev, &l.k, states, &raw, n_keys, mm)?;
            norm::rms_norm(&mut p, dev, &raw, &l.k_norm, &k, n_keys * t.n_head_kv, t.head_dim, cfg.llama.rms_eps)?;
            linear(&mut p, dev, &l.v, states, &v, n_keys, mm)?;
            ks.push(k);
            vs.push(v);
        }
        p.run(dev)?;
        let mask_buf = dev.storage("cross_mask", 4 * chunk as u64 * n_tiles as u64)?;
        Ok(CrossStore { k: ks, v: vs, n_tiles, rows: mask.to_vec(), mask: mask_buf })
    }

    /// Bytes the store holds on the GPU: every cross layer's keys and values and the step's
    /// mask rows (the raw keys are a temporary of [`Self::new`]).
    pub fn bytes(&self) -> u64 {
        self.k.iter().chain(&self.v).map(Buffer::size).sum::<u64>() + self.mask.size()
    }

    /// Writes the mask rows and MLP row mask of the `n` positions from `start`.
    pub fn write_step(&self, dev: &Device, row_mask: &Buffer, start: u32, n: u32) -> GpuResult<()> {
        let nt = self.n_tiles as usize;
        let last = self.rows.len() / nt - 1;
        let dense: Vec<u32> =
            (start as usize..(start + n) as usize).flat_map(|p| &self.rows[p.min(last) * nt..][..nt]).copied().collect();
        let (rows, keep) = kernel_mask(&dense, nt);
        dev.write(&self.mask, 0, bytemuck::cast_slice(&rows))?;
        dev.write(row_mask, 0, bytemuck::cast_slice(&keep))
    }
}
