//! Prefill / vision attention, GPU launch shape: the same math as `attention_prefill.wgsl`
//! (FlashAttention, Dao et al. 2022, arXiv:2205.14135; online softmax, Milakov & Gimelshein
//! 2018), shaped for GPUs with many compute units instead of CPU drivers.
//!
//! A workgroup owns one KV head and BQ = 32 query rows (a row is a (token, query head of the
//! group) pair); 128 invocations = 32 rows x LANES = 4 lanes. Lane `i` of a row keeps the
//! row's q (pre-scaled) and its unnormalised output for the head_dim vec4s i, i + 4, ... in
//! registers (HPL <= MAX_HPL = HD4 / 4 vec4s each: 8 with the 128-wide prelude, 16 with the
//! 256-wide one), so workgroup memory only holds K and V. Rows past the chunk are padding:
//! they run every barrier and reduction with q = 0 and are not written.
//!
//! Keys come in tiles of BK, set by `src/backend/gpu/attention.rs` so that a tile fills at most
//! one of the two tile buffers of TILE vec4s (the tile prelude: TILE = 1024, 16 KiB, where the
//! adapter grants 32 KiB of workgroup memory in the GPU geometry; TILE = 512, 8 KiB, for
//! head_dim > 128 elsewhere, keeping WebGPU's default 16 KiB). BK = 64 at head_dim <= 64, 32
//! at <= 128, 16 at <= 256 in 32 KiB; 8 at <= 256 in 16 KiB. The K and V tiles of step t live
//! in the two buffers and the next one is prefetched into registers (SPT <= TILE / WG vec4s
//! per invocation) while the current one is used: V_t's loads are in flight during the
//! scores against K_t, K_{t+1}'s during the P V_t product. Per tile:
//!   1. scores: for each group of 4 keys, each lane dots its q slice with the 4 keys, and the
//!      4 lanes of the row add their vec4 of partials (`row_sum`: two subgroup shuffles where
//!      the native adapter has subgroups, else through workgroup memory borrowed from the V
//!      buffer, which is free until V_t is stored). Every lane of the row then holds all BK
//!      scores in registers, so the max, the exps and the running sum need no exchange;
//!   2. store V_t, start K_{t+1}; 3. o = alpha o + P V_t; 4. store K_{t+1}.
//! Three barriers per tile with subgroups, BK / 4 more without. Workgroup memory: 2 x TILE
//! vec4s, 32 or 16 KiB. Key visibility as in `attention_prefill.wgsl`; head_dim <= 4 * HD4,
//! a multiple of 4.

// `struct Step` (step.wgsl), `struct Params`, `NEG` (attention_common.wgsl), `HD4` (the width
// prelude), `TILE` (the tile prelude), the cache reader (`kv_k`, `kv_v`) and `SUBGROUPS` /
// `lanes4_sum` (attention_subgroups.wgsl or attention_nosubgroups.wgsl) are prepended by the
// Rust side.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>;
// The same bindings for an f16 cache: 4 halves per vec2<u32> (only the reader's view is used).
@group(0) @binding(3) var<storage, read> k_cache_h: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> v_cache_h: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;

override BK: u32 = 32u;   // keys per tile, a multiple of 4, BK * head_dim <= 4 * TILE
override HPL: u32 = 8u;   // head_dim vec4s per lane: ceil(head_dim / 4 / LANES)
override SPT: u32 = 8u;   // tile vec4s staged per invocation: ceil(BK * head_dim / 4 / WG)
const LANES: u32 = 4u;    // invocations per query row (within one subgroup: sizes are >= 4)
const WG: u32 = 128u;
const BQ: u32 = 32u;      // WG / LANES query rows
const MAX_HPL: u32 = HD4 / LANES;
const MAX_GROUPS: u32 = 16u;  // BK / 4 at BK = 64
const MAX_SPT: u32 = TILE / WG;
const MASKED: f32 = -3.0e38;  // score of an invisible key: exp(MASKED - m) == 0
// `row_sum` without subgroups borrows 2 x WG vec4s of the V buffer.
const_assert TILE >= 2u * WG;

var<workgroup> kt: array<vec4<f32>, TILE>;  // K of the current tile, [BK][hd4]
var<workgroup> vt: array<vec4<f32>, TILE>;  // V of the current tile; scores' scratch before

/// This invocation's share of rows kb..kb+nk of the K (or V) cache for KV head g, as the
/// tile buffer lays them out ([key][hd4], element lid + i * WG); zeros past nk.
fn fetch(kb: u32, nk: u32, g: u32, hd4: u32, lid: u32, is_v: bool) -> array<vec4<f32>, MAX_SPT> {
    var s: array<vec4<f32>, MAX_SPT>;
    for (var i = 0u; i < SPT; i++) {
        let e = lid + i * WG;
        var val = vec4<f32>(0.0);
        if (e / hd4 < nk) {
            let idx = ((step.kv_base + kb + e / hd4) * p.kv_stride + g * p.head_dim) / 4u + e % hd4;
            if (is_v) { val = kv_v(idx); } else { val = kv_k(idx); }
        }
        s[i] = val;
    }
    return s;
}

