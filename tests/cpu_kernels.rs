//! The CPU backend's f32 ops other than matvec (`webvlm::backend::cpu::{norm, elementwise,
//! rope, attention}`) against the existing CPU references of their GPU counterparts
//! (`kernels::*::*_ref`), at {1, 2, 3} threads, on random inputs. No GPU.
//!
//! Limits are about twice the largest error measured on x86-64 (the figure is in each
//! comment). Errors are relative: `max |got - want| / max |want|` per output ([`rel_max`]), or
//! per element for the activations ([`rel_elem`]).

use webvlm::backend::cpu::attention::{attention_decode, attention_prefill, attention_seqs, SeqAttention, BLOCK};
use webvlm::backend::cpu::elementwise::{
    add_inplace, copy_first_halves, gelu_inplace, gelu_tanh, sigmoid_mul_second_halves, silu_mul_halves, silu_mul_inplace,
};
use webvlm::backend::cpu::norm::{layer_norm, rms_norm};
use webvlm::backend::cpu::rope::{rope_inplace, rope_inplace_mrope, rope_kv_store, rope_qkv_store, Positions, QkvRows};
use webvlm::backend::cpu::{simd, ShapeError, Simd, ThreadPool};
use webvlm::gguf::SplitMix64;
use webvlm::kernels::attention::{attention_ref, pack_f16, round_f16, AttnShape, KvDtype};
use webvlm::kernels::elementwise::{gelu_ref, sigmoid_mul_second_halves_ref, silu_mul_ref};
use webvlm::kernels::norm::rms_norm_ref;
use webvlm::kernels::rope::{mrope_ref, rope_ref, rope_table, QScale, QkvRope, RopeLayout, RopeMode, RopeTable, Yarn};
use webvlm::kernels::vision_qwen::{gelu_tanh_ref, layer_norm_ref};

const THREADS: [usize; 3] = [1, 2, 3];

fn pools() -> Vec<ThreadPool> {
    THREADS.iter().map(|&t| ThreadPool::new(t).unwrap()).collect()
}

fn random(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

/// `max |got - want| / max |want|`.
fn rel_max(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let err = got.iter().zip(want).map(|(&a, &b)| (a as f64 - b as f64).abs()).fold(0.0, f64::max);
    let norm = want.iter().map(|&b| (b as f64).abs()).fold(0.0, f64::max);
    err / norm
}

/// `max |got - want| / |want|` per element (`want` 0 must be matched exactly).
fn rel_elem(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&a, &b)| if b == 0.0 { (a as f64).abs() * f64::INFINITY } else { (a as f64 - b).abs() / b.abs() })
        .fold(0.0, f64::max)
}

/// Checks `err <= limit` and reports it.
fn report(what: &str, err: f64, limit: f64) {
    eprintln!("{what}: {err:.2e} (limit {limit:.0e})");
    assert!(err <= limit, "{what}: error {err:.3e} over {limit:.0e}");
}

// ---- norm ----

/// f64 RMSNorm / LayerNorm (`b` None: RMSNorm), to show which side of a difference from the
/// f32 references is the error.
fn norm_f64(x: &[f32], w: &[f32], b: Option<&[f32]>, dim: usize, eps: f32) -> Vec<f32> {
    x.chunks(dim)
        .flat_map(|row| {
            let r: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            let mean = if b.is_some() { r.iter().sum::<f64>() / dim as f64 } else { 0.0 };
            let ms = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / dim as f64;
            let s = 1.0 / (ms + eps as f64).sqrt();
            (0..dim).map(move |i| ((r[i] - mean) * s * w[i] as f64 + b.map_or(0.0, |b| b[i] as f64)) as f32)
        })
        .collect()
}

/// (rows, dim): odd dims, and rows enough for several tasks.
const NORM_SHAPES: [(usize, usize); 3] = [(5, 37), (1, 4096), (19, 2048)];

