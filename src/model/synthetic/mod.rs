//! Synthetic decoders for benchmarks and tests: a GGUF file with Ministral 3's architecture
//! (`mistral3`: YaRN RoPE, query temperature scaling, tied embeddings; `docs/MODELS.md`) and random
//! quantized weights, built in memory with [`GgufWriter`], no download and no file. Loaded
//! like any other model through [`GgufBytes`] + [`super::Decoder::load`].
//!
//! The type mix follows llama.cpp's Q4_K_M recipe (`llama_tensor_get_type`): Q4_K for most
//! matrices, Q6_K for `attn_v`, `ffn_down` and the (tied) token embedding, F32 norms.
//! Weights are random blocks ([`random_blocks`]), or zeros that a file stores as holes
//! ([`SyntheticWeights::Zeros`]); norms are near 1. The numbers mean nothing; the shapes,
//! types and byte counts are the real model's.
//!
//! [`synthetic_pixtral_mmproj`] builds the matching vision side: a Pixtral encoder + Mistral 3
//! projector mmproj (`general.architecture = clip`, `clip.projector_type = pixtral`) with F16
//! matrices (as the official mmproj) and F32 norms, loaded through
//! [`super::VisionEncoder::load`].
//!
//! The `qwen35` submodule builds the Qwen3.5 family the same way (a hybrid DeltaNet + attention decoder
//! and its Qwen vision encoder mmproj); the `mllama` one Llama 3.2 Vision through the Hugging
//! Face mapping (text decoder and vision encoder in one GGUF view).

use crate::gguf::{random_blocks, GgmlType, GgufError, GgufWriter, MetaValue, SplitMix64, ValueType};

use crate::source::GgufBytes;

mod mllama;
mod qwen35;
pub use mllama::{synthetic_mllama, synthetic_mllama_writer, MllamaParts, MllamaShape, MllamaTextShape, MllamaVisionShape};
pub use qwen35::{
    synthetic_qwen35, synthetic_qwen35_writer, synthetic_qwen_vl_mmproj, synthetic_qwen_vl_mmproj_writer, Qwen35Shape,
    QwenVisionShape,
};

/// Errors while building a synthetic model.
#[derive(Debug, thiserror::Error)]
pub enum SyntheticError {
    /// A dimension is zero or not a multiple of the K-quant block (256).
    #[error("synthetic shape {0}")]
    BadShape(String),
    /// The GGUF writer or parser refused the file.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The Hugging Face mapping refused a synthetic config or tensor (Mllama).
    #[error(transparent)]
    Hf(#[from] crate::source::hf::HfError),
}

/// The hyperparameters of a synthetic `mistral3` decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntheticShape {
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    pub n_ff: u32,
    pub vocab: u32,
    pub rope: SyntheticRope,
}

/// The RoPE metadata of a synthetic `mistral3` decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntheticRope {
    /// Ministral 3: theta 1e6, YaRN (factor 16 over 16k) and the position-dependent query scaling.
    Ministral3,
    /// Mistral Small 3.1: theta 1e9, no scaling (llama.cpp writes `mistral3` without YaRN keys).
    MistralSmall,
}

impl SyntheticShape {
    /// Ministral 3 3B's text decoder (`Ministral3ForCausalLM`, `docs/MODELS.md`): ~3.4 B parameters,
    /// ~2 GB of weights at this type mix.
    pub fn ministral3_3b() -> SyntheticShape {
        SyntheticShape {
            n_embd: 3072,
            n_layer: 26,
            n_head: 32,
            n_head_kv: 8,
            head_dim: 128,
            n_ff: 9216,
            vocab: 131072,
            rope: SyntheticRope::Ministral3,
        }
    }

    /// Mistral Small 3.1 24B's text decoder (`docs/MODELS.md`): ~23.6 B parameters, ~14 GB of
    /// weights at this type mix.
    pub fn mistral_small_24b() -> SyntheticShape {
        SyntheticShape {
            n_embd: 5120,
            n_layer: 40,
            n_head: 32,
            n_head_kv: 8,
            head_dim: 128,
            n_ff: 32768,
            vocab: 131072,
            rope: SyntheticRope::MistralSmall,
        }
    }

