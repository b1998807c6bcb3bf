//! Quantized weight upload, matvec, matmul and embedding gather against CPU references on the
//! dequantized weights (`webvlm::gguf::quant`), for every supported GGUF type.

mod common;
use common::*;
use webvlm::gguf::quant::{quantize_q4_0, quantize_q4_1, quantize_q8_0};
use webvlm::gguf::{dequantize_to_vec, random_blocks, GgmlType};
use webvlm::gpu::{Gpu, GpuOptions, Program};
use webvlm::kernels::matmul::MatmulCompute;
use webvlm::kernels::quant::{repack, unpack, GpuWeight, WeightError};
use webvlm::kernels::{embedding, matmul, matvec};

// Relative L2 error limits against the f64-accumulated reference on the dequantized weights:
// the GPU differs only by f32 summation order (and fused multiply-adds in the decoders).
const TOL_F32: f32 = 1e-5;
const TOL_F16: f32 = 1e-5;
const TOL_BF16: f32 = 1e-5;
const TOL_Q8_0: f32 = 1e-5;
const TOL_Q4_0: f32 = 1e-5;
const TOL_Q4_1: f32 = 1e-5;
const TOL_Q4_K: f32 = 1e-5;
const TOL_Q5_K: f32 = 1e-5;
const TOL_Q6_K: f32 = 1e-5;
/// Gather decodes each weight exactly up to one rounding of its scale product.
const TOL_GATHER: f32 = 1e-6;
/// The f16-compute matmul (`MatmulCompute::F16`), any type: X and W rounded to f16 (2^-12
/// rms relative each), f16 products summed in f16 over 32 terms, f32 across K steps.
/// Measured 9e-4 to 1.35e-3 (worst: Q5_K) over these shapes on lavapipe, vs ~1e-6 for f32;
/// 2e-3 leaves headroom without hiding a broken tile (which gives O(1) errors).
const TOL_MATMUL_F16: f32 = 2e-3;

const TYPES: [GgmlType; 9] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn tol(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::F32 => TOL_F32,
        GgmlType::F16 => TOL_F16,
        GgmlType::BF16 => TOL_BF16,
        GgmlType::Q8_0 => TOL_Q8_0,
        GgmlType::Q4_0 => TOL_Q4_0,
        GgmlType::Q4_1 => TOL_Q4_1,
        GgmlType::Q4_K => TOL_Q4_K,
        GgmlType::Q5_K => TOL_Q5_K,
        _ => TOL_Q6_K,
    }
}

/// Column counts per type: multiples of the block size, not of 8 or the tile for plain types.
fn col_shapes(ty: GgmlType) -> &'static [usize] {
    match ty.block_size() {
        256 => &[256, 512, 1024],
        // Odd and even blocks per row (Q4_0 decodes block pairs when the count is even).
        32 => &[32, 64, 96, 3072, 4128],
        // 1 to 32 threads per row group (16: the tiny models' LM head; 20: groups plus a tail).
        _ => &[1, 7, 16, 20, 96, 257, 4128],
    }
}

/// Random GGUF bytes of a `rows x cols` weight and their dequantized values. Q8_0, Q4_0 and
/// Q4_1 come from the reference quantizers, the rest from random valid blocks.
fn weight(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let n = rows * cols;
    let bytes = match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let x = Rng::new(seed).vec(n);
            let q = match ty {
                GgmlType::Q8_0 => quantize_q8_0(&x),
                GgmlType::Q4_0 => quantize_q4_0(&x),
                _ => quantize_q4_1(&x),
            };
            q.unwrap()
        }
        _ => random_blocks(ty, n / ty.block_size(), seed),
    };
    let deq = dequantize_to_vec(ty, &bytes, n).unwrap();
    (bytes, deq)
}

fn run_matvec(gpu: &Gpu, w: &GpuWeight, x: &[f32], n_tok: usize) -> Vec<f32> {
    let bx = upload(gpu, x);
    let by = gpu.storage("y", (n_tok * w.rows as usize * 4) as u64).unwrap();
    let mut prog = Program::new();
    matvec::record(&mut prog, gpu, w, &bx, &by, n_tok as u32).unwrap();
    prog.run(gpu).unwrap();
    gpu.read_f32_blocking(&by, n_tok * w.rows as usize).unwrap()
}

fn run_matmul(gpu: &Gpu, w: &GpuWeight, x: &[f32], m: usize) -> Vec<f32> {
    run_matmul_with(gpu, w, x, m, MatmulCompute::F32)
}

