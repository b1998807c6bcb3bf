//! The CPU backend's matvec, activation quantizers, SIMD dispatch and thread pool
//! (`webvlm::backend::cpu`), against the f64 reference (`kernels::matvec::matvec_ref` on
//! dequantized weights): every weight format × {fast, exact} × every SIMD level this machine
//! has (scalar included) × {1, 2, 3} threads. No GPU.

use crate::cpu_common;

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

use cpu_common::{activations, pools, rel_l2, representable_activations, representable_weights};
use webvlm::backend::cpu::elementwise::silu;
use webvlm::backend::cpu::quant::{quantize_q8, quantize_q8k, QuantError};
use webvlm::backend::cpu::{bench, matvec, matvec_into, simd, Epilogue, MatvecError, Mode, Output, Simd, ThreadPool, Weight};
use webvlm::gguf::{dequantize_to_vec, random_blocks, GgmlType};
use webvlm::kernels::matvec::matvec_ref;

/// Rows not a multiple of any chunk; columns of three 256-blocks (24 of 32); three tokens.
const ROWS: usize = 301;
const COLS: usize = 768;
const N_TOK: usize = 3;

/// Runs `w · x` at `level` on `pool`.
fn run(level: Simd, pool: &ThreadPool, w: &Weight, x: &[f32], mode: Mode) -> Vec<f32> {
    let mut y = vec![f32::NAN; N_TOK * w.rows()];
    simd::with_level(level, || matvec(pool, w, x, &mut y, N_TOK, mode)).unwrap().unwrap();
    y
}

/// Largest relative L2 error over every level and thread count, each level's result also
/// checked against scalar's (`same_as_scalar`: bit for bit, else within 1e-6).
fn worst_error(ty: GgmlType, mode: Mode, cols: usize, same_as_scalar: bool) -> f64 {
    let bytes = random_blocks(ty, ROWS * cols / ty.block_size(), ty.id() as u64);
    let w = Weight::new(ty, ROWS, cols, &bytes).unwrap();
    let x = activations(N_TOK * cols, 7);
    let want = matvec_ref(&dequantize_to_vec(ty, &bytes, ROWS * cols).unwrap(), ROWS, cols, &x, N_TOK);
    let scalar = run(Simd::Scalar, &ThreadPool::new(1).unwrap(), &w, &x, mode);
    let mut worst = 0.0f64;
    for pool in pools() {
        for level in Simd::available() {
            let y = run(level, &pool, &w, &x, mode);
            let (err, vs_scalar) = (rel_l2(&y, &want), rel_l2(&y, &scalar));
            assert!(
                if same_as_scalar { y == scalar } else { vs_scalar < 1e-6 },
                "{ty} {mode:?} {level}: {vs_scalar:e} from scalar"
            );
            worst = worst.max(err);
        }
    }
    eprintln!("{ty} {mode:?}: rel. L2 {worst:.2e}");
    worst
}

#[test]
fn exact_mode_meets_the_reference() {
    // Measured (worst of levels and thread counts): 4.9e-7 (Q8_0, Q4_0) to 5.3e-7 (F16, Q6_K),
    // f32 rounding only; F32/F16/BF16 rows of 777 columns also take the SIMD loops' scalar tail.
    let errs: Vec<_> = GgmlType::SUPPORTED
        .iter()
        .map(|&ty| (ty, worst_error(ty, Mode::Exact, if ty.is_quantized() { COLS } else { 777 }, false)))
        .collect();
    for (ty, err) in errs {
        assert!(err < 1e-6, "{ty}: {err:e}");
    }
}

