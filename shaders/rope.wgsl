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
//! Angles: `angle = f32(pos) * inv_freq[i]` rounded to f32 exactly as transformers does, then
//! reduced modulo 2*pi with a three-part Cody-Waite split (`reduce_angle`, common.wgsl; exact
//! for |angle| < 2^16 * 2*pi) so that GPU `cos`/`sin`, only accurate on [-pi, pi], agree with
//! a CPU f32 `cos(angle)`.
//!
//! One invocation per (token, head, pair). `rope_inplace` rotates q or k in place;
//! `rope_kv_store` rotates new k rows and writes them, with the matching v rows, into the KV
//! cache at row `step.kv_start + t`; `rope_kv_store_f16` does the same for an f16 cache (pairs
//! of halves packed in a u32 by `pack2x16float`, which needs no `shader-f16`): one invocation
//! per (token, head, word of two adjacent dims), each dim rotated with its own partner.

// `struct Step` comes from `step.wgsl`, prepended by the Rust side.

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
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
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

const WG: u32 = 256u;

// (cos, sin) * attn_factor of frequency i at position pos.
fn cos_sin(pos: u32, i: u32) -> vec2<f32> {
    let r = reduce_angle(f32(pos) * inv_freq[i]);
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
}

fn job(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Job {
    let g = linear_invocation(wid, nwg, lid, WG);
    let half_dim = p.head_dim / 2u;
    let per_tok = p.n_heads * half_dim;
    let t = g / per_tok;
    let rem = g % per_tok;
    return Job(t < min(step.n_tok, p.max_tok), t, rem / half_dim, rem % half_dim);
}

fn q_scale(pos: u32) -> f32 {
    if (p.q_beta == 0.0 || p.q_orig_ctx == 0u) { return 1.0; }
    return 1.0 + p.q_beta * log(1.0 + f32(pos / p.q_orig_ctx));
}

@compute @workgroup_size(WG)
fn rope_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let j = job(wid, nwg, lid);
    if (!j.ok) { return; }
    let pos = step.rope_pos0 + j.t;
    let d = pair_dims(j.i);
    let base = j.t * p.x_stride + p.x_offset + j.h * p.head_dim;
    let x0 = x[base + d.x];
    let x1 = x[base + d.y];
    let scale = q_scale(pos);
    if (d.z == 0u) {
        x[base + d.x] = x0 * scale;
        x[base + d.y] = x1 * scale;
        return;
    }
    let cs = cos_sin(pos, j.i);
    x[base + d.x] = (x0 * cs.x - x1 * cs.y) * scale;
    x[base + d.y] = (x1 * cs.x + x0 * cs.y) * scale;
}

@compute @workgroup_size(WG)
fn rope_kv_store(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let j = job(wid, nwg, lid);
    if (!j.ok) { return; }
    let pos = step.rope_pos0 + j.t;
    let d = pair_dims(j.i);
    let kb = j.t * p.x_stride + p.x_offset + j.h * p.head_dim;
    let vb = j.t * p.v_stride + p.v_offset + j.h * p.head_dim;
    let cb = (step.kv_start + j.t) * p.cache_stride + j.h * p.head_dim;
    let k0 = k_in[kb + d.x];
    let k1 = k_in[kb + d.y];
    if (d.z == 0u) {
        k_cache[cb + d.x] = k0;
        k_cache[cb + d.y] = k1;
    } else {
        let cs = cos_sin(pos, j.i);
        k_cache[cb + d.x] = k0 * cs.x - k1 * cs.y;
        k_cache[cb + d.y] = k1 * cs.x + k0 * cs.y;
    }
    v_cache[cb + d.x] = v[vb + d.x];
    v_cache[cb + d.y] = v[vb + d.y];
}

// Dim d (within the head, < n_rot) of the rotated k row at kb: d * cos + sign * partner * sin.
fn rotated_k(kb: u32, pos: u32, d: u32) -> f32 {
    let half_rot = p.n_rot / 2u;
    var i = d / 2u;
    var partner = d ^ 1u;
    var first = d % 2u == 0u;
    if (p.neox != 0u) {
        first = d < half_rot;
        i = select(d - half_rot, d, first);
        partner = select(d - half_rot, d + half_rot, first);
    }
    let cs = cos_sin(pos, i);
    let x = k_in[kb + d];
    let y = k_in[kb + partner];
    if (first) { return x * cs.x - y * cs.y; }
    return x * cs.x + y * cs.y;
}

@compute @workgroup_size(WG)
fn rope_kv_store_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let j = job(wid, nwg, lid);  // j.i: word of the head (dims 2i, 2i + 1)
    if (!j.ok) { return; }
    let pos = step.rope_pos0 + j.t;
    let d = 2u * j.i;
    let kb = j.t * p.x_stride + p.x_offset + j.h * p.head_dim;
    let vb = j.t * p.v_stride + p.v_offset + j.h * p.head_dim;
    let cw = ((step.kv_start + j.t) * p.cache_stride + j.h * p.head_dim + d) / 2u;
    var k = vec2<f32>(k_in[kb + d], k_in[kb + d + 1u]);
    if (d < p.n_rot) {
        if (p.neox == 0u) {
            let cs = cos_sin(pos, j.i);
            k = vec2<f32>(k.x * cs.x - k.y * cs.y, k.y * cs.x + k.x * cs.y);
        } else {
            k = vec2<f32>(rotated_k(kb, pos, d), rotated_k(kb, pos, d + 1u));
        }
    }
    k_cache_h[cw] = pack2x16float(k);
    v_cache_h[cw] = pack2x16float(vec2<f32>(v[vb + d], v[vb + d + 1u]));
}
