//! The per-token ops around Qwen3.5's Gated DeltaNet layer: everything but the delta rule (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks").
//! Reference: transformers `modeling_qwen3_5.py` (`Qwen3_5GatedDeltaNet.forward`,
//! `causal_conv1d_update`, `Qwen3_5RMSNormGated`; shared with `modeling_qwen3_next.py`).
//!
//! The GPU side in `backend::gpu::gdn_prep` (`shaders/gdn_prep.wgsl`), the CPU side in
//! `backend::cpu::gdn_prep`. Three ops, in the layer's order:
//!
//! 1. [`record_conv`]: causal depthwise conv1d with a rolling state, then SiLU, over the mixed
//!    q|k|v rows (`C = 2 Hk dk + Hv dv` channels). `y[t][c] = silu(sum_j w[c][j] * xe[t+j][c])`,
//!    `xe` = the state (the K-1 inputs before this step, zeros at the start of a sequence)
//!    followed by the step's rows; the state then holds the last K-1 rows of `xe`. This is
//!    `causal_conv1d_update` (decode) and `causal_conv1d_fn` over the cached state plus the new
//!    rows (prefill), so one pass over a sequence equals chunk after chunk. No bias
//!    (`nn.Conv1d(..., bias=False)` in Qwen3.5).
//! 2. [`record_decay`]: `g = A * softplus(a + dt_bias)`, `beta = sigmoid(b)` per token and v
//!    head (`g` is the log of the state's decay, `<= 0`).
//! 3. [`record_gated_norm`]: `out = rmsnorm(o) * w * silu(z)` per token and v head over `dv`
//!    (`Qwen3_5RMSNormGated`: norm before gate, variance in f32, weight used as is).
//!
//! # Inputs and their GGUF tensors (llama.cpp `qwen35` / `qwen3next`, `blk.N.` prefix)
//!
//! - conv `x`: the rows of `attn_qkv.weight` · h (HF `in_proj_qkv`), columns q (Hk·dk), k
//!   (Hk·dk), v (Hv·dv): the conv runs over the whole row before the q|k|v split.
//! - conv `weight` `[C][K]`: `ssm_conv1d.weight`, GGUF dims `[K, C]` (ne0 = K), i.e. row-major
//!   `[C][K]` as here; the converter squeezes HF's `[C, 1, K]`. Upload as f32 (dequantize at
//!   load; it is stored f32 in practice). `w[c][K-1]` multiplies the newest input.
//! - decay `a`, `b`: windows of the rows of `ssm_alpha.weight` · h (HF `in_proj_a`) and
//!   `ssm_beta.weight` · h (HF `in_proj_b`), Hv values each.
//! - decay `ssm_a` `[Hv]`: GGUF `ssm_a`, which llama.cpp's converter stores as
//!   **`A = -exp(A_log)`** (`data_torch = -torch.exp(data_torch)`): the kernel takes that
//!   negative form as is. From HF safetensors, upload `-exp(A_log)` (computed in f32).
//! - decay `dt_bias` `[Hv]`: GGUF `ssm_dt.bias` (HF `dt_bias`), as is.
//! - norm `o` `[T][Hv][dv]`: the delta rule's output. `z`: a window of the rows of
//!   `attn_gate.weight` · h (HF `in_proj_z`), Hv·dv values, head-major like `o`.
//! - norm `weight` `[dv]`, shared by the heads: GGUF `ssm_norm.weight` (HF
//!   `linear_attn.norm.weight`), **as is, no `+ 1`**: `Qwen3_5RMSNormGated` multiplies by
//!   `weight` (initialised to ones), and the converter, which adds 1 to every other
//!   `norm.weight` of Qwen3.5 (those are `(1 + w)` norms in transformers), skips this one.
//!   From HF safetensors the tensor is likewise used unchanged.
//!
//! Head order: when Hk < Hv, llama.cpp's converter reorders the v heads of every tensor of
//! the layer (v rows of the qkv weight and of the conv weight, z, a, b, `A_log`, `dt_bias`,
//! the out projection's columns) from grouped to tiled order, consistently; these kernels map
//! head `h` of `a`, `b`, `ssm_a`, `dt_bias`, `o` and `z` to each other and are indifferent to
//! the order, but the delta rule must pair k heads with v heads accordingly.
//!
//! Every kernel covers `min(step.n_tok, max_tok)` token rows (the per-step uniform of
//! [`StepParams`](super::attention::StepParams)): rows past the step's `n_tok` are untouched,
//! and the conv state advances by exactly `n_tok` rows.

pub use super::shapes::{ConvShape, GatedNormShape, RowWindow, SOFTPLUS_THRESHOLD};

use super::attention::StepParams;
use crate::backend::gpu::{self, Result};
use crate::backend::{cpu, Buffer, Device, On, Program};

