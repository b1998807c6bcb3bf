//! Gated delta rule: the GPU side in `backend::gpu::delta_net` (`shaders/gated_delta_net.wgsl`),
//! the CPU side in `backend::cpu::{delta_net, delta_net_chunked}`. The linear-attention token mixer of
//! Qwen3.5 / Qwen3-Next (Gated DeltaNet; Yang, Kautz & Hatamizadeh, "Gated Delta Networks:
//! Improving Mamba2 with Delta Rule", arXiv:2412.06464), as transformers'
//! `torch_recurrent_gated_delta_rule` and `torch_chunk_gated_delta_rule`
//! (`modeling_qwen3_next.py`, `modeling_qwen3_5.py`) with `use_qk_l2norm_in_kernel=True`.
//!
//! Per v head h with k head `kh` ([`KHeads`]) and state S (d_k x d_v, f32, [Hv][d_k][d_v]):
//! q and k are L2-normalised (`x * rsqrt(sum x^2 + 1e-6)`), q scaled by 1/sqrt(d_k); then per
//! token `S *= exp(g)`, `delta = (v - S^T k) * beta`, `S += k delta^T`, `o = S^T q`.
//! `g` (log decay) and `beta` come in precomputed, [T][Hv] f32.
//!
//! The CPU references accumulate in f64: [`gated_delta_rule_recurrent_ref`] is the per-token
//! recurrence, [`gated_delta_rule_chunked_ref`] mirrors torch's chunked form (chunks of 64,
//! UT transform of the within-chunk delta rule under the decay mask, then the inter-chunk state
//! update), so that comparing the two checks the chunked algebra itself.

pub use super::shapes::{DeltaNetLayout, KHeads, L2_EPS};
pub use crate::backend::gpu::delta_net::{chunked_scratch_len, CHUNK};

use crate::backend::gpu::{self, GpuError, Result};
use crate::backend::{cpu, Buffer, Device, On, Program};

/// Largest d_k and d_v the kernels take.
pub const MAX_HEAD_DIM: u32 = 128;
/// Fewest tokens [`record_chunked`] runs in the chunked form on the CPU, below them the
/// recurrence. Measured (`examples/cpu_bench -- delta`, Qwen3.5-0.8B's shapes, 1 thread): one
/// token 0.06 ms chunked against 0.04 ms recurrent, two 0.06 against 0.068, four 1.3x faster.
const CPU_CHUNKED_MIN_TOKENS: usize = 2;

impl DeltaNetLayout {
    /// The conv1d output layout: rows of `[q heads | k heads | v heads]`, nothing else.
    pub fn conv_rows(n_k_heads: u32, n_v_heads: u32, d_k: u32, d_v: u32, k_heads: KHeads) -> DeltaNetLayout {
        let key_dim = n_k_heads * d_k;
        DeltaNetLayout {
            n_k_heads,
            n_v_heads,
            d_k,
            d_v,
            row_stride: 2 * key_dim + n_v_heads * d_v,
            q_offset: 0,
            k_offset: key_dim,
            v_offset: 2 * key_dim,
            k_heads,
        }
    }

    /// The k head of v head `h`.
    pub fn k_head(&self, h: usize) -> usize {
        match self.k_heads {
            KHeads::Tiled => h % self.n_k_heads as usize,
            KHeads::Grouped => h / (self.n_v_heads / self.n_k_heads) as usize,
        }
    }

    /// Floats of the state (all v heads).
    pub fn state_len(&self) -> usize {
        (self.n_v_heads * self.d_k * self.d_v) as usize
    }

    /// Floats of the output of `n_tok` tokens.
    pub fn out_len(&self, n_tok: usize) -> usize {
        n_tok * (self.n_v_heads * self.d_v) as usize
    }

    /// Floats of `n_tok` mixed rows (the last row need not be full).
    pub fn qkv_len(&self, n_tok: usize) -> usize {
        if n_tok == 0 {
            return 0;
        }
        let widths = [
            self.q_offset + self.n_k_heads * self.d_k,
            self.k_offset + self.n_k_heads * self.d_k,
            self.v_offset + self.n_v_heads * self.d_v,
        ];
        (n_tok - 1) * self.row_stride as usize + *widths.iter().max().unwrap() as usize
    }

