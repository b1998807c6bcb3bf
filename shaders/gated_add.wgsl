//! Gated residual add of Mllama's cross-attention layers:
//! x[t][i] += tanh(gate[0]) * row_mask[t] * y[t][i] (row_mask read only when `use_row_mask`).
//! The gate is a 1-element weight buffer, so tanh is taken here and the scale never leaves
//! the GPU. Reference: transformers' `MllamaCrossAttentionDecoderLayer`.

struct Params {
    n: u32,            // n_tok * dim
    dim: u32,
    use_row_mask: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> row_mask: array<f32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn gated_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i >= p.n) { return; }
    // tanh saturates to +-1 in f32 well before 20; the clamp keeps exp-based tanh finite.
    var s = tanh(clamp(gate[0], -20.0, 20.0));
    if (p.use_row_mask != 0u) { s = s * row_mask[i / p.dim]; }
    x[i] = x[i] + s * y[i];
}
