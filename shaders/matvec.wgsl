//! Matrix-vector products for decode: y[t][row_offset + r] = sum_k W[r][k] * x[t][k] for a few
//! tokens t, W in any format of `quant.wgsl` (prepended). A GEMV in the style of llama.cpp's
//! `mul_mat_vec` kernels: each thread computes NR = 4 rows at once (one vec4 accumulator), so
//! every x value it loads serves 4 rows; a row group of threads strides over the columns
//! (consecutive threads read consecutive weight words of the same 4 rows), and the per-thread
//! partial sums are reduced in workgroup memory with a single barrier (one thread per row group
//! sums its threads' vec4s; no subgroups needed).
//! - `matvec` (F32, F16, BF16, Q5_K; any `cols`): 32 threads x 8 row groups, units of 8 weights
//!   through `wdecode8`.
//! - `matvec_blk` (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K): TPB threads x 256/TPB row groups; a thread
//!   decodes a whole unit (a 32-weight block, or 64 weights of a K-quant super-block) per
//!   iteration from `vec4<u32>` loads of the weight and `vec4<f32>` loads of x (bindings 4 and 5
//!   are vec4 views of the same buffers). Private arrays and run-time-indexed vector components
//!   are avoided: CPU adapters (llvmpipe) spill them.
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
// Entry `matvec_blk` only: vec4 views of the same x and weight buffers (bound twice, read-only).
@group(0) @binding(4) var<storage, read> xv: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> wv: array<vec4<u32>>;

const TPR: u32 = 32u;        // threads per row group (`matvec`)
const NR: u32 = 4u;          // rows per thread (one vec4 accumulator)
const GPW: u32 = 8u;         // row groups per workgroup (`matvec`)
const WG: u32 = 256u;        // threads per workgroup

var<workgroup> red: array<vec4<f32>, WG>;

fn x4(o: u32) -> vec4<f32> {
    return vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u]);
}

/// Sums each row group's `tpr` partial vec4s (4 rows per group) and writes the 4 outputs of
/// token `t`: one barrier. `group0` is the workgroup's first row group.
fn reduce_store(acc: vec4<f32>, lid: u32, group0: u32, gpw: u32, tpr: u32, t: u32) {
    red[lid] = acc;
    workgroupBarrier();
    if (lid < gpw) {
        let rb = (group0 + lid) * NR;
        var s = vec4<f32>(0.0);
        for (var i = 0u; i < tpr; i++) {
            s += red[lid * tpr + i];
        }
        let yo = t * p.y_stride + p.row_offset + rb;
        if (rb < p.rows) { y[yo] = s.x; }
        if (rb + 1u < p.rows) { y[yo + 1u] = s.y; }
        if (rb + 2u < p.rows) { y[yo + 2u] = s.z; }
        if (rb + 3u < p.rows) { y[yo + 3u] = s.w; }
    }
}

@compute @workgroup_size(256)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let wl = WLayout(p.row_words, p.bpr, p.scale_base);
    let lane = lid % TPR;
    let grp = lid / TPR;
    let row0 = ((wid.x + wid.y * nwg.x) * GPW + grp) * NR;
    let last = p.rows - 1u;
    let r0 = min(row0, last);
    let r1 = min(row0 + 1u, last);
    let r2 = min(row0 + 2u, last);
    let r3 = min(row0 + 3u, last);
    let xo = wid.z * p.x_stride;
    var acc = vec4<f32>(0.0);
    if (row0 < p.rows) {
        let groups = p.cols / 8u;
        for (var g = lane; g < groups; g += TPR) {
            let k = g * 8u;
            let xa = x4(xo + k);
            let xb = x4(xo + k + 4u);
            acc += vec4<f32>(dot8(wdecode8(wl, r0, k), xa, xb), dot8(wdecode8(wl, r1, k), xa, xb),
                             dot8(wdecode8(wl, r2, k), xa, xb), dot8(wdecode8(wl, r3, k), xa, xb));
        }
        // Plain types only: a row tail shorter than 8.
        for (var k = groups * 8u + lane; k < p.cols; k += TPR) {
            let xv = x[xo + k];
            acc += xv * vec4<f32>(wdecode1(wl, r0, k), wdecode1(wl, r1, k), wdecode1(wl, r2, k), wdecode1(wl, r3, k));
        }
    }
    reduce_store(acc, lid, (wid.x + wid.y * nwg.x) * GPW, GPW, TPR, wid.z);
}

