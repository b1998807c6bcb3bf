//! Pixtral vision kernels against their CPU references: patch unfold + matmul = the patch
//! convolution, 2D RoPE in both pair layouts (and the GGUF permutation), the 2x2 patch
//! merge, GELU (erf) against f64, and non-causal prefill attention image by image against a
//! block-diagonal reference.

use crate::common;
use common::*;
use webvlm::backend::{Device, Program};
use webvlm::gguf::GgmlType;
use webvlm::kernels::attention::{self, AttnShape, StepParams};
use webvlm::kernels::quant::Weight;
use webvlm::kernels::rope::RopeMode;
use webvlm::kernels::vision::{self, PatchGrid, Rope2dFreqs, Rope2dLayout, PATCH};
use webvlm::kernels::{elementwise, matmul};

/// Unfold and merge only move data: bit-exact.
const TOL_COPY: f32 = 0.0;
/// Unfold + tiled f32 matmul vs f64 direct convolution (588-term dot products).
const TOL_CONV_F32: f32 = 1e-5;
/// GPU vs CPU f32 RoPE (cos/sin of reduced angles): relative L2.
const TOL_ROPE2D: f32 = 2e-6;
/// Our table vs transformers' cos/sin (values printed by transformers 5.x, f32).
const TOL_TABLE: f32 = 2e-7;
/// GELU vs f64: |got - want| <= TOL_GELU_ABS + TOL_GELU_REL * |want|. The erfc fit's bound is
/// 1.2e-7 fractional; f32 rounding of x/sqrt2, x^2 and exp adds a few ulp (exp's argument
/// reaches ~-50, where its ulp error is scaled by that argument).
const TOL_GELU_ABS: f64 = 1e-7;
const TOL_GELU_REL: f64 = 1e-5;
/// Attention f32 (same limit as `kernels_attention.rs`).
const TOL_ATTN_F32: f32 = 2e-6;

fn run(gpu: &Device, prog: Program) {
    prog.run(gpu).unwrap();
}

#[test]
fn patch_unfold_then_matmul_equals_direct_convolution() {
    let gpu = gpu();
    let mut rng = Rng::new(31);
    let k = (3 * PATCH * PATCH) as usize;
    for (h, w, hidden, ty) in
        [(14, 14, 8, GgmlType::F32), (28, 42, 37, GgmlType::F32), (126, 70, 64, GgmlType::F16), (42, 154, 20, GgmlType::F16)]
    {
        let pixels = rng.vec(3 * h * w);
        let grid = PatchGrid::of_image(h as u32, w as u32, PATCH).unwrap();
        let n = grid.n_patches() as usize;
        let bp = upload(&gpu, &pixels);
        let patches = gpu.storage("patches", (n * k * 4) as u64).unwrap();
        let mut prog = Program::new();
        vision::patch_unfold(&mut prog, &gpu, &bp, &patches, 3, h as u32, w as u32, PATCH).unwrap();
        run(&gpu, prog);
        let got = gpu.read_f32_blocking(&patches, n * k).unwrap();
        let want = vision::patch_unfold_ref(&pixels, 3, h, w, PATCH as usize);
        assert!(max_abs(&got, &want) <= TOL_COPY, "unfold {h}x{w} differs");

        // The conv weight as GGUF stores it: torch [hidden][3][14][14] row-major = [hidden][588].
        let mut weight = rng.vec(hidden * k);
        let bytes: Vec<u8> = match ty {
            GgmlType::F16 => {
                weight = weight.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
                weight.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()
            }
            _ => bytemuck::cast_slice(&weight).to_vec(),
        };
        let gw = Weight::upload(&gpu, "patch_embd", ty, hidden as u32, k as u32, &bytes).unwrap();
        let y = gpu.storage("embeds", (n * hidden * 4) as u64).unwrap();
        let mut prog = Program::new();
        matmul::record(&mut prog, &gpu, &gw, &patches, &y, n as u32).unwrap();
        run(&gpu, prog);
        let got = gpu.read_f32_blocking(&y, n * hidden).unwrap();
        let conv = vision::conv2d_patch_ref(&pixels, &weight, 3, h, w, PATCH as usize, hidden);
        let err = rel_l2(&got, &conv);
        eprintln!("unfold+matmul {h}x{w} hidden {hidden} {ty:?}: rel {err:.2e}");
        assert!(err < TOL_CONV_F32, "unfold+matmul {h}x{w}: rel err {err}");
    }
}

/// (row, col), cos and sin at dims `idx`.
type TableCase = ((u32, u32), [f32; 9], [f32; 9]);

