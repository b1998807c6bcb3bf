//! Interleaved multimodal RoPE (`rope_inplace_mrope`, `rope_kv_store_mrope` and `_f16`):
//! the axis pattern of transformers' `apply_interleaved_mrope`, equal axes giving the plain
//! kernels' results bit for bit (text positions), and distinct (t, h, w) positions against
//! the CPU reference [`rope::mrope_ref`].

use crate::common;
use common::*;
use webvlm::backend::{Buffer, Device, Program};
use webvlm::kernels::attention::{self, KvDtype, StepParams};
use webvlm::kernels::rope::{self, Mrope, QScale, RopeFreqs, RopeLayout, RopeMode, RopeTable};

/// GPU vs CPU f32 rotation (same f32 angle, exact range reduction, FMA contraction).
const TOL_ROPE_F32: f32 = 2e-6;
/// The f16 cache store rounds each value to a neighbouring f16 (relative).
const TOL_F16_KV: f32 = 1.0 / 1024.0;

fn step_buffer(gpu: &Device, s: StepParams) -> Buffer {
    let b = StepParams::create_buffer(gpu).unwrap();
    s.write(gpu, &b).unwrap();
    b
}

fn positions_buffer(gpu: &Device, p: &[Vec<u32>; 3]) -> Buffer {
    gpu.storage_with("positions", bytemuck::cast_slice(&p.concat())).unwrap()
}

fn read_cache(gpu: &Device, buf: &Buffer, n: usize, kv: KvDtype) -> Vec<f32> {
    match kv {
        KvDtype::F32 => gpu.read_f32_blocking(buf, n).unwrap(),
        KvDtype::F16 => {
            let bytes = gpu.read_blocking(buf, 0, n as u64 * 2).unwrap();
            attention::unpack_f16(&bytemuck::pod_collect_to_vec::<u8, u32>(&bytes))
        }
    }
}

/// The shapes: Qwen3.5's real head (64 rotated dims of 256, sections [11, 11, 10]) and the
/// tiny fixtures' (8 of 32, [2, 1, 1]).
fn shapes() -> [(u32, RopeTable, [u32; 3]); 2] {
    [(256, rope::rope_table(64, 1e7, None), [11, 11, 10]), (32, rope::rope_table(8, 1e7, None), [2, 1, 1])]
}

#[test]
fn axes_interleave_as_transformers_does() {
    let axes: Vec<usize> = (0..32).map(|i| rope::mrope_axis(i, [11, 11, 10])).collect();
    assert_eq!(&axes[..7], &[0, 1, 2, 0, 1, 2, 0]);
    assert_eq!(&axes[27..], &[0, 1, 2, 0, 1], "w stops at pair 29, h at 31");
    for (axis, want) in [(0, 11), (1, 11), (2, 10)] {
        assert_eq!(axes.iter().filter(|&&a| a == axis).count(), want, "axis {axis}");
    }
    let tiny: Vec<usize> = (0..4).map(|i| rope::mrope_axis(i, [2, 1, 1])).collect();
    assert_eq!(tiny, [0, 1, 2, 0]);
}

/// Runs one M-RoPE store of `k`/`v` rows (dense, `n_kv` heads) into fresh caches; returns k and v.
#[allow(clippy::too_many_arguments)]
fn kv_store(
    gpu: &Device,
    k: &[f32],
    v: &[f32],
    layout: &RopeLayout,
    table: &RopeTable,
    kv: KvDtype,
    step: StepParams,
    mrope: Option<(&[Vec<u32>; 3], [u32; 3])>,
) -> (Vec<f32>, Vec<f32>) {
    let n = (step.kv_start + step.n_tok) as usize * (layout.n_heads * layout.head_dim) as usize;
    let (kc, vc) = (gpu.storage("kc", n as u64 * kv.bytes()).unwrap(), gpu.storage("vc", n as u64 * kv.bytes()).unwrap());
    let (bk, bv) = (upload(gpu, k), upload(gpu, v));
    let freqs = RopeFreqs::upload(gpu, table).unwrap();
    let sb = step_buffer(gpu, step);
    let mut prog = Program::new();
    match mrope {
        Some((p, sections)) => {
            let pos = positions_buffer(gpu, p);
            let m = Mrope { positions: &pos, sections };
            rope::rope_kv_store_mrope(&mut prog, gpu, &sb, &freqs, (&bk, layout), (&bv, layout), (&kc, &vc), kv, &m).unwrap();
            prog.run(gpu).unwrap();
        }
        None => {
            rope::rope_kv_store(&mut prog, gpu, &sb, &freqs, &bk, layout, &bv, layout, &kc, &vc, kv).unwrap();
            prog.run(gpu).unwrap();
        }
    }
    (read_cache(gpu, &kc, n, kv), read_cache(gpu, &vc, n, kv))
}

