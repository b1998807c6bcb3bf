//! `webvlm convert`: a Hugging Face model folder converted the way the browser converts a
//! repository (its shards streamed, float matrices quantized while loading) and written out
//! as the GGUF file the engine produces while loading it ([`RepoLoad::write_gguf`]): the
//! same bytes the npm package keeps in Cache Storage. `--model FILE.gguf` loads it later with
//! no conversion, tokenizer and chat template included.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;

use clap::Args;
use webvlm::backend::gpu::{Gpu, GpuOptions};
use webvlm::engine::RepoLoad;
use webvlm::model::ContextOptions;
use webvlm::source::LoadQuant;

use crate::args::load_quant;
use crate::CliResult;

/// Shard bytes read per push.
const CHUNK: usize = 8 << 20;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// A Hugging Face model folder (config.json, tokenizer files, safetensors shards)
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Type of the float matrices: q8_0, q4_k, q4_0, q4_1 or keep
    #[arg(long, value_name = "Q", default_value = "q8_0", value_parser = load_quant())]
    quant: LoadQuant,
    /// The GGUF file to write
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn run(args: &ConvertArgs) -> CliResult {
    let started = std::time::Instant::now();
    if !args.model.is_dir() {
        return Err(format!("{}: --model must be a Hugging Face model folder", args.model.display()).into());
    }
    let mut repo = RepoLoad::new(|name| std::fs::read(args.model.join(name)).ok(), args.quant)?;
    repo.write_gguf()?;
    let shards = repo.shard_names();
    let open = |name: &str| File::open(args.model.join(name)).map_err(|e| format!("{name}: {e}"));
    let mut buf = vec![0u8; CHUNK];
    for (i, name) in shards.iter().enumerate() {
        let mut file = open(name)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Err(format!("{name}: the file ends inside its header").into());
            }
            if repo.push_header(i, &buf[..n])? {
                break;
            }
        }
    }
    // The model is built on the GPU as in any load (the GGUF holds the bytes as uploaded); a
    // short context keeps the KV cache small.
    let gpu = Gpu::new_blocking(GpuOptions::default())?;
    let context = ContextOptions { max_ctx: 64, ..ContextOptions::for_adapter(&gpu.caps) };
    let engine = repo.build(gpu, context)?;
    let mut out = BufWriter::new(File::create(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?);
    let mut written = 0u64;
    let mut emit = |bytes: Vec<u8>, out: &mut BufWriter<File>| -> std::io::Result<()> {
        written += bytes.len() as u64;
        out.write_all(&bytes)
    };
    emit(repo.take_gguf(), &mut out)?;
    for (i, name) in shards.iter().enumerate() {
        let mut file = open(name)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            repo.push(engine.device(), i, &buf[..n])?;
            emit(repo.take_gguf(), &mut out)?;
        }
    }
    repo.finish()?;
    emit(repo.take_gguf(), &mut out)?;
    out.flush()?;
    eprintln!(
        "wrote {} ({written} bytes, {:?} matrices) from {} shard(s) in {:.1} s",
        args.out.display(),
        args.quant,
        shards.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