#[test]
fn pixtral_inv_freq_reproduces_transformers_cos_sin() {
    let table = vision::pixtral_inv_freq(64, 1e4);
    assert_eq!(table.len(), 32);
    // transformers 5.x PixtralVisionRotaryEmbedding(head_dim 64, theta 1e4), positions (row, col).
    let idx = [0usize, 1, 15, 16, 31, 32, 47, 48, 63];
    let cases: [TableCase; 2] = [
        (
            (3, 5),
            [-0.9899925, -0.11596616, 0.9999999, -0.82086164, 0.99999976, -0.9899925, 0.9999999, -0.82086164, 0.99999976],
            [0.14112, 0.993_253_2, 0.0005334838, -0.5711271, 0.0006667607, 0.14112, 0.0005334838, -0.5711271, 0.0006667607],
        ),
        (
            (7, 2),
            [0.7539023, -0.7004298, 0.9999992, 0.07094827, 1.0, 0.7539023, 0.9999992, 0.07094827, 1.0],
            [0.6569866, -0.7137213, 0.0012447953, 0.997480, 0.0002667043, 0.6569866, 0.0012447953, 0.997480, 0.0002667043],
        ),
    ];
    for ((row, col), cos, sin) in cases {
        for (j, &d) in idx.iter().enumerate() {
            let i = d % 32;
            let pos = if i < 16 { row } else { col };
            let angle = pos as f32 * table[i];
            assert!((angle.cos() - cos[j]).abs() <= TOL_TABLE, "cos ({row},{col}) dim {d}");
            assert!((angle.sin() - sin[j]).abs() <= TOL_TABLE, "sin ({row},{col}) dim {d}");
        }
    }
}

#[test]
fn rope_2d_matches_cpu_in_both_pair_modes() {
    let gpu = gpu();
    let mut rng = Rng::new(32);
    let freqs64 = Rope2dFreqs::upload(&gpu, 64, 1e4).unwrap();
    let freqs12 = Rope2dFreqs::upload(&gpu, 12, 1e4).unwrap();
    // (grid, heads, head_dim, fused: q/k section of a [n][3*width] QKV buffer, row0)
    let cases = [
        ((1, 1), 16, 64, false, 0),
        ((3, 5), 16, 64, false, 0),
        ((7, 4), 3, 12, true, 0),
        ((16, 9), 16, 64, true, 5),
        ((110, 3), 2, 64, false, 2),
    ];
    for ((rows, cols), n_heads, hd, fused, row0) in cases {
        let grid = PatchGrid { rows, cols };
        let freqs = if hd == 64 { &freqs64 } else { &freqs12 };
        let table = vision::pixtral_inv_freq(hd as usize, 1e4);
        for mode in [RopeMode::Adjacent, RopeMode::RotateHalf] {
            let mut layout = Rope2dLayout::dense(n_heads, hd, mode);
            if fused {
                layout.offset = n_heads * hd;
                layout.stride = 3 * n_heads * hd;
            }
            layout.row0 = row0;
            let total = ((row0 + grid.n_patches() + 1) * layout.stride) as usize;
            let x = rng.vec(total);
            let bx = upload(&gpu, &x);
            let mut prog = Program::new();
            vision::rope_2d(&mut prog, &gpu, freqs, &bx, &layout, grid).unwrap();
            run(&gpu, prog);
            let got = gpu.read_f32_blocking(&bx, total).unwrap();
            let want = vision::rope_2d_ref(&x, &layout, grid, &table);
            let err = rel_l2(&got, &want);
            eprintln!("rope_2d {rows}x{cols} heads {n_heads} hd {hd} fused {fused} row0 {row0} {mode:?}: rel {err:.2e}");
            assert!(err < TOL_ROPE2D, "rope_2d {rows}x{cols} {mode:?}: rel err {err}");
            // Rows outside the image and columns outside the section are untouched (chosen by
            // index: inside the section a rotation may round to the input on one side only).
            let (stride, lo, hi) = (layout.stride as usize, layout.offset as usize, (layout.offset + n_heads * hd) as usize);
            let rows = row0 as usize..(row0 + grid.n_patches()) as usize;
            let outside = |i: usize| !rows.contains(&(i / stride)) || !(lo..hi).contains(&(i % stride));
            assert!((0..total).filter(|&i| outside(i)).all(|i| got[i] == x[i]), "rope_2d wrote outside its rows/section");
        }
    }
}

/// llama.cpp's converter permutes each head's q/k rows: GGUF dim `2j + s` = HF dim `s*hd/2 + j`.
fn gguf_permute(x: &[f32], n_heads: usize, hd: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    for (r, row) in x.chunks(n_heads * hd).enumerate() {
        for h in 0..n_heads {
            for j in 0..hd / 2 {
                for s in 0..2 {
                    y[r * n_heads * hd + h * hd + 2 * j + s] = row[h * hd + s * hd / 2 + j];
                }
            }
        }
    }
    y
}