// ---- Block path (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K): one invocation takes a whole unit of 32
// (Q8_0, Q4_0, Q4_1) or 64 (Q4_K, Q6_K) weights of NR rows per iteration, loading each row's
// unit as vec4<u32> words and the unit's x once for all NR rows.

override TPB: u32 = 32u; // threads per row group in the block path; GPW_B = WG / TPB

/// 32 x values (8 vec4, in the order the unit's decoder pairs them) and their sum.
struct X32 {
    a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>,
    a4: vec4<f32>, a5: vec4<f32>, a6: vec4<f32>, a7: vec4<f32>,
    s: f32,
}

fn x32(o: u32, step: u32) -> X32 {
    // Two runs of 16: x[o..o+16] and x[o+step..o+step+16] (vec4 indices).
    let a0 = xv[o]; let a1 = xv[o + 1u]; let a2 = xv[o + 2u]; let a3 = xv[o + 3u];
    let b = o + step;
    let a4 = xv[b]; let a5 = xv[b + 1u]; let a6 = xv[b + 2u]; let a7 = xv[b + 3u];
    let t = (a0 + a1) + (a2 + a3) + (a4 + a5) + (a6 + a7);
    return X32(a0, a1, a2, a3, a4, a5, a6, a7, dot(t, vec4<f32>(1.0)));
}

fn f4(v: u32) -> vec4<f32> { return vec4<f32>(u8x4(v)); }

/// sum of q*x for 32 unsigned bytes packed in (lo: elements 0..15, hi: 16..31).
fn dot32u(lo: vec4<u32>, hi: vec4<u32>, x: X32) -> f32 {
    return (dot(f4(lo.x), x.a0) + dot(f4(lo.y), x.a1)) + (dot(f4(lo.z), x.a2) + dot(f4(lo.w), x.a3))
         + (dot(f4(hi.x), x.a4) + dot(f4(hi.y), x.a5)) + (dot(f4(hi.z), x.a6) + dot(f4(hi.w), x.a7));
}

fn i4(v: u32) -> vec4<f32> { return vec4<f32>(i8x4(v)); }

