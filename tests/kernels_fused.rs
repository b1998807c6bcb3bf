//! The fused decode paths against CPU references, in both kernel geometries (the GPU shape
//! forced on the CPU adapter, and the CPU shape): matvec epilogues (store into a column
//! window, residual add, SiLU-gated product of a stacked [gate; up] weight), the tiled
//! matmul's add epilogue, the stacked-halves activation, and weights stacked at load
//! (`load_stacked`, eager and streamed). Also the launch geometry at Ministral 3 3B shapes.

use crate::common;
use common::*;
use webvlm::backend::gpu::matvec::MatvecLaunch;
use webvlm::backend::gpu::{Geometry, Gpu, GpuOptions};
use webvlm::backend::{Buffer, Device, Program};
use webvlm::gguf::quant::quantize_q8_0;
use webvlm::gguf::{dequantize_to_vec, random_blocks, GgmlType, GgufWriter};
use webvlm::kernels::elementwise::{self, silu_mul_ref};
use webvlm::kernels::matmul::{self, MatmulCompute};
use webvlm::kernels::matvec::{self, matvec_ref, Epilogue, Output};
use webvlm::kernels::quant::Weight;
use webvlm::source::{load_stacked, Eager, GgufBytes, GgufStream, LoadQuant, Stacked, WeightLoader};

/// f32 summation order only (as the plain matvec tests).
const TOL: f32 = 1e-5;

/// Both geometries, the GPU one with and without native subgroup reductions.
const SHAPES: [(Geometry, bool); 3] = [(Geometry::Gpu, true), (Geometry::Gpu, false), (Geometry::Cpu, false)];

/// One type per decoder path: generic (F32, F16, Q5_K), block (Q8_0, Q4_0 paired, Q4_K, Q6_K).
const TYPES: [GgmlType; 7] =
    [GgmlType::F32, GgmlType::F16, GgmlType::Q5_K, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K];

fn gpu_with(geometry: Geometry, allow_subgroups: bool) -> Device {
    Device::Gpu(
        Gpu::new_blocking(GpuOptions { geometry: Some(geometry), allow_subgroups, ..GpuOptions::default() })
            .expect("a GPU adapter"),
    )
}

fn random_weight(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let n = rows * cols;
    let bytes = match ty {
        GgmlType::F32 => bytemuck::cast_slice(&Rng::new(seed).vec(n)).to_vec(),
        GgmlType::F16 => Rng::new(seed).vec(n).iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        _ => random_blocks(ty, n / ty.block_size(), seed),
    };
    let deq = dequantize_to_vec(ty, &bytes, n).unwrap();
    (bytes, deq)
}

fn cols_of(ty: GgmlType) -> usize {
    if ty.block_size() == 256 {
        512
    } else {
        320
    }
}

/// Runs `record` on a fresh program with `y` preset to `y0`; returns y.
fn run(gpu: &Device, y0: &[f32], record: impl FnOnce(&mut Program, &Buffer)) -> Vec<f32> {
    let y = upload(gpu, y0);
    let mut prog = Program::new();
    record(&mut prog, &y);
    prog.run(gpu).unwrap();
    gpu.read_f32_blocking(&y, y0.len()).unwrap()
}

/// Each GPU launch shape, then the CPU backend (exact mode), with a name for messages.
fn devices() -> Vec<(Device, String)> {
    let mut devices: Vec<(Device, String)> = SHAPES
        .into_iter()
        .map(|(geometry, subgroups)| {
            let gpu = gpu_with(geometry, subgroups);
            assert_eq!(gpu.caps().geometry, geometry);
            let name = format!("{geometry:?}{}", if gpu.caps().subgroups { " + subgroups" } else { "" });
            (gpu, name)
        })
        .collect();
    devices.push((cpu(), "CPU backend".into()));
    devices
}

