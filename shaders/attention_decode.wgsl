//! Split-K grouped-query attention for a few new tokens over a long KV cache ("flash-decoding",
//! Dao et al. 2023; the partial-softmax merge of Milakov & Gimelshein 2018).
//!
//! `attn_decode`: workgroup (split s, KV head g, row chunk z). A row is a (token, query head of
//! the group) pair; a chunk holds up to R_MAX rows. The cache rows 0..kv_len (kv_len =
//! kv_start + n_tok, read from the step uniform) are cut into n_split chunks of
//! ceil(kv_len / n_split) keys rounded up to BK; split s walks its chunk in tiles of BK keys:
//!   1. scores of the tile for every row into workgroup memory: invocation (key, half of
//!      head_dim) reads its K slice once from global and dots it with every row's q;
//!   2. the new running max of each row; 3. one exp per (row, key);
//!   4. each invocation owns (row, vec4 of head_dim) pairs and folds the tile into its running
//!      sum l and unnormalised output o (V read straight from global, coalesced).
//! It writes (m, l) and o per (row, split); splits past kv_len write l = 0 and are skipped.
//! The grid (n_split x n_kv_head x row chunks) depends only on record-time sizes, so one
//! recorded program serves every kv_len up to max_ctx.
//! `attn_combine`: one workgroup per (token, head) merges the splits:
//!   out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
//! Workgroup memory: 8 KiB; head_dim <= 128 and a multiple of 4.
//! The cache is read through `kv_k` / `kv_v`, prepended by `src/kernels/attention.rs` for the
//! cache type (f32, or f16 packed two per word and widened on load); the math is f32.

// `struct Step` (step.wgsl), and `struct Params`, `HD4` and `NEG` (attention_common.wgsl)
// are prepended by the Rust side.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> part_ml: array<vec2<f32>>;  // [row][split] (m, l)
@group(0) @binding(3) var<storage, read_write> part_o: array<vec4<f32>>;   // [row][split][hd4]
// attn_decode only:
@group(0) @binding(4) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> v_cache: array<vec4<f32>>;
// The same bindings for an f16 cache: 4 halves per vec2<u32> (only the reader's view is used).
@group(0) @binding(5) var<storage, read> k_cache_h: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read> v_cache_h: array<vec2<u32>>;
// attn_combine only (naga checks binding collisions per entry point):
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;

const R_MAX: u32 = 8u;
const BK: u32 = 64u;
const WG: u32 = 128u;         // BK keys x 2 halves of head_dim in phase 1
const PAIRS: u32 = 2u;        // R_MAX * HD4 / WG
const MASKED: f32 = -1.0e38;

var<workgroup> qs: array<vec4<f32>, 256>;  // R_MAX * HD4, pre-scaled q rows
var<workgroup> sc: array<f32, 1024>;       // [2 halves][R_MAX][BK] partial scores; then [R_MAX][BK] probabilities
var<workgroup> rm: array<f32, 8>;          // running max per row
var<workgroup> ra: array<f32, 8>;          // rescale of the row's old state for this tile