    /// A few-MB model with the same structure (4:2 GQA, q_dim = n_embd, head_dim 64) for
    /// tests and quick runs.
    pub fn tiny() -> SyntheticShape {
        SyntheticShape {
            n_embd: 256,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 64,
            n_ff: 512,
            vocab: 1024,
            rope: SyntheticRope::Ministral3,
        }
    }

    /// Width of the query projection.
    pub fn q_dim(&self) -> u32 {
        self.n_head * self.head_dim
    }

    /// Width of the key and value projections.
    pub fn kv_dim(&self) -> u32 {
        self.n_head_kv * self.head_dim
    }

    /// The matrices of one block and the embedding, as (name, rows, cols, type).
    fn tensors(&self) -> Vec<(String, u32, u32, GgmlType)> {
        use GgmlType::{Q4_K, Q6_K};
        let (d, q, kv, ff) = (self.n_embd, self.q_dim(), self.kv_dim(), self.n_ff);
        let mut out = vec![("token_embd.weight".to_string(), self.vocab, d, Q6_K)];
        for i in 0..self.n_layer {
            let name = |s: &str| format!("blk.{i}.{s}.weight");
            out.extend([
                (name("attn_q"), q, d, Q4_K),
                (name("attn_k"), kv, d, Q4_K),
                (name("attn_v"), kv, d, Q6_K),
                (name("attn_output"), d, q, Q4_K),
                (name("ffn_gate"), ff, d, Q4_K),
                (name("ffn_up"), ff, d, Q4_K),
                (name("ffn_down"), d, ff, Q6_K),
            ]);
        }
        out
    }

    /// Bytes of quantized weights in the file (norms excluded).
    pub fn weight_bytes(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|(_, rows, cols, ty)| *rows as u64 * (*cols as u64 / ty.block_size() as u64) * ty.type_size() as u64)
            .sum()
    }

    fn check(&self) -> Result<(), SyntheticError> {
        let k = crate::gguf::QK_K as u32;
        let dims = [self.n_embd, self.n_layer, self.n_head, self.n_head_kv, self.head_dim, self.n_ff, self.vocab];
        if dims.contains(&0) || [self.n_embd, self.q_dim(), self.n_ff].iter().any(|d| !d.is_multiple_of(k)) {
            return Err(SyntheticError::BadShape(format!(
                "{self:?}: n_embd, n_head * head_dim and n_ff must be non-zero multiples of {k}"
            )));
        }
        Ok(())
    }
}

/// What a synthetic model's matrices hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntheticWeights {
    /// Random blocks drawn from `seed` (norms too).
    Random { seed: u64 },
    /// Zeros, never held in memory: [`GgufWriter::write_to`] leaves them as holes, so a 3B
    /// model's file takes only its header's disk space (for load tests, which measure where
    /// the bytes go, not what they are). Norms are drawn from seed 0.
    Zeros,
}

impl SyntheticWeights {
    fn seed(self) -> u64 {
        match self {
            SyntheticWeights::Random { seed } => seed,
            SyntheticWeights::Zeros => 0,
        }
    }