#[test]
fn rms_norm_matches_ref() {
    for pool in pools() {
        for (rows, dim) in NORM_SHAPES {
            let x = random(rows * dim, -2.0, 2.0, 1 + dim as u64);
            let w = random(dim, 0.5, 1.5, 2);
            let mut y = vec![f32::NAN; rows * dim];
            rms_norm(&pool, &x, &w, &mut y, dim, 1e-6).unwrap();
            let what = format!("rms_norm {rows}x{dim} t{}", pool.threads());
            // Measured 6.5e-7 against the reference, whose sequential f32 sum is most of it.
            report(&what, rel_max(&y, &rms_norm_ref(&x, &w, dim, 1e-6)), 1.3e-6);
            // Measured 1.9e-7.
            report(&format!("{what} vs f64"), rel_max(&y, &norm_f64(&x, &w, None, dim, 1e-6)), 4e-7);
        }
    }
}

#[test]
fn layer_norm_matches_ref() {
    for pool in pools() {
        for (rows, dim) in NORM_SHAPES {
            // A mean far from 0, as LayerNorm inputs have.
            let x = random(rows * dim, 1.0, 5.0, 3 + dim as u64);
            let (w, b) = (random(dim, 0.5, 1.5, 4), random(dim, -0.5, 0.5, 5));
            let mut y = vec![f32::NAN; rows * dim];
            layer_norm(&pool, &x, &w, &b, &mut y, dim, 1e-5).unwrap();
            let want = layer_norm_ref(&x, &w, &b, dim, 1e-5);
            let what = format!("layer_norm {rows}x{dim} t{}", pool.threads());
            // Measured 2.7e-6 against the reference, whose sequential f32 sums are most of it.
            report(&what, rel_max(&y, &want), 5.5e-6);
            // Measured 4.0e-7.
            report(&format!("{what} vs f64"), rel_max(&y, &norm_f64(&x, &w, Some(&b), dim, 1e-5)), 8e-7);
        }
    }
}

// ---- elementwise ----

/// More than two 16384-element tasks, and odd.
const N_ELEM: usize = 40_001;

#[test]
fn add_and_silu_mul_match_ref() {
    for pool in pools() {
        let (a, b) = (random(N_ELEM, -4.0, 4.0, 6), random(N_ELEM, -4.0, 4.0, 7));
        let mut r = b.clone();
        add_inplace(&pool, &a, &mut r).unwrap();
        assert!(r.iter().zip(a.iter().zip(&b)).all(|(r, (a, b))| *r == b + a), "add_inplace");

        let mut g = a.clone();
        silu_mul_inplace(&pool, &b, &mut g).unwrap();
        // e^x by a polynomial within 2 ulp of libm's `expf` (so that it vectorizes): measured 1.2e-7.
        report(&format!("silu_mul_inplace t{}", pool.threads()), rel_max(&g, &silu_mul_ref(&a, &b)), 3e-7);

        // [rows][2 half] with odd half.
        let (rows, half) = (41, 517);
        let gu = random(rows * 2 * half, -6.0, 6.0, 8);
        let (gate, up): (Vec<f32>, Vec<f32>) = (
            gu.chunks(2 * half).flat_map(|r| r[..half].to_vec()).collect(),
            gu.chunks(2 * half).flat_map(|r| r[half..].to_vec()).collect(),
        );
        let mut out = vec![f32::NAN; rows * half];
        silu_mul_halves(&pool, &gu, &mut out, half).unwrap();
        report(&format!("silu_mul_halves t{}", pool.threads()), rel_max(&out, &silu_mul_ref(&gate, &up)), 3e-7);

        copy_first_halves(&pool, &gu, &mut out, half).unwrap();
        assert_eq!(out, gate, "copy_first_halves");

        let mut y = random(rows * half, -3.0, 3.0, 9);
        let want: Vec<f64> = sigmoid_mul_second_halves_ref(&gu, &y, half).iter().map(|&v| v as f64).collect();
        sigmoid_mul_second_halves(&pool, &gu, &mut y, half).unwrap();
        // Measured 1.5e-7 per element.
        report(&format!("sigmoid_mul_second_halves t{}", pool.threads()), rel_elem(&y, &want), 3e-7);
    }
}

