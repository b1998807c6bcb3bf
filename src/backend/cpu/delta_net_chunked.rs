//! The gated delta rule in its chunked form, for prefill: the same op, layouts and results as
//! [`super::delta_net::recurrent`] (up to f32 rounding), computed per chunk of [`CHUNK`] tokens
//! with matrix products instead of one rank-one update of the state per token. The algorithm is
//! the chunkwise form of Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024, arXiv:2412.06464, §3
//! with the WY/UT representation of the delta rule), as transformers'
//! `torch_chunk_gated_delta_rule` and `shaders/gated_delta_net.wgsl`'s `gdn_chunk_prep` and
//! `gdn_chunk_state`; `kernels::delta_net::gated_delta_rule_chunked_ref` is its f64 reference.
//!
//! Per v head, chunk of n tokens (normalised rows Q, K: n x d_k, V: n x d_v, `beta`) and state S
//! (d_k x d_v), with c the in-chunk cumulative log decay and `D[i][m] = exp(c_i - c_m)` (m ≤ i):
//! `L = strictly-lower(diag(beta) K Kᵀ ⊙ D)`, `T = (I + L)⁻¹`; torch's `V' = T (beta V) -
//! T (beta K ⊙ e^c) S` is computed as `V' = T R` with `R = beta (V - (K ⊙ e^c) S)`, by forward
//! substitution (no T, no W); then `O = (Q ⊙ e^c) S + lower(Q Kᵀ ⊙ D) V'` and
//! `S = e^(c_last) S + (K ⊙ e^(c_last - c))ᵀ V'`.
//!
//! Every product is one `gemm` over contiguous f32 rows in register tiles of 4 x 16 (two AVX2
//! vectors wide), summing in a fixed order, without FMA contraction: every SIMD level, thread
//! count and column split gives the same bits. One pool task per (v head, block of state
//! columns): the columns of S evolve independently, so with fewer v heads than threads each
//! head's columns are split (the per-chunk Gram matrices are then computed once per block).
//! A task allocates its scratch once per call; it updates the head's state in place when it
//! owns all its columns, else a copy of its block.

use super::matvec::Rows;
use super::ops::ShapeError;
use super::pool::ThreadPool;
use super::simd;
use crate::kernels::shapes::{DeltaNetLayout, L2_EPS};

const OP: &str = "gated_delta_rule_chunked";
/// Tokens per chunk. torch and the GPU kernels take 64; here the within-chunk work (Gram
/// matrices with their decays, the triangular solve, the causal product: about
/// `n (d_k + d_v)` per token for chunks of n, beside the `3 d_k d_v` of the products with S)
/// grows with n, while the products with S keep their register tiles full down to 16 rows.
/// Measured (`examples/cpu_bench`, Qwen3.5-0.8B's shapes, 1 thread, AVX2 code on a Zen 5 core),
/// 64 / 256 tokens: 1.46 / 5.7 ms with chunks of 64, 1.22 / 4.96 of 32, 1.19 / 4.6 of 16,
/// 1.16 / 4.7 of 8.
pub const CHUNK: usize = 16;
/// Rows of a register tile.
const MR: usize = 4;
/// Columns of a register tile (two AVX2 vectors); also the narrowest column block of a task.
const NR: usize = 16;

/// Runs `n_tok` tokens through the gated delta rule in chunks: the contract of
/// [`recurrent`](super::delta_net::recurrent) (`qkv` rows per [`DeltaNetLayout`], `g` and `beta`
/// `[n_tok][Hv]`, `state` `[Hv][d_k][d_v]` read then written back, `out` `[n_tok][Hv * d_v]`;
/// longer slices are fine, the rest is untouched).
#[allow(clippy::too_many_arguments)]
pub fn chunked(
    pool: &ThreadPool,
    layout: &DeltaNetLayout,
    n_tok: usize,
    qkv: &[f32],
    g: &[f32],
    beta: &[f32],
    state: &mut [f32],
    out: &mut [f32],
) -> Result<(), ShapeError> {
    super::delta_net::check(OP, layout, n_tok, [qkv.len(), g.len(), beta.len(), state.len(), out.len()])?;
    let (hv, dk, dv) = (layout.n_v_heads as usize, layout.d_k as usize, layout.d_v as usize);
    if n_tok == 0 {
        return Ok(());
    }
    // Column blocks per head: enough tasks for every thread, blocks whole tiles wide.
    let width = dv.div_ceil(pool.threads().div_ceil(hv)).next_multiple_of(NR).min(dv);
    let blocks = dv.div_ceil(width);
    let task = Task {
        l: layout,
        n_tok,
        qkv,
        g,
        beta,
        q_scale: (1.0 / (dk as f64).sqrt()) as f32,
        state: &Rows(state.as_mut_ptr()),
        out: &Rows(out.as_mut_ptr()),
    };
    let avx2 = simd::level().avx2();
    pool.run(hv * blocks, &|i| {
        let (h, j0) = (i / blocks, i % blocks * width);
        let cols = (j0, width.min(dv - j0));
        match avx2 {
            // SAFETY: `avx2` is set only at the levels that imply AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            true => unsafe { task.run_avx2(h, cols) },
            _ => task.run(h, cols),
        }
    });
    Ok(())
}

