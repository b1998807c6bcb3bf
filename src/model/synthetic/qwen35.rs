//! Synthetic Qwen3.5 decoders (GGUF `qwen35`, `docs/MODELS.md`): the released sizes' exact
//! shapes with random quantized weights, written the way llama.cpp's converter writes them
//! (tensor names and dims as in `tests/fixtures/tiny_qwen35_a/cases.json`), and the matching
//! Qwen vision encoder mmproj (`clip.projector_type = qwen3vl_merger`).
//!
//! Hyperparameters come from the Hugging Face `config.json` of each `Qwen/Qwen3.5-*` model
//! (`text_config`, `vision_config`): see each constructor. Where a value could not be found
//! the constructor says so.
//!
//! The type mix follows llama.cpp's Q4_K_M recipe as far as its rules name these tensors:
//! Q4_K for most matrices; Q6_K for `attn_v`, `ffn_down` and the LM head (`output`, or the
//! token embedding when tied); Q5_K for the DeltaNet `attn_qkv` (the recipe's `attn_qkv`
//! rule); the small `ssm_alpha` / `ssm_beta` projections, the conv taps and every vector F32.
//! As in the Ministral synthetic model, `attn_v` and `ffn_down` take Q6_K in every layer (the
//! recipe gives some layers Q4_K). The vision side is F16 matrices and F32 vectors, as in
//! an F16 mmproj.

use crate::gguf::{random_blocks, GgmlType, GgufWriter, MetaValue, SplitMix64, ValueType};
use crate::source::GgufBytes;

use super::{random_f16_matrix, SyntheticError, SyntheticWeights};

/// The hyperparameters of a synthetic `qwen35` decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Qwen35Shape {
    pub n_embd: u32,
    pub n_layer: u32,
    /// Every `full_attention_interval`-th layer is gated full attention, the others DeltaNet.
    pub full_attention_interval: u32,
    /// Full attention: query heads, KV heads, head dim, rotated dims (`partial_rotary_factor`
    /// x head dim) and the M-RoPE sections (pairs of dims).
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    pub n_rot: u32,
    pub rope_sections: [u32; 4],
    /// Gated DeltaNet: conv taps, q/k heads, v heads, q/k and v head dims.
    pub conv_kernel: u32,
    pub n_k_heads: u32,
    pub n_v_heads: u32,
    pub d_k: u32,
    pub d_v: u32,
    pub n_ff: u32,
    pub vocab: u32,
    /// `tie_word_embeddings`: no `output.weight`, the token embedding is the LM head.
    pub tied: bool,
}

/// Released sizes' shared values: 248320 tokens, DeltaNet head dims 128 (q/k and v), conv
/// of 4 taps, full attention every 4th layer with head dim 256, 64 rotated dims (0.25) in
/// M-RoPE sections [11, 11, 10].
const QWEN35: Qwen35Shape = Qwen35Shape {
    n_embd: 0,
    n_layer: 0,
    full_attention_interval: 4,
    n_head: 0,
    n_head_kv: 0,
    head_dim: 256,
    n_rot: 64,
    rope_sections: [11, 11, 10, 0],
    conv_kernel: 4,
    n_k_heads: 16,
    n_v_heads: 0,
    d_k: 128,
    d_v: 128,
    n_ff: 0,
    vocab: 248_320,
    tied: true,
};

impl Qwen35Shape {
    /// Qwen/Qwen3.5-0.8B `text_config`: hidden 1024, 24 layers, FFN 3584, 8 / 2 heads,
    /// DeltaNet 16 / 16 heads, tied embeddings.
    pub fn qwen35_0_8b() -> Qwen35Shape {
        Qwen35Shape { n_embd: 1024, n_layer: 24, n_head: 8, n_head_kv: 2, n_v_heads: 16, n_ff: 3584, ..QWEN35 }
    }

