//! Token embedding gather: out[i][c] = W[ids[i]][c] for a weight in any format of
//! `quant.wgsl` (prepended), decoded 8 values at a time (llama.cpp `get_rows`).
//! One workgroup per id; a row-split weight is one dispatch per part and each part writes
//! only the ids it holds. Ids >= total_rows read nothing and give a zero row (written by the
//! dispatch with `zero_oob` = 1, the first part).
//! Grid: x/y = ids (`linear_workgroup`, common.wgsl).

struct Params {
    row_words: u32,
    bpr: u32,
    scale_base: u32,
    _pad0: u32,
    n: u32,          // number of ids
    cols: u32,
    row_offset: u32, // first row of this part
    rows: u32,       // rows of this part
    total_rows: u32, // rows of the whole weight
    zero_oob: u32,   // this dispatch writes the zero rows of out-of-range ids
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// binding 1: the weight `w`, declared in quant.wgsl.
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn embedding(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg);
    if (i >= p.n) { return; }
    let id = ids[i];
    let base = i * p.cols;
    if (id >= p.total_rows) {
        if (p.zero_oob == 1u) {
            for (var c = lid; c < p.cols; c += WG) { out[base + c] = 0.0; }
        }
        return;
    }
    if (id < p.row_offset || id - p.row_offset >= p.rows) { return; }
    let wl = WLayout(p.row_words, p.bpr, p.scale_base);
    let row = id - p.row_offset;
    let groups = p.cols / 8u;
    for (var g = lid; g < groups; g += WG) {
        let v = wdecode8(wl, row, g * 8u);
        let o = base + g * 8u;
        for (var j = 0u; j < 4u; j++) {
            out[o + j] = v.a[j];
            out[o + 4u + j] = v.b[j];
        }
    }
    // Plain types only: a row tail shorter than 8.
    for (var c = groups * 8u + lid; c < p.cols; c += WG) {
        out[base + c] = wdecode1(wl, row, c);
    }
}
