//! Non-causal grouped-query attention of text tokens over a fixed key set (Mllama's
//! cross-attention to projected image states), keys masked per token by tile: token t sees
//! key j iff `mask[t * n_tiles + j / tile_keys] != 0`. A token that sees no key gets 0.
//! Reference: transformers' `MllamaTextCrossAttention` (SDPA with an additive mask).
//! One workgroup per (token, head); keys in chunks of WG with an online softmax
//! (Milakov & Gimelshein 2018); thread i keeps output dims i, i + WG, ... (head_dim <= 256).

struct Params {
    n_tok: u32,
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    q_stride: u32,
    n_keys: u32,
    n_tiles: u32,
    tile_keys: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
const DIMS: u32 = 4u; // 256 / WG
const MASKED: f32 = -3.0e38;
var<workgroup> probs: array<f32, WG>;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn cross_attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg);
    if (row >= p.n_tok * p.n_head) { return; }
    let t = row / p.n_head;
    let h = row % p.n_head;
    let kv_stride = p.n_kv_head * p.head_dim;
    let kb = (h / (p.n_head / p.n_kv_head)) * p.head_dim;
    let qb = t * p.q_stride + h * p.head_dim;
    var m = MASKED;
    var l = 0.0;
    var acc: array<f32, DIMS>;
    for (var j0 = 0u; j0 < p.n_keys; j0 += WG) {
        let j = j0 + lid;
        var sc = MASKED;
        if (j < p.n_keys && mask[t * p.n_tiles + j / p.tile_keys] != 0u) {
            var dot = 0.0;
            for (var d = 0u; d < p.head_dim; d++) {
                dot += q[qb + d] * k[j * kv_stride + kb + d];
            }
            sc = dot * p.scale;
        }
        red[lid] = sc;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
            workgroupBarrier();
        }
        let m_new = max(m, red[0]);
        probs[lid] = select(0.0, exp(sc - m_new), sc > MASKED);
        workgroupBarrier();
        // Nothing visible yet: m = m_new = MASKED, alpha 1 on zero sums.
        let alpha = exp(m - m_new);
        let n = min(WG, p.n_keys - j0);
        var sum = 0.0;
        for (var i = 0u; i < n; i++) { sum += probs[i]; }
        l = l * alpha + sum;
        for (var c = 0u; c < DIMS; c++) {
            let d = lid + c * WG;
            if (d < p.head_dim) {
                var a = acc[c] * alpha;
                for (var i = 0u; i < n; i++) {
                    a += probs[i] * v[(j0 + i) * kv_stride + kb + d];
                }
                acc[c] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var c = 0u; c < DIMS; c++) {
        let d = lid + c * WG;
        if (d < p.head_dim) {
            out[(t * p.n_head + h) * p.head_dim + d] = acc[c] * inv;
        }
    }
}
