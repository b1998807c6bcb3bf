//! Quantized weight upload, matvec, matmul and embedding gather against CPU references on the
//! dequantized weights (`webvlm::gguf::quant`), for every supported GGUF type. The matmul
//! checks run in both launch geometries (the GPU shape forced on the CPU adapter, and the CPU
//! shape); the GPU shape's launch at 3B-like sizes is checked too.

use crate::common;
use common::*;
use webvlm::backend::gpu::matmul::MatmulLaunch;
use webvlm::backend::gpu::{Geometry, Gpu, GpuOptions, Op};
use webvlm::backend::{Device, Program};
use webvlm::gguf::quant::{quantize_q4_0, quantize_q4_1, quantize_q8_0};
use webvlm::gguf::{dequantize_to_vec, random_blocks, GgmlType};
use webvlm::kernels::matmul::MatmulCompute;
use webvlm::kernels::matvec::{Epilogue, Output};
use webvlm::kernels::quant::{repack, unpack, Weight, WeightError};
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

const GEOMETRIES: [Geometry; 2] = [Geometry::Gpu, Geometry::Cpu];

/// The test adapter with the given kernel geometry; the matmul must take that geometry's
/// shape (lavapipe has the workgroup memory of the GPU shape).
/// Each GPU geometry, then the CPU backend (exact mode), with a name for messages.
fn devices() -> Vec<(Device, String)> {
    let mut devices: Vec<(Device, String)> = GEOMETRIES.into_iter().map(|g| (gpu_with(g), format!("{g:?}"))).collect();
    devices.push((cpu(), "CPU backend".into()));
    devices
}

fn gpu_with(geometry: Geometry) -> Device {
    let gpu =
        Device::Gpu(Gpu::new_blocking(GpuOptions { geometry: Some(geometry), ..GpuOptions::default() }).expect("a GPU adapter"));
    assert_eq!(gpu.caps().geometry, geometry);
    for compute in [MatmulCompute::F32, MatmulCompute::F16] {
        let launch = MatmulLaunch::of(geometry, gpu.caps(), compute);
        assert_eq!(launch.gpu, geometry == Geometry::Gpu, "{geometry:?} {compute:?}: {launch:?}");
    }
    gpu
}

/// The error of a matvec result against the CPU reference, relative to the magnitude of its
/// terms (`|W| |x|`): a row whose dot product nearly cancels has a tiny result, and a GPU that
/// sums in another order (or fuses multiply-adds) is only as close to it as the terms allow.
fn dot_err(got: &[f32], w: &[f32], rows: usize, cols: usize, x: &[f32], n_tok: usize) -> f32 {
    let want = matvec::matvec_ref(w, rows, cols, x, n_tok);
    let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<f32>>();
    let scale = matvec::matvec_ref(&abs(w), rows, cols, &abs(x), n_tok);
    let norm = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let diff: Vec<f32> = got.iter().zip(&want).map(|(g, w)| g - w).collect();
    (norm(&diff) / norm(&scale).max(f64::MIN_POSITIVE)) as f32
}

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

fn run_matvec(gpu: &Device, w: &Weight, x: &[f32], n_tok: usize) -> Vec<f32> {
    let bx = upload(gpu, x);
    let by = gpu.storage("y", (n_tok * w.rows as usize * 4) as u64).unwrap();
    let mut prog = Program::new();
    matvec::record(&mut prog, gpu, w, &bx, &by, n_tok as u32).unwrap();
    prog.run(gpu).unwrap();
    gpu.read_f32_blocking(&by, n_tok * w.rows as usize).unwrap()
}

fn run_matmul(gpu: &Device, w: &Weight, x: &[f32], m: usize) -> Vec<f32> {
    run_matmul_with(gpu, w, x, m, MatmulCompute::F32)
}

fn run_matmul_with(gpu: &Device, w: &Weight, x: &[f32], m: usize, compute: MatmulCompute) -> Vec<f32> {
    let bx = upload(gpu, x);
    let by = gpu.storage("y", (m * w.rows as usize * 4) as u64).unwrap();
    let mut prog = Program::new();
    matmul::record_with(&mut prog, gpu, w, &bx, &by, m as u32, compute).unwrap();
    prog.run(gpu).unwrap();
    gpu.read_f32_blocking(&by, m * w.rows as usize).unwrap()
}

