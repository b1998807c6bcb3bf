//! How a model's tensors reach the GPU. The weight structs ask a [`WeightLoader`] for each
//! named tensor with the shape the config implies; the loader checks the shape, allocates
//! the GPU buffers and fills them — at once from a file in memory or mapped ([`Eager`]), or
//! later, as the bytes stream in ([`super::GgufStream`], the browser's path, which
//! never holds the whole file).

use crate::backend::cpu::Mapped;
use crate::backend::{Buffer, Device};
use crate::gguf::quant::{quantize_q4_0, quantize_q4_1, quantize_q4_k, quantize_q8_0};
use crate::gguf::{dequantize_to_vec, GgmlType, GgufError, Metadata, TensorInfo};
use crate::kernels::quant::{Weight, WeightFormat};

use super::LoadError;
use super::TensorSource;

/// A source of GPU weights by llama.cpp tensor name.
pub trait WeightLoader {
    fn metadata(&self) -> &Metadata;
    fn tensor_info(&self, name: &str) -> Option<&TensorInfo>;
    /// Fills rows `row0..row0 + r` of `target` with the tensor `name` (`r` rows of
    /// `target.cols`; the caller checked its dims), requantized when `target.ty` differs from
    /// the file's type — at once, or as the bytes arrive.
    fn fill(&mut self, dev: &Device, name: &str, target: &Weight, row0: u32) -> Result<(), LoadError>;
    /// The vector `name` of `n` values, as f32.
    fn vector(&mut self, dev: &Device, name: &str, n: u32) -> Result<Buffer, LoadError>;
    /// The GGUF bytes of `name` in memory the source maps, for the CPU backend to use where
    /// they lie; `None` (the default) where the source maps none.
    fn mapped(&self, _name: &str) -> Option<Mapped> {
        None
    }

    /// The type the `rows x cols` matrix `name` (GGUF dims `[cols, rows]`) is uploaded as:
    /// its file type, or `quant`'s where [`LoadQuant::target`] says so. Checks the dims.
    fn matrix_type(&self, name: &str, rows: u32, cols: u32, quant: LoadQuant) -> Result<GgmlType, LoadError> {
        check_dims(name, self.tensor_info(name), &[cols as u64, rows as u64])?;
        let file_ty = self.tensor_info(name).map(|t| t.ty).ok_or_else(|| LoadError::Missing(name.into()))?;
        Ok(quant.target(file_ty, cols))
    }

    /// The `rows x cols` matrix `name`, requantized to `quant` where [`LoadQuant::target`]
    /// says so.
    fn matrix(&mut self, dev: &Device, name: &str, rows: u32, cols: u32, quant: LoadQuant) -> Result<Weight, LoadError> {
        let ty = self.matrix_type(name, rows, cols, quant)?;
        if let Some(weight) = mapped_weight(dev, self, name, &[(name, rows)], ty, cols)? {
            return Ok(weight);
        }
        let weight = Weight::allocate(dev, name, ty, rows, cols, dev.caps().part_limit())?;
        self.fill(dev, name, &weight, 0)?;
        Ok(weight)
    }

    /// A tensor uploaded as `rows x cols` whatever its GGUF dims (the patch embedding's
    /// `[P, P, 3, hidden]` is a `[hidden][3*P*P]` matrix); the caller checked the dims.
    fn reshaped(&mut self, dev: &Device, name: &str, rows: u32, cols: u32) -> Result<Weight, LoadError> {
        let ty = self.tensor_info(name).map(|t| t.ty).ok_or_else(|| LoadError::Missing(name.into()))?;
        if let Some(weight) = mapped_weight(dev, self, name, &[(name, rows)], ty, cols)? {
            return Ok(weight);
        }
        let weight = Weight::allocate(dev, name, ty, rows, cols, dev.caps().part_limit())?;
        self.fill(dev, name, &weight, 0)?;
        Ok(weight)
    }
}

/// Matrices that multiply the same input, loaded by [`load_stacked`]: in the order asked,
/// consecutive ones of one type stacked by rows into one weight, so that one dispatch computes
/// them all.
pub struct Stacked(pub Vec<Weight>);

