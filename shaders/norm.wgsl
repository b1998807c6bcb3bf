//! RMSNorm over the rows of a row-major f32 matrix: y = x / sqrt(mean(x^2) + eps) * w.
//! Reference: Zhang & Sennrich 2019; transformers' `MistralRMSNorm` (variance in f32).
//! One workgroup of WG invocations per row (256, or 64 on CPU adapters: `src/backend/gpu/norm.rs`);
//! a tree reduction in workgroup memory (no subgroups needed).

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

override WG: u32 = 256u; // a power of two <= 256
var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(WG)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.dim;
    var acc = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let v = x[base + i];
        acc += v * v;
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { partial[lid] += partial[lid + s]; }
        workgroupBarrier();
    }
    let scale = inverseSqrt(partial[0] / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += WG) {
        y[base + i] = x[base + i] * scale * w[i];
    }
}
