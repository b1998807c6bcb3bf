//! Split-K grouped-query attention for a few new tokens over a long KV cache ("flash-decoding",
//! Dao et al. 2023; the partial-softmax merge of Milakov & Gimelshein 2018).
//!
//! `attn_decode`: workgroup (split s, KV head g, row chunk z). A row is a (token, query head of
//! the group) pair; a workgroup holds R rows (override, set per shape by
//! `src/backend/gpu/attention.rs`: the group's heads x as many tokens as fit in R_MAX, so no row
//! slot idles). The cache rows 0..kv_len (kv_len = kv_start + n_tok, from the step uniform)
//! are cut into splits of per = ceil(kv_len / n) keys rounded up to BK, n = clamp(ceil(kv_len
//! / split_keys), 1, n_split); n_eff = ceil(kv_len / per) <= n of them hold keys. The grid
//! has n_split splits (enough for max_ctx, fixed when the step program is recorded) and
//! splits s >= n_eff return at once.
//! Split s walks its keys in tiles of BK:
//!   1. partial scores of the tile into workgroup memory: invocation (key, half of head_dim)
//!      reads its K slice once from global and dots it with every row's q;
//!   2. the new running max of each row; 3. one exp per (row, key) into `pr`;
//!   4. V in sub-tiles of VT / hd4 keys, each loaded once (coalesced) into workgroup memory
//!      and used by every row: invocation (row, vec4 of head_dim) folds it into its running
//!      sum l and unnormalised output o.
//! It writes (m, l) and o per (row, split); a split that sees no key writes l = 0.
//! `attn_combine`: one workgroup per (token, head) merges the n_eff splits (same formula):
//!   out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
//! Score rows are padded to BKP = BK + 1 floats so that rows read by one warp fall in
//! different banks. head_dim is a multiple of 4, at most 4 * HD4. The width prelude (from
//! `src/backend/gpu/attention.rs`) sets HD4 and VT per head_dim; workgroup memory is q (R_MAX x
//! HD4 vec4s) + probabilities (2 KiB) + `sh` (VT vec4s, the larger of the scores and a V
//! sub-tile) + 192 B, within WebGPU's default 16 KiB:
//!   head_dim <= 128: HD4 32, VT 512 (16-key V sub-tiles): 4 + 2 + 8 KiB = 14.2 KiB;
//!   head_dim <= 256: HD4 64, VT 320 (5-key V sub-tiles): 8 + 2 + 5 KiB = 15.2 KiB.
//! Step 2 starts in registers where `attention_subgroups.wgsl` is the prelude (native
//! adapters with subgroups, GPU geometry): 16 lanes per row, 4-lane shuffles, then 4 partial
//! maxima per row in workgroup memory; `attention_nosubgroups.wgsl` keeps one invocation per
//! row walking the tile.
//! A workgroup's rows take their step (cache length, the sequence's first cache row) from
//! `seq_of(token)`, a prelude: one sequence's step uniform, whose tokens share it, or, for the
//! sequences of a batched step (one token each, caches ranges of one KV arena), the token's
//! own entry of `steps`; a chunk of R rows then lies within one token (R divides its group).
//! The cache is read through `kv_k` / `kv_v`, prepended by `src/backend/gpu/attention.rs` for the
//! cache type (f32, or f16 packed two per word and widened on load); the math is f32.

// `struct Step` and `SeqStep` (step.wgsl), `seq_of` (a step prelude), `struct Params`, `NEG`
// and `split_plan` (attention_common.wgsl), `HD4` and `VT` (the width prelude), the cache
// reader and `SUBGROUPS` / `lanes4_max` (the subgroup prelude) are prepended by the Rust side.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// Built for the sequences of a batched step (one token each, caches in one KV arena): each
// token's own step, read through `seq_of`.
@group(0) @binding(1) var<storage, read> steps: array<Step>;
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

