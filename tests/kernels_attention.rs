//! RoPE (plain, YaRN, query scaling), the fused KV-cache store, and prefill / split-K decode
//! attention against their CPU references, the attention checks in every launch variant.
// Reference literals are Python's shortest repr of f64-widened f32 values.
#![allow(clippy::excessive_precision)]

use crate::common;
use common::*;
use webvlm::backend::gpu::attention::{self as gpu_attention, PrefillLaunch, RowWidth};
use webvlm::backend::gpu::{Geometry, Gpu, GpuOptions};
use webvlm::backend::{Buffer, Device, Program};
use webvlm::kernels::attention::{self, AttnShape, DecodeScratch, KvDtype, StepParams};
use webvlm::kernels::rope::{self, QScale, RopeFreqs, RopeLayout, RopeMode, RopeTable, Yarn};

/// Attention in f32 with online softmax vs an f64 reference: summation order only.
const TOL_ATTN_F32: f32 = 2e-6;
/// RoPE vs the CPU f32 mirror of transformers (same f32 angle; GPU cos/sin after an exact
/// Cody-Waite reduction, rotation possibly fused into FMAs).
const TOL_ROPE_F32: f32 = 2e-6;
/// RoPE vs an f64 reference at positions >= 20000: dominated by the f32 rounding of the angle
/// (ulp(40000) / 2 = 2e-3 rad on the fastest frequencies), which transformers shares.
const TOL_ROPE_VS_F64: f32 = 2e-3;
/// f16 KV-cache store, relative to each value (on top of [`TOL_ROPE_F32`]): `pack2x16float`
/// rounds to a neighbouring f16, within 1 ulp = 2^-10 relative (lavapipe rounds to nearest).
const TOL_F16_KV: f32 = 1.0 / 1024.0;
/// Attention over an f16 cache vs the f64 reference on the same f16-rounded values: the math
/// is f32, so only summation order remains, as in [`TOL_ATTN_F32`].
const TOL_ATTN_F16_KV_ROUNDED: f32 = TOL_ATTN_F32;
/// Attention over an f16 cache vs the f64 reference on the unrounded f32 values (rel L2):
/// f16 rounding of K and V (~2^-12 rms relative each); measured 1.9e-4 to 3.0e-4 here.
const TOL_ATTN_F16_KV: f32 = 1e-3;

/// transformers 5.23 `ROPE_INIT_FUNCTIONS["yarn"]` for head_dim 128, theta 1e6, factor 16,
/// original 16384, beta 32/1, mscale = mscale_all_dim = 1: f32 bit patterns of the 64
/// inv_freq entries, printed with `inv.view(torch.int32).tolist()`.
const YARN_MINISTRAL3_BITS: [u32; 64] = [
    1065353216, 1062095789, 1059470816, 1057355503, 1054337179, 1051589887, 1049376004, 1046607925, 1043732615, 1041415569,
    1038909398, 1035900102, 1033475085, 1031243027, 1028093503, 1025555485, 1023510243, 1020314024, 1017657739, 1015517192,
    1012562930, 1009146551, 1006401108, 1002362275, 999268067, 995563502, 991961651, 988598374, 984461734, 981225577, 976556095,
    973074466, 967922988, 963589296, 958084617, 951951739, 944772552, 934423035, 932156018, 929522834, 926578515, 924205860,
    921840866, 918759349, 916276132, 914191828, 910966718, 908367787, 906273458, 903201857, 900481821, 898289901, 895466063,
    892619278, 890325219, 887760690, 884781249, 882380290, 880087152, 876968875, 874456036, 872431084, 869183353, 866553420,
];

/// Same script: `(position, i, cos, sin)` of `f32(position) * inv_freq[i]` (torch f32 cos/sin).
const TORCH_COS_SIN: [(u32, usize, f32, f32); 10] = [
    (1, 1, 0.6925038695335388, 0.7214141488075256),
    (7, 20, 0.9956463575363159, 0.09321100264787674),
    (16383, 0, -0.918830931186676, 0.3946514427661896),
    (16384, 37, 0.9400646090507507, 0.34099632501602173),
    (20000, 0, 0.8131996989250183, 0.5819847583770752),
    (20000, 20, -0.9456883072853088, 0.32507485151290894),
    (40000, 0, 0.3225874602794647, 0.9465396404266357),
    (40000, 1, 0.5826365947723389, 0.8127328157424927),
    (40000, 63, 0.9999951720237732, 0.003102339571341872),
    (131071, 20, 0.42261287569999695, 0.9063103199005127),
];

/// Same script: `1 + 0.1 * log(1 + floor(pos / 16384))` in torch f32.
const TORCH_QSCALE: [(u32, f32); 6] = [
    (0, 1.0),
    (16383, 1.0),
    (16384, 1.06931471824646),
    (20000, 1.06931471824646),
    (40000, 1.1098612546920776),
    (131071, 1.2079441547393799),
];

/// The launch variants every attention check runs in: the CPU shape, and the GPU shape
/// without and with subgroup reductions (the CPU shape uses none: with subgroups it is the same).
const VARIANTS: [(Geometry, bool); 3] = [(Geometry::Cpu, false), (Geometry::Gpu, false), (Geometry::Gpu, true)];

/// One device per launch variant. The forced GPU geometry must get the GPU prefill shape
/// wherever the adapter grants its workgroup memory (lavapipe does).
fn variants() -> impl Iterator<Item = Device> {
    VARIANTS.into_iter().map(|(geometry, allow_subgroups)| {
        let options = GpuOptions { geometry: Some(geometry), allow_subgroups, ..GpuOptions::default() };
        let gpu = Device::Gpu(Gpu::new_blocking(options).expect("a GPU adapter"));
        let caps = &gpu.caps();
        let launch = PrefillLaunch::of(caps.geometry, 128, caps.max_workgroup_storage);
        assert_eq!(launch.registers, geometry == Geometry::Gpu && caps.max_workgroup_storage >= launch.workgroup_bytes);
        eprintln!("variant {}: workgroup storage {} B, prefill {launch:?}", variant(&gpu), caps.max_workgroup_storage);
        gpu
    })
}

/// The launch variant of `gpu`, for messages.
fn variant(gpu: &Device) -> String {
    format!("{:?}{}", gpu.caps().geometry, if gpu.caps().subgroups { " + subgroups" } else { "" })
}

fn step_buffer(gpu: &Device, s: StepParams) -> Buffer {
    let b = StepParams::create_buffer(gpu).unwrap();
    s.write(gpu, &b).unwrap();
    b
}

#[test]
fn yarn_inv_freq_matches_transformers() {
    let y = Yarn::ministral3();
    assert_eq!(y.correction_range(128, 1e6), (20.0, 37.0));
    let table = rope::yarn_inv_freq(128, 1e6, &y);
    assert_eq!(table.attn_factor, 1.0);
    // torch's f32 `pow` is not correctly rounded: at i = 37 (theta^(74/128) = 2942.727176...,
    // almost halfway between two f32) it returns the farther neighbour, so allow 1 ulp there.
    for (i, (got, want)) in table.inv_freq.iter().zip(YARN_MINISTRAL3_BITS).enumerate() {
        let ulps = (got.to_bits() as i64 - want as i64).abs();
        assert!(ulps == 0 || (i == 37 && ulps == 1), "inv_freq[{i}] {got} is {ulps} ulp from transformers");
    }
    // Hand-derived: extrapolated below low = 20, interpolated (/16) from high = 37 on.
    let plain = rope::rope_inv_freq(128, 1e6);
    for i in [0, 10, 19, 20] {
        assert_eq!(table.inv_freq[i], plain[i], "i={i}");
    }
    for i in [37, 50, 63] {
        assert_eq!(table.inv_freq[i], 1.0 / (16.0 * 1e6f64.powf(2.0 * i as f64 / 128.0) as f32), "i={i}");
    }
    let ramp = (25.0 - 20.0) / 17.0f64;
    let want25 = plain[25] as f64 * (1.0 - ramp) + plain[25] as f64 / 16.0 * ramp;
    assert!((table.inv_freq[25] as f64 / want25 - 1.0).abs() < 1e-6);
    // Attention factor: absent mscale -> 0.1 ln(16) + 1; DeepSeek-style ratio.
    let no_mscale = Yarn { mscale: None, mscale_all_dim: None, ..y };
    assert!((no_mscale.attention_factor() - 1.2772588722239782).abs() < 1e-12);
    let ratio = Yarn { mscale_all_dim: Some(0.707), ..y };
    assert!((ratio.attention_factor() - 1.0679225365606495).abs() < 1e-12);
}