impl RowWindow {
    /// Rows of exactly `width` elements.
    pub fn dense(width: u32) -> RowWindow {
        RowWindow { stride: width, offset: 0 }
    }

    fn at(&self, t: usize, i: usize) -> usize {
        t * self.stride as usize + self.offset as usize + i
    }
}

/// Records the causal depthwise conv1d + SiLU of the step's rows `x` (window `x_win`, `channels`
/// wide) into `y` (`[max_tok][channels]`, dense; must not alias `x`), reading and then
/// advancing `state` (`[channels][kernel - 1]`, oldest first; zeros at a sequence's start).
/// `weight` is `[channels][kernel]` (GGUF `ssm_conv1d.weight`). Two dispatches: the outputs,
/// then the state update.
#[allow(clippy::too_many_arguments)]
pub fn record_conv(
    prog: &mut Program,
    dev: &Device,
    step: &Buffer,
    x: &Buffer,
    x_win: RowWindow,
    weight: &Buffer,
    state: &Buffer,
    y: &Buffer,
    shape: &ConvShape,
) -> Result<()> {
    let ConvShape { max_tok, channels: c, kernel: k } = *shape;
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            let (step, x, weight, state, y) = (step.gpu()?, x.gpu()?, weight.gpu()?, state.gpu()?, y.gpu()?);
            gpu::gdn_prep::conv(prog, gpu, step, x, x_win, weight, state, y, shape)
        }
        On::Cpu(prog, _) => {
            let [step, x, weight, state, y] = Buffer::cpu_handles([step, x, weight, state, y])?;
            prog.push("gdn conv", move |pool| {
                let n = StepParams::read_cpu(&step)?.n_tok.min(max_tok) as usize;
                let (x, weight, mut state, mut y) = (x.read()?, weight.read()?, state.write()?, y.write()?);
                Ok(cpu::gdn_prep::conv(pool, &x, x_win, n, &weight, &mut state, &mut y, c as usize, k as usize)?)
            });
            Ok(())
        }
    }
}

fn silu_f64(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

/// CPU reference of [`record_conv`] on `n_tok` rows (f64 sums): returns `y` (`[n_tok][channels]`)
/// and advances `state` (`[channels][kernel - 1]`) in place.
pub fn conv_ref(
    x: &[f32],
    x_win: RowWindow,
    n_tok: usize,
    weight: &[f32],
    state: &mut [f32],
    channels: usize,
    kernel: usize,
) -> Vec<f32> {
    let hist = kernel - 1;
    let mut y = vec![0.0; n_tok * channels];
    for c in 0..channels {
        // xe: the state's slots, then the step's inputs.
        let xe: Vec<f32> = state[c * hist..(c + 1) * hist].iter().copied().chain((0..n_tok).map(|t| x[x_win.at(t, c)])).collect();
        for t in 0..n_tok {
            let acc: f64 = (0..kernel).map(|j| weight[c * kernel + j] as f64 * xe[t + j] as f64).sum();
            y[t * channels + c] = silu_f64(acc) as f32;
        }
        state[c * hist..(c + 1) * hist].copy_from_slice(&xe[n_tok..]);
    }
    y
}

/// Records `g[t][h] = ssm_a[h] * softplus(a[t][h] + dt_bias[h])` and
/// `beta[t][h] = sigmoid(b[t][h])` for `n_heads` v heads (`g`, `beta`: `[max_tok][n_heads]`).
/// `ssm_a` is GGUF `ssm_a` = `-exp(A_log)`, `dt_bias` GGUF `ssm_dt.bias`. `a` and `b` may be
/// one buffer (two windows of a fused projection row).
#[allow(clippy::too_many_arguments)]
pub fn record_decay(
    prog: &mut Program,
    dev: &Device,
    step: &Buffer,
    (a, a_win): (&Buffer, RowWindow),
    (b, b_win): (&Buffer, RowWindow),
    ssm_a: &Buffer,
    dt_bias: &Buffer,
    (g, beta): (&Buffer, &Buffer),
    max_tok: u32,
    n_heads: u32,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            let step = step.gpu()?;
            let ssm_a = ssm_a.gpu()?;
            let dt_bias = dt_bias.gpu()?;
            let (a, b, g, beta) = (a.gpu()?, b.gpu()?, g.gpu()?, beta.gpu()?);
            gpu::gdn_prep::decay(prog, gpu, step, (a, a_win), (b, b_win), ssm_a, dt_bias, (g, beta), max_tok, n_heads)
        }
        On::Cpu(prog, _) => {
            let [step, a, b, ssm_a, dt_bias, g, beta] = Buffer::cpu_handles([step, a, b, ssm_a, dt_bias, g, beta])?;
            prog.push("gdn decay", move |_| {
                let n = StepParams::read_cpu(&step)?.n_tok.min(max_tok) as usize;
                let (a, b, ssm_a, dt_bias) = (a.read()?, b.read()?, ssm_a.read()?, dt_bias.read()?);
                let (mut g, mut beta) = (g.write()?, beta.write()?);
                Ok(cpu::gdn_prep::decay((&a, a_win), (&b, b_win), &ssm_a, &dt_bias, (&mut g, &mut beta), n, n_heads as usize)?)
            });
            Ok(())
        }
    }
}

