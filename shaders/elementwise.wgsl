//! Element-wise kernels over f32 vectors: residual add and the SiLU-gated MLP activation.
//! Reference: transformers' `MistralMLP`: down(silu(gate(x)) * up(x)).

struct Params {
    n: u32,
    half: u32,     // silu_mul_halves: outputs per row
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;

const WG: u32 = 256u;

/// b += a (the residual stream is `b`).
@compute @workgroup_size(WG)
fn add_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i < p.n) { b[i] = b[i] + a[i]; }
}

/// b = silu(b) * a, with b holding gate(x) and a holding up(x).
@compute @workgroup_size(WG)
fn silu_mul_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i < p.n) {
        let g = b[i];
        b[i] = g / (1.0 + exp(-g)) * a[i];
    }
}

/// b[t][r] = silu(a[t][r]) * a[t][half + r] for rows t of `2 half` values in `a` (the output
/// of a stacked [gate; up] weight) and of `half` values in `b`; i = t * half + r < n.
@compute @workgroup_size(WG)
fn silu_mul_halves(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i < p.n) {
        let o = (i / p.half) * 2u * p.half + i % p.half;
        let g = a[o];
        b[i] = g / (1.0 + exp(-g)) * a[o + p.half];
    }
}

/// b[t][r] = a[t][r] for rows t of `2 half` values in `a` and `half` in `b`: the first half of
/// each row (Qwen3.5's gated attention: the query of each head's `[q | gate]`).
@compute @workgroup_size(WG)
fn copy_first_halves(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i < p.n) {
        b[i] = a[(i / p.half) * 2u * p.half + i % p.half];
    }
}

/// b[t][r] *= sigmoid(a[t][half + r]): gates rows of `half` values in `b` by the second half of
/// the rows of `2 half` in `a` (Qwen3.5's attention output times sigmoid(gate)).
@compute @workgroup_size(WG)
fn sigmoid_mul_second_halves(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i < p.n) {
        let g = a[(i / p.half) * 2u * p.half + p.half + i % p.half];
        b[i] = b[i] / (1.0 + exp(-g));
    }
}

// gelu_inplace only: the vector it rewrites (its own binding list, [uniform, read_write]).
@group(0) @binding(1) var<storage, read_write> xg: array<f32>;

/// erfc(z) for z >= 0: Numerical Recipes (2nd ed., §6.2) `erfcc`, a Chebyshev fit
/// `t * exp(-z^2 + P(t))`, t = 1/(1 + z/2), fractional error < 1.2e-7 for all z (before f32
/// rounding). The relative bound keeps the far negative GELU tail accurate too.
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    return t * exp(-z * z + poly);
}

/// x = gelu(x) = 0.5 x (1 + erf(x / sqrt 2)) (exact erf form, torch `GELU(approximate='none')`):
/// 1 + erf(u) = 2 - erfc(u) for u >= 0 and erfc(-u) for u < 0.
@compute @workgroup_size(WG)
fn gelu_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i < p.n) {
        let v = xg[i];
        let u = v * 0.70710678118654752;
        let e = erfc_pos(abs(u));
        let one_plus_erf = select(e, 2.0 - e, u >= 0.0);
        xg[i] = 0.5 * v * one_plus_erf;
    }
}
