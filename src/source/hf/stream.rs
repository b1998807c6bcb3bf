//! A Hugging Face model streamed shard by shard into GPU buffers, never holding a shard: the
//! browser's path for a repository (its safetensors files come over the network or from
//! Cache Storage a few MiB at a time), tested natively against [`super::HfModel`].
//!
//! The model can be planned only once every shard's header is known (the names, types and
//! shapes of all tensors), so it loads in two passes over the shards, as a split GGUF does:
//! 1. [`HfStream::push_header`] reads each shard's first bytes until its header is complete
//!    (checked against the index); then the GGUF view of the tensors is built;
//! 2. the model is built on the stream as its [`WeightLoader`] (each tensor asked for becomes
//!    a target: its byte range in its shard; tensors synthesized from the config, such as
//!    `rope_freqs.weight`, are written at once), then [`HfStream::seal`];
//! 3. [`HfStream::push`] streams every shard from byte 0 (the header bytes are skipped):
//!    whole rows are converted (requantized, q/k rows permuted per head) and written a group
//!    at a time (`route.rs`);
//! 4. [`HfStream::finish`] fails unless every target received all its bytes and every shard
//!    whose SHA-256 was published ([`HfStream::expect_sha256`]) hashed to it.
//!
//! With [`HfStream::write_gguf`] the stream also writes the model out as one GGUF file as it
//! loads (the tensors as uploaded, the text files in its metadata: `gguf_out.rs`), which
//! loads the same model with no conversion.

use std::collections::HashMap;

use super::{HfConfig, HfError, HfTensor, HfTensors, HfTextFiles, Origin};
use crate::backend::{Buffer, Device};
use crate::gguf::{dequantize_to_vec, GgmlType, Metadata, TensorInfo};
use crate::kernels::quant::Weight;
use crate::safetensors::{HeaderParser, SafetensorsHeader, ShardIndex, SINGLE_FILE};
use crate::source::digest::Sha256Check;
use crate::source::gguf_out::{Arrival, GgufOut};
use crate::source::loader::{check_dims, requantize, WeightLoader};
use crate::source::route::{Router, Sink};
use crate::source::LoadError;

/// One safetensors file of the model.
struct Shard {
    name: String,
    parser: HeaderParser,
    header: Option<SafetensorsHeader>,
    /// Bytes pushed in the second pass.
    pushed: u64,
    router: Router,
    /// The shard's published SHA-256, checked over the second pass.
    sha256: Option<Sha256Check>,
}

/// A Hugging Face model whose shards are being streamed.
pub struct HfStream {
    config: HfConfig,
    metadata: Metadata,
    text: HfTextFiles,
    index: Option<ShardIndex>,
    shards: Vec<Shard>,
    /// The GGUF view, once every header is in.
    tensors: Option<HfTensors>,
    /// Hugging Face name → shard number.
    shard_of: HashMap<String, usize>,
    /// The GGUF file being written, with [`Self::write_gguf`].
    out: Option<GgufOut>,
}

impl HfStream {
    /// A model of `config.json` and its text files; `index_json` is
    /// `model.safetensors.index.json` for a sharded model (its files are the shards, in the
    /// order [`HfStream::shard_names`] lists), `None` for a single `model.safetensors`.
    pub fn new(config_json: &[u8], text: HfTextFiles, index_json: Option<&[u8]>) -> Result<HfStream, HfError> {
        let config = HfConfig::parse(config_json)?;
        config.check_image_processor(&text)?;
        let index = index_json.map(ShardIndex::parse).transpose()?;
        let names: Vec<String> = match &index {
            Some(index) => index.files().map(str::to_string).collect(),
            None => vec![SINGLE_FILE.to_string()],
        };
        let shards = names
            .into_iter()
            .map(|name| Shard {
                name,
                parser: HeaderParser::new(),
                header: None,
                pushed: 0,
                router: Router::default(),
                sha256: None,
            })
            .collect();
        Ok(HfStream {
            metadata: config.metadata(),
            config,
            text,
            index,
            shards,
            tensors: None,
            shard_of: HashMap::new(),
            out: None,
        })
    }

    /// Also writes the model out as a GGUF file as it loads ([`Self::take_gguf`]); call
    /// before the model is built on the stream.
    pub fn write_gguf(&mut self) -> Result<(), LoadError> {
        if self.shards.iter().any(|s| s.router.is_sealed()) {
            return Err(LoadError::Stream("the GGUF output must be asked for before the model is planned".into()));
        }
        self.out = Some(GgufOut::default());
        Ok(())
    }