#[test]
fn cpu_rope_reproduces_torch_cos_sin_and_query_scale() {
    let table = rope::yarn_inv_freq(128, 1e6, &Yarn::ministral3());
    let layout = RopeLayout::dense(1, 128, 1, RopeMode::Adjacent);
    for (pos, i, c, s) in TORCH_COS_SIN {
        let mut x = vec![0f32; 128];
        x[2 * i] = 1.0;
        let y = rope::rope_ref(&x, &layout, 1, &table, pos, QScale::NONE);
        assert!((y[2 * i] - c).abs() <= 2e-7 && (y[2 * i + 1] - s).abs() <= 2e-7, "pos {pos} i {i}: {:?}", &y[2 * i..2 * i + 2]);
    }
    let q = QScale { beta: 0.1, orig_ctx: 16384 };
    for (pos, want) in TORCH_QSCALE {
        assert!((q.factor(pos) - want).abs() <= 1.2e-7, "pos {pos}: {} vs {want}", q.factor(pos));
    }
}

/// Runs `rope_inplace` on `x` and returns the result.
fn gpu_rope(gpu: &Device, x: &[f32], layout: &RopeLayout, n_tok: u32, table: &RopeTable, pos0: u32, q: QScale) -> Vec<f32> {
    let bx = upload(gpu, x);
    let freqs = RopeFreqs::upload(gpu, table).unwrap();
    let step = step_buffer(gpu, StepParams::new(0, n_tok, pos0));
    let mut prog = Program::new();
    rope::rope_inplace(&mut prog, gpu, &step, &freqs, &bx, layout, q).unwrap();
    prog.run(gpu).unwrap();
    gpu.read_f32_blocking(&bx, x.len()).unwrap()
}

/// f64 RoPE (angle `pos * inv_freq` without f32 rounding) for the error report.
fn rope_f64(x: &[f32], layout: &RopeLayout, n_tok: usize, table: &RopeTable, pos0: u32) -> Vec<f32> {
    let mut y = x.to_vec();
    let (hd, half) = (layout.head_dim as usize, table.inv_freq.len());
    for t in 0..n_tok {
        for h in 0..layout.n_heads as usize {
            let base = t * layout.stride as usize + layout.offset as usize + h * hd;
            for i in 0..half {
                let (d0, d1) = if layout.mode == RopeMode::RotateHalf { (i, i + half) } else { (2 * i, 2 * i + 1) };
                let factor = table.freq_factors.as_ref().map_or(1.0, |f| f[i] as f64);
                let a = (pos0 as f64 + t as f64) * table.inv_freq[i] as f64 / factor;
                let (c, s) = (a.cos() * table.attn_factor as f64, a.sin() * table.attn_factor as f64);
                let (x0, x1) = (x[base + d0] as f64, x[base + d1] as f64);
                y[base + d0] = (x0 * c - x1 * s) as f32;
                y[base + d1] = (x1 * c + x0 * s) as f32;
            }
        }
    }
    y
}

#[test]
fn rope_matches_cpu_at_small_and_large_positions() {
    let gpu = gpu();
    let mut rng = Rng::new(11);
    let ministral = Yarn::ministral3();
    let deepseek = Yarn { mscale_all_dim: Some(0.707), ..ministral };
    // Llama 3 style divisors: 1 for high frequencies, 8 for low ones, a ramp between.
    let llama3 = |n: usize| (0..n / 2).map(|i| 1.0 + 7.0 * (i as f32 / (n / 2 - 1) as f32).powi(2)).collect::<Vec<_>>();
    // (yarn, head_dim, rotated dims, theta, divisors); the fourth rotates half of the head.
    let cases = [
        (None, 128, 128, 1e6, false),
        (Some(&ministral), 128, 128, 1e6, false),
        (None, 64, 64, 1e4, false),
        (Some(&deepseek), 64, 32, 1e4, false),
        (None, 64, 64, 5e5, true),
    ];
    for (yarn, hd, n_rot, theta, divisors) in cases {
        let table = RopeTable { freq_factors: divisors.then(|| llama3(n_rot)), ..rope::rope_table(n_rot, theta, yarn) };
        for mode in [RopeMode::Adjacent, RopeMode::RotateHalf] {
            for (pos0, n_tok) in [(0u32, 10u32), (20000, 3), (40000, 5)] {
                let n_heads = 3;
                let layout = RopeLayout::dense(n_heads, hd as u32, n_tok + 2, mode);
                let x = rng.vec(((n_tok + 2) * n_heads * hd as u32) as usize);
                let got = gpu_rope(&gpu, &x, &layout, n_tok, &table, pos0, QScale::NONE);
                let n = (n_tok * n_heads) as usize * hd;
                let want = rope::rope_ref(&x, &layout, n_tok as usize, &table, pos0, QScale::NONE);
                let (err, worst) = (rel_l2(&got[..n], &want[..n]), max_abs(&got[..n], &want[..n]));
                let err64 = max_abs(&got[..n], &rope_f64(&x, &layout, n_tok as usize, &table, pos0)[..n]);
                let cpu64 = max_abs(&want[..n], &rope_f64(&x, &layout, n_tok as usize, &table, pos0)[..n]);
                eprintln!(
                    "rope hd {hd} n_rot {n_rot} yarn {} divisors {divisors} {mode:?} pos {pos0}: vs f32 rel {err:.2e} max {worst:.2e}; vs f64 max gpu {err64:.2e} cpu-f32 {cpu64:.2e}",
                    yarn.is_some()
                );
                assert!(worst < TOL_ROPE_F32, "rope vs f32 mirror: max abs {worst}");
                assert!(err64 < TOL_ROPE_VS_F64, "rope vs f64: max abs {err64}");
                assert_eq!(&got[n..], &x[n..], "rows past step.n_tok must be untouched");
            }
        }
    }
}

#[test]
fn query_scaling_is_identity_below_orig_and_scales_above() {
    let gpu = gpu();
    let mut rng = Rng::new(12);
    let table = rope::yarn_inv_freq(128, 1e6, &Yarn::ministral3());
    let q = QScale { beta: 0.1, orig_ctx: 16384 };
    let layout = RopeLayout::dense(4, 128, 8, RopeMode::Adjacent);
    let x = rng.vec(8 * 4 * 128);
    // Positions 16380..16388 cross the first step of the scale.
    let got = gpu_rope(&gpu, &x, &layout, 8, &table, 16380, q);
    let plain = gpu_rope(&gpu, &x, &layout, 8, &table, 16380, QScale::NONE);
    let row = 4 * 128;
    assert_eq!(&got[..4 * row], &plain[..4 * row], "identity below 16384");
    for t in 4..8 {
        let r = t * row..(t + 1) * row;
        let scaled: Vec<f32> = plain[r.clone()].iter().map(|v| v * 1.06931471824646).collect();
        assert!(max_abs(&got[r], &scaled) < 1e-6, "token {t}");
    }
    let want = rope::rope_ref(&x, &layout, 8, &table, 16380, q);
    assert!(max_abs(&got, &want) < TOL_ROPE_F32);
    for pos0 in [40000, 131000] {
        let got = gpu_rope(&gpu, &x, &layout, 8, &table, pos0, q);
        let want = rope::rope_ref(&x, &layout, 8, &table, pos0, q);
        assert!(max_abs(&got, &want) < 2.0 * TOL_ROPE_F32, "pos {pos0}: {}", max_abs(&got, &want));
    }
}

/// Reads a cache of `kv` as f32 values.
fn read_cache(gpu: &Device, buf: &Buffer, n: usize, kv: KvDtype) -> Vec<f32> {
    match kv {
        KvDtype::F32 => gpu.read_f32_blocking(buf, n).unwrap(),
        KvDtype::F16 => {
            let bytes = gpu.read_blocking(buf, 0, n as u64 * 2).unwrap();
            attention::unpack_f16(&bytemuck::pod_collect_to_vec::<u8, u32>(&bytes))
        }
    }
}

/// A cache buffer of `kv` holding `x` (f16: rounded to nearest and packed on the CPU).
fn upload_cache(gpu: &Device, x: &[f32], kv: KvDtype) -> Buffer {
    match kv {
        KvDtype::F32 => upload(gpu, x),
        KvDtype::F16 => gpu.storage_with("cache", bytemuck::cast_slice(&attention::pack_f16(x))).unwrap(),
    }
}

