//! `--model`: a GGUF file (or the first part of a split one), or a Hugging Face model folder
//! (`config.json`, tokenizer files, safetensors shards).

use std::path::Path;

use webvlm::engine::{Engine, EngineBuilder};
use webvlm::gguf::{MappedGguf, TensorInfo};
use webvlm::source::hf::HfModel;
use webvlm::source::{Eager, LoadQuant, Requantize, TensorSource};

/// A model opened from `--model`.
pub enum ModelFiles {
    Gguf(MappedGguf),
    Hf(Box<HfModel>),
}

impl ModelFiles {
    /// A folder is read as a Hugging Face model, anything else as GGUF.
    pub fn open(path: &Path) -> Result<ModelFiles, Box<dyn std::error::Error>> {
        Ok(if path.is_dir() { ModelFiles::Hf(Box::new(HfModel::open(path)?)) } else { ModelFiles::Gguf(MappedGguf::open(path)?) })
    }

    pub fn source(&self) -> &dyn TensorSource {
        match self {
            ModelFiles::Gguf(m) => m,
            ModelFiles::Hf(m) => m.as_ref(),
        }
    }

    /// Every tensor as GGUF lists it.
    pub fn tensors(&self) -> Vec<&TensorInfo> {
        match self {
            ModelFiles::Gguf(m) => m.tensors().collect(),
            ModelFiles::Hf(m) => m.tensors().map(|t| &t.info).collect(),
        }
    }

    /// The files the weights come from.
    pub fn paths(&self) -> Vec<String> {
        match self {
            ModelFiles::Gguf(m) => m.paths().to_vec(),
            ModelFiles::Hf(m) => m.paths(),
        }
    }

    /// The engine `builder` loads on this model: the tokenizer and template from the GGUF
    /// metadata or the folder's files, float matrices requantized to `quant`.
    pub fn engine<'a>(&'a self, builder: EngineBuilder<'a>, quant: LoadQuant) -> Result<Engine, Box<dyn std::error::Error>> {
        let builder = match self {
            ModelFiles::Gguf(_) => builder,
            ModelFiles::Hf(m) => builder.hf_text(m.text_files()),
        };
        Ok(builder.load(&mut Requantize { inner: &mut Eager(self.source()), quant })?)
    }
}