#[test]
fn gelu_matches_f64() {
    for pool in pools() {
        // |x| <= 10: the negative tail down to gelu(-10) ~ 8e-23.
        let x = random(N_ELEM, -10.0, 10.0, 10);
        let mut y = x.clone();
        gelu_inplace(&pool, &mut y);
        // Measured 1.6e-7 per element (erfcc's own error, then rounding to f32).
        report(&format!("gelu (erf) t{}", pool.threads()), rel_elem(&y, &gelu_ref(&x)), 3.5e-7);

        // x >= -5 (gelu_tanh(-5) ~ 4e-7): further down, the reference's own `1 + tanh` cancels
        // (~5e-6 relative at -6) while this side's `x / (1 + exp(-2u))` does not.
        let x = random(N_ELEM, -5.0, 6.0, 11);
        let mut y = x.clone();
        gelu_tanh(&pool, &mut y);
        // Measured 5.9e-8 per element.
        report(&format!("gelu_tanh t{}", pool.threads()), rel_elem(&y, &gelu_tanh_ref(&x)), 1.2e-7);
    }
}

// ---- rope ----

/// Tables: plain full rotation, plain partial (half the dims) with frequency divisors, YaRN.
fn tables(hd: usize) -> Vec<(&'static str, RopeTable)> {
    let mut partial = rope_table(hd / 2, 10_000.0, None);
    partial.freq_factors = Some(random(hd / 4, 1.0, 8.0, 12));
    vec![
        ("plain", rope_table(hd, 1_000_000.0, None)),
        ("partial", partial),
        ("yarn", rope_table(hd, 1_000_000_000.0, Some(&Yarn::ministral3()))),
    ]
}

#[test]
fn rope_matches_ref() {
    let hd = 36;
    for pool in pools() {
        for (name, table) in tables(hd) {
            for mode in [RopeMode::Adjacent, RopeMode::RotateHalf] {
                // (layout, n_tok, pos0, q scale): prefill dense; decode at a position > 0 with
                // the query scale; rows of a fused QKV buffer (stride and offset).
                let fused = RopeLayout {
                    stride: 11 * hd as u32 + 3,
                    offset: 2 * hd as u32 + 1,
                    ..RopeLayout::dense(5, hd as u32, 9, mode)
                };
                let cases = [
                    (RopeLayout::dense(5, hd as u32, 9, mode), 9, 0, QScale::NONE),
                    (RopeLayout::dense(3, hd as u32, 1, mode), 1, 70_000, QScale { beta: 0.1, orig_ctx: 16384 }),
                    (fused, 7, 123, QScale { beta: 0.1, orig_ctx: 64 }),
                ];
                for (layout, n_tok, pos0, qs) in cases {
                    let n = (n_tok - 1) * layout.stride as usize
                        + layout.offset as usize
                        + (layout.n_heads * layout.head_dim) as usize;
                    let x = random(n + 5, -2.0, 2.0, 13 + n as u64);
                    let want = rope_ref(&x, &layout, n_tok, &table, pos0, qs);
                    let mut y = x.clone();
                    rope_inplace(&pool, &mut y, &layout, n_tok, &table, pos0, qs).unwrap();
                    // Measured 0: the same f32 operations in the same order.
                    let what = format!("rope {name} {mode:?} {n_tok} tok at {pos0} t{}", pool.threads());
                    report(&what, rel_max(&y, &want), 1e-7);
                }
            }
        }
    }
}

#[test]
fn mrope_matches_ref() {
    let (hd, n_tok) = (32, 11);
    let table = rope_table(hd, 5_000_000.0, None);
    let mut rng = SplitMix64::new(14);
    let mut axis = || (0..n_tok).map(|_| (rng.uniform(0.0, 4000.0)) as u32).collect::<Vec<u32>>();
    let positions = [axis(), axis(), axis()];
    for pool in pools() {
        for mode in [RopeMode::Adjacent, RopeMode::RotateHalf] {
            for sections in [[6, 5, 5], [8, 4, 2]] {
                let layout = RopeLayout::dense(4, hd as u32, n_tok as u32, mode);
                let x = random(n_tok * 4 * hd, -2.0, 2.0, 15);
                let want = mrope_ref(&x, &layout, &table, &positions, sections);
                let mut y = x.clone();
                let pos = [positions[0].as_slice(), &positions[1], &positions[2]];
                rope_inplace_mrope(&pool, &mut y, &layout, &table, pos, sections).unwrap();
                // Measured 0.
                report(&format!("mrope {mode:?} {sections:?} t{}", pool.threads()), rel_max(&y, &want), 1e-7);
            }
        }
    }
}