/// Largest `|got - want|` in excess of the allowed error `abs + rel * |want|` (<= 0: within).
fn excess(got: &[f32], want: &[f32], abs: f32, rel: f32) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(g, w)| (g - w).abs() - abs - rel * w.abs()).fold(f32::NEG_INFINITY, f32::max)
}

#[test]
fn rope_kv_store_rotates_k_and_copies_v_into_cache_rows() {
    let gpu = gpu();
    let mut rng = Rng::new(13);
    let (n_head, n_kv, hd, n_tok, max_ctx, kv_start, pos0) = (4u32, 2u32, 64u32, 5u32, 16u32, 7u32, 20000u32);
    // A fused QKV activation: [n_tok][(n_head + 2 n_kv) * hd].
    let width = (n_head + 2 * n_kv) * hd;
    let qkv = rng.vec((n_tok * width) as usize);
    // Full rotation (YaRN, adjacent pairs) and a partial one (n_rot 32 of 64, rotate-half).
    let tables = [
        (rope::rope_table(hd as usize, 1e6, Some(&Yarn::ministral3())), RopeMode::Adjacent),
        (rope::rope_table(hd as usize / 2, 1e4, None), RopeMode::RotateHalf),
    ];
    for (table, mode) in &tables {
        for kv in [KvDtype::F32, KvDtype::F16] {
            let (mode, offset) = (*mode, n_head * hd);
            let k_layout = RopeLayout { n_heads: n_kv, head_dim: hd, mode, max_tok: n_tok, stride: width, offset };
            let v_layout = RopeLayout { offset: (n_head + n_kv) * hd, ..k_layout };
            let bqkv = upload(&gpu, &qkv);
            let row = (n_kv * hd) as usize;
            let n = max_ctx as usize * row;
            let bytes = n as u64 * kv.bytes();
            let (kc, vc) = (gpu.storage("kc", bytes).unwrap(), gpu.storage("vc", bytes).unwrap());
            let freqs = RopeFreqs::upload(&gpu, table).unwrap();
            let step = step_buffer(&gpu, StepParams::new(kv_start, n_tok, pos0));
            let mut prog = Program::new();
            let (k, v) = (&bqkv, &bqkv);
            rope::rope_kv_store(&mut prog, &gpu, &step, &freqs, k, &k_layout, v, &v_layout, &kc, &vc, kv).unwrap();
            prog.run(&gpu).unwrap();
            let (gk, gv) = (read_cache(&gpu, &kc, n, kv), read_cache(&gpu, &vc, n, kv));
            let rotated = rope::rope_ref(&qkv, &k_layout, n_tok as usize, table, pos0, QScale::NONE);
            let rel = if kv == KvDtype::F16 { TOL_F16_KV } else { 0.0 };
            let mut worst = 0f32;
            for t in 0..n_tok as usize {
                let c = (kv_start as usize + t) * row..(kv_start as usize + t + 1) * row;
                let k = t * width as usize + (n_head * hd) as usize;
                let v = k + row;
                let e = excess(&gk[c.clone()], &rotated[k..k + row], TOL_ROPE_F32, rel);
                assert!(e <= 0.0, "{kv:?} {mode:?}: k row {t} off by {e} beyond the tolerance");
                worst = worst.max(max_abs(&gk[c.clone()], &rotated[k..k + row]));
                match kv {
                    KvDtype::F32 => assert_eq!(&gv[c], &qkv[v..v + row], "v row {t}"),
                    KvDtype::F16 => assert!(excess(&gv[c], &qkv[v..v + row], 0.0, rel) <= 0.0, "{kv:?}: v row {t}"),
                }
            }
            eprintln!("rope_kv_store {kv:?} {mode:?}: k max abs err {worst:.2e}");
            let (first, end) = (kv_start as usize * row, (kv_start + n_tok) as usize * row);
            let untouched = |buf: &[f32]| buf[..first].iter().chain(&buf[end..]).all(|v| *v == 0.0);
            assert!(untouched(&gk) && untouched(&gv), "{kv:?}: rows outside kv_start..kv_start+n_tok written");
        }
    }
}

struct AttnCase {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    n_tok: u32,
    kv_start: u32,
}

/// Random q and caches holding `kv_start + n_tok` rows (plus `extra` rows of garbage after).
fn attn_data(rng: &mut Rng, c: &AttnCase, extra: u32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = (c.kv_start + c.n_tok + extra) as usize;
    let row = (c.n_kv * c.hd) as usize;
    let q: Vec<f32> = rng.vec((c.n_tok * c.n_head * c.hd) as usize).iter().map(|v| v * 2.0).collect();
    (q, rng.vec(rows * row), rng.vec(rows * row))
}

/// Head counts and dims of both shapes' tiles (GQA groups 1-4, head_dim 8-128, 80: lanes
/// with fewer head_dim vec4s), several chunk offsets, causal and not; (16, 16, 64) is the
/// vision encoder's, over more patches than a GPU tile.
#[test]
fn prefill_matches_cpu() {
    for ((geometry, allow_subgroups), gpu) in VARIANTS.into_iter().zip(variants()) {
        check_prefill(&gpu);
        assert_subgroup_kernels(&gpu, geometry == Geometry::Gpu && allow_subgroups);
    }
}

/// The subgroup variant ran the subgroup kernels and the others did not. Every native adapter
/// this suite runs on (lavapipe; Vulkan, Metal and DX12 GPUs) offers subgroups, so a variant
/// that asked for them and did not get them fails here instead of quietly re-running the
/// workgroup-memory kernels.
fn assert_subgroup_kernels(gpu: &Device, wanted: bool) {
    let compiled = gpu.gpu().unwrap().compiled_modules_containing("subgroupShuffleXor");
    assert_eq!(compiled > 0, wanted, "{}: {compiled} attention modules with subgroup shuffles", variant(gpu));
}

fn check_prefill(gpu: &Device) {
    let name = variant(gpu);
    let mut rng = Rng::new(21);
    let shapes = [(4, 4, 8), (4, 2, 64), (8, 2, 128), (4, 1, 80), (2, 2, 16), (6, 3, 32), (16, 16, 64)];
    for (i, &(n_head, n_kv, hd)) in shapes.iter().enumerate() {
        for (n_tok, kv_start) in [(1, 0), (5, 0), (67, 0), (5, 37), (67, 100 + i as u32), (150, 0)] {
            let c = AttnCase { n_head, n_kv, hd, n_tok, kv_start };
            let (q, k, v) = attn_data(&mut rng, &c, 3);
            let mut shape = AttnShape::new(n_head, n_kv, hd, n_tok + 1);
            for causal in [true, false] {
                shape.causal = causal;
                if !causal && kv_start > 0 {
                    continue;
                }
                let (bq, bk, bv) = (upload(gpu, &q), upload(gpu, &k), upload(gpu, &v));
                let out = gpu.storage("out", ((n_tok + 1) * n_head * hd * 4) as u64).unwrap();
                let step = step_buffer(gpu, StepParams::new(kv_start, n_tok, kv_start));
                let mut prog = Program::new();
                attention::attention_prefill(&mut prog, gpu, &shape, &step, &bq, &bk, &bv, &out).unwrap();
                prog.run(gpu).unwrap();
                let n = (n_tok * n_head * hd) as usize;
                let got = gpu.read_f32_blocking(&out, n).unwrap();
                let want = attention::attention_ref(
                    &q,
                    &k,
                    &v,
                    n_tok as usize,
                    kv_start as usize,
                    n_head as usize,
                    n_kv as usize,
                    hd as usize,
                    shape.scale,
                    causal,
                );
                let err = rel_l2(&got, &want);
                eprintln!(
                    "{name} prefill h {n_head}/{n_kv} hd {hd} n_tok {n_tok} kv_start {kv_start} causal {causal}: rel {err:.2e}"
                );
                assert!(
                    err < TOL_ATTN_F32,
                    "{name} prefill h {n_head}/{n_kv} hd {hd} n_tok {n_tok} kv_start {kv_start}: rel err {err}"
                );
            }
        }
    }
}

/// K and V bytes (f32 cache) that row tile `x` of `launch` reads for `shape` at `n_tok` tokens
/// from cache row 0: the keys up to its last row's limit (the shaders' `kv_end`).
fn kv_bytes_read(launch: &PrefillLaunch, shape: &AttnShape, x: u32) -> u64 {
    let group = shape.n_head / shape.n_kv_head;
    let n_rows = shape.max_tok * group;
    let keys = if shape.causal { ((x + 1) * launch.rows).min(n_rows).div_ceil(group) } else { shape.max_tok };
    2 * keys as u64 * shape.head_dim as u64 * 4
}