impl Stacked {
    /// The GPU weights, each one run of the stack.
    pub fn weights(&self) -> &[Weight] {
        &self.0
    }

    /// The single weight, when every matrix went into one stack.
    pub fn one(&self) -> Option<&Weight> {
        match self.0.as_slice() {
            [w] => Some(w),
            _ => None,
        }
    }
}

/// Loads the `(name, rows)` matrices of `cols` columns, stacking each run of consecutive ones
/// that can share a weight: the same upload type, one storage binding for the run, and row
/// offsets that keep split f16 scales 4-byte aligned. A run of all of them is named `label`,
/// a shorter one by its members' names joined with `+`.
pub fn load_stacked(
    dev: &Device,
    src: &mut dyn WeightLoader,
    label: &str,
    parts: &[(&str, u32)],
    cols: u32,
    quant: LoadQuant,
) -> Result<Stacked, LoadError> {
    let types = parts.iter().map(|&(name, rows)| src.matrix_type(name, rows, cols, quant)).collect::<Result<Vec<_>, _>>()?;
    let mut weights = Vec::new();
    let mut start = 0;
    while start < parts.len() {
        let end = start + types[start..].iter().take_while(|&&t| t == types[start]).count();
        let run = &parts[start..end];
        let name =
            if run.len() == parts.len() { label.to_string() } else { run.iter().map(|p| p.0).collect::<Vec<_>>().join("+") };
        match stack(dev, src, &name, run, types[start], cols)? {
            Some(w) => weights.push(w),
            None => {
                for &(name, rows) in run {
                    weights.push(src.matrix(dev, name, rows, cols, quant)?);
                }
            }
        }
        start = end;
    }
    Ok(Stacked(weights))
}

/// `run`'s matrices, all uploaded as `ty`, as one CPU weight whose parts are their bytes
/// where they lie in the source's mapped file; `None` off the CPU (or where it copies weights:
/// `cpu::Device::map_weights`), for a matrix requantized at load, or where the source maps it
/// not.
fn mapped_weight<L: WeightLoader + ?Sized>(
    dev: &Device,
    src: &L,
    label: &str,
    run: &[(&str, u32)],
    ty: GgmlType,
    cols: u32,
) -> Result<Option<Weight>, LoadError> {
    if !matches!(dev, Device::Cpu(cpu) if cpu.map_weights) {
        return Ok(None);
    }
    let mut parts = Vec::with_capacity(run.len());
    for &(name, rows) in run {
        let in_file_type = src.tensor_info(name).is_some_and(|t| t.ty == ty);
        let Some(bytes) = src.mapped(name).filter(|_| in_file_type) else { return Ok(None) };
        parts.push((name, rows, bytes));
    }
    Ok(Some(Weight::mapped(label, ty, cols, parts)?))
}

/// `run` (two or more matrices of upload type `ty`) stacked into one weight, or `None` when
/// it does not fit one binding or would misalign split scales.
fn stack(
    dev: &Device,
    src: &mut dyn WeightLoader,
    label: &str,
    run: &[(&str, u32)],
    ty: GgmlType,
    cols: u32,
) -> Result<Option<Weight>, LoadError> {
    if run.len() < 2 {
        return Ok(None);
    }
    if let Some(weight) = mapped_weight(dev, src, label, run, ty, cols)? {
        return Ok(Some(weight));
    }
    let aligned = match WeightFormat::of(ty, cols as usize) {
        Some(f) => !f.split_scale() || (cols as usize / f.block()).is_multiple_of(2) || run.iter().all(|p| p.1 % 2 == 0),
        None => false,
    };
    if !aligned {
        return Ok(None);
    }
    let total: u32 = run.iter().map(|&(_, rows)| rows).sum();
    let weight = Weight::allocate(dev, label, ty, total, cols, dev.caps().part_limit())?;
    if weight.parts.len() != 1 {
        return Ok(None);
    }
    let mut row0 = 0;
    for &(name, rows) in run {
        src.fill(dev, name, &weight, row0)?;
        row0 += rows;
    }
    Ok(Some(weight))
}