#[test]
fn adjacent_rope_on_gguf_permuted_rows_equals_rotate_half_on_hf_rows() {
    let gpu = gpu();
    let mut rng = Rng::new(33);
    let (n_heads, hd, grid) = (16usize, 64usize, PatchGrid { rows: 6, cols: 11 });
    let freqs = Rope2dFreqs::upload(&gpu, hd as u32, 1e4).unwrap();
    let table = vision::pixtral_inv_freq(hd, 1e4);
    let hf = rng.vec(grid.n_patches() as usize * n_heads * hd);
    // q_hf = x W_hfᵀ; the GGUF weight's rows are permuted, so q_gguf = permute(q_hf).
    let gg = gguf_permute(&hf, n_heads, hd);
    let bx = upload(&gpu, &gg);
    let mut prog = Program::new();
    let layout = Rope2dLayout::dense(n_heads as u32, hd as u32, RopeMode::Adjacent);
    vision::rope_2d(&mut prog, &gpu, &freqs, &bx, &layout, grid).unwrap();
    run(&gpu, prog);
    let got = gpu.read_f32_blocking(&bx, gg.len()).unwrap();
    let hf_layout = Rope2dLayout::dense(n_heads as u32, hd as u32, RopeMode::RotateHalf);
    let want = gguf_permute(&vision::rope_2d_ref(&hf, &hf_layout, grid, &table), n_heads, hd);
    let err = rel_l2(&got, &want);
    eprintln!("GGUF adjacent vs permuted HF rotate-half: rel {err:.2e}");
    assert!(err < TOL_ROPE2D, "rel err {err}");
    // Permuted q and k give the same scores as HF's (the permutation is the same for both).
}

#[test]
fn patch_merge_follows_unfold_channel_major_order() {
    // Hand case: hidden 2, grid 2x4, value = 10*patch + channel.
    let grid = PatchGrid { rows: 2, cols: 4 };
    let x: Vec<f32> = (0..8).flat_map(|p| [10.0 * p as f32, 10.0 * p as f32 + 1.0]).collect();
    let merged = vision::patch_merge_ref(&x, 2, grid);
    // token 0 = patches (0,0) (0,1) (1,0) (1,1) = 0, 1, 4, 5; features [c][ki][kj].
    assert_eq!(&merged[..8], &[0.0, 10.0, 40.0, 50.0, 1.0, 11.0, 41.0, 51.0]);
    assert_eq!(&merged[8..], &[20.0, 30.0, 60.0, 70.0, 21.0, 31.0, 61.0, 71.0]);

    let gpu = gpu();
    let mut rng = Rng::new(34);
    for (rows, cols, hidden) in [(2, 2, 1), (2, 4, 2), (4, 6, 37), (10, 14, 1024), (5, 7, 9), (22, 2, 64)] {
        let grid = PatchGrid { rows, cols };
        let x = rng.vec((rows * cols * hidden) as usize);
        let n = (grid.n_merged() * 4 * hidden) as usize;
        let (bx, out) = (upload(&gpu, &x), gpu.storage("merged", (n.max(1) * 4) as u64).unwrap());
        let mut prog = Program::new();
        vision::patch_merge(&mut prog, &gpu, &bx, &out, hidden, grid).unwrap();
        run(&gpu, prog);
        let got = gpu.read_f32_blocking(&out, n).unwrap();
        let want = vision::patch_merge_ref(&x, hidden as usize, grid);
        assert_eq!(want.len(), n);
        assert!(max_abs(&got, &want) <= TOL_COPY, "merge {rows}x{cols} hidden {hidden} differs");
    }
}

#[test]
fn gelu_erf_matches_f64() {
    let gpu = gpu();
    let mut rng = Rng::new(35);
    let specials = [0.0f32, -0.0, 1e-30, -1e-30, 1e-4, -1e-4, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 5.0, -5.0, 9.0, -9.0];
    for n in [1usize, 255, 257, 70_001] {
        let mut x: Vec<f32> = rng.vec(n).iter().map(|v| v * 10.0).collect();
        for (d, s) in x.iter_mut().zip(specials) {
            *d = s;
        }
        let bx = upload(&gpu, &x);
        let mut prog = Program::new();
        elementwise::gelu_inplace(&mut prog, &gpu, &bx, n as u32).unwrap();
        run(&gpu, prog);
        let got = gpu.read_f32_blocking(&bx, n).unwrap();
        let want = elementwise::gelu_ref(&x);
        let (mut worst_abs, mut worst_rel) = (0f64, 0f64);
        for i in 0..n {
            let e = (got[i] as f64 - want[i]).abs();
            worst_abs = worst_abs.max(e);
            if want[i].abs() > 1e-30 {
                worst_rel = worst_rel.max(e / want[i].abs());
            }
            assert!(e <= TOL_GELU_ABS + TOL_GELU_REL * want[i].abs(), "gelu({}) = {} want {}", x[i], got[i], want[i]);
        }
        eprintln!("gelu n {n} (|x| <= 10): max abs err {worst_abs:.2e}, max rel err {worst_rel:.2e}");
    }
}

