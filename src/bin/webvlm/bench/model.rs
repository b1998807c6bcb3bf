//! Whole-model figures through the engine's own API (`Context::prefill`, and
//! `Context::submit_decode` / `Context::read_next_token` pipelined as generation runs them):
//! prefill and decode tokens/s, dispatches, submits, bytes read back and host waits per token
//! (counted by `Context::counters`), and a per-kernel-family breakdown of one decode step: the
//! recorded decode program's dispatches grouped as in the launch report (matvecs by weight,
//! the rest by pipeline entry), each group timed alone.

use std::time::Instant;

use serde_json::{json, Value};

use webvlm::backend::gpu::{Dispatch, Op, Program as GpuProgram};
use webvlm::backend::{Buffer, Device, Program};
use webvlm::gguf::SplitMix64;
use webvlm::kernels::quant::Weight;
use webvlm::kernels::sample::SamplerState;
use webvlm::model::{Context, ContextOptions, Decoder};
use webvlm::source::TensorSource;

use super::launch::family_name;
use super::roofline::Roofline;
use super::timing::{median, time_program, Budget};
use super::Out;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// What to run on one model.
#[derive(Clone, Copy, Debug)]
pub struct ModelPlan {
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    /// Timed prefills (after one warm-up prefill).
    pub prefill_reps: usize,
    pub breakdown: bool,
    /// Run one prefill and one decode before timing (compiles the pipelines). Without it the
    /// caller has compiled them already (same kernels and weight types on a smaller model).
    pub warmup: bool,
    /// Time batched decode steps of 1, 2, 4, ... up to this many sequences (0: none).
    pub batch: u32,
}

/// One image's cross-attention states for a cross-attention decoder (Mllama): given to the
/// context before anything is timed, so that every prefill and decode runs the cross layers
/// (a sequence that holds an image at its first position, all its tiles visible).
pub struct CrossImages {
    /// `[n_tiles * tile_keys][n_embd]` f32, the projected vision output.
    pub states: Buffer,
    pub n_tiles: u32,
    /// Dense `[tokens][n_tiles]` tile mask (its last row repeats for later positions).
    pub mask: Vec<u32>,
}

