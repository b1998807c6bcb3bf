//! The Gated DeltaNet per-token kernels (`kernels::gdn_prep`) against their CPU references:
//! conv1d + SiLU with its rolling state (one pass, chunk after chunk, decode after prefill,
//! program replay for shorter steps), decay / beta (softplus far out in both tails) and the
//! gated RMSNorm, at tiny and Qwen3.5-0.8B-like shapes; malformed shapes are rejected.

use crate::common;
use common::*;
use webvlm::backend::gpu::GpuError;
use webvlm::backend::{Buffer, Device, Program};
use webvlm::kernels::attention::StepParams;
use webvlm::kernels::gdn_prep::{self, ConvShape, GatedNormShape, RowWindow};

/// f32 kernels with short sums: error from rounding and `exp` only.
const F32_TOL: f32 = 1e-6;
const K: usize = 4;

fn step_buffer(gpu: &Device, n_tok: u32) -> Buffer {
    let b = StepParams::create_buffer(gpu).unwrap();
    StepParams::new(0, n_tok, 0).write(gpu, &b).unwrap();
    b
}

/// Qwen3.5-0.8B-like mixed q|k|v width: `2 Hk dk + Hv dv` with Hk = 16, dk = dv = 128.
fn qkv_width(hv: usize) -> usize {
    2 * 16 * 128 + hv * 128
}

/// Rows of `width` values at `win` in a buffer of `n_tok` rows (other slots random too).
fn windowed(rng: &mut Rng, n_tok: usize, win: RowWindow) -> Vec<f32> {
    rng.vec(n_tok * win.stride as usize)
}

