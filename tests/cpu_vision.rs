//! The CPU backend's embedding, cross-attention and vision ops
//! (`webvlm::backend::cpu::{embedding, cross_attention, vision, vision_qwen, vision_mllama}`) against the CPU references
//! of their GPU counterparts (`kernels::*::*_ref`), at every SIMD level this machine has and
//! {1, 2, 3} threads, on random inputs and shapes that are multiples of nothing nice. No GPU.
//!
//! Limits are about twice the largest error measured on x86-64 (the figure is in each
//! comment), or exact where the op only moves values.

use crate::cpu_common;

use cpu_common::{activations, pools};
use webvlm::backend::cpu::cross_attention::{cross_attention, gated_add};
use webvlm::backend::cpu::embedding::embedding;
use webvlm::backend::cpu::simd::{self, Simd};
use webvlm::backend::cpu::vision::{conv2d_patch, patch_merge, patch_unfold, rope_2d};
use webvlm::backend::cpu::{vision_mllama, vision_qwen};
use webvlm::backend::cpu::{Mode, ShapeError, ThreadPool, Weight};
use webvlm::gguf::{dequantize_to_vec, random_blocks, GgmlType, SplitMix64};
use webvlm::kernels::cross_attention::{cross_attention_ref, gated_add_ref, CrossAttnShape};
use webvlm::kernels::embedding::embedding_ref;
use webvlm::kernels::rope::RopeMode;
use webvlm::kernels::vision::{
    conv2d_patch_ref, patch_merge_ref, patch_unfold_ref, pixtral_inv_freq, rope_2d_ref, PatchGrid, Rope2dLayout,
};
use webvlm::kernels::vision_mllama::{assemble_ref, gated_pos_ref, scatter_cols_ref, tile_add_ref};
use webvlm::kernels::vision_qwen::{gather_rows_ref, Tap};

/// Every (pool, SIMD level) pair.
fn cases() -> Vec<(ThreadPool, Simd)> {
    pools()
        .into_iter()
        .flat_map(|p| Simd::available().into_iter().map(move |l| (ThreadPool::new(p.threads()).unwrap(), l)))
        .collect()
}

/// `max |got - want| / max |want|`.
fn rel_max(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let err = got.iter().zip(want).map(|(&a, &b)| (a as f64 - b as f64).abs()).fold(0.0, f64::max);
    let norm = want.iter().map(|&b| (b as f64).abs()).fold(0.0, f64::max);
    err / norm
}

/// Checks `err <= limit` and reports it.
fn report(what: &str, err: f64, limit: f64) {
    eprintln!("{what}: {err:.2e} (limit {limit:.0e})");
    assert!(err <= limit, "{what}: error {err:.3e} over {limit:.0e}");
}

// ---- embedding ----

/// Every supported format: rows dequantize exactly as `dequantize_to_vec` does, out-of-range
/// ids give zero rows. 333 ids over 77 rows (some past the end), 2 blocks of 256 per row.
#[test]
fn embedding_matches_ref() {
    let (rows, cols, n) = (77, 512, 333);
    let mut rng = SplitMix64::new(7);
    let ids: Vec<u32> = (0..n).map(|_| (rng.next_u64() % (rows as u64 + 5)) as u32).collect();
    assert!(ids.iter().any(|&i| i as usize >= rows));
    for ty in GgmlType::SUPPORTED {
        let bytes = random_blocks(ty, rows * cols / ty.block_size(), ty.id() as u64);
        let w = Weight::new(ty, rows, cols, &bytes).unwrap();
        let want = embedding_ref(&dequantize_to_vec(ty, &bytes, rows * cols).unwrap(), cols, &ids);
        for (pool, level) in cases() {
            let mut out = vec![f32::NAN; n * cols];
            simd::with_level(level, || embedding(&pool, &w, &ids, &mut out)).unwrap().unwrap();
            assert!(out.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty} {level:?} {}", pool.threads());
        }
    }
}