// ---- attention ----

struct Case {
    name: &'static str,
    n_head: usize,
    n_kv: usize,
    hd: usize,
    n_tok: usize,
    kv_start: usize,
    causal: bool,
    /// Multiplies q: sharper softmax, so later key blocks raise the running maximum.
    q_gain: f32,
}

const CASES: [Case; 9] = [
    Case { name: "prefill GQA 8/2", n_head: 8, n_kv: 2, hd: 36, n_tok: 7, kv_start: 0, causal: true, q_gain: 1.0 },
    Case { name: "prefill GQA 6/3 after cache", n_head: 6, n_kv: 3, hd: 20, n_tok: 45, kv_start: 30, causal: true, q_gain: 3.0 },
    Case { name: "decode GQA 4/1", n_head: 4, n_kv: 1, hd: 64, n_tok: 1, kv_start: 150, causal: true, q_gain: 4.0 },
    Case { name: "decode MHA odd head_dim", n_head: 3, n_kv: 3, hd: 13, n_tok: 1, kv_start: 37, causal: true, q_gain: 1.0 },
    Case { name: "vision non-causal", n_head: 4, n_kv: 4, hd: 40, n_tok: 70, kv_start: 0, causal: false, q_gain: 2.0 },
    // The vector paths' shapes: eight keys a pass, 64 value columns in registers (SmolLM2).
    Case { name: "decode GQA 9/3 hd 64", n_head: 9, n_kv: 3, hd: 64, n_tok: 1, kv_start: 300, causal: true, q_gain: 3.0 },
    // 64 + 8 + 8 columns (Mllama's vision heads), 128 (Ministral, Llama).
    Case { name: "vision hd 80", n_head: 2, n_kv: 2, hd: 80, n_tok: 45, kv_start: 0, causal: false, q_gain: 2.0 },
    Case { name: "prefill GQA 4/1 hd 128", n_head: 4, n_kv: 1, hd: 128, n_tok: 20, kv_start: 17, causal: true, q_gain: 2.0 },
    // Decode takes a run of KV heads per thread, its query heads 64 per pass: two passes,
    // the second starting inside a group of three.
    Case { name: "decode 72/24, 2 passes", n_head: 72, n_kv: 24, hd: 16, n_tok: 1, kv_start: 40, causal: true, q_gain: 2.0 },
];

impl Case {
    /// Random q, k and v (`extra` values past the caches' rows, `kv` applied to both) and the
    /// f32 shape.
    fn inputs(&self, extra: usize, kv: impl Fn(Vec<f32>) -> Vec<f32>) -> (Vec<f32>, Vec<f32>, Vec<f32>, AttnShape) {
        let kv_len = (self.kv_start + self.n_tok) * self.n_kv * self.hd + extra;
        let q = random(self.n_tok * self.n_head * self.hd, -1.0, 1.0, 16).iter().map(|v| v * self.q_gain).collect();
        let (k, v) = (kv(random(kv_len, -2.0, 2.0, 17)), kv(random(kv_len, -1.0, 1.0, 18)));
        let (n_head, n_kv, hd, n_tok) = (self.n_head as u32, self.n_kv as u32, self.hd as u32, self.n_tok as u32);
        (q, k, v, AttnShape { causal: self.causal, ..AttnShape::new(n_head, n_kv, hd, n_tok) })
    }

    fn reference(&self, q: &[f32], k: &[f32], v: &[f32], shape: &AttnShape) -> Vec<f32> {
        attention_ref(q, k, v, self.n_tok, self.kv_start, self.n_head, self.n_kv, self.hd, shape.scale, self.causal)
    }
}

