//! Decoder weights on the GPU, loaded by llama.cpp tensor name. Matrices keep their GGUF
//! quantization (see `kernels::quant` for the GPU layout); norm vectors become f32.

use crate::gguf::quant::{quantize_q4_0, quantize_q4_1, quantize_q8_0};
use crate::gguf::{dequantize_to_vec, GgmlType, GgufError};
use crate::gpu::Gpu;
use crate::kernels::quant::{GpuWeight, WeightError};

use super::config::ModelConfig;
use super::source::TensorSource;

/// Errors while loading weights.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A required tensor is absent.
    #[error("tensor {0} is missing")]
    Missing(String),
    /// A tensor's shape disagrees with the config.
    #[error("tensor {name} has shape {got}, expected {want}")]
    Shape { name: String, got: String, want: String },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Weight(#[from] WeightError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
}

/// One transformer block.
pub struct LayerWeights {
    pub attn_norm: wgpu::Buffer, // [n_embd] f32
    pub wq: GpuWeight,           // [q_dim][n_embd]
    pub wk: GpuWeight,           // [kv_dim][n_embd]
    pub wv: GpuWeight,           // [kv_dim][n_embd]
    pub wo: GpuWeight,           // [n_embd][q_dim]
    pub ffn_norm: wgpu::Buffer,  // [n_embd] f32
    pub w_gate: GpuWeight,       // [n_ff][n_embd]
    pub w_up: GpuWeight,         // [n_ff][n_embd]
    pub w_down: GpuWeight,       // [n_embd][n_ff]
}

/// All decoder weights.
pub struct DecoderWeights {
    pub token_embd: GpuWeight, // [vocab][n_embd]
    pub layers: Vec<LayerWeights>,
    pub output_norm: wgpu::Buffer, // [n_embd] f32
    /// The LM head `[vocab][n_embd]`; `None` when tied to `token_embd`.
    pub output: Option<GpuWeight>,
}

impl DecoderWeights {
    pub fn load(gpu: &Gpu, src: &dyn TensorSource, cfg: &ModelConfig) -> Result<Self, LoadError> {
        let (d, q, kv, ff) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff);
        let mut layers = Vec::with_capacity(cfg.n_layer as usize);
        for i in 0..cfg.n_layer {
            let name = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(LayerWeights {
                attn_norm: vector(gpu, src, &name("attn_norm"), d)?,
                wq: matrix(gpu, src, &name("attn_q"), q, d)?,
                wk: matrix(gpu, src, &name("attn_k"), kv, d)?,
                wv: matrix(gpu, src, &name("attn_v"), kv, d)?,
                wo: matrix(gpu, src, &name("attn_output"), d, q)?,
                ffn_norm: vector(gpu, src, &name("ffn_norm"), d)?,
                w_gate: matrix(gpu, src, &name("ffn_gate"), ff, d)?,
                w_up: matrix(gpu, src, &name("ffn_up"), ff, d)?,
                w_down: matrix(gpu, src, &name("ffn_down"), d, ff)?,
            });
        }
        let output = match src.tensor_info("output.weight") {
            Some(_) => Some(matrix(gpu, src, "output.weight", cfg.vocab, d)?),
            None => None,
        };
        Ok(DecoderWeights {
            token_embd: matrix(gpu, src, "token_embd.weight", cfg.vocab, d)?,
            layers,
            output_norm: vector(gpu, src, "output_norm.weight", d)?,
            output,
        })
    }

    /// The LM head: `output.weight`, or the tied token embedding.
    pub fn lm_head(&self) -> &GpuWeight {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// Bytes of weights held on the GPU.
    pub fn bytes_on_gpu(&self) -> u64 {
        let per_layer = |l: &LayerWeights| {
            [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].iter().map(|w| w.bytes_on_gpu()).sum::<u64>()
                + l.attn_norm.size()
                + l.ffn_norm.size()
        };
        self.token_embd.bytes_on_gpu()
            + self.output.as_ref().map_or(0, |w| w.bytes_on_gpu())
            + self.output_norm.size()
            + self.layers.iter().map(per_layer).sum::<u64>()
    }
}

