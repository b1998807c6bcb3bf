//! Next-token selection on the GPU: greedy argmax, and temperature / top-k / top-p sampling
//! with a seeded counter-based RNG. Only the chosen id (4 bytes) ever leaves the GPU.
//!
//! Sampling follows transformers' warper order (temperature, then top-k, then top-p on the
//! renormalised top-k set, keeping the smallest set of most likely tokens whose mass reaches
//! p). The k-th largest logit and the top-p cut are found exactly by bisection over the
//! order-preserving integer image of the f32 bit patterns (32 passes each), so no sort is
//! needed; tokens tied with the threshold are all kept. The draw is an inverse-CDF lookup in
//! token-id order through a workgroup prefix sum.

struct Params {
    vocab: u32,
    logits_offset: u32,   // element offset of the logits row
    out_index: u32,       // where the id is written in `out`
    n_partials: u32,      // argmax: number of partial results
}

/// Written by the host each step (a few bytes): the request's sampling settings and the
/// index of this draw, so one recorded program serves every step and every request.
struct Sampler {
    temperature: f32,     // <= 0: greedy
    top_k: u32,           // 0: off
    top_p: f32,           // >= 1: off
    seed: u32,
    draw: u32,            // counter: the n-th token drawn with this seed
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> s: Sampler;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> partial: array<vec2<u32>>;   // (key, index)
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
const PER_WG: u32 = 4096u;   // argmax_partial: logits per workgroup

var<workgroup> red_u: array<u32, WG>;
var<workgroup> red_v: array<vec2<u32>, WG>;
var<workgroup> red_f: array<f32, WG>;

/// Order-preserving map f32 -> u32 (larger float, larger key).
fn key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn unkey(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

/// Max of (key, -index) pairs: the largest logit, lowest id on ties.
fn better(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    if (b.x > a.x || (b.x == a.x && b.y < a.y)) { return b; }
    return a;
}

fn reduce_best(lid: u32, v: vec2<u32>) -> vec2<u32> {
    red_v[lid] = v;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (lid < st) { red_v[lid] = better(red_v[lid], red_v[lid + st]); }
        workgroupBarrier();
    }
    let r = workgroupUniformLoad(&red_v[0]);
    workgroupBarrier();
    return r;
}

fn reduce_sum_u(lid: u32, v: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (lid < st) { red_u[lid] += red_u[lid + st]; }
        workgroupBarrier();
    }
    let r = workgroupUniformLoad(&red_u[0]);
    workgroupBarrier();
    return r;
}

fn reduce_sum_f(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (lid < st) { red_f[lid] += red_f[lid + st]; }
        workgroupBarrier();
    }
    let r = workgroupUniformLoad(&red_f[0]);
    workgroupBarrier();
    return r;
}

/// Stage 1 of argmax: each workgroup reduces PER_WG logits to one (key, index).
@compute @workgroup_size(WG)
fn argmax_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let start = wid.x * PER_WG;
    let end = min(start + PER_WG, p.vocab);
    var best = vec2<u32>(0u, 0xffffffffu);
    for (var i = start + lid; i < end; i += WG) {
        best = better(best, vec2<u32>(key(logits[p.logits_offset + i]), i));
    }
    let r = reduce_best(lid, best);
    if (lid == 0u) { partial[wid.x] = r; }
}

