//! Rotary position embedding (RoPE, Su et al. 2021, arXiv:2104.09864) with a precomputed
//! inverse-frequency table (plain, or YaRN per transformers `_compute_yarn_parameters`), the
//! YaRN attention factor on cos/sin, and the Llama-4 / Ministral 3 query scaling
//! `q *= 1 + beta * ln(1 + floor(pos / orig_ctx))` (transformers `get_llama_4_attn_scale`).
//!
//! Pairs: mode 0 rotates adjacent pairs (x[2i], x[2i+1]) — llama.cpp's "normal" RoPE, which
//! is what GGUF `llama`/`mistral3` files need after the converter's Q/K permutation; mode 1
//! rotates (x[i], x[i + n_rot/2]) — transformers' `rotate_half` ("neox"). Dims past n_rot
//! pass through unchanged.
//!
//! Angles: `angle = f32(pos) * inv_freq[i]` rounded to f32 exactly as transformers does (then
//! divided by `freq_factors[i]`, llama.cpp's `rope_freqs`: 1 unless the model has them), then
//! reduced modulo 2*pi with a three-part Cody-Waite split (`reduce_angle`, common.wgsl; exact
//! for |angle| < 2^16 * 2*pi) so that GPU `cos`/`sin`, only accurate on [-pi, pi], agree with
//! a CPU f32 `cos(angle)`.
//!
//! One invocation per (token, head, pair). `rope_inplace` rotates q or k in place;
//! `rope_kv_store` rotates new k rows and writes them, with the matching v rows, into the KV
//! cache at row `kv_base + kv_start + t` of the step; `rope_kv_store_f16` does the same for
//! an f16 cache (pairs of halves packed in a u32 by `pack2x16float`, which needs no
//! `shader-f16`): one invocation per (token, head, word of two adjacent dims), each dim
//! rotated with its own partner.
//! `rope_qkv_store` / `_f16` do both in one dispatch over a fused q|k|v row (q at column 0,
//! k at `x_offset`, v at `v_offset`): heads below `n_q` rotate q in place, the rest store
//! k and v.
//!
//! Interleaved multimodal RoPE (Qwen3-VL / Qwen3.5; transformers' `apply_interleaved_mrope`,
//! llama.cpp's IMROPE): `rope_inplace_mrope`, `rope_kv_store_mrope` and `_f16` take each
//! token's (t, h, w) positions from a `[3][n_tok]` buffer; frequency i turns with the h
//! position when i % 3 == 1 and i < 3 * mrope_h, with the w position when i % 3 == 2 and
//! i < 3 * mrope_w, and with t otherwise. Equal axes give plain RoPE bit for bit.

//! Token row t's step (position, cache row) is `seq_of(t)`, from a prelude: the one step
//! uniform of a sequence's rows, or, built for the sequences of a batched step (one token
//! row each, their caches ranges of one KV arena), row t's own entry of `steps`.

// `struct Step` and `seq_of` come from `step.wgsl` and a prelude, prepended by the Rust side.