fn run_matmul_with(gpu: &Gpu, w: &GpuWeight, x: &[f32], m: usize, compute: MatmulCompute) -> Vec<f32> {
    let bx = upload(gpu, x);
    let by = gpu.storage("y", (m * w.rows as usize * 4) as u64).unwrap();
    let mut prog = Program::new();
    matmul::record_with(&mut prog, gpu, w, &bx, &by, m as u32, compute).unwrap();
    prog.run(gpu).unwrap();
    gpu.read_f32_blocking(&by, m * w.rows as usize).unwrap()
}

fn run_gather(gpu: &Gpu, w: &GpuWeight, ids: &[u32]) -> Vec<f32> {
    let bids = gpu.storage_with("ids", bytemuck::cast_slice(ids)).unwrap();
    let n = ids.len() * w.cols as usize;
    let bout = gpu.storage("out", (n * 4) as u64).unwrap();
    // Poison the output: out-of-range ids must be written as zeros.
    gpu.write(&bout, 0, bytemuck::cast_slice(&vec![f32::NAN; n]));
    let mut prog = Program::new();
    embedding::record(&mut prog, gpu, w, &bids, &bout, ids.len() as u32).unwrap();
    prog.run(gpu).unwrap();
    gpu.read_f32_blocking(&bout, n).unwrap()
}

#[test]
fn repack_is_lossless_for_every_type() {
    for ty in TYPES {
        for &cols in col_shapes(ty) {
            let rows = 3;
            let (bytes, deq) = weight(ty, rows, cols, 11);
            let packed = repack(ty, cols, &bytes).unwrap();
            assert_eq!(packed.bytes.len() % 4, 0, "{ty}: packed length");
            let back = unpack(ty, &packed, rows * cols);
            assert_eq!(back, bytes, "{ty} cols {cols}: unpack(repack(x)) != x");
            let deq_back = dequantize_to_vec(ty, &back, rows * cols).unwrap();
            assert_eq!(deq_back, deq, "{ty} cols {cols}: dequantized values changed");
        }
    }
    // Split types keep bodies first, then the scales.
    let (bytes, _) = weight(GgmlType::Q6_K, 2, 256, 3);
    let packed = repack(GgmlType::Q6_K, 256, &bytes).unwrap();
    assert_eq!(packed.scale_base, 2 * 208 / 4);
    assert_eq!(&packed.bytes[416..418], &bytes[208..210]);
}

#[test]
fn upload_rejects_bad_inputs() {
    let gpu = gpu();
    let bytes = vec![0u8; 34 * 4];
    let r = GpuWeight::upload(&gpu, "w", GgmlType::Q8_0, 2, 64, &bytes[..100]);
    assert!(matches!(r, Err(WeightError::SizeMismatch { expected: 136, got: 100, .. })), "size");
    let r = GpuWeight::upload(&gpu, "w", GgmlType::Q8_0, 4, 48, &bytes);
    assert!(matches!(r, Err(WeightError::BadShape { .. })), "cols not a block multiple");
    let r = GpuWeight::upload(&gpu, "w", GgmlType::Q5_0, 1, 32, &bytes[..22]);
    assert!(matches!(r, Err(WeightError::Unsupported(GgmlType::Q5_0))), "type");
    let r = GpuWeight::upload_with_part_limit(&gpu, "w", GgmlType::Q8_0, 4, 32, &bytes, 16);
    assert!(matches!(r, Err(WeightError::RowTooLarge { .. })), "part limit");
    let w = GpuWeight::upload(&gpu, "w", GgmlType::Q8_0, 4, 32, &bytes).unwrap();
    assert_eq!(w.bytes_on_gpu(), 4 * 34);
}

#[test]
fn matvec_matches_cpu_for_every_type() {
    let gpu = gpu();
    let mut rng = Rng::new(5);
    for ty in TYPES {
        let mut worst = 0.0f32;
        for &cols in col_shapes(ty) {
            for (i, rows) in [1usize, 31, 257, 1000].into_iter().enumerate() {
                let (bytes, deq) = weight(ty, rows, cols, (rows * 7 + cols) as u64);
                let w = GpuWeight::upload(&gpu, "w", ty, rows as u32, cols as u32, &bytes).unwrap();
                let n_tok = [1, 3, 8, 11][i];
                let x = rng.vec(n_tok * cols);
                let got = run_matvec(&gpu, &w, &x, n_tok);
                let err = rel_l2(&got, &matvec::matvec_ref(&deq, rows, cols, &x, n_tok));
                assert!(err < tol(ty), "{ty} {rows}x{cols} n_tok {n_tok}: rel err {err}");
                worst = worst.max(err);
            }
        }
        println!("matvec {ty}: worst rel L2 {worst:.2e}");
    }
}