fn inplace(
    gpu: &Device,
    x: &[f32],
    layout: &RopeLayout,
    table: &RopeTable,
    step: StepParams,
    mrope: Option<(&[Vec<u32>; 3], [u32; 3])>,
) -> Vec<f32> {
    let bx = upload(gpu, x);
    let freqs = RopeFreqs::upload(gpu, table).unwrap();
    let sb = step_buffer(gpu, step);
    let mut prog = Program::new();
    match mrope {
        Some((p, sections)) => {
            let pos = positions_buffer(gpu, p);
            rope::rope_inplace_mrope(&mut prog, gpu, &sb, &freqs, &bx, layout, &Mrope { positions: &pos, sections }).unwrap();
            prog.run(gpu).unwrap();
        }
        None => {
            rope::rope_inplace(&mut prog, gpu, &sb, &freqs, &bx, layout, QScale::NONE).unwrap();
            prog.run(gpu).unwrap();
        }
    }
    gpu.read_f32_blocking(&bx, x.len()).unwrap()
}

/// Text tokens (all three positions equal) rotate exactly as the plain kernels do: a text-only
/// prompt gives the logits it gave before M-RoPE.
#[test]
fn equal_axes_equal_plain_rope_bit_for_bit() {
    let gpu = gpu();
    let mut rng = Rng::new(21);
    let (n_tok, kv_start, pos0) = (5u32, 3u32, 1000u32);
    for (hd, table, sections) in shapes() {
        let layout = RopeLayout::dense(2, hd, n_tok, RopeMode::RotateHalf);
        let x = rng.vec((n_tok * 2 * hd) as usize);
        let v = rng.vec(x.len());
        let text: Vec<u32> = (0..n_tok).map(|t| pos0 + t).collect();
        let p = [text.clone(), text.clone(), text];
        let step = StepParams::new(kv_start, n_tok, pos0);
        let plain = inplace(&gpu, &x, &layout, &table, step, None);
        assert_eq!(inplace(&gpu, &x, &layout, &table, step, Some((&p, sections))), plain, "hd {hd}: q");
        for kv in [KvDtype::F32, KvDtype::F16] {
            let want = kv_store(&gpu, &x, &v, &layout, &table, kv, step, None);
            let got = kv_store(&gpu, &x, &v, &layout, &table, kv, step, Some((&p, sections)));
            assert!(got == want, "hd {hd} {kv:?}: k/v cache rows differ");
        }
    }
}

/// Image tokens: each pair turns with its own axis's position, as the CPU reference.
#[test]
fn distinct_axes_match_the_cpu_reference() {
    let gpu = gpu();
    let mut rng = Rng::new(22);
    let n_tok = 6u32;
    // A 2 x 3 image starting at position 40, then text at 43 (t, h, w as get_rope_index).
    let p = [vec![40, 40, 40, 40, 40, 43], vec![40, 40, 40, 41, 41, 43], vec![40, 41, 42, 40, 41, 43]];
    for (hd, table, sections) in shapes() {
        let layout = RopeLayout::dense(3, hd, n_tok, RopeMode::RotateHalf);
        let x = rng.vec((n_tok * 3 * hd) as usize);
        let want = rope::mrope_ref(&x, &layout, &table, &p, sections);
        let step = StepParams::new(0, n_tok, 0);
        let got = inplace(&gpu, &x, &layout, &table, step, Some((&p, sections)));
        let err = max_abs(&got, &want);
        assert!(err <= TOL_ROPE_F32, "hd {hd}: q max abs {err:e}");
        // Equal axes would differ: the test sees the h and w positions.
        let t_only = rope::mrope_ref(&x, &layout, &table, &[p[0].clone(), p[0].clone(), p[0].clone()], sections);
        assert!(max_abs(&t_only, &want) > 1e-2, "hd {hd}: the positions make no difference");
        let kv_start = 2u32;
        for kv in [KvDtype::F32, KvDtype::F16] {
            let v = rng.vec(x.len());
            let step = StepParams::new(kv_start, n_tok, 0);
            let (k_rows, v_rows) = kv_store(&gpu, &x, &v, &layout, &table, kv, step, Some((&p, sections)));
            let off = (kv_start * 3 * hd) as usize;
            let rel = if kv == KvDtype::F16 { TOL_F16_KV } else { 0.0 };
            for (i, (g, w)) in k_rows[off..].iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= TOL_ROPE_F32 + rel * w.abs(), "hd {hd} {kv:?}: k[{i}] {g} vs {w}");
            }
            for (i, (g, w)) in v_rows[off..].iter().zip(&v).enumerate() {
                assert!((g - w).abs() <= rel * w.abs(), "hd {hd} {kv:?}: v[{i}] {g} vs {w}");
            }
        }
    }
}