/// One conv dispatch pair on the GPU: returns `y` (`[n_tok][c]`) and the state after it.
#[allow(clippy::too_many_arguments)]
fn gpu_conv(
    gpu: &Device,
    x: &[f32],
    win: RowWindow,
    max_tok: usize,
    n_tok: usize,
    w: &[f32],
    state: &[f32],
    (c, k): (usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let (bx, bw, bs) = (upload(gpu, x), upload(gpu, w), upload(gpu, state));
    let by = gpu.storage("y", (max_tok * c * 4) as u64).unwrap();
    let step = step_buffer(gpu, n_tok as u32);
    let mut prog = Program::new();
    let shape = ConvShape { max_tok: max_tok as u32, channels: c as u32, kernel: k as u32 };
    gdn_prep::record_conv(&mut prog, gpu, &step, &bx, win, &bw, &bs, &by, &shape).unwrap();
    prog.run(gpu).unwrap();
    (gpu.read_f32_blocking(&by, n_tok * c).unwrap(), gpu.read_f32_blocking(&bs, state.len()).unwrap())
}

#[test]
fn conv_matches_cpu_at_tiny_and_qwen35_shapes() {
    let gpu = gpu();
    let mut rng = Rng::new(11);
    let cases = [
        (7, K, 1, RowWindow::dense(7)),
        (7, K, 5, RowWindow { stride: 12, offset: 3 }),
        (5, 2, 3, RowWindow::dense(5)),
        (5, 6, 3, RowWindow::dense(5)),
        (qkv_width(16), K, 1, RowWindow::dense(qkv_width(16) as u32)),
        (qkv_width(16), K, 5, RowWindow { stride: qkv_width(16) as u32 + 2048 + 32, offset: 0 }),
        (qkv_width(16), K, 64, RowWindow::dense(qkv_width(16) as u32)),
        (qkv_width(32), K, 64, RowWindow { stride: qkv_width(32) as u32 + 17, offset: 9 }),
    ];
    for (c, k, t, win) in cases {
        let x = windowed(&mut rng, t, win);
        let w = rng.vec(c * k);
        let state0 = rng.vec(c * (k - 1));
        let (y, state) = gpu_conv(&gpu, &x, win, t, t, &w, &state0, (c, k));
        let mut want_state = state0.clone();
        let want = gdn_prep::conv_ref(&x, win, t, &w, &mut want_state, c, k);
        let err = rel_l2(&y, &want);
        eprintln!("conv C={c} K={k} T={t} {win:?}: rel L2 {err:.2e}, max abs {:.2e}", max_abs(&y, &want));
        assert!(err < F32_TOL, "conv C={c} K={k} T={t}: rel err {err}");
        assert_eq!(state, want_state, "conv C={c} K={k} T={t}: state after the step");
    }
}

#[test]
fn conv_first_step_sees_zero_history() {
    // From a zero state, y[0][c] = silu(w[c][K-1] * x[0][c]) exactly as transformers' padded conv.
    let gpu = gpu();
    let mut rng = Rng::new(12);
    let c = 33;
    let (x, w) = (rng.vec(c), rng.vec(c * K));
    let (y, state) = gpu_conv(&gpu, &x, RowWindow::dense(c as u32), 1, 1, &w, &vec![0.0; c * (K - 1)], (c, K));
    for ch in 0..c {
        let v = (w[ch * K + K - 1] * x[ch]) as f64;
        let want = (v / (1.0 + (-v).exp())) as f32;
        assert!((y[ch] - want).abs() <= 1e-6 * want.abs().max(1e-3), "channel {ch}: {} vs {want}", y[ch]);
        assert_eq!(&state[ch * (K - 1)..][..K - 1], &[0.0, 0.0, x[ch]], "channel {ch}: state");
    }
}

/// One program recorded for a chunk of `max_tok` rows, replayed for chunks of `splits` rows
/// (prefill chunks, then decode steps of 1) with only the step uniform and the input changing:
/// the outputs equal one GPU pass over the whole sequence bit for bit, and the CPU reference.
#[test]
fn conv_chunk_after_chunk_and_decode_equal_one_pass() {
    let gpu = gpu();
    let mut rng = Rng::new(13);
    for (c, splits) in [(10usize, vec![1usize, 2, 16, 3, 1, 1, 1]), (qkv_width(16), vec![16, 16, 5, 1, 1, 1])] {
        let total: usize = splits.iter().sum();
        let max_tok = 16;
        let win = RowWindow { stride: c as u32 + 5, offset: 2 };
        let x = windowed(&mut rng, total, win);
        let w = rng.vec(c * K);
        let zero = vec![0.0; c * (K - 1)];
        let (one_pass, final_state) = gpu_conv(&gpu, &x, win, total, total, &w, &zero, (c, K));
        let mut want_state = zero.clone();
        let want = gdn_prep::conv_ref(&x, win, total, &w, &mut want_state, c, K);
        let err = rel_l2(&one_pass, &want);
        assert!(err < F32_TOL, "one pass C={c}: rel err {err}");
        assert_eq!(final_state, want_state);

        let stride = win.stride as usize;
        let bx = gpu.storage("x", (max_tok * stride * 4) as u64).unwrap();
        let (bw, bs) = (upload(&gpu, &w), upload(&gpu, &zero));
        let by = gpu.storage("y", (max_tok * c * 4) as u64).unwrap();
        let step = StepParams::create_buffer(&gpu).unwrap();
        let mut prog = Program::new();
        let shape = ConvShape { max_tok: max_tok as u32, channels: c as u32, kernel: K as u32 };
        gdn_prep::record_conv(&mut prog, &gpu, &step, &bx, win, &bw, &bs, &by, &shape).unwrap();
        let mut chunked = Vec::new();
        let mut t0 = 0;
        for &n in &splits {
            gpu.write(&bx, 0, bytemuck::cast_slice(&x[t0 * stride..(t0 + n) * stride])).unwrap();
            StepParams::new(t0 as u32, n as u32, t0 as u32).write(&gpu, &step).unwrap();
            prog.run(&gpu).unwrap();
            chunked.extend(gpu.read_f32_blocking(&by, n * c).unwrap());
            t0 += n;
        }
        assert_eq!(chunked, one_pass, "C={c}: chunks {splits:?} differ from one pass");
        assert_eq!(gpu.read_f32_blocking(&bs, c * (K - 1)).unwrap(), final_state, "C={c}: final state");
        eprintln!("conv C={c} chunks {splits:?}: equal to one pass (rel L2 to CPU {err:.2e})");
    }
}

#[test]
fn conv_leaves_rows_past_the_step_untouched() {
    let gpu = gpu();
    let mut rng = Rng::new(14);
    let (c, max_tok, n_tok) = (40, 8, 3);
    let win = RowWindow::dense(c as u32);
    let x = windowed(&mut rng, max_tok, win);
    let (w, state0) = (rng.vec(c * K), rng.vec(c * (K - 1)));
    let sentinel = vec![7.5f32; max_tok * c];
    let (bx, bw, bs, by) = (upload(&gpu, &x), upload(&gpu, &w), upload(&gpu, &state0), upload(&gpu, &sentinel));
    let step = step_buffer(&gpu, n_tok as u32);
    let mut prog = Program::new();
    let shape = ConvShape { max_tok: max_tok as u32, channels: c as u32, kernel: K as u32 };
    gdn_prep::record_conv(&mut prog, &gpu, &step, &bx, win, &bw, &bs, &by, &shape).unwrap();
    prog.run(&gpu).unwrap();
    let y = gpu.read_f32_blocking(&by, max_tok * c).unwrap();
    let mut want_state = state0.clone();
    let want = gdn_prep::conv_ref(&x, win, n_tok, &w, &mut want_state, c, K);
    assert!(rel_l2(&y[..n_tok * c], &want) < F32_TOL);
    assert_eq!(&y[n_tok * c..], &sentinel[n_tok * c..], "rows past step.n_tok must be untouched");
    assert_eq!(gpu.read_f32_blocking(&bs, c * (K - 1)).unwrap(), want_state, "the state advances by n_tok rows");
}

/// Runs the decay kernel on `n_tok` rows of one fused buffer holding both `a` and `b`.
#[allow(clippy::too_many_arguments)]
fn gpu_decay(
    gpu: &Device,
    ab: &[f32],
    a_win: RowWindow,
    b_win: RowWindow,
    ssm_a: &[f32],
    dt_bias: &[f32],
    n_tok: usize,
    hv: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (bab, ba, bd) = (upload(gpu, ab), upload(gpu, ssm_a), upload(gpu, dt_bias));
    let bg = gpu.storage("g", (n_tok * hv * 4) as u64).unwrap();
    let bbeta = gpu.storage("beta", (n_tok * hv * 4) as u64).unwrap();
    let step = step_buffer(gpu, n_tok as u32);
    let mut prog = Program::new();
    gdn_prep::record_decay(&mut prog, gpu, &step, (&bab, a_win), (&bab, b_win), &ba, &bd, (&bg, &bbeta), n_tok as u32, hv as u32)
        .unwrap();
    prog.run(gpu).unwrap();
    (gpu.read_f32_blocking(&bg, n_tok * hv).unwrap(), gpu.read_f32_blocking(&bbeta, n_tok * hv).unwrap())
}

#[test]
fn decay_and_beta_match_cpu() {
    let gpu = gpu();
    let mut rng = Rng::new(21);
    for (hv, t) in [(3usize, 1usize), (3, 5), (16, 1), (16, 64), (32, 5), (32, 64)] {
        // a and b as two windows of one projection row: [.. 7 .. | b | a | ..].
        let b_win = RowWindow { stride: (2 * hv + 11) as u32, offset: 7 };
        let a_win = RowWindow { offset: (7 + hv) as u32, ..b_win };
        let ab: Vec<f32> = rng.vec(t * b_win.stride as usize).iter().map(|v| 6.0 * v).collect();
        // A = -exp(A_log), A_log = log(U(0.01, 16)) as transformers initialises it.
        let ssm_a: Vec<f32> = (0..hv).map(|_| -(0.01 + 15.99 * (rng.uniform() + 1.0) / 2.0)).collect();
        let dt_bias: Vec<f32> = rng.vec(hv).iter().map(|v| 3.0 * v).collect();
        let (g, beta) = gpu_decay(&gpu, &ab, a_win, b_win, &ssm_a, &dt_bias, t, hv);
        let (want_g, want_beta) = gdn_prep::decay_ref((&ab, a_win), (&ab, b_win), &ssm_a, &dt_bias, t, hv);
        let (eg, eb) = (rel_l2(&g, &want_g), rel_l2(&beta, &want_beta));
        eprintln!("decay Hv={hv} T={t}: g rel L2 {eg:.2e}, beta rel L2 {eb:.2e}");
        assert!(eg < F32_TOL && eb < F32_TOL, "decay Hv={hv} T={t}: g err {eg}, beta err {eb}");
        assert!(g.iter().all(|&v| v <= 0.0), "g must be <= 0");
    }
}

#[test]
fn softplus_and_sigmoid_hold_far_out_in_both_tails() {
    let gpu = gpu();
    // x = a + dt_bias with dt_bias 0; A = -1, so g = -softplus(x).
    let xs = [
        -80.0f32, -60.0, -40.0, -30.0, -20.0, -17.5, -5.0, -1e-3, 0.0, 1e-3, 0.5, 3.0, 15.0, 19.99, 20.0, 20.01, 25.0, 80.0, 1e4,
        -1e4,
    ];
    let bs = [-100.0f32, -30.0, -5.0, 0.0, 5.0, 30.0, 100.0];
    let hv = xs.len();
    let mut ab = xs.to_vec();
    ab.extend((0..hv).map(|i| bs[i % bs.len()]));
    let a_win = RowWindow { stride: 2 * hv as u32, offset: 0 };
    let b_win = RowWindow { offset: hv as u32, ..a_win };
    let (g, beta) = gpu_decay(&gpu, &ab, a_win, b_win, &vec![-1.0; hv], &vec![0.0; hv], 1, hv);
    let mut worst = 0.0f64;
    for (i, &x) in xs.iter().enumerate() {
        let want = -gdn_prep::softplus_ref(x);
        let rel = (g[i] as f64 - want).abs() / want.abs().max(f64::MIN_POSITIVE);
        worst = worst.max(rel);
        if x > 20.0 {
            assert_eq!(g[i], -x, "softplus({x}) must be x above the threshold");
        } else if x < -1e3 {
            assert_eq!(g[i], 0.0, "softplus({x}) underflows to 0");
        } else {
            // exp's own error grows with |x| (WGSL: 3 + 2|x| ULP); lavapipe does far better.
            assert!(rel < 2e-5, "softplus({x}): {} vs {want}: rel err {rel:.2e}", -g[i]);
            assert!(g[i] < 0.0, "softplus({x}) must not flush to 0");
        }
        let bv = ab[hv + i] as f64;
        let want_beta = 1.0 / (1.0 + (-bv).exp());
        assert!((beta[i] as f64 - want_beta).abs() <= 1e-7, "sigmoid({bv}): {} vs {want_beta}", beta[i]);
    }
    eprintln!("softplus over x in [-80, 80]: worst rel err {worst:.2e}");
}

/// Runs the gated norm on `n_tok` rows.
fn gpu_gated_norm(gpu: &Device, o: &[f32], z: &[f32], z_win: RowWindow, w: &[f32], shape: &GatedNormShape) -> Vec<f32> {
    let n = (shape.max_tok * shape.n_heads * shape.head_dim) as usize;
    let (bo, bz, bw) = (upload(gpu, o), upload(gpu, z), upload(gpu, w));
    let bout = gpu.storage("out", (n * 4) as u64).unwrap();
    let step = step_buffer(gpu, shape.max_tok);
    let mut prog = Program::new();
    gdn_prep::record_gated_norm(&mut prog, gpu, &step, &bo, (&bz, z_win), &bw, &bout, shape).unwrap();
    prog.run(gpu).unwrap();
    gpu.read_f32_blocking(&bout, n).unwrap()
}

#[test]
fn gated_rms_norm_matches_cpu() {
    let gpu = gpu();
    let mut rng = Rng::new(31);
    for (hv, dv, t) in
        [(1usize, 1usize, 1usize), (2, 3, 5), (3, 200, 2), (16, 128, 1), (16, 128, 64), (32, 128, 5), (32, 128, 64)]
    {
        let width = hv * dv;
        // z as a window of a wider projection row ([qkv-ish | z | ..]).
        let z_win = RowWindow { stride: (width + 37) as u32, offset: 29 };
        let o: Vec<f32> = rng.vec(t * width).iter().map(|v| 3.0 * v).collect();
        let z: Vec<f32> = rng.vec(t * z_win.stride as usize).iter().map(|v| 8.0 * v).collect();
        let w: Vec<f32> = rng.vec(dv).iter().map(|v| 1.0 + 0.5 * v).collect();
        let shape = GatedNormShape { max_tok: t as u32, n_heads: hv as u32, head_dim: dv as u32, eps: 1e-6 };
        let got = gpu_gated_norm(&gpu, &o, &z, z_win, &w, &shape);
        let want = gdn_prep::gated_norm_ref(&o, (&z, z_win), &w, t, hv, dv, 1e-6);
        let err = rel_l2(&got, &want);
        eprintln!("gated norm Hv={hv} dv={dv} T={t}: rel L2 {err:.2e}, max abs {:.2e}", max_abs(&got, &want));
        assert!(err < F32_TOL, "gated norm Hv={hv} dv={dv} T={t}: rel err {err}");
    }
}

#[test]
fn gated_rms_norm_uses_the_weight_as_is() {
    // o = 1 everywhere: rmsnorm(o) = 1 / sqrt(1 + eps); z large so silu(z) = z: out = w * z.
    let gpu = gpu();
    let (hv, dv) = (2usize, 4usize);
    let o = vec![1.0; hv * dv];
    let z = vec![50.0; hv * dv];
    let w = [0.5f32, -2.0, 0.0, 3.0];
    let shape = GatedNormShape { max_tok: 1, n_heads: hv as u32, head_dim: dv as u32, eps: 0.0 };
    let got = gpu_gated_norm(&gpu, &o, &z, RowWindow::dense((hv * dv) as u32), &w, &shape);
    let want: Vec<f32> = (0..hv * dv).map(|i| w[i % dv] * 50.0).collect();
    assert!(max_abs(&got, &want) <= 1e-4, "{got:?} vs {want:?} (a 1 + w norm would differ by 50)");
}

#[test]
fn bad_shapes_are_rejected() {
    let gpu = gpu();
    let buf = |n: usize| gpu.storage("b", (n * 4) as u64).unwrap();
    let step = step_buffer(&gpu, 1);
    let shape_err = |r: webvlm::backend::gpu::Result<()>, what: &str| {
        assert!(matches!(r, Err(GpuError::Shape(_))), "{what}: expected a shape error, got {r:?}");
    };
    let (c, t) = (8usize, 4usize);
    let (x, w, s, y) = (buf(t * c), buf(c * K), buf(c * (K - 1)), buf(t * c));
    let conv = |win: RowWindow, shape: ConvShape, w: &Buffer, s: &Buffer, y: &Buffer| {
        let mut prog = Program::new();
        gdn_prep::record_conv(&mut prog, &gpu, &step, &x, win, w, s, y, &shape)
    };
    let ok = ConvShape { max_tok: t as u32, channels: c as u32, kernel: K as u32 };
    let dense = RowWindow::dense(c as u32);
    conv(dense, ok, &w, &s, &y).unwrap();
    shape_err(conv(dense, ConvShape { kernel: 1, ..ok }, &w, &s, &y), "conv kernel 1");
    shape_err(conv(dense, ConvShape { max_tok: 0, ..ok }, &w, &s, &y), "conv 0 tokens");
    shape_err(conv(dense, ConvShape { channels: 0, ..ok }, &w, &s, &y), "conv 0 channels");
    shape_err(conv(dense, ConvShape { max_tok: 5, ..ok }, &w, &s, &y), "conv x too short");
    shape_err(conv(RowWindow { stride: c as u32, offset: 1 }, ok, &w, &s, &y), "conv window past the row");
    shape_err(conv(dense, ConvShape { kernel: 5, ..ok }, &w, &s, &y), "conv weight too short");
    shape_err(conv(dense, ok, &w, &buf(c * (K - 1) - 1), &y), "conv state too short");
    shape_err(conv(dense, ok, &w, &s, &buf(t * c - 1)), "conv y too short");
    shape_err(conv(dense, ConvShape { max_tok: u32::MAX, channels: 2, kernel: 4 }, &w, &s, &y), "conv grid overflow");

    let hv = 4usize;
    let (ab, va, gb) = (buf(t * 2 * hv), buf(hv), buf(t * hv));
    let decay = |a_win: RowWindow, b_win: RowWindow, dt: &Buffer, max_tok: u32| {
        let mut prog = Program::new();
        gdn_prep::record_decay(&mut prog, &gpu, &step, (&ab, a_win), (&ab, b_win), &va, dt, (&gb, &gb), max_tok, hv as u32)
    };
    let a_win = RowWindow { stride: 2 * hv as u32, offset: 0 };
    let b_win = RowWindow { offset: hv as u32, ..a_win };
    decay(a_win, b_win, &va, t as u32).unwrap();
    shape_err(decay(a_win, RowWindow { offset: hv as u32 + 1, ..a_win }, &va, t as u32), "decay b past the row");
    shape_err(decay(a_win, b_win, &va, t as u32 + 1), "decay a, b, g too short");
    shape_err(decay(a_win, b_win, &buf(hv - 1), t as u32), "decay dt_bias too short");
    shape_err(decay(a_win, b_win, &va, 0), "decay 0 tokens");

    let dv = 8usize;
    let (o, z, nw, out) = (buf(t * hv * dv), buf(t * hv * dv), buf(dv), buf(t * hv * dv));
    let norm = |shape: GatedNormShape, z_win: RowWindow, nw: &Buffer| {
        let mut prog = Program::new();
        gdn_prep::record_gated_norm(&mut prog, &gpu, &step, &o, (&z, z_win), nw, &out, &shape)
    };
    let ok = GatedNormShape { max_tok: t as u32, n_heads: hv as u32, head_dim: dv as u32, eps: 1e-6 };
    let zd = RowWindow::dense((hv * dv) as u32);
    norm(ok, zd, &nw).unwrap();
    shape_err(norm(GatedNormShape { eps: f32::NAN, ..ok }, zd, &nw), "norm eps NaN");
    shape_err(norm(GatedNormShape { eps: -1.0, ..ok }, zd, &nw), "norm eps < 0");
    shape_err(norm(GatedNormShape { head_dim: 0, ..ok }, zd, &nw), "norm head_dim 0");
    shape_err(norm(GatedNormShape { head_dim: 16, ..ok }, RowWindow::dense((hv * 16) as u32), &nw), "norm o too short");
    shape_err(norm(ok, RowWindow { stride: (hv * dv) as u32 + 1, offset: 1 }, &nw), "norm z too short");
    shape_err(norm(ok, zd, &buf(dv - 1)), "norm weight too short");
}