    /// Adds matrix number `index`: `random(seed)` gives its random bytes.
    fn add(
        self,
        w: &mut GgufWriter,
        index: usize,
        name: String,
        dims: &[u64],
        ty: GgmlType,
        random: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<(), GgufError> {
        match self {
            SyntheticWeights::Random { seed } => {
                let tensor_seed = seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                w.add_tensor(name, dims, ty, random(tensor_seed))?
            }
            SyntheticWeights::Zeros => w.add_zero_tensor(name, dims, ty)?,
        };
        Ok(())
    }
}

/// The GGUF bytes of a synthetic `mistral3` decoder of `shape` with weights drawn from `seed`.
pub fn synthetic_ministral3_gguf(shape: &SyntheticShape, seed: u64) -> Result<Vec<u8>, SyntheticError> {
    Ok(synthetic_ministral3_writer(shape, SyntheticWeights::Random { seed }, &[])?.write()?)
}

/// The writer of [`synthetic_ministral3_gguf`] with `extra` metadata added (e.g. a real
/// model's `tokenizer.*` keys, so that an engine can be built on it), for
/// [`GgufWriter::write_to`] a file.
pub fn synthetic_ministral3_writer(
    shape: &SyntheticShape,
    weights: SyntheticWeights,
    extra: &[(String, MetaValue)],
) -> Result<GgufWriter, SyntheticError> {
    shape.check()?;
    let arch = "mistral3";
    let mut w = GgufWriter::new();
    for (k, v) in extra {
        w.add_kv(k.clone(), v.clone());
    }
    let mut kv = |k: &str, v: MetaValue| {
        w.add_kv(if k.starts_with("general.") { k.to_string() } else { format!("{arch}.{k}") }, v);
    };
    kv("general.architecture", MetaValue::String(arch.into()));
    kv("general.name", MetaValue::String("synthetic mistral3".into()));
    kv("block_count", MetaValue::U32(shape.n_layer));
    kv("context_length", MetaValue::U32(262_144));
    kv("embedding_length", MetaValue::U32(shape.n_embd));
    kv("feed_forward_length", MetaValue::U32(shape.n_ff));
    kv("attention.head_count", MetaValue::U32(shape.n_head));
    kv("attention.head_count_kv", MetaValue::U32(shape.n_head_kv));
    kv("attention.key_length", MetaValue::U32(shape.head_dim));
    kv("attention.value_length", MetaValue::U32(shape.head_dim));
    kv("attention.layer_norm_rms_epsilon", MetaValue::F32(1e-5));
    kv("rope.dimension_count", MetaValue::U32(shape.head_dim));
    match shape.rope {
        SyntheticRope::Ministral3 => {
            kv("rope.freq_base", MetaValue::F32(1e6));
            kv("rope.scaling.type", MetaValue::String("yarn".into()));
            kv("rope.scaling.factor", MetaValue::F32(16.0));
            kv("rope.scaling.original_context_length", MetaValue::U32(16_384));
            kv("rope.scaling.yarn_beta_fast", MetaValue::F32(32.0));
            kv("rope.scaling.yarn_beta_slow", MetaValue::F32(1.0));
            kv("rope.scaling.yarn_log_multiplier", MetaValue::F32(1.0));
            kv("attention.temperature_scale", MetaValue::F32(0.1));
        }
        SyntheticRope::MistralSmall => kv("rope.freq_base", MetaValue::F32(1e9)),
    }
    kv("vocab_size", MetaValue::U32(shape.vocab));

    let mut rng = SplitMix64::new(weights.seed());
    let mut norm = |n: u32| -> Vec<u8> { (0..n).flat_map(|_| rng.uniform(0.9, 1.1).to_le_bytes()).collect() };
    let d = shape.n_embd as u64;
    w.add_tensor("output_norm.weight", &[d], GgmlType::F32, norm(shape.n_embd))?;
    for i in 0..shape.n_layer {
        w.add_tensor(format!("blk.{i}.attn_norm.weight"), &[d], GgmlType::F32, norm(shape.n_embd))?;
        w.add_tensor(format!("blk.{i}.ffn_norm.weight"), &[d], GgmlType::F32, norm(shape.n_embd))?;
    }
    for (index, (name, rows, cols, ty)) in shape.tensors().into_iter().enumerate() {
        let n_blocks = rows as usize * cols as usize / ty.block_size();
        weights.add(&mut w, index, name, &[cols as u64, rows as u64], ty, |seed| random_blocks(ty, n_blocks, seed))?;
    }
    Ok(w)
}

/// A synthetic `mistral3` decoder of `shape` in memory, ready for [`super::Decoder::load`].
/// `SyntheticShape::ministral3_3b()` gives Ministral 3 3B (~2 GB of weights).
pub fn synthetic_ministral3_3b(shape: &SyntheticShape, seed: u64) -> Result<GgufBytes, SyntheticError> {
    Ok(GgufBytes::parse(synthetic_ministral3_gguf(shape, seed)?)?)
}

/// The hyperparameters of a synthetic Pixtral vision encoder + Mistral 3 projector (patch 14,
/// 2x2 merge, SiLU-gated FFN: the values the kernels implement).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VisionShape {
    pub hidden: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub head_dim: u32,
    pub n_ff: u32,
    /// Projector output = the text model's hidden size.
    pub text_hidden: u32,
}