fn unit_row(l: WLayout, row: u32, u: u32, xa: X32, xb: X32) -> f32 {
    let m4 = vec4<u32>(0x0F0F0F0Fu);
    let rv = row * (l.row_words / 4u); // vec4 index of the row (row_words % 4 == 0 here)
    switch WTYPE {
        case WT_Q4_0: {
            let blk = row * l.bpr + u;
            let v = wv[rv + u];
            let d = split_scale(l, blk);
            return d * (dot32u(v & m4, (v >> vec4<u32>(4u)) & m4, xa) - 8.0 * xa.s);
        }
        case WT_Q8_0: {
            let blk = row * l.bpr + u;
            let v0 = wv[rv + 2u * u];
            let v1 = wv[rv + 2u * u + 1u];
            let d = split_scale(l, blk);
            let s = (dot(i4(v0.x), xa.a0) + dot(i4(v0.y), xa.a1)) + (dot(i4(v0.z), xa.a2) + dot(i4(v0.w), xa.a3))
                  + (dot(i4(v1.x), xa.a4) + dot(i4(v1.y), xa.a5)) + (dot(i4(v1.z), xa.a6) + dot(i4(v1.w), xa.a7));
            return d * s;
        }
        case WT_Q4_1: {
            let o = row * l.row_words + 5u * u;
            let dm = unpack2x16float(w[o]);
            let v = vec4<u32>(w[o + 1u], w[o + 2u], w[o + 3u], w[o + 4u]);
            return dm.x * dot32u(v & m4, (v >> vec4<u32>(4u)) & m4, xa) + dm.y * xa.s;
        }
        case WT_Q4_K: {
            let sb = u / 4u;
            let j = u % 4u;
            let bv = rv + 9u * sb;
            let hd = wv[bv];
            let q0 = wv[bv + 1u + 2u * j];
            let q1 = wv[bv + 2u + 2u * j];
            let dm = unpack2x16float(hd.x);
            // scale_min_k4 for sub-blocks 2j and 2j+1 without indexing vector components.
            let sh = 16u * (j % 2u);                    // byte 2j%4 of a word, as a bit shift
            let lo = (hd.y >> sh) & 0xFFFFu;            // bytes 2j, 2j+1 of scales[0..4)
            let md = (hd.z >> sh) & 0xFFFFu;            // bytes 2j, 2j+1 of scales[4..8)
            let hi = (hd.w >> sh) & 0xFFFFu;            // bytes 2j, 2j+1 of scales[8..12)
            var sc: vec2<u32>;
            var mn: vec2<u32>;
            let lo2 = vec2<u32>(lo & 0xFFu, lo >> 8u);
            let md2 = vec2<u32>(md & 0xFFu, md >> 8u);
            let hi2 = vec2<u32>(hi & 0xFFu, hi >> 8u);
            if (j < 2u) {
                sc = lo2 & vec2<u32>(63u);
                mn = md2 & vec2<u32>(63u);
            } else {
                sc = (hi2 & vec2<u32>(0xFu)) | ((lo2 >> vec2<u32>(6u)) << vec2<u32>(4u));
                mn = (hi2 >> vec2<u32>(4u)) | ((md2 >> vec2<u32>(6u)) << vec2<u32>(4u));
            }
            let scf = dm.x * vec2<f32>(sc);
            let mnf = dm.y * vec2<f32>(mn);
            // xa: elements 0..31 of the unit (low nibbles), xb: 32..63 (high nibbles).
            let sa = dot32u(q0 & m4, q1 & m4, xa);
            let sbb = dot32u((q0 >> vec4<u32>(4u)) & m4, (q1 >> vec4<u32>(4u)) & m4, xb);
            return (scf.x * sa - mnf.x * xa.s) + (scf.y * sbb - mnf.y * xb.s);
        }
        case WT_Q6_K: {
            let sb = u / 4u;
            let n = (u / 2u) % 2u;
            let h = u % 2u;
            let bv = rv + 13u * sb;
            let qa = wv[bv + 4u * n + h];       // ql bytes n*64 + 16h + (0..15): groups 0 (low), 2 (high)
            let qb = wv[bv + 4u * n + 2u + h];  // ql bytes n*64 + 32 + 16h + ..: groups 1, 3
            let qh = wv[bv + 8u + 2u * n + h];  // qh bytes n*32 + 16h + ..
            let sv = wv[bv + 12u];
            let sw0 = select(sv.x, sv.z, n == 1u);
            let sw1 = select(sv.y, sv.w, n == 1u);
            let sh = 8u * h;
            let scs = vec4<i32>(bitcast<vec4<i32>>(vec4<u32>(sw0 >> sh, sw0 >> (sh + 16u), sw1 >> sh, sw1 >> (sh + 16u)) << vec4<u32>(24u)) >> vec4<u32>(24u));
            let m2 = vec4<u32>(0x03030303u);
            let g0 = (qa & m4) | ((qh & m2) << vec4<u32>(4u));
            let g1 = (qb & m4) | (((qh >> vec4<u32>(2u)) & m2) << vec4<u32>(4u));
            let g2 = ((qa >> vec4<u32>(4u)) & m4) | (((qh >> vec4<u32>(4u)) & m2) << vec4<u32>(4u));
            let g3 = ((qb >> vec4<u32>(4u)) & m4) | (((qh >> vec4<u32>(6u)) & m2) << vec4<u32>(4u));
            // xa: groups 0 (a0..a3), 1 (a4..a7); xb: groups 2, 3. q = byte - 32.
            let s0 = (dot(f4(g0.x), xa.a0) + dot(f4(g0.y), xa.a1)) + (dot(f4(g0.z), xa.a2) + dot(f4(g0.w), xa.a3));
            let s1 = (dot(f4(g1.x), xa.a4) + dot(f4(g1.y), xa.a5)) + (dot(f4(g1.z), xa.a6) + dot(f4(g1.w), xa.a7));
            let s2 = (dot(f4(g2.x), xb.a0) + dot(f4(g2.y), xb.a1)) + (dot(f4(g2.z), xb.a2) + dot(f4(g2.w), xb.a3));
            let s3 = (dot(f4(g3.x), xb.a4) + dot(f4(g3.y), xb.a5)) + (dot(f4(g3.z), xb.a6) + dot(f4(g3.w), xb.a7));
            let xs = vec4<f32>(dot(xa.a0 + xa.a1 + xa.a2 + xa.a3, vec4<f32>(1.0)),
                               dot(xa.a4 + xa.a5 + xa.a6 + xa.a7, vec4<f32>(1.0)),
                               dot(xb.a0 + xb.a1 + xb.a2 + xb.a3, vec4<f32>(1.0)),
                               dot(xb.a4 + xb.a5 + xb.a6 + xb.a7, vec4<f32>(1.0)));
            let d = split_scale(l, row * l.bpr + sb);
            return d * dot(vec4<f32>(scs), vec4<f32>(s0, s1, s2, s3) - 32.0 * xs);
        }
        default: { return 0.0; }
    }
}

