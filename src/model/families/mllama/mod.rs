//! The Mllama family (Llama 3.2 Vision's text decoder, GGUF-keyed `mllama` from a Hugging
//! Face `MllamaForConditionalGeneration` folder): Llama 3 self-attention layers with
//! cross-attention layers in between that attend to the projected image states.
//! Reference: transformers' `MllamaTextModel` (`modeling_mllama.py`); the math is in
//! `docs/MODELS.md`, "Llama 3.2 Vision".
//!
//! Only the self-attention layers keep a KV cache ([`Mllama::layers`] lists them in order);
//! the image keys and values of the cross layers are a [`CrossStore`] in the context's
//! scratch, set with `Context::set_cross_attention`. A cross layer is
//! `x += tanh(attn_gate) * o(attn(q_norm(q(norm(x))), K, V))`, then
//! `x += tanh(mlp_gate) * row_mask * mlp(norm(x))`; without images the cross layers are
//! skipped.

mod config;
mod cross;
mod mask;
mod weights;

pub use config::{MllamaConfig, ARCH};
pub use cross::CrossStore;
pub use mask::{kernel_mask, processor_mask};
pub use weights::{CrossLayerWeights, MllamaLayer, MllamaWeights};

use crate::backend::gpu::Result as GpuResult;
use crate::backend::{Buffer, Device, Program};
use crate::kernels::attention::{default_splits, AttnShape, DecodeScratch};
use crate::kernels::cross_attention::{cross_attention, gated_add, CrossAttnShape};
use crate::kernels::norm;
use crate::kernels::rope::{rope_table, RopeFreqs};
use crate::model::blocks::attention::AttentionIo;
use crate::model::blocks::ffn::FfnScratch;
use crate::model::blocks::{linear, linear_stacked};
use crate::model::rows::{Pick, Rows};
use crate::model::state::LayerKind;
use crate::model::step::{LogitsMode, StepBuffers};
use crate::model::ModelError;
use crate::source::{check_dims, LoadError, WeightLoader};

/// Llama 3's per-frequency RoPE divisors, as for the llama family.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// A loaded Mllama text decoder.
pub struct Mllama {
    pub cfg: MllamaConfig,
    pub weights: MllamaWeights,
    rope: RopeFreqs,
}

/// Per-context scratch of one step, sized for `chunk` tokens, and the cross-attention store.
pub struct Scratch {
    qkv: Buffer,
    attn: Buffer,
    /// Cross layers' raw queries before their per-head norm, `[chunk][q_dim]`.
    q_raw: Buffer,
    gate_up: Buffer,
    act: Buffer,
    /// A cross layer's MLP output before its gated add, `[chunk][n_embd]`.
    ffn_out: Buffer,
    /// The step's MLP row mask, `[chunk]` f32.
    row_mask: Buffer,
    decode: DecodeScratch,
    chunk: u32,
    /// The sequence's image keys and values (None: no image, cross layers skipped).
    pub cross: Option<CrossStore>,
}

impl Scratch {
    /// Writes the step's cross-attention mask inputs for positions `start..start + n`.
    pub fn write_step(&self, dev: &Device, start: u32, n: u32) -> GpuResult<()> {
        match &self.cross {
            Some(c) => c.write_step(dev, &self.row_mask, start, n),
            None => Ok(()),
        }
    }
}

impl Mllama {
    /// Reads the config (`embd_rows` from the embedding's rows) and has `src` load every weight.
    pub fn load_from(dev: &Device, src: &mut dyn WeightLoader, embd_rows: u32) -> Result<Mllama, ModelError> {
        let cfg = MllamaConfig::from_metadata(src.metadata(), embd_rows)?;
        let weights = MllamaWeights::load_from(dev, src, &cfg)?;
        let t = &cfg.llama.text;
        let rope = RopeFreqs::upload(dev, &rope_table(t.head_dim as usize, cfg.llama.rope_theta as f64, None))
            .map_err(LoadError::from)?;
        if src.tensor_info(ROPE_FREQS).is_some() {
            check_dims(ROPE_FREQS, src.tensor_info(ROPE_FREQS), &[rope.n_rot as u64 / 2])?;
            src.fill(dev, ROPE_FREQS, &rope.table, RopeFreqs::FACTORS_ROW)?;
        }
        Ok(Mllama { cfg, weights, rope })
    }

    /// A KV cache for each self-attention layer, in layer order (cross layers keep none).
    pub fn layers(&self) -> Vec<LayerKind> {
        let t = &self.cfg.llama.text;
        let n_self = t.n_layer as usize - self.cfg.cross_layers.len();
        vec![LayerKind::Attention { kv_dim: t.kv_dim() }; n_self]
    }

    /// Buffers for steps of `chunk` rows; the split-K decode partials for `decode_seqs`
    /// one-token sequences over `max_ctx` keys (1 for a context; a batched step whose
    /// sequences share a KV arena runs their attention together).
    pub fn scratch(&self, dev: &Device, chunk: u32, max_ctx: u32, decode_seqs: u32) -> GpuResult<Scratch> {
        let c = &self.cfg.llama.text;
        let buf = |label: &str, cols: u32| dev.storage(label, 4 * chunk as u64 * cols as u64);
        let shape = AttnShape::new(c.n_head, c.n_head_kv, c.head_dim, decode_seqs.max(1));
        Ok(Scratch {
            qkv: buf("qkv", self.cfg.llama.attention().qkv_width())?,
            attn: buf("attn", c.q_dim())?,
            q_raw: buf("q_raw", c.q_dim())?,
            gate_up: buf("gate_up", 2 * c.n_ff)?,
            act: buf("act", c.n_ff)?,
            ffn_out: buf("ffn_out", c.n_embd)?,
            row_mask: buf("row_mask", 1)?,
            decode: DecodeScratch::new(dev, &shape, default_splits(max_ctx))?,
            chunk,
            cross: None,
        })
    }

