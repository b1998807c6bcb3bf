//! The CPU backend's benchmark at its real size (`webvlm::backend::cpu::bench`): the thread
//! pool's per-op overhead, this machine's copy bandwidth and matvec GB/s per weight format,
//! fast and exact, at 1 and 2 threads; then the gated delta rule (Qwen3.5's linear attention),
//! token by token against the chunked form, on Qwen3.5-0.8B's shapes.
//! Run: `cargo run --release --example cpu_bench` (about a minute), or one section of it:
//! `cargo run --release --example cpu_bench -- kernels` or `-- delta`. `-- levels` compares
//! the SIMD levels this build runs on SmolLM2-135M's decode matvecs, one thread (also in
//! wasm32 under Node: see `levels`). `-- batch` times a batched decode step's products (N
//! tokens through the same weights, the matvec against the matmul's tiles) on 2 threads;
//! `-- attention` a decode step's attention over f16 caches, one sequence and eight.

use std::fmt::Write;
use std::time::{Duration, Instant};

use webvlm::backend::cpu::attention::{attention_seqs, SeqAttention};
use webvlm::backend::cpu::bench::{report, BenchConfig};
use webvlm::backend::cpu::delta_net::{recurrent, DeltaNetLayout, KHeads};
use webvlm::backend::cpu::delta_net_chunked::chunked;
use webvlm::backend::cpu::{matmul, matmul_repacked, matvec, simd, Mode, Repacked, Simd, ThreadPool, Weight};
use webvlm::gguf::{random_blocks, GgmlType, SplitMix64};
use webvlm::kernels::shapes::{AttnShape, KvDtype};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let section = std::env::args().nth(1);
    match section.as_deref() {
        None => println!("{}\n{}", report(&BenchConfig::default())?, delta_rule()?),
        Some("kernels") => println!("{}", report(&BenchConfig::default())?),
        Some("delta") => println!("{}", delta_rule()?),
        Some("levels") => println!("{}", levels()?),
        Some("batch") => println!("{}", batch()?),
        Some("attention") => println!("{}", attention()?),
        Some(other) => return Err(format!("unknown section {other:?} (kernels, delta, levels, batch, attention)").into()),
    }
    Ok(())
}

/// Milliseconds per call of `f`: the fastest call in 300 ms (at least three) after a warm-up.
fn millis<E>(mut f: impl FnMut() -> Result<(), E>) -> Result<f64, E> {
    f()?;
    let (start, mut best, mut calls) = (Instant::now(), f64::MAX, 0);
    while calls < 3 || start.elapsed() < Duration::from_millis(300) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
        calls += 1;
    }
    Ok(best)
}

/// The gated delta rule of Qwen3.5-0.8B (16 v heads, 16 k heads, d_k = d_v = 128) over a
/// prompt's tokens: ms per call of the recurrence and the chunked form, on 1 and 2 threads.
fn delta_rule() -> Result<String, Box<dyn std::error::Error>> {
    let l = DeltaNetLayout::conv_rows(16, 16, 128, 128, KHeads::Tiled);
    let mut out = format!("gated delta rule on {}, Hv 16, Hk 16, d_k = d_v = 128, ms per call:\n", simd::level());
    let pools = [ThreadPool::new(1)?, ThreadPool::new(2)?];
    let _ = writeln!(
        out,
        "tokens | {}",
        pools.iter().map(|p| format!("recurrent, chunked on {}t", p.threads())).collect::<Vec<_>>().join(" | ")
    );
    for n_tok in [1, 2, 4, 8, 16, 64, 256, 1024] {
        let mut rng = SplitMix64::new(n_tok as u64);
        let mut random = |n: usize, lo: f32, hi: f32| (0..n).map(|_| rng.uniform(lo, hi)).collect::<Vec<f32>>();
        let qkv = random(l.qkv_len(n_tok), -1.0, 1.0);
        let (g, beta) = (random(n_tok * 16, -1.0, 0.0), random(n_tok * 16, 0.0, 1.0));
        let (mut state, mut y) = (random(l.state_len(), -0.5, 0.5), vec![0.0; l.out_len(n_tok)]);
        let _ = write!(out, "{n_tok:>6}");
        for pool in &pools {
            let rec = millis(|| recurrent(pool, &l, n_tok, &qkv, &g, &beta, &mut state, &mut y))?;
            let chk = millis(|| chunked(pool, &l, n_tok, &qkv, &g, &beta, &mut state, &mut y))?;
            let _ = write!(out, " | {rec:8.3} {chk:8.3} ({:4.2}x)", rec / chk);
        }
        out.push('\n');
    }
    Ok(out)
}

