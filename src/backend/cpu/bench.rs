//! Measures the CPU backend's building blocks on this machine: the pool's per-op overhead
//! (empty tasks, one per thread; back to back, and after an idle gap that puts the workers to
//! sleep), matvec throughput per weight format and mode in GB/s of weight bytes (one token,
//! matrices larger than the caches so the rows stream from memory, as in decode), and the
//! copy bandwidth of a buffer of the same size (STREAM's "copy", McCalpin 1995, split over
//! the threads as matvec is) that matvec is reported as a fraction of, with the read-only
//! bandwidth and the FMA peak beside it (the roofline `webvlm bench` prints); and the prefill
//! matmul's GFLOP/s (Q4_K and Q8_0, fast and exact, a prompt's worth of tokens) with its
//! speedup over a matvec per token and over one matvec of all the tokens.

use std::fmt::Write;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use web_time::Instant;

use super::matmul::matmul;
use super::matvec::{matvec, MatvecError, Mode, Weight};
use super::pool::{PoolError, ThreadPool};
use super::simd::{self, Simd};
use crate::gguf::quant::random_blocks;
use crate::gguf::GgmlType;

/// A benchmark that could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Matvec(#[from] MatvecError),
}

/// What to measure, and how long.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Weight bytes of each matrix (whole rows of `cols`), also the copied buffer's size.
    pub bytes: usize,
    pub cols: usize,
    pub threads: Vec<usize>,
    /// Each figure is the fastest of the repetitions in this long (after one warm-up run).
    pub min_time: Duration,
    /// Back-to-back runs behind the pool figure.
    pub pool_runs: usize,
    /// The matmul's weight (`gemm_rows` x `gemm_cols`) and token counts.
    pub gemm_rows: usize,
    pub gemm_cols: usize,
    pub gemm_tokens: Vec<usize>,
}

impl Default for BenchConfig {
    /// 512 MiB matrices of 4096 columns (more than the 480 MiB L3 of the machine this was
    /// written on), 1 and 2 threads; a 4096 x 4096 matmul of 64 and 256 tokens (a 7B
    /// model's attention projection): about a minute.
    fn default() -> BenchConfig {
        BenchConfig {
            bytes: 512 << 20,
            cols: 4096,
            threads: vec![1, 2],
            min_time: Duration::from_millis(100),
            pool_runs: 20_000,
            gemm_rows: 4096,
            gemm_cols: 4096,
            gemm_tokens: vec![64, 256],
        }
    }
}

impl BenchConfig {
    /// A few milliseconds: exercises every path, measures nothing meaningful.
    pub fn tiny() -> BenchConfig {
        BenchConfig {
            bytes: 64 << 10,
            cols: 512,
            threads: vec![1, 2],
            min_time: Duration::ZERO,
            pool_runs: 10,
            gemm_rows: 64,
            gemm_cols: 512,
            gemm_tokens: vec![9],
        }
    }
}