    /// Computes the image keys and values of `states` into `s` (see [`CrossStore::new`]).
    pub fn set_cross(
        &self,
        dev: &Device,
        s: &mut Scratch,
        states: &Buffer,
        n_tiles: u32,
        mask: &[u32],
    ) -> Result<(), ModelError> {
        s.cross = Some(CrossStore::new(dev, &self.cfg, &self.weights, states, n_tiles, mask, s.chunk)?);
        Ok(())
    }

    /// Records the blocks and the head over the step's embedded rows in `rows.b.x`: self
    /// layers as llama's, cross layers (for the sequences that have images) as in the module
    /// doc. A batched step runs a cross block per sequence (its weights read once per
    /// sequence with images; the self layers, most of the decoder, read theirs once).
    pub fn record(&self, p: &mut Program, dev: &Device, rows: &Rows<'_, Scratch>, mode: LogitsMode) -> GpuResult<()> {
        let c = &self.cfg;
        let (b, n) = (rows.b, rows.n);
        let (d, eps, mm, shape) = (c.llama.text.n_embd, c.llama.rms_eps, rows.products(), c.llama.attention());
        let (mut self_i, mut cross_i) = (0, 0);
        for l in &self.weights.layers {
            match l {
                MllamaLayer::SelfAttn(l) => {
                    let i = self_i;
                    self_i += 1;
                    norm::rms_norm(p, dev, &b.x, &l.attn_norm, &b.h, n, d, eps)?;
                    let picks: (Pick<Scratch>, Pick<Scratch>) = (|_, s| &s.qkv, |_, s| &s.attn);
                    l.attn.record(p, dev, &shape, &self.rope, rows, picks, |q| {
                        let (k_cache, v_cache) = q.state.kv(i);
                        AttentionIo { k_cache, v_cache, decode_scratch: &q.s.decode }
                    })?;
                    norm::rms_norm(p, dev, &b.x, &l.ffn_norm, &b.h, n, d, eps)?;
                    l.ffn.record(p, dev, &b.h, FfnScratch { gate_up: &rows.s.gate_up, act: &rows.s.act }, &b.x, n, mm)?;
                }
                MllamaLayer::Cross(l) => {
                    let x: (Pick<Scratch>, u32) = (|b, _| &b.x, d);
                    rows.per_sequence(p, &[x], x, |p, q, n| match &q.s.cross {
                        Some(cross) => self.record_cross(p, dev, q.b, q.s, cross, cross_i, l, n),
                        None => Ok(()),
                    })?;
                    cross_i += 1;
                }
            }
        }
        self.weights.head.record_logits(p, dev, rows, mode)
    }

    /// One cross-attention block over `n` tokens with the `i`-th cross layer's image keys.
    #[allow(clippy::too_many_arguments)]
    fn record_cross(
        &self,
        p: &mut Program,
        dev: &Device,
        b: &StepBuffers,
        s: &Scratch,
        cross: &CrossStore,
        i: usize,
        l: &CrossLayerWeights,
        n: u32,
    ) -> GpuResult<()> {
        let (t, mm) = (&self.cfg.llama.text, b.products(n));
        let (d, eps) = (t.n_embd, self.cfg.llama.rms_eps);
        norm::rms_norm(p, dev, &b.x, &l.attn_norm, &b.h, n, d, eps)?;
        linear(p, dev, &l.q, &b.h, &s.q_raw, n, mm)?;
        // Per-head q norm: rows of head_dim.
        norm::rms_norm(p, dev, &s.q_raw, &l.q_norm, &s.qkv, n * t.n_head, t.head_dim, eps)?;
        let shape = CrossAttnShape {
            n_tok: n,
            n_head: t.n_head,
            n_kv_head: t.n_head_kv,
            head_dim: t.head_dim,
            q_stride: t.q_dim(),
            n_tiles: cross.n_tiles,
            tile_keys: self.cfg.tile_keys,
            scale: 1.0 / (t.head_dim as f32).sqrt(),
        };
        cross_attention(p, dev, &shape, &s.qkv, &cross.k[i], &cross.v[i], &cross.mask, &s.attn)?;
        linear(p, dev, &l.o, &s.attn, &b.h, n, mm)?;
        gated_add(p, dev, &l.attn_gate, None, &b.h, &b.x, n, d)?;
        norm::rms_norm(p, dev, &b.x, &l.ffn_norm, &b.h, n, d, eps)?;
        linear_stacked(p, dev, &l.ffn.gate_up, &b.h, (&s.gate_up, 2 * t.n_ff), n, mm)?;
        crate::kernels::elementwise::silu_mul_halves(p, dev, &s.gate_up, &s.act, n, t.n_ff)?;
        linear(p, dev, &l.ffn.down, &s.act, &s.ffn_out, n, mm)?;
        gated_add(p, dev, &l.mlp_gate, Some(&s.row_mask), &s.ffn_out, &b.x, n, d)
    }
}
