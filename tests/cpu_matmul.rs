//! The CPU backend's prefill matmul (`webvlm::backend::cpu::matmul`) against the f64
//! reference (`kernels::matvec::matvec_ref` on dequantized weights) and against the CPU
//! matvec: every weight format × {fast, exact} × every SIMD level this machine has (scalar
//! included) × {1, 2, 3} threads × token counts that are and are not whole tiles, and every
//! epilogue. No GPU.

use crate::cpu_common;

use cpu_common::{activations, pools, rel_l2, representable_activations, representable_weights};
use webvlm::backend::cpu::elementwise::silu;
use webvlm::backend::cpu::matmul::{same_as_matvec, ROWS as PANEL, TOKENS as TILE};
use webvlm::backend::cpu::{
    matmul, matmul_into, matmul_repacked, matvec, simd, Epilogue, MatvecError, Mode, Output, Repacked, Simd, ThreadPool, Weight,
};
use webvlm::gguf::{dequantize_to_vec, random_blocks, GgmlType};
use webvlm::kernels::matvec::matvec_ref;

/// Rows: nine panels and one row (a short last panel); tokens: one, a part of a tile, a
/// tile, two tiles and one, eight tiles.
const ROWS: usize = 37;
const TOKENS: [usize; 5] = [1, 3, 8, 17, 64];

fn cols(ty: GgmlType) -> usize {
    // Quantized: three 256-blocks; floats: two stretches of the exact kernel and a tail of 9
    // past its 8-column steps.
    if ty.is_quantized() {
        768
    } else {
        777
    }
}

/// `w · x` for `n_tok` tokens by `op` (matmul or matvec) at `level` on `pool`.
fn run(op: Op, level: Simd, pool: &ThreadPool, w: &Weight, x: &[f32], n_tok: usize, mode: Mode) -> Vec<f32> {
    let mut y = vec![f32::NAN; n_tok * w.rows()];
    simd::with_level(level, || op(pool, w, x, &mut y, n_tok, mode)).unwrap().unwrap();
    y
}

type Op = fn(&ThreadPool, &Weight, &[f32], &mut [f32], usize, Mode) -> Result<(), MatvecError>;

/// Largest relative L2 error from the reference over every level, thread count and token
/// count; each result also checked against the matvec's at the same level and thread count
/// (bit for bit where [`same_as_matvec`] says so, as batched decode steps rely on; else
/// within 1e-6).
fn worst_error(ty: GgmlType, mode: Mode) -> f64 {
    let same = same_as_matvec(ty, mode);
    let cols = cols(ty);
    let bytes = random_blocks(ty, ROWS * cols / ty.block_size(), ty.id() as u64);
    let w = Weight::new(ty, ROWS, cols, &bytes).unwrap();
    let dense = dequantize_to_vec(ty, &bytes, ROWS * cols).unwrap();
    let mut worst = 0.0f64;
    for n_tok in TOKENS {
        let x = activations(n_tok * cols, 7 + n_tok as u64);
        let want = matvec_ref(&dense, ROWS, cols, &x, n_tok);
        for pool in pools() {
            for level in Simd::available() {
                let y = run(matmul, level, &pool, &w, &x, n_tok, mode);
                let mv = run(matvec, level, &pool, &w, &x, n_tok, mode);
                let (err, vs_matvec) = (rel_l2(&y, &want), rel_l2(&y, &mv));
                let what = format!("{ty} {mode:?} {level} {} threads, {n_tok} tokens", pool.threads());
                assert!(if same { y == mv } else { vs_matvec < 1e-6 }, "{what}: {vs_matvec:e} from matvec");
                worst = worst.max(err);
            }
        }
    }
    eprintln!("{ty} {mode:?}: rel. L2 {worst:.2e}");
    worst
}