@compute @workgroup_size(WG)
fn attn_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let split = wid.x;
    let g = wid.y;
    let group = p.n_head / p.n_kv_head;
    let n_tok = min(step.n_tok, p.max_tok);
    let kv_start = step.kv_start;
    let kv_len = kv_start + n_tok;
    let n_rows = n_tok * group;
    let row0 = wid.z * R_MAX;
    if (row0 >= n_rows) { return; }
    let nr = min(R_MAX, n_rows - row0);
    let hd4 = p.head_dim / 4u;

    for (var i = lid; i < R_MAX * hd4; i += WG) {
        let r = i / hd4;
        var val = vec4<f32>(0.0);
        if (r < nr) {
            let gr = row0 + r;
            let h = g * group + gr % group;
            val = q[((gr / group) * p.q_stride + p.q_offset + h * p.head_dim) / 4u + i % hd4] * p.scale;
        }
        qs[r * HD4 + i % hd4] = val;
    }
    if (lid < R_MAX) {
        rm[lid] = NEG;
        ra[lid] = 1.0;
    }

    let per = ((kv_len + p.n_split - 1u) / p.n_split + BK - 1u) / BK * BK;
    let k0 = split * per;
    var k1 = min(k0 + per, kv_len);
    if (p.causal != 0u) { k1 = min(k1, kv_start + (row0 + nr - 1u) / group + 1u); }

    var l: array<f32, PAIRS>;
    var o: array<vec4<f32>, PAIRS>;
    for (var u = 0u; u < PAIRS; u++) {
        l[u] = 0.0;
        o[u] = vec4<f32>(0.0);
    }
    // Phase-1 role: key j of the tile, half `hh` of head_dim, all rows of the chunk.
    let j = lid % BK;
    let hh = lid / BK;
    let c0 = hh * (hd4 / 2u);
    let c1 = select(hd4 / 2u, hd4, hh == 1u);
    workgroupBarrier();

    for (var kb = k0; kb < k1; kb += BK) {
        let nk = min(BK, k1 - kb);
        let key = kb + j;
        // 1. Partial scores q_r . k_key over this half of head_dim (each K element read once).
        var acc: array<vec4<f32>, R_MAX>;
        for (var r = 0u; r < R_MAX; r++) { acc[r] = vec4<f32>(0.0); }
        if (j < nk) {
            let kbase = (key * p.kv_stride + g * p.head_dim) / 4u;
            for (var c = c0; c < c1; c++) {
                let kc = kv_k(kbase + c);
                for (var r = 0u; r < R_MAX; r++) { acc[r] += qs[r * HD4 + c] * kc; }
            }
        }
        for (var r = 0u; r < R_MAX; r++) {
            var lim = kv_len;
            if (p.causal != 0u) { lim = kv_start + (row0 + r) / group + 1u; }
            var s = dot(acc[r], vec4<f32>(1.0));
            if (j >= nk || key >= lim) { s = select(0.0, MASKED, hh == 0u); }
            sc[(hh * R_MAX + r) * BK + j] = s;
        }
        workgroupBarrier();
        // 2. New running max per row and the rescale of the old state.
        if (lid < nr) {
            var mt = rm[lid];
            for (var k = 0u; k < nk; k++) { mt = max(mt, sc[lid * BK + k] + sc[(R_MAX + lid) * BK + k]); }
            ra[lid] = exp(rm[lid] - mt);
            rm[lid] = mt;
        }
        workgroupBarrier();
        // 3. Probabilities, one exp per (row, key).
        for (var i = lid; i < nr * BK; i += WG) { sc[i] = exp(sc[i] + sc[R_MAX * BK + i] - rm[i / BK]); }
        workgroupBarrier();
        // 4. Fold the tile into the owned (row, vec4) outputs; V rows read coalesced.
        for (var u = 0u; u < PAIRS; u++) {
            let pi = lid + u * WG;
            let r = pi / hd4;
            let c = pi % hd4;
            if (r < nr) {
                let alpha = ra[r];
                var acc_o = o[u] * alpha;
                var sum = l[u] * alpha;
                let vbase = (kb * p.kv_stride + g * p.head_dim) / 4u + c;
                let vstep = p.kv_stride / 4u;
                for (var k = 0u; k < nk; k++) {
                    let pk = sc[r * BK + k];
                    sum += pk;
                    acc_o += pk * kv_v(vbase + k * vstep);
                }
                l[u] = sum;
                o[u] = acc_o;
            }
        }
        workgroupBarrier();
    }

    for (var u = 0u; u < PAIRS; u++) {
        let pi = lid + u * WG;
        let r = pi / hd4;
        let c = pi % hd4;
        if (r < nr) {
            let gr = row0 + r;
            let row = (gr / group) * p.n_head + g * group + gr % group;
            let idx = row * p.n_split + split;
            part_o[idx * hd4 + c] = o[u];
            if (c == 0u) { part_ml[idx] = vec2<f32>(rm[r], l[u]); }
        }
    }
}

@compute @workgroup_size(64)
fn attn_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg);  // token * n_head + head
    if (row >= min(step.n_tok, p.max_tok) * p.n_head) { return; }
    let hd4 = p.head_dim / 4u;
    let base = row * p.n_split;
    var mx = NEG;
    for (var s = 0u; s < p.n_split; s++) {
        let ml = part_ml[base + s];
        if (ml.y > 0.0) { mx = max(mx, ml.x); }
    }
    var den = 0.0;
    for (var s = 0u; s < p.n_split; s++) {
        let ml = part_ml[base + s];
        if (ml.y > 0.0) { den += exp(ml.x - mx) * ml.y; }
    }
    let inv = 1.0 / den;
    for (var c = lid; c < hd4; c += 64u) {
        var acc = vec4<f32>(0.0);
        for (var s = 0u; s < p.n_split; s++) {
            let ml = part_ml[base + s];
            if (ml.y > 0.0) { acc += exp(ml.x - mx) * part_o[(base + s) * hd4 + c]; }
        }
        out[row * hd4 + c] = acc * inv;
    }
}
