//! How a model's tensors reach the GPU. The weight structs ask a [`WeightLoader`] for each
//! named tensor with the shape the config implies; the loader checks the shape, allocates
//! the GPU buffers and fills them — at once from a file in memory or mapped ([`Eager`]), or
//! later, as the bytes stream in ([`super::GgufStream`], the browser's path, which
//! never holds the whole file).

use crate::gguf::quant::{quantize_q4_0, quantize_q4_1, quantize_q8_0};
use crate::gguf::{dequantize_to_vec, GgmlType, Metadata, TensorInfo};
use crate::gpu::Gpu;
use crate::kernels::quant::GpuWeight;

use super::LoadError;
use super::TensorSource;

/// A source of GPU weights by llama.cpp tensor name.
pub trait WeightLoader {
    fn metadata(&self) -> &Metadata;
    fn tensor_info(&self, name: &str) -> Option<&TensorInfo>;
    /// The `rows x cols` matrix `name` (GGUF dims `[cols, rows]`), requantized to `quant`
    /// where [`LoadQuant::target`] says so.
    fn matrix(&mut self, gpu: &Gpu, name: &str, rows: u32, cols: u32, quant: LoadQuant) -> Result<GpuWeight, LoadError>;
    /// The vector `name` of `n` values, as f32.
    fn vector(&mut self, gpu: &Gpu, name: &str, n: u32) -> Result<wgpu::Buffer, LoadError>;
    /// A tensor uploaded as `rows x cols` whatever its GGUF dims (the patch embedding's
    /// `[P, P, 3, hidden]` is a `[hidden][3*P*P]` matrix); the caller checked the dims.
    fn reshaped(&mut self, gpu: &Gpu, name: &str, rows: u32, cols: u32) -> Result<GpuWeight, LoadError>;
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
    /// The type a `cols`-wide matrix stored as `file_ty` is uploaded as: the requested type
    /// when it differs from the file's and `cols` is a multiple of its 32-value block.
    pub fn target(self, file_ty: GgmlType, cols: u32) -> GgmlType {
        let ty = match self {
            LoadQuant::Keep => return file_ty,
            LoadQuant::Q8_0 => GgmlType::Q8_0,
            LoadQuant::Q4_0 => GgmlType::Q4_0,
            LoadQuant::Q4_1 => GgmlType::Q4_1,
        };
        if cols.is_multiple_of(ty.block_size() as u32) {
            ty
        } else {
            file_ty
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

/// GGUF bytes of `values` (whole 32-blocks) quantized to `ty` (Q8_0, Q4_0 or Q4_1).
pub(super) fn requantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, LoadError> {
    Ok(match ty {
        GgmlType::Q8_0 => quantize_q8_0(values)?,
        GgmlType::Q4_0 => quantize_q4_0(values)?,
        _ => quantize_q4_1(values)?,
    })
}

/// Fails unless `info` has dims `want` (trailing 1s ignored).
pub fn check_dims(name: &str, info: Option<&TensorInfo>, want: &[u64]) -> Result<(), LoadError> {
    let info = info.ok_or_else(|| LoadError::Missing(name.to_string()))?;
    let mut dims = info.dims.clone();
    while dims.len() > want.len() && dims.last() == Some(&1) {
        dims.pop();
    }
    if dims != want {
        return Err(LoadError::Shape { name: name.into(), got: info.shape_str(), want: format!("{want:?}") });
    }
    Ok(())
}

/// Loads every tensor at once from a complete source.
pub struct Eager<'a>(pub &'a dyn TensorSource);

impl WeightLoader for Eager<'_> {
    fn metadata(&self) -> &Metadata {
        self.0.metadata()
    }

    fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.0.tensor_info(name)
    }

    fn matrix(&mut self, gpu: &Gpu, name: &str, rows: u32, cols: u32, quant: LoadQuant) -> Result<GpuWeight, LoadError> {
        check_dims(name, self.tensor_info(name), &[cols as u64, rows as u64])?;
        let file_ty = self.tensor_info(name).map(|t| t.ty).ok_or_else(|| LoadError::Missing(name.into()))?;
        let ty = quant.target(file_ty, cols);
        if ty == file_ty {
            return self.reshaped(gpu, name, rows, cols);
        }
        let values = dequantize_to_vec(file_ty, &self.0.tensor_data(name)?, rows as usize * cols as usize)?;
        Ok(GpuWeight::upload(gpu, name, ty, rows, cols, &requantize(ty, &values)?)?)
    }

    fn vector(&mut self, gpu: &Gpu, name: &str, n: u32) -> Result<wgpu::Buffer, LoadError> {
        check_dims(name, self.tensor_info(name), &[n as u64])?;
        let ty = self.tensor_info(name).map(|t| t.ty).ok_or_else(|| LoadError::Missing(name.into()))?;
        let values = dequantize_to_vec(ty, &self.0.tensor_data(name)?, n as usize)?;
        Ok(gpu.storage_with(name, bytemuck::cast_slice(&values))?)
    }

    fn reshaped(&mut self, gpu: &Gpu, name: &str, rows: u32, cols: u32) -> Result<GpuWeight, LoadError> {
        let ty = self.tensor_info(name).map(|t| t.ty).ok_or_else(|| LoadError::Missing(name.into()))?;
        Ok(GpuWeight::upload(gpu, name, ty, rows, cols, &self.0.tensor_data(name)?)?)
    }
}
