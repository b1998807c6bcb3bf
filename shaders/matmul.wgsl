//! Tiled matrix product for prefill: Y[y_row0 + m][row_offset + n] = sum_k X[x_row0 + m][k] * W[n][k], W in any
//! format of `quant.wgsl` (prepended). Classic shared-memory SGEMM tiling (as in CUTLASS'
//! and llama.cpp's `mul_mat` WebGPU/Vulkan shaders): a 256-thread workgroup computes a
//! BM x BN = 64 x 64 output tile, stepping K by BK = 32; each step stages an X tile and a
//! dequantized W tile (8 values per thread, decoded once) in workgroup memory, k-major, and
//! each thread accumulates a 4 x 4 register block. Edges are bounds-checked.
//! Grid: x/y = N tiles (`linear_workgroup`, common.wgsl), z = M tiles.
//!
//! Precision (a prelude from `src/kernels/matmul.rs` defines the tile type `MMT` and `MM_F16`):
//! f32 tiles and f32 accumulation (the default); or, with `shader-f16`, f16 tiles (X clamped
//! to ±65504) and f16 products summed in f16 over one BK = 32 step, each step's partial
//! block then added to f32 totals (a 32-term f16 sum bounds the f16 rounding growth).

struct Params {
    row_words: u32,
    bpr: u32,
    scale_base: u32,
    _pad0: u32,
    m: u32,          // rows of X
    n: u32,          // rows of this weight part
    k: u32,          // columns of X and W
    row_offset: u32, // first output feature of this part
    y_stride: u32,   // floats per row of Y (all rows of the weight)
    x_stride: u32,   // floats per row of X
    x_row0: u32,     // first row of X read (row m of the product reads X row x_row0 + m)
    y_row0: u32,     // first row of Y written
}

@group(0) @binding(0) var<uniform> p: Params;
// binding 1: the weight `w`, declared in quant.wgsl.
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

override ADD: u32 = 0u; // 1: add the product into y (the residual add)
const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 32u;

// k-major tiles: [BK][BM / 4] and [BK][BN / 4] vec4s (2 x 8 KiB).
var<workgroup> xs: array<vec4<MMT>, 512>;
var<workgroup> ws: array<vec4<MMT>, 512>;

/// A staged value in the tile type (f16: clamped to the finite range first).
fn mmt(v: f32) -> MMT {
    if (MM_F16) { return MMT(clamp(v, -65504.0, 65504.0)); }
    return MMT(v);
}

/// Stores 8 values of tile row `r` at k offsets kq..kq+7 into a k-major tile.
fn put_x(r: u32, kq: u32, v: W8) {
    for (var i = 0u; i < 4u; i++) {
        xs[(kq + i) * 16u + r / 4u][r % 4u] = mmt(v.a[i]);
        xs[(kq + 4u + i) * 16u + r / 4u][r % 4u] = mmt(v.b[i]);
    }
}

fn put_w(r: u32, kq: u32, v: W8) {
    for (var i = 0u; i < 4u; i++) {
        ws[(kq + i) * 16u + r / 4u][r % 4u] = mmt(v.a[i]);
        ws[(kq + 4u + i) * 16u + r / 4u][r % 4u] = mmt(v.b[i]);
    }
}

@compute @workgroup_size(256)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let wl = WLayout(p.row_words, p.bpr, p.scale_base);
    let n0 = linear_workgroup(wid, nwg) * BN;
    let m0 = wid.z * BM;
    if (n0 >= p.n) { return; }
    let tm = lid / 16u; // output rows m0 + 4 tm ..
    let tn = lid % 16u; // output cols n0 + 4 tn ..
    let lr = lid / 4u;        // loader: tile row
    let lk = (lid % 4u) * 8u; // loader: k offset in the tile
    // f32: `part` is the accumulator. f16: `part` sums one K step, then moves into `acc`.
    var acc: array<vec4<f32>, 4>;
    var part: array<vec4<MMT>, 4>;
    for (var i = 0u; i < 4u; i++) {
        acc[i] = vec4<f32>(0.0);
        part[i] = vec4<MMT>(0.0);
    }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        let k = k0 + lk;
        let m = m0 + lr;
        var xv = W8(vec4<f32>(0.0), vec4<f32>(0.0));
        if (m < p.m) {
            let o = (p.x_row0 + m) * p.x_stride + k;
            if (k + 8u <= p.k) {
                xv = W8(vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u]),
                        vec4<f32>(x[o + 4u], x[o + 5u], x[o + 6u], x[o + 7u]));
            } else {
                for (var i = 0u; i < 4u; i++) {
                    if (k + i < p.k) { xv.a[i] = x[o + i]; }
                    if (k + 4u + i < p.k) { xv.b[i] = x[o + 4u + i]; }
                }
            }
        }
        put_x(lr, lk, xv);
        let n = n0 + lr;
        var wv = W8(vec4<f32>(0.0), vec4<f32>(0.0));
        if (n < p.n) {
            if (k + 8u <= p.k) {
                wv = wdecode8(wl, n, k);
            } else {
                // Plain types only: K not a multiple of 8.
                for (var i = 0u; i < 4u; i++) {
                    if (k + i < p.k) { wv.a[i] = wdecode1(wl, n, k + i); }
                    if (k + 4u + i < p.k) { wv.b[i] = wdecode1(wl, n, k + 4u + i); }
                }
            }
        }
        put_w(lr, lk, wv);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a = xs[kk * 16u + tm];
            let b = ws[kk * 16u + tn];
            part[0] += a.x * b;
            part[1] += a.y * b;
            part[2] += a.z * b;
            part[3] += a.w * b;
        }
        if (MM_F16) {
            for (var i = 0u; i < 4u; i++) {
                acc[i] += vec4<f32>(part[i]);
                part[i] = vec4<MMT>(0.0);
            }
        }
        workgroupBarrier();
    }
    if (!MM_F16) {
        for (var i = 0u; i < 4u; i++) { acc[i] = vec4<f32>(part[i]); }
    }

    for (var i = 0u; i < 4u; i++) {
        let m = m0 + tm * 4u + i;
        if (m >= p.m) { break; }
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + tn * 4u + j;
            if (n < p.n) {
                let o = (p.y_row0 + m) * p.y_stride + p.row_offset + n;
                y[o] = acc[i][j] + select(0.0, y[o], ADD == 1u);
            }
        }
    }
}