#[allow(clippy::too_many_arguments)]
pub fn bench_model(
    dev: &Device,
    out: &Out,
    label: &str,
    src: &dyn TensorSource,
    images: Option<&CrossImages>,
    plan: ModelPlan,
    roof: &Roofline,
    budget: Budget,
) -> Res<Value> {
    let start = Instant::now();
    let dec = Decoder::load(dev, src)?;
    super::timing::wait(dev)?;
    let load_seconds = start.elapsed().as_secs_f64();
    let c = dec.cfg.clone();
    out.note(&format!(
        "{label}: {} layers, hidden {}, ffn {}, vocab {}, {:.1} MiB of weights on the device, loaded in {:.1} s",
        c.n_layer,
        c.n_embd,
        c.n_ff,
        c.vocab,
        dec.weight_bytes() as f64 / 1048576.0,
        load_seconds
    ));
    let opts = ContextOptions::for_adapter(dev.caps());
    let needed = (plan.prompt_tokens + turn_tokens(plan) + plan.decode_tokens + 2) as u32;
    let opts = ContextOptions { max_ctx: opts.max_ctx.max(needed), ..opts };
    let mut ctx = Context::new(dev, &dec, opts)?;
    // The image's keys and values, once: `Context::truncate(0)` below keeps them.
    let mut cross_fill_seconds = None;
    if let Some(img) = images {
        let t = Instant::now();
        ctx.set_cross_attention(dev, &dec, &img.states, img.n_tiles, &img.mask)?;
        super::timing::wait(dev)?;
        cross_fill_seconds = Some(t.elapsed().as_secs_f64());
        out.note(&format!(
            "  cross-attention store of {} image tiles filled in {:.2} s: {:.1} MiB",
            img.n_tiles,
            t.elapsed().as_secs_f64(),
            ctx.cross_attention_bytes() as f64 / 1048576.0
        ));
    }
    let mut rng = SplitMix64::new(11);
    let prompt: Vec<u32> = (0..plan.prompt_tokens).map(|_| (rng.next_u64() % c.vocab as u64) as u32).collect();

    // Warm-up: the first prefill and decode compile their pipelines.
    let (mut first_prefill, mut first_decode) = (None, None);
    if plan.warmup {
        let t = Instant::now();
        let token = prefill_token(dev, &dec, &mut ctx, &prompt)?;
        first_prefill = Some(t.elapsed().as_secs_f64());
        let t = Instant::now();
        decode_token(dev, &dec, &mut ctx, token)?;
        first_decode = Some(t.elapsed().as_secs_f64());
        out.note(&format!(
            "  warm-up: first prefill {:.2} s, first decode {:.2} s (pipeline compilation)",
            first_prefill.unwrap_or(0.0),
            first_decode.unwrap_or(0.0)
        ));
    }

    let mut prefill = Vec::new();
    let mut prefill_counts = (0, 0);
    let mut last = 0;
    for _ in 0..plan.prefill_reps.max(1) {
        ctx.truncate(0);
        let before = ctx.counters();
        let t = Instant::now();
        last = prefill_token(dev, &dec, &mut ctx, &prompt)?;
        prefill.push(t.elapsed().as_secs_f64());
        let after = ctx.counters();
        prefill_counts = (after.submits - before.submits, after.read_back_bytes - before.read_back_bytes);
    }
    let prefill_s = median(&mut prefill);
    let prefill_tps = plan.prompt_tokens as f64 / prefill_s;
    out.note(&format!(
        "  prefill {} tokens: {:.3} s = {:.1} tokens/s, {} submits, {} B read back (chunks of {}, {} matmuls)",
        plan.prompt_tokens,
        prefill_s,
        prefill_tps,
        prefill_counts.0,
        prefill_counts.1,
        ctx.max_chunk(),
        if ctx.precision().compute_f16 { "f16" } else { "f32" }
    ));

    // As generation runs it. On the GPU pipelined: the step for token n+1 is submitted before
    // token n is read; counted from after the first submit, each token costs one submit and
    // one read, a step is the time between two tokens read, and the step left over is
    // dropped. On the CPU each step runs to its end and the host picks the token from the
    // logits.
    let greedy = SamplerState::greedy();
    let pipelined = matches!(dev, Device::Gpu(_));
    if pipelined {
        ctx.submit_decode(dev, &dec, &greedy)?;
    }
    let before = ctx.counters();
    let mut steps = Vec::new();
    let t_all = Instant::now();
    let mut t = t_all;
    for _ in 0..plan.decode_tokens {
        match pipelined {
            true => {
                ctx.submit_decode(dev, &dec, &greedy)?;
                pollster::block_on(ctx.read_next_token(dev))?;
            }
            false => last = decode_token(dev, &dec, &mut ctx, last)?,
        }
        steps.push(t.elapsed().as_secs_f64());
        t = Instant::now();
    }
    let decode_total = t_all.elapsed().as_secs_f64();
    let after = ctx.counters();
    if pipelined {
        ctx.drop_last_step(dev)?;
    }
    let n = plan.decode_tokens.max(1) as f64;
    let submits_per_token = (after.submits - before.submits) as f64 / n;
    let read_back_per_token = (after.read_back_bytes - before.read_back_bytes) as f64 / n;
    let host_waits_per_token = (after.host_waits - before.host_waits) as f64 / n;
    let dispatches = ctx.decode_dispatches(dev, &dec)?;
    let step_s = median(&mut steps);
    let decode_bytes = decode_weight_bytes(&dec);
    let decode_gbps = decode_bytes as f64 / step_s / 1e9;
    out.note(&format!(
        "  decode {} tokens: {:.1} ms/token = {:.2} tokens/s; {} dispatches, {} submits, {} B read back, \
         {} host waits per token; weights {:.1} MiB/token -> {:.2} GB/s = {:.0}% of copy, {:.0}% of read",
        plan.decode_tokens,
        step_s * 1e3,
        1.0 / step_s,
        dispatches,
        submits_per_token,
        read_back_per_token,
        host_waits_per_token,
        decode_bytes as f64 / 1048576.0,
        decode_gbps,
        100.0 * decode_gbps / roof.copy_gbps,
        100.0 * decode_gbps / roof.read_gbps
    ));
    // Launch geometry and the per-family breakdown are of GPU dispatches.
    let on_gpu = matches!(dev, Device::Gpu(_));
    let launch = match on_gpu {
        true => {
            let v = super::launch::report(dev, out, label, &dec, &mut ctx)?;
            super::launch::prefill_report(dev, out, label, &dec, &mut ctx)?;
            v
        }
        false => json!({ "dispatches_per_layer": ctx.decode_block_dispatches(dev, &dec)? as f64 / c.n_layer as f64 }),
    };
    let (cold, cached, restored) = prompt_cache_ttft(dev, &dec, &mut ctx, &prompt, turn_tokens(plan), &mut rng)?;
    out.note(&format!(
        "  prompt cache: a second turn of {} + {} tokens: first token after {:.3} s prefilled whole, {:.3} s with the first {} cached, {:.3} s with them copied back from a saved prefix",
        plan.prompt_tokens,
        turn_tokens(plan),
        cold,
        cached,
        plan.prompt_tokens,
        restored
    ));
    let mut v = json!({
        "prompt_cache": { "turn_tokens": plan.prompt_tokens + turn_tokens(plan), "cached_tokens": plan.prompt_tokens,
            "ttft_uncached_seconds": cold, "ttft_cached_seconds": cached, "ttft_restored_seconds": restored },
        "kind": "model", "model": label, "arch": c.arch, "n_layer": c.n_layer, "n_embd": c.n_embd,
        "n_ff": c.n_ff, "n_head": c.n_head, "n_head_kv": c.n_head_kv, "head_dim": c.head_dim,
        "vocab": c.vocab, "weight_bytes_on_gpu": dec.weight_bytes(), "load_seconds": load_seconds,
        "first_prefill_seconds": first_prefill, "first_decode_seconds": first_decode,
        "prefill_chunk": ctx.max_chunk(), "f16_matmuls": ctx.precision().compute_f16,
        "prompt_tokens": plan.prompt_tokens, "prefill_seconds": prefill_s, "prefill_tokens_per_s": prefill_tps,
        "prefill_submits": prefill_counts.0, "prefill_read_back_bytes": prefill_counts.1,
        "decode_tokens": plan.decode_tokens, "decode_seconds_per_token": step_s,
        "decode_tokens_per_s": n / decode_total, "decode_tokens_per_s_median": 1.0 / step_s,
        "dispatches_per_token": dispatches, "dispatches_per_layer": launch["dispatches_per_layer"],
        "submits_per_token": submits_per_token, "read_back_bytes_per_token": read_back_per_token,
        "host_waits_per_token": host_waits_per_token, "decode_weight_bytes_per_token": decode_bytes,
        "decode_weight_gbps": decode_gbps, "decode_fraction_of_copy": decode_gbps / roof.copy_gbps,
        "decode_fraction_of_read": decode_gbps / roof.read_gbps,
        "decode_dispatch_overhead_estimate_seconds": dispatches as f64 * roof.dispatch_us * 1e-6,
        "max_ctx": ctx.max_ctx(), "state_bytes": ctx.state_bytes(), "state_bytes_per_token": ctx.state_bytes_per_token(),
    });
    if let Some(img) = images {
        v["cross_image_tiles"] = json!(img.n_tiles);
        v["cross_fill_seconds"] = json!(cross_fill_seconds);
        v["cross_store_bytes"] = json!(ctx.cross_attention_bytes());
    }
    if plan.breakdown && on_gpu {
        let families = breakdown(dev, out, label, &dec, &mut ctx, step_s, budget)?;
        v["breakdown"] = Value::Array(families);
    }
    out.emit(v.clone());
    if plan.batch > 0 {
        drop(ctx);
        let sizes: Vec<u32> = (0..).map(|i| 1 << i).take_while(|&n| n <= plan.batch).collect();
        super::batch::bench_batches(dev, out, label, &dec, &sizes, plan.prompt_tokens, plan.decode_tokens, decode_bytes)?;
    }
    Ok(v)
}