#[test]
fn matvec_epilogues_match_cpu_in_both_geometries() {
    for (gpu, geometry) in devices() {
        // 38 rows: 2 rows per thread in the GPU shape's block path; 2050: 4.
        for (ty, rows) in TYPES.into_iter().flat_map(|ty| [(ty, 38), (ty, 2050)]) {
            let (cols, n_tok) = (cols_of(ty), 2);
            let (bytes, deq) = random_weight(ty, rows, cols, 5);
            let w = Weight::upload(&gpu, "w", ty, rows as u32, cols as u32, &bytes).unwrap();
            let x = Rng::new(6).vec(n_tok * cols);
            let bx = upload(&gpu, &x);
            let want = matvec_ref(&deq, rows, cols, &x, n_tok);
            let what = format!("{geometry} {ty} {rows} rows");

            // Store into columns 3..3+rows of wider rows: the other columns keep their values.
            let (stride, offset) = (rows + 12, 3);
            let y0 = Rng::new(7).vec(n_tok * stride);
            let out = Output { stride: stride as u32, offset: offset as u32, epilogue: Epilogue::Store };
            let got = run(&gpu, &y0, |p, y| matvec::record_into(p, &gpu, &w, &bx, y, out, n_tok as u32).unwrap());
            for t in 0..n_tok {
                let row = &got[t * stride..(t + 1) * stride];
                assert_eq!(&row[..offset], &y0[t * stride..t * stride + offset], "{what}: columns before the window");
                assert_eq!(&row[offset + rows..], &y0[t * stride + offset + rows..(t + 1) * stride], "{what}: after it");
                let err = rel_l2(&row[offset..offset + rows], &want[t * rows..(t + 1) * rows]);
                assert!(err < TOL, "{what} store: rel L2 {err:.2e}");
            }

            // Residual add: y = y0 + W x.
            let y0 = Rng::new(8).vec(n_tok * rows);
            let added: Vec<f32> = y0.iter().zip(&want).map(|(a, b)| a + b).collect();
            let got = run(&gpu, &y0, |p, y| {
                matvec::record_into(p, &gpu, &w, &bx, y, Output::dense(&w, Epilogue::Add), n_tok as u32).unwrap()
            });
            let err = rel_l2(&got, &added);
            assert!(err < TOL, "{what} add: rel L2 {err:.2e}");

            // SiLU-gated product: rows 0..19 gate, 19..38 up.
            let half = rows / 2;
            let glu: Vec<f32> = (0..n_tok)
                .flat_map(|t| silu_mul_ref(&want[t * rows..t * rows + half], &want[t * rows + half..(t + 1) * rows]))
                .collect();
            let got = run(&gpu, &vec![f32::NAN; n_tok * half], |p, y| {
                matvec::record_into(p, &gpu, &w, &bx, y, Output::dense(&w, Epilogue::SiluMul), n_tok as u32).unwrap()
            });
            let err = rel_l2(&got, &glu);
            assert!(err < TOL, "{what} SiLU-gated: rel L2 {err:.2e}");
        }
    }
}

#[test]
fn silu_gated_matvec_refuses_a_weight_it_cannot_pair() {
    let gpu = gpu();
    let (bytes, _) = random_weight(GgmlType::F32, 3, 32, 1);
    let w = Weight::upload(&gpu, "odd", GgmlType::F32, 3, 32, &bytes).unwrap();
    let (x, y) = (upload(&gpu, &[0.0; 32]), upload(&gpu, &[0.0; 4]));
    let out = Output { stride: 1, offset: 0, epilogue: Epilogue::SiluMul };
    assert!(matvec::record_into(&mut Program::new(), &gpu, &w, &x, &y, out, 1).is_err(), "odd row count");
    let err = matmul::record_into(&mut Program::new(), &gpu, &w, &x, &y, out, 2, MatmulCompute::F32);
    assert!(err.is_err(), "matmul has no SiLU-gated epilogue");
}

#[test]
fn matmul_add_epilogue_and_stacked_halves_match_cpu() {
    for dev in [gpu(), cpu()] {
        check_matmul_add_and_halves(&dev);
    }
}

fn check_matmul_add_and_halves(gpu: &Device) {
    let (rows, cols, m) = (70, 96, 5);
    let (bytes, deq) = random_weight(GgmlType::Q8_0, rows, cols, 9);
    let w = Weight::upload(gpu, "w", GgmlType::Q8_0, rows as u32, cols as u32, &bytes).unwrap();
    let x = Rng::new(10).vec(m * cols);
    let bx = upload(gpu, &x);
    let want = matvec_ref(&deq, rows, cols, &x, m);
    let y0 = Rng::new(11).vec(m * rows);
    let got = run(gpu, &y0, |p, y| {
        matmul::record_into(p, gpu, &w, &bx, y, Output::dense(&w, Epilogue::Add), m as u32, MatmulCompute::F32).unwrap()
    });
    let added: Vec<f32> = y0.iter().zip(&want).map(|(a, b)| a + b).collect();
    assert!(rel_l2(&got, &added) < TOL, "matmul add: rel L2 {:.2e}", rel_l2(&got, &added));

    // silu_mul_halves over the [m][2 * 35] product: out[t][r] = silu(g) * u.
    let half = rows / 2;
    let by = upload(gpu, &want);
    let got = run(gpu, &vec![f32::NAN; m * half], |p, out| {
        elementwise::silu_mul_halves(p, gpu, &by, out, m as u32, half as u32).unwrap()
    });
    let glu: Vec<f32> =
        (0..m).flat_map(|t| silu_mul_ref(&want[t * rows..t * rows + half], &want[t * rows + half..(t + 1) * rows])).collect();
    assert!(rel_l2(&got, &glu) < 1e-6, "silu_mul_halves: rel L2 {:.2e}", rel_l2(&got, &glu));
}