    /// Qwen/Qwen3.5-2B (model card: hidden 2048, 24 layers, FFN 6144, 8 / 2 heads, DeltaNet
    /// 16 / 16 heads). Its `tie_word_embeddings` was not found: tied is assumed, as in the
    /// 0.8B and 4B configs.
    pub fn qwen35_2b() -> Qwen35Shape {
        Qwen35Shape { n_embd: 2048, n_layer: 24, n_head: 8, n_head_kv: 2, n_v_heads: 16, n_ff: 6144, ..QWEN35 }
    }

    /// Qwen/Qwen3.5-4B `text_config`: hidden 2560, 32 layers, FFN 9216, 16 / 4 heads,
    /// DeltaNet 16 q/k and 32 v heads, tied embeddings.
    pub fn qwen35_4b() -> Qwen35Shape {
        Qwen35Shape { n_embd: 2560, n_layer: 32, n_head: 16, n_head_kv: 4, n_v_heads: 32, n_ff: 9216, ..QWEN35 }
    }

    /// Qwen/Qwen3.5-9B `text_config`: hidden 4096, 32 layers, FFN 12288, 16 / 4 heads,
    /// DeltaNet 16 q/k and 32 v heads, untied embeddings.
    pub fn qwen35_9b() -> Qwen35Shape {
        Qwen35Shape { n_embd: 4096, n_layer: 32, n_head: 16, n_head_kv: 4, n_v_heads: 32, n_ff: 12288, tied: false, ..QWEN35 }
    }

    /// A few-MB model of the same structure within the kernels' head dims (128): two groups
    /// of 3 DeltaNet + 1 attention layer, 2 / 1 heads of 128, DeltaNet 2 q/k and 4 v heads of
    /// 64, untied (so both the embedding and the LM head are exercised).
    pub fn tiny() -> Qwen35Shape {
        Qwen35Shape {
            n_embd: 256,
            n_layer: 8,
            n_head: 2,
            n_head_kv: 1,
            head_dim: 128,
            n_rot: 32,
            rope_sections: [6, 5, 5, 0],
            n_k_heads: 2,
            n_v_heads: 4,
            d_k: 64,
            d_v: 64,
            n_ff: 512,
            vocab: 1024,
            tied: false,
            ..QWEN35
        }
    }

    /// Width of the query projection (`attn_q` holds twice this: q and its gate).
    pub fn q_dim(&self) -> u32 {
        self.n_head * self.head_dim
    }

    /// Width of each of the key and value projections.
    pub fn kv_dim(&self) -> u32 {
        self.n_head_kv * self.head_dim
    }

    /// DeltaNet conv channels (`q | k | v`): `2 Hk dk + Hv dv`.
    pub fn conv_channels(&self) -> u32 {
        2 * self.n_k_heads * self.d_k + self.inner()
    }

    /// DeltaNet output width `Hv dv`.
    pub fn inner(&self) -> u32 {
        self.n_v_heads * self.d_v
    }

    /// Whether layer `i` is a Gated DeltaNet layer.
    pub fn recurrent(&self, i: u32) -> bool {
        !(i + 1).is_multiple_of(self.full_attention_interval)
    }

    /// Layers of each kind: (DeltaNet, full attention).
    pub fn layer_counts(&self) -> (u32, u32) {
        let r = (0..self.n_layer).filter(|&i| self.recurrent(i)).count() as u32;
        (r, self.n_layer - r)
    }