    /// The GGUF file's bytes produced since the last call, in file order (its header once
    /// the stream is sealed, then the tensors as their bytes are pushed; complete after
    /// [`Self::finish`]). Empty without [`Self::write_gguf`].
    pub fn take_gguf(&mut self) -> Vec<u8> {
        self.out.as_mut().map(GgufOut::take).unwrap_or_default()
    }

    /// The safetensors files to fetch, by shard number.
    pub fn shard_names(&self) -> Vec<&str> {
        self.shards.iter().map(|s| s.name.as_str()).collect()
    }

    /// The tokenizer, template and generation files.
    pub fn text_files(&self) -> &HfTextFiles {
        &self.text
    }

    fn shard(&mut self, shard: usize) -> Result<&mut Shard, LoadError> {
        let count = self.shards.len();
        self.shards.get_mut(shard).ok_or_else(|| LoadError::Stream(format!("shard {shard} of a model of {count} files")))
    }

    /// Checks shard `shard` against `digest` in [`Self::finish`] (before its first [`Self::push`]).
    pub fn expect_sha256(&mut self, shard: usize, digest: [u8; 32]) -> Result<(), LoadError> {
        let s = self.shard(shard)?;
        if s.pushed > 0 {
            return Err(LoadError::Stream(format!("{}: the expected SHA-256 must be set before its first push", s.name)));
        }
        s.sha256 = Some(Sha256Check::new(digest));
        Ok(())
    }

    /// First pass: the next bytes of shard `shard` from its start; true once its header is
    /// complete (later bytes are ignored).
    pub fn push_header(&mut self, shard: usize, chunk: &[u8]) -> Result<bool, LoadError> {
        let s = self.shard(shard)?;
        if s.header.is_none() {
            s.header = s.parser.feed(chunk).map_err(HfError::from)?;
        }
        Ok(s.header.is_some())
    }

    /// Whether every shard's header is in; the first time they are, checks each against the
    /// index and builds the GGUF view of the tensors.
    pub fn headers_complete(&mut self) -> Result<bool, LoadError> {
        if self.tensors.is_some() {
            return Ok(true);
        }
        let Some(headers) = self.shards.iter().map(|s| s.header.as_ref()).collect::<Option<Vec<_>>>() else {
            return Ok(false);
        };
        let mut stored = Vec::new();
        let mut shard_of = HashMap::new();
        for (i, (shard, header)) in self.shards.iter().zip(&headers).enumerate() {
            if let Some(index) = &self.index {
                index.check_shard(&shard.name, header).map_err(HfError::from)?;
            }
            for e in &header.tensors {
                let ty =
                    e.dtype.ggml_type().ok_or_else(|| HfError::Dtype { name: e.name.clone(), dtype: e.dtype.name().into() })?;
                if shard_of.insert(e.name.clone(), i).is_some() {
                    return Err(LoadError::Stream(format!("tensor {} is in two shards", e.name)));
                }
                stored.push((e.name.as_str(), ty, e.shape.as_slice()));
            }
        }
        self.tensors = Some(HfTensors::new(&self.config, stored)?);
        self.shard_of = shard_of;
        Ok(true)
    }

    /// The GGUF view's tensors, once every header is in (for the memory plan).
    pub fn tensor_infos(&self) -> Option<Vec<TensorInfo>> {
        Some(self.tensors.as_ref()?.iter().map(|t| t.info.clone()).collect())
    }

    /// Ends planning: no more tensors may be asked for.
    pub fn seal(&mut self) -> Result<(), LoadError> {
        if self.tensors.is_none() {
            return Err(LoadError::Stream("sealed before every shard's header was in".into()));
        }
        self.shards.iter_mut().try_for_each(|s| s.router.seal())?;
        if let Some(out) = &mut self.out {
            out.lay_out(&self.metadata, self.text.to_metadata()?)?;
        }
        Ok(())
    }

    /// Second pass: the next bytes of shard `shard`, from its byte 0 on (after [`Self::seal`]).
    pub fn push(&mut self, dev: &Device, shard: usize, chunk: &[u8]) -> Result<(), LoadError> {
        self.shard(shard)?;
        let s = &mut self.shards[shard];
        if !s.router.is_sealed() {
            return Err(LoadError::Stream(format!("{}: bytes pushed before the model was planned", s.name)));
        }
        if let Some(check) = &mut s.sha256 {
            check.update(chunk);
        }
        let at = s.pushed;
        s.pushed += chunk.len() as u64;
        s.router.route(dev, at, chunk, self.out.as_mut())
    }