@compute @workgroup_size(256)
fn matvec_blk(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let wl = WLayout(p.row_words, p.bpr, p.scale_base);
    let gpw = WG / TPB;
    let lane = lid % TPB;
    let grp = lid / TPB;
    let row0 = ((wid.x + wid.y * nwg.x) * gpw + grp) * NR;
    let last = p.rows - 1u;
    let r0 = min(row0, last);
    let r1 = min(row0 + 1u, last);
    let r2 = min(row0 + 2u, last);
    let r3 = min(row0 + 3u, last);
    let xo = wid.z * (p.x_stride / 4u); // vec4 index of this token's x
    var acc = vec4<f32>(0.0);
    if (row0 < p.rows) {
        var units = p.bpr;
        if (WTYPE == WT_Q4_K || WTYPE == WT_Q6_K) { units = 4u * p.bpr; }
        for (var u = lane; u < units; u += TPB) {
            var xa: X32;
            var xb: X32;
            if (WTYPE == WT_Q4_K) {
                let o = xo + 16u * u;              // 64 consecutive x
                xa = x32(o, 4u);
                xb = x32(o + 8u, 4u);
            } else if (WTYPE == WT_Q6_K) {
                let o = xo + 64u * (u / 4u) + 32u * ((u / 2u) % 2u) + 4u * (u % 2u);
                xa = x32(o, 8u);                   // groups 0, 1 (32 elements apart)
                xb = x32(o + 16u, 8u);             // groups 2, 3
            } else {
                xa = x32(xo + 8u * u, 4u);         // 32 consecutive x
            }
            acc += vec4<f32>(unit_row(wl, r0, u, xa, xb), unit_row(wl, r1, u, xa, xb),
                             unit_row(wl, r2, u, xa, xb), unit_row(wl, r3, u, xa, xb));
        }
    }
    reduce_store(acc, lid, (wid.x + wid.y * nwg.x) * gpw, gpw, TPB, wid.z);
}