/// A type to requantize matrices to at load time (to save GPU memory). The quantizers are
/// byte-identical to llama.cpp's (`crate::gguf::quant`), so a BF16/F16 matrix requantized
/// here equals the one llama-quantize writes (without an importance matrix).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadQuant {
    /// Keep each tensor's file type.
    #[default]
    Keep,
    Q8_0,
    Q4_0,
    Q4_1,
    #[allow(non_camel_case_types)] // named like `GgmlType::Q4_K`
    Q4_K,
}

impl LoadQuant {
    /// The type a `cols`-wide matrix stored as `file_ty` is uploaded as: the requested type
    /// when `cols` is a multiple of its block. Otherwise, as llama-quantize's
    /// `tensor_type_fallback` does, a 32-block type stands in for Q4_K when `cols` is a multiple
    /// of 32: llama.cpp takes Q5_0, which the kernels do not read, so Q8_0 (at least as
    /// precise); a 32-block request keeps the file type (where llama.cpp writes F16).
    pub fn target(self, file_ty: GgmlType, cols: u32) -> GgmlType {
        let ty = match self {
            LoadQuant::Keep => return file_ty,
            LoadQuant::Q8_0 => GgmlType::Q8_0,
            LoadQuant::Q4_0 => GgmlType::Q4_0,
            LoadQuant::Q4_1 => GgmlType::Q4_1,
            LoadQuant::Q4_K => GgmlType::Q4_K,
        };
        let fits = |ty: GgmlType| cols.is_multiple_of(ty.block_size() as u32);
        match ty {
            _ if fits(ty) => ty,
            GgmlType::Q4_K if fits(GgmlType::Q8_0) => GgmlType::Q8_0,
            _ => file_ty,
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
            "q4_k" => Ok(LoadQuant::Q4_K),
            _ => Err(format!("unknown load-time quantization {s:?} (keep, q8_0, q4_0, q4_1, q4_k)")),
        }
    }
}

/// GGUF bytes of `values` as `ty`: F32 (small tensors kernels read as f32, such as the
/// Qwen3.5 conv taps) or quantized in whole blocks (Q8_0, Q4_0, Q4_1, Q4_K).
pub(super) fn requantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, LoadError> {
    Ok(match ty {
        GgmlType::F32 => bytemuck::cast_slice(values).to_vec(),
        GgmlType::Q8_0 => quantize_q8_0(values)?,
        GgmlType::Q4_0 => quantize_q4_0(values)?,
        GgmlType::Q4_1 => quantize_q4_1(values)?,
        GgmlType::Q4_K => quantize_q4_k(values)?,
        other => return Err(GgufError::UnsupportedType(other).into()),
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

    fn fill(&mut self, dev: &Device, name: &str, target: &Weight, row0: u32) -> Result<(), LoadError> {
        let file_ty = self.tensor_info(name).map(|t| t.ty).ok_or_else(|| LoadError::Missing(name.into()))?;
        let data = self.0.tensor_data(name)?;
        if target.ty == file_ty {
            target.write_rows(dev, row0, &data)?;
        } else {
            let n = data.len() / file_ty.type_size() * file_ty.block_size();
            let values = dequantize_to_vec(file_ty, &data, n)?;
            target.write_rows(dev, row0, &requantize(target.ty, &values)?)?;
        }
        Ok(())
    }

    fn mapped(&self, name: &str) -> Option<Mapped> {
        self.0.tensor_mapped(name)
    }

    fn vector(&mut self, dev: &Device, name: &str, n: u32) -> Result<Buffer, LoadError> {
        check_dims(name, self.tensor_info(name), &[n as u64])?;
        let ty = self.tensor_info(name).map(|t| t.ty).ok_or_else(|| LoadError::Missing(name.into()))?;
        let values = dequantize_to_vec(ty, &self.0.tensor_data(name)?, n as usize)?;
        Ok(dev.storage_with(name, bytemuck::cast_slice(&values))?)
    }
}
