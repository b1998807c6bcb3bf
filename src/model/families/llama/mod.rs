//! The Llama family (GGUF `llama`: Llama, Mistral, SmolLM2; `mistral3`: Ministral 3 and
//! Mistral Small 3.1): pre-norm blocks of grouped-query attention with RoPE (YaRN and the
//! position-dependent query scaling for Ministral 3, Llama 3's frequency divisors from
//! `rope_freqs.weight`) and a SiLU-gated MLP, RMSNorm throughout. Reference: transformers' `LlamaModel` / `Ministral3Model`.

mod config;
mod weights;

pub use config::LlamaConfig;
pub use weights::{LayerWeights, LlamaWeights};

use crate::backend::gpu::Result as GpuResult;
use crate::backend::{Buffer, Device, Program};
use crate::kernels::attention::{default_splits, AttnShape, DecodeScratch};
use crate::kernels::norm;
use crate::kernels::rope::{rope_table, RopeFreqs};
use crate::model::blocks::attention::AttentionIo;
use crate::model::blocks::ffn::FfnScratch;
use crate::model::rows::Rows;
use crate::model::state::{LayerKind, SequenceState};
use crate::model::step::LogitsMode;
use crate::model::ModelError;
use crate::source::{check_dims, LoadError, WeightLoader};

/// Llama 3's per-frequency RoPE divisors (`[head_dim / 2]`, F32), when the file has them.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// The GGUF architectures this family reads.
pub const ARCHITECTURES: [&str; 2] = ["llama", "mistral3"];

/// A loaded Llama-family decoder.
pub struct Llama {
    pub cfg: LlamaConfig,
    pub weights: LlamaWeights,
    rope: RopeFreqs,
}

/// Per-context scratch of one step, sized for `chunk` tokens.
pub struct Scratch {
    qkv: Buffer,
    attn: Buffer,
    gate_up: Buffer,
    act: Buffer,
    decode: DecodeScratch,
}

impl Llama {
    /// Reads the config (`vocab` from the embedding's rows) and has `src` load every weight.
    pub fn load_from(dev: &Device, src: &mut dyn WeightLoader, vocab: u32) -> Result<Llama, ModelError> {
        let cfg = LlamaConfig::from_metadata(src.metadata(), vocab)?;
        let weights = LlamaWeights::load_from(dev, src, &cfg)?;
        let rope = RopeFreqs::upload(dev, &rope_table(cfg.text.head_dim as usize, cfg.rope_theta as f64, cfg.yarn.as_ref()))
            .map_err(LoadError::from)?;
        // Llama 3's RoPE scaling: llama.cpp's converter writes per-frequency divisors.
        if src.tensor_info(ROPE_FREQS).is_some() {
            check_dims(ROPE_FREQS, src.tensor_info(ROPE_FREQS), &[rope.n_rot as u64 / 2])?;
            src.fill(dev, ROPE_FREQS, &rope.table, RopeFreqs::FACTORS_ROW)?;
        }
        Ok(Llama { cfg, weights, rope })
    }

    /// Every layer keeps a KV cache.
    pub fn layers(&self) -> Vec<LayerKind> {
        let t = &self.cfg.text;
        vec![LayerKind::Attention { kv_dim: t.kv_dim() }; t.n_layer as usize]
    }

    /// Buffers for steps of `chunk` rows; the split-K decode partials for `decode_seqs`
    /// one-token sequences over `max_ctx` keys (1 for a context; a batched step whose
    /// sequences share a KV arena runs their attention together).
    pub fn scratch(&self, dev: &Device, chunk: u32, max_ctx: u32, decode_seqs: u32) -> GpuResult<Scratch> {
        let c = &self.cfg.text;
        let buf = |label: &str, cols: u32| dev.storage(label, 4 * chunk as u64 * cols as u64);
        let shape = AttnShape::new(c.n_head, c.n_head_kv, c.head_dim, decode_seqs.max(1));
        Ok(Scratch {
            qkv: buf("qkv", self.cfg.attention().qkv_width())?,
            attn: buf("attn", c.q_dim())?,
            gate_up: buf("gate_up", 2 * c.n_ff)?,
            act: buf("act", c.n_ff)?,
            decode: DecodeScratch::new(dev, &shape, default_splits(max_ctx))?,
        })
    }

    /// Records the blocks and the head over the step's embedded rows in `rows.b.x` at their
    /// sequences' positions. Per layer: norm, the stacked q/k/v product, one RoPE pass (q in place, k
    /// and v into the cache), attention (decode: split-K pass and combine), `wo` added into
    /// `x`, norm, the SiLU-gated gate/up product, `down` added into `x`.
    pub fn record(&self, p: &mut Program, dev: &Device, rows: &Rows<'_, Scratch>, mode: LogitsMode) -> GpuResult<()> {
        let c = &self.cfg;
        let (b, n) = (rows.b, rows.n);
        let (d, mm, shape) = (c.text.n_embd, rows.products(), c.attention());
        for (i, l) in self.weights.layers.iter().enumerate() {
            norm::rms_norm(p, dev, &b.x, &l.attn_norm, &b.h, n, d, c.rms_eps)?;
            l.attn.record(p, dev, &shape, &self.rope, rows, (|_, s| &s.qkv, |_, s| &s.attn), |q| q.s.attention_io(q.state, i))?;
            norm::rms_norm(p, dev, &b.x, &l.ffn_norm, &b.h, n, d, c.rms_eps)?;
            l.ffn.record(p, dev, &b.h, FfnScratch { gate_up: &rows.s.gate_up, act: &rows.s.act }, &b.x, n, mm)?;
        }
        self.weights.head.record_logits(p, dev, rows, mode)
    }
}

impl Scratch {
    /// Layer `i`'s cache in `state` and this scratch's decode buffers.
    fn attention_io<'a>(&'a self, state: &'a SequenceState, i: usize) -> AttentionIo<'a> {
        let (k_cache, v_cache) = state.kv(i);
        AttentionIo { k_cache, v_cache, decode_scratch: &self.decode }
    }
}