fn run_gather(gpu: &Device, w: &Weight, ids: &[u32]) -> Vec<f32> {
    let bids = gpu.storage_with("ids", bytemuck::cast_slice(ids)).unwrap();
    let n = ids.len() * w.cols as usize;
    let bout = gpu.storage("out", (n * 4) as u64).unwrap();
    // Poison the output: out-of-range ids must be written as zeros.
    gpu.write(&bout, 0, bytemuck::cast_slice(&vec![f32::NAN; n])).unwrap();
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
    let r = Weight::upload(&gpu, "w", GgmlType::Q8_0, 2, 64, &bytes[..100]);
    assert!(matches!(r, Err(WeightError::SizeMismatch { expected: 136, got: 100, .. })), "size");
    let r = Weight::upload(&gpu, "w", GgmlType::Q8_0, 4, 48, &bytes);
    assert!(matches!(r, Err(WeightError::BadShape { .. })), "cols not a block multiple");
    let r = Weight::upload(&gpu, "w", GgmlType::Q5_0, 1, 32, &bytes[..22]);
    assert!(matches!(r, Err(WeightError::Unsupported(GgmlType::Q5_0))), "type");
    let r = Weight::upload_with_part_limit(&gpu, "w", GgmlType::Q8_0, 4, 32, &bytes, 16);
    assert!(matches!(r, Err(WeightError::RowTooLarge { .. })), "part limit");
    let w = Weight::upload(&gpu, "w", GgmlType::Q8_0, 4, 32, &bytes).unwrap();
    assert_eq!(w.bytes_on_gpu(), 4 * 34);
}

#[test]
fn matvec_matches_cpu_for_every_type() {
    for gpu in [gpu(), cpu()] {
        check_matvec_every_type(&gpu);
    }
}

fn check_matvec_every_type(gpu: &Device) {
    let backend = &gpu.caps().backend;
    let mut rng = Rng::new(5);
    for ty in TYPES {
        let mut worst = 0.0f32;
        for &cols in col_shapes(ty) {
            for (i, rows) in [1usize, 31, 257, 1000].into_iter().enumerate() {
                let (bytes, deq) = weight(ty, rows, cols, (rows * 7 + cols) as u64);
                let w = Weight::upload(gpu, "w", ty, rows as u32, cols as u32, &bytes).unwrap();
                let n_tok = [1, 3, 8, 11][i];
                let x = rng.vec(n_tok * cols);
                let got = run_matvec(gpu, &w, &x, n_tok);
                let err = dot_err(&got, &deq, rows, cols, &x, n_tok);
                assert!(err < tol(ty), "{backend} {ty} {rows}x{cols} n_tok {n_tok}: rel err {err}");
                worst = worst.max(err);
            }
        }
        println!("matvec {backend} {ty}: worst rel L2 {worst:.2e}");
    }
}

/// (m, rows, cols) of the every-type matmul checks: M = 1, M and N off the tiles of both
/// shapes (M past one 128-row tile), K off the 32 step for the plain types.
fn matmul_shapes(ty: GgmlType) -> [(usize, usize, usize); 5] {
    let cols = col_shapes(ty);
    [(1, 31, cols[0]), (3, 257, cols[1]), (17, 100, cols[cols.len() - 1]), (65, 129, cols[0]), (131, 70, cols[1])]
}

#[test]
fn matmul_matches_cpu_for_every_type() {
    for (gpu, geometry) in devices() {
        let mut rng = Rng::new(6);
        for ty in TYPES {
            let mut worst = 0.0f32;
            for (m, rows, cols) in matmul_shapes(ty) {
                let (bytes, deq) = weight(ty, rows, cols, (m + rows) as u64);
                let w = Weight::upload(&gpu, "w", ty, rows as u32, cols as u32, &bytes).unwrap();
                let x = rng.vec(m * cols);
                let got = run_matmul(&gpu, &w, &x, m);
                let err = rel_l2(&got, &matmul::matmul_ref(&x, &deq, m, rows, cols));
                assert!(err < tol(ty), "{geometry:?} {ty} m {m} {rows}x{cols}: rel err {err}");
                worst = worst.max(err);
            }
            println!("matmul {geometry:?} {ty}: worst rel L2 {worst:.2e}");
        }
    }
}

