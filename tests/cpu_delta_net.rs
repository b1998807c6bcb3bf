//! The CPU backend's Gated DeltaNet ops (`webvlm::backend::cpu::{delta_net, delta_net_chunked,
//! gdn_prep}`): the gated delta rule against an f64 recurrence written here from the math, on
//! every SIMD level and {1, 2, 3} threads, with the state carried across calls; its chunked form
//! against the f64 references of `kernels::delta_net` (chunked and recurrent) over partial
//! chunks; the conv, decay and gated norm against the f64 references of their GPU counterparts
//! (`kernels::gdn_prep::*_ref`). No GPU.

use crate::cpu_common;

use cpu_common::pools;
use webvlm::backend::cpu::delta_net::{recurrent, DeltaNetLayout, KHeads};
use webvlm::backend::cpu::delta_net_chunked::chunked;
use webvlm::backend::cpu::gdn_prep::{conv, decay, gated_norm, RowWindow};
use webvlm::backend::cpu::{simd, ShapeError, Simd, ThreadPool};
use webvlm::gguf::SplitMix64;
use webvlm::kernels::delta_net::{gated_delta_rule_chunked_ref, gated_delta_rule_recurrent_ref};
use webvlm::kernels::gdn_prep::{conv_ref, decay_ref, gated_norm_ref};