    /// Fails unless every shard delivered every tensor asked for and hashed to its published
    /// SHA-256.
    pub fn finish(&mut self) -> Result<(), LoadError> {
        for s in &mut self.shards {
            s.router.finish(s.pushed).map_err(|e| LoadError::Stream(format!("{}: {e}", s.name)))?;
            s.sha256.take().map_or(Ok(()), Sha256Check::finish)?;
        }
        self.out.as_mut().map_or(Ok(()), GgufOut::finish)
    }

    /// Bytes held for partial row groups and incomplete vectors.
    pub fn held_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.router.held_bytes()).sum()
    }

    fn tensor(&self, name: &str) -> Result<&HfTensor, LoadError> {
        let tensors = self.tensors.as_ref().ok_or_else(|| LoadError::Stream("planned before every header was in".into()))?;
        tensors.get(name).ok_or_else(|| LoadError::Missing(name.into()))
    }

    /// Registers `name` (stored in a shard) with `sink`, uploaded as `ty`.
    fn add_target(&mut self, name: &str, hf_name: &str, ty: GgmlType, sink: Sink) -> Result<(), LoadError> {
        let &shard = self.shard_of.get(hf_name).ok_or_else(|| LoadError::Missing(name.into()))?;
        let s = &mut self.shards[shard];
        let header = s.header.as_ref().ok_or_else(|| LoadError::Stream("no header".into()))?;
        let entry = header.tensor(hf_name).ok_or_else(|| LoadError::Missing(name.into()))?;
        let range = header.file_range(entry);
        s.router.add(name, range.start, range.end, sink)?;
        self.plan_out(name, ty, Arrival::Streamed { shard, start: range.start }, Vec::new())
    }

    /// Records `name`, uploaded as `ty`, in the GGUF output (`bytes`: the upload, when known now).
    fn plan_out(&mut self, name: &str, ty: GgmlType, arrival: Arrival, bytes: Vec<u8>) -> Result<(), LoadError> {
        let Some(out) = &mut self.out else { return Ok(()) };
        let dims = self.tensors.as_ref().and_then(|t| t.get(name)).map(|t| t.info.dims.clone()).unwrap_or_default();
        out.plan(name, &dims, ty, arrival, bytes)
    }
}

impl WeightLoader for HfStream {
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.as_ref()?.get(name).map(|t| &t.info)
    }

    fn fill(&mut self, dev: &Device, name: &str, target: &Weight, row0: u32) -> Result<(), LoadError> {
        let t = self.tensor(name)?;
        let file_ty = t.info.ty;
        match t.origin.clone() {
            Origin::Synthesized(bytes) => {
                let bytes = if target.ty == file_ty {
                    bytes
                } else {
                    let values = dequantize_to_vec(file_ty, &bytes, bytes.len() / file_ty.type_size() * file_ty.block_size())?;
                    requantize(target.ty, &values)?
                };
                target.write_rows(dev, row0, &bytes)?;
                self.plan_out(name, target.ty, Arrival::Now, bytes)
            }
            Origin::Stored { hf_name, heads } => {
                let rows = t.info.dims.get(1).copied().unwrap_or(1) as u32;
                let head_rows = heads.map(|h| rows / h.max(1));
                self.add_target(name, &hf_name, target.ty, Sink::rows(file_ty, target, row0, head_rows))
            }
        }
    }

    fn vector(&mut self, dev: &Device, name: &str, n: u32) -> Result<Buffer, LoadError> {
        check_dims(name, self.tensor_info(name), &[n as u64])?;
        let t = self.tensor(name)?;
        let ty = t.info.ty;
        match t.origin.clone() {
            Origin::Synthesized(bytes) => {
                let values = dequantize_to_vec(ty, &bytes, n as usize)?;
                let buffer = dev.storage_with(name, bytemuck::cast_slice(&values))?;
                self.plan_out(name, GgmlType::F32, Arrival::Now, bytemuck::cast_slice(&values).to_vec())?;
                Ok(buffer)
            }
            Origin::Stored { hf_name, .. } => {
                let buffer = dev.storage(name, n as u64 * 4)?;
                self.add_target(name, &hf_name, GgmlType::F32, Sink::Vector { buffer: buffer.clone(), ty, n })?;
                Ok(buffer)
            }
        }
    }
}