#[test]
fn embedding_rejects_bad_shapes() {
    let pool = ThreadPool::new(1).unwrap();
    let bytes = random_blocks(GgmlType::Q8_0, 4, 1);
    let w = Weight::new(GgmlType::Q8_0, 2, 64, &bytes).unwrap();
    let err = embedding(&pool, &w, &[0, 1, 2], &mut [0.0; 128]).unwrap_err();
    assert!(matches!(err, ShapeError::Len { what: "out", got: 128, want: 192, .. }), "{err}");
    // No ids: nothing to do.
    embedding(&pool, &w, &[], &mut []).unwrap();
}

// ---- cross attention ----

fn random(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

/// GQA and MHA, odd head dims and tile sizes, q rows wider than the heads; the mask rows
/// cover all tiles, one tile, none (zero row) and random subsets.
#[test]
fn cross_attention_matches_ref() {
    // (n_tok, n_head, n_kv_head, head_dim, q pad, n_tiles, tile_keys)
    let shapes = [(7, 4, 2, 37, 3, 3, 41), (3, 6, 6, 64, 0, 4, 101), (19, 8, 1, 24, 5, 1, 33)];
    for (n_tok, n_head, n_kv, hd, pad, n_tiles, tile_keys) in shapes {
        let q_stride = n_head * hd + pad;
        let s = CrossAttnShape {
            n_tok: n_tok as u32,
            n_head: n_head as u32,
            n_kv_head: n_kv as u32,
            head_dim: hd as u32,
            q_stride: q_stride as u32,
            n_tiles: n_tiles as u32,
            tile_keys: tile_keys as u32,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let seed = (n_tok * 1000 + hd) as u64;
        let q = random(n_tok * q_stride, -2.0, 2.0, seed);
        let k = random(n_tiles * tile_keys * n_kv * hd, -2.0, 2.0, seed + 1);
        let v = random(n_tiles * tile_keys * n_kv * hd, -1.0, 1.0, seed + 2);
        let mut rng = SplitMix64::new(seed + 3);
        let mask: Vec<u32> = (0..n_tok * n_tiles)
            .map(|i| match i / n_tiles {
                0 => 1,
                1 => (i % n_tiles == n_tiles - 1) as u32,
                2 => 0,
                _ => (rng.next_u64() % 2) as u32,
            })
            .collect();
        let want = cross_attention_ref(&s, &q, &k, &v, &mask);
        for (pool, level) in cases() {
            let mut out = vec![f32::NAN; n_tok * n_head * hd];
            simd::with_level(level, || cross_attention(&pool, &s, &q, &k, &v, &mask, &mut out)).unwrap().unwrap();
            // Token 2 sees no tile: zeros, as the reference.
            assert!(out[2 * n_head * hd..3 * n_head * hd].iter().all(|&x| x == 0.0));
            // Measured 4.5e-7 (101 keys a tile, f32 sums).
            report(
                &format!("cross_attention {n_tok}x{n_head}/{n_kv}x{hd} {level:?} {}", pool.threads()),
                rel_max(&out, &want),
                1e-6,
            );
        }
    }
}

#[test]
fn cross_attention_rejects_bad_shapes() {
    let pool = ThreadPool::new(1).unwrap();
    let s = CrossAttnShape { n_tok: 2, n_head: 3, n_kv_head: 2, head_dim: 8, q_stride: 24, n_tiles: 2, tile_keys: 5, scale: 1.0 };
    let (q, kv) = (vec![0.0; 48], vec![0.0; 2 * 5 * 16]);
    let err = cross_attention(&pool, &s, &q, &kv, &kv, &[1; 4], &mut [0.0; 48]).unwrap_err();
    assert!(matches!(err, ShapeError::Invalid { .. }), "{err}");
    let s = CrossAttnShape { n_head: 2, q_stride: 16, ..s };
    let err = cross_attention(&pool, &s, &q[..32], &kv, &kv, &[1; 3], &mut [0.0; 32]).unwrap_err();
    assert!(matches!(err, ShapeError::Len { what: "mask", .. }), "{err}");
}

/// With and without the row mask; the f64 reference.
#[test]
fn gated_add_matches_ref() {
    let (rows, dim) = (23, 1111);
    let y = activations(rows * dim, 1);
    let x0 = activations(rows * dim, 2);
    let mask: Vec<f32> = (0..rows).map(|r| [0.0, 1.0, 0.5][r % 3]).collect();
    for row_mask in [None, Some(&mask[..])] {
        let want = gated_add_ref(0.37, row_mask, &y, &x0, dim);
        for (pool, level) in cases() {
            let mut x = x0.clone();
            simd::with_level(level, || gated_add(&pool, 0.37, row_mask, &y, &mut x, dim)).unwrap().unwrap();
            // Measured 9.2e-8.
            report(&format!("gated_add mask {} {level:?} {}", row_mask.is_some(), pool.threads()), rel_max(&x, &want), 2e-7);
        }
    }
}

// ---- vision ----

/// Bitwise equality (the ops that only move values, and those with the reference's f32 math).
fn assert_same(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let bad = got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits());
    assert!(bad.is_none(), "{what}: first difference at {bad:?}");
}

/// (channels, height, width, patch): odd patches and grids, one patch, one channel.
const IMAGES: [(usize, usize, usize, usize); 4] = [(3, 35, 49, 7), (3, 14, 14, 14), (1, 9, 15, 3), (5, 26, 39, 13)];

#[test]
fn patch_unfold_matches_ref() {
    for (ch, h, w, p) in IMAGES {
        let pixels = activations(ch * h * w, (ch * h * w) as u64);
        let want = patch_unfold_ref(&pixels, ch, h, w, p);
        for (pool, level) in cases() {
            let mut out = vec![f32::NAN; want.len()];
            simd::with_level(level, || patch_unfold(&pool, &pixels, &mut out, ch, h, w, p)).unwrap().unwrap();
            assert_same(&out, &want, &format!("patch_unfold {ch}x{h}x{w}/{p} {level:?} {}", pool.threads()));
        }
    }
    let pool = ThreadPool::new(1).unwrap();
    let err = patch_unfold(&pool, &[0.0; 3 * 10 * 14], &mut [0.0; 3 * 10 * 14], 3, 10, 14, 7).unwrap_err();
    assert!(matches!(err, ShapeError::Invalid { .. }), "{err}");
}

/// The unfold + matmul against the direct f64 convolution, with f32 and f16 weights.
#[test]
fn conv2d_patch_matches_ref() {
    let hidden = 45;
    for (ch, h, w, p) in IMAGES {
        let k = ch * p * p;
        let pixels = activations(ch * h * w, 3 + h as u64);
        for ty in [GgmlType::F32, GgmlType::F16] {
            let bytes = random_blocks(ty, hidden * k, k as u64);
            let wf = dequantize_to_vec(ty, &bytes, hidden * k).unwrap();
            let want = conv2d_patch_ref(&pixels, &wf, ch, h, w, p, hidden);
            let weight = Weight::new(ty, hidden, k, &bytes).unwrap();
            for (pool, level) in cases() {
                let mut out = vec![f32::NAN; want.len()];
                simd::with_level(level, || conv2d_patch(&pool, &weight, &pixels, &mut out, ch, h, w, p, Mode::Exact))
                    .unwrap()
                    .unwrap();
                // Measured 5.2e-7 (f32 sums of 588 products).
                let what = format!("conv2d_patch {ch}x{h}x{w}/{p} {ty} {level:?} {}", pool.threads());
                report(&what, rel_max(&out, &want), 1e-6);
            }
        }
    }
}

/// Both pair layouts, a strided layout past other columns, an image at row 3 of the buffer.
#[test]
fn rope_2d_matches_ref() {
    let grids = [PatchGrid { rows: 5, cols: 7 }, PatchGrid { rows: 1, cols: 13 }, PatchGrid { rows: 11, cols: 3 }];
    for (g, grid) in grids.into_iter().enumerate() {
        for mode in [RopeMode::Adjacent, RopeMode::RotateHalf] {
            let (n_heads, head_dim) = (3, 44);
            let layout = match g {
                0 => Rope2dLayout::dense(n_heads, head_dim, mode),
                _ => Rope2dLayout { n_heads, head_dim, mode, stride: 3 * n_heads * head_dim + 5, offset: 17, row0: 3 },
            };
            let inv_freq = pixtral_inv_freq(head_dim as usize, 10000.0);
            let n = (layout.row0 + grid.n_patches() + 1) as usize * layout.stride as usize;
            let x = activations(n, g as u64 + 11);
            let want = rope_2d_ref(&x, &layout, grid, &inv_freq);
            for (pool, level) in cases() {
                let mut y = x.clone();
                simd::with_level(level, || rope_2d(&pool, &mut y, &layout, grid, &inv_freq)).unwrap().unwrap();
                assert_same(&y, &want, &format!("rope_2d grid {g} {mode:?} {level:?} {}", pool.threads()));
            }
        }
    }
}

/// Even and odd grids (an odd last row / column is dropped), one too narrow to merge.
#[test]
fn patch_merge_matches_ref() {
    let grids = [(6, 8), (7, 5), (3, 11), (1, 9), (13, 2)];
    for (rows, cols) in grids {
        let grid = PatchGrid { rows, cols };
        let hidden = 37;
        let x = activations(grid.n_patches() as usize * hidden, rows as u64 * 100 + cols as u64);
        let want = patch_merge_ref(&x, hidden, grid);
        for (pool, level) in cases() {
            let mut out = vec![f32::NAN; want.len()];
            simd::with_level(level, || patch_merge(&pool, &x, &mut out, hidden, grid)).unwrap().unwrap();
            assert_same(&out, &want, &format!("patch_merge {rows}x{cols} {level:?} {}", pool.threads()));
        }
    }
}

// ---- vision_qwen ----

#[test]
fn add_bias_and_copy_cols_match_math() {
    let (rows, dim, stride, offset) = (29, 333, 1001, 401);
    let x = activations(rows * stride, 5);
    let bias = activations(dim, 6);
    let cols: Vec<f32> = (0..rows * dim).map(|i| x[i / dim * stride + offset + i % dim]).collect();
    let biased: Vec<f32> = cols.iter().enumerate().map(|(i, &v)| v + bias[i % dim]).collect();
    for (pool, level) in cases() {
        let mut out = vec![f32::NAN; rows * dim];
        simd::with_level(level, || vision_qwen::copy_cols(&pool, &x, &mut out, dim, stride, offset)).unwrap().unwrap();
        assert_same(&out, &cols, &format!("copy_cols {level:?} {}", pool.threads()));
        simd::with_level(level, || vision_qwen::add_bias(&pool, &bias, &mut out, dim)).unwrap().unwrap();
        assert_same(&out, &biased, &format!("add_bias {level:?} {}", pool.threads()));
    }
    let pool = ThreadPool::new(1).unwrap();
    let err = vision_qwen::copy_cols(&pool, &x, &mut [0.0; 333], 333, 700, 401).unwrap_err();
    assert!(matches!(err, ShapeError::Invalid { .. }), "{err}");
}

#[test]
fn gather_rows_matches_ref() {
    let (src_rows, rows, k, dim) = (41, 67, 4, 123);
    let src = activations(src_rows * dim, 8);
    let mut rng = SplitMix64::new(9);
    let taps: Vec<Tap> =
        (0..rows * k).map(|_| Tap { row: (rng.next_u64() % src_rows as u64) as u32, weight: rng.uniform(0.0, 1.0) }).collect();
    let want = gather_rows_ref(&src, &taps, k, dim);
    for (pool, level) in cases() {
        let mut out = vec![f32::NAN; rows * dim];
        simd::with_level(level, || vision_qwen::gather_rows(&pool, &src, &taps, &mut out, k, dim)).unwrap().unwrap();
        assert_same(&out, &want, &format!("gather_rows {level:?} {}", pool.threads()));
    }
    let pool = ThreadPool::new(1).unwrap();
    let bad = [Tap { row: src_rows as u32, weight: 1.0 }];
    let err = vision_qwen::gather_rows(&pool, &src, &bad, &mut vec![0.0; dim], 1, dim).unwrap_err();
    assert!(matches!(err, ShapeError::Invalid { .. }), "{err}");
}

// ---- vision_mllama ----

/// 3 tiles of 17 tokens in 56 rows (5 of padding), then the per-tile and position adds on them.
#[test]
fn mllama_tile_ops_match_ref() {
    let (tiles, tokens, rows, dim) = (3, 17, 56, 45);
    let patches = activations(tiles * (tokens - 1) * dim, 10);
    let class = activations(dim, 11);
    let x0 = assemble_ref(&patches, &class, tiles, tokens, rows, dim);
    let table = activations(4 * dim, 12);
    let pos = activations(tokens * dim, 13);
    let tile_pos = activations(rows * dim, 14);
    // Gates through `black_box`: in an optimized build the compiler would fold the reference's
    // `tanh` of a constant with its own arithmetic, a last bit away from the run-time `tanhf`.
    let (row0, n, per_tile) = (2, 50, 17);
    let (gate, pos_gate) = std::hint::black_box((0.61, -0.3));
    let mut tiled = x0.clone();
    tile_add_ref(&mut tiled, &table, gate, row0, n, per_tile, dim);
    let mut posed = tiled.clone();
    gated_pos_ref(&mut posed, &pos, &tile_pos, pos_gate, tokens, dim);
    for (pool, level) in cases() {
        let what = format!("{level:?} {}", pool.threads());
        let mut x = vec![f32::NAN; rows * dim];
        simd::with_level(level, || vision_mllama::assemble(&pool, &patches, &class, &mut x, tiles, tokens, dim))
            .unwrap()
            .unwrap();
        assert_same(&x, &x0, &format!("assemble {what}"));
        simd::with_level(level, || vision_mllama::tile_add(&pool, &table, gate, &mut x, row0, n, per_tile, dim))
            .unwrap()
            .unwrap();
        assert_same(&x, &tiled, &format!("tile_add {what}"));
        simd::with_level(level, || vision_mllama::gated_pos(&pool, &pos, &tile_pos, pos_gate, &mut x, tokens, dim))
            .unwrap()
            .unwrap();
        assert_same(&x, &posed, &format!("gated_pos {what}"));
    }
}

#[test]
fn mllama_gated_add_and_scatter_match_ref() {
    let (rows, dim, stride, offset, step) = (37, 101, 3 * 101 + 7, 5, 3);
    let y = activations(50_000, 15);
    let x0 = activations(50_000, 16);
    let mut want = x0.clone();
    webvlm::kernels::vision_mllama::gated_add_ref(&mut want, &y, 1.7);
    let src = activations((rows + 4) * dim, 17);
    let out0 = activations(rows * stride, 18);
    let mut scattered = out0.clone();
    scatter_cols_ref(&src[4 * dim..], &mut scattered, dim, stride, offset, step);
    for (pool, level) in cases() {
        let what = format!("{level:?} {}", pool.threads());
        let mut x = x0.clone();
        simd::with_level(level, || vision_mllama::gated_add(&pool, &y, 1.7, &mut x)).unwrap().unwrap();
        assert_same(&x, &want, &format!("gated_add {what}"));
        let mut out = out0.clone();
        simd::with_level(level, || vision_mllama::scatter_cols(&pool, &src, 4, &mut out, rows, dim, stride, offset, step))
            .unwrap()
            .unwrap();
        assert_same(&out, &scattered, &format!("scatter_cols {what}"));
    }
    let pool = ThreadPool::new(1).unwrap();
    let err = vision_mllama::scatter_cols(&pool, &src, 0, &mut [0.0; 299], 1, 100, 299, 2, 3).unwrap_err();
    assert!(matches!(err, ShapeError::Invalid { .. }), "{err}");
}