#[test]
fn exact_mode_meets_the_reference() {
    // Measured (worst of levels, thread counts and token counts): in the comment of each
    // limit; f32 rounding only (the panel is the reference dequantizer's output).
    let errs: Vec<_> = GgmlType::SUPPORTED.iter().map(|&ty| (ty, worst_error(ty, Mode::Exact))).collect();
    for (ty, err) in errs {
        assert!(err < 1e-6, "{ty}: {err:e}");
    }
}

#[test]
fn fast_mode_is_within_its_quantization_error_and_equals_matvec() {
    // The matvec's limits (tests/cpu_matvec.rs): the error of 8-bit activations. The block
    // formats run the matvec's integer sums and f32 steps in its order: equal bit for bit.
    let limits = [
        (GgmlType::Q4_0, 1.8e-2),
        (GgmlType::Q4_1, 2.0e-2),
        (GgmlType::Q8_0, 2.0e-2),
        (GgmlType::Q4_K, 3.2e-2),
        (GgmlType::Q5_K, 3.1e-2),
        (GgmlType::Q6_K, 3.5e-2),
        (GgmlType::F32, 1e-6),
        (GgmlType::F16, 1e-6),
        (GgmlType::BF16, 1e-6),
    ];
    let errs: Vec<_> = limits.iter().map(|&(ty, _)| worst_error(ty, Mode::Fast)).collect();
    for ((ty, limit), err) in limits.into_iter().zip(errs) {
        assert!(err < limit, "{ty}: {err:e} above {limit:e}");
    }
}

#[test]
fn repacked_k_quants_equal_the_matvec_at_every_token_count() {
    // Repacked once (no decoding per product): every token count from one (a decode step) to
    // past two tiles, a short last panel, each level and thread count, bit for bit the
    // matvec's; and the exactly representable case against the reference.
    let rows = ROWS;
    for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
        let cols = cols(ty);
        let bytes = random_blocks(ty, rows * cols / ty.block_size(), 11);
        let w = Weight::new(ty, rows, cols, &bytes).unwrap();
        let packed = Repacked::pack(&ThreadPool::new(2).unwrap(), &w).unwrap();
        assert_eq!((packed.ty(), packed.rows(), packed.cols()), (ty, rows, cols));
        for n_tok in (1..=9).chain([16, 17]) {
            let x = activations(n_tok * cols, 40 + n_tok as u64);
            for pool in pools() {
                for level in Simd::available() {
                    let want = run(matvec, level, &pool, &w, &x, n_tok, Mode::Fast);
                    let mut y = vec![f32::NAN; n_tok * rows];
                    simd::with_level(level, || matmul_repacked(&pool, &packed, &x, &mut y, n_tok)).unwrap().unwrap();
                    assert!(y == want, "{ty} {level} {} threads, {n_tok} tokens", pool.threads());
                }
            }
        }
        let bytes = representable_weights(ty, rows * cols, 12);
        let w = Weight::new(ty, rows, cols, &bytes).unwrap();
        let packed = Repacked::pack(&ThreadPool::new(2).unwrap(), &w).unwrap();
        let x = representable_activations(3 * cols, 13);
        let want = matvec_ref(&dequantize_to_vec(ty, &bytes, rows * cols).unwrap(), rows, cols, &x, 3);
        for level in Simd::available() {
            let mut y = vec![f32::NAN; 3 * rows];
            simd::with_level(level, || matmul_repacked(&ThreadPool::new(2).unwrap(), &packed, &x, &mut y, 3)).unwrap().unwrap();
            assert!(y == want, "{ty} {level}");
        }
        let mut short = vec![0.0; rows];
        let err = matmul_repacked(&ThreadPool::new(1).unwrap(), &packed, &x, &mut short, 2).err();
        assert!(matches!(err, Some(MatvecError::Length { what: "y", .. })), "{err:?}");
    }
    let cols = cols(GgmlType::F16);
    let f16 = vec![0; ROWS * cols * 2];
    let err = Repacked::pack(&ThreadPool::new(1).unwrap(), &Weight::new(GgmlType::F16, ROWS, cols, &f16).unwrap()).err();
    assert!(matches!(err, Some(MatvecError::Unsupported(GgmlType::F16))), "{err:?}");
}