#[test]
fn matmul_matches_cpu_for_every_type() {
    let gpu = gpu();
    let mut rng = Rng::new(6);
    for ty in TYPES {
        let mut worst = 0.0f32;
        let cols = col_shapes(ty);
        let shapes = [(1, 31, cols[0]), (3, 257, cols[1]), (17, 100, cols[cols.len() - 1]), (65, 129, cols[0])];
        for (m, rows, cols) in shapes {
            let (bytes, deq) = weight(ty, rows, cols, (m + rows) as u64);
            let w = GpuWeight::upload(&gpu, "w", ty, rows as u32, cols as u32, &bytes).unwrap();
            let x = rng.vec(m * cols);
            let got = run_matmul(&gpu, &w, &x, m);
            let err = rel_l2(&got, &matmul::matmul_ref(&x, &deq, m, rows, cols));
            assert!(err < tol(ty), "{ty} m {m} {rows}x{cols}: rel err {err}");
            worst = worst.max(err);
        }
        println!("matmul {ty}: worst rel L2 {worst:.2e}");
    }
}

/// Without `shader-f16` (here: a device opened with f16 turned off) the f16 variant refuses
/// to record rather than fail at pipeline compilation.
#[test]
fn matmul_f16_compute_is_refused_without_shader_f16() {
    let gpu = Gpu::new_blocking(GpuOptions { allow_f16: false, ..GpuOptions::default() }).expect("a GPU adapter");
    assert!(!gpu.caps.f16);
    let (bytes, _) = weight(GgmlType::F32, 4, 8, 1);
    let w = GpuWeight::upload(&gpu, "w", GgmlType::F32, 4, 8, &bytes).unwrap();
    let (bx, by) = (upload(&gpu, &[0.0; 16]), upload(&gpu, &[0.0; 8]));
    let r = matmul::record_with(&mut Program::new(), &gpu, &w, &bx, &by, 2, MatmulCompute::F16);
    assert!(r.is_err(), "f16 matmul recorded on a device without shader-f16");
}

#[test]
fn matmul_f16_compute_matches_cpu_for_every_type() {
    let gpu = gpu();
    assert!(gpu.caps.f16, "the test adapter (lavapipe) has shader-f16");
    let mut rng = Rng::new(8);
    for ty in TYPES {
        let mut worst = 0.0f32;
        let cols = col_shapes(ty);
        let shapes = [(1, 31, cols[0]), (3, 257, cols[1]), (17, 100, cols[cols.len() - 1]), (65, 129, cols[0])];
        for (m, rows, cols) in shapes {
            let (bytes, deq) = weight(ty, rows, cols, (m + rows) as u64);
            let w = GpuWeight::upload(&gpu, "w", ty, rows as u32, cols as u32, &bytes).unwrap();
            let x = rng.vec(m * cols);
            let got = run_matmul_with(&gpu, &w, &x, m, MatmulCompute::F16);
            let err = rel_l2(&got, &matmul::matmul_ref(&x, &deq, m, rows, cols));
            assert!(err < TOL_MATMUL_F16, "f16 compute {ty} m {m} {rows}x{cols}: rel err {err}");
            worst = worst.max(err);
        }
        println!("matmul f16 compute {ty}: worst rel L2 {worst:.2e}");
    }
    // An input beyond the f16 range is clamped to ±65504 rather than becoming inf (sums
    // whose 32-term partials exceed 65504 still overflow: f16 compute is opt-in).
    let (bytes, _) = weight(GgmlType::F16, 64, 64, 2);
    let w = GpuWeight::upload(&gpu, "w", GgmlType::F16, 64, 64, &bytes).unwrap();
    let mut x = rng.vec(64 * 2);
    x[5] = 1e6;
    x[64 + 40] = -1e6;
    let got = run_matmul_with(&gpu, &w, &x, 2, MatmulCompute::F16);
    assert!(got.iter().all(|v| v.is_finite()), "f16 compute: non-finite output for an out-of-range input");
}