/// Qwen3.5's gated attention: the query out of each head's `[q | gate]` row, and the
/// attention output times sigmoid(gate).
#[test]
fn qwen35_gate_halves() {
    let gpu = common::gpu();
    let (rows, half) = (7usize, 12usize);
    let x = Rng::new(41).vec(rows * 2 * half);
    let y = Rng::new(42).vec(rows * half);
    let bx = upload(&gpu, &x);
    let got = run(&gpu, &vec![f32::NAN; rows * half], |p, out| {
        elementwise::copy_first_halves(p, &gpu, &bx, out, rows as u32, half as u32).unwrap()
    });
    let want: Vec<f32> = x.chunks(2 * half).flat_map(|r| r[..half].to_vec()).collect();
    assert_eq!(got, want);
    let got =
        run(&gpu, &y, |p, out| elementwise::sigmoid_mul_second_halves(p, &gpu, &bx, out, rows as u32, half as u32).unwrap());
    let want = elementwise::sigmoid_mul_second_halves_ref(&x, &y, half);
    assert!(rel_l2(&got, &want) < 1e-6, "sigmoid_mul_second_halves: rel L2 {:.2e}", rel_l2(&got, &want));
}

/// A GGUF of three matrices of 64 columns: `a` (Q8_0, 6 rows), `b` (Q8_0, 4 rows), `c` (F32,
/// 4 rows).
fn three_matrices() -> (Vec<u8>, Vec<Vec<f32>>) {
    let cols = 64;
    let mut writer = GgufWriter::new();
    let mut values = Vec::new();
    for (i, (name, rows, ty)) in [("a", 6, GgmlType::Q8_0), ("b", 4, GgmlType::Q8_0), ("c", 4, GgmlType::F32)].iter().enumerate()
    {
        let v = Rng::new(20 + i as u64).vec(rows * cols);
        let bytes = match ty {
            GgmlType::Q8_0 => quantize_q8_0(&v).unwrap(),
            _ => bytemuck::cast_slice(&v).to_vec(),
        };
        values.push(dequantize_to_vec(*ty, &bytes, rows * cols).unwrap());
        writer.add_tensor(*name, &[cols as u64, *rows as u64], *ty, bytes).unwrap();
    }
    (writer.write().unwrap(), values)
}

/// The product of every matrix of `stack` side by side, against the separate references.
fn check_stacked_product(gpu: &Device, stack: &Stacked, refs: &[&Vec<f32>], what: &str) {
    let cols = 64;
    let x = Rng::new(30).vec(cols);
    let width: usize = refs.iter().map(|r| r.len() / cols).sum();
    let want: Vec<f32> = refs.iter().flat_map(|r| matvec_ref(r, r.len() / cols, cols, &x, 1)).collect();
    let bx = upload(gpu, &x);
    let mut got = vec![f32::NAN; width];
    let mut offset = 0;
    for w in stack.weights() {
        let out = Output { stride: width as u32, offset, epilogue: Epilogue::Store };
        got = run(gpu, &got, |p, y| matvec::record_into(p, gpu, w, &bx, y, out, 1).unwrap());
        offset += w.rows;
    }
    assert!(rel_l2(&got, &want) < TOL, "{what}: rel L2 {:.2e}", rel_l2(&got, &want));
}

