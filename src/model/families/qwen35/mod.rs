//! The Qwen3.5 family (GGUF `qwen35`): a hybrid decoder whose layers come in groups of Gated
//! DeltaNet (linear attention with a recurrent state, Yang et al. 2024) layers and one gated
//! full-attention layer (partial NeoX RoPE, per-head q/k RMSNorm, a sigmoid output gate),
//! each followed by a SiLU-gated MLP. Reference: transformers' `modeling_qwen3_5.py`,
//! llama.cpp's `qwen35` graph; the GGUF conventions are in `docs/MODELS.md`.
//!
//! Positions: interleaved multimodal RoPE (transformers' `Qwen3_5TextRotaryEmbedding` with
//! `apply_interleaved_mrope`) over the first `rope.dimension_count` dims, each token's
//! (t, h, w) positions read from [`StepBuffers::positions`] (the context writes them: equal
//! axes for text, which is ordinary NeoX RoPE; `model::vision::mrope_positions` for image
//! tokens), the sections from `rope.dimension_sections`.

mod config;
mod weights;

pub use config::{Qwen35Config, SsmConfig};
pub use weights::{DeltaNetWeights, GatedAttentionWeights, LayerWeights, Mixer, Qwen35Weights};

use crate::backend::gpu::Result as GpuResult;
use crate::backend::{Buffer, Device, Program};
use crate::kernels::attention::{attention_batch, default_splits, AttnSeq, AttnShape, DecodeScratch};
use crate::kernels::delta_net::{self, DeltaNetBuffers, DeltaNetLayout, KHeads};
use crate::kernels::gdn_prep::{self, ConvShape, GatedNormShape, RowWindow};
use crate::kernels::matvec::{Epilogue, Output};
use crate::kernels::rope::{rope_inplace_mrope, rope_kv_store_mrope, rope_table, Mrope, RopeFreqs, RopeLayout, RopeMode};
use crate::kernels::{elementwise, norm};
use crate::model::blocks::ffn::FfnScratch;
use crate::model::blocks::{linear, linear_into, linear_stacked};
use crate::model::rows::{Pick, Rows, Seq};
use crate::model::state::LayerKind;
use crate::model::step::LogitsMode;
use crate::model::ModelError;
use crate::source::WeightLoader;

/// The GGUF architectures this family reads.
pub const ARCHITECTURES: [&str; 1] = ["qwen35"];

/// A loaded Qwen3.5 decoder.
pub struct Qwen35 {
    pub cfg: Qwen35Config,
    pub weights: Qwen35Weights,
    /// NeoX RoPE over the first `n_rot` dims of each head (frequencies shared by the axes).
    rope: RopeFreqs,
}

/// Per-context scratch of one step, sized for `chunk` tokens (f32).
pub struct Scratch {
    /// DeltaNet: the stacked input projection `[chunk][q | k | v | z | a | b]`.
    mixed: Buffer,
    /// DeltaNet: the conv output `[chunk][q | k | v]`.
    conv: Buffer,
    g: Buffer,
    beta: Buffer,
    /// DeltaNet: the delta rule's output and its gated norm, `[chunk][Hv dv]`.
    o: Buffer,
    normed: Buffer,
    chunked: Buffer,
    /// Attention: `[chunk][n_head][q | gate]`, q `[chunk][n_head hd]` before and after its
    /// norm, k before and after, v, the attention output.
    qg: Buffer,
    q: Buffer,
    qn: Buffer,
    k: Buffer,
    kn: Buffer,
    v: Buffer,
    attn: Buffer,
    decode: DecodeScratch,
    gate_up: Buffer,
    act: Buffer,
}

