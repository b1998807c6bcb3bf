//! Matrix-vector products for decode: y[t][row_offset + r] = sum_k W[r][k] * x[t][k] for a few
//! tokens t, W in any format of `quant.wgsl` (prepended). A GEMV in the style of llama.cpp's
//! `mul_mat_vec` kernels: a workgroup owns RPW rows, TPR threads per row stride over the row
//! in groups of 8 weights (consecutive threads read consecutive weight words), and the
//! per-thread f32 partial sums are reduced in workgroup memory (no subgroups needed). Each
//! thread keeps one scalar accumulator: private arrays indexed at run time spill to memory
//! on CPU adapters and cost 10x there.
//! Grid: x/y = row groups (linear id wid.x + wid.y * nwg.x), z = tokens.

struct Params {
    row_words: u32,
    bpr: u32,
    scale_base: u32,
    _pad0: u32,
    rows: u32,       // rows of this weight part
    cols: u32,
    n_tok: u32,
    row_offset: u32, // first output feature of this part
    y_stride: u32,   // floats per output row (all rows of the weight)
    x_stride: u32,   // floats per input row
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// binding 1: the weight `w`, declared in quant.wgsl.
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const TPR: u32 = 32u;
const RPW: u32 = 8u;
const WG: u32 = 256u; // TPR * RPW

var<workgroup> red: array<f32, WG>;

fn x4(o: u32) -> vec4<f32> {
    return vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u]);
}

@compute @workgroup_size(256)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let wl = WLayout(p.row_words, p.bpr, p.scale_base);
    let lane = lid % TPR;
    let row = (wid.x + wid.y * nwg.x) * RPW + lid / TPR;
    let xo = wid.z * p.x_stride;
    var acc = 0.0;
    if (row < p.rows) {
        let groups = p.cols / 8u;
        for (var g = lane; g < groups; g += TPR) {
            let k = g * 8u;
            acc += dot8(wdecode8(wl, row, k), x4(xo + k), x4(xo + k + 4u));
        }
        // Plain types only: a row tail shorter than 8.
        for (var k = groups * 8u + lane; k < p.cols; k += TPR) {
            acc += wdecode1(wl, row, k) * x[xo + k];
        }
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s >>= 1u) {
        if (lane < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    if (lane == 0u && row < p.rows) {
        y[wid.z * p.y_stride + p.row_offset + row] = red[lid];
    }
}