    /// Every tensor as (name, GGUF dims, type): GGUF dims are `[cols, rows]` for matrices.
    fn tensors(&self) -> Vec<(String, Vec<u64>, GgmlType)> {
        use GgmlType::{F32, Q4_K, Q5_K, Q6_K};
        let u = |v: u32| v as u64;
        let (d, hv) = (u(self.n_embd), u(self.n_v_heads));
        let embd_type = if self.tied { Q6_K } else { Q4_K };
        let mut out = vec![
            ("token_embd.weight".to_string(), vec![d, u(self.vocab)], embd_type),
            ("output_norm.weight".to_string(), vec![d], F32),
        ];
        if !self.tied {
            out.push(("output.weight".to_string(), vec![d, u(self.vocab)], Q6_K));
        }
        for i in 0..self.n_layer {
            let name = |s: &str| format!("blk.{i}.{s}");
            out.push((name("attn_norm.weight"), vec![d], F32));
            if self.recurrent(i) {
                out.extend([
                    (name("attn_qkv.weight"), vec![d, u(self.conv_channels())], Q5_K),
                    (name("attn_gate.weight"), vec![d, u(self.inner())], Q4_K),
                    (name("ssm_alpha.weight"), vec![d, hv], F32),
                    (name("ssm_beta.weight"), vec![d, hv], F32),
                    (name("ssm_conv1d.weight"), vec![u(self.conv_kernel), u(self.conv_channels())], F32),
                    (name("ssm_a"), vec![hv], F32),
                    (name("ssm_dt.bias"), vec![hv], F32),
                    (name("ssm_norm.weight"), vec![u(self.d_v)], F32),
                    (name("ssm_out.weight"), vec![u(self.inner()), d], Q4_K),
                ]);
            } else {
                out.extend([
                    (name("attn_q.weight"), vec![d, 2 * u(self.q_dim())], Q4_K),
                    (name("attn_k.weight"), vec![d, u(self.kv_dim())], Q4_K),
                    (name("attn_v.weight"), vec![d, u(self.kv_dim())], Q6_K),
                    (name("attn_q_norm.weight"), vec![u(self.head_dim)], F32),
                    (name("attn_k_norm.weight"), vec![u(self.head_dim)], F32),
                    (name("attn_output.weight"), vec![u(self.q_dim()), d], Q4_K),
                ]);
            }
            out.extend([
                (name("post_attention_norm.weight"), vec![d], F32),
                (name("ffn_gate.weight"), vec![d, u(self.n_ff)], Q4_K),
                (name("ffn_up.weight"), vec![d, u(self.n_ff)], Q4_K),
                (name("ffn_down.weight"), vec![u(self.n_ff), d], Q6_K),
            ]);
        }
        out
    }

    /// Bytes of every tensor's data in the file (matrices, conv taps, norms and vectors).
    pub fn weight_bytes(&self) -> u64 {
        self.tensors().iter().map(|(_, dims, ty)| tensor_bytes(dims, *ty)).sum()
    }

    /// Bytes of the recurrent state of every DeltaNet layer (f32): the conv window
    /// `[channels][kernel - 1]` and the delta rule's `[Hv][dk][dv]`.
    pub fn recurrent_state_bytes(&self) -> u64 {
        let conv = self.conv_channels() as u64 * (self.conv_kernel as u64 - 1);
        let ssm = self.n_v_heads as u64 * self.d_k as u64 * self.d_v as u64;
        self.layer_counts().0 as u64 * 4 * (conv + ssm)
    }

    /// Bytes of the KV caches of the full-attention layers for `ctx` positions, `elem` bytes
    /// per value (2 for the f16 cache).
    pub fn kv_bytes(&self, ctx: u64, elem: u64) -> u64 {
        self.layer_counts().1 as u64 * 2 * ctx * self.kv_dim() as u64 * elem
    }

    fn check(&self) -> Result<(), SyntheticError> {
        let k = crate::gguf::QK_K as u32;
        let quantized_cols = [self.n_embd, self.inner(), self.q_dim(), self.n_ff];
        let ok = self.n_layer > 0
            && self.full_attention_interval > 0
            && self.vocab > 0
            && [self.n_head, self.n_head_kv, self.head_dim, self.n_k_heads, self.n_v_heads, self.d_k, self.d_v]
                .iter()
                .all(|&v| v > 0)
            && quantized_cols.iter().all(|c| *c > 0 && c.is_multiple_of(k));
        if !ok {
            return Err(SyntheticError::BadShape(format!(
                "{self:?}: non-zero sizes; n_embd, Hv dv, n_head head_dim and n_ff multiples of {k}"
            )));
        }
        Ok(())
    }
}

