//! A Hugging Face repository loading as a stream of shard bytes: the browser's
//! `createEngine({model: {repo, quant}})` and `webvlm convert`. The caller fetches the
//! repository's small files (`config.json`, tokenizer, template, generation config, shard
//! index), then every shard's header, then every shard's bytes; this wraps [`HfStream`] with
//! the load-time quantization (the shards' SHA-256, which Hugging Face publishes as each LFS
//! file's `X-Linked-ETag`, are checked by the stream). With [`RepoLoad::write_gguf`] the
//! converted model comes out as one GGUF file as it loads ([`RepoLoad::take_gguf`]): the
//! browser keeps it in Cache Storage, the CLI writes it to disk.

use super::{Engine, EngineError};
use crate::backend::Device;
use crate::gguf::{Metadata, TensorInfo};
use crate::model::{ContextOptions, ModelError};
use crate::source::hf::{HfError, HfStream, HfTextFiles};
use crate::source::{LoadError, LoadQuant, Requantize, WeightLoader};

/// `model.safetensors.index.json`, the shard index of a sharded model.
pub const INDEX_JSON: &str = "model.safetensors.index.json";

/// A repository whose shards are being streamed.
pub struct RepoLoad {
    stream: HfStream,
    quant: LoadQuant,
}

impl RepoLoad {
    /// A repository of the files `read(name)` gives (`None`: the repository lacks it):
    /// `config.json` is required, [`INDEX_JSON`] marks a sharded model.
    pub fn new(mut read: impl FnMut(&str) -> Option<Vec<u8>>, quant: LoadQuant) -> Result<RepoLoad, HfError> {
        let config = read("config.json").ok_or_else(|| HfError::MissingFile("config.json".into()))?;
        let text = HfTextFiles::from_reader(|name| Ok(read(name)))?;
        let stream = HfStream::new(&config, text, read(INDEX_JSON).as_deref())?;
        Ok(RepoLoad { stream, quant })
    }

    /// Also writes the converted model out as GGUF ([`Self::take_gguf`]); before [`Self::build`].
    pub fn write_gguf(&mut self) -> Result<(), LoadError> {
        self.stream.write_gguf()
    }

    /// The GGUF bytes produced since the last call ([`HfStream::take_gguf`]).
    pub fn take_gguf(&mut self) -> Vec<u8> {
        self.stream.take_gguf()
    }

    /// The safetensors files to fetch, in shard order.
    pub fn shard_names(&self) -> Vec<String> {
        self.stream.shard_names().into_iter().map(str::to_string).collect()
    }

    /// Checks shard `shard` against `digest` when loading finishes (before its first push).
    pub fn expect_sha256(&mut self, shard: usize, digest: [u8; 32]) -> Result<(), LoadError> {
        self.stream.expect_sha256(shard, digest)
    }

    /// First pass: the next bytes of `shard` from its start; true once its header is in.
    pub fn push_header(&mut self, shard: usize, chunk: &[u8]) -> Result<bool, LoadError> {
        self.stream.push_header(shard, chunk)
    }

    /// The metadata and GGUF tensor infos the shards' headers give, once every one is in
    /// (checked against the index): what the memory plan reads.
    pub fn headers(&mut self) -> Result<Option<(&Metadata, Vec<TensorInfo>)>, LoadError> {
        if !self.stream.headers_complete()? {
            return Ok(None);
        }
        Ok(self.stream.tensor_infos().map(|t| (self.stream.metadata(), t)))
    }

    /// The load-time quantization of the float matrices (before [`Self::build`]).
    pub fn quant(&self) -> LoadQuant {
        self.quant
    }

    pub fn set_quant(&mut self, quant: LoadQuant) {
        self.quant = quant;
    }

    /// Whether every shard's header is in (checked against the index): [`Self::build`] may
    /// come.
    pub fn headers_complete(&mut self) -> Result<bool, LoadError> {
        self.stream.headers_complete()
    }

    /// Builds the engine, then seals the plan; fails unless every shard's header is in
    /// ([`Self::headers_complete`]).
    pub fn build(&mut self, dev: impl Into<Device>, context: ContextOptions) -> Result<Engine, EngineError> {
        let dev = dev.into();
        if !self.headers_complete().map_err(ModelError::from)? {
            let missing = LoadError::Stream("the model was built before every shard's header was in".into());
            return Err(ModelError::from(missing).into());
        }
        let text = self.stream.text_files().clone();
        let mut src = Requantize { inner: &mut self.stream, quant: self.quant };
        let engine = Engine::builder(dev).context(context).hf_text(&text).load(&mut src)?;
        self.stream.seal().map_err(ModelError::from)?;
        Ok(engine)
    }

    /// Second pass: the next bytes of `shard`, from its byte 0 on.
    pub fn push(&mut self, dev: &Device, shard: usize, chunk: &[u8]) -> Result<(), LoadError> {
        self.stream.push(dev, shard, chunk)
    }

    /// Fails unless every tensor arrived and every shard hashed to its published digest.
    pub fn finish(&mut self) -> Result<(), LoadError> {
        self.stream.finish()
    }
}