/// The prefill launch shapes at Ministral 3 3B text prefill (32 heads, 8 KV heads, head_dim
/// 128, 512 tokens) and Pixtral vision (16 heads, head_dim 64, 1024 patches): tiles, grids,
/// workgroup memory within 32 KiB (the GPU shape needs it all, else the CPU shape is used),
/// subgroups only where the shape reduces across invocations, and the K/V bytes read.
#[test]
fn prefill_launch_shapes_at_text_and_vision_sizes() {
    let cpu = PrefillLaunch::CPU;
    let text = AttnShape::new(32, 8, 128, 512);
    let vision = AttnShape { causal: false, ..AttnShape::new(16, 16, 64, 1024) };
    let gpu_text = PrefillLaunch::of(Geometry::Gpu, 128, 32768);
    let gpu_vision = PrefillLaunch::of(Geometry::Gpu, 64, 32768);
    let shape = |l: PrefillLaunch| (l.registers, l.key_tile, l.rows, l.invocations, l.workgroup_bytes);
    assert_eq!(shape(gpu_text), (true, 32, 32, 128, 32768));
    assert_eq!(shape(gpu_vision), (true, 64, 32, 128, 32768));
    assert_eq!(shape(cpu), (false, 8, 16, 128, 13312));
    assert_eq!(PrefillLaunch::of(Geometry::Cpu, 128, 32768), cpu);
    assert_eq!(PrefillLaunch::of(Geometry::Gpu, 128, 16384), cpu, "less workgroup memory than the GPU shape needs");
    assert!(gpu_text.with_subgroups(true).subgroups && !gpu_text.with_subgroups(false).subgroups);
    assert!(!cpu.with_subgroups(true).subgroups, "the CPU shape has no cross-invocation reduction");
    assert_eq!((gpu_text.grid(&text), cpu.grid(&text)), ([64, 8, 1], [128, 8, 1]));
    assert_eq!((gpu_vision.grid(&vision), cpu.grid(&vision)), ([32, 16, 1], [64, 16, 1]));
    // Every workgroup of a row tile reads the same keys in both shapes; twice the rows per
    // workgroup halve the K/V traffic.
    let total =
        |l: &PrefillLaunch, s: &AttnShape| (0..l.grid(s)[0]).map(|x| kv_bytes_read(l, s, x)).sum::<u64>() * s.n_kv_head as u64;
    const MIB: u64 = 1 << 20;
    assert_eq!((total(&gpu_text, &text), total(&cpu, &text)), (130 * MIB, 258 * MIB));
    assert_eq!((total(&gpu_vision, &vision), total(&cpu, &vision)), (256 * MIB, 512 * MIB));
    assert_eq!((kv_bytes_read(&gpu_text, &text, 63), kv_bytes_read(&gpu_vision, &vision, 0)), (512 << 10, 512 << 10));
}

/// Record-time shape of a decode check.
struct DecodeCase {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    max_tok: u32,
    max_ctx: u32,
    kv: KvDtype,
    causal: bool,
}

impl DecodeCase {
    fn new(n_head: u32, n_kv: u32, hd: u32, max_tok: u32, max_ctx: u32, kv: KvDtype) -> DecodeCase {
        DecodeCase { n_head, n_kv, hd, max_tok, max_ctx, kv, causal: true }
    }
}

/// One decode program recorded for `max_ctx` and reused for every `(kv_len, n_tok)` step
/// (only the step uniform changes), against the CPU reference.
fn check_decode(gpu: &Device, rng: &mut Rng, d: &DecodeCase, steps: &[(u32, u32)]) {
    let DecodeCase { n_head, n_kv, hd, max_tok, max_ctx, kv, causal } = *d;
    let c = AttnCase { n_head, n_kv, hd, n_tok: 0, kv_start: max_ctx };
    let (_, k, v) = attn_data(rng, &c, 0);
    let shape = AttnShape { kv, causal, ..AttnShape::new(n_head, n_kv, hd, max_tok) };
    let (bk, bv) = (upload_cache(gpu, &k, kv), upload_cache(gpu, &v, kv));
    // What the kernel sees: the f16 cache holds the rounded values.
    let (k_seen, v_seen) = match kv {
        KvDtype::F32 => (k.clone(), v.clone()),
        KvDtype::F16 => (attention::round_f16(&k), attention::round_f16(&v)),
    };
    let bq = gpu.storage("q", (max_tok * n_head * hd * 4) as u64).unwrap();
    let out = gpu.storage("out", (max_tok * n_head * hd * 4) as u64).unwrap();
    let step = StepParams::create_buffer(gpu).unwrap();
    let scratch = DecodeScratch::new(gpu, &shape, attention::default_splits(max_ctx)).unwrap();
    let mut prog = Program::new();
    attention::attention_decode(&mut prog, gpu, &shape, &step, &bq, &bk, &bv, &scratch, &out).unwrap();
    for &(kv_len, n_tok) in steps {
        let q: Vec<f32> = rng.vec((n_tok * n_head * hd) as usize).iter().map(|v| v * 2.0).collect();
        gpu.write(&bq, 0, bytemuck::cast_slice(&q)).unwrap();
        StepParams::new(kv_len - n_tok, n_tok, kv_len - n_tok).write(gpu, &step).unwrap();
        prog.run(gpu).unwrap();
        let got = gpu.read_f32_blocking(&out, q.len()).unwrap();
        let reference = |k: &[f32], v: &[f32]| {
            let (kv_start, n_tok) = ((kv_len - n_tok) as usize, n_tok as usize);
            let (n_head, n_kv, hd) = (n_head as usize, n_kv as usize, hd as usize);
            attention::attention_ref(&q, k, v, n_tok, kv_start, n_head, n_kv, hd, shape.scale, causal)
        };
        let err = rel_l2(&got, &reference(&k_seen, &v_seen));
        eprintln!(
            "{} decode {kv:?} h {n_head}/{n_kv} hd {hd} rows/wg {} splits {}/{} kv_len {kv_len} n_tok {n_tok} causal {causal}: rel {err:.2e}",
            variant(gpu),
            gpu_attention::decode_rows(&shape),
            gpu_attention::active_splits(kv_len, scratch.n_split),
            scratch.n_split
        );
        assert!(err < TOL_ATTN_F32.max(TOL_ATTN_F16_KV_ROUNDED), "{} decode {kv:?} kv_len {kv_len}: rel err {err}", variant(gpu));
        if kv == KvDtype::F16 {
            let err = rel_l2(&got, &reference(&k, &v));
            eprintln!("  vs the unrounded f32 cache: rel {err:.2e}");
            assert!(err < TOL_ATTN_F16_KV, "decode f16 cache vs f32 values, kv_len {kv_len}: rel err {err}");
        }
    }
}

#[test]
fn decode_matches_cpu_for_every_kv_len_with_one_program() {
    for ((geometry, allow_subgroups), gpu) in VARIANTS.into_iter().zip(variants()) {
        let mut rng = Rng::new(31);
        let steps = [(1, 1), (2, 1), (1000, 1), (4097, 1), (300, 1)];
        check_decode(&gpu, &mut rng, &DecodeCase::new(8, 2, 128, 1, 4097, KvDtype::F32), &steps);
        check_decode(&gpu, &mut rng, &DecodeCase::new(4, 4, 64, 1, 4097, KvDtype::F32), &steps);
        check_decode(&gpu, &mut rng, &DecodeCase::new(6, 3, 8, 1, 1000, KvDtype::F32), &[(1, 1), (2, 1), (999, 1)]);
        assert_subgroup_kernels(&gpu, geometry == Geometry::Gpu && allow_subgroups);
    }
}

#[test]
fn decode_handles_several_new_tokens_and_row_chunks() {
    for gpu in variants() {
        let mut rng = Rng::new(32);
        // 5 tokens x group 4 = 20 rows: three chunks of 8 rows; causal within the new tokens.
        check_decode(
            &gpu,
            &mut rng,
            &DecodeCase::new(8, 2, 128, 5, 2000, KvDtype::F32),
            &[(5, 5), (1003, 5), (2000, 3), (77, 1)],
        );
        check_decode(&gpu, &mut rng, &DecodeCase::new(4, 1, 80, 6, 600, KvDtype::F32), &[(6, 6), (600, 6)]);
        // Non-causal (every new token sees all kv_start + n_tok keys), as a vision encoder would.
        let full = DecodeCase { causal: false, ..DecodeCase::new(8, 2, 64, 4, 900, KvDtype::F32) };
        check_decode(&gpu, &mut rng, &full, &[(4, 4), (700, 3), (900, 4)]);
    }
}