    /// The head counts, dims and column windows are consistent.
    pub fn check(&self) -> Result<()> {
        let bad = |what: String| Err(GpuError::Shape(format!("gated delta rule: {what}")));
        let (hk, hv) = (self.n_k_heads, self.n_v_heads);
        if hk == 0 || hv == 0 || !hv.is_multiple_of(hk) {
            return bad(format!("{hv} v heads are not a multiple of {hk} k heads"));
        }
        for (name, d) in [("d_k", self.d_k), ("d_v", self.d_v)] {
            if d == 0 || d > MAX_HEAD_DIM {
                return bad(format!("{name} = {d} outside 1..={MAX_HEAD_DIM}"));
            }
        }
        let windows =
            [("q", self.q_offset, hk * self.d_k), ("k", self.k_offset, hk * self.d_k), ("v", self.v_offset, hv * self.d_v)];
        for (name, offset, width) in windows {
            if offset as u64 + width as u64 > self.row_stride as u64 {
                return bad(format!("{name} columns {offset}..{} past the row stride {}", offset + width, self.row_stride));
            }
        }
        Ok(())
    }
}

/// torch's `1 / (d_k ** 0.5)`: a Python float, rounded to f32 when it multiplies q.
fn q_scale(d_k: u32) -> f64 {
    1.0 / (d_k as f64).sqrt()
}

fn check_len(what: &str, buf: &Buffer, floats: usize) -> Result<()> {
    if buf.size() < 4 * floats as u64 {
        return Err(GpuError::Shape(format!("gated delta rule: {what} holds {} bytes, needs {}", buf.size(), 4 * floats)));
    }
    Ok(())
}

/// The buffers of one gated-delta-rule dispatch.
pub struct DeltaNetBuffers<'a> {
    /// Mixed rows (see [`DeltaNetLayout`]), read only.
    pub qkv: &'a Buffer,
    /// `[n_tok][Hv]` log decays.
    pub g: &'a Buffer,
    /// `[n_tok][Hv]` update strengths.
    pub beta: &'a Buffer,
    /// `[Hv][d_k][d_v]` state, read and written in place.
    pub state: &'a Buffer,
    /// `[n_tok][Hv * d_v]` outputs.
    pub out: &'a Buffer,
}

/// Checks `n_tok` tokens of `layout` against the buffers (both backends).
fn check(layout: &DeltaNetLayout, n_tok: usize, b: &DeltaNetBuffers<'_>) -> Result<()> {
    layout.check()?;
    if n_tok == 0 || n_tok > u32::MAX as usize / layout.row_stride.max(1) as usize {
        return Err(GpuError::Shape(format!("gated delta rule: {n_tok} tokens")));
    }
    check_len("qkv", b.qkv, layout.qkv_len(n_tok))?;
    check_len("g", b.g, n_tok * layout.n_v_heads as usize)?;
    check_len("beta", b.beta, n_tok * layout.n_v_heads as usize)?;
    check_len("state", b.state, layout.state_len())?;
    check_len("out", b.out, layout.out_len(n_tok))
}

impl DeltaNetBuffers<'_> {
    fn gpu(&self) -> Result<gpu::delta_net::Buffers<'_>> {
        Ok([self.qkv.gpu()?, self.g.gpu()?, self.beta.gpu()?, self.state.gpu()?, self.out.gpu()?])
    }
}

/// A CPU form of the gated delta rule (`cpu::delta_net::recurrent`, `cpu::delta_net_chunked::chunked`).
type CpuDeltaRule = fn(
    &cpu::ThreadPool,
    &DeltaNetLayout,
    usize,
    &[f32],
    &[f32],
    &[f32],
    &mut [f32],
    &mut [f32],
) -> std::result::Result<(), cpu::ShapeError>;

/// Records the gated delta rule over `n_tok` tokens on the CPU, by `op`.
fn cpu_delta_rule(
    prog: &mut cpu::Program,
    name: &'static str,
    op: CpuDeltaRule,
    layout: &DeltaNetLayout,
    n_tok: usize,
    b: &DeltaNetBuffers<'_>,
) -> Result<()> {
    let [qkv, g, beta, state, out] = Buffer::cpu_handles([b.qkv, b.g, b.beta, b.state, b.out])?;
    let layout = *layout;
    prog.push(name, move |pool| {
        let (qkv, g, beta, mut state, mut out) = (qkv.read()?, g.read()?, beta.read()?, state.write()?, out.write()?);
        Ok(op(pool, &layout, n_tok, &qkv, &g, &beta, &mut state, &mut out)?)
    });
    Ok(())
}

/// Records the gated delta rule's recurrence over `n_tok` tokens on the CPU.
fn cpu_recurrent(prog: &mut cpu::Program, layout: &DeltaNetLayout, n_tok: usize, b: &DeltaNetBuffers<'_>) -> Result<()> {
    cpu_delta_rule(prog, "gated_delta_rule", cpu::delta_net::recurrent, layout, n_tok, b)
}

