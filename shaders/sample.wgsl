//! Next-token selection on the GPU: greedy argmax, and temperature / top-k / top-p sampling
//! with a seeded counter-based RNG, spread over one workgroup per CHUNK logits. Only the
//! chosen id (4 bytes) ever leaves the GPU.
//!
//! Sampling follows transformers' warper order (temperature, then top-k, then top-p on the
//! renormalised top-k set, keeping the smallest set of most likely tokens whose mass reaches
//! p). Both cuts are found exactly by a most-significant-digit radix select (as in
//! Alabi et al., "Fast k-selection algorithms for GPUs", 2012) on the order-preserving u32
//! key of each logit: four passes of 8-bit digits each. Pass d histograms the candidates
//! whose key matches the digits fixed so far by their next digit, with every workgroup adding
//! its workgroup-memory histogram into a global one; the next pass's workgroups each read that
//! histogram and fix the digit that holds the cut. Top-k ranks by count (the k-th largest
//! key); top-p by mass: weights exp((l - max) / T) in 24.40 fixed point (two u32 words with an
//! explicit carry, as WGSL has only integer atomics), so the histograms of consecutive levels
//! agree exactly. Tokens tied with a cut are all kept.
//!
//! The draw is an inverse CDF in token-id order (the CPU sampler's order): every workgroup
//! sums its chunk's kept mass, then one workgroup finds the chunk holding u * total and the id
//! inside it. Dispatches (see `src/backend/gpu/sample.rs`): select_pass for d = 0..7 (d = 0 also
//! takes the per-chunk argmax), chunk_mass, draw. NaN and -inf logits get key 0 and weight 0:
//! they are never drawn unless no logit is live, and then id 0 comes out.