/// Pixtral's patch side and merge factor (`clip.vision.patch_size`, `spatial_merge_size`).
const VISION_PATCH: u32 = 14;
const VISION_MERGE: u32 = 2;

impl VisionShape {
    /// Ministral 3 3B's vision tower and projector (`docs/MODELS.md`): ~0.42 B parameters, ~0.84 GB
    /// of F16 weights.
    pub fn ministral3_3b() -> VisionShape {
        VisionShape { hidden: 1024, n_layer: 24, n_head: 16, head_dim: 64, n_ff: 4096, text_hidden: 3072 }
    }

    /// Mistral Small 3.1 24B's: Ministral 3's encoder with a projector to 5120.
    pub fn mistral_small_24b() -> VisionShape {
        VisionShape { text_hidden: 5120, ..VisionShape::ministral3_3b() }
    }

    /// A sub-MB encoder with the same structure and head_dim (so it compiles the same
    /// pipelines) for tests and quick runs.
    pub fn tiny() -> VisionShape {
        VisionShape { hidden: 128, n_layer: 2, n_head: 2, head_dim: 64, n_ff: 256, text_hidden: 256 }
    }

    /// Width of q/k/v.
    pub fn q_dim(&self) -> u32 {
        self.n_head * self.head_dim
    }

    /// The matrices as (name, GGUF dims, rows, cols): rows x cols row-major, GGUF dims reversed.
    fn matrices(&self) -> Vec<(String, Vec<u64>, u32, u32)> {
        let (d, q, ff, t, p) = (self.hidden, self.q_dim(), self.n_ff, self.text_hidden, VISION_PATCH);
        let m = |name: String, rows: u32, cols: u32| (name, vec![cols as u64, rows as u64], rows, cols);
        let mut out = vec![("v.patch_embd.weight".to_string(), vec![p as u64, p as u64, 3, d as u64], d, 3 * p * p)];
        for i in 0..self.n_layer {
            let name = |s: &str| format!("v.blk.{i}.{s}.weight");
            out.extend([
                m(name("attn_q"), q, d),
                m(name("attn_k"), q, d),
                m(name("attn_v"), q, d),
                m(name("attn_out"), d, q),
                m(name("ffn_gate"), ff, d),
                m(name("ffn_up"), ff, d),
                m(name("ffn_down"), d, ff),
            ]);
        }
        out.extend([
            m("mm.patch_merger.weight".into(), d, VISION_MERGE * VISION_MERGE * d),
            m("mm.1.weight".into(), t, d),
            m("mm.2.weight".into(), t, t),
        ]);
        out
    }

    /// Parameters of the matrices (norms excluded).
    pub fn n_params(&self) -> u64 {
        self.matrices().iter().map(|(_, _, r, c)| *r as u64 * *c as u64).sum()
    }

    /// Bytes of F16 matrices in the file (norms excluded).
    pub fn weight_bytes(&self) -> u64 {
        2 * self.n_params()
    }

    fn check(&self) -> Result<(), SyntheticError> {
        let dims = [self.hidden, self.n_layer, self.n_head, self.head_dim, self.n_ff, self.text_hidden];
        if dims.contains(&0) || self.q_dim() != self.hidden || !self.head_dim.is_multiple_of(4) || self.hidden % 2 == 1 {
            return Err(SyntheticError::BadShape(format!(
                "{self:?}: non-zero dimensions, n_head * head_dim = hidden (even), head_dim a multiple of 4"
            )));
        }
        Ok(())
    }
}

