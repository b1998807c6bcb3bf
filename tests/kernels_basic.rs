//! RMSNorm and element-wise kernels against their CPU references.

mod common;
use common::*;
use webvlm::gpu::Program;
use webvlm::kernels::{elementwise, norm};

/// f32 kernels with reductions: error from summation order only.
const F32_TOL: f32 = 1e-5;

#[test]
fn rms_norm_matches_cpu_on_odd_shapes() {
    let gpu = gpu();
    let mut rng = Rng::new(1);
    for (rows, dim) in [(1, 3072), (3, 1), (5, 257), (7, 1000), (2, 4099)] {
        let x = rng.vec(rows * dim);
        let w = rng.vec(dim);
        let (bx, bw) = (upload(&gpu, &x), upload(&gpu, &w));
        let by = gpu.storage("y", (rows * dim * 4) as u64).unwrap();
        let mut prog = Program::new();
        norm::rms_norm(&mut prog, &gpu, &bx, &bw, &by, rows as u32, dim as u32, 1e-5).unwrap();
        prog.run(&gpu).unwrap();
        let got = gpu.read_f32_blocking(&by, rows * dim).unwrap();
        let want = norm::rms_norm_ref(&x, &w, dim, 1e-5);
        let err = rel_l2(&got, &want);
        assert!(err < F32_TOL, "rows {rows} dim {dim}: rel err {err}");
    }
}

#[test]
fn residual_add_and_silu_mul_match_cpu() {
    let gpu = gpu();
    let mut rng = Rng::new(2);
    for n in [1usize, 255, 256, 257, 70_001] {
        let (a, b) = (rng.vec(n), rng.vec(n));
        let (ba, bb) = (upload(&gpu, &a), upload(&gpu, &b));
        let mut prog = Program::new();
        elementwise::add_inplace(&mut prog, &gpu, &ba, &bb, n as u32).unwrap();
        prog.run(&gpu).unwrap();
        let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_eq!(gpu.read_f32_blocking(&bb, n).unwrap(), sum, "add n={n}");

        let bb = upload(&gpu, &b);
        let mut prog = Program::new();
        elementwise::silu_mul_inplace(&mut prog, &gpu, &ba, &bb, n as u32).unwrap();
        prog.run(&gpu).unwrap();
        let got = gpu.read_f32_blocking(&bb, n).unwrap();
        let err = rel_l2(&got, &elementwise::silu_mul_ref(&b, &a));
        assert!(err < F32_TOL, "silu_mul n={n}: rel err {err}");
    }
}