/// Seconds per call of `f`: the fastest of the calls in `min_time` after a warm-up call (the
/// mean would count other processes' time slices on a shared machine).
fn seconds(min_time: Duration, mut f: impl FnMut() -> Result<(), BenchError>) -> Result<f64, BenchError> {
    f()?;
    let (start, mut best) = (Instant::now(), f64::MAX);
    while best == f64::MAX || start.elapsed() < min_time {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Microseconds per empty op, back to back and after 1 ms idle.
pub fn pool_overhead(pool: &ThreadPool, runs: usize) -> (f64, f64) {
    let empty = |_: usize| {};
    let start = Instant::now();
    for _ in 0..runs {
        pool.run(pool.threads(), &empty);
    }
    let hot = start.elapsed().as_secs_f64() * 1e6 / runs as f64;
    let mut idle = Duration::ZERO;
    for _ in 0..runs.min(20) {
        std::thread::sleep(Duration::from_millis(1));
        let start = Instant::now();
        pool.run(pool.threads(), &empty);
        idle += start.elapsed();
    }
    (hot, idle.as_secs_f64() * 1e6 / runs.min(20) as f64)
}

/// GB/s copied (each byte read once, written once) of `bytes`, split over the pool.
pub fn copy_bandwidth(pool: &ThreadPool, bytes: usize, min_time: Duration) -> Result<f64, BenchError> {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let part = bytes.div_ceil(pool.threads()).max(1);
    let parts: Vec<Mutex<&mut [u8]>> = dst.chunks_mut(part).map(Mutex::new).collect();
    let secs = seconds(min_time, || {
        pool.run(parts.len(), &|i| {
            let mut d = parts[i].lock().unwrap_or_else(PoisonError::into_inner);
            let n = d.len();
            d.copy_from_slice(&src[i * part..i * part + n]);
        });
        Ok(())
    })?;
    Ok(bytes as f64 / secs / 1e9)
}

/// GB/s read of `bytes` split over the pool (each part summed as `u64` words, eight
/// independent sums so that the adds never wait on each other).
pub fn read_bandwidth(pool: &ThreadPool, bytes: usize, min_time: Duration) -> Result<f64, BenchError> {
    let src: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
    let part = src.len().div_ceil(pool.threads()).max(1);
    let sink = Mutex::new(0u64);
    let secs = seconds(min_time, || {
        pool.run(src.len().div_ceil(part), &|i| {
            let mut sums = [0u64; 8];
            for words in src[i * part..((i + 1) * part).min(src.len())].chunks(8) {
                for (s, w) in sums.iter_mut().zip(words) {
                    *s = s.wrapping_add(*w);
                }
            }
            let total = sums.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            *sink.lock().unwrap_or_else(PoisonError::into_inner) ^= total;
        });
        Ok(())
    })?;
    std::hint::black_box(sink);
    Ok((src.len() * 8) as f64 / secs / 1e9)
}

/// Peak f32 GFLOP/s of fused multiply-adds on the pool (an FMA counts two FLOPs): each thread
/// runs ten independent accumulator chains, enough to keep two FMA pipes of four cycles'
/// latency busy, at the widest vector the kernels use (8 lanes with AVX2, else scalar).
pub fn fma_peak(pool: &ThreadPool, min_time: Duration) -> Result<f64, BenchError> {
    const ITERS: usize = 1 << 16;
    let lanes = if simd::level().avx2() { 8 } else { 1 };
    let sink = Mutex::new(0f32);
    let secs = seconds(min_time, || {
        pool.run(pool.threads(), &|_| {
            let v = fma_chains(ITERS);
            *sink.lock().unwrap_or_else(PoisonError::into_inner) += v;
        });
        Ok(())
    })?;
    std::hint::black_box(sink);
    Ok((pool.threads() * ITERS * 10 * lanes * 2) as f64 / secs / 1e9)
}

/// `iters` rounds of ten FMA chains; returns a value that depends on all of them.
fn fma_chains(iters: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd::level().avx2() {
        // SAFETY: the process's SIMD level has AVX2 and FMA.
        return unsafe { fma_chains_avx2(iters) };
    }
    let (a, b) = (std::hint::black_box(0.999f32), std::hint::black_box(1e-3f32));
    let mut acc = [1.0f32; 10];
    for _ in 0..iters {
        for x in &mut acc {
            *x = *x * a + b;
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(std::hint::black_box(0.999)), _mm256_set1_ps(std::hint::black_box(1e-3)));
    let mut acc = [_mm256_set1_ps(1.0); 10];
    for _ in 0..iters {
        for x in &mut acc {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let sum = acc.iter().fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    lanes.iter().sum()
}

/// Runs the benchmark and formats its figures as a few lines of text.
pub fn report(cfg: &BenchConfig) -> Result<String, BenchError> {
    let pools = cfg.threads.iter().map(|&t| ThreadPool::new(t)).collect::<Result<Vec<_>, _>>()?;
    let levels: Vec<String> = Simd::available().iter().map(Simd::to_string).collect();
    let mut out = format!(
        "CPU backend on {} (this machine: {}), {} MiB matrices of {} columns\n",
        simd::level(),
        levels.join(", "),
        cfg.bytes >> 20,
        cfg.cols
    );
    let (mut copy, mut read, mut fma) = (Vec::new(), Vec::new(), Vec::new());
    for pool in &pools {
        let (hot, idle) = pool_overhead(pool, cfg.pool_runs);
        copy.push(copy_bandwidth(pool, cfg.bytes, cfg.min_time)?);
        read.push(read_bandwidth(pool, cfg.bytes, cfg.min_time)?);
        fma.push(fma_peak(pool, cfg.min_time)?);
        let t = pool.threads();
        let _ = writeln!(out, "pool, {t} threads: {hot:.2} µs per op back to back, {idle:.1} µs after 1 ms idle");
    }
    let per_pool = |figures: &[f64], unit: &str| -> String {
        let each = pools.iter().zip(figures).map(|(p, f)| format!("{f:.1} {unit} on {} threads", p.threads()));
        each.collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(out, "copy ({} MiB): {}", cfg.bytes >> 20, per_pool(&copy, "GB/s"));
    let _ = writeln!(out, "read ({} MiB): {}", cfg.bytes >> 20, per_pool(&read, "GB/s"));
    let _ = writeln!(out, "FMA peak: {}", per_pool(&fma, "GFLOP/s"));
    let _ = writeln!(out, "matvec, GB/s of weights (fraction of copy on as many threads):");
    let mut header = String::from("format");
    for mode in ["fast", "exact"] {
        for pool in &pools {
            let _ = write!(header, " | {:<11}", format!("{mode} {}t", pool.threads()));
        }
    }
    let _ = writeln!(out, "{header}");
    for ty in GgmlType::SUPPORTED {
        let row_bytes = cfg.cols / ty.block_size() * ty.type_size();
        // (`Weight::new` refuses columns that are not whole blocks.)
        let rows = (cfg.bytes / row_bytes.max(1)).max(1);
        let bytes = random_blocks(ty, rows * cfg.cols / ty.block_size(), ty.id() as u64);
        let w = Weight::new(ty, rows, cfg.cols, &bytes)?;
        let x: Vec<f32> = (0..cfg.cols).map(|i| ((i % 61) as f32 - 30.0) / 30.0).collect();
        let mut y = vec![0.0; rows];
        let _ = write!(out, "{:<6}", ty.name());
        for mode in [Mode::Fast, Mode::Exact] {
            for (pool, copy) in pools.iter().zip(&copy) {
                let secs = seconds(cfg.min_time, || Ok(matvec(pool, &w, &x, &mut y, 1, mode)?))?;
                let gbs = bytes.len() as f64 / secs / 1e9;
                let _ = write!(out, " | {gbs:5.1} ({:.2})", gbs / copy);
            }
        }
        out.push('\n');
    }
    gemm(&mut out, cfg, &pools)?;
    Ok(out)
}

/// The matmul rows of the report.
fn gemm(out: &mut String, cfg: &BenchConfig, pools: &[ThreadPool]) -> Result<(), BenchError> {
    let (rows, cols) = (cfg.gemm_rows, cfg.gemm_cols);
    let _ = writeln!(out, "matmul {rows}x{cols}, GFLOP/s (speedup over a matvec per token, over one matvec of all tokens):");
    for ty in [GgmlType::Q4_K, GgmlType::Q8_0] {
        let bytes = random_blocks(ty, rows * cols / ty.block_size(), ty.id() as u64);
        let w = Weight::new(ty, rows, cols, &bytes)?;
        for mode in [Mode::Fast, Mode::Exact] {
            for &n in &cfg.gemm_tokens {
                let x: Vec<f32> = (0..n * cols).map(|i| ((i % 61) as f32 - 30.0) / 30.0).collect();
                let mut y = vec![0.0; n * rows];
                let _ = write!(out, "{:<6} {:<5} {n:>4} tokens", ty.name(), format!("{mode:?}").to_lowercase());
                for pool in pools {
                    let mm = seconds(cfg.min_time, || Ok(matmul(pool, &w, &x, &mut y, n, mode)?))?;
                    let per_token = seconds(cfg.min_time, || {
                        for (xt, yt) in x.chunks_exact(cols).zip(y.chunks_exact_mut(rows)) {
                            matvec(pool, &w, xt, yt, 1, mode)?;
                        }
                        Ok(())
                    })?;
                    let batched = seconds(cfg.min_time, || Ok(matvec(pool, &w, &x, &mut y, n, mode)?))?;
                    let gflops = 2.0 * (rows * cols * n) as f64 / mm / 1e9;
                    let t = pool.threads();
                    let _ = write!(out, " | {t}t {gflops:6.1} ({:4.1}x, {:3.1}x)", per_token / mm, batched / mm);
                }
                out.push('\n');
            }
        }
    }
    Ok(())
}