/// F16 values uniform in `±sqrt(3 / cols)` (unit variance times `1/cols`, the usual init), so
/// that activations stay of order 1 through many layers.
fn random_f16_matrix(rows: u32, cols: u32, seed: u64) -> Vec<u8> {
    let a = (3.0 / cols as f32).sqrt();
    let mut rng = SplitMix64::new(seed);
    let mut out = vec![0u8; rows as usize * cols as usize * 2];
    for c in out.chunks_exact_mut(2) {
        c.copy_from_slice(&half::f16::from_f32(rng.uniform(-a, a)).to_bits().to_le_bytes());
    }
    out
}

/// The GGUF bytes of a synthetic Pixtral mmproj of `shape` with weights drawn from `seed`:
/// the `clip.*` metadata [`super::vision::pixtral::PixtralConfig::from_metadata`] reads, F16 matrices, F32 norms
/// near 1.
pub fn synthetic_pixtral_mmproj_gguf(shape: &VisionShape, seed: u64) -> Result<Vec<u8>, SyntheticError> {
    Ok(synthetic_pixtral_mmproj_writer(shape, SyntheticWeights::Random { seed })?.write()?)
}

/// The writer of [`synthetic_pixtral_mmproj_gguf`].
pub fn synthetic_pixtral_mmproj_writer(shape: &VisionShape, weights: SyntheticWeights) -> Result<GgufWriter, SyntheticError> {
    shape.check()?;
    let mut w = GgufWriter::new();
    let s = |v: &str| MetaValue::String(v.into());
    let rgb = |v: [f32; 3]| MetaValue::Array { elem: ValueType::F32, items: v.into_iter().map(MetaValue::F32).collect() };
    w.add_kv("general.architecture", s("clip"));
    w.add_kv("general.name", s("synthetic Pixtral (Ministral 3)"));
    w.add_kv("clip.projector_type", s("pixtral"));
    w.add_kv("clip.has_vision_encoder", MetaValue::Bool(true));
    w.add_kv("clip.use_silu", MetaValue::Bool(true));
    let mut v = |k: &str, val: MetaValue| {
        w.add_kv(format!("clip.vision.{k}"), val);
    };
    v("embedding_length", MetaValue::U32(shape.hidden));
    v("block_count", MetaValue::U32(shape.n_layer));
    v("feed_forward_length", MetaValue::U32(shape.n_ff));
    v("projection_dim", MetaValue::U32(shape.text_hidden));
    v("patch_size", MetaValue::U32(VISION_PATCH));
    v("image_size", MetaValue::U32(1540));
    v("spatial_merge_size", MetaValue::U32(VISION_MERGE));
    v("attention.head_count", MetaValue::U32(shape.n_head));
    v("attention.layer_norm_epsilon", MetaValue::F32(1e-5));
    v("image_mean", rgb([0.481_454_66, 0.457_827_5, 0.408_210_73]));
    v("image_std", rgb([0.268_629_54, 0.261_302_6, 0.275_777_1]));

    let mut rng = SplitMix64::new(weights.seed());
    let mut norm = |n: u32| -> Vec<u8> { (0..n).flat_map(|_| rng.uniform(0.9, 1.1).to_le_bytes()).collect() };
    let d = shape.hidden as u64;
    w.add_tensor("v.pre_ln.weight", &[d], GgmlType::F32, norm(shape.hidden))?;
    for i in 0..shape.n_layer {
        w.add_tensor(format!("v.blk.{i}.ln1.weight"), &[d], GgmlType::F32, norm(shape.hidden))?;
        w.add_tensor(format!("v.blk.{i}.ln2.weight"), &[d], GgmlType::F32, norm(shape.hidden))?;
    }
    w.add_tensor("mm.input_norm.weight", &[d], GgmlType::F32, norm(shape.hidden))?;
    for (index, (name, dims, rows, cols)) in shape.matrices().into_iter().enumerate() {
        weights.add(&mut w, index, name, &dims, GgmlType::F16, |seed| random_f16_matrix(rows, cols, seed))?;
    }
    Ok(w)
}