/// The op's inputs; tasks write through `state` and `out` in their own (head, columns) only.
struct Task<'a> {
    l: &'a DeltaNetLayout,
    n_tok: usize,
    qkv: &'a [f32],
    g: &'a [f32],
    beta: &'a [f32],
    q_scale: f32,
    state: &'a Rows,
    out: &'a Rows,
}

/// A task's scratch for one chunk (n ≤ [`CHUNK`] tokens, w state columns).
struct Scratch {
    /// Rows 0..n: Q (normalised, scaled, then times e^c); rows n..2n: K (normalised, then
    /// times e^c). `[2 CHUNK][d_k]`.
    qk: Vec<f32>,
    /// Kᵀ, then times `e^(c_last - c)` per column. `[d_k][CHUNK]`.
    kt: Vec<f32>,
    /// Q Kᵀ, then `lower(Q Kᵀ ⊙ D)` (zero above the diagonal). `[CHUNK][CHUNK]`.
    qkt: Vec<f32>,
    /// K Kᵀ, then `-L` below the diagonal (the rest unused). `[CHUNK][CHUNK]`.
    neg_l: Vec<f32>,
    /// Rows 0..n: `(Q ⊙ e^c) S`, then O; rows n..2n: `(K ⊙ e^c) S`, then R, then V'. `[2 CHUNK][w]`.
    ov: Vec<f32>,
}

/// `e^x`, flushed to zero where it would be subnormal: a decay that small contributes nothing
/// to f32 sums, and subnormal operands are slow on many CPUs.
#[inline(always)]
fn decay(x: f32) -> f32 {
    let e = x.exp();
    if e < f32::MIN_POSITIVE {
        0.0
    } else {
        e
    }
}

