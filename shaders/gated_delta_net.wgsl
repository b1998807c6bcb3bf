//! Gated delta rule (Yang et al., "Gated Delta Networks", arXiv:2412.06464), the token mixer of
//! Qwen3.5's linear-attention layers, as transformers' `torch_recurrent_gated_delta_rule` with
//! `use_qk_l2norm_in_kernel=True`. Per v head h (k head kh = `k_head(h)`), state S is
//! d_k x d_v, stored [Hv][d_k][d_v] f32; per token t:
//!   q, k <- x * inverseSqrt(sum(x^2) + 1e-6);  q <- q * q_scale (1/sqrt(d_k))
//!   S <- S * exp(g[t][h]);  kv = S^T k;  delta = (v - kv) * beta[t][h]
//!   S <- S + k delta^T;  o[t][h] = S^T q
//!
//! `gdn_recurrent`: one workgroup per (block of COLS state columns, v head); invocation
//! (col, slice) keeps rows slice, slice + SLICES, ... of state column j = block * COLS + col in
//! registers (<= ROWS floats) across the dispatch's `n_tok` tokens from `t0`, reading and
//! writing the state once. `gdn_recurrent_cols` (below) is its form for CPU adapters.
//! The d_k-long reductions S^T k and S^T q are SLICES partial sums per column added through
//! workgroup memory. q and k of the token are staged in workgroup memory (1.5 KiB in all).
//!
//! Inputs are windows of the conv1d output rows: element d of q head kh at token t is
//! `qkv[t * row_stride + q_offset + kh * d_k + d]` (k likewise at k_offset, v head h at
//! v_offset with d_v); g and beta are [n_tok][Hv]; the output is [n_tok][Hv * d_v].