#[test]
fn fast_mode_is_within_its_quantization_error() {
    // Limits about twice the measured rel. L2 with 8-bit activations (in the comments; these
    // activations have an 8x outlier every 64 values, so a Q8_K block of 256 always has one):
    // the error llama.cpp's CPU backend makes by the same quantization. Float formats run as in
    // the exact mode. The K-quants do one f32 step per super-block on every level: bit for
    // bit the scalar result; the 32-blocks' SIMD paths sum in another order (within 1e-6).
    let limits = [
        (GgmlType::Q4_0, 1.8e-2), // 9.0e-3
        (GgmlType::Q4_1, 2.0e-2), // 9.6e-3
        (GgmlType::Q8_0, 2.0e-2), // 9.3e-3
        (GgmlType::Q4_K, 3.2e-2), // 1.62e-2
        (GgmlType::Q5_K, 3.1e-2), // 1.55e-2
        (GgmlType::Q6_K, 3.5e-2), // 1.74e-2
        (GgmlType::F32, 1e-6),    // 5.0e-7
        (GgmlType::F16, 1e-6),    // 5.3e-7
        (GgmlType::BF16, 1e-6),   // 5.1e-7
    ];
    let errs: Vec<_> = limits
        .iter()
        .map(|&(ty, _)| worst_error(ty, Mode::Fast, if ty.is_quantized() { COLS } else { 777 }, ty.block_size() == 256))
        .collect();
    for ((ty, limit), err) in limits.into_iter().zip(errs) {
        assert!(err < limit, "{ty}: {err:e} above {limit:e}");
    }
}

#[test]
fn every_level_is_exact_where_f32_is() {
    // Power-of-two scales and integer activations in [-1, 1] with a ±127 opening each block
    // of 32 (so every activation block quantizes with d = 1, losslessly): every product and
    // partial sum is exactly representable (below 2^24 units of the smallest step), so any
    // summation order gives the reference bit for bit. This asserts that the integer paths
    // (codes, nibble and bit unpacking, scales, mins, code sums) are right on every level,
    // in both modes, for every format and thread count.
    let x = representable_activations(N_TOK * COLS, 3);
    for ty in GgmlType::SUPPORTED {
        let bytes = representable_weights(ty, ROWS * COLS, ty.id() as u64);
        let w = Weight::new(ty, ROWS, COLS, &bytes).unwrap();
        let want = matvec_ref(&dequantize_to_vec(ty, &bytes, ROWS * COLS).unwrap(), ROWS, COLS, &x, N_TOK);
        for pool in pools() {
            for level in Simd::available() {
                for mode in [Mode::Fast, Mode::Exact] {
                    assert!(run(level, &pool, &w, &x, mode) == want, "{ty} {mode:?} {level} {} threads", pool.threads());
                }
            }
        }
    }
}

#[test]
fn activation_quantizers_agree_on_every_level() {
    let x = activations(4 * 256, 11);
    let (q8, q8k) = (quantize_q8(&x).unwrap(), quantize_q8k(&x).unwrap());
    for level in Simd::available() {
        let (a, b) = simd::with_level(level, || (quantize_q8(&x).unwrap(), quantize_q8k(&x).unwrap())).unwrap();
        assert!(a == q8 && b == q8k, "{level}");
    }
    for (blk, xs) in q8.iter().zip(x.chunks(32)) {
        assert_eq!(blk.sum, blk.qs.iter().map(|&q| q as i32).sum::<i32>());
        for (&q, &v) in blk.qs.iter().zip(xs) {
            assert!((blk.d * q as f32 - v).abs() <= blk.d * 0.5001, "{v} as {q} x {}", blk.d);
        }
    }
    for blk in &q8k {
        for (g, &s) in blk.bsums.iter().enumerate() {
            assert_eq!(s as i32, blk.qs[16 * g..16 * g + 16].iter().map(|&q| q as i32).sum::<i32>());
        }
    }
    assert_eq!(quantize_q8(&x[..40]), Err(QuantError::Blocks { len: 40, block: 32 }));
}

