//! `webvlm info`: architecture, hyperparameters, tensor types, the backend that would run it
//! and why, and the memory needed on it (of a GGUF file or a Hugging Face folder);
//! `webvlm split`: a GGUF model cut into parts the way llama.cpp's `gguf-split` does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use webvlm::backend::Device;
use webvlm::gguf::MappedGguf;
use webvlm::model::families::llama::LlamaConfig;
use webvlm::model::families::mllama::{self, MllamaConfig};
use webvlm::model::families::qwen35::{self, Qwen35Config};
use webvlm::model::TextConfig;
use webvlm::model::{ContextOptions, MemoryBudget, PlanLimits, PlanOptions};

use crate::args::{BudgetArg, DeviceArgs, ModelArg};
use crate::open::ModelFiles;
use crate::stdout::outln;
use crate::CliResult;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Context size in tokens, for the KV cache in the GPU memory estimate
    #[arg(long, value_name = "N", default_value_t = ContextOptions::default().max_ctx)]
    ctx: u32,
    /// Print the memory plan on the device --backend picks (GPU memory, or RAM on the CPU
    /// backend): weights as loaded, KV cache, step and vision buffers, whether it fits
    /// --gpu-memory and the largest context that does (exit status 1 when it does not fit)
    #[arg(long)]
    plan: bool,
    /// The vision projector (llama.cpp's mmproj GGUF), for the plan
    #[arg(long, value_name = "P.gguf", requires = "plan")]
    mmproj: Option<PathBuf>,
    #[command(flatten)]
    budget: BudgetArg,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args, Debug)]
pub struct SplitArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Number of parts
    #[arg(long, value_name = "N", default_value_t = 2)]
    parts: usize,
    /// Prefix of the part files: PREFIX-00001-of-0000N.gguf ...
    #[arg(long, value_name = "PREFIX")]
    out: String,
}

pub fn run(args: &InfoArgs) -> CliResult {
    let model = ModelFiles::open(&args.model.model)?;
    let md = model.source().metadata();
    let embd = model.source().tensor_info("token_embd.weight").ok_or("the model has no token_embd.weight")?;
    let vocab = embd.dims.get(1).copied().unwrap_or(0) as u32;
    outln!("file:          {}", model.paths().join(", "));
    // Layers with a KV cache, and bytes of fixed-size recurrent state.
    let (text, kv_layers, recurrent_bytes) = if qwen35::ARCHITECTURES.contains(&md.architecture()?) {
        let cfg = Qwen35Config::from_metadata(md, vocab)?;
        print_text(&cfg.text);
        let (n_rec, n_full) = cfg.layer_counts();
        let pattern: String = cfg.recurrent.iter().map(|&r| if r { 'L' } else { 'F' }).collect();
        outln!("layer pattern: {pattern}  ({n_rec} Gated DeltaNet, {n_full} full attention)");
        let s = &cfg.ssm;
        outln!(
            "deltanet:      {} k heads x {}, {} v heads x {}, conv kernel {}",
            s.n_k_heads,
            s.d_k,
            s.n_v_heads,
            s.d_v,
            s.conv_kernel
        );
        outln!("rope:          theta {}, {} rotated dims, sections {:?}", cfg.rope_theta, cfg.n_rot, cfg.rope_sections);
        outln!("rms eps:       {}", cfg.rms_eps);
        let (conv, ssm) = s.state_floats();
        (cfg.text.clone(), n_full as u64, 4 * n_rec as u64 * (conv + ssm))
    } else if md.architecture()? == mllama::ARCH {
        let cfg = MllamaConfig::from_metadata(md, vocab)?;
        print_text(&cfg.llama.text);
        print_llama(&cfg.llama);
        outln!(
            "cross-attn:    layers {:?} (image token {}, {} tiles of {} keys per image)",
            cfg.cross_layers,
            cfg.image_token,
            cfg.max_tiles,
            cfg.tile_keys
        );
        let self_layers = cfg.llama.text.n_layer as u64 - cfg.cross_layers.len() as u64;
        (cfg.llama.text.clone(), self_layers, 0)
    } else {
        let cfg = LlamaConfig::from_metadata(md, vocab)?;
        print_text(&cfg.text);
        print_llama(&cfg);
        if model.source().tensor_info("rope_freqs.weight").is_some() {
            outln!("rope freqs:    Llama 3 per-frequency divisors (rope_freqs.weight)");
        }
        (cfg.text.clone(), cfg.text.n_layer as u64, 0)
    };
    match &model {
        ModelFiles::Hf(_) => outln!("tokenizer:     tokenizer.json"),
        ModelFiles::Gguf(_) => outln!("tokenizer:     {}", md.get_opt_str("tokenizer.ggml.model")?.unwrap_or("none")),
    }
    print_memory(&model, &text, args.ctx, kv_layers, recurrent_bytes)?;
    let dev = args.device.device()?;
    outln!("backend:       {} on {} ({})", dev.caps().backend, dev.caps().adapter, args.device.why(&dev));
    if args.plan {
        print_plan(&model, args, &dev)?;
    }
    Ok(())
}