#[test]
fn embedding_gathers_every_type() {
    let gpu = gpu();
    for ty in TYPES {
        let mut worst = 0.0f32;
        for &cols in col_shapes(ty) {
            let rows = 37;
            let (bytes, deq) = weight(ty, rows, cols, cols as u64);
            let w = GpuWeight::upload(&gpu, "emb", ty, rows as u32, cols as u32, &bytes).unwrap();
            let ids = [0u32, 36, 5, 5, 37, u32::MAX, 17];
            let got = run_gather(&gpu, &w, &ids);
            let want = embedding::embedding_ref(&deq, cols, &ids);
            let err = rel_l2(&got, &want);
            assert!(err < TOL_GATHER, "{ty} cols {cols}: rel err {err}");
            let oob = &got[4 * cols..6 * cols];
            assert!(oob.iter().all(|&v| v == 0.0), "{ty}: out-of-range ids must give zeros");
            worst = worst.max(err);
        }
        println!("embedding {ty}: worst rel L2 {worst:.2e}");
    }
}

#[test]
fn row_split_weights_give_identical_results() {
    let gpu = gpu();
    let mut rng = Rng::new(7);
    for (ty, cols) in [(GgmlType::Q4_K, 512), (GgmlType::Q6_K, 256), (GgmlType::Q8_0, 96), (GgmlType::F16, 7)] {
        let rows = 300;
        let (bytes, _) = weight(ty, rows, cols, 99);
        let whole = GpuWeight::upload(&gpu, "w", ty, rows as u32, cols as u32, &bytes).unwrap();
        // About 70 rows per part: 5 parts, the last one short.
        let limit = (bytes.len() / rows * 70) as u64 + 4;
        let split = GpuWeight::upload_with_part_limit(&gpu, "w", ty, rows as u32, cols as u32, &bytes, limit).unwrap();
        assert_eq!(whole.parts.len(), 1);
        assert!(split.parts.len() >= 4, "{ty}: {} parts", split.parts.len());
        assert_eq!(split.parts.iter().map(|p| p.rows).sum::<u32>(), rows as u32);
        let x = rng.vec(3 * cols);
        assert_eq!(run_matvec(&gpu, &split, &x, 3), run_matvec(&gpu, &whole, &x, 3), "{ty} matvec");
        let x = rng.vec(20 * cols);
        assert_eq!(run_matmul(&gpu, &split, &x, 20), run_matmul(&gpu, &whole, &x, 20), "{ty} matmul");
        let ids = [299u32, 0, 70, 69, 140, 1000, 211];
        let (a, b) = (run_gather(&gpu, &split, &ids), run_gather(&gpu, &whole, &ids));
        assert_eq!(bytemuck::cast_slice::<f32, u32>(&a), bytemuck::cast_slice::<f32, u32>(&b), "{ty} gather");
    }
}

/// `record_rows` reads and writes only its window: rows outside it keep their poison.
#[test]
fn matmul_row_window_reads_and_writes_only_its_rows() {
    let gpu = gpu();
    let (rows, cols, m) = (70usize, 96usize, 67usize);
    let (x_row0, y_row0) = (5usize, 130usize);
    let (bytes, deq) = weight(GgmlType::Q8_0, rows, cols, 21);
    let w = GpuWeight::upload(&gpu, "w", GgmlType::Q8_0, rows as u32, cols as u32, &bytes).unwrap();
    let x = Rng::new(22).vec((x_row0 + m + 3) * cols);
    let y_len = (y_row0 + m + 2) * rows;
    let (bx, by) = (upload(&gpu, &x), upload(&gpu, &vec![f32::NAN; y_len]));
    let mut prog = Program::new();
    matmul::record_rows(&mut prog, &gpu, &w, (&bx, x_row0 as u32), (&by, y_row0 as u32), m as u32, MatmulCompute::F32).unwrap();
    prog.run(&gpu).unwrap();
    let got = gpu.read_f32_blocking(&by, y_len).unwrap();
    let want = matmul::matmul_ref(&x[x_row0 * cols..(x_row0 + m) * cols], &deq, m, rows, cols);
    let window = &got[y_row0 * rows..(y_row0 + m) * rows];
    let err = rel_l2(window, &want);
    assert!(err < TOL_Q8_0, "window rel err {err}");
    let outside = got[..y_row0 * rows].iter().chain(&got[(y_row0 + m) * rows..]);
    assert!(outside.into_iter().all(|v| v.is_nan()), "rows outside the window were written");
    let r =
        matmul::record_rows(&mut Program::new(), &gpu, &w, (&bx, (x_row0 + 4) as u32), (&by, 0), m as u32, MatmulCompute::F32);
    assert!(r.is_err(), "a window past the end of x must be refused");
}
