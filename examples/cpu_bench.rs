//! The CPU backend's benchmark at its real size (`webvlm::backend::cpu::bench`): the thread
//! pool's per-op overhead, this machine's copy bandwidth and matvec GB/s per weight format,
//! fast and exact, at 1 and 2 threads; then the gated delta rule (Qwen3.5's linear attention),
//! token by token against the chunked form, on Qwen3.5-0.8B's shapes.
//! Run: `cargo run --release --example cpu_bench` (about a minute), or one section of it:
//! `cargo run --release --example cpu_bench -- kernels` or `-- delta`.

use std::fmt::Write;
use std::time::{Duration, Instant};

use webvlm::backend::cpu::bench::{report, BenchConfig};
use webvlm::backend::cpu::delta_net::{recurrent, DeltaNetLayout, KHeads};
use webvlm::backend::cpu::delta_net_chunked::chunked;
use webvlm::backend::cpu::{simd, ShapeError, ThreadPool};
use webvlm::gguf::SplitMix64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let section = std::env::args().nth(1);
    match section.as_deref() {
        None => println!("{}\n{}", report(&BenchConfig::default())?, delta_rule()?),
        Some("kernels") => println!("{}", report(&BenchConfig::default())?),
        Some("delta") => println!("{}", delta_rule()?),
        Some(other) => return Err(format!("unknown section {other:?} (kernels, delta)").into()),
    }
    Ok(())
}

/// Milliseconds per call of `f`: the fastest call in 300 ms (at least three) after a warm-up.
fn millis(mut f: impl FnMut() -> Result<(), ShapeError>) -> Result<f64, ShapeError> {
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