#[test]
fn epilogues_add_and_gate_into_strided_outputs() {
    // y is [N_TOK][stride] with the products at `offset`; the other columns stay untouched.
    // Each epilogue equals its formula applied to the plain products of the same level, mode
    // and thread count bit for bit (those are checked against the reference above).
    let (h, cols, stride, offset) = (75, 512, 90, 7);
    let x = activations(N_TOK * cols, 5);
    let base = activations(N_TOK * stride, 6);
    for ty in [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::F16] {
        let bytes = random_blocks(ty, 2 * h * cols / ty.block_size(), 9);
        let w = Weight::new(ty, 2 * h, cols, &bytes).unwrap();
        let head = Weight::new(ty, h, cols, &bytes[..bytes.len() / 2]).unwrap();
        let pools = pools();
        let cases = pools.iter().flat_map(|p| Simd::available().into_iter().map(move |l| (p, l)));
        for ((pool, level), mode) in cases.flat_map(|c| [(c, Mode::Exact), (c, Mode::Fast)]) {
            let what = format!("{ty} {mode:?} {level} {} threads", pool.threads());
            let plain = run(level, pool, &w, &x, mode);
            let (mut add, mut gated) = (base.clone(), base.clone());
            let out = Output { stride: stride as u32, offset: offset as u32, epilogue: Epilogue::Add };
            let gate = Output { epilogue: Epilogue::SiluMul, ..out };
            simd::with_level(level, || {
                matvec_into(pool, &head, &x, &mut add, out, N_TOK, mode).unwrap();
                matvec_into(pool, &w, &x, &mut gated, gate, N_TOK, mode).unwrap();
            })
            .unwrap();
            for t in 0..N_TOK {
                for i in t * stride..(t + 1) * stride {
                    let (p, r) = (&plain[t * 2 * h..], i.wrapping_sub(t * stride + offset));
                    let (want_add, want_gated) = match r < h {
                        true => (base[i] + p[r], silu(p[r]) * p[h + r]),
                        false => (base[i], base[i]),
                    };
                    assert!(add[i] == want_add && gated[i] == want_gated, "{what}: token {t}, column {i}");
                }
            }
        }
    }
}

#[test]
fn shapes_and_lengths_are_checked() {
    let pool = ThreadPool::new(2).unwrap();
    let bytes = random_blocks(GgmlType::Q4_0, 6, 1);
    let bad = |r: Result<Weight, MatvecError>| matches!(r, Err(MatvecError::WeightBytes { .. }));
    assert!(bad(Weight::new(GgmlType::Q4_0, 3, 64, &bytes[1..])));
    assert!(bad(Weight::new(GgmlType::Q4_0, 3, 48, &bytes)));
    assert!(bad(Weight::new(GgmlType::Q4_0, usize::MAX, 64, &bytes)));
    assert!(matches!(Weight::new(GgmlType::Q5_0, 1, 32, &[0; 22]), Err(MatvecError::Unsupported(GgmlType::Q5_0))));
    let w = Weight::new(GgmlType::Q4_0, 3, 64, &bytes).unwrap();
    let (x, mut y) = (vec![0.5; 128], vec![0.0; 6]);
    assert!(matches!(matvec(&pool, &w, &x[..127], &mut y, 2, Mode::Fast), Err(MatvecError::Length { what: "x", .. })));
    assert!(matches!(matvec(&pool, &w, &x, &mut y[..5], 2, Mode::Fast), Err(MatvecError::Length { what: "y", .. })));
    let gated = Output { stride: 1, offset: 0, epilogue: Epilogue::SiluMul };
    assert!(matches!(matvec_into(&pool, &w, &x, &mut y, gated, 1, Mode::Fast), Err(MatvecError::OddGated(3))));
    let narrow = Output { stride: 2, offset: 0, epilogue: Epilogue::Store };
    assert!(matches!(matvec_into(&pool, &w, &x, &mut y, narrow, 2, Mode::Exact), Err(MatvecError::Stride { .. })));
    assert!(matvec(&pool, &w, &x, &mut [], 0, Mode::Fast).is_ok(), "no tokens, nothing to do");
    let empty = Weight::new(GgmlType::Q4_0, 0, 64, &[]).unwrap();
    assert!(matvec(&pool, &empty, &x, &mut [], 2, Mode::Fast).is_ok(), "no rows, nothing to do");
    assert!(bad(Weight::new(GgmlType::F32, 4, 0, &[])));
}

/// The AVX-512 VNNI level's byte dots (one `vpdpbusd` for `maddubs` + `madd`) give the AVX2
/// level's integer lanes: Q4_0, Q4_1 and Q8_0's fast rows are equal bit for bit, Q8_0 with
/// codes of -128 (whose magnitude, 128, is the largest `maddubs` takes) included.
#[test]
fn vnni_rows_equal_the_avx2_ones() {
    if !Simd::Avx512Vnni.is_supported() {
        eprintln!("this CPU has no AVX-512 VNNI: nothing to compare");
        return;
    }
    let pool = ThreadPool::new(2).unwrap();
    let x = activations(N_TOK * COLS, 9);
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
        let mut bytes = random_blocks(ty, ROWS * COLS / 32, 5);
        if ty == GgmlType::Q8_0 {
            // Every eleventh code of every block -128.
            bytes.chunks_exact_mut(34).for_each(|b| b[2..].iter_mut().step_by(11).for_each(|q| *q = 0x80));
        }
        let w = Weight::new(ty, ROWS, COLS, &bytes).unwrap();
        assert_eq!(run(Simd::Avx512Vnni, &pool, &w, &x, Mode::Fast), run(Simd::Avx2, &pool, &w, &x, Mode::Fast), "{ty}");
    }
}