fn random(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

/// `max |got - want| / max |want|`.
fn rel_max(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let err = got.iter().zip(want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
    err / want.iter().map(|b| b.abs()).fold(0.0, f64::max)
}

/// The gated delta rule in f64, from the math: per v head h (k head `k_head(h)`) and token,
/// `q̂ = q / |q| / sqrt(d_k)`, `k̂ = k / |k|` (norms with 1e-6 under the root),
/// `S ← exp(g) S`, `S ← S + β k̂ (v - Sᵀk̂)ᵀ`, `o = Sᵀq̂`. Returns the outputs
/// `[n_tok][Hv·d_v]`; `state` (`[Hv][d_k][d_v]`) is advanced.
fn reference(l: &DeltaNetLayout, n_tok: usize, qkv: &[f32], g: &[f32], beta: &[f32], state: &mut [f64]) -> Vec<f64> {
    let (hk, hv, dk, dv) = (l.n_k_heads as usize, l.n_v_heads as usize, l.d_k as usize, l.d_v as usize);
    let mut out = vec![0.0; n_tok * hv * dv];
    for h in 0..hv {
        let kh = match l.k_heads {
            KHeads::Tiled => h % hk,
            KHeads::Grouped => h / (hv / hk),
        };
        let s = &mut state[h * dk * dv..][..dk * dv];
        for t in 0..n_tok {
            let row = t * l.row_stride as usize;
            let unit = |at: usize, scale: f64| {
                let x: Vec<f64> = qkv[row + at + kh * dk..][..dk].iter().map(|&v| v as f64).collect();
                let n = (x.iter().map(|v| v * v).sum::<f64>() + 1e-6).sqrt();
                x.iter().map(|v| v / n * scale).collect::<Vec<f64>>()
            };
            let (q, k) = (unit(l.q_offset as usize, 1.0 / (dk as f64).sqrt()), unit(l.k_offset as usize, 1.0));
            let v = &qkv[row + l.v_offset as usize + h * dv..][..dv];
            let (a, b) = ((g[t * hv + h] as f64).exp(), beta[t * hv + h] as f64);
            s.iter_mut().for_each(|x| *x *= a);
            for j in 0..dv {
                let sk: f64 = (0..dk).map(|i| s[i * dv + j] * k[i]).sum();
                let delta = b * (v[j] as f64 - sk);
                (0..dk).for_each(|i| s[i * dv + j] += k[i] * delta);
                out[t * hv * dv + h * dv + j] = (0..dk).map(|i| s[i * dv + j] * q[i]).sum();
            }
        }
    }
    out
}

/// Random inputs of `n_tok` tokens: q, k, v in [-1, 1], log decays in [-1.5, 0] (`A ·
/// softplus` is at most 0), betas in (0, 1).
fn inputs(l: &DeltaNetLayout, n_tok: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let hv = l.n_v_heads as usize;
    (random(l.qkv_len(n_tok), -1.0, 1.0, seed), random(n_tok * hv, -1.5, 0.0, seed + 1), random(n_tok * hv, 0.0, 1.0, seed + 2))
}

fn run(
    pool: &ThreadPool,
    l: &DeltaNetLayout,
    n_tok: usize,
    (qkv, g, beta): (&[f32], &[f32], &[f32]),
    state: &mut [f32],
) -> Vec<f32> {
    let mut out = vec![f32::NAN; l.out_len(n_tok)];
    recurrent(pool, l, n_tok, qkv, g, beta, state, &mut out).unwrap();
    out
}

/// Layouts: the conv rows (tiled and grouped k heads, Hv = 2 Hk), one k head per v head at
/// the largest head dim, and a wider row with the windows out of order (odd dims).
fn layouts() -> Vec<DeltaNetLayout> {
    let mut gapped = DeltaNetLayout::conv_rows(1, 3, 20, 13, KHeads::Grouped);
    (gapped.row_stride, gapped.v_offset, gapped.q_offset, gapped.k_offset) = (90, 1, 41, 65);
    vec![
        DeltaNetLayout::conv_rows(2, 4, 32, 24, KHeads::Tiled),
        DeltaNetLayout::conv_rows(2, 4, 32, 24, KHeads::Grouped),
        DeltaNetLayout::conv_rows(2, 2, 128, 128, KHeads::Tiled),
        gapped,
    ]
}

#[test]
fn recurrence_matches_the_f64_rule_on_every_level_and_thread_count() {
    // Measured: 3.6e-7 worst (outputs and final state, every layout and token count): f32
    // rounding over a few dozen updates of a contracting state. Limit about twice that.
    let mut worst = 0.0f64;
    for (li, l) in layouts().iter().enumerate() {
        for n_tok in [1, 5, 37] {
            let (qkv, g, beta) = inputs(l, n_tok, 10 * li as u64 + n_tok as u64);
            let state0 = random(l.state_len(), -0.5, 0.5, 99);
            let mut want_state: Vec<f64> = state0.iter().map(|&v| v as f64).collect();
            let want = reference(l, n_tok, &qkv, &g, &beta, &mut want_state);
            let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
            for pool in pools() {
                for level in Simd::available() {
                    let mut state = state0.clone();
                    let out = simd::with_level(level, || run(&pool, l, n_tok, (&qkv, &g, &beta), &mut state)).unwrap();
                    let what = format!("layout {li}, {n_tok} tokens, {level}, {} threads", pool.threads());
                    let err = rel_max(&out, &want).max(rel_max(&state, &want_state));
                    assert!(err < 1e-6, "{what}: {err:e}");
                    worst = worst.max(err);
                    // Every level and thread count computes the same f32 operations.
                    let first = first.get_or_insert_with(|| (out.clone(), state.clone()));
                    assert!(first.0 == out && first.1 == state, "{what}: differs from the first run");
                }
            }
        }
    }
    eprintln!("gated delta rule: rel. max {worst:.2e}");
}

#[test]
fn state_carried_across_calls_equals_one_call() {
    // Decode after prefill, or prefill in chunks: 7 + 1 + 12 tokens through the same state are
    // the 20 in one call, bit for bit.
    let pool = ThreadPool::new(3).unwrap();
    for l in layouts() {
        let (qkv, g, beta) = inputs(&l, 20, 4);
        let hv = l.n_v_heads as usize;
        let state0 = random(l.state_len(), -0.5, 0.5, 5);
        let mut whole = state0.clone();
        let want = run(&pool, &l, 20, (&qkv, &g, &beta), &mut whole);
        let mut state = state0.clone();
        let mut got = Vec::new();
        for (t0, n) in [(0, 7), (7, 1), (8, 12)] {
            let row = t0 * l.row_stride as usize;
            let part = (&qkv[row..], &g[t0 * hv..], &beta[t0 * hv..]);
            got.extend(run(&pool, &l, n, part, &mut state));
        }
        assert!(got == want && state == whole, "{l:?}");
    }
}

#[test]
fn recurrence_checks_its_shapes() {
    let pool = ThreadPool::new(2).unwrap();
    let l = DeltaNetLayout::conv_rows(2, 4, 8, 8, KHeads::Tiled);
    let (qkv, g, beta) = inputs(&l, 3, 1);
    let mut state = vec![0.0; l.state_len()];
    let mut out = vec![0.0; l.out_len(3)];
    let mut call =
        |qkv: &[f32], g: &[f32], state: &mut [f32], l: &DeltaNetLayout| recurrent(&pool, l, 3, qkv, g, &beta, state, &mut out);
    assert!(matches!(call(&qkv[1..], &g, &mut state, &l), Err(ShapeError::Len { what: "qkv", .. })));
    assert!(matches!(call(&qkv, &g[..11], &mut state, &l), Err(ShapeError::Len { what: "g", .. })));
    assert!(matches!(call(&qkv, &g, &mut [0.0; 10], &l), Err(ShapeError::Len { what: "state", .. })));
    let odd = DeltaNetLayout { n_v_heads: 3, ..l };
    assert!(matches!(call(&qkv, &g, &mut state, &odd), Err(ShapeError::Invalid { .. })));
    assert!(call(&qkv, &g, &mut state, &l).is_ok());
}

#[test]
fn chunked_matches_the_f64_references_on_every_level_and_thread_count() {
    // Token counts around the chunks (the op's 16 tokens, the references' 64: partial chunks,
    // whole ones, whole ones and a partial one), the layouts above, four v heads on one k head
    // (tiled: every v head reads it) and one v head of 40 columns (split in blocks of 16, 16
    // and 8 on 3 threads, as the 128-column heads are in two on 3 threads).
    // Measured: 3.4e-7 worst (outputs and final state, against either reference). Limit about
    // three times that, as the recurrence's.
    let mut worst = 0.0f64;
    let mut all = layouts();
    all.push(DeltaNetLayout::conv_rows(1, 4, 16, 40, KHeads::Tiled));
    all.push(DeltaNetLayout::conv_rows(1, 1, 24, 40, KHeads::Grouped));
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    for (li, l) in all.iter().enumerate() {
        for n_tok in [1, 63, 64, 130] {
            let (qkv, g, beta) = inputs(l, n_tok, 100 * li as u64 + n_tok as u64);
            let state0 = random(l.state_len(), -0.5, 0.5, 98);
            let (mut chunk_state, mut rec_state) = (state0.clone(), state0.clone());
            let by_chunks = f64s(&gated_delta_rule_chunked_ref(l, n_tok, &qkv, &g, &beta, &mut chunk_state));
            let by_tokens = f64s(&gated_delta_rule_recurrent_ref(l, n_tok, &qkv, &g, &beta, &mut rec_state));
            let (chunk_state, rec_state) = (f64s(&chunk_state), f64s(&rec_state));
            let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
            for pool in pools() {
                for level in Simd::available() {
                    let mut state = state0.clone();
                    let mut out = vec![f32::NAN; l.out_len(n_tok)];
                    let run = || chunked(&pool, l, n_tok, &qkv, &g, &beta, &mut state, &mut out);
                    simd::with_level(level, run).unwrap().unwrap();
                    let what = format!("layout {li}, {n_tok} tokens, {level}, {} threads", pool.threads());
                    let err = [
                        rel_max(&out, &by_chunks),
                        rel_max(&state, &chunk_state),
                        rel_max(&out, &by_tokens),
                        rel_max(&state, &rec_state),
                    ];
                    let err = err.into_iter().fold(0.0, f64::max);
                    assert!(err < 1e-6, "{what}: {err:e}");
                    worst = worst.max(err);
                    // Levels, thread counts and column splits sum in the same order.
                    let first = first.get_or_insert_with(|| (out.clone(), state.clone()));
                    assert!(first.0 == out && first.1 == state, "{what}: differs from the first run");
                }
            }
        }
    }
    eprintln!("chunked gated delta rule: rel. max {worst:.2e}");
}

#[test]
fn chunked_checks_its_shapes() {
    let pool = ThreadPool::new(2).unwrap();
    let l = DeltaNetLayout::conv_rows(2, 4, 8, 8, KHeads::Tiled);
    let (qkv, g, beta) = inputs(&l, 3, 1);
    let mut state = vec![0.0; l.state_len()];
    let mut out = vec![0.0; l.out_len(3)];
    let mut call =
        |qkv: &[f32], beta: &[f32], out: &mut [f32], l: &DeltaNetLayout| chunked(&pool, l, 3, qkv, &g, beta, &mut state, out);
    assert!(matches!(call(&qkv[1..], &beta, &mut out, &l), Err(ShapeError::Len { what: "qkv", .. })));
    assert!(matches!(call(&qkv, &beta[..11], &mut out, &l), Err(ShapeError::Len { what: "beta", .. })));
    assert!(matches!(call(&qkv, &beta, &mut [0.0; 95], &l), Err(ShapeError::Len { what: "out", .. })));
    let wide = DeltaNetLayout { d_v: 129, ..l };
    assert!(matches!(call(&qkv, &beta, &mut out, &wide), Err(ShapeError::Invalid { .. })));
    assert!(call(&qkv, &beta, &mut out, &l).is_ok());
}

#[test]
fn conv_matches_ref_and_carries_its_state() {
    // A window of a wider row, kernel 4 (Qwen3.5) and 2, 1 + 9 + 6 tokens in three calls.
    let (channels, stride, offset) = (70, 83, 5);
    let win = RowWindow { stride, offset };
    for kernel in [2, 4] {
        let x = random(16 * stride as usize, -2.0, 2.0, kernel as u64);
        let w = random(channels * kernel, -1.0, 1.0, 3);
        let state0 = random(channels * (kernel - 1), -1.0, 1.0, 4);
        for pool in pools() {
            let (mut got_state, mut want_state) = (state0.clone(), state0.clone());
            for (t0, n) in [(0, 1), (1, 9), (10, 6)] {
                let xs = &x[t0 * stride as usize..];
                let want = conv_ref(xs, win, n, &w, &mut want_state, channels, kernel);
                let mut y = vec![f32::NAN; n * channels];
                conv(&pool, xs, win, n, &w, &mut got_state, &mut y, channels, kernel).unwrap();
                let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
                let err = rel_max(&y, &want);
                assert!(err < 1e-6, "kernel {kernel}, {} threads, tokens {t0}..: {err:e}", pool.threads());
                assert_eq!(got_state, want_state, "the state holds the last inputs as they are");
            }
        }
    }
}

#[test]
fn decay_and_gated_norm_match_ref() {
    let (n_tok, hv, dv, width) = (6, 5, 24, 40);
    // a and b: two windows of one row; arguments past softplus's threshold included.
    let ab = random(n_tok * width, -25.0, 25.0, 7);
    let (a_win, b_win) = (RowWindow { stride: width as u32, offset: 3 }, RowWindow { stride: width as u32, offset: 20 });
    let (ssm_a, dt_bias) = (random(hv, -4.0, -0.1, 8), random(hv, -1.0, 1.0, 9));
    let (want_g, want_beta) = decay_ref((&ab, a_win), (&ab, b_win), &ssm_a, &dt_bias, n_tok, hv);
    let (mut g, mut beta) = (vec![0.0; n_tok * hv], vec![0.0; n_tok * hv]);
    decay((&ab, a_win), (&ab, b_win), &ssm_a, &dt_bias, (&mut g, &mut beta), n_tok, hv).unwrap();
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let (eg, eb) = (rel_max(&g, &f64s(&want_g)), rel_max(&beta, &f64s(&want_beta)));
    assert!(eg < 1e-6 && eb < 1e-6, "g {eg:e}, beta {eb:e}");

    let o = random(n_tok * hv * dv, -3.0, 3.0, 10);
    let z_win = RowWindow { stride: (hv * dv + 11) as u32, offset: 11 };
    let z = random(n_tok * z_win.stride as usize, -4.0, 4.0, 11);
    let w = random(dv, 0.5, 1.5, 12);
    let want = f64s(&gated_norm_ref(&o, (&z, z_win), &w, n_tok, hv, dv, 1e-6));
    for pool in pools() {
        let mut out = vec![f32::NAN; n_tok * hv * dv];
        gated_norm(&pool, &o, (&z, z_win), &w, &mut out, n_tok, hv, dv, 1e-6).unwrap();
        let err = rel_max(&out, &want);
        assert!(err < 1e-6, "{} threads: {err:e}", pool.threads());
    }
    let bad = RowWindow { stride: 10, offset: 8 };
    assert!(matches!(
        decay((&ab, bad), (&ab, b_win), &ssm_a, &dt_bias, (&mut g, &mut beta), n_tok, hv),
        Err(ShapeError::Invalid { .. })
    ));
}
