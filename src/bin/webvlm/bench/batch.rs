//! Aggregate decode throughput of batched steps (`StepBatch`): for each batch size N,
//! N sequences are prefilled with short random prompts (`--prompt-tokens`, at most 16) and
//! then decoded together, one
//! token each per step (on a GPU in slots of one KV arena, as `webvlm serve` runs them, so
//! that a step runs the sequences' attention together); the figure is N tokens per step over the step's time, beside the
//! weight bytes per generated token (the model's once per step, so 1/N of a lone
//! sequence's where each weight comes from memory once per step: the CPU backend's matvec;
//! the GPU's reads its weights per token, mostly from cache). Tokens are picked on the host (greedy), as a batch samples each sequence
//! with its own options. Then a prompt chunk joining the largest batch: in one step with
//! the decode tokens, against a decode step and a prefill pass of its own.

use std::time::Instant;

use serde_json::{json, Value};

use webvlm::backend::gpu::Readback;
use webvlm::backend::Device;
use webvlm::gguf::SplitMix64;
use webvlm::model::{BatchInput, Context, ContextOptions, Decoder, StepBatch};

use super::timing::median;
use super::Out;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Most prompt tokens of each sequence.
const MAX_PROMPT_TOKENS: usize = 16;

/// Times `steps` batched decode steps at each size of `sizes` after prompts of
/// `prompt_tokens` (at most 16); `decode_weight_bytes` is what one step reads. Returns the
/// figures (also emitted, one line per size).
#[allow(clippy::too_many_arguments)]
pub fn bench_batches(
    dev: &Device,
    out: &Out,
    label: &str,
    dec: &Decoder,
    sizes: &[u32],
    prompt_tokens: usize,
    steps: usize,
    decode_weight_bytes: u64,
) -> Res<Vec<Value>> {
    let vocab = dec.cfg.vocab as u64;
    let prompt_tokens = prompt_tokens.clamp(1, MAX_PROMPT_TOKENS);
    let max_ctx = (prompt_tokens + steps + 2) as u32 + PROFILED_STEPS;
    let opts = ContextOptions { max_ctx, max_chunk: prompt_tokens as u32, ..ContextOptions::for_adapter(dev.caps()) };
    let mut rng = SplitMix64::new(5);
    let mut figures: Vec<Value> = Vec::new();
    for &n in sizes {
        let arena = match dev {
            Device::Gpu(_) => Some(Context::arena(dev, dec, opts, n)?),
            Device::Cpu(_) => None,
        };
        let context = || -> Res<Context> {
            Ok(match &arena {
                Some(arena) => Context::in_arena(dev, dec, opts, arena)?.ok_or("a full KV arena")?,
                None => Context::new(dev, dec, opts)?,
            })
        };
        let mut ctxs = (0..n).map(|_| context()).collect::<Res<Vec<_>>>()?;
        let mut batch = StepBatch::new(dev, dec, n, 0, ctxs[0].precision())?;
        let mut tokens = Vec::new();
        for ctx in &mut ctxs {
            let prompt: Vec<u32> = (0..prompt_tokens).map(|_| (rng.next_u64() % vocab) as u32).collect();
            ctx.submit_prompt(dev, dec, &prompt, None)?;
            tokens.push(argmax(&pollster::block_on(ctx.read_logits(dev, dec))?));
        }
        let mut refs: Vec<&mut Context> = ctxs.iter_mut().collect();
        let mut step = |tokens: &mut Vec<u32>| -> Res<()> {
            let logits = pollster::block_on(batch.decode(dev, dec, &mut refs, tokens))?;
            *tokens = logits.chunks(vocab as usize).map(argmax).collect();
            Ok(())
        };
        // The first step records the program of this set of sequences.
        step(&mut tokens)?;
        let mut times = Vec::new();
        for _ in 1..steps.max(2) {
            let t = Instant::now();
            step(&mut tokens)?;
            times.push(t.elapsed().as_secs_f64());
        }
        let step_s = median(&mut times);
        let tps = n as f64 / step_s;
        let speedup = figures.first().map_or(1.0, |one| tps / one["tokens_per_s"].as_f64().unwrap_or(tps));
        let per_token = decode_weight_bytes as f64 / n as f64;
        out.note(&format!(
            "  batched decode of {n} sequences: {:.1} ms/step = {tps:.2} tokens/s ({speedup:.2}x 1 sequence); weights {:.1} MiB per generated token",
            step_s * 1e3,
            per_token / 1048576.0
        ));
        let v = json!({
            "kind": "batch_decode", "model": label, "sequences": n, "step_seconds": step_s, "tokens_per_s": tps,
            "speedup_over_one": speedup, "weight_bytes_per_token": per_token, "steps": steps,
        });
        out.emit(v.clone());
        figures.push(v);
        profile_steps(dev, out, n, vocab, || step(&mut tokens))?;
    }
    if let Some(&n) = sizes.iter().filter(|&&n| n >= 2).max() {
        figures.push(bench_mixed_step(dev, out, label, dec, n, steps)?);
    }
    Ok(figures)
}