/// A decode step's attention (one query row per sequence, `attention_seqs`) over f16 caches
/// of SmolLM2-135M's heads (9 query heads on 3 KV heads of 64) and Ministral 3 3B's (32 on 8
/// of 128), for 1 and 8 sequences of 64 to 4096 keys: µs per layer and G multiply-adds per
/// second (q·k and p·v), on 1 and 2 threads.
fn attention() -> Result<String, Box<dyn std::error::Error>> {
    let pools = [ThreadPool::new(1)?, ThreadPool::new(2)?];
    let mut out = format!("decode attention on {}, f16 caches, µs per layer (G multiply-adds/s):\n", simd::level());
    let threads = pools.iter().map(|p| format!("{:>18}", format!("{} threads", p.threads()))).collect::<Vec<_>>();
    let _ = writeln!(out, "heads        keys seqs |{}", threads.join(" |"));
    for (name, n_head, n_kv, hd) in [("SmolLM2", 9, 3, 64), ("Ministral3", 32, 8, 128)] {
        let shape = AttnShape {
            n_head,
            n_kv_head: n_kv,
            head_dim: hd,
            max_tok: 1,
            q_stride: n_head * hd,
            q_offset: 0,
            scale: 1.0 / (hd as f32).sqrt(),
            causal: true,
            kv: KvDtype::F16,
            valid_rows: u32::MAX,
        };
        let (q_len, row) = ((n_head * hd) as usize, (n_kv * hd) as usize);
        for keys in [64, 512, 4096] {
            let mut rng = SplitMix64::new(keys as u64);
            let cache: Vec<u16> = (0..keys * row).map(|_| half::f16::from_f32(rng.uniform(-1.0, 1.0)).to_bits()).collect();
            let q: Vec<f32> = (0..q_len).map(|_| rng.uniform(-1.0, 1.0)).collect();
            for n_seqs in [1, 8] {
                let mut outs = vec![vec![0.0; q_len]; n_seqs];
                let _ = write!(out, "{name:<10} {keys:>6} {n_seqs:>4} |");
                for pool in &pools {
                    let us = 1e3
                        * millis(|| {
                            let seqs = outs.iter_mut().map(|out| SeqAttention {
                                shape,
                                q: &q,
                                k_cache: &cache,
                                v_cache: &cache,
                                out,
                                n_tok: 1,
                                kv_start: keys - 1,
                            });
                            attention_seqs(pool, seqs.collect())
                        })?;
                    let macs = 2.0 * (n_seqs * keys * q_len) as f64;
                    let _ = write!(out, " {us:9.1} ({:5.1}) |", macs / us / 1e3);
                }
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// Every SIMD level this build runs, side by side on one thread: decode matvecs streamed from
/// memory, in ms per token and GB/s of weights: SmolLM2-135M's (30 layers of q, k, v, o, gate,
/// up and down; hidden size 576, 3 KV heads of 64, MLP 1536; the LM head left out; about 110
/// MB at Q8_0) per format whose blocks divide 576 columns, and four layers of SmolLM2-1.7B's
/// (hidden size 2048, MLP 8192; 150 MB at Q4_K) in the K-quants. Then one 576 x 1536 matrix
/// (the down projection; 0.5-3.5 MB, in cache) per format in ns per row, and its prefill
/// matmul of 64 tokens per block format in GFLOP/s. In wasm32, built for
/// wasm32-wasip1-threads with `-C target-feature=+simd128,+relaxed-simd` and run by
/// scripts/wasi_run.mjs under Node (scripts/test_wasm_simd.sh sets both up), this is V8's speed
/// at the scalar, SIMD128 and relaxed-SIMD levels.
fn levels() -> Result<String, Box<dyn std::error::Error>> {
    let pool = ThreadPool::new(1)?;
    let levels = Simd::available();
    let names = levels.iter().map(|l| format!("{:>16}", l.to_string())).collect::<Vec<_>>().join(" |");
    let mut out = format!("decode matvecs (streamed), 1 thread, ms per token (GB/s):\nformat mode  |{names}\n");
    let smollm2 = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)];
    let _ = writeln!(out, "SmolLM2-135M, 30 layers");
    for ty in [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        streamed(&mut out, &pool, &levels, ty, &smollm2, 30)?;
    }
    let smollm2_1_7b = [(2048, 2048), (2048, 2048), (2048, 2048), (2048, 2048), (8192, 2048), (8192, 2048), (2048, 8192)];
    let _ = writeln!(out, "SmolLM2-1.7B, 4 layers");
    for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
        streamed(&mut out, &pool, &levels, ty, &smollm2_1_7b, 4)?;
    }
    let (rows, cols) = (576, 1536);
    let _ = writeln!(out, "one {rows} x {cols} matrix (in cache), 1 thread, ns per row:\nformat mode  |{names}");
    for ty in GgmlType::SUPPORTED {
        let bytes = random_blocks(ty, rows * cols / ty.block_size(), ty.id() as u64);
        let w = Weight::new(ty, rows, cols, &bytes)?;
        let x: Vec<f32> = (0..cols).map(|i| ((i % 61) as f32 - 30.0) / 30.0).collect();
        let mut y = vec![0.0; rows];
        for mode in [Mode::Fast, Mode::Exact] {
            let _ = write!(out, "{:<6} {:<5}", ty.name(), format!("{mode:?}").to_lowercase());
            for &level in &levels {
                let call = || matvec(&pool, &w, &x, &mut y, 1, mode);
                let ms = simd::with_level(level, || millis(call))??;
                let _ = write!(out, " | {:16.1}", ms * 1e6 / rows as f64);
            }
            out.push('\n');
        }
    }
    let n = 64;
    let _ = writeln!(out, "prefill matmul, {rows} x {cols}, {n} tokens, fast, 1 thread, GFLOP/s:\nformat       |{names}");
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let bytes = random_blocks(ty, rows * cols / ty.block_size(), ty.id() as u64);
        let w = Weight::new(ty, rows, cols, &bytes)?;
        let x: Vec<f32> = (0..n * cols).map(|i| ((i % 61) as f32 - 30.0) / 30.0).collect();
        let mut y = vec![0.0; n * rows];
        let _ = write!(out, "{:<12}", ty.name());
        for &level in &levels {
            let ms = simd::with_level(level, || millis(|| matmul(&pool, &w, &x, &mut y, n, Mode::Fast)))??;
            let _ = write!(out, " | {:16.2}", 2.0 * (rows * cols * n) as f64 / ms / 1e6);
        }
        out.push('\n');
    }
    Ok(out)
}