#[test]
fn cpu_erf_reference_is_accurate() {
    // Tabulated erf values (Abramowitz & Stegun table 7.1 / high-precision references).
    for (x, want) in [
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (2.0, 0.995_322_265_018_952_7),
        (3.0, 0.999_977_909_503_001_4),
    ] {
        assert!((elementwise::erf_f64(x) - want).abs() < 1e-15, "erf({x})");
        assert!((elementwise::erf_f64(-x) + want).abs() < 1e-15, "erf(-{x})");
    }
    // erfc(5) = 1.5374597944280349e-12
    assert!((elementwise::erfc_f64(5.0) / 1.537_459_794_428_035e-12 - 1.0).abs() < 1e-13);
    // Continuity at the 2.5 switch.
    assert!((elementwise::erfc_f64(2.5 - 1e-12) - elementwise::erfc_f64(2.5)).abs() < 1e-15);
}

/// Block-diagonal non-causal attention over images concatenated in one sequence.
fn block_diag_ref(q: &[f32], k: &[f32], v: &[f32], sizes: &[usize], n_head: usize, hd: usize) -> Vec<f32> {
    let row = n_head * hd;
    let image: Vec<usize> = sizes.iter().enumerate().flat_map(|(i, &n)| std::iter::repeat_n(i, n)).collect();
    let n = image.len();
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0f32; n * row];
    for t in 0..n {
        for h in 0..n_head {
            let qt = &q[t * row + h * hd..][..hd];
            let keys: Vec<usize> = (0..n).filter(|&s| image[s] == image[t]).collect();
            let scores: Vec<f64> = keys
                .iter()
                .map(|&s| qt.iter().zip(&k[s * row + h * hd..][..hd]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale)
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = w.iter().sum();
            for d in 0..hd {
                let acc: f64 = keys.iter().zip(&w).map(|(&s, wi)| wi * v[s * row + h * hd + d] as f64).sum();
                out[t * row + h * hd + d] = (acc / z) as f32;
            }
        }
    }
    out
}

#[test]
fn noncausal_prefill_image_by_image_equals_block_diagonal_attention() {
    let gpu = gpu();
    let mut rng = Rng::new(36);
    let (n_head, hd) = (16u32, 64u32);
    let row = (n_head * hd) as usize;
    let grids = [PatchGrid { rows: 3, cols: 5 }, PatchGrid { rows: 4, cols: 9 }];
    let sizes: Vec<usize> = grids.iter().map(|g| g.n_patches() as usize).collect();
    let total: usize = sizes.iter().sum();
    let q: Vec<f32> = rng.vec(total * row).iter().map(|v| v * 2.0).collect();
    let (k, v) = (rng.vec(total * row), rng.vec(total * row));
    let want = block_diag_ref(&q, &k, &v, &sizes, n_head as usize, hd as usize);

    // Each image is its own sequence: kv_start 0, its patches as the "cache" rows.
    let mut prog = Program::new();
    let mut outs = Vec::new();
    let mut start = 0;
    let mut keep = Vec::new();
    for &n in &sizes {
        let rows = start * row..(start + n) * row;
        let (bq, bk, bv) = (upload(&gpu, &q[rows.clone()]), upload(&gpu, &k[rows.clone()]), upload(&gpu, &v[rows]));
        let out = gpu.storage("out", (n * row * 4) as u64).unwrap();
        let step = StepParams::create_buffer(&gpu).unwrap();
        StepParams::new(0, n as u32, 0).write(&gpu, &step).unwrap();
        let shape = AttnShape { causal: false, ..AttnShape::new(n_head, n_head, hd, n as u32) };
        attention::attention_prefill(&mut prog, &gpu, &shape, &step, &bq, &bk, &bv, &out).unwrap();
        outs.push((out, n));
        keep.push((bq, bk, bv, step));
        start += n;
    }
    run(&gpu, prog);
    let got: Vec<f32> = outs.iter().flat_map(|(b, n)| gpu.read_f32_blocking(b, n * row).unwrap()).collect();
    let err = rel_l2(&got, &want);
    eprintln!("vision attention {sizes:?} patches, 16 heads x 64: rel {err:.2e}");
    assert!(err < TOL_ATTN_F32, "block-diagonal attention rel err {err}");
}