impl Qwen35 {
    /// Reads the config (`vocab` from the embedding's rows) and has `src` load every weight.
    pub fn load_from(dev: &Device, src: &mut dyn WeightLoader, vocab: u32) -> Result<Qwen35, ModelError> {
        let cfg = Qwen35Config::from_metadata(src.metadata(), vocab)?;
        let weights = Qwen35Weights::load_from(dev, src, &cfg)?;
        let rope = RopeFreqs::upload(dev, &rope_table(cfg.n_rot as usize, cfg.rope_theta as f64, None))
            .map_err(crate::source::LoadError::from)?;
        Ok(Qwen35 { cfg, weights, rope })
    }

    fn delta_layout(&self) -> DeltaNetLayout {
        let s = &self.cfg.ssm;
        DeltaNetLayout::conv_rows(s.n_k_heads, s.n_v_heads, s.d_k, s.d_v, KHeads::Tiled)
    }

    fn attn_shape(&self, n: u32) -> AttnShape {
        let t = &self.cfg.text;
        AttnShape::new(t.n_head, t.n_head_kv, t.head_dim, n)
    }

    /// Buffers for steps of `chunk` rows; the split-K decode partials for `decode_seqs`
    /// one-token sequences over `max_ctx` keys (1 for a context; a batched step whose
    /// sequences share a KV arena runs their attention together).
    pub fn scratch(&self, dev: &Device, chunk: u32, max_ctx: u32, decode_seqs: u32) -> GpuResult<Scratch> {
        let (t, s) = (&self.cfg.text, &self.cfg.ssm);
        let buf = |label: &str, cols: u32| dev.storage(label, 4 * chunk as u64 * cols.max(1) as u64);
        let chunked = delta_net::chunked_scratch_len(&self.delta_layout(), chunk as usize).max(1);
        Ok(Scratch {
            mixed: buf("gdn_mixed", DeltaNetWeights::in_width(&self.cfg))?,
            conv: buf("gdn_conv", s.conv_channels())?,
            g: buf("gdn_g", s.n_v_heads)?,
            beta: buf("gdn_beta", s.n_v_heads)?,
            o: buf("gdn_o", s.inner())?,
            normed: buf("gdn_normed", s.inner())?,
            chunked: dev.storage("gdn_chunked", 4 * chunked as u64)?,
            qg: buf("attn_qg", 2 * t.q_dim())?,
            q: buf("attn_q", t.q_dim())?,
            qn: buf("attn_qn", t.q_dim())?,
            k: buf("attn_k", t.kv_dim())?,
            kn: buf("attn_kn", t.kv_dim())?,
            v: buf("attn_v", t.kv_dim())?,
            attn: buf("attn_out", t.q_dim())?,
            decode: DecodeScratch::new(dev, &self.attn_shape(decode_seqs.max(1)), default_splits(max_ctx))?,
            gate_up: buf("gate_up", 2 * t.n_ff)?,
            act: buf("act", t.n_ff)?,
        })
    }