/// Every case at every SIMD level this machine has (scalar included) and {1, 2, 3} threads.
#[test]
fn attention_matches_ref() {
    for (pool, level) in pools().iter().flat_map(|p| Simd::available().into_iter().map(move |l| (p, l))) {
        for c in &CASES {
            let (q, k, v, shape) = c.inputs(3, |x| x);
            let want = c.reference(&q, &k, &v, &shape);
            let mut out = vec![f32::NAN; want.len()];
            simd::with_level(level, || {
                if c.n_tok == 1 {
                    attention_decode(pool, &shape, &q, &k, &v, &mut out, c.kv_start).unwrap();
                } else {
                    attention_prefill(pool, &shape, &q, &k, &v, &mut out, c.n_tok, c.kv_start).unwrap();
                }
            })
            .unwrap();
            // Measured 7.4e-7 (decode 9/3 hd 64, scalar; 5.9e-7 with AVX2).
            report(&format!("attention {} {level} t{}", c.name, pool.threads()), rel_max(&out, &want), 1.1e-6);
        }
    }
}

/// A batched step's attention: every case as one sequence of one [`attention_seqs`] call (decode
/// rows and prompt rows, their own shapes, caches and `kv_start`) gives each the bits it gets
/// alone, at every level and thread count.
#[test]
fn attention_of_many_sequences_gives_each_its_bits_alone() {
    for (pool, level) in pools().iter().flat_map(|p| Simd::available().into_iter().map(move |l| (p, l))) {
        let inputs: Vec<_> = CASES.iter().map(|c| c.inputs(3, |x| x)).collect();
        let alone: Vec<Vec<f32>> = CASES
            .iter()
            .zip(&inputs)
            .map(|(c, (q, k, v, shape))| {
                let mut out = vec![f32::NAN; c.n_tok * c.n_head * c.hd];
                simd::with_level(level, || attention_prefill(pool, shape, q, k, v, &mut out, c.n_tok, c.kv_start))
                    .unwrap()
                    .unwrap();
                out
            })
            .collect();
        let mut outs: Vec<Vec<f32>> = alone.iter().map(|a| vec![f32::NAN; a.len()]).collect();
        let seqs = CASES.iter().zip(&inputs).zip(&mut outs).map(|((c, (q, k, v, shape)), out)| SeqAttention {
            shape: *shape,
            q,
            k_cache: k,
            v_cache: v,
            out,
            n_tok: c.n_tok,
            kv_start: c.kv_start,
        });
        let seqs: Vec<_> = seqs.collect();
        simd::with_level(level, || attention_seqs(pool, seqs)).unwrap().unwrap();
        for ((c, got), want) in CASES.iter().zip(&outs).zip(&alone) {
            let same = got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{} at {level} on {} threads: batched differs from alone", c.name, pool.threads());
        }
    }
}

/// f32 values as the f16 cache holds them (`u16` bits), rounded by the GPU's packing
/// (`pack_f16`: nearest, ties to even).
fn f16_bits(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| pack_f16(&[v])[0] as u16).collect()
}

/// An f16 cache: the f32 attention of its rounded values, every case at every level.
#[test]
fn attention_reads_f16_caches() {
    for (pool, level) in pools().iter().flat_map(|p| Simd::available().into_iter().map(move |l| (p, l))) {
        for c in &CASES {
            let (q, k, v, shape) = c.inputs(0, |x| round_f16(&x));
            let shape = AttnShape { kv: KvDtype::F16, ..shape };
            let want = c.reference(&q, &k, &v, &shape);
            let (k16, v16) = (f16_bits(&k), f16_bits(&v));
            let mut out = vec![f32::NAN; want.len()];
            simd::with_level(level, || attention_prefill(pool, &shape, &q, &k16, &v16, &mut out, c.n_tok, c.kv_start))
                .unwrap()
                .unwrap();
            // Measured as the f32 caches' (the values are exact in f32 once rounded).
            report(&format!("attention f16 cache {} {level} t{}", c.name, pool.threads()), rel_max(&out, &want), 1.1e-6);
            let f32_shape = AttnShape { kv: KvDtype::F32, ..shape };
            assert!(
                attention_prefill(pool, &f32_shape, &q, &k16, &v16, &mut out, c.n_tok, c.kv_start).is_err(),
                "dtype mismatch"
            );
        }
    }
}