/// Records the chunked form over `n_tok` tokens on the CPU (same outputs and final state).
fn cpu_chunked(prog: &mut cpu::Program, layout: &DeltaNetLayout, n_tok: usize, b: &DeltaNetBuffers<'_>) -> Result<()> {
    cpu_delta_rule(prog, "gated_delta_rule_chunked", cpu::delta_net_chunked::chunked, layout, n_tok, b)
}

/// Records the recurrence: `n_tok` tokens one after the other (n_tok = 1 for decode), the
/// state read once and written back in place.
pub fn record_recurrent(
    prog: &mut Program,
    dev: &Device,
    layout: &DeltaNetLayout,
    n_tok: usize,
    b: &DeltaNetBuffers<'_>,
) -> Result<()> {
    check(layout, n_tok, b)?;
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::delta_net::recurrent(prog, gpu, layout, n_tok, q_scale(layout.d_k) as f32, b.gpu()?),
        On::Cpu(prog, _) => cpu_recurrent(prog, layout, n_tok, b),
    }
}

/// Records the chunked form (prefill): same outputs and final state as [`record_recurrent`]
/// over the same tokens. On the GPU, chunks of [`CHUNK`] in `scratch` (at least
/// [`chunked_scratch_len`] floats); on the CPU `cpu::delta_net_chunked::chunked` (its own
/// scratch, its own chunk size), or the recurrence below `CPU_CHUNKED_MIN_TOKENS` tokens.
pub fn record_chunked(
    prog: &mut Program,
    dev: &Device,
    layout: &DeltaNetLayout,
    n_tok: usize,
    b: &DeltaNetBuffers<'_>,
    scratch: &Buffer,
) -> Result<()> {
    check(layout, n_tok, b)?;
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            gpu::delta_net::chunked(prog, gpu, layout, n_tok, q_scale(layout.d_k) as f32, b.gpu()?, scratch.gpu()?)
        }
        On::Cpu(prog, _) if n_tok < CPU_CHUNKED_MIN_TOKENS => cpu_recurrent(prog, layout, n_tok, b),
        On::Cpu(prog, _) => cpu_chunked(prog, layout, n_tok, b),
    }
}

/// L2-normalised (`x * rsqrt(sum x^2 + eps)`) copy of `x`, times `scale`.
fn l2norm(x: &[f32], scale: f64) -> Vec<f64> {
    let inv = 1.0 / (x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() + L2_EPS).sqrt();
    x.iter().map(|&v| v as f64 * inv * scale).collect()
}

/// Normalised q (scaled), k and raw v of v head `h` at token `t`.
fn token_qkv(l: &DeltaNetLayout, qkv: &[f32], t: usize, h: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (dk, dv) = (l.d_k as usize, l.d_v as usize);
    let row = t * l.row_stride as usize;
    let kh = l.k_head(h);
    let q = &qkv[row + l.q_offset as usize + kh * dk..][..dk];
    let k = &qkv[row + l.k_offset as usize + kh * dk..][..dk];
    let v = &qkv[row + l.v_offset as usize + h * dv..][..dv];
    (l2norm(q, q_scale(l.d_k) as f32 as f64), l2norm(k, 1.0), v.iter().map(|&x| x as f64).collect())
}

/// CPU reference of [`record_recurrent`] (transformers' `torch_recurrent_gated_delta_rule`, f64
/// accumulation): the `[n_tok][Hv * d_v]` outputs; `state` ([Hv][d_k][d_v]) is updated in place.
pub fn gated_delta_rule_recurrent_ref(
    l: &DeltaNetLayout,
    n_tok: usize,
    qkv: &[f32],
    g: &[f32],
    beta: &[f32],
    state: &mut [f32],
) -> Vec<f32> {
    let (hv, dk, dv) = (l.n_v_heads as usize, l.d_k as usize, l.d_v as usize);
    let mut out = vec![0.0; l.out_len(n_tok)];
    for h in 0..hv {
        let mut s: Vec<f64> = state[h * dk * dv..][..dk * dv].iter().map(|&x| x as f64).collect();
        for t in 0..n_tok {
            let (q, k, v) = token_qkv(l, qkv, t, h);
            let decay = (g[t * hv + h] as f64).exp();
            s.iter_mut().for_each(|x| *x *= decay);
            for j in 0..dv {
                let kv: f64 = (0..dk).map(|i| s[i * dv + j] * k[i]).sum();
                let delta = (v[j] - kv) * beta[t * hv + h] as f64;
                (0..dk).for_each(|i| s[i * dv + j] += k[i] * delta);
                out[t * hv * dv + h * dv + j] = (0..dk).map(|i| s[i * dv + j] * q[i]).sum::<f64>() as f32;
            }
        }
        state[h * dk * dv..][..dk * dv].iter_mut().zip(&s).for_each(|(d, x)| *d = *x as f32);
    }
    out
}