#[test]
fn matrices_of_one_type_are_stacked_at_load_eager_and_streamed() {
    let gpu = gpu();
    let (file, values) = three_matrices();
    let source = GgufBytes::parse(file.clone()).unwrap();

    let mut eager = Eager(&source);
    let same = load_stacked(&gpu, &mut eager, "ab", &[("a", 6), ("b", 4)], 64, LoadQuant::Keep).unwrap();
    assert!(same.one().is_some_and(|w| w.rows == 10 && w.label == "ab"), "same type: one weight");
    check_stacked_product(&gpu, &same, &[&values[0], &values[1]], "eager stack");
    let mixed = load_stacked(&gpu, &mut eager, "ac", &[("a", 6), ("c", 4)], 64, LoadQuant::Keep).unwrap();
    assert_eq!(mixed.weights().len(), 2, "Q8_0 and F32 stay apart");
    check_stacked_product(&gpu, &mixed, &[&values[0], &values[2]], "eager separate");
    // Runs of one type stack: [a; b] and c.
    let runs = load_stacked(&gpu, &mut eager, "abc", &[("a", 6), ("b", 4), ("c", 4)], 64, LoadQuant::Keep).unwrap();
    let shapes: Vec<_> = runs.weights().iter().map(|w| (w.label.as_str(), w.rows)).collect();
    assert_eq!(shapes, [("a+b", 10), ("c", 4)]);
    check_stacked_product(&gpu, &runs, &[&values[0], &values[1], &values[2]], "eager runs");
    // Requantized to one type at load, they stack again.
    let requant = load_stacked(&gpu, &mut eager, "ac8", &[("a", 6), ("c", 4)], 64, LoadQuant::Q8_0).unwrap();
    assert!(requant.one().is_some_and(|w| w.ty == GgmlType::Q8_0), "both Q8_0 after requantization");
    let err = load_stacked(&gpu, &mut eager, "bad", &[("a", 5)], 64, LoadQuant::Keep);
    assert!(err.is_err(), "wrong row count");

    // The streaming loader fills the stack as the bytes arrive, in small chunks.
    let mut stream = GgufStream::new();
    let mut at = 0;
    while !stream.push_header(&file[at..(at + 64).min(file.len())]).unwrap() {
        at += 64;
    }
    let streamed = load_stacked(&gpu, &mut stream, "ab", &[("a", 6), ("b", 4)], 64, LoadQuant::Keep).unwrap();
    stream.seal(&gpu).unwrap();
    for chunk in file[stream.pushed() as usize..].chunks(100) {
        stream.push(&gpu, chunk).unwrap();
    }
    stream.finish().unwrap();
    assert!(streamed.one().is_some(), "streamed: one weight");
    check_stacked_product(&gpu, &streamed, &[&values[0], &values[1]], "streamed stack");
    let _ = stream.metadata();
}

/// At Ministral 3 3B shapes (d 3072, q 4096, kv 1024, ff 9216) the GPU shape launches at
/// least 512 workgroups for every per-layer matrix of a decode step, in Q4_K and Q4_0
/// alike; the CPU shape keeps few, wide workgroups.
#[test]
fn gpu_geometry_fills_a_large_gpu_at_3b_shapes() {
    let gpu = gpu();
    for ty in [GgmlType::Q4_K, GgmlType::Q4_0, GgmlType::Q6_K, GgmlType::Q8_0] {
        // (rows, cols, epilogue): stacked qkv, [q; k] and v apart (another type), wo, stacked
        // gate/up, down.
        for (rows, cols, epilogue) in [
            (6144, 3072, Epilogue::Store),
            (5120, 3072, Epilogue::Store),
            (1024, 3072, Epilogue::Store),
            (3072, 4096, Epilogue::Add),
            (18432, 3072, Epilogue::SiluMul),
            (3072, 9216, Epilogue::Add),
        ] {
            let w = Weight::allocate(&gpu, "w", ty, rows, cols, gpu.caps().part_limit()).unwrap();
            let outputs = if epilogue == Epilogue::SiluMul { rows / 2 } else { rows };
            let launch = MatvecLaunch::of(Geometry::Gpu, &w);
            let workgroups = outputs.div_ceil(launch.outputs_per_workgroup(epilogue));
            assert!(workgroups >= 512, "{ty} {rows}x{cols}: {workgroups} workgroups");
            assert!(launch.rows_per_thread <= 4 && launch.invocations == 64, "{launch:?}");
            let cpu = MatvecLaunch::of(Geometry::Cpu, &w);
            assert!(outputs.div_ceil(cpu.outputs_per_workgroup(epilogue)) < workgroups, "{ty}: the CPU shape is wider");
        }
    }
}

/// One dispatch (on the CPU backend, one op) over fused q|k|v rows gives exactly what
/// `rope_inplace` on q and `rope_kv_store` on k and v give (both checked against the CPU in
/// kernels_attention.rs): both pair layouts, full and partial rotation, the query scaling, f32
/// and f16 caches, prefill rows and a decode row.
#[test]
fn fused_rope_and_cache_store_equal_the_separate_kernels() {
    for gpu in [gpu(), cpu()] {
        fused_rope_equals_separate_kernels_on(&gpu);
    }
}