/// Stage 2 of argmax, or the whole sampler when the temperature is positive.
@compute @workgroup_size(WG)
fn select_token(@builtin(local_invocation_index) lid: u32) {
    var best = vec2<u32>(0u, 0xffffffffu);
    for (var i = lid; i < p.n_partials; i += WG) { best = better(best, partial[i]); }
    best = reduce_best(lid, best);
    if (s.temperature <= 0.0) {
        if (lid == 0u) { out[p.out_index] = best.y; }
        return;
    }
    let m = unkey(best.x);
    let inv_t = 1.0 / s.temperature;

    // top-k: the largest threshold key with at least k logits at or above it.
    var cut = 0u;
    if (s.top_k > 0u && s.top_k < p.vocab) {
        var lo = 0u;
        var hi = best.x;
        for (var it = 0u; it < 32u && lo < hi; it++) {
            let mid = lo + (hi - lo + 1u) / 2u;
            var c = 0u;
            for (var i = lid; i < p.vocab; i += WG) { c += u32(key(logits[p.logits_offset + i]) >= mid); }
            if (reduce_sum_u(lid, c) >= s.top_k) { lo = mid; } else { hi = mid - 1u; }
        }
        cut = lo;
    }

    // top-p on the renormalised survivors: the largest threshold whose mass reaches p.
    if (s.top_p < 1.0) {
        var z = 0.0;
        for (var i = lid; i < p.vocab; i += WG) {
            let l = logits[p.logits_offset + i];
            if (key(l) >= cut) { z += exp((l - m) * inv_t); }
        }
        let goal = reduce_sum_f(lid, z) * s.top_p;
        var lo = cut;
        var hi = best.x;
        for (var it = 0u; it < 32u && lo < hi; it++) {
            let mid = lo + (hi - lo + 1u) / 2u;
            var mass = 0.0;
            for (var i = lid; i < p.vocab; i += WG) {
                let l = logits[p.logits_offset + i];
                if (key(l) >= mid) { mass += exp((l - m) * inv_t); }
            }
            if (reduce_sum_f(lid, mass) >= goal) { lo = mid; } else { hi = mid - 1u; }
        }
        cut = lo;
    }

    // Inverse CDF in id order: each thread owns a contiguous range of ids.
    let per = (p.vocab + WG - 1u) / WG;
    let begin = min(lid * per, p.vocab);
    let end = min(begin + per, p.vocab);
    var mine = 0.0;
    for (var i = begin; i < end; i++) {
        let l = logits[p.logits_offset + i];
        if (key(l) >= cut) { mine += exp((l - m) * inv_t); }
    }
    // Inclusive prefix sum (Hillis-Steele) over the 256 thread totals.
    red_f[lid] = mine;
    workgroupBarrier();
    for (var off = 1u; off < WG; off <<= 1u) {
        var v = red_f[lid];
        if (lid >= off) { v += red_f[lid - off]; }
        workgroupBarrier();
        red_f[lid] = v;
        workgroupBarrier();
    }
    let total = red_f[WG - 1u];
    // u < total strictly, so some thread's range [before, inclusive) holds it.
    let u = min(rand01(s.seed, s.draw) * total, total * 0.99999994);
    let before = select(0.0, red_f[max(lid, 1u) - 1u], lid > 0u);
    // The owner of u scans its range; rounding between the two sums falls back to its last id.
    if (before <= u && u < red_f[lid]) {
        var acc = before;
        var chosen = 0xffffffffu;
        var last = 0u;
        for (var i = begin; i < end; i++) {
            let l = logits[p.logits_offset + i];
            if (key(l) >= cut) {
                acc += exp((l - m) * inv_t);
                last = i;
                if (u < acc && chosen == 0xffffffffu) { chosen = i; }
            }
        }
        out[p.out_index] = select(chosen, last, chosen == 0xffffffffu);
    }
}

/// PCG-style hash of (seed, draw) to a uniform float in [0, 1).
fn rand01(seed: u32, draw: u32) -> f32 {
    var x = seed * 747796405u + draw * 2891336453u + 12345u;
    x = ((x >> ((x >> 28u) + 4u)) ^ x) * 277803737u;
    x = (x >> 22u) ^ x;
    x ^= draw * 0x9e3779b9u;
    x = (x ^ (x >> 16u)) * 0x7feb352du;
    x = (x ^ (x >> 15u)) * 0x846ca68bu;
    x ^= x >> 16u;
    return f32(x >> 8u) / 16777216.0;
}
