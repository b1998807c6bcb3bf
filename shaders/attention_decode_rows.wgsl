//! Split-K decode attention for CPU adapters (lavapipe, SwiftShader): one invocation per query
//! row, the online softmax of FlashAttention (Dao et al. 2022) in its registers, in blocks of
//! BKR keys, then the merge of its splits (`attn_combine`). Entries, bindings, split plan and
//! the partials' layout are those of the GPU shape, `attention_decode.wgsl`.
//!
//! A CPU adapter runs a workgroup's invocations as the lanes of a SIMD loop and every
//! `workgroupBarrier` as a switch between its groups of lanes, so the GPU shape (a tile of
//! keys shared by 128 invocations, six barriers per tile) spends most of a short context's step
//! on its phases' bookkeeping. Here a lane owns a row (token, query head): it dots q with each
//! key of its split, rescales its output once per block and folds V in, with no barrier and no
//! workgroup memory. Lanes of one KV group read the same K and V rows (the cache reads are
//! per lane anyway on these adapters).
//!
//! Workgroup (split s, chunk of WG rows); row = token * n_head + head, the layout of the
//! partials. A row takes its step from `seq_of(token)` (one sequence's uniform, or a batched
//! step's entry per token), its keys from `split_plan` and its causal limit kv_start + its
//! token + 1. It writes (m, l) and the unnormalised o of (row, split); a split without keys
//! writes l = 0. `attn_combine` merges a row's splits in one invocation too:
//!   out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.

// `struct Step` and `SeqStep` (step.wgsl), `seq_of` (a step prelude), `struct Params`, `NEG`
// and `split_plan` (attention_common.wgsl), `HD4` (the width prelude) and the cache reader are
// prepended by the Rust side (`src/backend/gpu/attention.rs`).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> steps: array<Step>;
@group(0) @binding(2) var<storage, read_write> part_ml: array<vec2<f32>>;  // [row][split] (m, l)
@group(0) @binding(3) var<storage, read_write> part_o: array<vec4<f32>>;   // [row][split][hd4]
@group(0) @binding(4) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> v_cache: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> k_cache_h: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read> v_cache_h: array<vec2<u32>>;
// attn_combine only:
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;

const WG: u32 = 16u;   // rows per workgroup (`DECODE_CPU_WG` in attention.rs)
const BKR: u32 = 8u;   // keys per block of the online softmax (one rescale of o each)

@compute @workgroup_size(WG)
fn attn_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let split = wid.x;
    let row = wid.y * WG + lid;
    let tok = row / p.n_head;
    if (tok >= p.max_tok) { return; }
    let head = row % p.n_head;
    let g = head / (p.n_head / p.n_kv_head);
    let seq = seq_of(tok);
    let n_tok = min(seq.step.n_tok, p.max_tok);
    if (tok - seq.tok0 >= n_tok) { return; }
    let kv_start = seq.step.kv_start;
    let kv_len = kv_start + n_tok;
    let plan = split_plan(kv_len);
    if (split >= plan.y) { return; }
    let k0 = split * plan.x;
    var k1 = min(k0 + plan.x, kv_len);
    if (p.causal != 0u) { k1 = min(k1, kv_start + tok - seq.tok0 + 1u); }
    let hd4 = p.head_dim / 4u;

    var qr: array<vec4<f32>, HD4>;
    var o: array<vec4<f32>, HD4>;
    let q0 = (tok * p.q_stride + p.q_offset + head * p.head_dim) / 4u;
    for (var c = 0u; c < hd4; c++) {
        qr[c] = q[q0 + c] * p.scale;
        o[c] = vec4<f32>(0.0);
    }
    var m = NEG;
    var l = 0.0;
    let row_stride = p.kv_stride / 4u;
    for (var kb = k0; kb < k1; kb += BKR) {
        let nk = min(BKR, k1 - kb);
        let base = ((seq.step.kv_base + kb) * p.kv_stride + g * p.head_dim) / 4u;
        var s: array<f32, BKR>;
        var mt = m;
        for (var j = 0u; j < nk; j++) {
            var acc = vec4<f32>(0.0);
            for (var c = 0u; c < hd4; c++) { acc += qr[c] * kv_k(base + j * row_stride + c); }
            s[j] = dot(acc, vec4<f32>(1.0));
            mt = max(mt, s[j]);
        }
        // Rescale the block's old state once, then fold each key in at the new max.
        let a = exp(m - mt);
        l *= a;
        for (var c = 0u; c < hd4; c++) { o[c] *= a; }
        for (var j = 0u; j < nk; j++) {
            let pk = exp(s[j] - mt);
            l += pk;
            for (var c = 0u; c < hd4; c++) { o[c] += pk * kv_v(base + j * row_stride + c); }
        }
        m = mt;
    }

    let idx = row * p.n_split + split;
    for (var c = 0u; c < hd4; c++) { part_o[idx * hd4 + c] = o[c]; }
    part_ml[idx] = vec2<f32>(m, l);
}

@compute @workgroup_size(WG)
fn attn_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x * WG + lid;
    let tok = row / p.n_head;
    if (tok >= p.max_tok) { return; }
    let seq = seq_of(tok);
    let n_tok = min(seq.step.n_tok, p.max_tok);
    if (tok - seq.tok0 >= n_tok) { return; }
    let n_split = split_plan(seq.step.kv_start + n_tok).y;
    let hd4 = p.head_dim / 4u;
    let base = row * p.n_split;
    var mx = NEG;
    for (var s = 0u; s < n_split; s++) {
        let ml = part_ml[base + s];
        if (ml.y > 0.0) { mx = max(mx, ml.x); }
    }
    var acc: array<vec4<f32>, HD4>;
    for (var c = 0u; c < hd4; c++) { acc[c] = vec4<f32>(0.0); }
    var den = 0.0;
    for (var s = 0u; s < n_split; s++) {
        let ml = part_ml[base + s];
        if (ml.y > 0.0) {
            let w = exp(ml.x - mx);
            den += w * ml.y;
            for (var c = 0u; c < hd4; c++) { acc[c] += w * part_o[(base + s) * hd4 + c]; }
        }
    }
    let inv = 1.0 / den;
    for (var c = 0u; c < hd4; c++) { out[row * hd4 + c] = acc[c] * inv; }
}