/// `x · y` in eight lanes.
#[inline(always)]
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (cx, cy) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = cx.remainder().iter().zip(cy.remainder()).map(|(a, b)| a * b).sum();
    for (a, b) in cx.zip(cy) {
        for ((s, a), b) in acc.iter_mut().zip(a).zip(b) {
            *s += a * b;
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl Task<'_> {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_avx2(&self, h: usize, cols: (usize, usize)) {
        self.run(h, cols)
    }

    /// Columns `j0..j0 + w` of v head `h` over all the chunks.
    #[inline(always)]
    fn run(&self, h: usize, (j0, w): (usize, usize)) {
        let l = self.l;
        let (hv, dk, dv) = (l.n_v_heads as usize, l.d_k as usize, l.d_v as usize);
        // Scratch for this call's chunk size (a prompt of a few tokens needs little).
        let rows = self.n_tok.min(CHUNK);
        let mut sc = Scratch {
            qk: vec![0.0; 2 * rows * dk],
            kt: vec![0.0; dk * CHUNK],
            qkt: vec![0.0; rows * CHUNK],
            neg_l: vec![0.0; rows * CHUNK],
            ov: vec![0.0; 2 * rows * w],
        };
        let state_row = |d: usize| {
            // SAFETY: row d's columns j0..j0 + w of head h's state are in bounds (checked) and
            // this task's alone; no other reference to them exists while it runs.
            unsafe { std::slice::from_raw_parts_mut(self.state.at(h * dk * dv + d * dv + j0), w) }
        };
        // The state block: the head's own rows when the task has all its columns, else a copy.
        let mut copy: Vec<f32>;
        let s: &mut [f32] = if w == dv {
            // SAFETY: as `state_row`, for all the head's columns.
            unsafe { std::slice::from_raw_parts_mut(self.state.at(h * dk * dv), dk * dv) }
        } else {
            copy = (0..dk).flat_map(|d| state_row(d).iter().copied()).collect();
            &mut copy
        };
        for t0 in (0..self.n_tok).step_by(CHUNK) {
            let n = CHUNK.min(self.n_tok - t0);
            self.chunk(&mut sc, s, h, t0, n, (j0, w));
            for (i, o) in sc.ov.chunks_exact(w).take(n).enumerate() {
                // SAFETY: as the state: token t0 + i's outputs of head h, columns j0..j0 + w.
                let dst = unsafe { std::slice::from_raw_parts_mut(self.out.at((t0 + i) * hv * dv + h * dv + j0), w) };
                dst.copy_from_slice(o);
            }
        }
        if w != dv {
            (0..dk).for_each(|d| state_row(d).copy_from_slice(&s[d * w..][..w]));
        }
    }

    /// Tokens `t0..t0 + n` of v head `h`, columns `j0..j0 + w`: O into `sc.ov`'s first n rows,
    /// the state block `s` (`[d_k][w]`) advanced.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn chunk(&self, sc: &mut Scratch, s: &mut [f32], h: usize, t0: usize, n: usize, (j0, w): (usize, usize)) {
        let l = self.l;
        let (hv, dk, dv) = (l.n_v_heads as usize, l.d_k as usize, l.d_v as usize);
        let (kh, stride) = (l.k_head(h), l.row_stride as usize);
        // Normalised q and k, Kᵀ, beta, and the cumulative log decay (in f64: differences of
        // sums of up to 64 terms stay exact enough to give every D[i][m] to an ulp or two).
        let (mut c, mut beta) = ([0f64; CHUNK], [0f32; CHUNK]);
        let mut sum = 0f64;
        for i in 0..n {
            let row = &self.qkv[(t0 + i) * stride..];
            let q = &row[l.q_offset as usize + kh * dk..][..dk];
            let k = &row[l.k_offset as usize + kh * dk..][..dk];
            let q_mul = 1.0 / (dot(q, q) + L2_EPS as f32).sqrt() * self.q_scale;
            let k_mul = 1.0 / (dot(k, k) + L2_EPS as f32).sqrt();
            sc.qk[i * dk..][..dk].iter_mut().zip(q).for_each(|(y, &x)| *y = x * q_mul);
            let kn = &mut sc.qk[(n + i) * dk..][..dk];
            kn.iter_mut().zip(k).for_each(|(y, &x)| *y = x * k_mul);
            kn.iter().enumerate().for_each(|(d, &x)| sc.kt[d * CHUNK + i] = x);
            sum += self.g[(t0 + i) * hv + h] as f64;
            (c[i], beta[i]) = (sum, self.beta[(t0 + i) * hv + h]);
        }
        // Q Kᵀ and K Kᵀ, lower triangles (and some entries above, overwritten next).
        for i in 0..n {
            sc.qkt[i * CHUNK..][..n].fill(0.0);
            sc.neg_l[i * CHUNK..][..n].fill(0.0);
        }
        let (q, k) = sc.qk[..2 * n * dk].split_at(n * dk);
        gemm(&mut sc.qkt, CHUNK, q, dk, &sc.kt, CHUNK, (n, dk, n), Tri::Cols);
        gemm(&mut sc.neg_l, CHUNK, k, dk, &sc.kt, CHUNK, (n, dk, n), Tri::Cols);
        for i in 0..n {
            let (qkt, neg_l) = (&mut sc.qkt[i * CHUNK..][..n], &mut sc.neg_l[i * CHUNK..][..n]);
            for m in 0..=i {
                let d = decay((c[i] - c[m]) as f32);
                qkt[m] *= d;
                neg_l[m] *= -beta[i] * d;
            }
            qkt[i + 1..].fill(0.0);
        }
        // Decays into the rows: Q, K times e^c; Kᵀ's columns times e^(c_last - c).
        let last = c[n - 1];
        for (i, &ci) in c[..n].iter().enumerate() {
            let e = decay(ci as f32);
            sc.qk[i * dk..][..dk].iter_mut().for_each(|x| *x *= e);
            sc.qk[(n + i) * dk..][..dk].iter_mut().for_each(|x| *x *= e);
        }
        let to_end: [f32; CHUNK] = std::array::from_fn(|m| if m < n { decay((last - c[m]) as f32) } else { 0.0 });
        for row in sc.kt.chunks_exact_mut(CHUNK) {
            row[..n].iter_mut().zip(&to_end).for_each(|(x, f)| *x *= f);
        }
        // [Q e^c; K e^c] S: the inter-chunk outputs and the state's prediction of V.
        sc.ov[..2 * n * w].fill(0.0);
        gemm(&mut sc.ov, w, &sc.qk, dk, s, w, (2 * n, dk, w), Tri::Full);
        // R = beta (V - (K e^c) S), then V' = T R, i.e. (I + L) V' = R.
        let (o, v_new) = sc.ov.split_at_mut(n * w);
        for (i, r) in v_new.chunks_exact_mut(w).take(n).enumerate() {
            let v = &self.qkv[(t0 + i) * stride + l.v_offset as usize + h * dv + j0..][..w];
            r.iter_mut().zip(v).for_each(|(r, &v)| *r = beta[i] * (v - *r));
        }
        forward_substitute(v_new, &sc.neg_l, n, w);
        // O = (Q e^c) S + lower(Q Kᵀ ⊙ D) V'.
        gemm(o, w, &sc.qkt, CHUNK, v_new, w, (n, n, w), Tri::Depth);
        // S = e^(c_last) S + (K e^(c_last - c))ᵀ V'.
        let last = decay(last as f32);
        s.iter_mut().for_each(|x| *x *= last);
        gemm(s, w, &sc.kt, CHUNK, v_new, w, (dk, n, w), Tri::Full);
    }
}