#[test]
fn decode_reads_an_f16_cache() {
    for gpu in variants() {
        let mut rng = Rng::new(33);
        check_decode(&gpu, &mut rng, &DecodeCase::new(8, 2, 128, 1, 4097, KvDtype::F16), &[(1, 1), (1000, 1), (4097, 1)]);
        check_decode(&gpu, &mut rng, &DecodeCase::new(8, 2, 128, 5, 2000, KvDtype::F16), &[(5, 5), (1003, 5), (2000, 3)]);
        check_decode(&gpu, &mut rng, &DecodeCase::new(6, 3, 8, 1, 1000, KvDtype::F16), &[(2, 1), (999, 1)]);
    }
}

/// Every group size of the target models (1; 3: SmolLM2; 4: Ministral 3 3B; 8; and 16, wider
/// than a workgroup's rows), head_dim 64 and 128, both caches, one and several new tokens,
/// at a kv_len far below max_ctx (one or two active splits of 24) and near max_ctx (all).
#[test]
fn decode_covers_group_sizes_head_dims_and_context_lengths() {
    for gpu in variants() {
        let mut rng = Rng::new(34);
        let max_ctx = 3000;
        let heads = [(2, 2), (9, 3), (8, 2), (8, 1), (16, 1)];
        for (i, &(n_head, n_kv)) in heads.iter().enumerate() {
            for hd in [64, 128] {
                // Alternate the cache type so that each group size meets both across head_dims.
                let kv = if (i + hd as usize / 64).is_multiple_of(2) { KvDtype::F32 } else { KvDtype::F16 };
                // Short after long: the splits the long step wrote must not leak into the short one.
                let steps = [(2999, 1), (1, 1), (max_ctx, 1), (150, 1)];
                check_decode(&gpu, &mut rng, &DecodeCase::new(n_head, n_kv, hd, 1, max_ctx, kv), &steps);
                let steps = [(3, 3), (max_ctx - 1, 2), (200, 3), (max_ctx, 3)];
                check_decode(&gpu, &mut rng, &DecodeCase::new(n_head, n_kv, hd, 3, max_ctx, kv), &steps);
            }
        }
    }
}

/// The workgroup holds exactly the query heads of one KV group (times tokens), and the grid
/// is recorded for max_ctx while kv_len picks the active splits.
#[test]
fn decode_rows_are_the_kv_group_and_splits_follow_kv_len() {
    let rows = |n_head, n_kv, max_tok| gpu_attention::decode_rows(&AttnShape::new(n_head, n_kv, 64, max_tok));
    assert_eq!(rows(32, 8, 1), 4, "Ministral 3 3B decode");
    assert_eq!(rows(9, 3, 1), 3, "SmolLM2 decode");
    assert_eq!((rows(4, 4, 1), rows(8, 1, 1)), (1, 8));
    assert_eq!((rows(32, 8, 5), rows(9, 3, 5), rows(4, 4, 3)), (8, 6, 3), "several tokens per workgroup");
    assert_eq!((rows(16, 1, 1), rows(12, 1, 1), rows(36, 3, 1)), (8, 6, 6), "groups wider than a workgroup");
    let ministral = AttnShape::new(32, 8, 128, 1);
    let n_split = attention::default_splits(32768);
    assert_eq!(gpu_attention::decode_grid(&ministral, n_split), [64, 8, 1]);
    assert_eq!(gpu_attention::decode_grid(&AttnShape::new(32, 8, 128, 5), n_split), [64, 8, 3]);
    let active = |kv_len| gpu_attention::active_splits(kv_len, n_split);
    assert_eq!((active(0), active(1), active(128), active(129), active(4096), active(32768)), (1, 1, 1, 2, 32, 64));
    // Every active split holds keys (the last one too), and together they cover kv_len.
    for kv_len in 1..=32768 {
        let (per, n) = (gpu_attention::split_keys(kv_len, n_split), active(kv_len));
        assert!(per.is_multiple_of(gpu_attention::DECODE_TILE) && n <= n_split, "kv_len {kv_len}");
        assert!((n - 1) * per < kv_len && n * per >= kv_len, "kv_len {kv_len}: {n} splits of {per}");
    }
    assert_eq!((gpu_attention::split_keys(8193, n_split), active(8193)), (192, 43), "capped: fewer, longer splits");
}

/// Splits past `active_splits(kv_len)` are neither run nor merged: scratch entries primed
/// with a dominant fake partial (m = 50, l = 1, o = 1000) stay untouched and out of the result.
#[test]
fn decode_skips_and_ignores_inactive_splits() {
    for gpu in variants() {
        let mut rng = Rng::new(35);
        let (n_head, n_kv, hd, max_ctx) = (8u32, 2u32, 64u32, 2048u32);
        let shape = AttnShape::new(n_head, n_kv, hd, 1);
        let (k, v) = (rng.vec((max_ctx * n_kv * hd) as usize), rng.vec((max_ctx * n_kv * hd) as usize));
        let (bk, bv) = (upload(&gpu, &k), upload(&gpu, &v));
        let bq = gpu.storage("q", (n_head * hd * 4) as u64).unwrap();
        let out = gpu.storage("out", (n_head * hd * 4) as u64).unwrap();
        let step = StepParams::create_buffer(&gpu).unwrap();
        let scratch = DecodeScratch::new(&gpu, &shape, attention::default_splits(max_ctx)).unwrap();
        let n_split = scratch.n_split as usize;
        assert_eq!(n_split, 8);
        let mut prog = Program::new();
        attention::attention_decode(&mut prog, &gpu, &shape, &step, &bq, &bk, &bv, &scratch, &out).unwrap();
        for kv_len in [100u32, 300, 2048] {
            let active = gpu_attention::active_splits(kv_len, scratch.n_split) as usize;
            let rows = n_head as usize * n_split;
            gpu.write(&scratch.ml, 0, bytemuck::cast_slice(&[50f32, 1.0].repeat(rows))).unwrap();
            gpu.write(&scratch.o, 0, bytemuck::cast_slice(&vec![1000f32; rows * hd as usize])).unwrap();
            let q = rng.vec((n_head * hd) as usize);
            gpu.write(&bq, 0, bytemuck::cast_slice(&q)).unwrap();
            StepParams::new(kv_len - 1, 1, kv_len - 1).write(&gpu, &step).unwrap();
            prog.run(&gpu).unwrap();
            let got = gpu.read_f32_blocking(&out, q.len()).unwrap();
            let (n, nh, nk, d) = (kv_len as usize, n_head as usize, n_kv as usize, hd as usize);
            let want = attention::attention_ref(&q, &k, &v, 1, n - 1, nh, nk, d, shape.scale, true);
            let err = rel_l2(&got, &want);
            eprintln!("decode kv_len {kv_len}: {active} of {n_split} splits, rel {err:.2e}");
            assert!(err < TOL_ATTN_F32, "kv_len {kv_len}: rel err {err} (stale splits merged?)");
            let ml = gpu.read_f32_blocking(&scratch.ml, 2 * rows).unwrap();
            for (row, parts) in ml.chunks(2 * n_split).enumerate() {
                for (s, m_l) in parts.chunks(2).enumerate() {
                    let primed = m_l == [50.0, 1.0];
                    assert_eq!(primed, s >= active, "kv_len {kv_len} row {row} split {s}: written {}", !primed);
                }
            }
        }
    }
}