/// New tokens of the second chat turn in the prompt-cache figure.
fn turn_tokens(plan: ModelPlan) -> usize {
    (plan.prompt_tokens / 4).max(8)
}

/// Time to the first token of a second chat turn (`prompt` plus `extra` new tokens): prefilled
/// whole, with `prompt`'s KV entries kept from the first turn, and with them copied back from
/// a saved prefix after another sequence used the cache (what the engine's prompt cache does).
/// Sequences start over with `truncate(0)`, which keeps a cross-attention decoder's images.
fn prompt_cache_ttft(
    dev: &Device,
    dec: &Decoder,
    ctx: &mut Context,
    prompt: &[u32],
    extra: usize,
    rng: &mut SplitMix64,
) -> Res<(f64, f64, f64)> {
    let turn: Vec<u32> =
        prompt.iter().copied().chain((0..extra).map(|_| (rng.next_u64() % dec.cfg.vocab as u64) as u32)).collect();
    ctx.truncate(0);
    let t = Instant::now();
    prefill_token(dev, dec, ctx, &turn)?;
    let cold = t.elapsed().as_secs_f64();
    ctx.truncate(0);
    prefill_token(dev, dec, ctx, prompt)?;
    let t = Instant::now();
    prefill_token(dev, dec, ctx, &turn)?;
    let cached = t.elapsed().as_secs_f64();
    // Another chat overwrote the cache after the first turn was saved; it is copied back.
    let saved = ctx.save_state(dev, prompt.len() as u32)?;
    ctx.truncate(0);
    let t = Instant::now();
    ctx.restore_state(dev, &saved, prompt.len() as u32)?;
    prefill_token(dev, dec, ctx, &turn)?;
    Ok((cold, cached, t.elapsed().as_secs_f64()))
}

