//! Kernels of the Mllama (Llama 3.2 Vision) encoder: assembling the tile sequences (class
//! token + patch embeddings), the tanh-gated per-tile and position embedding adds, the
//! tanh-gated residual add of the global layers, and a strided column scatter (the
//! interleaved intermediate-layer features). Gates are 1-element weights read here, so a
//! recorded pass stays valid whenever the weights are filled.
//! Reference: transformers' `modeling_mllama.py` (`MllamaPrecomputedAspectRatioEmbedding`,
//! `MllamaPrecomputedPositionEmbedding`, `MllamaVisionEncoderLayer` with `is_gated`,
//! `MllamaVisionModel.forward`).

struct Params {
    n: u32,             // elements processed
    dim: u32,           // values per row
    rows_per_tile: u32, // assemble / gated_pos: tokens per tile; tile_add: rows per table vector
    row0: u32,          // assemble: rows holding tiles (the rest are zeroed); tile_add: first row of x;
                        // scatter_cols: first source row
    stride: u32,        // scatter_cols: values per output row
    offset: u32,        // scatter_cols: output column of source column 0
    step: u32,          // scatter_cols: output columns between source columns
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in1: array<f32>;
@group(0) @binding(2) var<storage, read> in2: array<f32>;
@group(0) @binding(3) var<storage, read> in3: array<f32>;
// Outputs: each entry point's last binding.
@group(0) @binding(2) var<storage, read_write> out2: array<f32>;
@group(0) @binding(3) var<storage, read_write> out3: array<f32>;
@group(0) @binding(4) var<storage, read_write> out4: array<f32>;

const WG: u32 = 256u;

/// [uniform, patches, class, x]: row r < row0 of x is tile r / rows_per_tile's token
/// r % rows_per_tile: the class embedding (token 0) or patch embedding `token - 1` of the
/// tile (patches `[tiles][rows_per_tile - 1][dim]`); rows >= row0 (padding) become 0.
@compute @workgroup_size(WG)
fn assemble(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i >= p.n) { return; }
    let r = i / p.dim;
    let c = i % p.dim;
    var v = 0.0;
    if (r < p.row0) {
        let tile = r / p.rows_per_tile;
        let slot = r % p.rows_per_tile;
        if (slot == 0u) {
            v = in2[c];
        } else {
            v = in1[(tile * (p.rows_per_tile - 1u) + slot - 1u) * p.dim + c];
        }
    }
    out3[i] = v;
}

/// [uniform, table, gate, x]: x[row0 + r] += tanh(gate) * table[r / rows_per_tile] for the
/// n / dim rows r (the pre/post tile embeddings: one vector per tile).
@compute @workgroup_size(WG)
fn tile_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i >= p.n) { return; }
    let r = i / p.dim;
    let c = i % p.dim;
    out3[(p.row0 + r) * p.dim + c] += tanh(in2[0]) * in1[(r / p.rows_per_tile) * p.dim + c];
}

/// [uniform, pos, tile_pos, gate, x]: x[i] += (1 - tanh(g)) * pos[token] + tanh(g) * tile_pos[i]
/// (pos `[rows_per_tile][dim]`, shared by the tiles; tile_pos one row per x row).
@compute @workgroup_size(WG)
fn gated_pos(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i >= p.n) { return; }
    let slot = (i / p.dim) % p.rows_per_tile;
    let g = tanh(in3[0]);
    out4[i] += (1.0 - g) * in1[slot * p.dim + i % p.dim] + g * in2[i];
}

/// [uniform, y, gate, x]: x[i] += tanh(gate) * y[i].
@compute @workgroup_size(WG)
fn gated_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i >= p.n) { return; }
    out3[i] += tanh(in2[0]) * in1[i];
}

/// [uniform, src, out]: out[r * stride + offset + c * step] = src[(row0 + r) * dim + c].
@compute @workgroup_size(WG)
fn scatter_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i >= p.n) { return; }
    out2[(i / p.dim) * p.stride + p.offset + (i % p.dim) * p.step] = in1[p.row0 * p.dim + i];
}
