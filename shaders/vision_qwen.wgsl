//! Kernels of the Qwen2-VL-family vision encoder (Qwen3-VL / Qwen3.5): LayerNorm with bias,
//! a row-broadcast bias add, GELU (tanh form), a column slice copy and a weighted row gather.
//! Reference: transformers' `Qwen3_5VisionBlock` (`nn.LayerNorm`, eps 1e-6), `Qwen3_5VisionMLP`
//! (`gelu_pytorch_tanh`), `fast_pos_embed_interpolate` (four weighted rows of the learned
//! position table per patch) and the merger's reordering of patches into 2x2 windows.

struct Params {
    rows: u32,
    dim: u32,     // layer_norm / add_bias / copy_cols / gather_rows: values per output row
    eps: f32,     // layer_norm
    n: u32,       // add_bias / gelu_tanh: elements; gather_rows: taps per output row
    stride: u32,  // copy_cols / gather_rows: values per source row
    offset: u32,  // copy_cols: first source column
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// layer_norm: [uniform, x, w, b, y]
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

fn ln_reduce(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { partial[lid] += partial[lid + s]; }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

/// y[r] = (x[r] - mean) / sqrt(var + eps) * w + b (biased variance, two passes), one
/// workgroup per row.
@compute @workgroup_size(WG)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.dim;
    var acc = 0.0;
    for (var i = lid; i < p.dim; i += WG) { acc += x[base + i]; }
    let mean = ln_reduce(lid, acc) / f32(p.dim);
    var sq = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let d = x[base + i] - mean;
        sq += d * d;
    }
    let scale = inverseSqrt(ln_reduce(lid, sq) / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += WG) {
        y[base + i] = (x[base + i] - mean) * scale * w[i] + b[i];
    }
}

// add_bias: [uniform, bias, t]; copy_cols / gather_rows write t too.
@group(0) @binding(2) var<storage, read_write> t: array<f32>;

/// t[i] += bias[i % dim] for i < n.
@compute @workgroup_size(WG)
fn add_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i < p.n) { t[i] += x[i % p.dim]; }
}

/// t[r][c] = x[r * stride + offset + c] for r < rows, c < dim.
@compute @workgroup_size(WG)
fn copy_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i < p.rows * p.dim) {
        let r = i / p.dim;
        t[i] = x[r * p.stride + p.offset + i % p.dim];
    }
}

// gather_rows: [uniform, x (source rows), t (out), taps]
struct Tap {
    row: u32,
    weight: f32,
}
@group(0) @binding(3) var<storage, read> taps: array<Tap>;

/// t[r][c] = sum over k < n of taps[r*n + k].weight * x[taps[r*n + k].row * stride + c], the
/// taps summed in order.
@compute @workgroup_size(WG)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i < p.rows * p.dim) {
        let r = i / p.dim;
        let c = i % p.dim;
        var acc = 0.0;
        for (var k = 0u; k < p.n; k++) {
            let tap = taps[r * p.n + k];
            acc += tap.weight * x[tap.row * p.stride + c];
        }
        t[i] = acc;
    }
}

// gelu_tanh: [uniform, g]
@group(0) @binding(1) var<storage, read_write> g: array<f32>;

/// g[i] = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))) (PyTorch's `gelu(approximate="tanh")`),
/// with tanh(u) = 1 - 2 / (exp(2u) + 1), exact in the limits.
@compute @workgroup_size(WG)
fn gelu_tanh(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i < p.n) {
        let v = g[i];
        let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -20.0, 20.0);
        g[i] = 0.5 * v * (1.0 + (1.0 - 2.0 / (exp(2.0 * u) + 1.0)));
    }
}