/// Prefills `tokens` (after the `n_past` the cache holds) and picks the first token as the
/// engine does on `dev`: the GPU's sampler, read back; on the CPU the host, from the logits.
fn prefill_token(dev: &Device, dec: &Decoder, ctx: &mut Context, tokens: &[u32]) -> Res<u32> {
    match dev {
        Device::Gpu(_) => Ok(pollster::block_on(ctx.prefill(dev, dec, tokens, &SamplerState::greedy()))?),
        Device::Cpu(_) => {
            ctx.submit_prompt(dev, dec, tokens, None)?;
            host_argmax(dev, dec, ctx)
        }
    }
}

/// One decode step, not pipelined, feeding `token` (on the GPU, the token its sampler
/// chose last); the next token.
fn decode_token(dev: &Device, dec: &Decoder, ctx: &mut Context, token: u32) -> Res<u32> {
    match dev {
        Device::Gpu(_) => Ok(pollster::block_on(ctx.decode(dev, dec, &SamplerState::greedy()))?),
        Device::Cpu(_) => {
            ctx.submit_token(dev, dec, token)?;
            host_argmax(dev, dec, ctx)
        }
    }
}

/// The greedy token of the last step's logits, picked on the host.
fn host_argmax(dev: &Device, dec: &Decoder, ctx: &mut Context) -> Res<u32> {
    let logits = pollster::block_on(ctx.read_logits(dev, dec))?;
    Ok(logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32))
}

/// Weight bytes one decode step reads: every layer matrix and the LM head (the embedding
/// lookup reads one row).
fn decode_weight_bytes(dec: &Decoder) -> u64 {
    dec.layer_matrices().into_iter().map(Weight::bytes_on_gpu).sum::<u64>() + dec.lm_head().bytes_on_gpu()
}