/// The f16 cache's rows are the f32 cache's rounded (k rotated in f32 first).
#[test]
fn rope_kv_store_rounds_into_f16_caches() {
    let (hd, heads, n_tok, kv_start) = (32, 3, 5, 4);
    let table = rope_table(hd, 10_000.0, None);
    let layout = RopeLayout::dense(heads, hd as u32, n_tok as u32, RopeMode::RotateHalf);
    let (k, v) = (random(n_tok * heads as usize * hd, -2.0, 2.0, 21), random(n_tok * heads as usize * hd, -2.0, 2.0, 22));
    let rows = (kv_start + n_tok) * heads as usize * hd;
    for pool in pools() {
        let (mut k32, mut v32) = (vec![0f32; rows], vec![0f32; rows]);
        let (mut k16, mut v16) = (vec![0u16; rows], vec![0u16; rows]);
        let (k_in, v_in) = ((&k[..], &layout), (&v[..], &layout));
        rope_kv_store(&pool, k_in, v_in, (&mut k32[..], &mut v32[..]), n_tok, kv_start, &table, Positions::From(9)).unwrap();
        rope_kv_store(&pool, k_in, v_in, (&mut k16[..], &mut v16[..]), n_tok, kv_start, &table, Positions::From(9)).unwrap();
        assert_eq!((f16_bits(&k32), f16_bits(&v32)), (k16, v16), "t{}", pool.threads());
        assert!(k32[kv_start * heads as usize * hd..].iter().all(|x| *x != 0.0), "rows written");
    }
}

/// The fused op over q|k|v rows gives the bits of `rope_inplace` on q and `rope_kv_store` on
/// k and v, and leaves k and v in the rows as they were: every table (partial rotation,
/// divisors, YaRN), both pairings, f32 and f16 caches, prefill rows and a decode row; a second
/// sequence in the same op gets the bits it gets alone.
#[test]
fn rope_qkv_store_gives_the_bits_of_the_two_ops() {
    let (hd, n_q, n_kv, kv_start) = (36, 5u32, 2u32, 3);
    let width = n_kv as usize * hd;
    for pool in pools() {
        for (name, table) in tables(hd) {
            for (mode, n_tok, pos0) in [(RopeMode::Adjacent, 7, 123), (RopeMode::RotateHalf, 1, 70_000)] {
                let stride = (n_q + 2 * n_kv) * hd as u32 + 3;
                let q = RopeLayout { stride, ..RopeLayout::dense(n_q, hd as u32, n_tok as u32, mode) };
                let k = RopeLayout { n_heads: n_kv, offset: n_q * hd as u32, ..q };
                let v = RopeLayout { offset: (n_q + n_kv) * hd as u32 + 2, ..k };
                let layout = QkvRope { n_q_heads: n_q, k, v_offset: v.offset, q_scale: QScale { beta: 0.1, orig_ctx: 64 } };
                let x = random(n_tok * stride as usize, -2.0, 2.0, 30 + n_tok as u64);
                let rows = (kv_start + n_tok) * width;
                let what = format!("{name} {mode:?} {n_tok} rows t{}", pool.threads());

                let mut apart = x.clone();
                rope_inplace(&pool, &mut apart, &q, n_tok, &table, pos0, layout.q_scale).unwrap();
                let (mut k32, mut v32, mut k16, mut v16) =
                    (vec![0f32; rows], vec![0f32; rows], vec![0u16; rows], vec![0u16; rows]);
                let (k_in, v_in, at) = ((&x[..], &k), (&x[..], &v), Positions::From(pos0));
                rope_kv_store(&pool, k_in, v_in, (&mut k32[..], &mut v32[..]), n_tok, kv_start, &table, at).unwrap();
                rope_kv_store(&pool, k_in, v_in, (&mut k16[..], &mut v16[..]), n_tok, kv_start, &table, at).unwrap();

                // With a second sequence beside it in the op: up to two tokens from position 9.
                let other_n = n_tok.min(2);
                let (mut fused, mut other) = (x.clone(), x.clone());
                let (mut fk32, mut fv32, mut fk16, mut fv16) =
                    (vec![0f32; rows], vec![0f32; rows], vec![0u16; rows], vec![0u16; rows]);
                let (mut ok, mut ov) = (vec![0f32; rows], vec![0f32; rows]);
                let other_layout = QkvRope { k: RopeLayout { max_tok: other_n as u32, ..k }, ..layout };
                let seqs = vec![
                    QkvRows { qkv: &mut fused, layout, caches: (&mut fk32[..], &mut fv32[..]), n_tok, kv_start, pos0 },
                    QkvRows {
                        qkv: &mut other,
                        layout: other_layout,
                        caches: (&mut ok[..], &mut ov[..]),
                        n_tok: other_n,
                        kv_start,
                        pos0: 9,
                    },
                ];
                rope_qkv_store(&pool, &table, seqs).unwrap();
                let mut fused16 = x.clone();
                let seq16 = QkvRows { qkv: &mut fused16, layout, caches: (&mut fk16[..], &mut fv16[..]), n_tok, kv_start, pos0 };
                rope_qkv_store(&pool, &table, vec![seq16]).unwrap();
                let mut alone = x.clone();
                let (mut ak, mut av) = (vec![0f32; rows], vec![0f32; rows]);
                let seq = QkvRows {
                    qkv: &mut alone,
                    layout: other_layout,
                    caches: (&mut ak[..], &mut av[..]),
                    n_tok: other_n,
                    kv_start,
                    pos0: 9,
                };
                rope_qkv_store(&pool, &table, vec![seq]).unwrap();

                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fused), bits(&apart), "{what}: q rotated, k and v untouched");
                assert_eq!(bits(&fused16), bits(&apart), "{what}: q rotated (f16 caches)");
                assert_eq!((bits(&fk32), bits(&fv32)), (bits(&k32), bits(&v32)), "{what}: f32 caches");
                assert_eq!((fk16, fv16), (k16, v16), "{what}: f16 caches");
                let (other, alone) = ((bits(&other), bits(&ok), bits(&ov)), (bits(&alone), bits(&ak), bits(&av)));
                assert!(other == alone, "{what}: the second sequence's rows as it gets them alone");
                assert!(fk32[..kv_start * width].iter().all(|&c| c == 0.0), "{what}: rows before kv_start untouched");
                assert!(fk32[kv_start * width..].iter().all(|&c| c != 0.0), "{what}: rows written");
            }
        }
    }
}