/// Solves `(I + L) X = R` in place (`x` holds R's n rows of w), `neg_l` holding `-L` (row
/// stride [`CHUNK`]): `X_i = R_i + Σ_{m<i} (-L)[i][m] X_m`, the finished rows of earlier tiles
/// by one [`gemm`], then the tile's own triangle row by row.
#[inline(always)]
fn forward_substitute(x: &mut [f32], neg_l: &[f32], n: usize, w: usize) {
    for r0 in (0..n).step_by(MR) {
        let rows = MR.min(n - r0);
        let (done, tile) = x.split_at_mut(r0 * w);
        gemm(tile, w, &neg_l[r0 * CHUNK..], CHUNK, done, w, (rows, r0, w), Tri::Full);
        for i in 1..rows {
            let (above, row) = tile.split_at_mut(i * w);
            for (m, xm) in above.chunks_exact(w).enumerate() {
                let a = neg_l[(r0 + i) * CHUNK + r0 + m];
                row[..w].iter_mut().zip(xm).for_each(|(y, &x)| *y += a * x);
            }
        }
    }
}

/// Which part of a [`gemm`] is needed, for square n x n triangles: all of it, only the columns
/// up to the diagonal (`C = A B` lower), or only the depth up to it (A lower triangular).
/// Tiles straddling the diagonal compute it whole.
#[derive(Clone, Copy)]
enum Tri {
    Full,
    Cols,
    Depth,
}

/// `C[r][..n] += Σ_{k < depth} A[r][k] B[k][..n]` for rows r < m, row-major with strides
/// `ldc`, `lda`, `ldb`: register tiles of [`MR`] x [`NR`] (and 1-row, 8-column and scalar
/// edges), each C entry summed from its old value in increasing k whatever the tile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemm(c: &mut [f32], ldc: usize, a: &[f32], lda: usize, b: &[f32], ldb: usize, (m, depth, n): (usize, usize, usize), tri: Tri) {
    let mut r0 = 0;
    while r0 < m {
        let rows = if m - r0 >= MR { MR } else { 1 };
        let end = r0 + rows;
        let (cols, depth) = match tri {
            Tri::Full => (n, depth),
            // (Whole tiles: entries past the diagonal are harmless, scalar edges are slow.)
            Tri::Cols => (n.min(end.next_multiple_of(NR)), depth),
            Tri::Depth => (n, depth.min(end)),
        };
        if depth > 0 {
            let (c, a) = (&mut c[r0 * ldc..], &a[r0 * lda..]);
            let mut j = 0;
            while j + NR <= cols {
                match rows {
                    MR => tile::<MR, NR>(c, ldc, a, lda, b, ldb, depth, j),
                    _ => tile::<1, NR>(c, ldc, a, lda, b, ldb, depth, j),
                }
                j += NR;
            }
            if j + 8 <= cols {
                match rows {
                    MR => tile::<MR, 8>(c, ldc, a, lda, b, ldb, depth, j),
                    _ => tile::<1, 8>(c, ldc, a, lda, b, ldb, depth, j),
                }
                j += 8;
            }
            for j in j..cols {
                for r in 0..rows {
                    let mut acc = c[r * ldc + j];
                    (0..depth).for_each(|k| acc += a[r * lda + k] * b[k * ldb + j]);
                    c[r * ldc + j] = acc;
                }
            }
        }
        r0 = end;
    }
}

/// One R x W tile of [`gemm`] at column `j`, its accumulators in registers over the depth.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<const R: usize, const W: usize>(
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    depth: usize,
    j: usize,
) {
    let mut acc = [[0f32; W]; R];
    for r in 0..R {
        acc[r].copy_from_slice(&c[r * ldc + j..][..W]);
    }
    // Fixed-size indexed loops, and the bounds checked once, not per k: so the tile unrolls
    // into vector registers with no branch in its loop (a seventh faster than checked).
    assert!(depth == 0 || (a.len() >= (R - 1) * lda + depth && b.len() >= (depth - 1) * ldb + j + W));
    for k in 0..depth {
        // SAFETY: r < R and k < depth: in bounds as asserted above.
        let (bk, x): (&[f32; W], [f32; R]) =
            unsafe { (&*b.as_ptr().add(k * ldb + j).cast(), std::array::from_fn(|r| *a.get_unchecked(r * lda + k))) };
        for r in 0..R {
            for i in 0..W {
                acc[r][i] += x[r] * bk[i];
            }
        }
    }
    for r in 0..R {
        c[r * ldc + j..][..W].copy_from_slice(&acc[r]);
    }
}