/// Without `shader-f16` (here: a device opened with f16 turned off) the f16 variant refuses
/// to record rather than fail at pipeline compilation.
#[test]
fn matmul_f16_compute_is_refused_without_shader_f16() {
    let gpu = Device::Gpu(Gpu::new_blocking(GpuOptions { allow_f16: false, ..GpuOptions::default() }).expect("a GPU adapter"));
    assert!(!gpu.caps().f16);
    let (bytes, _) = weight(GgmlType::F32, 4, 8, 1);
    let w = Weight::upload(&gpu, "w", GgmlType::F32, 4, 8, &bytes).unwrap();
    let (bx, by) = (upload(&gpu, &[0.0; 16]), upload(&gpu, &[0.0; 8]));
    let r = matmul::record_with(&mut Program::new(), &gpu, &w, &bx, &by, 2, MatmulCompute::F16);
    assert!(r.is_err(), "f16 matmul recorded on a device without shader-f16");
}

#[test]
fn matmul_f16_compute_matches_cpu_for_every_type() {
    for geometry in GEOMETRIES {
        let gpu = gpu_with(geometry);
        assert!(gpu.caps().f16, "the test adapter (lavapipe) has shader-f16");
        let mut rng = Rng::new(8);
        for ty in TYPES {
            let mut worst = 0.0f32;
            for (m, rows, cols) in matmul_shapes(ty) {
                let (bytes, deq) = weight(ty, rows, cols, (m + rows) as u64);
                let w = Weight::upload(&gpu, "w", ty, rows as u32, cols as u32, &bytes).unwrap();
                let x = rng.vec(m * cols);
                let got = run_matmul_with(&gpu, &w, &x, m, MatmulCompute::F16);
                let err = rel_l2(&got, &matmul::matmul_ref(&x, &deq, m, rows, cols));
                assert!(err < TOL_MATMUL_F16, "{geometry:?} f16 compute {ty} m {m} {rows}x{cols}: rel err {err}");
                worst = worst.max(err);
            }
            println!("matmul {geometry:?} f16 compute {ty}: worst rel L2 {worst:.2e}");
        }
        // An input beyond the f16 range is clamped to ±65504 rather than becoming inf (sums
        // whose 32-term partials exceed 65504 still overflow: f16 compute is opt-in).
        let (bytes, _) = weight(GgmlType::F16, 64, 64, 2);
        let w = Weight::upload(&gpu, "w", GgmlType::F16, 64, 64, &bytes).unwrap();
        let mut x = rng.vec(64 * 2);
        x[5] = 1e6;
        x[64 + 40] = -1e6;
        let got = run_matmul_with(&gpu, &w, &x, 2, MatmulCompute::F16);
        assert!(got.iter().all(|v| v.is_finite()), "{geometry:?} f16 compute: non-finite output for an out-of-range input");
    }
}

#[test]
fn embedding_gathers_every_type() {
    for gpu in [gpu(), cpu()] {
        check_embedding_every_type(&gpu);
    }
}