/// Times each family of the decode step's dispatches alone, and the whole program.
fn breakdown(
    dev: &Device,
    out: &Out,
    label: &str,
    dec: &Decoder,
    ctx: &mut Context,
    step_s: f64,
    budget: Budget,
) -> Res<Vec<Value>> {
    // The embedding gather is a program of its own (images are written between it and the
    // blocks); both are one decode step. Families are named as in the launch report, those
    // reading a weight (the matvecs) with their weight bytes.
    let programs = ctx.decode_programs(dev, dec)?;
    let ops: Vec<Op> = programs.iter().filter_map(|p| p.as_gpu()).flat_map(|p| p.ops.iter().map(clone_op)).collect();
    let mut families: Vec<(String, GpuProgram, u64)> = Vec::new();
    let mut whole = GpuProgram::new();
    for op in &ops {
        whole.ops.push(clone_op(op));
        let Op::Dispatch(d) = op else { continue };
        let weight = d.launch.as_ref().and_then(|l| l.weight.as_ref());
        let name = family_name(&d.pipeline, weight.map(|w| w.label.as_str()));
        let name = if weight.is_some() { format!("matvec {name}") } else { name };
        let at = match families.iter().position(|(n, ..)| *n == name) {
            Some(at) => at,
            None => {
                families.push((name, GpuProgram::new(), 0));
                families.len() - 1
            }
        };
        families[at].1.ops.push(clone_op(op));
        families[at].2 += weight.map_or(0, |w| w.bytes);
    }
    let whole = Program::Gpu(whole);
    let t_whole = time_program(dev, &whole, budget)?;
    out.note(&format!(
        "  decode step breakdown ({label}): whole program alone {:.1} ms ({} dispatches) vs {:.1} ms per pipelined decode step",
        t_whole.median * 1e3,
        whole.n_dispatches(),
        step_s * 1e3
    ));
    let mut timed = Vec::new();
    for (name, prog, bytes) in families.into_iter().map(|(name, p, bytes)| (name, Program::Gpu(p), bytes)) {
        let t = time_program(dev, &prog, budget)?;
        timed.push((name, prog.n_dispatches(), t.median, bytes));
    }
    let sum: f64 = timed.iter().map(|t| t.2).sum();
    let mut rows = Vec::new();
    let mut order: Vec<usize> = (0..timed.len()).collect();
    order.sort_by(|&a, &b| timed[b].2.total_cmp(&timed[a].2));
    for i in order {
        let (name, n, s, bytes) = &timed[i];
        let bytes = (*bytes > 0).then_some(*bytes);
        let gbps = bytes.map(|b| b as f64 / s / 1e9);
        out.note(&format!(
            "    {:<40} {:4} dispatches {:9.2} ms {:5.1}% of the sum, {:7.1} us/dispatch{}",
            name,
            n,
            s * 1e3,
            100.0 * s / sum,
            s / *n as f64 * 1e6,
            gbps.map_or(String::new(), |g| format!(", weights at {g:.2} GB/s"))
        ));
        rows.push(json!({
            "family": name, "dispatches": n, "seconds": s, "fraction_of_sum": s / sum,
            "us_per_dispatch": s / *n as f64 * 1e6, "weight_bytes": bytes, "weight_gbps": gbps,
        }));
    }
    out.note(&format!("    sum of families {:.1} ms", sum * 1e3));
    rows.push(json!({ "family": "whole decode program", "dispatches": whole.n_dispatches(), "seconds": t_whole.median }));
    Ok(rows)
}

fn clone_op(op: &Op) -> Op {
    match op {
        Op::Dispatch(d) => Op::Dispatch(Dispatch {
            pipeline: d.pipeline.clone(),
            bind_group: d.bind_group.clone(),
            workgroups: d.workgroups,
            launch: d.launch.clone(),
        }),
        Op::Clear(buffer) => Op::Clear(buffer.clone()),
        Op::Copy { src, src_offset, dst, dst_offset, size } => {
            Op::Copy { src: src.clone(), src_offset: *src_offset, dst: dst.clone(), dst_offset: *dst_offset, size: *size }
        }
    }
}