struct Params {
    vocab: u32,
    logits_offset: u32,   // element offset of the logits row
    out_index: u32,       // where the id is written in `out`
    n_chunks: u32,        // workgroups of select_pass and chunk_mass: ceil(vocab / CHUNK)
    pass_index: u32,      // select_pass: the digit pass d; chunk_mass: 8
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

/// Written by the host each step (a few bytes): the request's sampling settings and the
/// index of this draw, so one recorded program serves every step and every request.
struct Sampler {
    temperature: f32,     // <= 0: greedy
    top_k: u32,           // 0 or >= vocab: off
    top_p: f32,           // >= 1: off
    seed: u32,
    draw: u32,            // counter: the n-th token drawn with this seed
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

/// What the passes know so far; pass d writes it to `sel[d]` for pass d + 1. u64 values are
/// vec2 (low word, high word).
struct Sel {
    best: vec2<u32>,      // argmax (key, id), lowest id on ties
    prefix: u32,          // key bits the running select has fixed
    cut: u32,             // smallest key kept so far (0 keeps every token)
    above: vec2<u32>,     // count / mass of candidates above the fixed prefix
    goal: vec2<u32>,      // rank k (top-k) or mass (top-p) to reach
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> s: Sampler;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> partial: array<vec2<u32>>;   // argmax per chunk
@group(0) @binding(4) var<storage, read_write> hist: array<atomic<u32>>;    // 8 x 256 bins x u64
@group(0) @binding(5) var<storage, read_write> sel: array<Sel>;             // one per pass
@group(0) @binding(6) var<storage, read_write> chunk: array<f32>;           // kept mass per chunk
@group(0) @binding(7) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
override CHUNK: u32 = 1024u;           // logits per workgroup (by kernel geometry)
override PER_T: u32 = CHUNK / WG;      // contiguous ids per thread in the draw
const BINS: u32 = 256u;                // 8-bit digits
const PASSES: u32 = 8u;                // 4 top-k digits, then 4 top-p digits
const FIX_ONE: f32 = 1099511627776.0;  // 2^40: weight 1 in fixed point
const TWO32: f32 = 4294967296.0;

var<workgroup> local_hist: array<atomic<u32>, 512>;   // BINS x (low, high)
var<workgroup> red_v: array<vec2<u32>, WG>;
var<workgroup> red_f: array<f32, WG>;
var<workgroup> sel_w: Sel;
var<workgroup> pick_w: vec4<u32>;

/// Order-preserving map f32 -> u32 (larger float, larger key); NaN and -inf map to 0.
fn key_of(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u || b == 0xff800000u) { return 0u; }
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn unkey(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn sub64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}

fn ge64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y > b.y || (a.y == b.y && a.x >= b.x);
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

/// Inclusive prefix sum (Hillis-Steele) of the threads' values, left in red_f.
fn prefix_f(lid: u32, v: f32) {
    red_f[lid] = v;
    workgroupBarrier();
    for (var off = 1u; off < WG; off <<= 1u) {
        var x = red_f[lid];
        if (lid >= off) { x += red_f[lid - off]; }
        workgroupBarrier();
        red_f[lid] = x;
        workgroupBarrier();
    }
}

fn greedy() -> bool {
    return !(s.temperature > 0.0);
}

/// Whether digit pass d runs: top-k passes 0..3, top-p passes 4..7 (these need a live max).
fn pass_on(d: u32, st: Sel) -> bool {
    if (greedy()) { return false; }
    if (d < 4u) { return s.top_k > 0u && s.top_k < p.vocab; }
    return s.top_p < 1.0 && st.best.x != 0u;
}

fn digit_shift(d: u32) -> u32 {
    return 24u - 8u * (d % 4u);
}

/// Temperature weight in [0, 1] relative to the maximum (which weighs exactly 1).
fn weight(k: u32, l: f32, st: Sel) -> f32 {
    if (k == 0u) { return 0.0; }
    if (k == st.best.x) { return 1.0; }
    let inv_t = 1.0 / max(s.temperature, 1e-30);
    return exp((l - unkey(st.best.x)) * inv_t);
}

/// A weight in 24.40 fixed point, rounded to nearest (vec2: low, high word).
fn fixed(w: f32) -> vec2<u32> {
    let x = w * FIX_ONE;
    let hi = floor(x / TWO32);
    return vec2<u32>(u32(round(x - hi * TWO32)), u32(hi));
}

/// Fixes the digit of pass d's histogram that holds the cut: the largest bin b with
/// above + mass(bins >= b) >= goal. With `total_goal`, the goal is first set to top_p times
/// the histogram's total (the top-k survivors' mass), at least 1 and at most the total.
fn resolve(lid: u32, d: u32, st: Sel, total_goal: bool) -> Sel {
    let at = (d * BINS + lid) * 2u;
    let v = vec2<u32>(atomicLoad(&hist[at]), atomicLoad(&hist[at + 1u]));
    // Inclusive suffix sums over the bins (Hillis-Steele, u64).
    red_v[lid] = v;
    if (lid == 0u) { pick_w = vec4<u32>(0u); }
    workgroupBarrier();
    for (var off = 1u; off < BINS; off <<= 1u) {
        var x = red_v[lid];
        if (lid + off < BINS) { x = add64(x, red_v[lid + off]); }
        workgroupBarrier();
        red_v[lid] = x;
        workgroupBarrier();
    }
    var goal = st.goal;
    if (total_goal) {
        let z = red_v[0];
        let g = (f32(z.y) * TWO32 + f32(z.x)) * s.top_p;
        let g_hi = floor(g / TWO32);
        goal = vec2<u32>(u32(g - g_hi * TWO32), u32(g_hi));
        if (ge64(goal, z)) { goal = z; }
        if (goal.x == 0u && goal.y == 0u) { goal = vec2<u32>(1u, 0u); }
    }
    let incl = add64(st.above, red_v[lid]);
    let excl = sub64(incl, v);
    // Exactly one bin crosses: above < goal <= above + total, and the sums never increase.
    if (ge64(incl, goal) && !ge64(excl, goal)) { pick_w = vec4<u32>(lid, excl, 0u); }
    let pick = workgroupUniformLoad(&pick_w);
    var r = st;
    r.prefix |= pick.x << digit_shift(d);
    r.above = pick.yz;
    r.goal = goal;
    return r;
}

/// Whether dispatch d (a digit pass, or chunk_mass at d = PASSES) has work: pass 0 always
/// (argmax), the others only for the cuts that are on. The rest return at once.
fn runs(d: u32) -> bool {
    if (d == 0u) { return true; }
    if (greedy()) { return false; }
    if (d < 4u) { return s.top_k > 0u && s.top_k < p.vocab; }
    if (d < PASSES) { return s.top_p < 1.0; }
    return true;
}

/// The argmax of the row from pass 0's per-chunk results.
fn reduce_partials(lid: u32) -> vec2<u32> {
    var best = vec2<u32>(0u, 0xffffffffu);
    for (var i = lid; i < p.n_chunks; i += WG) { best = better(best, partial[i]); }
    return reduce_best(lid, best);
}

/// The state at the start of a running pass d >= 1: the state of the last pass that ran,
/// with its histogram resolved. Workgroup 0 stores it for the passes after d.
fn advance(d: u32, wid: u32, lid: u32) -> Sel {
    var last = 0u;
    for (var j = 1u; j < d; j++) {
        if (runs(j)) { last = j; }
    }
    if (lid == 0u) { sel_w = sel[last]; }
    var st = workgroupUniformLoad(&sel_w);
    if (last == 0u) { st.best = reduce_partials(lid); }
    if (pass_on(last, st)) {
        st = resolve(lid, last, st, last == 4u);
        if (last == 3u || last == 7u) { st.cut = st.prefix; }
    }
    if (last == 3u) {
        st.prefix = 0u;
        st.above = vec2<u32>(0u, 0u);
    }
    // Every thread holds the same state; thread 0's copy is the uniform one.
    workgroupBarrier();
    if (lid == 0u) {
        sel_w = st;
        if (wid == 0u) { sel[d] = st; }
    }
    return workgroupUniformLoad(&sel_w);
}

/// Digit pass d (0..7): histogram of the candidates' next digit, by count (top-k) or by
/// fixed-point mass (top-p). Pass 0 also writes each chunk's argmax.
@compute @workgroup_size(WG)
fn select_pass(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let d = p.pass_index;
    if (!runs(d)) { return; }
    atomicStore(&local_hist[2u * lid], 0u);
    atomicStore(&local_hist[2u * lid + 1u], 0u);
    var st: Sel;
    if (d == 0u) {
        st = Sel(vec2<u32>(0u, 0xffffffffu), 0u, 0u, vec2<u32>(0u, 0u), vec2<u32>(s.top_k, 0u));
        if (wid.x == 0u && lid == 0u) { sel[0] = st; }
    } else {
        st = advance(d, wid.x, lid);
    }
    workgroupBarrier();
    let on = pass_on(d, st);
    let shift = digit_shift(d);
    let fixed_mask = select(0xffffffffu << (shift + 8u), 0u, shift == 24u);
    let start = wid.x * CHUNK;
    let end = min(start + CHUNK, p.vocab);
    var best = vec2<u32>(0u, 0xffffffffu);
    // Pass 0 always reads its chunk (argmax); a disabled later pass reads nothing.
    let n = select(0u, end - min(start, end), d == 0u || on);
    for (var i = start + lid; i < start + n; i += WG) {
        let l = logits[p.logits_offset + i];
        let k = key_of(l);
        best = better(best, vec2<u32>(k, i));
        if (!on || (k & fixed_mask) != (st.prefix & fixed_mask) || k < st.cut) { continue; }
        let bin = 2u * ((k >> shift) & 0xffu);
        var v = vec2<u32>(1u, 0u);
        if (d >= 4u) { v = fixed(weight(k, l, st)); }
        let old = atomicAdd(&local_hist[bin], v.x);
        let carry = select(0u, 1u, old + v.x < old);
        if (v.y + carry != 0u) { atomicAdd(&local_hist[bin + 1u], v.y + carry); }
    }
    if (d == 0u) {
        let r = reduce_best(lid, best);
        if (lid == 0u) { partial[wid.x] = r; }
    }
    workgroupBarrier();
    if (!on) { return; }
    // Add this workgroup's bin `lid` into the global histogram (u64 with an explicit carry).
    let lo = atomicLoad(&local_hist[2u * lid]);
    let hi = atomicLoad(&local_hist[2u * lid + 1u]);
    let at = (d * BINS + lid) * 2u;
    var carry = 0u;
    if (lo != 0u) {
        let old = atomicAdd(&hist[at], lo);
        carry = select(0u, 1u, old + lo < old);
    }
    if (hi + carry != 0u) { atomicAdd(&hist[at + 1u], hi + carry); }
}

/// Kept mass of the ids [begin, end) in id order, summed from `begin` (the draw repeats this
/// sum bit for bit).
fn range_mass(begin: u32, end: u32, st: Sel) -> f32 {
    var acc = 0.0;
    for (var i = begin; i < end; i++) {
        let l = logits[p.logits_offset + i];
        let k = key_of(l);
        if (k >= st.cut) { acc += weight(k, l, st); }
    }
    return acc;
}

/// The thread's contiguous ids inside chunk c.
fn thread_ids(c: u32, lid: u32) -> vec2<u32> {
    let begin = min(c * CHUNK + lid * PER_T, p.vocab);
    return vec2<u32>(begin, min(begin + PER_T, p.vocab));
}

/// After the last digit pass: each workgroup's kept mass (f32, id order).
@compute @workgroup_size(WG)
fn chunk_mass(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (!runs(PASSES)) { return; }
    let st = advance(PASSES, wid.x, lid);
    if (st.best.x == 0u) { return; }
    let r = thread_ids(wid.x, lid);
    prefix_f(lid, range_mass(r.x, r.y, st));
    if (lid == WG - 1u) { chunk[wid.x] = red_f[lid]; }
}

/// One workgroup: the argmax, or the inverse-CDF draw over the chunks' masses and then inside
/// the chosen chunk. Also clears the histograms for the next step.
@compute @workgroup_size(WG)
fn draw(@builtin(local_invocation_index) lid: u32) {
    for (var i = lid; i < PASSES * BINS * 2u; i += WG) { atomicStore(&hist[i], 0u); }
    if (greedy()) {
        let best = reduce_partials(lid);
        if (lid == 0u) { out[p.out_index] = best.y; }
        return;
    }
    if (lid == 0u) { sel_w = sel[PASSES]; }
    let st = workgroupUniformLoad(&sel_w);
    if (st.best.x == 0u) {
        if (lid == 0u) { out[p.out_index] = st.best.y; }
        return;
    }
    // Chunk level: each thread owns a contiguous run of chunks.
    let per = (p.n_chunks + WG - 1u) / WG;
    let c0 = min(lid * per, p.n_chunks);
    let c1 = min(c0 + per, p.n_chunks);
    var mine = 0.0;
    for (var c = c0; c < c1; c++) { mine += chunk[c]; }
    prefix_f(lid, mine);
    let total = red_f[WG - 1u];
    // u < total strictly, so exactly one thread's range [before, inclusive) holds it.
    let u = min(rand01(s.seed, s.draw) * total, total * 0.99999994);
    let before = select(0.0, red_f[max(lid, 1u) - 1u], lid > 0u);
    if (lid == 0u) { pick_w = vec4<u32>(0u); }
    workgroupBarrier();
    if (owns(lid, before, u, red_f[lid])) {
        // Rounding between the two sums falls back to the run's last chunk with mass.
        var acc = before;
        var chosen = vec2<u32>(0xffffffffu, 0u);
        var last = vec2<u32>(c0, 0u);
        for (var c = c0; c < c1; c++) {
            let m = chunk[c];
            if (m > 0.0) {
                let rest = u - acc;
                last = vec2<u32>(c, bitcast<u32>(clamp(rest, 0.0, m * 0.99999994)));
                if (chosen.x == 0xffffffffu && rest < m) { chosen = last; }
            }
            acc += m;
        }
        pick_w = vec4<u32>(select(chosen, last, chosen.x == 0xffffffffu), 0u, 0u);
    }
    let pick = workgroupUniformLoad(&pick_w);
    // Id level inside the chosen chunk: the same thread sums as chunk_mass, so the same total.
    let r = thread_ids(pick.x, lid);
    prefix_f(lid, range_mass(r.x, r.y, st));
    let want = min(bitcast<f32>(pick.y), red_f[WG - 1u] * 0.99999994);
    let lo = select(0.0, red_f[max(lid, 1u) - 1u], lid > 0u);
    if (owns(lid, lo, want, red_f[lid])) {
        var acc = lo;
        var chosen = 0xffffffffu;
        var last = r.x;
        for (var i = r.x; i < r.y; i++) {
            let l = logits[p.logits_offset + i];
            let k = key_of(l);
            let w = select(0.0, weight(k, l, st), k >= st.cut);
            if (w > 0.0) {
                acc += w;
                last = i;
                if (want < acc && chosen == 0xffffffffu) { chosen = i; }
            }
        }
        out[p.out_index] = select(chosen, last, chosen == 0xffffffffu);
    }
}

/// Whether this thread's run [before, incl) of an inclusive prefix sum holds x; the last
/// thread also takes an x that rounding left at or past the total (never two owners).
fn owns(lid: u32, before: f32, x: f32, incl: f32) -> bool {
    return (before <= x && x < incl) || (lid == WG - 1u && !(x < incl));
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