struct Params {
    max_tok: u32,      // token rows covered by the grid
    n_heads: u32,
    head_dim: u32,
    n_rot: u32,        // rotated dims (even, <= head_dim)
    x_stride: u32,     // input row stride (elements): element (t, h, d) = x[t*x_stride + x_offset + h*head_dim + d]
    x_offset: u32,
    v_stride: u32,     // same for v (rope_kv_store only)
    v_offset: u32,
    cache_stride: u32, // elements per KV-cache row (n_kv_head * head_dim)
    neox: u32,         // 0: adjacent pairs, 1: rotate-half pairs
    attn_factor: f32,  // multiplier on cos and sin (YaRN mscale ratio)
    q_beta: f32,       // query scaling beta (0: off)
    q_orig_ctx: u32,   // query scaling period (original max position embeddings)
    n_q: u32,          // rope_qkv_store: q heads before the k heads
    mrope_h: u32,      // M-RoPE entries: frequencies turned by the h and w positions (sections)
    mrope_w: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// The entries built for the sequences of a batched step: each token row's own step (`seq_of`).
@group(0) @binding(1) var<storage, read> steps: array<Step>;
// [inv_freq (n_rot / 2) | freq_factors (n_rot / 2)]
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
// rope_kv_store only (naga checks binding collisions per entry point): new k and v rows,
// read-only so that both may be views of one fused QKV buffer.
@group(0) @binding(3) var<storage, read> k_in: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<f32>;
// rope_kv_store_f16 only: the caches as f16 pairs (dims 2w, 2w + 1 of a row in word w).
@group(0) @binding(5) var<storage, read_write> k_cache_h: array<u32>;
@group(0) @binding(6) var<storage, read_write> v_cache_h: array<u32>;
// rope_qkv_store (and _f16) only: the caches, after the fused rows in `x`.
@group(0) @binding(4) var<storage, read_write> qkv_k_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> qkv_v_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> qkv_k_cache_h: array<u32>;
@group(0) @binding(5) var<storage, read_write> qkv_v_cache_h: array<u32>;
// M-RoPE entries: `[3][n_tok]` (t, h, w) positions, after the entry's other bindings.
@group(0) @binding(4) var<storage, read> q_pos: array<u32>;
@group(0) @binding(7) var<storage, read> kv_pos: array<u32>;

const WG: u32 = 256u;

// (cos, sin) * attn_factor of frequency i at position pos.
fn cos_sin(pos: u32, i: u32) -> vec2<f32> {
    let r = reduce_angle(f32(pos) * inv_freq[i] / inv_freq[p.n_rot / 2u + i]);
    return vec2<f32>(cos(r), sin(r)) * p.attn_factor;
}

// Dim indices (within the head) of pair i and whether it rotates.
fn pair_dims(i: u32) -> vec3<u32> {
    let half_rot = p.n_rot / 2u;
    if (i >= half_rot) { return vec3<u32>(2u * i, 2u * i + 1u, 0u); }
    if (p.neox != 0u) { return vec3<u32>(i, i + half_rot, 1u); }
    return vec3<u32>(2u * i, 2u * i + 1u, 1u);
}

struct Job {
    ok: bool,
    t: u32,
    h: u32,
    i: u32,
    pos: u32,    // the token's position (plain RoPE)
    row: u32,    // the token's row in the cache buffers
    n_tok: u32,  // tokens of its step (M-RoPE positions are `[3][n_tok]`)
}

/// The (token, head, pair) of this invocation, over `n_heads` heads per token.
fn job(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, n_heads: u32) -> Job {
    let g = linear_invocation(wid, nwg, lid, WG);
    let half_dim = p.head_dim / 2u;
    let per_tok = n_heads * half_dim;
    let t = g / per_tok;
    let rem = g % per_tok;
    let s = seq_of(t);
    let local = t - s.tok0;
    let ok = t < p.max_tok && local < min(s.step.n_tok, p.max_tok);
    let row = s.step.kv_base + s.step.kv_start + local;
    return Job(ok, t, rem / half_dim, rem % half_dim, s.step.rope_pos0 + local, row, s.step.n_tok);
}

fn q_scale(pos: u32) -> f32 {
    if (p.q_beta == 0.0 || p.q_orig_ctx == 0u) { return 1.0; }
    return 1.0 + p.q_beta * log(1.0 + f32(pos / p.q_orig_ctx));
}

/// (a, b) rotated by the angle whose (cos, sin) is `cs`.
fn rot(a: vec2<f32>, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.x * cs.x - a.y * cs.y, a.y * cs.x + a.x * cs.y);
}

/// Rotates pair i of the head at `base` of x in place, with the query scaling.
fn rope_x_pair(base: u32, pos: u32, i: u32) {
    let d = pair_dims(i);
    var r = vec2<f32>(x[base + d.x], x[base + d.y]);
    if (d.z != 0u) { r = rot(r, cos_sin(pos, i)); }
    r *= q_scale(pos);
    x[base + d.x] = r.x;
    x[base + d.y] = r.y;
}

@compute @workgroup_size(WG)
fn rope_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let j = job(wid, nwg, lid, p.n_heads);
    if (!j.ok) { return; }
    rope_x_pair(j.t * p.x_stride + p.x_offset + j.h * p.head_dim, j.pos, j.i);
}