/// q read from the rows of a fused QKV buffer (stride and offset), keys past one [`BLOCK`].
#[test]
fn attention_reads_fused_q() {
    let (n_head, n_kv, hd, n_tok, kv_start) = (4, 2, 16, 5, BLOCK + 7);
    let (stride, offset) = (n_head * hd + 2 * n_kv * hd, 8);
    let fused = random(n_tok * stride, -1.0, 1.0, 19);
    let q: Vec<f32> = fused.chunks(stride).flat_map(|r| r[offset..][..n_head * hd].to_vec()).collect();
    let kv_rows = kv_start + n_tok;
    let (k, v) = (random(kv_rows * n_kv * hd, -2.0, 2.0, 20), random(kv_rows * n_kv * hd, -1.0, 1.0, 21));
    let scale = 0.3;
    let want = attention_ref(&q, &k, &v, n_tok, kv_start, n_head, n_kv, hd, scale, true);
    let shape = AttnShape {
        q_stride: stride as u32,
        q_offset: offset as u32,
        scale,
        ..AttnShape::new(n_head as u32, n_kv as u32, hd as u32, n_tok as u32)
    };
    for pool in pools() {
        let mut out = vec![f32::NAN; want.len()];
        attention_prefill(&pool, &shape, &fused, &k, &v, &mut out, n_tok, kv_start).unwrap();
        // Measured 2.4e-7.
        report(&format!("attention fused q t{}", pool.threads()), rel_max(&out, &want), 5e-7);
    }
}