override R: u32 = 8u;      // rows per workgroup, <= R_MAX
const R_MAX: u32 = 8u;
const BK: u32 = 64u;        // keys per tile
const BKP: u32 = 65u;       // padded row stride of the score arrays
const WG: u32 = 128u;       // BK keys x 2 halves of head_dim in phase 1
const PAIRS: u32 = R_MAX * HD4 / WG;  // (row, vec4) outputs per invocation: 2 or 4
const MASKED: f32 = -1.0e38;
// `sh` holds a tile's partial scores between phases 1 and 3 (VT is the V sub-tile's size).
const_assert 4u * VT >= 2u * R_MAX * BKP;

var<workgroup> qs: array<vec4<f32>, R_MAX * HD4>;  // [R_MAX][HD4] pre-scaled q rows
var<workgroup> pr: array<f32, 520>;        // [R_MAX][BKP] probabilities of the tile
// Phases 1-3: partial scores [2 halves][R_MAX][BKP] as flat f32 (`part`); phase 4: a V
// sub-tile [VT / hd4 keys][hd4] (16 keys of head_dim 128, 32 of 64, 5 of 256).
var<workgroup> sh: array<vec4<f32>, VT>;
var<workgroup> rm: array<f32, R_MAX>;      // running max per row
var<workgroup> ra: array<f32, R_MAX>;      // rescale of the row's old state for this tile
var<workgroup> rmx: array<f32, 32>;        // with subgroups: 4 partial maxima per row

fn part(i: u32) -> f32 { return sh[i / 4u][i % 4u]; }

