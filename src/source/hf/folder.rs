//! [`HfModel`]: a Hugging Face model folder on disk, its safetensors shards memory-mapped,
//! read as a [`TensorSource`] (GGUF names, dims and metadata; see the module docs).

use std::borrow::Cow;
use std::path::Path;

use super::{GenerationDefaults, HfConfig, HfError, HfTensor, HfTensors, HfTextFiles, Origin};
use crate::gguf::{GgufError, Metadata, TensorInfo};
use crate::safetensors::SafetensorsFolder;
use crate::source::TensorSource;

/// A Hugging Face model folder: `config.json`, the tokenizer files, `generation_config.json`,
/// `model.safetensors` or shards with `model.safetensors.index.json`.
pub struct HfModel {
    config: HfConfig,
    metadata: Metadata,
    tensors: HfTensors,
    shards: SafetensorsFolder,
    text: HfTextFiles,
}

/// A file of the folder, or `None` when it is absent.
fn read_optional(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, HfError> {
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HfError::Io { file: name.to_string(), error: e.to_string() }),
    }
}

impl HfModel {
    /// Opens the folder: reads the config and text files, maps the shards and checks that
    /// every tensor has a GGUF name and fits the config.
    pub fn open(dir: impl AsRef<Path>) -> Result<HfModel, HfError> {
        let dir = dir.as_ref();
        let config_json = read_optional(dir, "config.json")?.ok_or_else(|| HfError::MissingFile("config.json".into()))?;
        let config = HfConfig::parse(&config_json)?;
        let text = HfTextFiles::from_reader(|name| read_optional(dir, name))?;
        config.check_image_processor(&text)?;
        let shards = SafetensorsFolder::open(dir)?;
        let mut stored = Vec::with_capacity(shards.len());
        for e in shards.tensors() {
            let ty =
                e.dtype.ggml_type().ok_or_else(|| HfError::Dtype { name: e.name.clone(), dtype: format!("{:?}", e.dtype) })?;
            stored.push((e.name.as_str(), ty, e.shape.as_slice()));
        }
        let tensors = HfTensors::new(&config, stored)?;
        Ok(HfModel { metadata: config.metadata(), config, tensors, shards, text })
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> &HfConfig {
        &self.config
    }

    /// Every tensor under its GGUF name.
    pub fn tensors(&self) -> impl Iterator<Item = &HfTensor> {
        self.tensors.iter()
    }

    /// The tokenizer, template and generation files (for [`crate::engine::EngineBuilder::hf_text`]).
    pub fn text_files(&self) -> &HfTextFiles {
        &self.text
    }

    /// `generation_config.json`'s sampling defaults.
    pub fn generation_defaults(&self) -> &GenerationDefaults {
        &self.text.generation
    }

    /// The safetensors files the weights come from.
    pub fn paths(&self) -> Vec<String> {
        self.shards.shards().iter().map(|s| s.path().display().to_string()).collect()
    }
}

impl TensorSource for HfModel {
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name).map(|t| &t.info)
    }

    fn tensor_data(&self, name: &str) -> Result<Cow<'_, [u8]>, GgufError> {
        let missing = || GgufError::MissingTensor(name.to_string());
        let t = self.tensors.get(name).ok_or_else(missing)?;
        let stored: &[u8] = match &t.origin {
            Origin::Stored { hf_name, .. } => self.shards.tensor(hf_name).map_err(|_| missing())?.1,
            Origin::Synthesized(_) => &[],
        };
        Ok(HfTensors::gguf_bytes(t, stored))
    }
}