fn tensor_bytes(dims: &[u64], ty: GgmlType) -> u64 {
    dims.iter().product::<u64>() / ty.block_size() as u64 * ty.type_size() as u64
}

/// The writer of a synthetic `qwen35` decoder of `shape` (metadata as llama.cpp writes it).
pub fn synthetic_qwen35_writer(shape: &Qwen35Shape, weights: SyntheticWeights) -> Result<GgufWriter, SyntheticError> {
    shape.check()?;
    let arch = "qwen35";
    let mut w = GgufWriter::new();
    let mut kv = |k: &str, v: MetaValue| {
        w.add_kv(if k.starts_with("general.") { k.to_string() } else { format!("{arch}.{k}") }, v);
    };
    let array = |elem: ValueType, items: Vec<MetaValue>| MetaValue::Array { elem, items };
    kv("general.architecture", MetaValue::String(arch.into()));
    kv("general.name", MetaValue::String("synthetic Qwen3.5".into()));
    kv("block_count", MetaValue::U32(shape.n_layer));
    kv("context_length", MetaValue::U32(262_144));
    kv("embedding_length", MetaValue::U32(shape.n_embd));
    kv("feed_forward_length", MetaValue::U32(shape.n_ff));
    kv("attention.head_count", MetaValue::U32(shape.n_head));
    kv("attention.head_count_kv", MetaValue::U32(shape.n_head_kv));
    kv("attention.key_length", MetaValue::U32(shape.head_dim));
    kv("attention.value_length", MetaValue::U32(shape.head_dim));
    kv("attention.layer_norm_rms_epsilon", MetaValue::F32(1e-6));
    kv("rope.dimension_count", MetaValue::U32(shape.n_rot));
    kv("rope.dimension_sections", array(ValueType::I32, shape.rope_sections.map(|s| MetaValue::I32(s as i32)).to_vec()));
    kv("rope.freq_base", MetaValue::F32(1e7));
    kv("ssm.conv_kernel", MetaValue::U32(shape.conv_kernel));
    kv("ssm.state_size", MetaValue::U32(shape.d_k));
    kv("ssm.group_count", MetaValue::U32(shape.n_k_heads));
    kv("ssm.time_step_rank", MetaValue::U32(shape.n_v_heads));
    kv("ssm.inner_size", MetaValue::U32(shape.inner()));
    kv("full_attention_interval", MetaValue::U32(shape.full_attention_interval));
    let pattern = (0..shape.n_layer).map(|i| MetaValue::Bool(shape.recurrent(i))).collect();
    kv("attention.recurrent_layers", array(ValueType::Bool, pattern));

    let mut rng = SplitMix64::new(weights.seed());
    for (index, (name, dims, ty)) in shape.tensors().into_iter().enumerate() {
        let n = dims.iter().product::<u64>() as usize;
        if dims.len() == 1 || name.ends_with("ssm_conv1d.weight") {
            // Norms near 1, a negative decay (`ssm_a` = -exp(A_log)), small biases and taps.
            let (lo, hi) = match &name {
                n if n.ends_with("ssm_a") => (-1.0, -0.1),
                n if n.ends_with("ssm_dt.bias") || n.ends_with("conv1d.weight") => (-0.5, 0.5),
                _ => (0.9, 1.1),
            };
            let bytes: Vec<u8> = (0..n).flat_map(|_| rng.uniform(lo, hi).to_le_bytes()).collect();
            w.add_tensor(name, &dims, ty, bytes)?;
            continue;
        }
        let n_blocks = n / ty.block_size();
        weights.add(&mut w, index, name, &dims, ty, |seed| random_blocks(ty, n_blocks, seed))?;
    }
    Ok(w)
}