fn store_k(s: array<vec4<f32>, MAX_SPT>, hd4: u32, lid: u32) {
    for (var i = 0u; i < SPT; i++) {
        let e = lid + i * WG;
        if (e < BK * hd4) { kt[e] = s[i]; }
    }
}

fn store_v(s: array<vec4<f32>, MAX_SPT>, hd4: u32, lid: u32) {
    for (var i = 0u; i < SPT; i++) {
        let e = lid + i * WG;
        if (e < BK * hd4) { vt[e] = s[i]; }
    }
}

/// The sum of `v` over the LANES lanes of this invocation's row, in every lane. Without
/// subgroups it goes through vt[0..2 WG] (alternating halves by `parity`, so that one barrier
/// per call suffices); all invocations must call it.
fn row_sum(v: vec4<f32>, lid: u32, parity: u32) -> vec4<f32> {
    if (SUBGROUPS) { return lanes4_sum(v); }
    let slot = parity * WG;
    vt[slot + lid] = v;
    workgroupBarrier();
    let b = slot + lid - lid % LANES;
    return vt[b] + vt[b + 1u] + vt[b + 2u] + vt[b + 3u];
}

@compute @workgroup_size(WG)
fn attn_prefill_gpu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wid.y;
    let group = p.n_head / p.n_kv_head;
    let n_tok = min(step.n_tok, p.max_tok);
    let kv_start = step.kv_start;
    let n_rows = n_tok * group;
    let row0 = wid.x * BQ;
    if (row0 >= n_rows) { return; }
    let hd4 = p.head_dim / 4u;
    let lane = lid % LANES;
    let gr = row0 + lid / LANES;
    let row_ok = gr < n_rows;
    let t = gr / group;
    let h = g * group + gr % group;

    var qr: array<vec4<f32>, MAX_HPL>;
    var o: array<vec4<f32>, MAX_HPL>;
    let qbase = (t * p.q_stride + p.q_offset + h * p.head_dim) / 4u;
    for (var u = 0u; u < HPL; u++) {
        let c = lane + u * LANES;
        var val = vec4<f32>(0.0);
        if (row_ok && c < hd4) { val = q[qbase + c] * p.scale; }
        qr[u] = val;
        o[u] = vec4<f32>(0.0);
    }
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
    var stage = fetch(0u, min(BK, kv_end), g, hd4, lid, false);
    store_k(stage, hd4, lid);
    workgroupBarrier();
    for (var kb = 0u; kb < kv_end; kb += BK) {
        let nk = min(BK, kv_end - kb);
        stage = fetch(kb, nk, g, hd4, lid, true);
        // 1. Scores of the tile, 4 keys at a time, summed over the row's lanes.
        var s: array<vec4<f32>, MAX_GROUPS>;
        var mt = m;
        for (var j = 0u; j < BK / 4u; j++) {
            var part = vec4<f32>(0.0);
            for (var kk = 0u; kk < 4u; kk++) {
                let kbase = (4u * j + kk) * hd4;
                var d = vec4<f32>(0.0);
                for (var u = 0u; u < HPL; u++) {
                    let c = lane + u * LANES;
                    if (c < hd4) { d += qr[u] * kt[kbase + c]; }
                }
                part[kk] = d.x + d.y + d.z + d.w;
            }
            var sj = row_sum(part, lid, j % 2u);
            for (var kk = 0u; kk < 4u; kk++) {
                if (kb + 4u * j + kk >= min(my_end, kb + nk)) { sj[kk] = MASKED; }
            }
            s[j] = sj;
            mt = max(mt, max(max(sj.x, sj.y), max(sj.z, sj.w)));
        }
        workgroupBarrier();
        // 2. V_t into its buffer (the scores' scratch is consumed), K_{t+1} on its way.
        store_v(stage, hd4, lid);
        let kn = kb + BK;
        stage = fetch(kn, min(BK, max(kv_end, kn) - kn), g, hd4, lid, false);
        workgroupBarrier();
        // 3. Rescale the running state to the new max and add P V_t.
        let alpha = exp(m - mt);
        l *= alpha;
        for (var u = 0u; u < HPL; u++) { o[u] *= alpha; }
        for (var j = 0u; j < BK / 4u; j++) {
            let pj = exp(s[j] - mt);
            l += pj.x + pj.y + pj.z + pj.w;
            for (var kk = 0u; kk < 4u; kk++) {
                let vbase = (4u * j + kk) * hd4;
                for (var u = 0u; u < HPL; u++) {
                    let c = lane + u * LANES;
                    if (c < hd4) { o[u] += pj[kk] * vt[vbase + c]; }
                }
            }
        }
        m = mt;
        // 4. K_{t+1} into its buffer (K_t's last reads were before the first barrier).
        store_k(stage, hd4, lid);
        workgroupBarrier();
    }

    if (!row_ok) { return; }
    let inv_l = 1.0 / l;
    let obase = (t * p.n_head + h) * hd4;
    for (var u = 0u; u < HPL; u++) {
        let c = lane + u * LANES;
        if (c < hd4) { out[obase + c] = o[u] * inv_l; }
    }
}