#[test]
fn repacked_32_element_formats_give_each_token_its_own_bits_at_every_token_count() {
    // Q4_0, Q4_1 and Q8_0 repacked keep their own order of f32 steps: a token's result is the
    // same bits alone (a decode step) and among any number of others (a batched step), on
    // every level and thread count, and within rounding of the matvec's; the exactly
    // representable case equals the reference.
    let rows = ROWS;
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
        let cols = cols(ty);
        let bytes = random_blocks(ty, rows * cols / ty.block_size(), 21);
        let w = Weight::new(ty, rows, cols, &bytes).unwrap();
        let packed = Repacked::pack(&ThreadPool::new(2).unwrap(), &w).unwrap();
        assert_eq!((packed.ty(), packed.rows(), packed.cols()), (ty, rows, cols));
        let repacked = |level: Simd, pool: &ThreadPool, x: &[f32], n_tok: usize| {
            let mut y = vec![f32::NAN; n_tok * rows];
            simd::with_level(level, || matmul_repacked(pool, &packed, x, &mut y, n_tok)).unwrap().unwrap();
            y
        };
        for n_tok in (1..=9).chain([16, 17]) {
            let x = activations(n_tok * cols, 50 + n_tok as u64);
            // Each token alone, on the portable level.
            let alone: Vec<f32> =
                x.chunks(cols).flat_map(|x| repacked(Simd::Scalar, &ThreadPool::new(1).unwrap(), x, 1)).collect();
            for pool in pools() {
                for level in Simd::available() {
                    let y = repacked(level, &pool, &x, n_tok);
                    assert!(y == alone, "{ty} {level} {} threads, {n_tok} tokens", pool.threads());
                    let mv = run(matvec, level, &pool, &w, &x, n_tok, Mode::Fast);
                    let err = rel_l2(&y, &mv);
                    assert!(err < 1e-6, "{ty} {level}: {err:e} from the matvec");
                }
            }
        }
        let bytes = representable_weights(ty, rows * cols, 22);
        let w = Weight::new(ty, rows, cols, &bytes).unwrap();
        let packed = Repacked::pack(&ThreadPool::new(2).unwrap(), &w).unwrap();
        let x = representable_activations(3 * cols, 23);
        let want = matvec_ref(&dequantize_to_vec(ty, &bytes, rows * cols).unwrap(), rows, cols, &x, 3);
        for level in Simd::available() {
            let mut y = vec![f32::NAN; 3 * rows];
            simd::with_level(level, || matmul_repacked(&ThreadPool::new(2).unwrap(), &packed, &x, &mut y, 3)).unwrap().unwrap();
            assert!(y == want, "{ty} {level}");
        }
    }
}

#[test]
fn every_level_is_exact_where_f32_is() {
    // Products and partial sums exactly representable (see `cpu_common`): any order gives the
    // reference bit for bit, so this asserts the decoding of every format (codes, scales, mins,
    // the panel's rows and the tiles' tokens) on every level, in both modes.
    let (rows, cols, n_tok) = (2 * PANEL + 3, 768, 2 * TILE + 3);
    let x = representable_activations(n_tok * cols, 3);
    for ty in GgmlType::SUPPORTED {
        let bytes = representable_weights(ty, rows * cols, ty.id() as u64);
        let w = Weight::new(ty, rows, cols, &bytes).unwrap();
        let want = matvec_ref(&dequantize_to_vec(ty, &bytes, rows * cols).unwrap(), rows, cols, &x, n_tok);
        for pool in pools() {
            for level in Simd::available() {
                for mode in [Mode::Fast, Mode::Exact] {
                    let y = run(matmul, level, &pool, &w, &x, n_tok, mode);
                    assert!(y == want, "{ty} {mode:?} {level} {} threads", pool.threads());
                }
            }
        }
    }
}