/// A synthetic `qwen35` decoder of `shape` with weights drawn from `seed`, in memory, ready
/// for [`crate::model::Decoder::load`].
pub fn synthetic_qwen35(shape: &Qwen35Shape, seed: u64) -> Result<GgufBytes, SyntheticError> {
    let bytes = synthetic_qwen35_writer(shape, SyntheticWeights::Random { seed })?.write()?;
    Ok(GgufBytes::parse(bytes)?)
}

/// The hyperparameters of a synthetic Qwen vision encoder + merger (patch 16, temporal patch
/// 2, 2x2 merge, GELU MLP, learned `pos_side^2` position table: the values the kernels
/// implement).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QwenVisionShape {
    pub hidden: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_ff: u32,
    /// Merger output = the text model's hidden size (`out_hidden_size`).
    pub text_hidden: u32,
    /// `sqrt(num_position_embeddings)`.
    pub pos_side: u32,
}

const QWEN_PATCH: u64 = 16;

impl QwenVisionShape {
    /// Qwen/Qwen3.5-0.8B `vision_config`: depth 12, hidden 768, 12 heads, FFN 3072, out 1024,
    /// 2304 position embeddings.
    pub fn qwen35_0_8b() -> QwenVisionShape {
        QwenVisionShape { hidden: 768, n_layer: 12, n_head: 12, n_ff: 3072, text_hidden: 1024, pos_side: 48 }
    }

    /// Qwen/Qwen3.5-2B: its `vision_config` was not found; inferred from the published F16
    /// mmproj (unsloth's `mmproj-F16.gguf`, 668,227,264 bytes), about 4.2 MB under the 4B's:
    /// the 4B encoder with a merger output of 2048 (4096 x 512 fewer F16 weights).
    pub fn qwen35_2b() -> QwenVisionShape {
        QwenVisionShape { text_hidden: 2048, ..QwenVisionShape::qwen35_4b() }
    }

    /// Qwen/Qwen3.5-4B `vision_config`: depth 24, hidden 1024, 16 heads, FFN 4096, out 2560.
    pub fn qwen35_4b() -> QwenVisionShape {
        QwenVisionShape { hidden: 1024, n_layer: 24, n_head: 16, n_ff: 4096, text_hidden: 2560, pos_side: 48 }
    }

    /// Qwen/Qwen3.5-9B `vision_config`: depth 27, hidden 1152, 16 heads (of 72), FFN 4304, out 4096.
    pub fn qwen35_9b() -> QwenVisionShape {
        QwenVisionShape { hidden: 1152, n_layer: 27, n_head: 16, n_ff: 4304, text_hidden: 4096, pos_side: 48 }
    }

    /// A sub-MB encoder with the 0.8B / 4B head dim (64), for tests and quick runs.
    pub fn tiny() -> QwenVisionShape {
        QwenVisionShape { hidden: 128, n_layer: 2, n_head: 2, n_ff: 256, text_hidden: 256, pos_side: 8 }
    }

    /// The F16 matrices as (name, GGUF dims).
    fn matrices(&self) -> Vec<(String, Vec<u64>)> {
        let (d, ff, t, m) = (self.hidden as u64, self.n_ff as u64, self.text_hidden as u64, 4 * self.hidden as u64);
        let p = QWEN_PATCH;
        let mut out = vec![
            ("v.patch_embd.weight".to_string(), vec![p, p, 3, d]),
            ("v.patch_embd.weight.1".to_string(), vec![p, p, 3, d]),
            ("v.position_embd.weight".to_string(), vec![d, (self.pos_side * self.pos_side) as u64]),
        ];
        for i in 0..self.n_layer {
            let name = |s: &str| format!("v.blk.{i}.{s}.weight");
            out.extend([
                (name("attn_qkv"), vec![d, 3 * d]),
                (name("attn_out"), vec![d, d]),
                (name("ffn_up"), vec![d, ff]),
                (name("ffn_down"), vec![ff, d]),
            ]);
        }
        out.extend([("mm.0.weight".into(), vec![m, m]), ("mm.2.weight".into(), vec![m, t])]);
        out
    }