fn fused_rope_equals_separate_kernels_on(dev: &Device) {
    use webvlm::kernels::attention::{KvDtype, StepParams};
    use webvlm::kernels::rope::{self, QScale, QkvRope, RopeFreqs, RopeLayout, RopeMode, Yarn};
    let (n_q, n_kv, hd, max_ctx) = (4u32, 2u32, 64u32, 8u32);
    for n_tok in [3u32, 1] {
        let width = (n_q + 2 * n_kv) * hd;
        let qkv = Rng::new(40).vec((n_tok * width) as usize);
        let step = StepParams::create_buffer(dev).unwrap();
        StepParams::new(2, n_tok, 70_000).write(dev, &step).unwrap();
        let q_scale = QScale { beta: 0.1, orig_ctx: 16384 };
        let tables = [
            (rope::rope_table(hd as usize, 1e6, Some(&Yarn::ministral3())), RopeMode::Adjacent),
            (rope::rope_table(hd as usize / 2, 1e4, None), RopeMode::RotateHalf),
        ];
        for (table, mode) in &tables {
            let freqs = RopeFreqs::upload(dev, table).unwrap();
            let q = RopeLayout { stride: width, ..RopeLayout::dense(n_q, hd, n_tok, *mode) };
            let k = RopeLayout { n_heads: n_kv, offset: n_q * hd, ..q };
            let v = RopeLayout { offset: (n_q + n_kv) * hd, ..k };
            for kv in [KvDtype::F32, KvDtype::F16] {
                let caches = || {
                    let bytes = kv.cache_bytes(max_ctx, n_kv * hd);
                    (dev.storage("k", bytes).unwrap(), dev.storage("v", bytes).unwrap())
                };
                let words = (kv.cache_bytes(max_ctx, n_kv * hd) / 4) as usize;
                let read = |b: &Buffer, n: usize| -> Vec<u32> {
                    dev.read_f32_blocking(b, n).unwrap().iter().map(|v| v.to_bits()).collect()
                };

                let (sep, (sk, sv)) = (upload(dev, &qkv), caches());
                let mut prog = Program::new();
                rope::rope_inplace(&mut prog, dev, &step, &freqs, &sep, &q, q_scale).unwrap();
                rope::rope_kv_store(&mut prog, dev, &step, &freqs, &sep, &k, &sep, &v, &sk, &sv, kv).unwrap();
                prog.run(dev).unwrap();

                // With a second sequence in the op: the same rows, two cache rows on.
                let (fused, (fk, fv)) = (upload(dev, &qkv), caches());
                let (other, (ok, ov), other_step) = (upload(dev, &qkv), caches(), StepParams::create_buffer(dev).unwrap());
                StepParams::new(4, n_tok, 70_002).write(dev, &other_step).unwrap();
                let layout = QkvRope { n_q_heads: n_q, k, v_offset: v.offset, q_scale };
                let seq = |step, qkv, k_cache, v_cache| rope::QkvSeq { step, qkv, layout, k_cache, v_cache };
                let mut prog = Program::new();
                let seqs = [seq(&step, &fused, &fk, &fv), seq(&other_step, &other, &ok, &ov)];
                rope::rope_qkv_store(&mut prog, dev, &freqs, kv, &seqs).unwrap();
                prog.run(dev).unwrap();
                let (alone, (ak, av)) = (upload(dev, &qkv), caches());
                let mut prog = Program::new();
                rope::rope_qkv_store(&mut prog, dev, &freqs, kv, &[seq(&other_step, &alone, &ak, &av)]).unwrap();
                prog.run(dev).unwrap();

                let what = format!("{mode:?} {kv:?} {n_tok} rows");
                assert_eq!(read(&fused, qkv.len()), read(&sep, qkv.len()), "{what}: rotated q (and untouched k, v)");
                assert_eq!(read(&fk, words), read(&sk, words), "{what}: k cache");
                assert_eq!(read(&fv, words), read(&sv, words), "{what}: v cache");
                assert!(read(&fk, words).iter().any(|&w| w != 0), "{what}: the cache was written");
                let rows = |[q, k, v]: [&Buffer; 3]| (read(q, qkv.len()), read(k, words), read(v, words));
                let (with, apart) = (rows([&other, &ok, &ov]), rows([&alone, &ak, &av]));
                assert!(with == apart, "{what}: the second sequence as it is alone");
            }
        }
    }
}
