//! The GGUF view of a Hugging Face folder's tensors: llama.cpp names, GGUF dims (the shape
//! reversed), the file's element type, where each comes from (a stored tensor, its rows
//! permuted or not, or one synthesized from the config such as `rope_freqs.weight`).
//!
//! Independent of how the bytes are held (memory map, stream): the folder's reader lists
//! `(name, type, shape)` and asks [`HfTensors::gguf_bytes`] to turn a stored tensor's bytes
//! into GGUF bytes.
//!
//! Reference: llama.cpp `convert_hf_to_gguf.py` (`LlamaModel.modify_tensors`,
//! `generate_extra_tensors`).

use std::borrow::Cow;
use std::collections::HashMap;

use super::config::HfConfig;
use super::names::{gguf_name, permute_rows, Mapped, Permute};
use super::HfError;
use crate::gguf::{GgmlType, TensorInfo};

/// Where a GGUF tensor's bytes come from.
#[derive(Clone, Debug)]
pub enum Origin {
    /// A tensor of the folder, by its Hugging Face name; rows permuted per head when
    /// `heads` is set.
    Stored { hf_name: String, heads: Option<u32> },
    /// Computed from the config (F32 bytes).
    Synthesized(Vec<u8>),
}

/// One tensor as a GGUF file would list it.
#[derive(Clone, Debug)]
pub struct HfTensor {
    /// GGUF name, dims and type; `offset` is 0 (there is no GGUF data section).
    pub info: TensorInfo,
    pub origin: Origin,
}

/// Every tensor of a folder under its GGUF name.
#[derive(Clone, Debug, Default)]
pub struct HfTensors {
    list: Vec<HfTensor>,
    index: HashMap<String, usize>,
}

fn info(name: String, dims: Vec<u64>, ty: GgmlType) -> TensorInfo {
    TensorInfo { name, dims, ty, offset: 0 }
}

impl HfTensors {
    /// Maps the folder's tensors `(Hugging Face name, type, shape as stored)`; a tensor
    /// without a GGUF name, or a q/k projection whose rows are not whole heads, is an error.
    pub fn new<'a>(cfg: &HfConfig, stored: impl IntoIterator<Item = (&'a str, GgmlType, &'a [u64])>) -> Result<Self, HfError> {
        let mut out = HfTensors::default();
        for (hf_name, ty, shape) in stored {
            let mapped = match &cfg.mllama {
                Some(m) => m.gguf_name(hf_name, cfg.n_layer),
                None => gguf_name(hf_name, cfg.n_layer),
            };
            let (name, permute) = match mapped {
                Some(Mapped::To(name, permute)) => (name, permute),
                Some(Mapped::Skipped) => continue,
                None => return Err(HfError::UnmappedTensor(hf_name.to_string())),
            };
            let heads = match permute {
                Permute::None => None,
                Permute::Query => Some(cfg.n_head),
                Permute::Key => Some(cfg.n_head_kv.unwrap_or(cfg.n_head)),
            };
            if let Some(h) = heads {
                let rows = shape.first().copied().unwrap_or(0);
                if shape.len() != 2 || h == 0 || rows % (2 * h as u64) != 0 {
                    return Err(HfError::TensorShape {
                        name: hf_name.to_string(),
                        shape: shape.to_vec(),
                        why: "a q/k projection must be [heads * even head_dim][hidden]",
                    });
                }
            }
            let dims = shape.iter().rev().copied().collect();
            out.push(HfTensor { info: info(name, dims, ty), origin: Origin::Stored { hf_name: hf_name.to_string(), heads } });
        }
        if let Some(freqs) = cfg.rope_freqs() {
            let dims = vec![freqs.len() as u64];
            let bytes = bytemuck::cast_slice(&freqs).to_vec();
            out.push(HfTensor {
                info: info("rope_freqs.weight".into(), dims, GgmlType::F32),
                origin: Origin::Synthesized(bytes),
            });
        }
        Ok(out)
    }

    fn push(&mut self, t: HfTensor) {
        self.index.insert(t.info.name.clone(), self.list.len());
        self.list.push(t);
    }

    /// The tensor of GGUF name `name`.
    pub fn get(&self, name: &str) -> Option<&HfTensor> {
        self.index.get(name).map(|&i| &self.list[i])
    }

    /// Every tensor, in the order listed.
    pub fn iter(&self) -> impl Iterator<Item = &HfTensor> {
        self.list.iter()
    }

    /// The GGUF bytes of `t`, given the bytes its origin stores (`stored`; unused for a
    /// synthesized tensor): as stored, or with the rows permuted (a new buffer).
    pub fn gguf_bytes<'a>(t: &'a HfTensor, stored: &'a [u8]) -> Cow<'a, [u8]> {
        match &t.origin {
            Origin::Synthesized(bytes) => Cow::Borrowed(bytes),
            Origin::Stored { heads: None, .. } => Cow::Borrowed(stored),
            Origin::Stored { heads: Some(h), .. } => {
                // `new` checked 2-D dims with rows a multiple of 2 * heads; the reader checked
                // the byte length against the dims.
                let rows = t.info.dims.get(1).copied().unwrap_or(1) as usize;
                Cow::Owned(permute_rows(stored, *h as usize, stored.len() / rows.max(1)))
            }
        }
    }
}