/// The memory plan on `dev`: its limits, prefill chunk and KV cache type (f16 on the GPU,
/// f32 on the CPU backend); the budget is RAM on the CPU backend.
fn print_plan(model: &ModelFiles, args: &InfoArgs, dev: &Device) -> CliResult {
    let mmproj = args.mmproj.as_ref().map(MappedGguf::open).transpose()?;
    let defaults = ContextOptions::for_adapter(dev.caps());
    let opts =
        PlanOptions { ctx: args.ctx, chunk: defaults.max_chunk, kv: defaults.precision.kv_dtype(), ..PlanOptions::default() };
    let limits = PlanLimits::from_caps(dev.caps());
    let plan = crate::memory_plan(model, mmproj.as_ref(), limits, opts)?;
    let budget = args.budget.budget(dev);
    let mib = |b: u64| b as f64 / 1048576.0;
    match dev {
        Device::Gpu(gpu) => outln!(
            "memory plan:   adapter {} (buffer limit {:.0} MiB, binding limit {:.0} MiB)",
            gpu.caps.adapter,
            mib(limits.max_buffer),
            mib(limits.max_storage_binding)
        ),
        // MemAvailable counts the page cache as available, and the mapped weights are those pages.
        Device::Cpu(_) => outln!(
            "memory plan:   RAM of the CPU backend (a GGUF's matrices used where they lie in the mapped file, counted once; \
             requantized ones copied)"
        ),
    }
    outln!("  text weights   {:>10.1} MiB", mib(plan.text_weights));
    outln!("  vision weights {:>10.1} MiB", mib(plan.vision_weights));
    outln!(
        "  KV cache       {:>10.1} MiB  ({} tokens x {} bytes, {:?})",
        mib(plan.state),
        opts.ctx,
        plan.state_per_token,
        opts.kv
    );
    outln!("  step buffers   {:>10.1} MiB  (chunk {})", mib(plan.step), opts.chunk);
    if plan.cross_store > 0 {
        // Llama 3.2 Vision: the encoder runs every image at its full tile count.
        outln!("  vision scratch {:>10.1} MiB  (one image at its tile count)", mib(plan.vision_scratch));
        outln!("  cross-attention{:>10.1} MiB  (keys and values of one image per context)", mib(plan.cross_store));
    } else {
        outln!("  vision scratch {:>10.1} MiB  ({} px image)", mib(plan.vision_scratch), opts.image_edge);
    }
    outln!("  total          {:>10.1} MiB", mib(plan.total()));
    match budget {
        MemoryBudget::Bytes(b) => outln!("  budget         {:>10.1} MiB", mib(b)),
        MemoryBudget::Unknown => outln!("  budget         unknown (give --gpu-memory)"),
    }
    let largest = plan.largest_context(budget).map_or("none".to_string(), |c| c.to_string());
    outln!("  largest context that fits: {largest}");
    // `serve --parallel N` adds a context per sequence.
    outln!("  sequences at once that fit at this context (serve --parallel): {}", plan.largest_seqs(budget, 64));
    plan.check(budget)?;
    outln!("  fits: yes");
    Ok(())
}