struct Params {
    n_tok: u32,
    n_k_heads: u32,
    n_v_heads: u32,
    d_k: u32,
    d_v: u32,
    row_stride: u32,
    q_offset: u32,
    k_offset: u32,
    v_offset: u32,
    k_head_tiled: u32, // 1: kh = h % Hk (GGUF tiled v heads); 0: kh = h / (Hv / Hk) (HF grouped)
    q_scale: f32,      // 1 / sqrt(d_k), rounded to f32 as torch does
    t0: u32,           // the recurrent kernels: the first of this dispatch's n_tok tokens
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> state: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const MAX_D: u32 = 128u;
const COLS: u32 = 32u;
const SLICES: u32 = 4u;
const ROWS: u32 = 32u; // MAX_D / SLICES
const WG: u32 = 128u;  // COLS * SLICES
const L2_EPS: f32 = 1e-6;

var<workgroup> q_row: array<f32, MAX_D>;
var<workgroup> k_row: array<f32, MAX_D>;
var<workgroup> partial: array<f32, WG>; // [slice][col]

fn k_head(h: u32) -> u32 {
    if (p.k_head_tiled != 0u) { return h % p.n_k_heads; }
    return h / (p.n_v_heads / p.n_k_heads);
}

/// Sum of the SLICES partials of column `col` in `partial`.
fn column_sum(col: u32) -> f32 {
    var s = 0.0;
    for (var r = 0u; r < SLICES; r++) { s += partial[r * COLS + col]; }
    return s;
}

@compute @workgroup_size(WG)
fn gdn_recurrent(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.y;
    let col = lid % COLS;
    let slice = lid / COLS;
    let j = wid.x * COLS + col;
    let live = j < p.d_v;
    let n_rows = (p.d_k + SLICES - 1u - slice) / SLICES; // rows slice + SLICES * m < d_k
    let s_base = h * p.d_k * p.d_v + j;
    let kh = k_head(h);
    // Loops over m run to the constant ROWS (guarded by n_rows) so that compilers can unroll
    // them and keep `s` in registers.
    var s: array<f32, ROWS>;
    for (var m = 0u; m < ROWS; m++) {
        if (m < n_rows && live) { s[m] = state[s_base + (slice + SLICES * m) * p.d_v]; }
    }
    for (var t = p.t0; t < p.t0 + p.n_tok; t++) {
        let row = t * p.row_stride;
        if (lid < p.d_k) {
            q_row[lid] = qkv[row + p.q_offset + kh * p.d_k + lid];
            k_row[lid] = qkv[row + p.k_offset + kh * p.d_k + lid];
        }
        workgroupBarrier();
        // Every invocation forms both norms itself (broadcast reads): no extra barrier.
        var qq = 0.0;
        var kk = 0.0;
        for (var i = 0u; i < p.d_k; i++) {
            qq += q_row[i] * q_row[i];
            kk += k_row[i] * k_row[i];
        }
        let q_mul = inverseSqrt(qq + L2_EPS) * p.q_scale;
        let k_mul = inverseSqrt(kk + L2_EPS);
        let decay = exp(g[t * p.n_v_heads + h]);
        var kv = 0.0;
        for (var m = 0u; m < ROWS; m++) {
            if (m < n_rows) {
                s[m] *= decay;
                kv += s[m] * (k_row[slice + SLICES * m] * k_mul);
            }
        }
        partial[lid] = kv;
        workgroupBarrier();
        var v = 0.0;
        if (live) { v = qkv[row + p.v_offset + h * p.d_v + j]; }
        let delta = (v - column_sum(col)) * beta[t * p.n_v_heads + h];
        var o = 0.0;
        for (var m = 0u; m < ROWS; m++) {
            if (m < n_rows) {
                let i = slice + SLICES * m;
                s[m] += (k_row[i] * k_mul) * delta;
                o += s[m] * (q_row[i] * q_mul);
            }
        }
        workgroupBarrier(); // every column has read its kv partials
        partial[lid] = o;
        workgroupBarrier();
        if (live && slice == 0u) {
            out[t * p.n_v_heads * p.d_v + h * p.d_v + j] = column_sum(col);
        }
        workgroupBarrier(); // before the next token overwrites q_row, k_row, partial
    }
    if (live) {
        for (var m = 0u; m < ROWS; m++) {
            if (m < n_rows) { state[s_base + (slice + SLICES * m) * p.d_v] = s[m]; }
        }
    }
}

// `gdn_recurrent_cols`, the same recurrence on CPU adapters (lavapipe, SwiftShader), which run
// a workgroup's invocations as SIMD lanes and pay each barrier as a switch between groups of
// lanes: one invocation per state column j (COLS_CPU columns per workgroup of one v head),
// the whole column in its own registers (4 rows a vec4; d_k a multiple of 4), no barrier and
// no workgroup memory. The token's q and k are the same for every lane (one load,
// broadcast); each lane forms their norms and its column's S^T k and S^T q itself.

const COLS_CPU: u32 = 16u;
const MAX_D4: u32 = MAX_D / 4u;

/// Rows 4r..4r + 4 of q or k (from element `at`) of the current token.
fn qk4(at: u32, r: u32) -> vec4<f32> {
    let i = at + 4u * r;
    return vec4<f32>(qkv[i], qkv[i + 1u], qkv[i + 2u], qkv[i + 3u]);
}

@compute @workgroup_size(COLS_CPU)
fn gdn_recurrent_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.y;
    let j = wid.x * COLS_CPU + lid;
    if (j >= p.d_v) { return; }
    let rows4 = p.d_k / 4u;
    let dv = p.d_v;
    let s_base = h * p.d_k * dv + j;
    let kh = k_head(h);
    var s: array<vec4<f32>, MAX_D4>;
    for (var r = 0u; r < MAX_D4; r++) {
        if (r < rows4) {
            let a = s_base + 4u * r * dv;
            s[r] = vec4<f32>(state[a], state[a + dv], state[a + 2u * dv], state[a + 3u * dv]);
        }
    }
    for (var t = p.t0; t < p.t0 + p.n_tok; t++) {
        let row = t * p.row_stride;
        let q0 = row + p.q_offset + kh * p.d_k;
        let k0 = row + p.k_offset + kh * p.d_k;
        var qq = vec4<f32>(0.0);
        var kk = vec4<f32>(0.0);
        for (var r = 0u; r < MAX_D4; r++) {
            if (r < rows4) {
                let q = qk4(q0, r);
                let k = qk4(k0, r);
                qq += q * q;
                kk += k * k;
            }
        }
        let q_mul = inverseSqrt(dot(qq, vec4<f32>(1.0)) + L2_EPS) * p.q_scale;
        let k_mul = inverseSqrt(dot(kk, vec4<f32>(1.0)) + L2_EPS);
        let decay = exp(g[t * p.n_v_heads + h]);
        var kv = vec4<f32>(0.0);
        for (var r = 0u; r < MAX_D4; r++) {
            if (r < rows4) {
                s[r] *= decay;
                kv += s[r] * (qk4(k0, r) * k_mul);
            }
        }
        let delta = (qkv[row + p.v_offset + h * dv + j] - dot(kv, vec4<f32>(1.0))) * beta[t * p.n_v_heads + h];
        var o = vec4<f32>(0.0);
        for (var r = 0u; r < MAX_D4; r++) {
            if (r < rows4) {
                s[r] += (qk4(k0, r) * k_mul) * delta;
                o += s[r] * (qk4(q0, r) * q_mul);
            }
        }
        out[t * p.n_v_heads * dv + h * dv + j] = dot(o, vec4<f32>(1.0));
    }
    for (var r = 0u; r < MAX_D4; r++) {
        if (r < rows4) {
            let a = s_base + 4u * r * dv;
            state[a] = s[r].x;
            state[a + dv] = s[r].y;
            state[a + 2u * dv] = s[r].z;
            state[a + 3u * dv] = s[r].w;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Chunked form (prefill), transformers' `torch_chunk_gated_delta_rule` in two dispatches.
//
// `gdn_chunk_prep`, one workgroup per (chunk of CHUNK tokens, v head), all chunks in parallel:
// with c the in-chunk cumulative sum of g, D[i][m] = exp(c_i - c_m) (m <= i), hat k / hat q
// normalised (q scaled), it writes the chunk's block of `scratch` (rows past n_tok are
// padding: zero q, k, v, beta and g):
//   T: with L[i][m] = beta_i (k_i . k_m) D[i][m] (m < i), the strictly lower part of
//       (I + L)^-1, by forward substitution row by row (torch's loop; "UT transform");
//   P[i][m] = (q_i . k_m) D[i][m] (m <= i);   W = T (beta k exp(c));   U = T (beta v);
//   Qe = q exp(c);   Kd = k exp(c_last - c);   c.
// `gdn_chunk_state`, one workgroup per (block of BLOCK_COLS state columns, v head), the
// chunks in order with the state block in workgroup memory:
//   V' = U - W S;   O = Qe S + P V';   S = S exp(c_last) + Kd^T V'.
// ---------------------------------------------------------------------------------------------

const CHUNK: u32 = 64u;
const PREP_WG: u32 = 256u;
const BLOCK_COLS: u32 = 16u;
const STATE_WG: u32 = 256u; // BLOCK_COLS * 16 lanes
const STATE_LANES: u32 = 16u;

// gdn_chunk_prep: qkv, g, beta as above, then the scratch blocks.
@group(0) @binding(4) var<storage, read_write> scratch: array<f32>;
// gdn_chunk_state: the scratch blocks, the state, the output.
@group(0) @binding(1) var<storage, read> blocks: array<f32>;
@group(0) @binding(2) var<storage, read_write> chunk_state: array<f32>;
@group(0) @binding(3) var<storage, read_write> chunk_out: array<f32>;

var<workgroup> inv_q: array<f32, CHUNK>;  // q_scale / |q_i|
var<workgroup> inv_k: array<f32, CHUNK>;  // 1 / |k_i|
var<workgroup> beta_c: array<f32, CHUNK>;
var<workgroup> cum_g: array<f32, CHUNK>;
var<workgroup> t_row: array<f32, CHUNK>;  // row i of L during the substitution
var<workgroup> s_block: array<f32, MAX_D * BLOCK_COLS>; // [d_k][BLOCK_COLS], 8 KiB
var<workgroup> v_new: array<f32, CHUNK * BLOCK_COLS>;   // [CHUNK][BLOCK_COLS], 4 KiB

/// Offsets of one (v head, chunk) block of the scratch buffer, in floats.
struct Block {
    a: u32,  // -L, then T (strictly lower) [CHUNK][CHUNK]
    p: u32,  // P [CHUNK][CHUNK]
    w: u32,  // W [CHUNK][d_k]
    qe: u32, // Qe [CHUNK][d_k]
    kd: u32, // Kd [CHUNK][d_k]
    u: u32,  // U [CHUNK][d_v]
    c: u32,  // c [CHUNK]
}

fn block(h: u32, ch: u32) -> Block {
    let n_chunks = (p.n_tok + CHUNK - 1u) / CHUNK;
    let size = 2u * CHUNK * CHUNK + CHUNK * (3u * p.d_k + p.d_v + 1u);
    let a = (h * n_chunks + ch) * size;
    let w = a + 2u * CHUNK * CHUNK;
    return Block(a, a + CHUNK * CHUNK, w, w + CHUNK * p.d_k, w + 2u * CHUNK * p.d_k, w + 3u * CHUNK * p.d_k,
                 w + 3u * CHUNK * p.d_k + CHUNK * p.d_v);
}

/// Raw q / k element d of token t (k head kh).
fn q_at(t: u32, kh: u32, d: u32) -> f32 { return qkv[t * p.row_stride + p.q_offset + kh * p.d_k + d]; }
fn k_at(t: u32, kh: u32, d: u32) -> f32 { return qkv[t * p.row_stride + p.k_offset + kh * p.d_k + d]; }

@compute @workgroup_size(PREP_WG)
fn gdn_chunk_prep(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let ch = wid.x;
    let h = wid.y;
    let kh = k_head(h);
    let t0 = ch * CHUNK;
    let n = min(CHUNK, p.n_tok - t0);
    let b = block(h, ch);
    if (lid < CHUNK) {
        var qq = 0.0;
        var kk = 0.0;
        var gi = 0.0;
        var bi = 0.0;
        if (lid < n) {
            for (var d = 0u; d < p.d_k; d++) {
                let q = q_at(t0 + lid, kh, d);
                let k = k_at(t0 + lid, kh, d);
                qq += q * q;
                kk += k * k;
            }
            gi = g[(t0 + lid) * p.n_v_heads + h];
            bi = beta[(t0 + lid) * p.n_v_heads + h];
        }
        inv_q[lid] = select(0.0, inverseSqrt(qq + L2_EPS) * p.q_scale, lid < n);
        inv_k[lid] = select(0.0, inverseSqrt(kk + L2_EPS), lid < n);
        beta_c[lid] = bi;
        cum_g[lid] = gi;
    }
    workgroupBarrier();
    if (lid == 0u) {
        for (var i = 1u; i < CHUNK; i++) { cum_g[i] += cum_g[i - 1u]; }
    }
    workgroupBarrier();
    if (lid < CHUNK) { scratch[b.c + lid] = cum_g[lid]; }
    // -L and P. Padding rows and columns are zero through inv_q / inv_k.
    for (var e = lid; e < CHUNK * CHUNK; e += PREP_WG) {
        let i = e / CHUNK;
        let m = e % CHUNK;
        var qk = 0.0;
        var kk = 0.0;
        if (m <= i && i < n) {
            for (var d = 0u; d < p.d_k; d++) {
                let km = k_at(t0 + m, kh, d);
                qk += q_at(t0 + i, kh, d) * km;
                kk += k_at(t0 + i, kh, d) * km;
            }
        }
        let decay = select(0.0, exp(cum_g[i] - cum_g[m]), m <= i);
        scratch[b.p + e] = qk * inv_q[i] * inv_k[m] * decay;
        scratch[b.a + e] = select(0.0, -beta_c[i] * kk * inv_k[i] * inv_k[m] * decay, m < i);
    }
    storageBarrier();
    // Forward substitution, row by row: T[i][m] = -L[i][m] + sum_{m < r < i} -L[i][r] T[r][m].
    for (var i = 1u; i < CHUNK; i++) {
        if (lid < i) { t_row[lid] = scratch[b.a + i * CHUNK + lid]; }
        workgroupBarrier();
        if (lid < i) {
            var acc = t_row[lid];
            for (var r = lid + 1u; r < i; r++) { acc += t_row[r] * scratch[b.a + r * CHUNK + lid]; }
            scratch[b.a + i * CHUNK + lid] = acc;
        }
        storageBarrier();
        workgroupBarrier();
    }
    let last = cum_g[CHUNK - 1u];
    // W = (I + T) (beta k exp(c)), Qe, Kd.
    for (var e = lid; e < CHUNK * p.d_k; e += PREP_WG) {
        let i = e / p.d_k;
        let d = e % p.d_k;
        var w = 0.0;
        var qe = 0.0;
        var kd = 0.0;
        if (i < n) {
            for (var m = 0u; m <= i; m++) {
                let t_im = select(scratch[b.a + i * CHUNK + m], 1.0, m == i);
                w += t_im * (beta_c[m] * exp(cum_g[m]) * k_at(t0 + m, kh, d) * inv_k[m]);
            }
            qe = q_at(t0 + i, kh, d) * inv_q[i] * exp(cum_g[i]);
            kd = k_at(t0 + i, kh, d) * inv_k[i] * exp(last - cum_g[i]);
        }
        scratch[b.w + e] = w;
        scratch[b.qe + e] = qe;
        scratch[b.kd + e] = kd;
    }
    // U = (I + T) (beta v).
    for (var e = lid; e < CHUNK * p.d_v; e += PREP_WG) {
        let i = e / p.d_v;
        let j = e % p.d_v;
        var u = 0.0;
        if (i < n) {
            for (var m = 0u; m <= i; m++) {
                let t_im = select(scratch[b.a + i * CHUNK + m], 1.0, m == i);
                u += t_im * (beta_c[m] * qkv[(t0 + m) * p.row_stride + p.v_offset + h * p.d_v + j]);
            }
        }
        scratch[b.u + e] = u;
    }
}

@compute @workgroup_size(STATE_WG)
fn gdn_chunk_state(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.y;
    let col = lid % BLOCK_COLS;
    let lane = lid / BLOCK_COLS;
    let j = wid.x * BLOCK_COLS + col;
    let live = j < p.d_v;
    let s_base = h * p.d_k * p.d_v + j;
    for (var d = lane; d < p.d_k; d += STATE_LANES) {
        s_block[d * BLOCK_COLS + col] = select(0.0, chunk_state[s_base + d * p.d_v], live);
    }
    workgroupBarrier();
    let n_chunks = (p.n_tok + CHUNK - 1u) / CHUNK;
    for (var ch = 0u; ch < n_chunks; ch++) {
        let b = block(h, ch);
        // V' = U - W S, rows lane, lane + 16, ...
        for (var i = lane; i < CHUNK; i += STATE_LANES) {
            var acc = 0.0;
            if (live) {
                acc = blocks[b.u + i * p.d_v + j];
                for (var d = 0u; d < p.d_k; d++) { acc -= blocks[b.w + i * p.d_k + d] * s_block[d * BLOCK_COLS + col]; }
            }
            v_new[i * BLOCK_COLS + col] = acc;
        }
        workgroupBarrier();
        // O = Qe S + P V' (lower triangle of P only).
        for (var i = lane; i < CHUNK; i += STATE_LANES) {
            let t = ch * CHUNK + i;
            if (live && t < p.n_tok) {
                var o = 0.0;
                for (var d = 0u; d < p.d_k; d++) { o += blocks[b.qe + i * p.d_k + d] * s_block[d * BLOCK_COLS + col]; }
                for (var m = 0u; m <= i; m++) { o += blocks[b.p + i * CHUNK + m] * v_new[m * BLOCK_COLS + col]; }
                chunk_out[t * p.n_v_heads * p.d_v + h * p.d_v + j] = o;
            }
        }
        workgroupBarrier();
        // S = S exp(c_last) + Kd^T V'.
        let decay = exp(blocks[b.c + CHUNK - 1u]);
        for (var d = lane; d < p.d_k; d += STATE_LANES) {
            var s = s_block[d * BLOCK_COLS + col] * decay;
            for (var m = 0u; m < CHUNK; m++) { s += blocks[b.kd + m * p.d_k + d] * v_new[m * BLOCK_COLS + col]; }
            s_block[d * BLOCK_COLS + col] = s;
        }
        workgroupBarrier();
    }
    if (live) {
        for (var d = lane; d < p.d_k; d += STATE_LANES) { chunk_state[s_base + d * p.d_v] = s_block[d * BLOCK_COLS + col]; }
    }
}