/// A batched decode step's products on 2 threads: four layers of SmolLM2-1.7B's matrices (as in
/// [`levels`]; larger than the caches) per fast-mode format, N tokens through each, by the
/// matvec (each row fetched once, dotted with every token), by the matmul's tiles (a panel
/// decoded once for the tokens) and, at the AVX-512 levels, from the rows repacked at load (no
/// decoding). Each cell is ms per step and, in brackets, the step's tokens/s
/// over one token's matvec: the batched step's ceiling where the products are the step.
fn batch() -> Result<String, Box<dyn std::error::Error>> {
    let pool = ThreadPool::new(2)?;
    let layer = [(2048, 2048), (2048, 2048), (2048, 2048), (2048, 2048), (8192, 2048), (8192, 2048), (2048, 8192)];
    let sizes = [1, 2, 4, 8, 16];
    let mut out = format!("batched decode products, SmolLM2-1.7B x 4 layers, {}, 2 threads, ms per step:\n", simd::level());
    let _ = writeln!(out, "format product |{}", sizes.map(|n| format!("{:>16}", format!("N = {n}"))).join(" |"));
    for ty in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q4_1, GgmlType::Q8_0] {
        let weights = (0..4 * layer.len())
            .map(|i| {
                let (rows, cols) = layer[i % layer.len()];
                random_blocks(ty, rows * cols / ty.block_size(), i as u64)
            })
            .collect::<Vec<_>>();
        let ws = weights
            .iter()
            .enumerate()
            .map(|(i, b)| Weight::new(ty, layer[i % layer.len()].0, layer[i % layer.len()].1, b))
            .collect::<Result<Vec<_>, _>>()?;
        let x: Vec<f32> = (0..16 * 8192).map(|i| ((i % 61) as f32 - 30.0) / 30.0).collect();
        let mut y = vec![0.0; 16 * 8192];
        let packed = match Repacked::takes(ty, simd::level()) {
            true => ws.iter().map(|w| Repacked::pack(&pool, w)).collect::<Result<Vec<_>, _>>()?,
            false => Vec::new(),
        };
        let mut one = 0.0;
        for product in ["matvec", "matmul", "packed"].into_iter().take(if packed.is_empty() { 2 } else { 3 }) {
            let _ = write!(out, "{:<6} {product:<7}", ty.name());
            for n in sizes {
                let ms = millis(|| {
                    ws.iter().zip(0..).try_for_each(|(w, i)| {
                        let (x, y) = (&x[..n * w.cols()], &mut y[..n * w.rows()]);
                        match product {
                            "matvec" => matvec(&pool, w, x, y, n, Mode::Fast),
                            "matmul" => matmul(&pool, w, x, y, n, Mode::Fast),
                            _ => matmul_repacked(&pool, &packed[i], x, y, n),
                        }
                    })
                })?;
                if n == 1 && product == "matvec" {
                    one = ms;
                }
                let _ = write!(out, " | {ms:8.2} ({:4.2}x)", n as f64 * one / ms);
            }
            out.push('\n');
        }
    }
    Ok(out)
}