#[test]
fn epilogues_store_add_and_gate_into_strided_outputs() {
    // y is [n_tok][stride] with the products at `offset`; the other columns stay untouched.
    // Each epilogue equals its formula applied to the plain products of the same level, mode
    // and thread count bit for bit (those are checked against the reference above).
    let (h, cols, stride, offset) = (2 * PANEL + 1, 512, 20, 3);
    for n_tok in [1, TILE + 1] {
        let x = activations(n_tok * cols, 5);
        let base = activations(n_tok * stride, 6);
        for ty in [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::F16] {
            let bytes = random_blocks(ty, 2 * h * cols / ty.block_size(), 9);
            let w = Weight::new(ty, 2 * h, cols, &bytes).unwrap();
            let head = Weight::new(ty, h, cols, &bytes[..bytes.len() / 2]).unwrap();
            let pools = pools();
            let cases = pools.iter().flat_map(|p| Simd::available().into_iter().map(move |l| (p, l)));
            for ((pool, level), mode) in cases.flat_map(|c| [(c, Mode::Exact), (c, Mode::Fast)]) {
                let what = format!("{ty} {mode:?} {level} {} threads, {n_tok} tokens", pool.threads());
                let plain = run(matmul, level, pool, &w, &x, n_tok, mode);
                let (mut store, mut add, mut gated) = (base.clone(), base.clone(), base.clone());
                let out = Output { stride: stride as u32, offset: offset as u32, epilogue: Epilogue::Store };
                simd::with_level(level, || {
                    matmul_into(pool, &head, &x, &mut store, out, n_tok, mode).unwrap();
                    matmul_into(pool, &head, &x, &mut add, Output { epilogue: Epilogue::Add, ..out }, n_tok, mode).unwrap();
                    matmul_into(pool, &w, &x, &mut gated, Output { epilogue: Epilogue::SiluMul, ..out }, n_tok, mode).unwrap();
                })
                .unwrap();
                for t in 0..n_tok {
                    for i in t * stride..(t + 1) * stride {
                        let (p, r) = (&plain[t * 2 * h..], i.wrapping_sub(t * stride + offset));
                        let want = match r < h {
                            true => [p[r], base[i] + p[r], silu(p[r]) * p[h + r]],
                            false => [base[i]; 3],
                        };
                        assert!([store[i], add[i], gated[i]] == want, "{what}: token {t}, column {i}");
                    }
                }
            }
        }
    }
}

#[test]
fn shapes_and_lengths_are_checked() {
    let pool = ThreadPool::new(2).unwrap();
    let bytes = random_blocks(GgmlType::Q4_K, 3, 1);
    let w = Weight::new(GgmlType::Q4_K, 3, 256, &bytes).unwrap();
    let (x, mut y) = (vec![0.5; 512], vec![0.0; 6]);
    let err = |r: Result<(), MatvecError>| r.unwrap_err();
    assert!(matches!(err(matmul(&pool, &w, &x[..511], &mut y, 2, Mode::Fast)), MatvecError::Length { what: "x", .. }));
    assert!(matches!(err(matmul(&pool, &w, &x, &mut y[..5], 2, Mode::Exact)), MatvecError::Length { what: "y", .. }));
    let gated = Output { stride: 1, offset: 0, epilogue: Epilogue::SiluMul };
    assert!(matches!(err(matmul_into(&pool, &w, &x, &mut y, gated, 1, Mode::Fast)), MatvecError::OddGated(3)));
    let narrow = Output { stride: 2, offset: 0, epilogue: Epilogue::Store };
    assert!(matches!(err(matmul_into(&pool, &w, &x, &mut y, narrow, 2, Mode::Exact)), MatvecError::Stride { .. }));
    assert!(matmul(&pool, &w, &x, &mut [], 0, Mode::Fast).is_ok(), "no tokens, nothing to do");
    let empty = Weight::new(GgmlType::Q4_K, 0, 256, &[]).unwrap();
    assert!(matmul(&pool, &empty, &x, &mut [], 2, Mode::Fast).is_ok(), "no rows, nothing to do");
}