#[test]
fn prefill_reads_an_f16_cache() {
    for gpu in variants() {
        let mut rng = Rng::new(22);
        for (n_head, n_kv, hd) in [(4, 2, 64), (8, 2, 128), (4, 1, 80)] {
            for (n_tok, kv_start, causal) in [(5, 0, true), (67, 100, true), (20, 0, false)] {
                let c = AttnCase { n_head, n_kv, hd, n_tok, kv_start };
                let (q, k, v) = attn_data(&mut rng, &c, 3);
                let shape = AttnShape { causal, kv: KvDtype::F16, ..AttnShape::new(n_head, n_kv, hd, n_tok) };
                let (bk, bv) = (upload_cache(&gpu, &k, KvDtype::F16), upload_cache(&gpu, &v, KvDtype::F16));
                let bq = upload(&gpu, &q);
                let out = gpu.storage("out", (n_tok * n_head * hd * 4) as u64).unwrap();
                let step = step_buffer(&gpu, StepParams::new(kv_start, n_tok, kv_start));
                let mut prog = Program::new();
                attention::attention_prefill(&mut prog, &gpu, &shape, &step, &bq, &bk, &bv, &out).unwrap();
                prog.run(&gpu).unwrap();
                let got = gpu.read_f32_blocking(&out, (n_tok * n_head * hd) as usize).unwrap();
                let reference = |k: &[f32], v: &[f32]| {
                    let (n_tok, kv_start, n_head, n_kv, hd) =
                        (n_tok as usize, kv_start as usize, n_head as usize, n_kv as usize, hd as usize);
                    attention::attention_ref(&q, k, v, n_tok, kv_start, n_head, n_kv, hd, shape.scale, causal)
                };
                let exact = rel_l2(&got, &reference(&attention::round_f16(&k), &attention::round_f16(&v)));
                let err = rel_l2(&got, &reference(&k, &v));
                eprintln!(
                    "prefill f16 cache h {n_head}/{n_kv} hd {hd} n_tok {n_tok} kv_start {kv_start}: \
                     rel {exact:.2e} (vs f32 values {err:.2e})"
                );
                assert!(exact < TOL_ATTN_F16_KV_ROUNDED, "prefill f16 cache vs its rounded values: rel err {exact}");
                assert!(err < TOL_ATTN_F16_KV, "prefill f16 cache vs the f32 values: rel err {err}");
            }
        }
    }
}

/// One prefill dispatch of `c` over a cache of `kv`, against the f64 reference: rel L2 vs the
/// values the cache holds (f16-rounded or not) and vs the unrounded f32 values.
fn prefill_errors(gpu: &Device, rng: &mut Rng, c: &AttnCase, causal: bool, kv: KvDtype) -> (f32, f32) {
    let AttnCase { n_head, n_kv, hd, n_tok, kv_start } = *c;
    let (q, k, v) = attn_data(rng, c, 3);
    let shape = AttnShape { causal, kv, ..AttnShape::new(n_head, n_kv, hd, n_tok) };
    let (bk, bv) = (upload_cache(gpu, &k, kv), upload_cache(gpu, &v, kv));
    let bq = upload(gpu, &q);
    let out = gpu.storage("out", (n_tok * n_head * hd * 4) as u64).unwrap();
    let step = step_buffer(gpu, StepParams::new(kv_start, n_tok, kv_start));
    let mut prog = Program::new();
    attention::attention_prefill(&mut prog, gpu, &shape, &step, &bq, &bk, &bv, &out).unwrap();
    prog.run(gpu).unwrap();
    let got = gpu.read_f32_blocking(&out, (n_tok * n_head * hd) as usize).unwrap();
    let reference = |k: &[f32], v: &[f32]| {
        let (n_tok, kv_start, n_head, n_kv, hd) =
            (n_tok as usize, kv_start as usize, n_head as usize, n_kv as usize, hd as usize);
        attention::attention_ref(&q, k, v, n_tok, kv_start, n_head, n_kv, hd, shape.scale, causal)
    };
    let exact = match kv {
        KvDtype::F32 => reference(&k, &v),
        KvDtype::F16 => reference(&attention::round_f16(&k), &attention::round_f16(&v)),
    };
    (rel_l2(&got, &exact), rel_l2(&got, &reference(&k, &v)))
}

/// Heads wider than 128 (Qwen3.5's 256 with GQA group 4; 192; 132, an odd vec4 count just
/// past 128) in every launch variant: the CPU geometry runs the register kernel with 8-key
/// tiles, the GPU one with 16-key tiles. Chunks from 1 token to 70 (past a CPU workgroup's
/// 32 rows, over up to 20 tiles of keys), chunk offsets, causal and not, both caches.
#[test]
fn prefill_matches_cpu_at_head_dim_256() {
    for gpu in variants() {
        let name = variant(&gpu);
        let mut rng = Rng::new(23);
        for (n_head, n_kv, hd) in [(8, 2, 256), (4, 1, 192), (2, 2, 132)] {
            let cases = [
                (1, 0, true, KvDtype::F32),
                (70, 0, true, KvDtype::F32),
                (9, 37, true, KvDtype::F32),
                (45, 90, true, KvDtype::F16),
                (70, 0, false, KvDtype::F16),
                (30, 0, false, KvDtype::F32),
            ];
            for (n_tok, kv_start, causal, kv) in cases {
                let c = AttnCase { n_head, n_kv, hd, n_tok, kv_start };
                let (exact, vs_f32) = prefill_errors(&gpu, &mut rng, &c, causal, kv);
                eprintln!(
                    "{name} prefill {kv:?} h {n_head}/{n_kv} hd {hd} n_tok {n_tok} kv_start {kv_start} causal {causal}: \
                     rel {exact:.2e} (vs f32 values {vs_f32:.2e})"
                );
                assert!(exact < TOL_ATTN_F32.max(TOL_ATTN_F16_KV_ROUNDED), "{name} prefill hd {hd} n_tok {n_tok}: rel {exact}");
                assert!(vs_f32 < TOL_ATTN_F16_KV, "{name} prefill hd {hd} {kv:?} vs f32 values: rel {vs_f32}");
            }
        }
        // Past MAX_HEAD_DIM (or not a multiple of 4): a typed shape error, nothing recorded.
        for hd in [attention::MAX_HEAD_DIM + 4, 254] {
            let b = gpu.storage("b", 4 << 10).unwrap();
            let step = StepParams::create_buffer(&gpu).unwrap();
            let r = attention::attention_prefill(&mut Program::new(), &gpu, &AttnShape::new(2, 2, hd, 1), &step, &b, &b, &b, &b);
            assert!(matches!(r, Err(webvlm::backend::gpu::GpuError::Shape(_))), "head_dim {hd} accepted");
        }
    }
}

/// Decode at heads wider than 128: Qwen3.5 0.8B / 2B (8 heads, 2 KV heads) and 4B / 9B (16, 4)
/// at head_dim 256, both caches, one token over short contexts and all 17 splits of a long
/// one; several tokens per workgroup and row chunks; a group of 6 at 192 and a non-causal
/// odd-width case (132).
#[test]
fn decode_matches_cpu_at_head_dim_256() {
    for gpu in variants() {
        let mut rng = Rng::new(36);
        let steps = [(1, 1), (130, 1), (4097, 1), (700, 1)];
        check_decode(&gpu, &mut rng, &DecodeCase::new(8, 2, 256, 1, 4097, KvDtype::F32), &steps);
        check_decode(&gpu, &mut rng, &DecodeCase::new(16, 4, 256, 1, 4097, KvDtype::F16), &steps);
        // 3 tokens x group 4 = 12 rows: two chunks (8 rows, then 4); causal within the tokens.
        let steps = [(3, 3), (1500, 3), (200, 2)];
        check_decode(&gpu, &mut rng, &DecodeCase::new(8, 2, 256, 3, 1500, KvDtype::F16), &steps);
        check_decode(&gpu, &mut rng, &DecodeCase::new(6, 1, 192, 2, 900, KvDtype::F32), &[(2, 2), (900, 2), (65, 1)]);
        let full = DecodeCase { causal: false, ..DecodeCase::new(4, 2, 132, 4, 600, KvDtype::F32) };
        check_decode(&gpu, &mut rng, &full, &[(4, 4), (600, 3)]);
    }
}