/// CPU reference of the chunked form, step by step as `torch_chunk_gated_delta_rule` (f64):
/// per chunk of [`CHUNK`] tokens (the last zero-padded) with in-chunk cumulative log decay
/// `c` and decay mask `D[i][j] = exp(c_i - c_j)` (j <= i): `L = (diag(beta) K K^T) * D` strictly
/// below the diagonal, `A = (I + L)^-1` by forward substitution (torch's row loop on `-L`), then
/// `U = A (beta V)`, `W = A (beta K exp(c))`;
/// per chunk with state S: `V' = U - W S`, `O = (Q exp(c)) S + ((Q K^T) * D, lower) V'`,
/// `S = S exp(c_last) + (K exp(c_last - c))^T V'`. Same outputs and state as the recurrence.
pub fn gated_delta_rule_chunked_ref(
    l: &DeltaNetLayout,
    n_tok: usize,
    qkv: &[f32],
    g: &[f32],
    beta: &[f32],
    state: &mut [f32],
) -> Vec<f32> {
    let (hv, dk, dv) = (l.n_v_heads as usize, l.d_k as usize, l.d_v as usize);
    let mut out = vec![0.0; l.out_len(n_tok)];
    for h in 0..hv {
        let mut s: Vec<f64> = state[h * dk * dv..][..dk * dv].iter().map(|&x| x as f64).collect();
        for c0 in (0..n_tok).step_by(CHUNK) {
            let n = CHUNK.min(n_tok - c0);
            // Padding rows (q = k = v = 0, g = beta = 0) change nothing: drop them.
            let rows: Vec<_> = (c0..c0 + n).map(|t| token_qkv(l, qkv, t, h)).collect();
            let b: Vec<f64> = (c0..c0 + n).map(|t| beta[t * hv + h] as f64).collect();
            let mut c = vec![0.0f64; n];
            for i in 0..n {
                c[i] = g[(c0 + i) * hv + h] as f64 + if i > 0 { c[i - 1] } else { 0.0 };
            }
            let decay = |i: usize, j: usize| if j <= i { (c[i] - c[j]).exp() } else { 0.0 };
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
            let mut a = vec![0.0f64; n * n];
            for i in 0..n {
                for j in 0..i {
                    a[i * n + j] = -b[i] * dot(&rows[i].1, &rows[j].1) * decay(i, j);
                }
            }
            for i in 1..n {
                let row: Vec<f64> = a[i * n..i * n + i].to_vec();
                for j in 0..i {
                    a[i * n + j] = row[j] + (0..i).map(|m| row[m] * a[m * n + j]).sum::<f64>();
                }
            }
            (0..n).for_each(|i| a[i * n + i] += 1.0);
            // U = A (beta v) [n][dv]; W = A (beta k exp(c)) [n][dk].
            let mut u = vec![0.0f64; n * dv];
            let mut w = vec![0.0f64; n * dk];
            for i in 0..n {
                for m in 0..=i {
                    let am = a[i * n + m] * b[m];
                    (0..dv).for_each(|j| u[i * dv + j] += am * rows[m].2[j]);
                    (0..dk).for_each(|d| w[i * dk + d] += am * rows[m].1[d] * c[m].exp());
                }
            }
            // V' = U - W S.
            let mut v_new = u;
            for i in 0..n {
                for d in 0..dk {
                    (0..dv).for_each(|j| v_new[i * dv + j] -= w[i * dk + d] * s[d * dv + j]);
                }
            }
            for i in 0..n {
                let q = &rows[i].0;
                for j in 0..dv {
                    let inter: f64 = (0..dk).map(|d| q[d] * c[i].exp() * s[d * dv + j]).sum();
                    let intra: f64 = (0..=i).map(|m| dot(q, &rows[m].1) * decay(i, m) * v_new[m * dv + j]).sum();
                    out[(c0 + i) * hv * dv + h * dv + j] = (inter + intra) as f32;
                }
            }
            let last = c[n - 1];
            s.iter_mut().for_each(|x| *x *= last.exp());
            for m in 0..n {
                let f = (last - c[m]).exp();
                for d in 0..dk {
                    let kd = rows[m].1[d] * f;
                    (0..dv).for_each(|j| s[d * dv + j] += kd * v_new[m * dv + j]);
                }
            }
        }
        state[h * dk * dv..][..dk * dv].iter_mut().zip(&s).for_each(|(d, x)| *d = *x as f32);
    }
    out
}