    /// The F32 vectors (norms and biases) as (name, length).
    fn vectors(&self) -> Vec<(String, u32)> {
        let (d, ff, t, m) = (self.hidden, self.n_ff, self.text_hidden, 4 * self.hidden);
        let mut out = vec![("v.patch_embd.bias".to_string(), d)];
        for i in 0..self.n_layer {
            let name = |s: &str| format!("v.blk.{i}.{s}");
            out.extend([
                (name("ln1.weight"), d),
                (name("ln1.bias"), d),
                (name("attn_qkv.bias"), 3 * d),
                (name("attn_out.bias"), d),
                (name("ln2.weight"), d),
                (name("ln2.bias"), d),
                (name("ffn_up.bias"), ff),
                (name("ffn_down.bias"), d),
            ]);
        }
        out.extend([
            ("v.post_ln.weight".into(), d),
            ("v.post_ln.bias".into(), d),
            ("mm.0.bias".into(), m),
            ("mm.2.bias".into(), t),
        ]);
        out
    }

    /// Bytes of every tensor in the file (F16 matrices, F32 vectors).
    pub fn weight_bytes(&self) -> u64 {
        let m: u64 = self.matrices().iter().map(|(_, dims)| 2 * dims.iter().product::<u64>()).sum();
        m + self.vectors().iter().map(|(_, n)| 4 * *n as u64).sum::<u64>()
    }

    fn check(&self) -> Result<(), SyntheticError> {
        let dims = [self.hidden, self.n_layer, self.n_head, self.n_ff, self.text_hidden, self.pos_side];
        if dims.contains(&0) || !self.hidden.is_multiple_of(self.n_head) || !(self.hidden / self.n_head).is_multiple_of(4) {
            return Err(SyntheticError::BadShape(format!("{self:?}: non-zero sizes, head dim a multiple of 4")));
        }
        Ok(())
    }
}

/// The writer of a synthetic Qwen vision mmproj of `shape`: the `clip.*` metadata
/// [`crate::model::vision::qwen_vl::QwenVlConfig::from_metadata`] reads, F16 matrices, F32
/// vectors (norms near 1, small biases).
pub fn synthetic_qwen_vl_mmproj_writer(shape: &QwenVisionShape, weights: SyntheticWeights) -> Result<GgufWriter, SyntheticError> {
    shape.check()?;
    let mut w = GgufWriter::new();
    let s = |v: &str| MetaValue::String(v.into());
    let rgb = MetaValue::Array { elem: ValueType::F32, items: vec![MetaValue::F32(0.5); 3] };
    w.add_kv("general.architecture", s("clip"));
    w.add_kv("general.name", s("synthetic Qwen3.5 vision"));
    w.add_kv("clip.projector_type", s("qwen3vl_merger"));
    w.add_kv("clip.has_vision_encoder", MetaValue::Bool(true));
    w.add_kv("clip.use_gelu", MetaValue::Bool(true));
    let deepstack = (0..shape.n_layer).map(|_| MetaValue::Bool(false)).collect();
    let mut v = |k: &str, val: MetaValue| {
        w.add_kv(format!("clip.vision.{k}"), val);
    };
    v("embedding_length", MetaValue::U32(shape.hidden));
    v("block_count", MetaValue::U32(shape.n_layer));
    v("feed_forward_length", MetaValue::U32(shape.n_ff));
    v("projection_dim", MetaValue::U32(shape.text_hidden));
    v("patch_size", MetaValue::U32(QWEN_PATCH as u32));
    v("image_size", MetaValue::U32(768));
    v("spatial_merge_size", MetaValue::U32(2));
    v("attention.head_count", MetaValue::U32(shape.n_head));
    v("attention.layer_norm_epsilon", MetaValue::F32(1e-6));
    v("image_mean", rgb.clone());
    v("image_std", rgb);
    v("is_deepstack_layers", MetaValue::Array { elem: ValueType::Bool, items: deepstack });

    let mut rng = SplitMix64::new(weights.seed());
    for (name, n) in shape.vectors() {
        let (lo, hi) = if name.contains("ln") && name.ends_with("weight") { (0.9, 1.1) } else { (-0.05, 0.05) };
        let bytes: Vec<u8> = (0..n).flat_map(|_| rng.uniform(lo, hi).to_le_bytes()).collect();
        w.add_tensor(name, &[n as u64], GgmlType::F32, bytes)?;
    }
    for (index, (name, dims)) in shape.matrices().into_iter().enumerate() {
        let rows = *dims.last().unwrap_or(&1) as u32;
        let cols = (dims.iter().product::<u64>() / rows as u64) as u32;
        weights.add(&mut w, index, name, &dims, GgmlType::F16, |seed| random_f16_matrix(rows, cols, seed))?;
    }
    Ok(w)
}