#[test]
fn simd_levels_are_checked_and_named() {
    let best = *Simd::available().last().unwrap();
    assert_eq!(simd::with_level(Simd::Scalar, simd::level), Ok(Simd::Scalar));
    assert_eq!(simd::level(), simd::process_level(), "the override ends with the closure");
    let foreign = if cfg!(target_arch = "aarch64") { Simd::Avx2 } else { Simd::Neon };
    assert_eq!(simd::with_level(foreign, || ()), Err(simd::SimdError::Unsupported(foreign)));
    assert_eq!(foreign.capped(), Simd::Scalar);
    assert_eq!(best.to_string().parse::<Simd>(), Ok(best));
    assert!("sse9".parse::<Simd>().is_err());
}

#[test]
fn pool_runs_every_task_exactly_once() {
    for threads in [1, 2, 3, 4] {
        let pool = ThreadPool::new(threads).unwrap();
        assert_eq!(pool.threads(), threads);
        for n in [0, 1, 2, 3, 7, 100, 1000] {
            let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{threads} threads, {n} tasks");
        }
    }
    assert!(ThreadPool::new(0).is_err());
}

#[test]
fn pool_survives_many_runs_idle_gaps_and_concurrent_callers() {
    let pool = ThreadPool::new(3).unwrap();
    let total = AtomicUsize::new(0);
    for round in 0..20_000 {
        pool.run(1 + round % 5, &|i| {
            total.fetch_add(i + 1, Ordering::Relaxed);
        });
    }
    let want: usize = (0..20_000).map(|r| (1..=1 + r % 5).sum::<usize>()).sum();
    assert_eq!(total.load(Ordering::Relaxed), want);
    // Gaps longer than the spin: workers sleep and must wake.
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(2));
        let hits = AtomicUsize::new(0);
        pool.run(6, &|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 6);
    }
    // Two callers share the pool: their runs are serialized, none lost.
    let hits = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..1000 {
                    pool.run(4, &|_| {
                        hits.fetch_add(1, Ordering::Relaxed);
                    });
                }
            });
        }
    });
    assert_eq!(hits.load(Ordering::Relaxed), 8000);
}

#[test]
fn pool_reports_its_workers_at_work() {
    let alone = ThreadPool::new(1).unwrap();
    alone.run(8, &|_| {});
    assert_eq!((alone.activity().started, alone.activity().joins), (0, 0));
    let pool = ThreadPool::new(3).unwrap();
    // Tasks of a millisecond: the workers wake and join within one, unless the machine never
    // schedules them (hence a few hundred chances).
    for _ in 0..500 {
        pool.run(8, &|_| std::thread::sleep(std::time::Duration::from_millis(1)));
        let a = pool.activity();
        if a.started == 2 && a.joins > 0 {
            return;
        }
    }
    panic!("the workers did not join: {:?}", pool.activity());
}

#[test]
fn pool_propagates_a_panicking_task() {
    let pool = ThreadPool::new(3).unwrap();
    for bad in [0, 5, 63] {
        let ran = AtomicUsize::new(0);
        let err = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.run(64, &|i| {
                ran.fetch_add(1, Ordering::Relaxed);
                assert!(i != bad, "task {i} fails");
            })
        }))
        .unwrap_err();
        let msg = err.downcast_ref::<String>().map(String::as_str).unwrap_or_default();
        assert_eq!(msg, format!("task {bad} fails"));
        assert!(ran.load(Ordering::Relaxed) >= 1);
    }
    let hits = AtomicUsize::new(0);
    pool.run(10, &|_| {
        hits.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(hits.load(Ordering::Relaxed), 10, "the pool still works");
}

#[test]
fn bench_runs_at_a_tiny_size() {
    let report = bench::report(&bench::BenchConfig::tiny()).unwrap();
    for needle in ["pool", "copy", "read", "FMA peak", "Q4_K", "BF16", "fast", "exact", "matmul", "tokens"] {
        assert!(report.contains(needle), "{needle} missing from\n{report}");
    }
}