/// Workgroup memory per head width: models of head_dim <= 128 keep the 128-wide footprints;
/// 256-wide heads take 16-key tiles in the GPU prefill shape (32 KiB) and 8-key tiles in the
/// register kernel where the CPU shape would be used (16 KiB, WebGPU's default limit), and
/// decode stays within 16 KiB at both widths.
#[test]
fn launch_shapes_at_head_dim_256_fit_their_workgroup_memory() {
    let shape = |l: PrefillLaunch| (l.registers, l.key_tile, l.rows, l.invocations, l.workgroup_bytes);
    for hd in [132, 192, 256] {
        assert_eq!(shape(PrefillLaunch::of(Geometry::Gpu, hd, 32768)), (true, 16, 32, 128, 32768), "hd {hd}");
        let small = PrefillLaunch::of(Geometry::Gpu, hd, 16384);
        assert_eq!(shape(small), (true, 8, 32, 128, 16384), "hd {hd}: 8-key tiles in 16 KiB");
        assert_eq!(PrefillLaunch::of(Geometry::Cpu, hd, 32768), small, "hd {hd}: the CPU geometry keeps to 16 KiB");
        assert!(small.with_subgroups(true).subgroups, "the register kernel reduces across lanes");
        // A tile buffer (half the workgroup memory) holds key_tile rows of the widest head.
        assert!(small.key_tile * 256 * 4 <= small.workgroup_bytes / 2);
    }
    for hd in [64, 80, 128] {
        assert_eq!(PrefillLaunch::of(Geometry::Cpu, hd, 32768), PrefillLaunch::CPU, "hd {hd}");
        assert_eq!(PrefillLaunch::of(Geometry::Gpu, hd, 16384), PrefillLaunch::CPU, "hd {hd}");
    }
    assert_eq!((RowWidth::of(128), RowWidth::of(132), RowWidth::of(256)), (RowWidth::W128, RowWidth::W256, RowWidth::W256));
    assert_eq!(RowWidth::W256.max_head_dim(), attention::MAX_HEAD_DIM);
    assert_eq!(RowWidth::W128.decode_workgroup_bytes(), 14560, "the 128-wide decode keeps its 14.2 KiB");
    assert_eq!(RowWidth::W256.decode_workgroup_bytes(), 15584);
    assert!(RowWidth::W256.decode_workgroup_bytes() <= 16384);
    // Qwen3.5 9B text prefill (16 heads, 4 KV heads, 512 tokens): 2048 rows in 64 tiles of 32.
    let qwen = AttnShape::new(16, 4, 256, 512);
    assert_eq!(PrefillLaunch::of(Geometry::Gpu, 256, 32768).grid(&qwen), [64, 4, 1]);
    assert_eq!(gpu_attention::decode_rows(&AttnShape::new(16, 4, 256, 1)), 4);
}

/// The decode loop as the model records it: RoPE of q (with query scaling), RoPE + store of
/// k/v, attention — prefill once, then one program recorded once and re-run per token with
/// only the step uniform rewritten; positions start at 20000 while cache rows start at 0.
#[test]
fn recorded_prefill_then_decode_steps_match_cpu() {
    for gpu in variants() {
        for kv in [KvDtype::F32, KvDtype::F16] {
            recorded_pipeline(&gpu, kv);
        }
    }
}

fn recorded_pipeline(gpu: &Device, kv: KvDtype) {
    let mut rng = Rng::new(41);
    let (n_head, n_kv, hd, max_ctx, n_pre, pos_base) = (8u32, 2u32, 64u32, 64u32, 37u32, 20000u32);
    let table = rope::rope_table(hd as usize, 1e6, Some(&Yarn::ministral3()));
    let freqs = RopeFreqs::upload(gpu, &table).unwrap();
    let qs = QScale { beta: 0.1, orig_ctx: 16384 };
    let row = (n_kv * hd) as usize;
    let kc = gpu.storage("kc", kv.cache_bytes(max_ctx, row as u32)).unwrap();
    let vc = gpu.storage("vc", kv.cache_bytes(max_ctx, row as u32)).unwrap();
    let step = StepParams::create_buffer(gpu).unwrap();
    let (mut cpu_k, mut cpu_v) = (Vec::new(), Vec::new());
    let record = |max_tok: u32, decode: bool| {
        let (q, k, v) = (
            gpu.storage("q", (max_tok * n_head * hd * 4) as u64).unwrap(),
            gpu.storage("k", (max_tok as usize * row * 4) as u64).unwrap(),
            gpu.storage("v", (max_tok as usize * row * 4) as u64).unwrap(),
        );
        let out = gpu.storage("out", (max_tok * n_head * hd * 4) as u64).unwrap();
        let (ql, kl) = (
            RopeLayout::dense(n_head, hd, max_tok, RopeMode::Adjacent),
            RopeLayout::dense(n_kv, hd, max_tok, RopeMode::Adjacent),
        );
        let shape = AttnShape { kv, ..AttnShape::new(n_head, n_kv, hd, max_tok) };
        let mut prog = Program::new();
        rope::rope_inplace(&mut prog, gpu, &step, &freqs, &q, &ql, qs).unwrap();
        rope::rope_kv_store(&mut prog, gpu, &step, &freqs, &k, &kl, &v, &kl, &kc, &vc, kv).unwrap();
        let scratch = DecodeScratch::new(gpu, &shape, 4).unwrap();
        if decode {
            attention::attention_decode(&mut prog, gpu, &shape, &step, &q, &kc, &vc, &scratch, &out).unwrap();
        } else {
            attention::attention_prefill(&mut prog, gpu, &shape, &step, &q, &kc, &vc, &out).unwrap();
        }
        (prog, q, k, v, out, ql, kl)
    };
    let prefill = record(n_pre, false);
    let decode = record(1, true);
    let mut kv_start = 0u32;
    for (prog, q, k, v, out, ql, kl) in [&prefill].into_iter().chain(std::iter::repeat_n(&decode, 6)) {
        let n_tok = if kv_start == 0 { n_pre } else { 1 };
        let (hq, hk, hv) =
            (rng.vec((n_tok * n_head * hd) as usize), rng.vec(n_tok as usize * row), rng.vec(n_tok as usize * row));
        for (b, h) in [(q, &hq), (k, &hk), (v, &hv)] {
            gpu.write(b, 0, bytemuck::cast_slice(h)).unwrap();
        }
        let s = StepParams::new(kv_start, n_tok, pos_base + kv_start);
        s.write(gpu, &step).unwrap();
        prog.run(gpu).unwrap();
        cpu_k.extend(rope::rope_ref(&hk, kl, n_tok as usize, &table, s.rope_pos0, QScale::NONE));
        cpu_v.extend(&hv);
        let q_rot = rope::rope_ref(&hq, ql, n_tok as usize, &table, s.rope_pos0, qs);
        let want = attention::attention_ref(
            &q_rot,
            &cpu_k,
            &cpu_v,
            n_tok as usize,
            kv_start as usize,
            n_head as usize,
            n_kv as usize,
            hd as usize,
            1.0 / (hd as f32).sqrt(),
            true,
        );
        let got = gpu.read_f32_blocking(out, want.len()).unwrap();
        let err = rel_l2(&got, &want);
        eprintln!("pipeline {kv:?} kv_start {kv_start} n_tok {n_tok}: rel {err:.2e}");
        let tol = if kv == KvDtype::F16 { TOL_ATTN_F16_KV } else { TOL_ATTN_F32 };
        assert!(err < tol, "{kv:?} kv_start {kv_start}: rel err {err}");
        kv_start += n_tok;
    }
}

/// Mllama's cross-attention kernel against its f64 reference: GQA, a strided q, tokens that
/// see one image's first tiles, two images' tiles, all keys, and a head wider than the
/// kernel's 64 invocations (output dims split over invocations) with more keys than a chunk.
#[test]
fn cross_attention_matches_reference() {
    use webvlm::kernels::cross_attention::{cross_attention, cross_attention_ref, CrossAttnShape};
    let gpu = gpu();
    for (head_dim, n_head, n_kv_head, tile_keys) in [(16, 4, 1, 5), (80, 4, 2, 37), (128, 2, 2, 3)] {
        let (n_tok, n_tiles) = (5u32, 8u32);
        let s = CrossAttnShape {
            n_tok,
            n_head,
            n_kv_head,
            head_dim,
            q_stride: n_head * head_dim + 8,
            n_tiles,
            tile_keys,
            scale: 1.0 / (head_dim as f32).sqrt(),
        };
        let mut rng = Rng::new(head_dim as u64);
        let n_keys = (n_tiles * tile_keys) as usize;
        let q: Vec<f32> = rng.vec((n_tok * s.q_stride) as usize).iter().map(|x| 3.0 * x).collect();
        let k = rng.vec(n_keys * (n_kv_head * head_dim) as usize);
        let v = rng.vec(n_keys * (n_kv_head * head_dim) as usize);
        // Rows: all tiles; image 0's first tile; image 0's 3 tiles; image 1's 4; both images' first 2.
        let rows: [&[u32]; 5] =
            [&[1; 8], &[1, 0, 0, 0, 0, 0, 0, 0], &[1, 1, 1, 0, 0, 0, 0, 0], &[0, 0, 0, 0, 1, 1, 1, 1], &[1, 1, 0, 0, 1, 1, 0, 0]];
        let mask: Vec<u32> = rows.concat();
        let buf = |label: &str, data: &[u8]| gpu.storage_with(label, data).unwrap();
        let (qb, kb, vb, mb) = (
            buf("q", bytemuck::cast_slice(&q)),
            buf("k", bytemuck::cast_slice(&k)),
            buf("v", bytemuck::cast_slice(&v)),
            buf("mask", bytemuck::cast_slice(&mask)),
        );
        let out = gpu.storage("out", 4 * (n_tok * n_head * head_dim) as u64).unwrap();
        let mut prog = Program::new();
        cross_attention(&mut prog, &gpu, &s, &qb, &kb, &vb, &mb, &out).unwrap();
        prog.run(&gpu).unwrap();
        let got = gpu.read_f32_blocking(&out, (n_tok * n_head * head_dim) as usize).unwrap();
        let want = cross_attention_ref(&s, &q, &k, &v, &mask);
        let err = max_abs(&got, &want);
        assert!(err <= TOL_ATTN_F32, "head_dim {head_dim}: max abs error {err}");
        // The mask matters: token 1 (one tile) differs from token 0 (all tiles).
        let row = (n_head * head_dim) as usize;
        assert!(max_abs(&want[..row], &want[row..2 * row]) > 1e-2);
    }
}