/// A synthetic Pixtral mmproj of `shape` in memory, ready for [`super::VisionEncoder::load`].
/// `VisionShape::ministral3_3b()` gives Ministral 3 3B's vision tower (~0.84 GB of F16).
pub fn synthetic_pixtral_mmproj(shape: &VisionShape, seed: u64) -> Result<GgufBytes, SyntheticError> {
    Ok(GgufBytes::parse(synthetic_pixtral_mmproj_gguf(shape, seed)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::TensorSource;

    #[test]
    fn tiny_model_has_the_expected_tensors_and_metadata() {
        let shape = SyntheticShape::tiny();
        let src = synthetic_ministral3_3b(&shape, 1).unwrap();
        let md = src.metadata();
        let cfg = crate::model::families::llama::LlamaConfig::from_metadata(md, shape.vocab).unwrap();
        assert_eq!((cfg.text.n_embd, cfg.text.n_layer, cfg.text.head_dim, cfg.text.n_ff), (256, 2, 64, 512));
        assert!(cfg.yarn.is_some() && cfg.query_scale_beta > 0.0);
        assert_eq!(src.tensor_info("blk.1.ffn_down.weight").unwrap().ty, GgmlType::Q6_K);
        assert_eq!(src.tensor_info("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q4_K);
        assert!(src.tensor_info("output.weight").is_none(), "tied embeddings");
        let bytes: u64 = shape.tensors().iter().map(|(n, ..)| src.tensor_data(n).unwrap().len() as u64).sum();
        assert_eq!(bytes, shape.weight_bytes());
    }

    #[test]
    fn ministral3_3b_weighs_about_two_gigabytes() {
        let gb = SyntheticShape::ministral3_3b().weight_bytes() as f64 / 1e9;
        assert!((1.8..2.4).contains(&gb), "{gb} GB");
    }

    #[test]
    fn mistral_small_24b_weighs_about_fourteen_gigabytes_without_scaling() {
        let shape = SyntheticShape::mistral_small_24b();
        let gb = shape.weight_bytes() as f64 / 1e9;
        assert!((13.0..15.0).contains(&gb), "{gb} GB");
        let src = synthetic_ministral3_3b(&SyntheticShape { n_layer: 1, vocab: 256, ..shape }, 1).unwrap();
        let cfg = crate::model::families::llama::LlamaConfig::from_metadata(src.metadata(), 256).unwrap();
        assert!(cfg.yarn.is_none() && cfg.query_scale_beta == 0.0 && cfg.rope_theta == 1e9);
        assert_eq!((cfg.text.n_embd, cfg.text.head_dim * cfg.text.n_head), (5120, 4096));
    }

    #[test]
    fn tiny_mmproj_has_the_expected_config_and_tensors() {
        let shape = VisionShape::tiny();
        let src = synthetic_pixtral_mmproj(&shape, 1).unwrap();
        let cfg = crate::model::vision::pixtral::PixtralConfig::from_metadata(src.metadata()).unwrap();
        assert_eq!((cfg.hidden, cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.n_ff), (128, 2, 2, 64, 256));
        assert_eq!((cfg.patch_size, cfg.merge_size, cfg.text_hidden), (14, 2, 256));
        let info = src.tensor_info("v.patch_embd.weight").unwrap();
        assert_eq!((info.ty, info.dims.as_slice()), (GgmlType::F16, &[14u64, 14, 3, 128][..]));
        assert_eq!(src.tensor_info("v.blk.1.ffn_down.weight").unwrap().dims, vec![256, 128]);
        assert_eq!(src.tensor_info("mm.patch_merger.weight").unwrap().dims, vec![512, 128]);
        assert_eq!(src.tensor_info("v.blk.0.ln2.weight").unwrap().ty, GgmlType::F32);
        let bytes: u64 = shape.matrices().iter().map(|(n, ..)| src.tensor_data(n).unwrap().len() as u64).sum();
        assert_eq!(bytes, shape.weight_bytes());
    }

    #[test]
    fn ministral3_3b_vision_has_about_0_4_billion_parameters() {
        let p = VisionShape::ministral3_3b().n_params() as f64 / 1e9;
        assert!((0.40..0.44).contains(&p), "{p} B");
    }
}
