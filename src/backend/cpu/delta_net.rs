//! The gated delta rule, the op of `kernels::delta_net`: the linear-attention token mixer of
//! Qwen3.5 / Qwen3-Next (Gated DeltaNet; Yang, Kautz & Hatamizadeh 2024, arXiv:2412.06464),
//! token by token as transformers' `torch_recurrent_gated_delta_rule` with
//! `use_qk_l2norm_in_kernel=True` and `shaders/gated_delta_net.wgsl`'s `gdn_recurrent`, for
//! decode (one token) and prefill alike. Layouts are the GPU op's ([`DeltaNetLayout`]: q, k, v
//! in the rows of the conv output, `g` and `beta` `[n_tok][Hv]`, the state `[Hv][d_k][d_v]`
//! f32, updated in place, the output `[n_tok][Hv * d_v]`).
//!
//! Per v head h (with k head [`DeltaNetLayout::k_head`]) and token: q and k L2-normalised
//! (`x / sqrt(Σ x² + 1e-6)`), q also scaled by `1/sqrt(d_k)` (rounded to f32 as torch does);
//! then `S *= exp(g)`, `delta = (v - Sᵀk) · beta`, `S += k deltaᵀ`, `o = Sᵀq`. Two passes over
//! S per token, both along its rows of `d_v` (so they vectorise): decay and `Sᵀk`, then the
//! rank-one update and `Sᵀq`. One pool task per v head. The AVX2 level runs the same code
//! compiled for AVX2 (no FMA contraction: every level gives the same bits).

use super::matvec::Rows;
use super::ops::{check_min_len, invalid, ShapeError};
use super::pool::ThreadPool;
use super::simd;
pub use crate::kernels::shapes::{DeltaNetLayout, KHeads, L2_EPS};

const OP: &str = "gated_delta_rule";

/// Runs `n_tok` tokens (1 for decode) through the gated delta rule, as
/// `kernels::delta_net::record_recurrent`: `qkv` holds the conv output rows (see
/// [`DeltaNetLayout`]), `g` and `beta` `[n_tok][Hv]`, `state` `[Hv][d_k][d_v]` (read, then
/// written back), `out` `[n_tok][Hv * d_v]`. Longer slices are fine; the rest is untouched.
#[allow(clippy::too_many_arguments)]
pub fn recurrent(
    pool: &ThreadPool,
    layout: &DeltaNetLayout,
    n_tok: usize,
    qkv: &[f32],
    g: &[f32],
    beta: &[f32],
    state: &mut [f32],
    out: &mut [f32],
) -> Result<(), ShapeError> {
    check(OP, layout, n_tok, [qkv.len(), g.len(), beta.len(), state.len(), out.len()])?;
    let (hv, dk, dv) = (layout.n_v_heads as usize, layout.d_k as usize, layout.d_v as usize);
    if n_tok == 0 {
        return Ok(());
    }
    let q_scale = (1.0 / (dk as f64).sqrt()) as f32;
    let avx2 = simd::level().avx2();
    let (st, o) = (Rows(state.as_mut_ptr()), Rows(out.as_mut_ptr()));
    pool.run(hv, &|h| {
        // SAFETY: head h's state, `[h * dk * dv, (h + 1) * dk * dv)`, is in bounds (checked) and
        // this task's alone; its outputs `t * hv * dv + h * dv + j` (j < dv) likewise.
        let s = unsafe { std::slice::from_raw_parts_mut(st.at(h * dk * dv), dk * dv) };
        let head = Head { l: layout, h, n_tok, qkv, g, beta, q_scale, out: &o };
        match avx2 {
            // SAFETY: `avx2` is set only at the levels that imply AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            true => unsafe { head.run_avx2(s) },
            _ => head.run(s),
        }
    });
    Ok(())
}

/// Checks `layout` and the lengths of the slices `qkv`, `g`, `beta`, `state` and `out` of op
/// `op` over `n_tok` tokens (both forms of the rule).
pub(super) fn check(op: &'static str, layout: &DeltaNetLayout, n_tok: usize, lens: [usize; 5]) -> Result<(), ShapeError> {
    layout.check().map_err(|e| invalid(op, e.to_string()))?;
    let hv = layout.n_v_heads as usize;
    let need = [layout.qkv_len(n_tok), n_tok * hv, n_tok * hv, layout.state_len(), layout.out_len(n_tok)];
    for ((what, len), need) in ["qkv", "g", "beta", "state", "out"].into_iter().zip(lens).zip(need) {
        check_min_len(op, what, len, need)?;
    }
    Ok(())
}

/// One v head's inputs.
struct Head<'a> {
    l: &'a DeltaNetLayout,
    h: usize,
    n_tok: usize,
    qkv: &'a [f32],
    g: &'a [f32],
    beta: &'a [f32],
    q_scale: f32,
    out: &'a Rows,
}

/// `Σ x²` in eight lanes.
#[inline(always)]
fn sum_sq(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl Head<'_> {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_avx2(&self, s: &mut [f32]) {
        self.run(s)
    }

    /// The recurrence over the tokens on this head's state `s` (`[d_k][d_v]`).
    #[inline(always)]
    fn run(&self, s: &mut [f32]) {
        let l = self.l;
        let (hv, dk, dv, h) = (l.n_v_heads as usize, l.d_k as usize, l.d_v as usize, self.h);
        let kh = l.k_head(h);
        let (mut qn, mut kn) = (vec![0f32; dk], vec![0f32; dk]);
        let (mut kv, mut o) = (vec![0f32; dv], vec![0f32; dv]);
        for t in 0..self.n_tok {
            let row = &self.qkv[t * l.row_stride as usize..];
            let q = &row[l.q_offset as usize + kh * dk..][..dk];
            let k = &row[l.k_offset as usize + kh * dk..][..dk];
            let v = &row[l.v_offset as usize + h * dv..][..dv];
            let q_mul = 1.0 / (sum_sq(q) + L2_EPS as f32).sqrt() * self.q_scale;
            let k_mul = 1.0 / (sum_sq(k) + L2_EPS as f32).sqrt();
            qn.iter_mut().zip(q).for_each(|(n, &x)| *n = x * q_mul);
            kn.iter_mut().zip(k).for_each(|(n, &x)| *n = x * k_mul);
            let decay = self.g[t * hv + h].exp();
            let beta = self.beta[t * hv + h];
            // S *= decay; kv = Sᵀ k.
            kv.fill(0.0);
            for (sr, &ki) in s.chunks_exact_mut(dv).zip(&kn) {
                for (x, a) in sr.iter_mut().zip(kv.iter_mut()) {
                    *x *= decay;
                    *a += *x * ki;
                }
            }
            // delta = (v - kv) beta (into kv); S += k deltaᵀ; o = Sᵀ q.
            kv.iter_mut().zip(v).for_each(|(a, &v)| *a = (v - *a) * beta);
            o.fill(0.0);
            for ((sr, &ki), &qi) in s.chunks_exact_mut(dv).zip(&kn).zip(&qn) {
                for ((x, &d), a) in sr.iter_mut().zip(&kv).zip(o.iter_mut()) {
                    *x += ki * d;
                    *a += *x * qi;
                }
            }
            for (j, &v) in o.iter().enumerate() {
                // SAFETY: see `recurrent`.
                unsafe { *self.out.at(t * hv * dv + h * dv + j) = v };
            }
        }
    }
}
