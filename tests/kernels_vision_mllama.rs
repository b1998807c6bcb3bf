//! Mllama vision kernels against their CPU references: the tile assembly, the tanh-gated
//! tile / position / residual adds, the column scatter (whole and into row parts), and
//! prefill attention with Mllama's vision mask (score (i, j) masked iff tokens i and j are
//! both padding) computed by the kernel on the valid-tokens-first order against a reference
//! in the natural tile order.

use crate::common;
use common::*;
use webvlm::backend::{Buffer, Device, Program};
use webvlm::kernels::attention::{self, AttnShape, StepParams};
use webvlm::kernels::vision_mllama as vm;

/// Adds and copies in f32: the GPU rounds as the reference does, up to `tanh`'s ulps.
const TOL_ADD: f32 = 1e-6;
/// Attention f32 (same limit as `kernels_attention.rs`).
const TOL_ATTN_F32: f32 = 2e-6;

fn read(gpu: &Device, b: &Buffer, n: usize) -> Vec<f32> {
    gpu.read_f32_blocking(b, n).unwrap()
}

#[test]
fn assemble_and_gated_adds_match_reference() {
    let gpu = gpu();
    let mut rng = Rng::new(5);
    let (tiles, tokens, rows, dim) = (3usize, 5usize, 24usize, 12usize);
    let patches = rng.vec(tiles * (tokens - 1) * dim);
    let class = rng.vec(dim);
    let (table, pos, tile_pos, y) = (rng.vec(4 * dim), rng.vec(tokens * dim), rng.vec(tiles * tokens * dim), rng.vec(rows * dim));
    let (g_tile, g_pos, g_res) = (0.7f32, -1.3f32, 0.4f32);

    let mut want = vm::assemble_ref(&patches, &class, tiles, tokens, rows, dim);
    gated_pos_ref_rows(&mut want, &pos, &tile_pos, g_pos, tiles * tokens, tokens, dim);
    // Post-tile style: main rows per tile, then the padding rows 3 per tile.
    vm::tile_add_ref(&mut want, &table, g_tile, 0, tiles * tokens, tokens, dim);
    vm::tile_add_ref(&mut want, &table, g_tile, tiles * tokens, rows - tiles * tokens, 3, dim);
    vm::gated_add_ref(&mut want, &y, g_res);

    let b = |v: &[f32]| upload(&gpu, v);
    let (bp, bc, bt, bpos, btp, by) = (b(&patches), b(&class), b(&table), b(&pos), b(&tile_pos), b(&y));
    let (gt, gp, gr) = (b(&[g_tile]), b(&[g_pos]), b(&[g_res]));
    // Garbage in x: assemble must overwrite every row, padding included.
    let x = b(&rng.vec(rows * dim));
    let (t, k, r, d) = (tiles as u32, tokens as u32, rows as u32, dim as u32);
    let mut prog = Program::new();
    vm::assemble(&mut prog, &gpu, &bp, &bc, &x, t, k, r, d).unwrap();
    vm::gated_pos(&mut prog, &gpu, &bpos, &btp, &gp, &x, t * k, k, d).unwrap();
    vm::tile_add(&mut prog, &gpu, &bt, &gt, &x, 0, t * k, k, d).unwrap();
    vm::tile_add(&mut prog, &gpu, &bt, &gt, &x, t * k, r - t * k, 3, d).unwrap();
    vm::gated_add(&mut prog, &gpu, &by, &gr, &x, r * d).unwrap();
    prog.run(&gpu).unwrap();
    let got = read(&gpu, &x, rows * dim);
    let err = max_abs(&got, &want);
    eprintln!("mllama assemble + gated adds: max abs {err:.2e}");
    assert!(err <= TOL_ADD, "max abs err {err}");
}

/// [`vm::gated_pos_ref`] on the first `main` rows of `x`.
fn gated_pos_ref_rows(x: &mut [f32], pos: &[f32], tile_pos: &[f32], g: f32, main: usize, tokens: usize, dim: usize) {
    vm::gated_pos_ref(&mut x[..main * dim], pos, tile_pos, g, tokens, dim);
}

#[test]
fn scatter_cols_interleaves_layers() {
    let gpu = gpu();
    let mut rng = Rng::new(9);
    let (rows, dim, layers) = (7usize, 8usize, 3usize);
    let stride = dim * (1 + layers);
    let srcs: Vec<Vec<f32>> = (0..=layers).map(|_| rng.vec(rows * dim)).collect();
    let mut want = vec![0f32; rows * stride];
    let out = gpu.storage("out", (rows * stride * 4) as u64).unwrap();
    let bufs: Vec<_> = srcs.iter().map(|s| upload(&gpu, s)).collect();
    let mut prog = Program::new();
    for (j, (s, b)) in srcs.iter().zip(&bufs).enumerate() {
        // Source 0 is the dense head of the row; sources 1.. interleave after it.
        let (offset, step) = if j == 0 { (0, 1) } else { (dim + j - 1, layers) };
        vm::scatter_cols_ref(s, &mut want, dim, stride, offset, step);
        vm::scatter_cols(&mut prog, &gpu, b, &out, rows as u32, dim as u32, stride as u32, offset as u32, step as u32).unwrap();
    }
    prog.run(&gpu).unwrap();
    assert_eq!(read(&gpu, &out, rows * stride), want);
    let mut prog = Program::new();
    assert!(vm::scatter_cols(
        &mut prog,
        &gpu,
        &bufs[0],
        &out,
        rows as u32,
        dim as u32,
        stride as u32,
        dim as u32,
        layers as u32 + 1
    )
    .is_err());
}