fn check_embedding_every_type(gpu: &Device) {
    for ty in TYPES {
        let mut worst = 0.0f32;
        for &cols in col_shapes(ty) {
            let rows = 37;
            let (bytes, deq) = weight(ty, rows, cols, cols as u64);
            let w = Weight::upload(gpu, "emb", ty, rows as u32, cols as u32, &bytes).unwrap();
            let ids = [0u32, 36, 5, 5, 37, u32::MAX, 17];
            let got = run_gather(gpu, &w, &ids);
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

/// Matvec, matmul and gather of a weight split into row parts equal those of the whole weight
/// (matmul and matvec in both geometries).
#[test]
fn row_split_weights_give_identical_results() {
    for geometry in GEOMETRIES {
        let gpu = gpu_with(geometry);
        let mut rng = Rng::new(7);
        for (ty, cols) in [(GgmlType::Q4_K, 512), (GgmlType::Q6_K, 256), (GgmlType::Q8_0, 96), (GgmlType::F16, 7)] {
            let rows = 300;
            let (bytes, _) = weight(ty, rows, cols, 99);
            let whole = Weight::upload(&gpu, "w", ty, rows as u32, cols as u32, &bytes).unwrap();
            // About 70 rows per part: 5 parts, the last one short.
            let limit = (bytes.len() / rows * 70) as u64 + 4;
            let split = Weight::upload_with_part_limit(&gpu, "w", ty, rows as u32, cols as u32, &bytes, limit).unwrap();
            assert_eq!(whole.parts.len(), 1);
            assert!(split.parts.len() >= 4, "{ty}: {} parts", split.parts.len());
            assert_eq!(split.parts.iter().map(|p| p.rows).sum::<u32>(), rows as u32);
            let x = rng.vec(3 * cols);
            assert_eq!(run_matvec(&gpu, &split, &x, 3), run_matvec(&gpu, &whole, &x, 3), "{geometry:?} {ty} matvec");
            let x = rng.vec(20 * cols);
            assert_eq!(run_matmul(&gpu, &split, &x, 20), run_matmul(&gpu, &whole, &x, 20), "{geometry:?} {ty} matmul");
            let ids = [299u32, 0, 70, 69, 140, 1000, 211];
            let (a, b) = (run_gather(&gpu, &split, &ids), run_gather(&gpu, &whole, &ids));
            assert_eq!(bytemuck::cast_slice::<f32, u32>(&a), bytemuck::cast_slice::<f32, u32>(&b), "{geometry:?} {ty} gather");
        }
    }
}

/// A matvec of several tokens (a batched decode step's product) gives each token the bits
/// of its matvec alone, in both geometries and both row counts of the GPU shape.
#[test]
fn matvec_of_many_tokens_gives_each_token_its_bits_alone() {
    for geometry in GEOMETRIES {
        let gpu = gpu_with(geometry);
        let mut rng = Rng::new(11);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16] {
            // Fewer than 2048 rows take 2 rows per thread in the GPU shape, more take 4.
            for rows in [96, 2056] {
                let cols = 256;
                let (bytes, _) = weight(ty, rows, cols, 5);
                let w = Weight::upload(&gpu, "w", ty, rows as u32, cols as u32, &bytes).unwrap();
                for n_tok in [2, 3, 8, 11] {
                    let x = rng.vec(n_tok * cols);
                    assert_each_token_as_alone(&gpu, &w, &x, n_tok, &format!("{geometry:?} {ty} {rows} rows"));
                }
            }
        }
    }
}

/// On CPU adapters the block path reads x through uniform windows of at most 64 KiB: rows of
/// 1536 columns take 8 tokens a window (19 tokens: three windows, the last partial); rows of
/// 4096, whose 8 tokens a thread do not fit one window, one binding per token (three
/// dispatches, the last one's 5 slots past the end bound to the last token); rows of 8448
/// too (one token a window); rows of 8224 would, but their offsets (32896 bytes apart) are
/// not what a uniform binding takes where the adapter asks 256-byte alignment (x then read
/// as storage). Each token still gets the bits of its matvec alone.
#[test]
fn matvec_of_tokens_in_several_x_windows_gives_each_token_its_bits_alone() {
    let gpu = gpu_with(Geometry::Cpu);
    let mut rng = Rng::new(13);
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K] {
        let wide = if ty == GgmlType::Q4_K { 8448 } else { 8224 };
        for cols in [1536, 4096, wide] {
            let rows = 40;
            let (bytes, _) = weight(ty, rows, cols, 7);
            let w = Weight::upload(&gpu, "w", ty, rows as u32, cols as u32, &bytes).unwrap();
            let n_tok = 19;
            let x = rng.vec(n_tok * cols);
            assert_each_token_as_alone(&gpu, &w, &x, n_tok, &format!("{ty} {cols} columns"));
        }
    }
}

/// Each token's row of `w`'s matvec over `n_tok` tokens of `x` has the bits of its matvec alone.
fn assert_each_token_as_alone(gpu: &Device, w: &Weight, x: &[f32], n_tok: usize, what: &str) {
    let (rows, cols) = (w.rows as usize, w.cols as usize);
    let together = run_matvec(gpu, w, x, n_tok);
    for t in 0..n_tok {
        let alone = run_matvec(gpu, w, &x[t * cols..(t + 1) * cols], 1);
        let row = &together[t * rows..(t + 1) * rows];
        let same = bytemuck::cast_slice::<f32, u32>(row) == bytemuck::cast_slice::<f32, u32>(&alone);
        assert!(same, "{what}: token {t} of {n_tok} differs from its matvec alone");
    }
}

/// `record_rows` reads and writes only its window: rows outside it keep their poison.
#[test]
fn matmul_row_window_reads_and_writes_only_its_rows() {
    for (gpu, geometry) in devices() {
        let (rows, cols, m) = (70usize, 96usize, 67usize);
        let (x_row0, y_row0) = (5usize, 130usize);
        let (bytes, deq) = weight(GgmlType::Q8_0, rows, cols, 21);
        let w = Weight::upload(&gpu, "w", GgmlType::Q8_0, rows as u32, cols as u32, &bytes).unwrap();
        let x = Rng::new(22).vec((x_row0 + m + 3) * cols);
        let y_len = (y_row0 + m + 2) * rows;
        let (bx, by) = (upload(&gpu, &x), upload(&gpu, &vec![f32::NAN; y_len]));
        let mut prog = Program::new();
        matmul::record_rows(&mut prog, &gpu, &w, (&bx, x_row0 as u32), (&by, y_row0 as u32), m as u32, MatmulCompute::F32)
            .unwrap();
        prog.run(&gpu).unwrap();
        let got = gpu.read_f32_blocking(&by, y_len).unwrap();
        let want = matmul::matmul_ref(&x[x_row0 * cols..(x_row0 + m) * cols], &deq, m, rows, cols);
        let window = &got[y_row0 * rows..(y_row0 + m) * rows];
        let err = rel_l2(window, &want);
        assert!(err < TOL_Q8_0, "{geometry:?} window rel err {err}");
        let outside = got[..y_row0 * rows].iter().chain(&got[(y_row0 + m) * rows..]);
        assert!(outside.into_iter().all(|v| v.is_nan()), "{geometry:?}: rows outside the window were written");
        let r = matmul::record_rows(
            &mut Program::new(),
            &gpu,
            &w,
            (&bx, (x_row0 + 4) as u32),
            (&by, 0),
            m as u32,
            MatmulCompute::F32,
        );
        assert!(r.is_err(), "a window past the end of x must be refused");
    }
}

/// `record_into` a column window of wider rows, storing and adding (the residual add):
/// columns outside the window keep their values.
#[test]
fn matmul_into_a_column_window_stores_and_adds() {
    for geometry in GEOMETRIES {
        let gpu = gpu_with(geometry);
        for (ty, m, rows, cols) in [(GgmlType::Q4_K, 130, 70, 512), (GgmlType::F16, 5, 66, 20)] {
            let (bytes, deq) = weight(ty, rows, cols, 31);
            let w = Weight::upload(&gpu, "w", ty, rows as u32, cols as u32, &bytes).unwrap();
            let x = Rng::new(32).vec(m * cols);
            let bx = upload(&gpu, &x);
            let want = matmul::matmul_ref(&x, &deq, m, rows, cols);
            let (stride, offset) = (rows + 9, 5);
            let y0 = Rng::new(33).vec(m * stride);
            for epilogue in [Epilogue::Store, Epilogue::Add] {
                let by = upload(&gpu, &y0);
                let out = Output { stride: stride as u32, offset: offset as u32, epilogue };
                let mut prog = Program::new();
                matmul::record_into(&mut prog, &gpu, &w, &bx, &by, out, m as u32, MatmulCompute::F32).unwrap();
                prog.run(&gpu).unwrap();
                let got = gpu.read_f32_blocking(&by, y0.len()).unwrap();
                let what = format!("{geometry:?} {ty} m {m} {epilogue:?}");
                for t in 0..m {
                    let (row, row0) = (&got[t * stride..(t + 1) * stride], &y0[t * stride..(t + 1) * stride]);
                    assert_eq!(&row[..offset], &row0[..offset], "{what}: columns before the window");
                    assert_eq!(&row[offset + rows..], &row0[offset + rows..], "{what}: columns after the window");
                }
                let window: Vec<f32> =
                    (0..m).flat_map(|t| got[t * stride + offset..t * stride + offset + rows].to_vec()).collect();
                let expected: Vec<f32> = match epilogue {
                    Epilogue::Add => (0..m * rows).map(|i| y0[(i / rows) * stride + offset + i % rows] + want[i]).collect(),
                    _ => want.clone(),
                };
                let err = rel_l2(&window, &expected);
                assert!(err < tol(ty), "{what}: rel err {err}");
            }
        }
    }
}

/// The GPU shape at Ministral 3 3B sizes (m = 512 prompt rows, k = 3072): 128 x 64 tiles of
/// 8 x 4 accumulators per invocation, within 32 KiB of workgroup memory; the CPU shape where
/// the adapter has less than the GPU shape needs, or in the CPU geometry.
#[test]
fn matmul_launch_shapes() {
    let mut caps = gpu().caps().clone();
    caps.max_workgroup_storage = 32 << 10;
    let launch = MatmulLaunch::of(Geometry::Gpu, &caps, MatmulCompute::F32);
    assert!(launch.gpu);
    assert_eq!((launch.tile_m, launch.tile_n, launch.invocations), (128, 64, 256));
    assert_eq!(launch.outputs_per_invocation(), 32);
    assert_eq!(launch.workgroup_bytes, (128 + 64) * 32 * 4);
    assert!(launch.workgroup_bytes <= 32 << 10);
    // q (3072), k/v (1024), stacked gate/up (2 x 9216).
    assert_eq!(launch.grid(3072, 512), [48, 1, 4]);
    assert_eq!(launch.grid(1024, 512), [16, 1, 4]);
    assert_eq!(launch.grid(2 * 9216, 512), [288, 1, 4]);
    // Short prompts and off-tile sizes round up; M = 1 is one row of tiles.
    assert_eq!(launch.grid(100, 129), [2, 1, 2]);
    assert_eq!(launch.grid(3072, 1), [48, 1, 1]);
    let f16 = MatmulLaunch::of(Geometry::Gpu, &caps, MatmulCompute::F16);
    assert_eq!((f16.tile_m, f16.workgroup_bytes), (128, (128 + 64) * 32 * 2));

    let cpu = MatmulLaunch::of(Geometry::Cpu, &caps, MatmulCompute::F32);
    assert_eq!((cpu.gpu, cpu.tile_m, cpu.tile_n, cpu.outputs_per_invocation()), (false, 64, 64, 16));
    assert_eq!(cpu.workgroup_bytes, 16 << 10);
    assert_eq!(cpu.grid(3072, 512), [48, 1, 8]);

    // WebGPU's default 16 KiB: f32 tiles fall back to the CPU shape, f16 tiles still fit.
    caps.max_workgroup_storage = 16 << 10;
    assert_eq!(MatmulLaunch::of(Geometry::Gpu, &caps, MatmulCompute::F32), cpu);
    assert!(MatmulLaunch::of(Geometry::Gpu, &caps, MatmulCompute::F16).gpu);

    // What `record` dispatches on a GPU-geometry device: the shape's grid and launch.
    let gpu = gpu_with(Geometry::Gpu);
    let (m, n, k) = (512u32, 3072u32, 3072u32);
    let bytes = random_blocks(GgmlType::Q4_K, (n * k / 256) as usize, 4);
    let w = Weight::upload(&gpu, "wq", GgmlType::Q4_K, n, k, &bytes).unwrap();
    let (bx, by) = (gpu.storage("x", 4 * (m * k) as u64).unwrap(), gpu.storage("y", 4 * (m * n) as u64).unwrap());
    let mut prog = Program::new();
    matmul::record(&mut prog, &gpu, &w, &bx, &by, m).unwrap();
    let [Op::Dispatch(d)] = &prog.as_gpu().unwrap().ops[..] else { panic!("one dispatch expected") };
    assert_eq!(d.workgroups, [48, 1, 4]);
    let launch = d.launch.as_ref().expect("a described launch");
    assert_eq!(launch.invocations, 256);
    assert_eq!(launch.weight.as_ref().map(|r| r.activation_bytes), Some(4 * k as u64 * 128), "X rows per workgroup");
}

#[test]
fn a_cpu_weight_written_again_is_not_read_from_its_old_repacked_form() {
    // The CPU backend's fast mode takes a Q4_K weight repacked at its first product where the
    // SIMD level has the repacked kernels (AVX-512): writing the weight's memory again must
    // reach the next product (each result bit for bit the CPU matvec's of the bytes then).
    use webvlm::backend::cpu::{self as cpu_backend, Mode, ThreadPool};
    let dev = cpu_in(Mode::Fast);
    let (ty, rows, cols, n_tok) = (GgmlType::Q4_K, 24, 512, 3);
    let (first, _) = weight(ty, rows, cols, 31);
    let (second, _) = weight(ty, rows, cols, 32);
    let x: Vec<f32> = (0..n_tok * cols).map(|i| ((i * 7 % 23) as f32 - 11.0) / 11.0).collect();
    let want = |bytes: &[u8]| {
        let w = cpu_backend::Weight::new(ty, rows, cols, bytes).unwrap();
        let mut y = vec![0.0; n_tok * rows];
        cpu_backend::matvec(&ThreadPool::new(2).unwrap(), &w, &x, &mut y, n_tok, Mode::Fast).unwrap();
        y
    };
    let w = Weight::upload(&dev, "w", ty, rows as u32, cols as u32, &first).unwrap();
    assert_eq!(run_matvec(&dev, &w, &x, n_tok), want(&first));
    assert_eq!(run_matvec(&dev, &w, &x, n_tok), want(&first));
    dev.write(&w.parts[0].buffer, 0, &second).unwrap();
    assert_eq!(run_matvec(&dev, &w, &x, n_tok), want(&second));
}