/// Mllama's padding mask: rows `t >= valid_rows` see only keys `< valid_rows`, the others all
/// keys (the reference run on the valid keys alone, row by row).
#[test]
fn attention_valid_rows_mask() {
    let (n_head, hd, n_tok, valid) = (2, 8, 9, 6);
    let q = random(n_tok * n_head * hd, -1.0, 1.0, 22);
    let (k, v) = (random(n_tok * n_head * hd, -2.0, 2.0, 23), random(n_tok * n_head * hd, -1.0, 1.0, 24));
    let shape = AttnShape {
        causal: false,
        valid_rows: valid as u32,
        ..AttnShape::new(n_head as u32, n_head as u32, hd as u32, n_tok as u32)
    };
    let pool = ThreadPool::new(2).unwrap();
    let mut out = vec![f32::NAN; q.len()];
    attention_prefill(&pool, &shape, &q, &k, &v, &mut out, n_tok, 0).unwrap();
    let row = n_head * hd;
    for t in 0..n_tok {
        let keys = if t >= valid { valid } else { n_tok };
        // One query row against the first `keys` keys: non-causal with kv_start + 1 = keys.
        let want = attention_ref(&q[t * row..][..row], &k, &v, 1, keys - 1, n_head, n_head, hd, shape.scale, false);
        // Measured 1.7e-7.
        report(&format!("attention valid_rows row {t}"), rel_max(&out[t * row..][..row], &want), 4e-7);
    }
}

// ---- shapes ----

#[test]
fn wrong_shapes_are_errors() {
    let pool = ThreadPool::new(2).unwrap();
    let mut y = vec![0f32; 10];
    assert!(matches!(rms_norm(&pool, &[0.0; 10], &[1.0; 4], &mut y, 5, 1e-6), Err(ShapeError::Len { what: "w", .. })));
    assert!(matches!(rms_norm(&pool, &[0.0; 10], &[1.0; 3], &mut y, 3, 1e-6), Err(ShapeError::Invalid { .. })));
    assert!(layer_norm(&pool, &[0.0; 10], &[1.0; 5], &[0.0; 4], &mut y, 5, 1e-6).is_err());
    assert!(add_inplace(&pool, &[0.0; 9], &mut y).is_err());
    assert!(silu_mul_inplace(&pool, &[0.0; 11], &mut y).is_err());
    assert!(silu_mul_halves(&pool, &[0.0; 21], &mut y, 5).is_err());
    assert!(sigmoid_mul_second_halves(&pool, &[0.0; 20], &mut y, 3).is_err());

    let table = rope_table(8, 10_000.0, None);
    let layout = RopeLayout::dense(2, 8, 3, RopeMode::RotateHalf);
    let mut x = vec![0f32; 2 * 16 + 15];
    assert!(matches!(rope_inplace(&pool, &mut x, &layout, 3, &table, 0, QScale::NONE), Err(ShapeError::Len { what: "x", .. })));
    let wide = rope_table(16, 10_000.0, None);
    let mut x = vec![0f32; 48];
    assert!(matches!(rope_inplace(&pool, &mut x, &layout, 3, &wide, 0, QScale::NONE), Err(ShapeError::Invalid { .. })));
    let p = [0u32; 3];
    assert!(rope_inplace_mrope(&pool, &mut x, &layout, &table, [&p, &p, &p[..2]], [2, 1, 1]).is_err());
    assert!(rope_inplace_mrope(&pool, &mut x, &layout, &table, [&p, &p, &p], [2, 2, 1]).is_err());

    let shape = AttnShape::new(4, 3, 8, 2);
    let mut out = vec![0f32; 64];
    assert!(attention_prefill(&pool, &shape, &[0.0; 64], &[0.0; 64], &[0.0; 64], &mut out, 2, 0).is_err());
    let shape = AttnShape::new(4, 2, 8, 2);
    assert!(matches!(
        attention_prefill(&pool, &shape, &[0.0; 64], &[0.0; 31], &[0.0; 64], &mut out, 2, 0),
        Err(ShapeError::Len { what: "k_cache", .. })
    ));
    assert!(attention_decode(&pool, &shape, &[0.0; 32], &[0.0; 32], &[0.0; 32], &mut out, 0).is_err());
    let f16 = AttnShape { kv: KvDtype::F16, ..shape };
    let mut out = vec![0f32; 32];
    assert!(attention_decode(&pool, &f16, &[0.0; 32], &[0.0; 32], &[0.0; 32], &mut out, 0).is_err());
    // Decode at cache row 2 needs 3 rows of 16.
    assert!(attention_decode(&pool, &shape, &[0.0; 32], &[0.0; 32], &[0.0; 48], &mut out, 2).is_err());
    attention_decode(&pool, &shape, &[0.0; 32], &[0.0; 48], &[0.0; 48], &mut out, 2).unwrap();
}