@compute @workgroup_size(WG)
fn rope_kv_store(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let j = job(wid, nwg, lid, p.n_heads);
    if (!j.ok) { return; }
    kv_store_pair(j, j.pos);
}

/// `rope_kv_store` of pair `j.i` of a k head (rotated at `pos`) and the same dims of v.
fn kv_store_pair(j: Job, pos: u32) {
    let d = pair_dims(j.i);
    let kb = j.t * p.x_stride + p.x_offset + j.h * p.head_dim;
    let vb = j.t * p.v_stride + p.v_offset + j.h * p.head_dim;
    let cb = j.row * p.cache_stride + j.h * p.head_dim;
    let k = k_pair(vec2<f32>(k_in[kb + d.x], k_in[kb + d.y]), pos, j.i);
    k_cache[cb + d.x] = k.x;
    k_cache[cb + d.y] = k.y;
    v_cache[cb + d.x] = v[vb + d.x];
    v_cache[cb + d.y] = v[vb + d.y];
}

/// Pair i (dims `pair_dims(i)`) of a k row, rotated if it is among the rotated pairs.
fn k_pair(k: vec2<f32>, pos: u32, i: u32) -> vec2<f32> {
    if (pair_dims(i).z == 0u) { return k; }
    return rot(k, cos_sin(pos, i));
}

/// Dims d and d + 1 of the f16 cache word: the partner of each dim (its rotation pair in the
/// neox layout) and the two rotated values, from the k row's values `k` at d, d + 1 and
/// `partners` at their partners (`neox_partners`), the pair of dim d turned by position
/// `pos.x` and that of d + 1 by `pos.y`. Adjacent pairs are the word itself.
fn k_word(k: vec2<f32>, partners: vec2<f32>, pos: vec2<u32>, d: u32) -> vec2<f32> {
    if (d >= p.n_rot) { return k; }
    if (p.neox == 0u) { return rot(k, cos_sin(pos.x, d / 2u)); }
    return vec2<f32>(neox_dim(k.x, partners.x, pos.x, d), neox_dim(k.y, partners.y, pos.y, d + 1u));
}

/// Partners of dims d and d + 1 (< n_rot) in the neox layout: d +- n_rot / 2.
fn neox_partners(d: u32) -> vec2<u32> {
    let h = p.n_rot / 2u;
    return vec2<u32>(select(d - h, d + h, d < h), select(d + 1u - h, d + 1u + h, d + 1u < h));
}

/// Dim d of a neox-rotated row: d * cos -+ partner * sin.
fn neox_dim(x_d: f32, partner: f32, pos: u32, d: u32) -> f32 {
    let h = p.n_rot / 2u;
    let first = d < h;
    let cs = cos_sin(pos, select(d - h, d, first));
    return select(x_d * cs.x + partner * cs.y, x_d * cs.x - partner * cs.y, first);
}

@compute @workgroup_size(WG)
fn rope_kv_store_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let j = job(wid, nwg, lid, p.n_heads);  // j.i: word of the head (dims 2i, 2i + 1)
    if (!j.ok) { return; }
    kv_store_word(j, vec2<u32>(j.pos, j.pos));
}

/// `rope_kv_store_f16` of word `j.i` (dims 2i, 2i + 1) of a k head, the pair of each dim
/// turned by its entry of `pos`, and the same word of v.
fn kv_store_word(j: Job, pos: vec2<u32>) {
    let d = 2u * j.i;
    let kb = j.t * p.x_stride + p.x_offset + j.h * p.head_dim;
    let vb = j.t * p.v_stride + p.v_offset + j.h * p.head_dim;
    let cw = (j.row * p.cache_stride + j.h * p.head_dim + d) / 2u;
    var partners = vec2<f32>(0.0);
    if (p.neox != 0u && d < p.n_rot) {
        let pd = neox_partners(d);
        partners = vec2<f32>(k_in[kb + pd.x], k_in[kb + pd.y]);
    }
    let k = k_word(vec2<f32>(k_in[kb + d], k_in[kb + d + 1u]), partners, pos, d);
    k_cache_h[cw] = pack2x16float(k);
    v_cache_h[cw] = pack2x16float(vec2<f32>(v[vb + d], v[vb + d + 1u]));
}

