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
//! registers (<= ROWS floats) across all `n_tok` tokens, reading and writing the state once.
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
    _pad: u32,
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
    var s: array<f32, ROWS>;
    for (var m = 0u; m < n_rows; m++) {
        s[m] = select(0.0, state[s_base + (slice + SLICES * m) * p.d_v], live);
    }
    for (var t = 0u; t < p.n_tok; t++) {
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
        for (var m = 0u; m < n_rows; m++) {
            s[m] *= decay;
            kv += s[m] * (k_row[slice + SLICES * m] * k_mul);
        }
        partial[lid] = kv;
        workgroupBarrier();
        var v = 0.0;
        if (live) { v = qkv[row + p.v_offset + h * p.d_v + j]; }
        let delta = (v - column_sum(col)) * beta[t * p.n_v_heads + h];
        var o = 0.0;
        for (var m = 0u; m < n_rows; m++) {
            let i = slice + SLICES * m;
            s[m] += (k_row[i] * k_mul) * delta;
            o += s[m] * (q_row[i] * q_mul);
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
        for (var m = 0u; m < n_rows; m++) {
            state[s_base + (slice + SLICES * m) * p.d_v] = s[m];
        }
    }
}