@compute @workgroup_size(WG)
fn attn_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let split = wid.x;
    let g = wid.y;
    let group = p.n_head / p.n_kv_head;
    let row0 = wid.z * R;
    // The step of the chunk's rows (R divides a token's rows when tokens are sequences).
    let seq = seq_of(row0 / group);
    let n_tok = min(seq.step.n_tok, p.max_tok);
    let kv_start = seq.step.kv_start;
    let kv_base = seq.step.kv_base;
    let kv_len = kv_start + n_tok;
    let plan = split_plan(kv_len);
    let n_split = plan.y;
    // Rows of the sequence's tokens (counted from row 0 of the step), and row0 past its first.
    let n_rows = (seq.tok0 + n_tok) * group;
    let local0 = row0 - seq.tok0 * group;
    if (split >= n_split || row0 >= n_rows || row0 >= p.max_tok * group) { return; }
    let nr = min(R, n_rows - row0);
    let hd4 = p.head_dim / 4u;

    for (var i = lid; i < R * hd4; i += WG) {
        let r = i / hd4;
        var val = vec4<f32>(0.0);
        if (r < nr) {
            let gr = row0 + r;
            let h = g * group + gr % group;
            val = q[((gr / group) * p.q_stride + p.q_offset + h * p.head_dim) / 4u + i % hd4] * p.scale;
        }
        qs[r * HD4 + i % hd4] = val;
    }
    if (lid < R) {
        rm[lid] = NEG;
        ra[lid] = 1.0;
    }

    let k0 = split * plan.x;
    var k1 = min(k0 + plan.x, kv_len);
    if (p.causal != 0u) { k1 = min(k1, kv_start + (local0 + nr - 1u) / group + 1u); }

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
    let vk = VT / hd4;  // keys per V sub-tile
    workgroupBarrier();

    for (var kb = k0; kb < k1; kb += BK) {
        let nk = min(BK, k1 - kb);
        let key = kb + j;
        // 1. Partial scores q_r . k_key over this half of head_dim (each K element read once).
        var acc: array<vec4<f32>, R_MAX>;
        for (var r = 0u; r < R; r++) { acc[r] = vec4<f32>(0.0); }
        if (j < nk) {
            let kbase = ((kv_base + key) * p.kv_stride + g * p.head_dim) / 4u;
            for (var c = c0; c < c1; c++) {
                let kc = kv_k(kbase + c);
                for (var r = 0u; r < R; r++) { acc[r] += qs[r * HD4 + c] * kc; }
            }
        }
        for (var r = 0u; r < R; r++) {
            var lim = kv_len;
            if (p.causal != 0u) { lim = kv_start + (local0 + r) / group + 1u; }
            var s = dot(acc[r], vec4<f32>(1.0));
            if (j >= nk || key >= lim) { s = select(0.0, MASKED, hh == 0u); }
            let i = (hh * R_MAX + r) * BKP + j;
            sh[i / 4u][i % 4u] = s;
        }
        workgroupBarrier();
        // 2. New running max per row and the rescale of the old state. With subgroups, 16
        //    lanes per row: lane i takes keys i, i + 16, ..., then 4-lane shuffles and the 4
        //    partial maxima of the row; without, one invocation per row walks the tile.
        var mx = NEG;
        if (SUBGROUPS) {
            let r = lid / 16u;
            for (var k = lid % 16u; r < nr && k < nk; k += 16u) { mx = max(mx, part(r * BKP + k) + part((R_MAX + r) * BKP + k)); }
            mx = lanes4_max(mx);
            if (lid % 4u == 0u) { rmx[lid / 4u] = mx; }
            workgroupBarrier();
        }
        if (lid < nr) {
            var mt = rm[lid];
            if (SUBGROUPS) {
                mt = max(mt, max(max(rmx[4u * lid], rmx[4u * lid + 1u]), max(rmx[4u * lid + 2u], rmx[4u * lid + 3u])));
            } else {
                for (var k = 0u; k < nk; k++) { mt = max(mt, part(lid * BKP + k) + part((R_MAX + lid) * BKP + k)); }
            }
            ra[lid] = exp(rm[lid] - mt);
            rm[lid] = mt;
        }
        workgroupBarrier();
        // 3. Probabilities, one exp per (row, key).
        for (var i = lid; i < nr * BK; i += WG) {
            let s = (i / BK) * BKP + i % BK;
            pr[s] = exp(part(s) + part(R_MAX * BKP + s) - rm[i / BK]);
        }
        for (var u = 0u; u < PAIRS; u++) {
            let r = (lid + u * WG) / hd4;
            if (r < nr) {
                o[u] *= ra[r];
                l[u] *= ra[r];
            }
        }
        workgroupBarrier();
        // 4. V sub-tiles: loaded once, coalesced, into `sh` (the scores are consumed), then
        //    folded into every row's owned (row, vec4) outputs.
        for (var vb = 0u; vb < nk; vb += vk) {
            let nv = min(vk, nk - vb);
            let vbase = ((kv_base + kb + vb) * p.kv_stride + g * p.head_dim) / 4u;
            for (var i = lid; i < nv * hd4; i += WG) {
                sh[i] = kv_v(vbase + (i / hd4) * (p.kv_stride / 4u) + i % hd4);
            }
            workgroupBarrier();
            for (var u = 0u; u < PAIRS; u++) {
                let pi = lid + u * WG;
                let r = pi / hd4;
                let c = pi % hd4;
                if (r < nr) {
                    var sum = l[u];
                    var acc_o = o[u];
                    for (var k = 0u; k < nv; k++) {
                        let pk = pr[r * BKP + vb + k];
                        sum += pk;
                        acc_o += pk * sh[k * hd4 + c];
                    }
                    l[u] = sum;
                    o[u] = acc_o;
                }
            }
            workgroupBarrier();
        }
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
    let tok = row / p.n_head;
    let seq = seq_of(tok);
    let n_tok = min(seq.step.n_tok, p.max_tok);
    if (tok >= p.max_tok || tok - seq.tok0 >= n_tok) { return; }
    let n_split = split_plan(seq.step.kv_start + n_tok).y;
    let hd4 = p.head_dim / 4u;
    let base = row * p.n_split;
    var mx = NEG;
    for (var s = 0u; s < n_split; s++) {
        let ml = part_ml[base + s];
        if (ml.y > 0.0) { mx = max(mx, ml.x); }
    }
    var den = 0.0;
    for (var s = 0u; s < n_split; s++) {
        let ml = part_ml[base + s];
        if (ml.y > 0.0) { den += exp(ml.x - mx) * ml.y; }
    }
    let inv = 1.0 / den;
    for (var c = lid; c < hd4; c += 64u) {
        var acc = vec4<f32>(0.0);
        for (var s = 0u; s < n_split; s++) {
            let ml = part_ml[base + s];
            if (ml.y > 0.0) { acc += exp(ml.x - mx) * part_o[(base + s) * hd4 + c]; }
        }
        out[row * hd4 + c] = acc * inv;
    }
}