/// A synthetic Qwen vision mmproj of `shape` in memory, ready for
/// [`crate::model::VisionEncoder::load`].
pub fn synthetic_qwen_vl_mmproj(shape: &QwenVisionShape, seed: u64) -> Result<GgufBytes, SyntheticError> {
    let bytes = synthetic_qwen_vl_mmproj_writer(shape, SyntheticWeights::Random { seed })?.write()?;
    Ok(GgufBytes::parse(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::families::qwen35::Qwen35Config;
    use crate::model::vision::qwen_vl::QwenVlConfig;
    use crate::source::TensorSource;

    #[test]
    fn tiny_model_reads_back_with_the_shape_it_was_built_from() {
        let shape = Qwen35Shape::tiny();
        let src = synthetic_qwen35(&shape, 1).unwrap();
        let cfg = Qwen35Config::from_metadata(src.metadata(), shape.vocab).unwrap();
        assert_eq!(cfg.layer_counts(), (6, 2));
        assert_eq!((cfg.ssm.conv_channels(), cfg.ssm.inner(), cfg.n_rot), (512, 256, 32));
        assert_eq!(src.tensor_info("blk.0.attn_qkv.weight").unwrap().ty, GgmlType::Q5_K);
        assert_eq!(src.tensor_info("blk.3.attn_q.weight").unwrap().dims, vec![256, 512]);
        assert!(src.tensor_info("blk.3.ssm_a").is_none() && src.tensor_info("output.weight").is_some());
        let bytes: u64 = shape.tensors().iter().map(|(n, ..)| src.tensor_data(n).unwrap().len() as u64).sum();
        assert_eq!(bytes, shape.weight_bytes());
    }

    #[test]
    fn released_sizes_weigh_what_their_q4_k_m_files_do() {
        // Qwen3.5-9B Q4_K_M is about 5.2-5.7 GB; the smaller ones scale with their parameters.
        let gb = |s: Qwen35Shape| s.weight_bytes() as f64 / 1e9;
        assert!((4.9..6.0).contains(&gb(Qwen35Shape::qwen35_9b())), "{}", gb(Qwen35Shape::qwen35_9b()));
        assert!(gb(Qwen35Shape::qwen35_0_8b()) < gb(Qwen35Shape::qwen35_2b()));
        assert!(gb(Qwen35Shape::qwen35_2b()) < gb(Qwen35Shape::qwen35_4b()));
    }

    #[test]
    fn tiny_mmproj_reads_back() {
        let shape = QwenVisionShape::tiny();
        let src = synthetic_qwen_vl_mmproj(&shape, 1).unwrap();
        let cfg = QwenVlConfig::from_metadata(src.metadata(), 64).unwrap();
        assert_eq!((cfg.hidden, cfg.n_layer, cfg.head_dim, cfg.n_ff, cfg.text_hidden), (128, 2, 64, 256, 256));
        let names = shape.matrices().into_iter().map(|m| m.0).chain(shape.vectors().into_iter().map(|v| v.0));
        let bytes: u64 = names.map(|n| src.tensor_data(&n).unwrap().len() as u64).sum();
        assert_eq!(bytes, shape.weight_bytes());
    }
}