/// torch's `F.softplus(x)` (beta 1, threshold 20) in f64: `x` above 20, else `log1p(exp(x))`.
pub fn softplus_ref(x: f32) -> f64 {
    if x > SOFTPLUS_THRESHOLD {
        x as f64
    } else {
        (x as f64).exp().ln_1p()
    }
}

/// CPU reference of [`record_decay`] on `n_tok` rows: `(g, beta)`, each `[n_tok][n_heads]`.
/// `a + dt_bias` is rounded to f32 first, as torch adds them in f32.
#[allow(clippy::too_many_arguments)]
pub fn decay_ref(
    (a, a_win): (&[f32], RowWindow),
    (b, b_win): (&[f32], RowWindow),
    ssm_a: &[f32],
    dt_bias: &[f32],
    n_tok: usize,
    n_heads: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut g = Vec::with_capacity(n_tok * n_heads);
    let mut beta = Vec::with_capacity(n_tok * n_heads);
    for t in 0..n_tok {
        for h in 0..n_heads {
            g.push((ssm_a[h] as f64 * softplus_ref(a[a_win.at(t, h)] + dt_bias[h])) as f32);
            beta.push((1.0 / (1.0 + (-(b[b_win.at(t, h)] as f64)).exp())) as f32);
        }
    }
    (g, beta)
}

/// Records `out[t][h] = o[t][h] / sqrt(mean(o[t][h]^2) + eps) * weight * silu(z[t][h])` over
/// `head_dim` for every head: `o` and `out` are `[max_tok][n_heads][head_dim]` (dense; `out`
/// must not alias `o`), `z` a window of `n_heads * head_dim` per row, `weight` `[head_dim]`
/// (GGUF `ssm_norm.weight`, used as is: no `1 + w`).
#[allow(clippy::too_many_arguments)]
pub fn record_gated_norm(
    prog: &mut Program,
    dev: &Device,
    step: &Buffer,
    o: &Buffer,
    (z, z_win): (&Buffer, RowWindow),
    weight: &Buffer,
    out: &Buffer,
    shape: &GatedNormShape,
) -> Result<()> {
    let GatedNormShape { max_tok, n_heads, head_dim, eps } = *shape;
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            let (step, o, weight, out, z) = (step.gpu()?, o.gpu()?, weight.gpu()?, out.gpu()?, z.gpu()?);
            gpu::gdn_prep::gated_norm(prog, gpu, step, o, (z, z_win), weight, out, shape)
        }
        On::Cpu(prog, _) => {
            let [step, o, z, weight, out] = Buffer::cpu_handles([step, o, z, weight, out])?;
            prog.push("gdn gated_norm", move |pool| {
                let n = StepParams::read_cpu(&step)?.n_tok.min(max_tok) as usize;
                let (o, z, weight, mut out) = (o.read()?, z.read()?, weight.read()?, out.write()?);
                let (heads, dim) = (n_heads as usize, head_dim as usize);
                Ok(cpu::gdn_prep::gated_norm(pool, &o, (&z, z_win), &weight, &mut out, n, heads, dim, eps)?)
            });
            Ok(())
        }
    }
}

/// CPU reference of [`record_gated_norm`] on `n_tok` rows (f64), in transformers' order:
/// `(o * rsqrt(mean(o^2) + eps)) * w * silu(z)`.
#[allow(clippy::too_many_arguments)]
pub fn gated_norm_ref(
    o: &[f32],
    (z, z_win): (&[f32], RowWindow),
    weight: &[f32],
    n_tok: usize,
    n_heads: usize,
    head_dim: usize,
    eps: f32,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(n_tok * n_heads * head_dim);
    for t in 0..n_tok {
        for h in 0..n_heads {
            let row = &o[(t * n_heads + h) * head_dim..][..head_dim];
            let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / head_dim as f64;
            let scale = 1.0 / (ms + eps as f64).sqrt();
            for (i, &v) in row.iter().enumerate() {
                let zv = z[z_win.at(t, h * head_dim + i)] as f64;
                out.push((v as f64 * scale * weight[i] as f64 * silu_f64(zv)) as f32);
            }
        }
    }
    out
}
