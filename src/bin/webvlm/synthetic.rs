//! `webvlm synthetic`: a model file of random (or zero) weights with Ministral 3 3B's (or a
//! Qwen3.5 size's, or Llama 3.2 11B Vision's) exact shapes, for load tests.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use webvlm::gguf::{GgufWriter, MappedGguf};
use webvlm::model::synthetic::{
    synthetic_ministral3_writer, synthetic_mllama_writer, synthetic_pixtral_mmproj_writer, synthetic_qwen35_writer,
    synthetic_qwen_vl_mmproj_writer, MllamaParts, SyntheticWeights,
};

use crate::args::{Shape, ShapeModel};
use crate::CliResult;

#[derive(Args, Debug)]
pub struct SyntheticArgs {
    /// Where to write the text model
    #[arg(long, value_name = "M.gguf")]
    out: PathBuf,
    /// Where to write a vision projector (Pixtral mmproj) of the same shape
    #[arg(long, value_name = "P.gguf")]
    mmproj_out: Option<PathBuf>,
    /// The shapes: 3b, Ministral 3 3B's exact ones; tiny, the same structure in about 1 MB;
    /// mistral-small-24b, Mistral Small 3.1's; qwen3.5-*, a Qwen3.5 size
    #[arg(long, value_enum, default_value_t = Shape::Ministral3b)]
    shape: Shape,
    /// Seed of the random weights
    #[arg(long, value_name = "S", default_value_t = 1, conflicts_with = "zeros")]
    seed: u64,
    /// Zero weights, left as holes in sparse files (which take almost no disk)
    #[arg(long)]
    zeros: bool,
    /// Copy the tokenizer of this GGUF (e.g. the Tekken fixture): the engine can then load the model
    #[arg(long, value_name = "T.gguf")]
    vocab_from: Option<PathBuf>,
}

pub fn run(args: &SyntheticArgs) -> CliResult {
    let weights = if args.zeros { SyntheticWeights::Zeros } else { SyntheticWeights::Random { seed: args.seed } };
    let vocab = match &args.vocab_from {
        Some(path) => {
            let src = MappedGguf::open(path)?;
            src.metadata().iter().filter(|(k, _)| k.starts_with("tokenizer.")).map(|(k, v)| (k.to_string(), v.clone())).collect()
        }
        None => Vec::new(),
    };
    match args.shape.model() {
        ShapeModel::Ministral(text, vision) => {
            write_gguf(&args.out, &synthetic_ministral3_writer(&text, weights, &vocab)?)?;
            if let Some(path) = &args.mmproj_out {
                write_gguf(path, &synthetic_pixtral_mmproj_writer(&vision, weights)?)?;
            }
        }
        ShapeModel::Qwen35(text, vision) => {
            let mut gguf = synthetic_qwen35_writer(&text, weights)?;
            for (k, v) in vocab {
                gguf.add_kv(k, v);
            }
            write_gguf(&args.out, &gguf)?;
            if let Some(path) = &args.mmproj_out {
                write_gguf(path, &synthetic_qwen_vl_mmproj_writer(&vision, weights)?)?;
            }
        }
        ShapeModel::Mllama(shape) => {
            if args.mmproj_out.is_some() {
                return Err("an mllama model holds its vision encoder: no --mmproj-out".into());
            }
            let mut gguf = synthetic_mllama_writer(&shape, weights, MllamaParts::All)?;
            for (k, v) in vocab {
                gguf.add_kv(k, v);
            }
            write_gguf(&args.out, &gguf)?;
        }
    }
    Ok(())
}

/// Writes `gguf` to `path` (the error names the file: a 3B model needs ~3 GB free, unless
/// its weights are zeros, which become holes).
fn write_gguf(path: &Path, gguf: &GgufWriter) -> CliResult {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
    gguf.write_to(&mut file).and_then(|()| file.flush()).map_err(err)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
