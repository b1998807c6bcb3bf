//! Tiled matrix product for prefill: Y[y_row0 + m][row_offset + n] = sum_k X[x_row0 + m][k] * W[n][k], W in any
//! format of `quant.wgsl` (prepended). Classic shared-memory SGEMM tiling (as in CUTLASS'
//! and llama.cpp's `mul_mat` WebGPU/Vulkan shaders): a 256-thread workgroup computes a
//! BM x BN output tile (BM tokens, BN = 64 features), stepping K by BK = 32; each step
//! stages an X tile and a dequantized W tile (8 values per loader slot, decoded once) in
//! workgroup memory, k-major, and each thread accumulates an RM x 4 register block
//! (RM = BM / 16). Edges are bounds-checked. Grid: x/y = N tiles (`linear_workgroup`,
//! common.wgsl), z = M tiles.
//!
//! Two shapes, chosen by a prelude from `src/backend/gpu/matmul.rs` (`MM_BM`, `MM_GPU`):
//! - CPU (lavapipe's tuning): 64 x 64 tiles, 4 x 4 blocks, four consecutive lanes load one
//!   row; load, barrier, products, barrier.
//! - GPU: 128 x 64 tiles, 8 x 4 blocks (32 accumulators per thread, half the tile loads per
//!   product of the CPU shape). The 128 side is M: each weight is decoded once per 128
//!   tokens (4 times per 512-token prefill chunk, a GPU's default) and the grid keeps N / 64
//!   workgroups per M tile, the most for short prompts; rows of M past the prompt cost products on zeros,
//!   no memory traffic. Tile k + 1 is read (and decoded) into registers before the
//!   products of tile k, so global latency overlaps the math. Consecutive lanes load
//!   consecutive rows at one k offset: a warp's transposing stores hit 32 consecutive words
//!   and its k-major reads are broadcasts (X) or 16 consecutive vec4s (W), so there are no
//!   bank conflicts without padding the rows.
//!
//! Precision (a prelude from `src/backend/gpu/matmul.rs` defines the tile type `MMT` and `MM_F16`):
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
const BM: u32 = MM_BM;
const BN: u32 = 64u;
const BK: u32 = 32u;
const RM: u32 = BM / 16u;   // output rows per thread (4 or 8), 4 columns each
const XSLOTS: u32 = BM / 64u; // X loader slots (8 values each) per thread
const XROW: u32 = BM / 4u;  // vec4s per k row of `xs`
const WROW: u32 = BN / 4u;

// k-major tiles: [BK][BM / 4] and [BK][BN / 4] vec4s (f32: 16 + 8 KiB on the GPU shape).
var<workgroup> xs: array<vec4<MMT>, BK * XROW>;
var<workgroup> ws: array<vec4<MMT>, BK * WROW>;

/// One K step's values of this thread's loader slots, in registers.
struct Staged {
    x: array<W8, XSLOTS>,
    w: W8,
}

/// Tile row and k offset (a multiple of 8) of loader slot `s` of a tile of `rows` rows.
fn slot(s: u32, rows: u32) -> vec2<u32> {
    if (MM_GPU) { return vec2<u32>(s % rows, s / rows * 8u); }
    return vec2<u32>(s / 4u, s % 4u * 8u);
}

/// Reads this thread's slots of the K tile at `k0`: X rows from `m0`, decoded W rows from
/// `n0`; zeros outside the matrices.
fn fetch(wl: WLayout, m0: u32, n0: u32, k0: u32, lid: u32) -> Staged {
    var st: Staged;
    for (var s = 0u; s < XSLOTS; s++) {
        let t = slot(lid + s * 256u, BM);
        let m = m0 + t.x;
        let k = k0 + t.y;
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
        st.x[s] = xv;
    }
    let t = slot(lid, BN);
    let n = n0 + t.x;
    let k = k0 + t.y;
    st.w = W8(vec4<f32>(0.0), vec4<f32>(0.0));
    if (n < p.n) {
        if (k + 8u <= p.k) {
            st.w = wdecode8(wl, n, k);
        } else {
            // Plain types only: K not a multiple of 8.
            for (var i = 0u; i < 4u; i++) {
                if (k + i < p.k) { st.w.a[i] = wdecode1(wl, n, k + i); }
                if (k + 4u + i < p.k) { st.w.b[i] = wdecode1(wl, n, k + 4u + i); }
            }
        }
    }
    return st;
}

/// A staged value in the tile type (f16: clamped to the finite range first).
fn mmt(v: f32) -> MMT {
    if (MM_F16) { return MMT(clamp(v, -65504.0, 65504.0)); }
    return MMT(v);
}

/// Stores the staged values into the k-major tiles (transposing each slot's 8 k values).
fn put(st: Staged, lid: u32) {
    for (var s = 0u; s < XSLOTS; s++) {
        let t = slot(lid + s * 256u, BM);
        for (var i = 0u; i < 4u; i++) {
            xs[(t.y + i) * XROW + t.x / 4u][t.x % 4u] = mmt(st.x[s].a[i]);
            xs[(t.y + 4u + i) * XROW + t.x / 4u][t.x % 4u] = mmt(st.x[s].b[i]);
        }
    }
    let t = slot(lid, BN);
    for (var i = 0u; i < 4u; i++) {
        ws[(t.y + i) * WROW + t.x / 4u][t.x % 4u] = mmt(st.w.a[i]);
        ws[(t.y + 4u + i) * WROW + t.x / 4u][t.x % 4u] = mmt(st.w.b[i]);
    }
}

@compute @workgroup_size(256)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let wl = WLayout(p.row_words, p.bpr, p.scale_base);
    let n0 = linear_workgroup(wid, nwg) * BN;
    let m0 = wid.z * BM;
    if (n0 >= p.n) { return; }
    let tm = lid / 16u; // output rows m0 + RM tm ..
    let tn = lid % 16u; // output cols n0 + 4 tn ..
    // f32: `part` is the accumulator. f16: `part` sums one K step, then moves into `acc`.
    var acc: array<vec4<f32>, RM>;
    var part: array<vec4<MMT>, RM>;
    for (var i = 0u; i < RM; i++) {
        acc[i] = vec4<f32>(0.0);
        part[i] = vec4<MMT>(0.0);
    }

    var st: Staged;
    if (MM_GPU) { st = fetch(wl, m0, n0, 0u, lid); }
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        if (!MM_GPU) { st = fetch(wl, m0, n0, k0, lid); }
        put(st, lid);
        workgroupBarrier();
        // GPU: the next tile's loads and decodes are in flight during the products.
        if (MM_GPU && k0 + BK < p.k) { st = fetch(wl, m0, n0, k0 + BK, lid); }
        for (var kk = 0u; kk < BK; kk++) {
            let b = ws[kk * WROW + tn];
            for (var v = 0u; v < RM / 4u; v++) {
                let a = xs[kk * XROW + tm * (RM / 4u) + v];
                part[4u * v] += a.x * b;
                part[4u * v + 1u] += a.y * b;
                part[4u * v + 2u] += a.z * b;
                part[4u * v + 3u] += a.w * b;
            }
        }
        if (MM_F16) {
            for (var i = 0u; i < RM; i++) {
                acc[i] += vec4<f32>(part[i]);
                part[i] = vec4<MMT>(0.0);
            }
        }
        workgroupBarrier();
    }
    if (!MM_F16) {
        for (var i = 0u; i < RM; i++) { acc[i] = vec4<f32>(part[i]); }
    }

    for (var i = 0u; i < RM; i++) {
        let m = m0 + tm * RM + i;
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
