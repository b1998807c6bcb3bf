//! `webvlm`: the native command-line tool (generate, logits, chat, batch, serve, info, convert,
//! split, synthetic, soak, bench). `webvlm --help` and `webvlm <command> --help` list the flags.

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use webvlm::backend::Device;
use webvlm::engine::{Engine, EngineError};
use webvlm::error::{Classify, ErrorClass};
use webvlm::gguf::{MappedGguf, TensorInfo};
use webvlm::image::DEFAULT_MAX_EDGE;
use webvlm::model::{ContextOptions, MemoryBudget, MemoryPlan, ModelHeaders, PlanLimits, PlanOptions, Precision};
use webvlm::source::{Eager, LoadQuant};

mod api;
mod args;
mod bench;
mod convert;
mod generate;
mod info;
mod open;
mod serve;
mod soak;
mod stdout;
mod synthetic;

type CliResult = Result<(), Box<dyn std::error::Error>>;

/// Vision-language models on the GPU (wgpu), natively.
#[derive(Parser, Debug)]
#[command(name = "webvlm", version, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text from a prompt (and images), streamed to stdout
    #[command(after_help = "Images: with --chat they come first in the user message; otherwise each [IMG] in the \
                            prompt text is one image, or all images go before the text when it has none.")]
    Generate(generate::GenerateArgs),
    /// Write a prompt's logits to a .npy file
    #[command(after_help = "Images: each [IMG] in the prompt text is one image, or all images go before the text \
                            when it has none; with --tokens the ids hold the expanded layout and each [IMG] id \
                            takes the next image's features.")]
    Logits(generate::LogitsArgs),
    /// Run an OpenAI chat-completions request: prints the response, or with "stream": true
    /// the chunks as server-sent events
    Chat(api::ChatArgs),
    /// Run OpenAI batch lines ({custom_id, body}): one result line per request
    Batch(api::BatchArgs),
    /// Serve the OpenAI API over HTTP: chat completions (streamed as server-sent events),
    /// models, files and batches, one engine with a bounded FIFO queue
    Serve(serve::ServeArgs),
    /// Show a model's architecture, hyperparameters, tensor types and the GPU memory needed
    Info(info::InfoArgs),
    /// Convert a Hugging Face model folder (quantized while loading) to one GGUF file, as the
    /// browser keeps a repository in Cache Storage
    Convert(convert::ConvertArgs),
    /// Cut a model into parts as llama.cpp's gguf-split does (PREFIX-00001-of-0000N.gguf ...)
    Split(info::SplitArgs),
    /// Write a model of random weights with Ministral 3 3B's exact shapes, for load tests
    Synthetic(synthetic::SyntheticArgs),
    /// Run a seeded mix of many requests against one engine, sampling GPU and process memory
    /// (a leak and reliability check; prints a JSON summary, fails on unexpected errors,
    /// memory growth after the warm-up or replies unlike a fresh engine's)
    Soak(soak::SoakArgs),
    /// Measure the adapter and how close webvlm gets to it (JSON Lines on stdout, see BENCHMARKS.md)
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Generate(a) => generate::generate(&a),
        Command::Logits(a) => generate::logits(&a),
        Command::Chat(a) => api::chat(&a),
        Command::Batch(a) => api::batch(&a),
        Command::Serve(a) => serve::run(a),
        Command::Info(a) => info::run(&a),
        Command::Convert(a) => convert::run(&a),
        Command::Split(a) => info::split(&a),
        Command::Synthetic(a) => synthetic::run(&a),
        Command::Soak(a) => soak::run_soak(&a),
        Command::Bench(a) => bench::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The engine of `args`, refused before any weight is uploaded when its memory plan for
/// `seqs` sequences decoding at once does not fit the budget.
pub fn open_engine(args: &args::EngineArgs, seqs: u32) -> Result<Engine, Box<dyn std::error::Error>> {
    open_engine_for(args, Some(seqs), None).map(|(engine, _)| engine)
}

/// Sequences decoding at once when `--parallel` is not given, on the CPU backend, if the
/// memory plan fits them (it counts a context per sequence).
pub const DEFAULT_CPU_PARALLEL: u32 = 4;

