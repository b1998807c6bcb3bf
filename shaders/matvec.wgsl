//! Matrix-vector products for decode: y[t][row_offset + r] = sum_k W[r][k] * x[t][k] for a few
//! tokens t, W in any format of `quant.wgsl` (prepended). A GEMV in the style of llama.cpp's
//! `mul_mat_vec` kernels: a workgroup owns RPW rows, TPR threads per row stride over the row
//! in groups of 8 weights (consecutive threads read consecutive weight words), each weight
//! group is decoded once and dotted with up to MAXT token vectors, and the per-thread f32
//! partial sums are reduced in workgroup memory (no subgroups needed).
//! Grid: x/y = row groups (linear id wid.x + wid.y * nwg.x), z = token slices of MAXT.

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

const TPR: u32 = 64u;
const RPW: u32 = 4u;
const WG: u32 = 256u; // TPR * RPW
const MAXT: u32 = 8u;

var<workgroup> red: array<f32, 2048>; // [MAXT][WG]

fn x4(o: u32) -> vec4<f32> {
    return vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u]);
}

@compute @workgroup_size(256)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let wl = WLayout(p.row_words, p.bpr, p.scale_base);
    let lane = lid % TPR;
    let row = (wid.x + wid.y * nwg.x) * RPW + lid / TPR;
    let t0 = wid.z * MAXT;
    let nt = min(MAXT, p.n_tok - t0);
    var acc: array<f32, MAXT>;
    for (var t = 0u; t < MAXT; t++) { acc[t] = 0.0; }
    if (row < p.rows) {
        let groups = p.cols / 8u;
        for (var g = lane; g < groups; g += TPR) {
            let k = g * 8u;
            let v = wdecode8(wl, row, k);
            for (var t = 0u; t < nt; t++) {
                let xo = (t0 + t) * p.x_stride + k;
                acc[t] += dot8(v, x4(xo), x4(xo + 4u));
            }
        }
        // Plain types only: a row tail shorter than 8.
        for (var k = groups * 8u + lane; k < p.cols; k += TPR) {
            let v = wdecode1(wl, row, k);
            for (var t = 0u; t < nt; t++) {
                acc[t] += v * x[(t0 + t) * p.x_stride + k];
            }
        }
    }
    for (var t = 0u; t < MAXT; t++) { red[t * WG + lid] = acc[t]; }
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            for (var t = 0u; t < nt; t++) { red[t * WG + lid] += red[t * WG + lid + s]; }
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < p.rows) {
        for (var t = 0u; t < nt; t++) {
            y[(t0 + t) * p.y_stride + p.row_offset + row] = red[t * WG + lid];
        }
    }
}
