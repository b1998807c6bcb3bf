//! RMSNorm and element-wise kernels against their CPU references, on both backends.

use crate::common;
use common::*;
use webvlm::backend::gpu::GpuError;
use webvlm::backend::{Device, Program};
use webvlm::kernels::{elementwise, norm};

/// f32 kernels with reductions: error from summation order only.
const F32_TOL: f32 = 1e-5;

/// The devices every op here runs on: the test adapter and the CPU backend.
fn devices() -> [Device; 2] {
    [gpu(), cpu()]
}

#[test]
fn rms_norm_matches_cpu_on_odd_shapes() {
    for gpu in devices() {
        check_rms_norm(&gpu);
    }
}

fn check_rms_norm(gpu: &Device) {
    let mut rng = Rng::new(1);
    for (rows, dim) in [(1, 3072), (3, 1), (5, 257), (7, 1000), (2, 4099)] {
        let x = rng.vec(rows * dim);
        let w = rng.vec(dim);
        let (bx, bw) = (upload(gpu, &x), upload(gpu, &w));
        let by = gpu.storage("y", (rows * dim * 4) as u64).unwrap();
        let mut prog = Program::new();
        norm::rms_norm(&mut prog, gpu, &bx, &bw, &by, rows as u32, dim as u32, 1e-5).unwrap();
        prog.run(gpu).unwrap();
        let got = gpu.read_f32_blocking(&by, rows * dim).unwrap();
        let want = norm::rms_norm_ref(&x, &w, dim, 1e-5);
        let err = rel_l2(&got, &want);
        assert!(err < F32_TOL, "rows {rows} dim {dim}: rel err {err}");
    }
}

#[test]
fn residual_add_and_silu_mul_match_cpu() {
    for gpu in devices() {
        check_add_and_silu_mul(&gpu);
    }
}

#[test]
fn stacked_halves_match_cpu() {
    for gpu in devices() {
        let mut rng = Rng::new(3);
        for (rows, half) in [(1usize, 7usize), (5, 256), (3, 1000)] {
            let x = rng.vec(rows * 2 * half);
            let bx = upload(&gpu, &x);
            let (gate, up): (Vec<f32>, Vec<f32>) = (
                x.chunks(2 * half).flat_map(|r| r[..half].to_vec()).collect(),
                x.chunks(2 * half).flat_map(|r| r[half..].to_vec()).collect(),
            );
            let out = gpu.storage("out", (rows * half * 4) as u64).unwrap();
            let mut prog = Program::new();
            elementwise::silu_mul_halves(&mut prog, &gpu, &bx, &out, rows as u32, half as u32).unwrap();
            prog.run(&gpu).unwrap();
            let err = rel_l2(&gpu.read_f32_blocking(&out, rows * half).unwrap(), &elementwise::silu_mul_ref(&gate, &up));
            assert!(err < F32_TOL, "silu_mul_halves {rows}x{half}: rel err {err}");

            let mut prog = Program::new();
            elementwise::copy_first_halves(&mut prog, &gpu, &bx, &out, rows as u32, half as u32).unwrap();
            prog.run(&gpu).unwrap();
            assert_eq!(gpu.read_f32_blocking(&out, rows * half).unwrap(), gate, "copy_first_halves {rows}x{half}");

            let y = rng.vec(rows * half);
            let by = upload(&gpu, &y);
            let mut prog = Program::new();
            elementwise::sigmoid_mul_second_halves(&mut prog, &gpu, &bx, &by, rows as u32, half as u32).unwrap();
            prog.run(&gpu).unwrap();
            let err = rel_l2(
                &gpu.read_f32_blocking(&by, rows * half).unwrap(),
                &elementwise::sigmoid_mul_second_halves_ref(&x, &y, half),
            );
            assert!(err < F32_TOL, "sigmoid_mul_second_halves {rows}x{half}: rel err {err}");
        }
    }
}

/// An op on a buffer of the other backend, or a CPU buffer too short for its shape, is a
/// typed error, not a panic.
#[test]
fn mismatched_buffers_are_errors() {
    let (gpu, cpu) = (gpu(), cpu());
    let (on_gpu, on_cpu) = (upload(&gpu, &[1.0; 4]), upload(&cpu, &[1.0; 4]));
    let mut prog = Program::new();
    let err = elementwise::add_inplace(&mut prog, &cpu, &on_gpu, &on_cpu, 4).unwrap_err();
    assert!(matches!(err, GpuError::WrongBackend(_)), "{err}");
    let mut prog = Program::new();
    elementwise::add_inplace(&mut prog, &cpu, &on_cpu, &on_cpu, 4).unwrap();
    let err = prog.run(&cpu).unwrap_err();
    assert!(err.to_string().contains("both read and written"), "{err}");
    let mut prog = Program::new();
    elementwise::add_inplace(&mut prog, &cpu, &on_cpu, &upload(&cpu, &[1.0; 8]), 8).unwrap();
    let err = prog.run(&cpu).unwrap_err();
    assert!(err.to_string().contains("past its 16 bytes"), "{err}");
}

fn check_add_and_silu_mul(gpu: &Device) {
    let mut rng = Rng::new(2);
    for n in [1usize, 255, 256, 257, 70_001] {
        let (a, b) = (rng.vec(n), rng.vec(n));
        let (ba, bb) = (upload(gpu, &a), upload(gpu, &b));
        let mut prog = Program::new();
        elementwise::add_inplace(&mut prog, gpu, &ba, &bb, n as u32).unwrap();
        prog.run(gpu).unwrap();
        let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_eq!(gpu.read_f32_blocking(&bb, n).unwrap(), sum, "add n={n}");

        let bb = upload(gpu, &b);
        let mut prog = Program::new();
        elementwise::silu_mul_inplace(&mut prog, gpu, &ba, &bb, n as u32).unwrap();
        prog.run(gpu).unwrap();
        let got = gpu.read_f32_blocking(&bb, n).unwrap();
        let err = rel_l2(&got, &elementwise::silu_mul_ref(&b, &a));
        assert!(err < F32_TOL, "silu_mul n={n}: rel err {err}");
    }
}