/// A prompt joining `n - 1` decoding sequences: one step of their tokens and a chunk of the
/// new sequence's prompt filling the step's rows to one chunk's, as `engine::Parallel` plans
/// them (`BatchInput::Chunk`, each weight read once), against a decode step of the `n - 1`
/// then the chunk on its own (each weight read twice), timed in
/// alternation over `steps` rounds, at most 5 (the chunk rerun from the start of its
/// prompt each time). Returns the figures (also emitted).
fn bench_mixed_step(dev: &Device, out: &Out, label: &str, dec: &Decoder, n: u32, steps: usize) -> Res<Value> {
    let vocab = dec.cfg.vocab as u64;
    let adapter = ContextOptions::for_adapter(dev.caps());
    let chunk = adapter.max_chunk.saturating_sub(n - 1).max(1);
    let decoding_opts = ContextOptions { max_ctx: 16, max_chunk: 1, ..adapter };
    let mut rng = SplitMix64::new(7);
    let mut token = || (rng.next_u64() % vocab) as u32;
    let mut ctxs = (1..n).map(|_| Context::new(dev, dec, decoding_opts)).collect::<Result<Vec<_>, _>>()?;
    let mut joining = Context::new(dev, dec, ContextOptions { max_ctx: chunk, max_chunk: chunk, ..adapter })?;
    let mut batch = StepBatch::new(dev, dec, n, chunk, joining.precision())?;
    let (mut tokens, rounds) = (Vec::new(), steps.clamp(2, 5));
    for ctx in &mut ctxs {
        ctx.submit_prompt(dev, dec, &[token()], None)?;
        tokens.push(argmax(&pollster::block_on(ctx.read_logits(dev, dec))?));
    }
    let prompt: Vec<u32> = (0..chunk).map(|_| token()).collect();
    let chunk_input = || BatchInput::Chunk { tokens: &prompt, end: prompt.len(), images: None };
    let (mut mixed, mut apart) = (Vec::new(), Vec::new());
    // The first round of each records its programs.
    for round in 0..=rounds {
        let t = Instant::now();
        joining.reset();
        let mut refs: Vec<&mut Context> = ctxs.iter_mut().chain([&mut joining]).collect();
        let inputs = tokens.iter().map(|&t| BatchInput::Token(t)).chain([chunk_input()]).collect();
        let logits = pollster::block_on(batch.step(dev, dec, &mut refs, inputs))?;
        tokens = logits.chunks(vocab as usize).take(tokens.len()).map(argmax).collect();
        let mixed_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        joining.reset();
        let mut refs: Vec<&mut Context> = ctxs.iter_mut().collect();
        let logits = pollster::block_on(batch.decode(dev, dec, &mut refs, &tokens))?;
        tokens = logits.chunks(vocab as usize).map(argmax).collect();
        pollster::block_on(batch.step(dev, dec, &mut [&mut joining], vec![chunk_input()]))?;
        if round > 0 {
            mixed.push(mixed_s);
            apart.push(t.elapsed().as_secs_f64());
        }
    }
    let (mixed_s, apart_s) = (median(&mut mixed), median(&mut apart));
    out.note(&format!(
        "  a {chunk}-token prompt chunk joining {} decoding sequences: {:.1} ms in one step, {:.1} ms as a decode step and a prefill pass ({:.2}x)",
        n - 1,
        mixed_s * 1e3,
        apart_s * 1e3,
        apart_s / mixed_s
    ));
    let v = json!({
        "kind": "batch_mixed_step", "model": label, "decoding": n - 1, "chunk_tokens": chunk,
        "one_step_seconds": mixed_s, "two_passes_seconds": apart_s, "rounds": rounds,
    });
    out.emit(v.clone());
    Ok(v)
}

/// Steps profiled: GPU time per step of each kernel, where the device times its kernels
/// (`bench --profile`), emitted and noted by decreasing time.
const PROFILED_STEPS: u32 = 3;

fn profile_steps(dev: &Device, out: &Out, n: u32, vocab: u64, mut step: impl FnMut() -> Res<()>) -> Res<()> {
    let Device::Gpu(gpu) = dev else { return Ok(()) };
    let Some(profiler) = gpu.profiler() else { return Ok(()) };
    // The host's share: reading the rows' logits back through a kept staging buffer, and
    // picking their tokens.
    let bytes = n as u64 * vocab * 4;
    let (logits, mut readback) = (dev.storage("logits", bytes)?, Readback::new(gpu, bytes));
    let (mut reads, mut picks) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        let rows = pollster::block_on(gpu.read_with(&mut readback, logits.gpu()?, 0, bytes))?;
        reads.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let picked: Vec<u32> = bytemuck::cast_slice::<u8, f32>(&rows).chunks(vocab as usize).map(argmax).collect();
        std::hint::black_box(picked);
        picks.push(t.elapsed().as_secs_f64());
    }
    out.note(&format!(
        "    host per step of {n}: {:.2} ms reading {:.1} MiB of logits back, {:.2} ms picking tokens",
        median(&mut reads) * 1e3,
        bytes as f64 / 1048576.0,
        median(&mut picks) * 1e3
    ));
    profiler.take();
    profiler.set_on(true);
    let stepped = (0..PROFILED_STEPS).try_for_each(|_| step());
    profiler.set_on(false);
    stepped?;
    let mut kernels: Vec<_> = profiler.take().into_iter().collect();
    kernels.sort_by(|a, b| b.1.ns.total_cmp(&a.1.ns));
    let total: f64 = kernels.iter().map(|k| k.1.ns).sum::<f64>() / PROFILED_STEPS as f64;
    out.note(&format!("    GPU time per step of {n} (each dispatch in a timed pass of its own): {:.2} ms", total / 1e6));
    for (kernel, time) in &kernels {
        let (ms, dispatches) = (time.ns / PROFILED_STEPS as f64 / 1e6, time.dispatches / PROFILED_STEPS as u64);
        out.note(&format!("      {kernel:<40} {ms:8.3} ms  {dispatches:5} dispatches"));
        out.emit(json!({ "kind": "batch_profile", "sequences": n, "kernel": kernel, "ms_per_step": ms, "dispatches_per_step": dispatches }));
    }
    Ok(())
}

fn argmax(logits: &[f32]) -> u32 {
    logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}
