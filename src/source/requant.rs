//! [`Requantize`]: a loader that uploads a model's float matrices (F32, F16, BF16) in a
//! smaller type — a Hugging Face folder's BF16 weights as Q8_0, say — while the model asks
//! for them as usual. Matrices already quantized in the file, vectors, and matrices whose
//! row length is not a whole number of the type's blocks keep their file type
//! ([`LoadQuant::target`]).
//!
//! Reference: llama.cpp's `convert_hf_to_gguf.py --outtype q8_0` quantizes every matrix the
//! same way, so a folder loaded with `LoadQuant::Q8_0` holds the bytes of that GGUF.

use crate::backend::cpu::Mapped;
use crate::backend::{Buffer, Device};
use crate::gguf::{GgmlType, Metadata, TensorInfo};
use crate::kernels::quant::Weight;

use super::{LoadError, LoadQuant, WeightLoader};

/// Wraps a loader so that the matrices a model asks for in their file type
/// ([`LoadQuant::Keep`]) come as `quant` when they are stored as floats.
pub struct Requantize<'a> {
    pub inner: &'a mut dyn WeightLoader,
    pub quant: LoadQuant,
}

impl WeightLoader for Requantize<'_> {
    fn metadata(&self) -> &Metadata {
        self.inner.metadata()
    }

    fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.inner.tensor_info(name)
    }

    fn fill(&mut self, dev: &Device, name: &str, target: &Weight, row0: u32) -> Result<(), LoadError> {
        self.inner.fill(dev, name, target, row0)
    }

    fn vector(&mut self, dev: &Device, name: &str, n: u32) -> Result<Buffer, LoadError> {
        self.inner.vector(dev, name, n)
    }

    fn mapped(&self, name: &str) -> Option<Mapped> {
        self.inner.mapped(name)
    }

    fn matrix_type(&self, name: &str, rows: u32, cols: u32, quant: LoadQuant) -> Result<GgmlType, LoadError> {
        let ty = self.inner.matrix_type(name, rows, cols, quant)?;
        let float = matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        Ok(if quant == LoadQuant::Keep && float { self.quant.target(ty, cols) } else { ty })
    }
}
