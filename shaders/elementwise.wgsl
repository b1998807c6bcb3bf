//! Element-wise kernels over f32 vectors: residual add and the SiLU-gated MLP activation.
//! Reference: transformers' `MistralMLP`: down(silu(gate(x)) * up(x)).

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;

const WG: u32 = 256u;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

/// b += a (the residual stream is `b`).
@compute @workgroup_size(WG)
fn add_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { b[i] = b[i] + a[i]; }
}

/// b = silu(b) * a, with b holding gate(x) and a holding up(x).
@compute @workgroup_size(WG)
fn silu_mul_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        let g = b[i];
        b[i] = g / (1.0 + exp(-g)) * a[i];
    }
}