/// Mllama's gated residual add against its f64 reference: with and without the row mask,
/// and a gate large enough that tanh saturates.
#[test]
fn gated_add_matches_reference() {
    use webvlm::kernels::cross_attention::{gated_add, gated_add_ref};
    let gpu = gpu();
    let (n_tok, dim) = (3u32, 70u32);
    let mut rng = Rng::new(7);
    let (x, y) = (rng.vec((n_tok * dim) as usize), rng.vec((n_tok * dim) as usize));
    let row_mask = [1.0f32, 0.0, 1.0];
    for (gate, masked) in [(0.37f32, false), (-0.8, true), (45.0, true)] {
        let buf = |data: &[f32]| gpu.storage_with("t", bytemuck::cast_slice(data)).unwrap();
        let (gb, mb, yb, xb) = (buf(&[gate]), buf(&row_mask), buf(&y), buf(&x));
        let mut prog = Program::new();
        gated_add(&mut prog, &gpu, &gb, masked.then_some(&mb), &yb, &xb, n_tok, dim).unwrap();
        prog.run(&gpu).unwrap();
        let got = gpu.read_f32_blocking(&xb, x.len()).unwrap();
        let want = gated_add_ref(gate, masked.then_some(&row_mask[..]), &y, &x, dim as usize);
        assert!(max_abs(&got, &want) < 1e-6, "gate {gate}: {}", max_abs(&got, &want));
        // The masked row is untouched.
        assert_eq!(masked, got[dim as usize..2 * dim as usize] == x[dim as usize..2 * dim as usize]);
    }
}

/// The sequences of a batched decode step with their caches in one KV arena: RoPE with the
/// cache store and split-K attention of all of them in one program (`*_seqs`) give every
/// sequence the bits its own one-token dispatches give it on caches of its own — at its own
/// position, cache length and `kv_base` (cache lengths 1 to max_ctx; groups of 1, 3 and 16,
/// the last wider than a workgroup's rows; f32 and f16 caches).
#[test]
fn sequences_in_one_kv_arena_get_their_bits_alone() {
    for gpu in variants() {
        let mut rng = Rng::new(35);
        for (n_head, n_kv, hd, kv) in [(9, 3, 64, KvDtype::F32), (8, 8, 128, KvDtype::F16), (16, 1, 64, KvDtype::F32)] {
            let (max_ctx, lens) = (600u32, [600u32, 1, 77, 300]);
            let (n_seq, row) = (lens.len() as u32, (n_kv * hd) as usize);
            let width = (n_head + 2 * n_kv) * hd;
            let qkv = rng.vec((n_seq * width) as usize);
            // The arena: every sequence's range filled with its earlier rows (random).
            let held: Vec<f32> = rng.vec(n_seq as usize * max_ctx as usize * row);
            let held_v: Vec<f32> = rng.vec(held.len());
            let table = rope::rope_table(hd as usize, 1e4, None);
            let freqs = RopeFreqs::upload(&gpu, &table).unwrap();
            let k = RopeLayout {
                n_heads: n_kv,
                head_dim: hd,
                mode: RopeMode::Adjacent,
                max_tok: n_seq,
                stride: width,
                offset: n_head * hd,
            };
            let layout = rope::QkvRope { n_q_heads: n_head, k, v_offset: (n_head + n_kv) * hd, q_scale: QScale::NONE };
            let shape = |max_tok| AttnShape { kv, q_stride: width, ..AttnShape::new(n_head, n_kv, hd, max_tok) };
            let n_split = attention::default_splits(max_ctx);
            let out_row = (n_head * hd) as usize;
            // Sequence s's step: its new token at cache row len - 1, position 1000 s + len - 1.
            let step_of = |s: usize| StepParams::new(lens[s] - 1, 1, 1000 * s as u32 + lens[s] - 1);

            let (arena_k, arena_v) = (upload_cache(&gpu, &held, kv), upload_cache(&gpu, &held_v, kv));
            let steps: Vec<StepParams> = (0..n_seq as usize).map(|s| step_of(s).at_base(s as u32 * max_ctx)).collect();
            let bsteps = StepParams::create_rows_buffer(&gpu, n_seq).unwrap();
            gpu.write(&bsteps, 0, bytemuck::cast_slice(&steps)).unwrap();
            let (bqkv, out) = (upload(&gpu, &qkv), gpu.storage("out", (n_seq as usize * out_row * 4) as u64).unwrap());
            let scratch = DecodeScratch::new(&gpu, &shape(n_seq), n_split).unwrap();
            let mut prog = Program::new();
            rope::rope_qkv_store_seqs(&mut prog, &gpu, &freqs, kv, &bsteps, &bqkv, &layout, (&arena_k, &arena_v)).unwrap();
            attention::attention_decode_seqs(
                &mut prog,
                &gpu,
                &shape(n_seq),
                &bsteps,
                &bqkv,
                (&arena_k, &arena_v),
                &scratch,
                &out,
            )
            .unwrap();
            prog.run(&gpu).unwrap();
            let cells = n_seq as usize * max_ctx as usize * row;
            let (got_k, got_v) = (read_cache(&gpu, &arena_k, cells, kv), read_cache(&gpu, &arena_v, cells, kv));
            let got_q = gpu.read_f32_blocking(&bqkv, qkv.len()).unwrap();
            let got = gpu.read_f32_blocking(&out, n_seq as usize * out_row).unwrap();

            for s in 0..n_seq as usize {
                let range = s * max_ctx as usize * row..(s + 1) * max_ctx as usize * row;
                let (own_k, own_v) =
                    (upload_cache(&gpu, &held[range.clone()], kv), upload_cache(&gpu, &held_v[range.clone()], kv));
                let one = |rows: &[f32]| rows[s * width as usize..(s + 1) * width as usize].to_vec();
                let (bq, own_out) = (upload(&gpu, &one(&qkv)), gpu.storage("out", out_row as u64 * 4).unwrap());
                let step = step_buffer(&gpu, step_of(s));
                let alone = rope::QkvRope { k: RopeLayout { max_tok: 1, ..k }, ..layout };
                let seq = rope::QkvSeq { step: &step, qkv: &bq, layout: alone, k_cache: &own_k, v_cache: &own_v };
                let own_scratch = DecodeScratch::new(&gpu, &shape(1), n_split).unwrap();
                let mut prog = Program::new();
                rope::rope_qkv_store(&mut prog, &gpu, &freqs, kv, &[seq]).unwrap();
                attention::attention_decode(&mut prog, &gpu, &shape(1), &step, &bq, &own_k, &own_v, &own_scratch, &own_out)
                    .unwrap();
                prog.run(&gpu).unwrap();
                let cells = max_ctx as usize * row;
                let what =
                    format!("{} h {n_head}/{n_kv} hd {hd} {kv:?}, sequence {s} of cache length {}", variant(&gpu), lens[s]);
                assert_eq!(gpu.read_f32_blocking(&bq, width as usize).unwrap(), one(&got_q), "{what}: q|k|v rows");
                assert_eq!(read_cache(&gpu, &own_k, cells, kv), got_k[range.clone()], "{what}: K rows");
                assert_eq!(read_cache(&gpu, &own_v, cells, kv), got_v[range], "{what}: V rows");
                let own = gpu.read_f32_blocking(&own_out, out_row).unwrap();
                assert_eq!(own, got[s * out_row..(s + 1) * out_row], "{what}: attention");
            }
            eprintln!(
                "{} h {n_head}/{n_kv} hd {hd} {kv:?}: {n_seq} sequences in one arena, the bits of each alone",
                variant(&gpu)
            );
        }
    }
}