    /// Records the blocks and the head over the step's embedded rows in `rows.b.x` at their
    /// sequences' positions. Per layer: norm; the mixer (DeltaNet: the stacked q|k|v|z|a|b
    /// product, conv + SiLU, decay and beta, the delta rule (recurrent for one token, chunked
    /// otherwise), the gated norm, `ssm_out` added into `x`; attention: q|gate, k and v
    /// products, per-head RMSNorm of q and k, M-RoPE of their first `n_rot` dims (k and v
    /// into the cache), attention, times sigmoid(gate), `attn_output` added into `x`);
    /// `post_attention_norm` and the SiLU-gated MLP added into `x`. The conv, delta rule and
    /// RoPE run per sequence ([`Rows::per_sequence`]), the attention of all sequences as one
    /// op ([`Rows::per_sequence_then`]).
    pub fn record(&self, p: &mut Program, dev: &Device, rows: &Rows<'_, Scratch>, mode: LogitsMode) -> GpuResult<()> {
        let (c, t, ss) = (&self.cfg, &self.cfg.text, &self.cfg.ssm);
        let (b, s, n) = (rows.b, rows.s, rows.n);
        let (d, mm, eps) = (t.n_embd, rows.products(), c.rms_eps);
        let add = Output { stride: d, offset: 0, epilogue: Epilogue::Add };
        for (i, l) in self.weights.layers.iter().enumerate() {
            norm::rms_norm(p, dev, &b.x, &l.attn_norm, &b.h, n, d, eps)?;
            match &l.mixer {
                Mixer::DeltaNet(w) => {
                    let width = DeltaNetWeights::in_width(c);
                    linear_stacked(p, dev, &w.in_proj, &b.h, (&s.mixed, width), n, mm)?;
                    let (mixed, normed): (Pick<Scratch>, Pick<Scratch>) = (|_, s| &s.mixed, |_, s| &s.normed);
                    rows.per_sequence(p, &[(mixed, width)], (normed, ss.inner()), |p, q, n| {
                        self.record_delta_net(p, dev, q, w, i, n)
                    })?;
                    linear_into(p, dev, &w.out, &s.normed, &b.x, add, n, mm)?;
                }
                Mixer::Attention(w) => {
                    let (h, kvh, hd) = (t.n_head, t.n_head_kv, t.head_dim);
                    linear(p, dev, &w.q, &b.h, &s.qg, n, mm)?;
                    linear(p, dev, &w.k, &b.h, &s.k, n, mm)?;
                    linear(p, dev, &w.v, &b.h, &s.v, n, mm)?;
                    elementwise::copy_first_halves(p, dev, &s.qg, &s.q, n * h, hd)?;
                    norm::rms_norm(p, dev, &s.q, &w.q_norm, &s.qn, n * h, hd, eps)?;
                    norm::rms_norm(p, dev, &s.k, &w.k_norm, &s.kn, n * kvh, hd, eps)?;
                    let picks: [Pick<Scratch>; 4] = [|_, s| &s.qn, |_, s| &s.kn, |_, s| &s.v, |_, s| &s.attn];
                    let inputs = [(picks[0], t.q_dim()), (picks[1], t.kv_dim()), (picks[2], t.kv_dim())];
                    let rotate = |p: &mut Program, q: &Seq<'_, Scratch>, n| self.rotate(p, dev, q, i, n);
                    let attend = |p: &mut Program, seqs: &[(Seq<'_, Scratch>, u32)]| self.attend(p, dev, seqs, i);
                    rows.per_sequence_then(p, &inputs, (picks[3], t.q_dim()), rotate, attend)?;
                    elementwise::sigmoid_mul_second_halves(p, dev, &s.qg, &s.attn, n * h, hd)?;
                    linear_into(p, dev, &w.wo, &s.attn, &b.x, add, n, mm)?;
                }
            }
            norm::rms_norm(p, dev, &b.x, &l.post_attention_norm, &b.h, n, d, eps)?;
            l.ffn.record(p, dev, &b.h, FfnScratch { gate_up: &s.gate_up, act: &s.act }, &b.x, n, mm)?;
        }
        self.weights.head.record_logits(p, dev, rows, mode)
    }

    /// A DeltaNet layer's recurrent part for one sequence's `n` tokens, from the projected
    /// `mixed` rows to the gated-normed output `normed`: the causal conv against the
    /// sequence's conv window, the decay and write strength, the delta rule against its
    /// state (the recurrent kernel for one token, the chunked one for a chunk), the gated norm.
    fn record_delta_net(
        &self,
        p: &mut Program,
        dev: &Device,
        q: &Seq<'_, Scratch>,
        w: &DeltaNetWeights,
        i: usize,
        n: u32,
    ) -> GpuResult<()> {
        let (c, ss, s, step) = (&self.cfg, &self.cfg.ssm, q.s, &q.b.step);
        let (conv_state, ssm_state) = q.state.recurrent(i);
        let (ch, inner, hv) = (ss.conv_channels(), ss.inner(), ss.n_v_heads);
        let width = DeltaNetWeights::in_width(c);
        let win = |offset| RowWindow { stride: width, offset };
        let conv = ConvShape { max_tok: n, channels: ch, kernel: ss.conv_kernel };
        gdn_prep::record_conv(p, dev, step, &s.mixed, win(0), &w.conv.parts[0].buffer, conv_state, &s.conv, &conv)?;
        let (a, bb) = ((&s.mixed, win(ch + inner)), (&s.mixed, win(ch + inner + hv)));
        gdn_prep::record_decay(p, dev, step, a, bb, &w.a, &w.dt_bias, (&s.g, &s.beta), n, hv)?;
        let bufs = DeltaNetBuffers { qkv: &s.conv, g: &s.g, beta: &s.beta, state: ssm_state, out: &s.o };
        match n {
            1 => delta_net::record_recurrent(p, dev, &self.delta_layout(), 1, &bufs)?,
            _ => delta_net::record_chunked(p, dev, &self.delta_layout(), n as usize, &bufs, &s.chunked)?,
        }
        let shape = GatedNormShape { max_tok: n, n_heads: hv, head_dim: ss.d_v, eps: c.rms_eps };
        gdn_prep::record_gated_norm(p, dev, step, &s.o, (&s.mixed, win(ch)), &w.norm, &s.normed, &shape)
    }

    /// An attention layer's M-RoPE of one sequence's `n` rows: q in place, k (and v) into
    /// the sequence's cache of layer `i`.
    fn rotate(&self, p: &mut Program, dev: &Device, q: &Seq<'_, Scratch>, i: usize, n: u32) -> GpuResult<()> {
        let (t, s, b) = (&self.cfg.text, q.s, q.b);
        let (k_cache, v_cache) = q.state.kv(i);
        let (h, kvh, hd) = (t.n_head, t.n_head_kv, t.head_dim);
        let (q_layout, kv_layout) =
            (RopeLayout::dense(h, hd, n, RopeMode::RotateHalf), RopeLayout::dense(kvh, hd, n, RopeMode::RotateHalf));
        let [st, sh, sw, _] = self.cfg.rope_sections;
        let mrope = Mrope { positions: &b.positions, sections: [st, sh, sw] };
        rope_inplace_mrope(p, dev, &b.step, &self.rope, &s.qn, &q_layout, &mrope)?;
        let (k, v) = ((&s.kn, &kv_layout), (&s.v, &kv_layout));
        rope_kv_store_mrope(p, dev, &b.step, &self.rope, k, v, (k_cache, v_cache), b.precision.kv_dtype(), &mrope)
    }

    /// An attention layer's attention for the sequences of a step and their row counts, each
    /// against its own cache of layer `i` (one op on the CPU backend: `attention_batch`).
    fn attend(&self, p: &mut Program, dev: &Device, seqs: &[(Seq<'_, Scratch>, u32)], i: usize) -> GpuResult<()> {
        let seqs: Vec<AttnSeq> = seqs
            .iter()
            .map(|(q, n)| {
                let (k_cache, v_cache) = q.state.kv(i);
                let (s, b) = (q.s, q.b);
                let shape = AttnShape { kv: b.precision.kv_dtype(), ..self.attn_shape(*n) };
                AttnSeq { shape, step: &b.step, q: &s.qn, k_cache, v_cache, scratch: &s.decode, out: &s.attn }
            })
            .collect();
        attention_batch(p, dev, &seqs)
    }

    pub fn layers(&self) -> Vec<LayerKind> {
        layer_kinds(&self.cfg)
    }
}

/// What each layer of `cfg` keeps between tokens.
pub fn layer_kinds(cfg: &Qwen35Config) -> Vec<LayerKind> {
    let (conv, ssm) = cfg.ssm.state_floats();
    (cfg.recurrent.iter())
        .map(|&r| match r {
            true => LayerKind::Recurrent { conv_floats: conv, ssm_floats: ssm },
            false => LayerKind::Attention { kv_dim: cfg.text.kv_dim() },
        })
        .collect()
}