/// [`open_engine`] for `seqs` sequences at once, or when `None` as many as the memory plan
/// fits up to [`DEFAULT_CPU_PARALLEL`] on the CPU backend and 1 on a GPU (whose batched
/// step picks tokens on the host: one stream alone decodes slower than in the
/// one-at-a-time loop, which samples on the GPU); returns the engine and the sequences. With
/// `kv_pool`, the plan counts that many KV rows for all sequences together (a parallel run's
/// pool: `engine::KvPool`) instead of a whole context each.
pub fn open_engine_for(
    args: &args::EngineArgs,
    seqs: Option<u32>,
    kv_pool: Option<u64>,
) -> Result<(Engine, u32), Box<dyn std::error::Error>> {
    let model = open::ModelFiles::open(&args.model.model)?;
    let mmproj = args.mmproj.as_ref().map(MappedGguf::open).transpose()?;
    let dev = args.device.device()?;
    let defaults = ContextOptions::for_adapter(dev.caps());
    let precision = match (args.f16, args.no_f16, args.kv_f32) {
        (true, _, _) => Precision::reduced(dev.caps()),
        (_, true, _) => Precision { compute_f16: false, ..defaults.precision },
        (_, _, true) => Precision::F32,
        _ => defaults.precision,
    };
    let opts = ContextOptions { max_ctx: args.ctx, max_chunk: args.chunk.unwrap_or(defaults.max_chunk), precision };
    // Refuse a model that cannot fit before any weight is uploaded.
    let limits = PlanLimits::from_caps(dev.caps());
    let mut plan_opts = PlanOptions {
        ctx: opts.max_ctx,
        chunk: opts.max_chunk,
        kv: precision.kv_dtype(),
        text_quant: LoadQuant::Keep,
        vision_quant: args.vision_quant,
        image_edge: args.image_max_edge.unwrap_or(DEFAULT_MAX_EDGE),
        seqs: seqs.unwrap_or(1),
        kv_pool,
    };
    let quant = match args.quant {
        Some(q) => q,
        None => auto_quant(&model, mmproj.as_ref(), limits, plan_opts, args.budget.budget(&dev))?,
    };
    plan_opts.text_quant = quant;
    // Headers the plan cannot read are left to the loader, whose errors name the tensor.
    let asked = seqs;
    let mut seqs = asked.unwrap_or(if matches!(dev, Device::Cpu(_)) { DEFAULT_CPU_PARALLEL } else { 1 });
    match memory_plan(&model, mmproj.as_ref(), limits, plan_opts) {
        Ok(plan) => {
            plan.check(args.budget.budget(&dev))?;
            if asked.is_none() {
                seqs = plan.largest_seqs(args.budget.budget(&dev), seqs).max(1);
            }
        }
        Err(e) if e.class() == ErrorClass::AdapterTooSmall => return Err(e.into()),
        Err(_) => {}
    }
    let mut mmproj = mmproj.as_ref().map(|m| Eager(m));
    let mut builder = Engine::builder(dev).context(opts);
    if let Some(m) = mmproj.as_mut() {
        builder = builder.vision(m, args.vision_quant);
    }
    let mut engine = model.engine(builder, quant)?;
    if let Some(bytes) = args.prompt_cache {
        engine.set_prompt_cache_bytes(bytes);
    }
    if let Some(edge) = args.image_max_edge {
        engine.set_image_max_edge(edge)?;
    }
    if args.image_min_area.is_some() || args.image_max_area.is_some() {
        engine.set_image_area(args.image_min_area, args.image_max_area)?;
    }
    Ok((engine, seqs))
}

/// `--quant auto`: a GGUF keeps the types it was converted to; a Hugging Face folder's float
/// matrices take what [`MemoryPlan::choose_quant`] picks for the budget (Q8_0, else 4-bit), or
/// Q8_0 where the plan cannot read the model.
fn auto_quant(
    model: &open::ModelFiles,
    mmproj: Option<&MappedGguf>,
    limits: PlanLimits,
    opts: PlanOptions,
    budget: MemoryBudget,
) -> Result<LoadQuant, webvlm::model::ModelError> {
    if let open::ModelFiles::Gguf(_) = model {
        return Ok(LoadQuant::Keep);
    }
    match with_headers(model, mmproj, |text, proj| MemoryPlan::choose_quant(text, proj, limits, opts, budget)) {
        Err(e) if e.class() == ErrorClass::AdapterTooSmall => Err(e),
        Err(_) => Ok(LoadQuant::Q8_0),
        Ok(q) => Ok(q),
    }
}

/// The memory plan of a model (and mmproj) file from their headers.
pub fn memory_plan(
    model: &open::ModelFiles,
    mmproj: Option<&MappedGguf>,
    limits: PlanLimits,
    opts: PlanOptions,
) -> Result<MemoryPlan, webvlm::model::ModelError> {
    with_headers(model, mmproj, |text, proj| MemoryPlan::new(text, proj, limits, opts))
}

/// `f` of the headers of a model (and mmproj) file.
fn with_headers<R>(
    model: &open::ModelFiles,
    mmproj: Option<&MappedGguf>,
    f: impl FnOnce(ModelHeaders<'_>, Option<ModelHeaders<'_>>) -> R,
) -> R {
    let text: Vec<TensorInfo> = model.tensors().into_iter().cloned().collect();
    let proj: Option<Vec<TensorInfo>> = mmproj.map(|m| m.tensors().cloned().collect());
    let text_headers = ModelHeaders { metadata: model.source().metadata(), tensors: &text };
    f(text_headers, mmproj.zip(proj.as_deref()).map(|(m, t)| ModelHeaders { metadata: m.metadata(), tensors: t }))
}

/// The model's vocabulary size (the logits' row length).
pub fn vocab_size(engine: &Engine) -> usize {
    engine.decoder().cfg.vocab as usize
}

pub fn read_file(path: impl AsRef<Path>) -> Result<Vec<u8>, EngineError> {
    let path = path.as_ref();
    std::fs::read(path).map_err(|e| EngineError::BadImageUrl(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks of the flag definitions (ids, groups, conflicts).
    #[test]
    fn flag_definitions_are_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
