//! Grouped-query self-attention (Ainslie et al. 2023) with rotary position embeddings and a
//! KV cache, as in transformers' `LlamaAttention`: q/k/v projections, RoPE on q and k (the
//! rotated k and v are stored in the cache at the step's positions), causal attention over
//! the cached positions, the output projection added into the residual stream. Decode (one
//! token) uses the split-K decode kernel, longer chunks the tiled prefill kernel.
//!
//! q, k and v come from one product over the weights stacked `[wq; wk; wv]` at load when
//! their types allow (by runs of one type otherwise), into one `[n][q + 2 kv]` buffer; one
//! dispatch rotates q in place and k into the cache with v, attention reads q in place (the
//! sequences of a batched step in one op, `attention_batch`; on the GPU, one dispatch each
//! for all of them when their caches share a KV arena, `*_seqs`), and `wo` adds into the
//! residual in its epilogue.

use crate::backend::gpu::Result;
use crate::backend::{Buffer, Device, Program};
use crate::kernels::attention::{attention_batch, attention_decode_seqs, AttnSeq, AttnShape, DecodeScratch};
use crate::kernels::matvec::{Epilogue, Output};
use crate::kernels::quant::Weight;
use crate::kernels::rope::{rope_qkv_store, rope_qkv_store_seqs, QScale, QkvRope, QkvSeq, RopeFreqs, RopeLayout, RopeMode};
use crate::source::{load_stacked, LoadError, LoadQuant, Stacked, WeightLoader};

use super::{linear_into, linear_stacked};
use crate::model::rows::{Pick, Rows, Seq};

/// The projections of one attention layer.
pub struct AttentionWeights {
    /// wq `[n_head * head_dim][n_embd]`, wk and wv `[n_kv_head * head_dim][n_embd]`, stacked.
    pub qkv: Stacked,
    pub wo: Weight, // [n_embd][n_head * head_dim]
}

/// Head counts, RoPE and the query scaling of one family's attention.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub n_head: u32,
    pub n_kv_head: u32,
    pub head_dim: u32,
    /// Ministral 3's position-dependent query scaling (beta 0: off).
    pub q_scale: QScale,
}

impl AttentionShape {
    /// Floats per row of the stacked q, k, v output: `(n_head + 2 n_kv_head) * head_dim`.
    pub fn qkv_width(&self) -> u32 {
        (self.n_head + 2 * self.n_kv_head) * self.head_dim
    }
}

/// One sequence's side of an attention layer: this layer's KV cache and the decode kernel's
/// scratch.
pub struct AttentionIo<'a> {
    pub k_cache: &'a Buffer,
    pub v_cache: &'a Buffer,
    pub decode_scratch: &'a DecodeScratch,
}

impl AttentionWeights {
    /// Loads `{prefix}_q`, `_k`, `_v` (stacked where their types allow) and `_output`
    /// (llama.cpp's `blk.N.attn`).
    pub fn load(
        dev: &Device,
        src: &mut dyn WeightLoader,
        prefix: &str,
        n_embd: u32,
        s: &AttentionShape,
    ) -> std::result::Result<AttentionWeights, LoadError> {
        let (q, kv) = (s.n_head * s.head_dim, s.n_kv_head * s.head_dim);
        let names = ["q", "k", "v"].map(|m| format!("{prefix}_{m}.weight"));
        let parts = [(names[0].as_str(), q), (names[1].as_str(), kv), (names[2].as_str(), kv)];
        Ok(AttentionWeights {
            qkv: load_stacked(dev, src, &format!("{prefix}_qkv"), &parts, n_embd, LoadQuant::Keep)?,
            wo: src.matrix(dev, &format!("{prefix}_output.weight"), n_embd, q, LoadQuant::Keep)?,
        })
    }

    pub fn matrices(&self) -> Vec<&Weight> {
        self.qkv.weights().iter().chain([&self.wo]).collect()
    }

    /// Records the layer over the step's rows: the normed input `rows.b.h` projected into
    /// the buffer `qkv` picks (`[n][q + 2 kv]`), RoPE with the cache store and attention over
    /// the step's sequences (`io` gives a sequence's cache; one op each for them all on the
    /// CPU) into the one `attn` picks, `wo` added into the residual `rows.b.x`.
    pub fn record<'a, S>(
        &self,
        p: &mut Program,
        dev: &Device,
        s: &AttentionShape,
        rope: &RopeFreqs,
        rows: &Rows<'a, S>,
        (qkv, attn): (Pick<S>, Pick<S>),
        io: impl Fn(&Seq<'a, S>) -> AttentionIo<'a>,
    ) -> Result<()> {
        let (b, n, mm) = (rows.b, rows.n, rows.products());
        let (width, q_dim, kv_dim) = (s.qkv_width(), s.n_head * s.head_dim, s.n_kv_head * s.head_dim);
        linear_stacked(p, dev, &self.qkv, &b.h, (qkv(b, rows.s), width), n, mm)?;
        let kv = rows.b.precision.kv_dtype();
        let shape = |n| AttnShape { kv, q_stride: width, q_offset: 0, ..AttnShape::new(s.n_head, s.n_kv_head, s.head_dim, n) };
        let layout = |n| {
            let k =
                RopeLayout { stride: width, offset: q_dim, ..RopeLayout::dense(s.n_kv_head, s.head_dim, n, RopeMode::Adjacent) };
            QkvRope { n_q_heads: s.n_head, k, v_offset: q_dim + kv_dim, q_scale: s.q_scale }
        };
        let attend = |p: &mut Program, seqs: &[(Seq<'a, S>, u32)]| {
            let ropes = seqs.iter().map(|(q, n)| {
                let io = io(q);
                QkvSeq { step: &q.b.step, qkv: qkv(q.b, q.s), layout: layout(*n), k_cache: io.k_cache, v_cache: io.v_cache }
            });
            rope_qkv_store(p, dev, rope, kv, &ropes.collect::<Vec<_>>())?;
            let seqs = seqs.iter().map(|(q, n)| {
                let io = io(q);
                AttnSeq {
                    shape: shape(*n),
                    step: &q.b.step,
                    q: qkv(q.b, q.s),
                    k_cache: io.k_cache,
                    v_cache: io.v_cache,
                    scratch: io.decode_scratch,
                    out: attn(q.b, q.s),
                }
            });
            attention_batch(p, dev, &seqs.collect::<Vec<_>>())
        };
        match rows.arena() {
            // The sequences' caches share an arena: both passes once, in place on the rows.
            Some((all, steps)) => {
                let (io, rows_qkv, rows_attn) = (io(&all), qkv(b, rows.s), attn(b, rows.s));
                let caches = (io.k_cache, io.v_cache);
                rope_qkv_store_seqs(p, dev, rope, kv, steps, rows_qkv, &layout(n), caches)?;
                attention_decode_seqs(p, dev, &shape(n), steps, rows_qkv, caches, io.decode_scratch, rows_attn)?;
            }
            None => rows.per_sequence_then(p, &[(qkv, width)], (attn, q_dim), |_, _, _| Ok(()), attend)?,
        }
        let out = Output { stride: self.wo.rows, offset: 0, epilogue: Epilogue::Add };
        linear_into(p, dev, &self.wo, attn(b, rows.s), &b.x, out, n, mm)
    }
}
