//! The Qwen2-VL-family vision kernels (`kernels::vision_qwen`) against their CPU references:
//! LayerNorm with bias, bias add, column copy, weighted row gather, GELU (tanh) against f64.

use crate::common;
use common::*;
use webvlm::backend::{Device, Program};
use webvlm::kernels::vision_qwen::{self, Tap};

/// GPU vs CPU f32 LayerNorm (reduction order differs): max abs error on O(1) outputs.
const TOL_LN: f32 = 1e-5;
/// GELU (tanh) vs f64: absolute + relative error.
const TOL_GELU_ABS: f64 = 1e-6;
const TOL_GELU_REL: f64 = 1e-5;

fn run(gpu: &Device, prog: Program) {
    prog.run(gpu).unwrap();
}

#[test]
fn layer_norm_matches_reference() {
    let gpu = gpu();
    let mut rng = Rng::new(71);
    for (rows, dim) in [(1usize, 32usize), (7, 32), (3, 1000), (65, 257)] {
        let x: Vec<f32> = rng.vec(rows * dim).iter().map(|v| v * 4.0 + 1.5).collect();
        let (w, b) = (rng.vec(dim), rng.vec(dim));
        let (bx, bw, bb, by) = (upload(&gpu, &x), upload(&gpu, &w), upload(&gpu, &b), upload(&gpu, &vec![0.0; rows * dim]));
        let mut prog = Program::new();
        vision_qwen::layer_norm(&mut prog, &gpu, &bx, &bw, &bb, &by, rows as u32, dim as u32, 1e-6).unwrap();
        run(&gpu, prog);
        let got = gpu.read_f32_blocking(&by, rows * dim).unwrap();
        let err = max_abs(&got, &vision_qwen::layer_norm_ref(&x, &w, &b, dim, 1e-6));
        eprintln!("layer_norm {rows}x{dim}: max abs err {err:.2e}");
        assert!(err <= TOL_LN, "{rows}x{dim}: {err}");
    }
}

#[test]
fn bias_copy_and_gather_match_references() {
    let gpu = gpu();
    let mut rng = Rng::new(72);
    let (rows, dim) = (37usize, 96usize);
    let x = rng.vec(rows * dim);
    let bias = rng.vec(dim);
    let bx = upload(&gpu, &x);
    let mut prog = Program::new();
    vision_qwen::add_bias(&mut prog, &gpu, &upload(&gpu, &bias), &bx, rows as u32, dim as u32).unwrap();
    run(&gpu, prog);
    let want: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + bias[i % dim]).collect();
    assert_eq!(gpu.read_f32_blocking(&bx, rows * dim).unwrap(), want);

    let out = upload(&gpu, &vec![0.0; rows * 32]);
    let mut prog = Program::new();
    vision_qwen::copy_cols(&mut prog, &gpu, &bx, &out, rows as u32, 32, dim as u32, 64).unwrap();
    run(&gpu, prog);
    let cols: Vec<f32> = want.chunks(dim).flat_map(|r| r[64..96].to_vec()).collect();
    assert_eq!(gpu.read_f32_blocking(&out, rows * 32).unwrap(), cols);
    let mut prog = Program::new();
    assert!(vision_qwen::copy_cols(&mut prog, &gpu, &bx, &out, rows as u32, 32, dim as u32, 65).is_err());

    let k = 4;
    let taps: Vec<Tap> = (0..rows * k).map(|_| Tap { row: rng.below(rows as u64) as u32, weight: rng.uniform() }).collect();
    let out = upload(&gpu, &vec![0.0; rows * dim]);
    let mut prog = Program::new();
    let btaps = gpu.storage_with("taps", bytemuck::cast_slice(&taps)).unwrap();
    vision_qwen::gather_rows(&mut prog, &gpu, &bx, &btaps, &out, rows as u32, k as u32, dim as u32).unwrap();
    run(&gpu, prog);
    let got = gpu.read_f32_blocking(&out, rows * dim).unwrap();
    let err = max_abs(&got, &vision_qwen::gather_rows_ref(&want, &taps, k, dim));
    eprintln!("gather_rows: max abs err {err:.2e}");
    assert!(err <= 1e-6, "{err}");
}

#[test]
fn gelu_tanh_matches_f64() {
    let gpu = gpu();
    let mut rng = Rng::new(73);
    let specials = [0.0f32, -0.0, 1e-30, -1e-30, 1e-4, -1e-4, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 9.0, -9.0, 60.0, -60.0];
    for n in [1usize, 257, 70_001] {
        let mut x: Vec<f32> = rng.vec(n).iter().map(|v| v * 10.0).collect();
        for (d, s) in x.iter_mut().zip(specials) {
            *d = s;
        }
        let bx = upload(&gpu, &x);
        let mut prog = Program::new();
        vision_qwen::gelu_tanh(&mut prog, &gpu, &bx, n as u32).unwrap();
        run(&gpu, prog);
        let got = gpu.read_f32_blocking(&bx, n).unwrap();
        let want = vision_qwen::gelu_tanh_ref(&x);
        let mut worst = 0f64;
        for i in 0..n {
            let e = (got[i] as f64 - want[i]).abs();
            worst = worst.max(e);
            assert!(e <= TOL_GELU_ABS + TOL_GELU_REL * want[i].abs(), "gelu_tanh({}) = {} want {}", x[i], got[i], want[i]);
        }
        eprintln!("gelu_tanh n {n}: max abs err {worst:.2e}");
    }
}
