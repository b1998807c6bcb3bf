//! Causal grouped-query attention for a chunk of new tokens against the KV cache (which
//! already holds them): out = softmax(q k^T * scale) v, FlashAttention-style (Dao et al. 2022,
//! arXiv:2205.14135): the keys are walked in tiles with an online softmax (running max and
//! sum per query row, Milakov & Gimelshein 2018), so scores are never materialised.
//!
//! A workgroup owns one KV head and a tile of BQ query rows, a row being a (token, query head
//! of the group) pair: GQA heads that share a KV head share its K/V tiles. Q (pre-scaled), the
//! current K or V tile, the tile's scores and probabilities live in workgroup memory: 13 KiB
//! with the 128-wide prelude (HD4 = 32, head_dim <= 128, a multiple of 4), the only one this
//! kernel is built with: at 256 its q tile alone would fill 16 KiB, so wider heads run in
//! `attention_prefill_gpu.wgsl` with 8-key tiles. 128 invocations = BQ rows x BK keys:
//! invocation (row, j) computes one score and its exp, then accumulates the dims j, j + BK,
//! ... (vec4 units) of its row's output. Key visibility: causal rows see cache rows
//! 0..=kv_start + t; non-causal rows see 0..kv_start + n_tok; rows t >= valid_rows (Mllama's
//! vision padding tokens) see only keys 0..valid_rows.
//!
//! The cache is read through `kv_k` / `kv_v`, prepended by `src/backend/gpu/attention.rs` for the
//! cache type (f32, or f16 packed two per word and widened on load); the math is f32.

// `struct Step` (step.wgsl), `struct Params` and `NEG` (attention_common.wgsl), `HD4` (the
// width prelude) and the cache reader are prepended by the Rust side.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>;
// The same bindings for an f16 cache: 4 halves per vec2<u32> (only the reader's view is used).
@group(0) @binding(3) var<storage, read> k_cache_h: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> v_cache_h: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;

const BQ: u32 = 16u;
const BK: u32 = 8u;
const WG: u32 = 128u;    // BQ * BK
const OPT: u32 = HD4 / BK;  // output vec4s per invocation
const MASKED: f32 = -3.0e38;  // score of an invisible key: exp(MASKED - m) == 0

var<workgroup> qs: array<vec4<f32>, BQ * HD4>;
var<workgroup> kv: array<vec4<f32>, BK * HD4>;  // K then V of the current tile
var<workgroup> sc: array<f32, 128>;        // BQ * BK scores
var<workgroup> pr: array<f32, 128>;        // BQ * BK probabilities

fn load_tile(kb: u32, nk: u32, g: u32, hd4: u32, lid: u32, is_v: bool) {
    for (var i = lid; i < BK * hd4; i += WG) {
        let r = i / hd4;
        let c = i % hd4;
        var val = vec4<f32>(0.0);
        if (r < nk) {
            let idx = ((step.kv_base + kb + r) * p.kv_stride + g * p.head_dim) / 4u + c;
            if (is_v) { val = kv_v(idx); } else { val = kv_k(idx); }
        }
        kv[r * HD4 + c] = val;
    }
}

@compute @workgroup_size(WG)
fn attn_prefill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wid.y;
    let group = p.n_head / p.n_kv_head;
    let n_tok = min(step.n_tok, p.max_tok);
    let kv_start = step.kv_start;
    let n_rows = n_tok * group;
    let row0 = wid.x * BQ;
    if (row0 >= n_rows) { return; }
    let hd4 = p.head_dim / 4u;

    for (var i = lid; i < BQ * hd4; i += WG) {
        let r = i / hd4;
        let gr = row0 + r;
        var val = vec4<f32>(0.0);
        if (gr < n_rows) {
            let h = g * group + gr % group;
            val = q[((gr / group) * p.q_stride + p.q_offset + h * p.head_dim) / 4u + i % hd4] * p.scale;
        }
        qs[r * HD4 + i % hd4] = val;
    }

    let qi = lid / BK;
    let j = lid % BK;
    let gr = row0 + qi;
    let row_ok = gr < n_rows;
    let t = gr / group;
    // Keys this workgroup needs: up to the last row's limit (uniform across the workgroup).
    var kv_end = kv_start + n_tok;
    var my_end = kv_end;
    if (p.causal != 0u) {
        kv_end = kv_start + (min(row0 + BQ, n_rows) - 1u) / group + 1u;
        my_end = kv_start + t + 1u;
    }
    if (t >= p.valid_rows) { my_end = min(my_end, p.valid_rows); }

    var m = NEG;
    var l = 0.0;
    var o: array<vec4<f32>, OPT>;
    for (var u = 0u; u < OPT; u++) { o[u] = vec4<f32>(0.0); }

    for (var kb = 0u; kb < kv_end; kb += BK) {
        let nk = min(BK, kv_end - kb);
        load_tile(kb, nk, g, hd4, lid, false);
        workgroupBarrier();
        var s = MASKED;
        if (row_ok && kb + j < my_end) {
            var acc = vec4<f32>(0.0);
            for (var c = 0u; c < hd4; c++) { acc += qs[qi * HD4 + c] * kv[j * HD4 + c]; }
            s = acc.x + acc.y + acc.z + acc.w;
        }
        sc[qi * BK + j] = s;
        workgroupBarrier();
        // Row max (8 reads, same result in the row's 8 invocations), own probability,
        // V tile over the K tile (no longer read).
        var mt = m;
        for (var k = 0u; k < BK; k++) { mt = max(mt, sc[qi * BK + k]); }
        pr[qi * BK + j] = exp(s - mt);
        load_tile(kb, nk, g, hd4, lid, true);
        workgroupBarrier();
        let alpha = exp(m - mt);
        l *= alpha;
        for (var u = 0u; u < OPT; u++) { o[u] *= alpha; }
        for (var k = 0u; k < nk; k++) {
            let pk = pr[qi * BK + k];
            l += pk;
            for (var u = 0u; u < OPT; u++) {
                let c = j + u * BK;
                if (c < hd4) { o[u] += pk * kv[k * HD4 + c]; }
            }
        }
        m = mt;
        workgroupBarrier();
    }

    if (!row_ok) { return; }
    let h = g * group + gr % group;
    let inv_l = 1.0 / l;
    for (var u = 0u; u < OPT; u++) {
        let c = j + u * BK;
        if (c < hd4) { out[(t * p.n_head + h) * hd4 + c] = o[u] * inv_l; }
    }
}