/// The features in row parts, as the encoder keeps them over the binding limit: each part
/// takes its window of the source rows (`scatter_cols_from`), and the parts laid end to end
/// equal one scatter of every row; a window past the source's end is refused.
#[test]
fn scatter_cols_from_fills_row_parts() {
    let gpu = gpu();
    let mut rng = Rng::new(10);
    let (rows, dim, layers) = (11usize, 6usize, 2usize);
    let stride = dim * (1 + layers);
    let src = rng.vec(rows * dim);
    let src_buf = upload(&gpu, &src);
    let mut want = vec![0f32; rows * stride];
    vm::scatter_cols_ref(&src, &mut want, dim, stride, dim + 1, layers);
    // Parts of 4, 4 and 3 rows.
    let parts: Vec<(usize, usize)> = (0..rows).step_by(4).map(|r0| (r0, 4.min(rows - r0))).collect();
    assert_eq!(parts.len(), 3);
    let bufs: Vec<_> = parts.iter().map(|&(_, n)| gpu.storage("part", (n * stride * 4) as u64).unwrap()).collect();
    let mut prog = Program::new();
    for (&(r0, n), out) in parts.iter().zip(&bufs) {
        let (n, d, st) = (n as u32, dim as u32, stride as u32);
        vm::scatter_cols_from(&mut prog, &gpu, (&src_buf, r0 as u32), out, n, d, st, d + 1, layers as u32).unwrap();
    }
    prog.run(&gpu).unwrap();
    let got: Vec<f32> = parts.iter().zip(&bufs).flat_map(|(&(_, n), b)| read(&gpu, b, n * stride)).collect();
    assert_eq!(got, want);
    let mut prog = Program::new();
    let past_end = vm::scatter_cols_from(&mut prog, &gpu, (&src_buf, 8), &bufs[0], 4, dim as u32, stride as u32, 0, 1);
    assert!(past_end.is_err());
}

/// Masked attention in f64 over tokens in their natural order: `valid[t]` false for padding;
/// score (i, j) is masked iff both are padding.
fn mllama_attention_ref(q: &[f32], k: &[f32], v: &[f32], valid: &[bool], n_head: usize, hd: usize) -> Vec<f32> {
    let (n, row) = (valid.len(), n_head * hd);
    let mut out = vec![0f32; n * row];
    for i in 0..n {
        for h in 0..n_head {
            let keys: Vec<usize> = (0..n).filter(|&j| valid[i] || valid[j]).collect();
            let s: Vec<f64> = keys
                .iter()
                .map(|&j| {
                    (0..hd).map(|d| q[i * row + h * hd + d] as f64 * k[j * row + h * hd + d] as f64).sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
            let den: f64 = w.iter().sum();
            for d in 0..hd {
                let num: f64 = keys.iter().zip(&w).map(|(&j, w)| w * v[j * row + h * hd + d] as f64).sum();
                out[i * row + h * hd + d] = (num / den) as f32;
            }
        }
    }
    out
}

#[test]
fn attention_with_mllama_mask_matches_reference() {
    let gpu = gpu();
    let mut rng = Rng::new(17);
    let (n_head, hd) = (4usize, 16usize);
    let row = n_head * hd;
    // 4 tiles of 13 tokens padded to 16, 2 real tiles: 26 valid tokens of 64.
    for (tiles, tokens, padded, real) in [(4usize, 13usize, 16usize, 2usize), (4, 13, 16, 4), (2, 8, 8, 1)] {
        let n = tiles * padded;
        let valid: Vec<bool> = (0..n).map(|t| t / padded < real && t % padded < tokens).collect();
        let (q, k, v) = (rng.vec(n * row), rng.vec(n * row), rng.vec(n * row));
        let want = mllama_attention_ref(&q, &k, &v, &valid, n_head, hd);
        // The kernel's order: valid tokens first (stable), then the padding.
        let order: Vec<usize> = (0..n).filter(|&t| valid[t]).chain((0..n).filter(|&t| !valid[t])).collect();
        let perm = |x: &[f32]| -> Vec<f32> { order.iter().flat_map(|&t| x[t * row..][..row].to_vec()).collect() };
        let (bq, bk, bv) = (upload(&gpu, &perm(&q)), upload(&gpu, &perm(&k)), upload(&gpu, &perm(&v)));
        let out = gpu.storage("out", (n * row * 4) as u64).unwrap();
        let step = StepParams::create_buffer(&gpu).unwrap();
        StepParams::new(0, n as u32, 0).write(&gpu, &step).unwrap();
        let n_valid = valid.iter().filter(|v| **v).count() as u32;
        let shape =
            AttnShape { causal: false, valid_rows: n_valid, ..AttnShape::new(n_head as u32, n_head as u32, hd as u32, n as u32) };
        let mut prog = Program::new();
        attention::attention_prefill(&mut prog, &gpu, &shape, &step, &bq, &bk, &bv, &out).unwrap();
        prog.run(&gpu).unwrap();
        let got_perm = read(&gpu, &out, n * row);
        let mut got = vec![0f32; n * row];
        for (slot, &t) in order.iter().enumerate() {
            got[t * row..][..row].copy_from_slice(&got_perm[slot * row..][..row]);
        }
        let err = rel_l2(&got, &want);
        eprintln!("mllama attention, {real}/{tiles} tiles of {tokens}/{padded}: rel {err:.2e}");
        assert!(err < TOL_ATTN_F32, "rel err {err}");
    }
}