/// The q part of a fused pass: rotates q's pair if `j` is one; true when done with `j`.
fn qkv_rotate_q(j: Job, pos: u32) -> bool {
    if (j.ok && j.h < p.n_q) { rope_x_pair(j.t * p.x_stride + j.h * p.head_dim, pos, j.i); }
    return !j.ok || j.h < p.n_q;
}

@compute @workgroup_size(WG)
fn rope_qkv_store(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let j = job(wid, nwg, lid, p.n_q + p.n_heads);
    let pos = j.pos;
    if (qkv_rotate_q(j, pos)) { return; }
    let h = j.h - p.n_q;
    let d = pair_dims(j.i);
    let kb = j.t * p.x_stride + p.x_offset + h * p.head_dim;
    let vb = j.t * p.x_stride + p.v_offset + h * p.head_dim;
    let cb = j.row * p.cache_stride + h * p.head_dim;
    let k = k_pair(vec2<f32>(x[kb + d.x], x[kb + d.y]), pos, j.i);
    qkv_k_cache[cb + d.x] = k.x;
    qkv_k_cache[cb + d.y] = k.y;
    qkv_v_cache[cb + d.x] = x[vb + d.x];
    qkv_v_cache[cb + d.y] = x[vb + d.y];
}

@compute @workgroup_size(WG)
fn rope_qkv_store_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let j = job(wid, nwg, lid, p.n_q + p.n_heads);  // k heads: j.i a word
    let pos = j.pos;
    if (qkv_rotate_q(j, pos)) { return; }
    let h = j.h - p.n_q;
    let d = 2u * j.i;
    let kb = j.t * p.x_stride + p.x_offset + h * p.head_dim;
    let vb = j.t * p.x_stride + p.v_offset + h * p.head_dim;
    let cw = (j.row * p.cache_stride + h * p.head_dim + d) / 2u;
    var partners = vec2<f32>(0.0);
    if (p.neox != 0u && d < p.n_rot) {
        let pd = neox_partners(d);
        partners = vec2<f32>(x[kb + pd.x], x[kb + pd.y]);
    }
    let k = k_word(vec2<f32>(x[kb + d], x[kb + d + 1u]), partners, vec2<u32>(pos, pos), d);
    qkv_k_cache_h[cw] = pack2x16float(k);
    qkv_v_cache_h[cw] = pack2x16float(vec2<f32>(x[vb + d], x[vb + d + 1u]));
}

// ---- Interleaved M-RoPE ----

/// The axis (0: t, 1: h, 2: w) whose position turns rotated pair i.
fn mrope_axis(i: u32) -> u32 {
    let r = i % 3u;
    if (r == 1u && i < 3u * p.mrope_h) { return 1u; }
    if (r == 2u && i < 3u * p.mrope_w) { return 2u; }
    return 0u;
}

/// The rotated pair of head dim x (< n_rot).
fn pair_of_dim(x: u32) -> u32 {
    let h = p.n_rot / 2u;
    if (p.neox == 0u) { return x / 2u; }
    return select(x - h, x, x < h);
}

@compute @workgroup_size(WG)
fn rope_inplace_mrope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let j = job(wid, nwg, lid, p.n_heads);
    if (!j.ok) { return; }
    let pos = q_pos[mrope_axis(j.i) * j.n_tok + j.t];
    rope_x_pair(j.t * p.x_stride + p.x_offset + j.h * p.head_dim, pos, j.i);
}

@compute @workgroup_size(WG)
fn rope_kv_store_mrope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let j = job(wid, nwg, lid, p.n_heads);
    if (!j.ok) { return; }
    kv_store_pair(j, kv_pos[mrope_axis(j.i) * j.n_tok + j.t]);
}

@compute @workgroup_size(WG)
fn rope_kv_store_mrope_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let j = job(wid, nwg, lid, p.n_heads);
    if (!j.ok) { return; }
    let d = 2u * j.i;
    var pos = vec2<u32>(0u);
    if (d < p.n_rot) {
        pos = vec2<u32>(kv_pos[mrope_axis(pair_of_dim(d)) * j.n_tok + j.t],
                        kv_pos[mrope_axis(pair_of_dim(d + 1u)) * j.n_tok + j.t]);
    }
    kv_store_word(j, pos);
}