/// One line per mode of [`levels`]' streamed table: `layers` layers of `layer`'s (rows, cols)
/// matrices of random `ty` blocks, one token through each, per level.
fn streamed(
    out: &mut String,
    pool: &ThreadPool,
    levels: &[Simd],
    ty: GgmlType,
    layer: &[(usize, usize)],
    layers: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let shape = |i: usize| layer[i % layer.len()];
    let weights = (0..layers * layer.len())
        .map(|i| random_blocks(ty, shape(i).0 * shape(i).1 / ty.block_size(), i as u64))
        .collect::<Vec<_>>();
    let bytes: usize = weights.iter().map(Vec::len).sum();
    let ws =
        weights.iter().enumerate().map(|(i, b)| Weight::new(ty, shape(i).0, shape(i).1, b)).collect::<Result<Vec<_>, _>>()?;
    let width = layer.iter().map(|&(rows, cols)| rows.max(cols)).max().unwrap_or(0);
    let x: Vec<f32> = (0..width).map(|i| ((i % 61) as f32 - 30.0) / 30.0).collect();
    let mut y = vec![0.0; width];
    for mode in [Mode::Fast, Mode::Exact] {
        let _ = write!(out, "{:<6} {:<5}", ty.name(), format!("{mode:?}").to_lowercase());
        for &level in levels {
            let ms = simd::with_level(level, || {
                millis(|| ws.iter().try_for_each(|w| matvec(pool, w, &x[..w.cols()], &mut y, 1, mode)))
            })??;
            let _ = write!(out, " | {ms:7.2} ({:5.2})", bytes as f64 / ms / 1e6);
        }
        out.push('\n');
    }
    Ok(())
}