/// Fails unless the tensor exists with dims `want` (trailing 1s ignored).
pub(super) fn check_dims(src: &dyn TensorSource, name: &str, want: &[u64]) -> Result<(), LoadError> {
    let info = src.tensor_info(name).ok_or_else(|| LoadError::Missing(name.to_string()))?;
    let mut dims = info.dims.clone();
    while dims.len() > want.len() && dims.last() == Some(&1) {
        dims.pop();
    }
    if dims != want {
        return Err(LoadError::Shape { name: name.into(), got: info.shape_str(), want: format!("{want:?}") });
    }
    Ok(())
}

/// Uploads an already shape-checked tensor as a `rows x cols` weight.
pub(super) fn upload(gpu: &Gpu, src: &dyn TensorSource, name: &str, rows: u32, cols: u32) -> Result<GpuWeight, LoadError> {
    let info = src.tensor_info(name).ok_or_else(|| LoadError::Missing(name.to_string()))?;
    let bytes = src.tensor_data(name)?;
    Ok(GpuWeight::upload(gpu, name, info.ty, rows, cols, &bytes)?)
}

/// A `rows x cols` matrix (GGUF dims `[cols, rows]`).
pub(super) fn matrix(gpu: &Gpu, src: &dyn TensorSource, name: &str, rows: u32, cols: u32) -> Result<GpuWeight, LoadError> {
    check_dims(src, name, &[cols as u64, rows as u64])?;
    upload(gpu, src, name, rows, cols)
}

/// A type to requantize matrices to at load time (to save GPU memory).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadQuant {
    /// Keep each tensor's file type.
    #[default]
    Keep,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl LoadQuant {
    pub fn ggml_type(self) -> Option<GgmlType> {
        match self {
            LoadQuant::Keep => None,
            LoadQuant::Q8_0 => Some(GgmlType::Q8_0),
            LoadQuant::Q4_0 => Some(GgmlType::Q4_0),
            LoadQuant::Q4_1 => Some(GgmlType::Q4_1),
        }
    }
}

impl std::str::FromStr for LoadQuant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "keep" | "none" => Ok(LoadQuant::Keep),
            "q8_0" => Ok(LoadQuant::Q8_0),
            "q4_0" => Ok(LoadQuant::Q4_0),
            "q4_1" => Ok(LoadQuant::Q4_1),
            _ => Err(format!("unknown load-time quantization {s:?} (keep, q8_0, q4_0, q4_1)")),
        }
    }
}

/// [`matrix`], requantized to `quant` when that type is set, differs from the file's, and
/// `cols` is a multiple of its 32-value block (other matrices keep their type).
pub(super) fn matrix_as(
    gpu: &Gpu,
    src: &dyn TensorSource,
    name: &str,
    rows: u32,
    cols: u32,
    quant: LoadQuant,
) -> Result<GpuWeight, LoadError> {
    check_dims(src, name, &[cols as u64, rows as u64])?;
    let info = src.tensor_info(name).ok_or_else(|| LoadError::Missing(name.to_string()))?;
    let ty = match quant.ggml_type() {
        Some(ty) if ty != info.ty && cols.is_multiple_of(ty.block_size() as u32) => ty,
        _ => return upload(gpu, src, name, rows, cols),
    };
    let values = dequantize_to_vec(info.ty, &src.tensor_data(name)?, rows as usize * cols as usize)?;
    let bytes = match ty {
        GgmlType::Q8_0 => quantize_q8_0(&values)?,
        GgmlType::Q4_0 => quantize_q4_0(&values)?,
        _ => quantize_q4_1(&values)?,
    };
    Ok(GpuWeight::upload(gpu, name, ty, rows, cols, &bytes)?)
}

/// A vector of `n` values as f32.
pub(super) fn vector(gpu: &Gpu, src: &dyn TensorSource, name: &str, n: u32) -> Result<wgpu::Buffer, LoadError> {
    check_dims(src, name, &[n as u64])?;
    let info = src.tensor_info(name).ok_or_else(|| LoadError::Missing(name.to_string()))?;
    let values = dequantize_to_vec(info.ty, &src.tensor_data(name)?, n as usize)?;
    Ok(gpu.storage_with(name, bytemuck::cast_slice(&values))?)
}