fn print_text(t: &TextConfig) {
    outln!("architecture:  {}  ({})", t.arch, t.name.as_deref().unwrap_or("unnamed"));
    outln!("layers:        {}", t.n_layer);
    outln!("hidden:        {}   ffn: {}", t.n_embd, t.n_ff);
    outln!("heads:         {} query, {} key/value, head_dim {}", t.n_head, t.n_head_kv, t.head_dim);
    outln!("vocabulary:    {}   context: {}", t.vocab, t.context_length);
}

fn print_llama(cfg: &LlamaConfig) {
    match &cfg.yarn {
        Some(y) => outln!(
            "rope:          theta {}, YaRN factor {} (original context {}, beta {}/{}, attention factor {})",
            cfg.rope_theta,
            y.factor,
            y.original_max_position_embeddings,
            y.beta_fast,
            y.beta_slow,
            y.attention_factor()
        ),
        None => outln!("rope:          theta {}", cfg.rope_theta),
    }
    outln!("query scaling: beta {} orig {}", cfg.query_scale_beta, cfg.query_scale_orig);
}

/// Tensors by type and the GPU memory estimate: weights, the KV cache of `kv_layers`
/// layers over `ctx` tokens plus `recurrent_bytes` of recurrent state, activations.
fn print_memory(model: &ModelFiles, text: &TextConfig, ctx: u32, kv_layers: u64, recurrent_bytes: u64) -> CliResult {
    let mut by_type: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    let mut weight_bytes = 0u64;
    for t in model.tensors() {
        let e = by_type.entry(format!("{:?}", t.ty)).or_default();
        let bytes = t.n_bytes()?;
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += bytes;
        weight_bytes += bytes;
    }
    outln!("tensors:");
    for (ty, (n, elems, bytes)) in &by_type {
        outln!("  {ty:<6} {n:>5} tensors  {:>8.1} M params  {:>9.1} MiB", *elems as f64 / 1e6, *bytes as f64 / 1048576.0);
    }
    let kv = 2 * 4 * kv_layers * ctx as u64 * text.kv_dim() as u64 + recurrent_bytes;
    let chunk = ContextOptions::default().max_chunk as u64;
    let acts = 4 * chunk * (3 * text.n_embd as u64 + 2 * text.q_dim() as u64 + 2 * text.kv_dim() as u64 + 2 * text.n_ff as u64)
        + 4 * chunk.min(256) * text.vocab as u64;
    let mib = |b: u64| b as f64 / 1048576.0;
    outln!(
        "memory:        weights {:.1} MiB + KV cache ({ctx} tokens, f32) and recurrent state {:.1} MiB + activations {:.1} MiB = {:.1} MiB",
        mib(weight_bytes),
        mib(kv),
        mib(acts),
        mib(weight_bytes + kv + acts)
    );
    Ok(())
}

pub fn split(args: &SplitArgs) -> CliResult {
    let (path, parts, prefix) = (&args.model.model, args.parts, &args.out);
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: the file is only read, and not expected to change while it is split.
    let bytes = unsafe { memmap2::Mmap::map(&file)? };
    let header = webvlm::gguf::parse_header(&bytes)?;
    header.validate_data(bytes.len() as u64)?;
    let files = webvlm::gguf::split_model(&header, &bytes, parts)?;
    for (i, data) in files.iter().enumerate() {
        let name = webvlm::gguf::split_name(prefix, i as u64 + 1, parts as u64);
        std::fs::write(&name, data)?;
        outln!("{name}: {} bytes", data.len());
    }
    Ok(())
}
