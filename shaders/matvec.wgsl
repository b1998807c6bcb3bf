//! Matrix-vector products for decode: y[t][row_offset + r] = sum_k W[r][k] * x[t][k] for a few
//! tokens t, W in any format of `quant.wgsl` (prepended). A GEMV in the style of llama.cpp's
//! `mul_mat_vec` kernels: each thread computes several rows at once (vec4 accumulators), so
//! every x value it loads serves all of them; a row group of threads strides over the columns
//! (consecutive threads read consecutive weight words of the same rows), and the row group's
//! partial sums are reduced in workgroup memory.
//! - `matvec` (F32, F16, BF16; any `cols`): NR = 4 rows per thread, TPR threads per row
//!   group, units of 8 weights through `wdecode8`.
//! - `matvec_blk` (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K): NRB = 2, 4, 8 or 16 rows per thread (one
//!   vec4 accumulator per 4 rows), TPB threads per row group; a thread decodes a whole unit (a 32-weight
//!   block, or 64 weights of a K-quant super-block) per iteration from `vec4<u32>` loads of the
//!   weight and `vec4<f32>` loads of x (bindings 4 and 5 are vec4 views of the same buffers).
//!   4-, 5- and 6-bit values are not shifted down: `f32(v & (0xF << 8b))` is the value times
//!   2^(8b) exactly, so x is pre-scaled by the inverse power of two once per unit for all rows
//!   (`NL`, `NH`), leaving one `and`, one signed convert and one FMA per weight. Private arrays
//!   and run-time-indexed vector components are avoided: CPU adapters (llvmpipe) spill them.
//!   Several tokens (a batched decode step, a prompt chunk on CPU adapters): with `NT` = 2, 4
//!   or 8 a thread takes that many tokens of NRB <= 8 rows, decoding each row's unit once
//!   (`decode_unit`) and dotting it with every token's x (`unit_dot`), the weight-side work
//!   of one token for all of them, as llama.cpp's `mul_mat_vec` does for up to 8 columns;
//!   each token's sums and reduction are those of a thread of one token, so its output has
//!   the same bits.
//! Launch shape (override constants, chosen per adapter by `src/backend/gpu/matvec.rs`): WG
//! threads per workgroup; the reduction is a log2(TPR) tree (`TREE = 1`, GPUs) or one thread
//! per row group summing its lanes after a single barrier (`TREE = 0`, CPU adapters, where
//! barriers cost); none with one thread per row group (`TPB = 1`, the block path on CPU
//! adapters: all lanes then load the same x, bound there as a uniform window, or one binding per
//! token of a thread). On native
//! adapters with subgroups the tree starts in registers: a prelude (`matvec_subgroups.wgsl`) adds the entry points `matvec_sg` / `matvec_blk_sg`,
//! which sum a subgroup's lanes with `subgroupShuffleXor` before the workgroup-memory tree
//! (one barrier instead of log2(lanes) when a row group fits a subgroup). Every other module
//! gets `matvec_nosubgroups.wgsl` (WGSL on the web needs an extension wgpu cannot request yet).
//! Epilogue (`EPI`): 0 stores y; 1 adds into y (the residual add of `wo` and `ffn_down`);
//! 2 is the SiLU-gated product of a stacked [gate; up] weight: of a thread's rows the first
//! half are gate rows r, the second half the up rows rows/2 + r, and it writes
//! y[r] = silu(gate_r . x) * (up_r . x) for r < rows / 2.
//! Grid: x/y = row groups (`linear_workgroup`, common.wgsl), z = tokens (groups of NT).

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
    tok0: u32,       // the dispatch's first token (block path): x's row 0 is its row
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// binding 1: the weight `w`, declared in quant.wgsl.
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
// Entry `matvec_blk` only: vec4 views of the same x and weight buffers (bound twice, read-only).
// x's view is a prelude (`src/backend/gpu/matvec.rs`), with `xv4(k, i)`, vec4 i of the view of
// the thread's token k, and `x_of(t)`, token t's first vec4 in that view: binding 4 as storage
// (the whole buffer), or on CPU adapters a uniform window from the dispatch's first token, or
// one uniform binding per token of a thread (4, 6, 7, ...) where its tokens do not fit one.
@group(0) @binding(5) var<storage, read> wv: array<vec4<u32>>;

const NR: u32 = 4u;           // rows per thread of `matvec` (one vec4 accumulator)
override WG: u32 = 256u;      // threads per workgroup
override TPR: u32 = 32u;      // threads per row group (`matvec`): a power of two <= WG
override TREE: u32 = 0u;      // 1: tree reduction (GPUs); 0: one summing thread per row group
override EPI: u32 = 0u;       // epilogue: 0 store, 1 add into y, 2 SiLU-gated product

// Workgroup memory is zero-initialised at every workgroup's start (WGSL; Dawn and naga emit
// stores and a barrier for it), so each entry point has its own array of the size it needs.
var<workgroup> red: array<vec4<f32>, WG>; // `matvec`: one vec4 per thread

fn x4(o: u32) -> vec4<f32> {
    return vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u]);
}

/// Output rows: the weight's rows, or half of them for the SiLU-gated product.
fn out_rows() -> u32 {
    return select(p.rows, p.rows / 2u, EPI == 2u);
}

/// The first output row of row group `g` of `n` rows per thread (half as many outputs for
/// the SiLU-gated product).
fn first_output(g: u32, n: u32) -> u32 {
    return g * select(n, n / 2u, EPI == 2u);
}

/// The weight row of a thread's row slot `i` (of `n`) for outputs from `out0`: slots map to
/// consecutive rows, except for the SiLU-gated product, whose second half reads the up rows.
/// Clamped to the last row (the results of rows past the end are not stored).
fn weight_row(out0: u32, i: u32, n: u32) -> u32 {
    var r = out0 + i;
    if (EPI == 2u && i >= n / 2u) { r = p.rows / 2u + out0 + i - n / 2u; }
    return min(r, p.rows - 1u);
}

fn silu(v: vec4<f32>) -> vec4<f32> {
    return v / (1.0 + exp(-v));
}

/// Stores the outputs `v` of rows `r..r + 4` of token `t` (those below `n_out`), added to y's
/// values with EPI = 1.
fn put4(t: u32, r: u32, v: vec4<f32>, n_out: u32) {
    let o = t * p.y_stride + p.row_offset + r;
    var add = vec4<f32>(0.0);
    if (EPI == 1u) {
        if (r < n_out) { add.x = y[o]; }
        if (r + 1u < n_out) { add.y = y[o + 1u]; }
        if (r + 2u < n_out) { add.z = y[o + 2u]; }
        if (r + 3u < n_out) { add.w = y[o + 3u]; }
    }
    let s = v + add;
    if (r < n_out) { y[o] = s.x; }
    if (r + 1u < n_out) { y[o + 1u] = s.y; }
    if (r + 2u < n_out) { y[o + 2u] = s.z; }
    if (r + 3u < n_out) { y[o + 3u] = s.w; }
}

/// The epilogue of a row group whose `n` row slots (2, 4, 8 or 16) summed to s0..s3 (s0 =
/// slots 0..3, ...), outputs from `out0`.
fn emit(t: u32, out0: u32, n: u32, s0: vec4<f32>, s1: vec4<f32>, s2: vec4<f32>, s3: vec4<f32>) {
    if (t >= p.n_tok) { return; } // a token past the end of `matvec_blk_tokens`' last layer
    let n_out = out_rows();
    if (n == 2u) {
        var v = s0;
        if (EPI == 2u) { v = vec4<f32>(silu(s0).x * s0.y, 0.0, 0.0, 0.0); }
        put4(t, out0, v, min(n_out, out0 + select(2u, 1u, EPI == 2u)));
        return;
    }
    if (EPI == 2u) {
        if (n == 4u) {
            let g = silu(s0);
            put4(t, out0, vec4<f32>(g.x * s0.z, g.y * s0.w, 0.0, 0.0), min(n_out, out0 + 2u));
        } else if (n == 8u) {
            put4(t, out0, silu(s0) * s1, n_out);
        } else {
            put4(t, out0, silu(s0) * s2, n_out);
            put4(t, out0 + 4u, silu(s1) * s3, n_out);
        }
        return;
    }
    put4(t, out0, s0, n_out);
    if (n >= 8u) { put4(t, out0 + 4u, s1, n_out); }
    if (n == 16u) {
        put4(t, out0 + 8u, s2, n_out);
        put4(t, out0 + 12u, s3, n_out);
    }
}

/// Lanes summed in registers before the workgroup-memory stage: a subgroup's worth of a row
/// group of `tpr` lanes where the native adapter's subgroups are in use (`sg_size` > 0, the
/// `matvec_subgroups.wgsl` prelude), else 1. Row groups are aligned to subgroups (lanes are
/// consecutive invocations; subgroups take consecutive invocation indices of a 1-D workgroup).
fn lanes_in_registers(tpr: u32, sg_size: u32) -> u32 {
    return select(1u, min(tpr, sg_size), SUBGROUPS && sg_size > 0u && TREE == 1u);
}

/// Sums each row group's `tpr` partial vec4s (NR = 4 rows per group) and runs the epilogue
/// for token `t`. `group0` is the workgroup's first row group; all threads must call it.
fn reduce_store(acc: vec4<f32>, lid: u32, group0: u32, tpr: u32, t: u32, sg_size: u32) {
    // Subgroups first (w lanes to one partial), then a tree over the k = tpr / w partials of
    // each row group, compacted at red[lid / w].
    let w = lanes_in_registers(tpr, sg_size);
    let v = lanes_sum(acc, w);
    if (lid % w == 0u) { red[lid / w] = v; }
    workgroupBarrier();
    // The row group `grp` whose sum this thread holds at the end, if `leader`.
    var grp = lid / tpr;
    var leader = lid % tpr == 0u;
    var s = vec4<f32>(0.0);
    if (TREE == 1u) {
        let k = tpr / w;
        let j = lid / w;
        for (var h = k / 2u; h > 0u; h /= 2u) {
            if (lid % w == 0u && j % k < h) { red[j] += red[j + h]; }
            workgroupBarrier();
        }
        s = red[j];
    } else {
        // Threads 0..WG/tpr sum one row group each (adjacent lanes: no divergence on CPUs).
        grp = lid;
        leader = lid < WG / tpr;
        for (var i = 0u; leader && i < tpr; i++) { s += red[lid * tpr + i]; }
    }
    let out0 = first_output(group0 + grp, NR);
    if (leader && out0 < out_rows()) {
        emit(t, out0, NR, s, vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    }
}

@compute @workgroup_size(WG)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    matvec_main(wid, nwg, lid, 0u);
}

/// The generic-path body; `sg_size` > 0 where the native subgroup entry point calls it.
fn matvec_main(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, sg_size: u32) {
    let wl = WLayout(p.row_words, p.bpr, p.scale_base);
    let lane = lid % TPR;
    let grp = lid / TPR;
    let group0 = linear_workgroup(wid, nwg) * (WG / TPR);
    let out0 = first_output(group0 + grp, NR);
    let r0 = weight_row(out0, 0u, NR);
    let r1 = weight_row(out0, 1u, NR);
    let r2 = weight_row(out0, 2u, NR);
    let r3 = weight_row(out0, 3u, NR);
    let xo = wid.z * p.x_stride;
    var acc = vec4<f32>(0.0);
    if (out0 < out_rows()) {
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
    reduce_store(acc, lid, group0, TPR, wid.z, sg_size);
}

// ---- Block path (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K): one invocation takes a whole unit of 32
// (Q8_0, Q4_0, Q4_1) or 64 (Q4_K, Q5_K, Q6_K) weights of NRB rows per iteration, loading each row's
// unit as vec4<u32> words and the unit's x once for all NRB rows.

override PAIR: u32 = 0u; // 1: Q4_0 with an even `bpr`, units of two blocks (scales in one word)
override TPB: u32 = 32u; // threads per row group in the block path: a power of two <= WG
override NT: u32 = 1u; // tokens per thread: 1 (`matvec_blk_token`), 2, 4 or 8 (NRB <= 8)

fn i4(v: u32) -> vec4<f32> { return vec4<f32>(i8x4(v)); }

// Nibbles in place: f32(v & (0xF << 8b)) = q * 2^(8b) exactly, so the x paired with byte b is
// pre-scaled by 2^(-8b) (`NL`; high nibbles `NH`: 2^(-8b-4), the top one shifted down instead)
// once per unit for all rows: one `and` and one signed convert per weight, then one FMA per
// weight and token.
const NL = vec4<f32>(1.0, 0.00390625, 1.52587890625e-5, 5.9604644775390625e-8);
const NH = vec4<f32>(0.0625, 0.000244140625, 9.5367431640625e-7, 1.0);

/// The low nibbles of the 4 bytes of v, in place (x pre-scaled by NL).
fn lo4(v: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(v) & vec4<u32>(0xFu, 0xF00u, 0xF0000u, 0xF000000u)));
}

/// The high nibbles of the 4 bytes of v, in place (x pre-scaled by NH).
fn hi4(v: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(v & 0xF0u, v & 0xF000u, v & 0xF00000u, v >> 28u)));
}

/// The 6-bit values in bits 0..5 of the 4 bytes of g, in place (x pre-scaled by NL).
fn b6(g: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(g) & vec4<u32>(0x3Fu, 0x3F00u, 0x3F0000u, 0x3F000000u)));
}

/// One row's unit decoded once for every token it meets (`unit_dot`): 32 or 64 codes as f32
/// in the order the unit's x pairs them (`c0..c7` with `xa`, `c8..c15` with `xb`), and its
/// scales: Q8_0, Q4_0 `k.x` = d (Q4_0 pairs: `k.xy`, one per block); Q4_1 `k.xy` = (d, m);
/// Q4_K, Q5_K `k` = the two sub-blocks' (scale, scale, min, min) times (d, d, dmin, dmin); Q6_K `k`
/// = the four groups' i8 scales and `d` the super-block's.
struct Codes {
    c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>,
    c4: vec4<f32>, c5: vec4<f32>, c6: vec4<f32>, c7: vec4<f32>,
    c8: vec4<f32>, c9: vec4<f32>, c10: vec4<f32>, c11: vec4<f32>,
    c12: vec4<f32>, c13: vec4<f32>, c14: vec4<f32>, c15: vec4<f32>,
    k: vec4<f32>,
    d: f32,
}

/// 32 x values (8 vec4, in the order the unit's decoder pairs them) and their sum.
struct X32 {
    a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>,
    a4: vec4<f32>, a5: vec4<f32>, a6: vec4<f32>, a7: vec4<f32>,
    s: f32,
}

/// A unit's x: `a` meets codes c0..c7, `b` codes c8..c15; `s` (Q6_K only) the sums of its 4
/// groups of 16 (before the scaling by NL).
struct UnitX {
    a: X32,
    b: X32,
    s: vec4<f32>,
}

fn x32(k: u32, o: u32, step: u32) -> X32 {
    // Two runs of 16: x[o..o+16] and x[o+step..o+step+16] (vec4 indices) of the thread's token k.
    let a0 = xv4(k, o); let a1 = xv4(k, o + 1u); let a2 = xv4(k, o + 2u); let a3 = xv4(k, o + 3u);
    let b = o + step;
    let a4 = xv4(k, b); let a5 = xv4(k, b + 1u); let a6 = xv4(k, b + 2u); let a7 = xv4(k, b + 3u);
    let t = (a0 + a1) + (a2 + a3) + (a4 + a5) + (a6 + a7);
    return X32(a0, a1, a2, a3, a4, a5, a6, a7, dot(t, vec4<f32>(1.0)));
}

fn x_scale(x: X32, a: vec4<f32>, b: vec4<f32>) -> X32 {
    return X32(x.a0 * a, x.a1 * a, x.a2 * a, x.a3 * a, x.a4 * b, x.a5 * b, x.a6 * b, x.a7 * b, x.s);
}

/// Unit `u`'s x of the thread's token k, whose x starts at vec4 index `xo` of its view,
/// pre-scaled for its codes.
fn unit_x(k: u32, xo: u32, u: u32) -> UnitX {
    var x: UnitX;
    if (WTYPE == WT_Q4_K) {
        let o = xo + 16u * u;              // 64 consecutive x
        x.a = x_scale(x32(k, o, 4u), NL, NL);
        x.b = x_scale(x32(k, o + 8u, 4u), NH, NH);
    } else if (WTYPE == WT_Q5_K) {
        let o = xo + 16u * u;              // 64 consecutive x, both halves' codes in bits 0..4
        x.a = x_scale(x32(k, o, 4u), NL, NL);
        x.b = x_scale(x32(k, o + 8u, 4u), NL, NL);
    } else if (WTYPE == WT_Q6_K) {
        let o = xo + 64u * (u / 4u) + 32u * ((u / 2u) % 2u) + 4u * (u % 2u);
        let xa = x32(k, o, 8u);            // groups 0, 1 (32 elements apart)
        let xb = x32(k, o + 16u, 8u);      // groups 2, 3
        x.s = vec4<f32>(dot(xa.a0 + xa.a1 + xa.a2 + xa.a3, vec4<f32>(1.0)),
                        dot(xa.a4 + xa.a5 + xa.a6 + xa.a7, vec4<f32>(1.0)),
                        dot(xb.a0 + xb.a1 + xb.a2 + xb.a3, vec4<f32>(1.0)),
                        dot(xb.a4 + xb.a5 + xb.a6 + xb.a7, vec4<f32>(1.0)));
        x.a = x_scale(xa, NL, NL);
        x.b = x_scale(xb, NL, NL);
    } else if (PAIR == 1u) {
        x.a = x_scale(x32(k, xo + 16u * u, 4u), NL, NH); // blocks 2u, 2u + 1
        x.b = x_scale(x32(k, xo + 16u * u + 8u, 4u), NL, NH);
    } else {
        x.a = x32(k, xo + 8u * u, 4u);     // 32 consecutive x
        if (WTYPE == WT_Q4_0 || WTYPE == WT_Q4_1) { x.a = x_scale(x.a, NL, NH); }
    }
    return x;
}

/// Sub-blocks 2j and 2j + 1's (scale, scale, min, min) times (d, d, dmin, dmin) from a Q4_K or
/// Q5_K super-block's first 16 bytes `hd` (d and dmin, then the 12 bytes of 6-bit scales and
/// mins: ggml's `get_scale_min_k4`, without indexing vector components).
fn k_scales(hd: vec4<u32>, j: u32) -> vec4<f32> {
    let dm = unpack2x16float(hd.x);
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
    return vec4<f32>(dm.x * vec2<f32>(sc), dm.y * vec2<f32>(mn));
}

/// Row `row`'s unit `u` (see `Codes`).
fn decode_unit(l: WLayout, row: u32, u: u32) -> Codes {
    let m4 = vec4<u32>(0x0F0F0F0Fu);
    let rv = row * (l.row_words / 4u); // vec4 index of the row (row_words % 4 == 0 here)
    var c: Codes;
    switch WTYPE {
        case WT_Q4_0: {
            var v0: vec4<u32>;
            var v1 = vec4<u32>(0u);
            if (PAIR == 1u) { // blocks 2u, 2u+1; both scales in one word
                v0 = wv[rv + 2u * u];
                v1 = wv[rv + 2u * u + 1u];
                c.k = vec4<f32>(unpack2x16float(w[l.scale_base + (row * l.bpr) / 2u + u]), 0.0, 0.0);
            } else {
                v0 = wv[rv + u];
                c.k.x = split_scale(l, row * l.bpr + u);
            }
            c.c0 = lo4(v0.x); c.c1 = lo4(v0.y); c.c2 = lo4(v0.z); c.c3 = lo4(v0.w);
            c.c4 = hi4(v0.x); c.c5 = hi4(v0.y); c.c6 = hi4(v0.z); c.c7 = hi4(v0.w);
            c.c8 = lo4(v1.x); c.c9 = lo4(v1.y); c.c10 = lo4(v1.z); c.c11 = lo4(v1.w);
            c.c12 = hi4(v1.x); c.c13 = hi4(v1.y); c.c14 = hi4(v1.z); c.c15 = hi4(v1.w);
        }
        case WT_Q8_0: {
            let v0 = wv[rv + 2u * u];
            let v1 = wv[rv + 2u * u + 1u];
            c.k.x = split_scale(l, row * l.bpr + u);
            c.c0 = i4(v0.x); c.c1 = i4(v0.y); c.c2 = i4(v0.z); c.c3 = i4(v0.w);
            c.c4 = i4(v1.x); c.c5 = i4(v1.y); c.c6 = i4(v1.z); c.c7 = i4(v1.w);
        }
        case WT_Q4_1: {
            let o = row * l.row_words + 5u * u;
            c.k = vec4<f32>(unpack2x16float(w[o]), 0.0, 0.0);
            let v = vec4<u32>(w[o + 1u], w[o + 2u], w[o + 3u], w[o + 4u]);
            c.c0 = lo4(v.x); c.c1 = lo4(v.y); c.c2 = lo4(v.z); c.c3 = lo4(v.w);
            c.c4 = hi4(v.x); c.c5 = hi4(v.y); c.c6 = hi4(v.z); c.c7 = hi4(v.w);
        }
        case WT_Q4_K: {
            let bv = rv + 9u * (u / 4u);                // super-blocks of 9 vec4
            let q0 = wv[bv + 1u + 2u * (u % 4u)];
            let q1 = wv[bv + 2u + 2u * (u % 4u)];
            c.k = k_scales(wv[bv], u % 4u);
            // Elements 0..31 of the unit are the low nibbles, 32..63 the high ones.
            c.c0 = lo4(q0.x); c.c1 = lo4(q0.y); c.c2 = lo4(q0.z); c.c3 = lo4(q0.w);
            c.c4 = lo4(q1.x); c.c5 = lo4(q1.y); c.c6 = lo4(q1.z); c.c7 = lo4(q1.w);
            c.c8 = hi4(q0.x); c.c9 = hi4(q0.y); c.c10 = hi4(q0.z); c.c11 = hi4(q0.w);
            c.c12 = hi4(q1.x); c.c13 = hi4(q1.y); c.c14 = hi4(q1.z); c.c15 = hi4(q1.w);
        }
        case WT_Q5_K: {
            let j = u % 4u;
            let bv = rv + 11u * (u / 4u);               // super-blocks of 11 vec4: d, scales, qh, qs
            let h0 = wv[bv + 1u];                       // qh bytes 0..15 (element l's fifth bits)
            let h1 = wv[bv + 2u];                       // qh bytes 16..31
            let q0 = wv[bv + 3u + 2u * j];
            let q1 = wv[bv + 4u + 2u * j];
            c.k = k_scales(wv[bv], j);
            // Five bits in place in each byte (bits 0..4): the nibble, and bit 2j (low
            // nibbles) or 2j + 1 (high ones) of the element's qh byte as its fifth.
            let m1 = vec4<u32>(0x01010101u);
            let g0 = (q0 & m4) | (((h0 >> vec4<u32>(2u * j)) & m1) << vec4<u32>(4u));
            let g1 = (q1 & m4) | (((h1 >> vec4<u32>(2u * j)) & m1) << vec4<u32>(4u));
            let g2 = ((q0 >> vec4<u32>(4u)) & m4) | (((h0 >> vec4<u32>(2u * j + 1u)) & m1) << vec4<u32>(4u));
            let g3 = ((q1 >> vec4<u32>(4u)) & m4) | (((h1 >> vec4<u32>(2u * j + 1u)) & m1) << vec4<u32>(4u));
            c.c0 = b6(g0.x); c.c1 = b6(g0.y); c.c2 = b6(g0.z); c.c3 = b6(g0.w);
            c.c4 = b6(g1.x); c.c5 = b6(g1.y); c.c6 = b6(g1.z); c.c7 = b6(g1.w);
            c.c8 = b6(g2.x); c.c9 = b6(g2.y); c.c10 = b6(g2.z); c.c11 = b6(g2.w);
            c.c12 = b6(g3.x); c.c13 = b6(g3.y); c.c14 = b6(g3.z); c.c15 = b6(g3.w);
        }
        case WT_Q6_K: {
            let sb = u / 4u;
            let n = (u / 2u) % 2u;
            let h = u % 2u;
            let bv = rv + 13u * sb;
            let qa = wv[bv + 4u * n + h];       // ql bytes n*64 + 16h + (0..15): groups 0 (low), 2 (high)
            let qb = wv[bv + 4u * n + 2u + h];  // ql bytes n*64 + 32 + 16h + ..: groups 1, 3
            let qh = wv[bv + 8u + 2u * n + h];  // qh bytes n*32 + 16h + ..
            let so = 4u * (bv + 12u) + 2u * n;  // the 8 i8 scales of this half (2 words)
            let sw0 = w[so];
            let sw1 = w[so + 1u];
            let sh = 8u * h;
            c.k = vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(sw0 >> sh, sw0 >> (sh + 16u), sw1 >> sh, sw1 >> (sh + 16u)) << vec4<u32>(24u)) >> vec4<u32>(24u));
            c.d = split_scale(l, row * l.bpr + sb);
            // 6-bit values in place in each byte (bits 0..5): q = byte - 32.
            let m3 = vec4<u32>(0x30303030u);
            let g0 = (qa & m4) | ((qh << vec4<u32>(4u)) & m3);
            let g1 = (qb & m4) | ((qh << vec4<u32>(2u)) & m3);
            let g2 = ((qa >> vec4<u32>(4u)) & m4) | (qh & m3);
            let g3 = ((qb >> vec4<u32>(4u)) & m4) | ((qh >> vec4<u32>(2u)) & m3);
            c.c0 = b6(g0.x); c.c1 = b6(g0.y); c.c2 = b6(g0.z); c.c3 = b6(g0.w);
            c.c4 = b6(g1.x); c.c5 = b6(g1.y); c.c6 = b6(g1.z); c.c7 = b6(g1.w);
            c.c8 = b6(g2.x); c.c9 = b6(g2.y); c.c10 = b6(g2.z); c.c11 = b6(g2.w);
            c.c12 = b6(g3.x); c.c13 = b6(g3.y); c.c14 = b6(g3.z); c.c15 = b6(g3.w);
        }
        default: {}
    }
    return c;
}

/// Σ c_i · a_i over 16 values, in pairs.
fn dot16(c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>,
         a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>) -> f32 {
    return (dot(c0, a0) + dot(c1, a1)) + (dot(c2, a2) + dot(c3, a3));
}

/// A unit's codes c0..c7 against `x`.
fn dot_lo(c: Codes, x: X32) -> f32 {
    return dot16(c.c0, c.c1, c.c2, c.c3, x.a0, x.a1, x.a2, x.a3) + dot16(c.c4, c.c5, c.c6, c.c7, x.a4, x.a5, x.a6, x.a7);
}

/// A unit's codes c8..c15 against `x`.
fn dot_hi(c: Codes, x: X32) -> f32 {
    return dot16(c.c8, c.c9, c.c10, c.c11, x.a0, x.a1, x.a2, x.a3) + dot16(c.c12, c.c13, c.c14, c.c15, x.a4, x.a5, x.a6, x.a7);
}

/// A row's decoded unit against one token's x: its share of the row's dot product.
fn unit_dot(c: Codes, x: UnitX) -> f32 {
    switch WTYPE {
        case WT_Q4_0: {
            if (PAIR == 1u) {
                return c.k.x * (dot_lo(c, x.a) - 8.0 * x.a.s) + c.k.y * (dot_hi(c, x.b) - 8.0 * x.b.s);
            }
            return c.k.x * (dot_lo(c, x.a) - 8.0 * x.a.s);
        }
        case WT_Q8_0: { return c.k.x * dot_lo(c, x.a); }
        case WT_Q4_1: { return c.k.x * dot_lo(c, x.a) + c.k.y * x.a.s; }
        case WT_Q4_K, WT_Q5_K: { return (c.k.x * dot_lo(c, x.a) - c.k.z * x.a.s) + (c.k.y * dot_hi(c, x.b) - c.k.w * x.b.s); }
        case WT_Q6_K: {
            let s = vec4<f32>(dot16(c.c0, c.c1, c.c2, c.c3, x.a.a0, x.a.a1, x.a.a2, x.a.a3),
                              dot16(c.c4, c.c5, c.c6, c.c7, x.a.a4, x.a.a5, x.a.a6, x.a.a7),
                              dot16(c.c8, c.c9, c.c10, c.c11, x.b.a0, x.b.a1, x.b.a2, x.b.a3),
                              dot16(c.c12, c.c13, c.c14, c.c15, x.b.a4, x.b.a5, x.b.a6, x.b.a7));
            return c.d * dot(c.k, s - 32.0 * x.s);
        }
        default: { return 0.0; }
    }
}

/// Units per row.
fn row_units() -> u32 {
    if (WTYPE == WT_Q4_K || WTYPE == WT_Q5_K || WTYPE == WT_Q6_K) { return 4u * p.bpr; }
    if (PAIR == 1u) { return p.bpr / 2u; }
    return p.bpr;
}

override NRB: u32 = 8u; // rows per thread in the block path: 2, 4, 8 or 16 (one vec4 accumulator per 4)
override NV: u32 = max(NRB / 4u, 1u); // vec4 accumulators per thread
var<workgroup> red_blk: array<vec4<f32>, WG * NV>; // `matvec_blk`: NV vec4 per thread

/// `reduce_store` for NRB rows per thread (NV vec4 per thread, slot k of thread l at
/// `NV * l + k`).
fn reduce_store_blk(a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>, lid: u32, group0: u32, t: u32,
                    sg_size: u32) {
    let nv = NV;
    if (TPB == 1u) {
        // A thread holds its rows' whole sums: nothing to reduce.
        let out0 = first_output(group0 + lid, NRB);
        if (out0 < out_rows()) { emit(t, out0, NRB, a0, a1, a2, a3); }
        return;
    }
    if (NV == 1u && TREE == 1u) {
        // The GPU shape (one accumulator): as `reduce_store`.
        reduce_store_blk1(a0, lid, group0, t, sg_size);
        return;
    }
    red_blk[nv * lid] = a0;
    if (NRB >= 8u) { red_blk[nv * lid + 1u] = a1; }
    if (NRB == 16u) {
        red_blk[nv * lid + 2u] = a2;
        red_blk[nv * lid + 3u] = a3;
    }
    workgroupBarrier();
    // As in `reduce_store`: the row group `grp` whose sums this thread holds, if `leader`.
    var grp = lid / TPB;
    var leader = lid % TPB == 0u;
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    if (TREE == 1u) {
        for (var h = TPB / 2u; h > 0u; h /= 2u) {
            if (lid % TPB < h) {
                for (var k = 0u; k < nv; k++) { red_blk[nv * lid + k] += red_blk[nv * (lid + h) + k]; }
            }
            workgroupBarrier();
        }
        s0 = red_blk[nv * lid];
        if (NRB >= 8u) { s1 = red_blk[nv * lid + 1u]; }
        if (NRB == 16u) {
            s2 = red_blk[nv * lid + 2u];
            s3 = red_blk[nv * lid + 3u];
        }
    } else {
        grp = lid;
        leader = lid < WG / TPB;
        for (var i = 0u; leader && i < TPB; i++) {
            let b = nv * (lid * TPB + i);
            s0 += red_blk[b];
            if (NRB >= 8u) { s1 += red_blk[b + 1u]; }
            if (NRB == 16u) {
                s2 += red_blk[b + 2u];
                s3 += red_blk[b + 3u];
            }
        }
    }
    let out0 = first_output(group0 + grp, NRB);
    if (leader && out0 < out_rows()) {
        emit(t, out0, NRB, s0, s1, s2, s3);
    }
}

/// `reduce_store_blk` with one accumulator per thread (NRB <= 4): subgroups, then a tree.
fn reduce_store_blk1(acc: vec4<f32>, lid: u32, group0: u32, t: u32, sg_size: u32) {
    let w = lanes_in_registers(TPB, sg_size);
    let v = lanes_sum(acc, w);
    if (lid % w == 0u) { red_blk[lid / w] = v; }
    workgroupBarrier();
    let k = TPB / w;
    let j = lid / w;
    for (var h = k / 2u; h > 0u; h /= 2u) {
        if (lid % w == 0u && j % k < h) { red_blk[j] += red_blk[j + h]; }
        workgroupBarrier();
    }
    let out0 = first_output(group0 + lid / TPB, NRB);
    if (lid % TPB == 0u && out0 < out_rows()) {
        emit(t, out0, NRB, red_blk[j], vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    }
}

@compute @workgroup_size(WG)
fn matvec_blk(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    matvec_blk_main(wid, nwg, lid, 0u);
}

/// The block-path body; `sg_size` > 0 where the native subgroup entry point calls it.
fn matvec_blk_main(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, sg_size: u32) {
    if (NT == 1u) {
        matvec_blk_token(wid, nwg, lid, sg_size);
    } else {
        matvec_blk_tokens(wid, nwg, lid, sg_size);
    }
}

/// One token (`tok0` + grid layer `wid.z`), NRB rows per thread.
fn matvec_blk_token(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, sg_size: u32) {
    let wl = WLayout(p.row_words, p.bpr, p.scale_base);
    let lane = lid % TPB;
    let group0 = linear_workgroup(wid, nwg) * (WG / TPB);
    let out0 = first_output(group0 + lid / TPB, NRB);
    let ra = weight_rows4(out0, 0u);
    let rb = weight_rows4(out0, 1u);
    let rc = weight_rows4(out0, 2u);
    let rd = weight_rows4(out0, 3u);
    let t = p.tok0 + wid.z;
    let xo = x_of(t);
    var acc = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    if (out0 < out_rows()) {
        for (var u = lane; u < row_units(); u += TPB) {
            let x = unit_x(0u, xo, u);
            acc += rows4(wl, ra, u, x);
            if (NRB >= 8u) { acc1 += rows4(wl, rb, u, x); }
            if (NRB == 16u) {
                acc2 += rows4(wl, rc, u, x);
                acc3 += rows4(wl, rd, u, x);
            }
        }
    }
    reduce_store_blk(acc, acc1, acc2, acc3, lid, group0, t, sg_size);
}

/// The weight rows of a thread's row slots 4i..4i + 4 (`weight_row`).
fn weight_rows4(out0: u32, i: u32) -> vec4<u32> {
    let s = 4u * i;
    return vec4<u32>(weight_row(out0, s, NRB), weight_row(out0, s + 1u, NRB), weight_row(out0, s + 2u, NRB),
                     weight_row(out0, s + 3u, NRB));
}

/// The unit `u` of 4 rows against x (the first two only where NRB = 2).
fn rows4(wl: WLayout, r: vec4<u32>, u: u32, x: UnitX) -> vec4<f32> {
    let a = vec2<f32>(unit_dot(decode_unit(wl, r.x, u), x), unit_dot(decode_unit(wl, r.y, u), x));
    if (NRB == 2u) { return vec4<f32>(a, 0.0, 0.0); }
    return vec4<f32>(a, unit_dot(decode_unit(wl, r.z, u), x), unit_dot(decode_unit(wl, r.w, u), x));
}

/// NT = 2, 4 or 8 tokens from `tok0 + NT * wid.z` (those past `n_tok` computed on the last
/// token's x and not stored) of NRB = 2, 4 or 8 rows, each row's unit decoded once for all of
/// them and each token's x loaded once for all rows. Every token's sums are those
/// `matvec_blk_token` makes (the same units per lane, added in the same order, the same
/// reduction), so a token's output has the same bits in either.
fn matvec_blk_tokens(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, sg_size: u32) {
    let wl = WLayout(p.row_words, p.bpr, p.scale_base);
    let lane = lid % TPB;
    let group0 = linear_workgroup(wid, nwg) * (WG / TPB);
    let out0 = first_output(group0 + lid / TPB, NRB);
    let r = weight_rows4(out0, 0u);
    let q = weight_rows4(out0, 1u);
    let t0 = p.tok0 + NT * wid.z;
    let z = vec4<f32>(0.0);
    // Token k's sums of the thread's rows 0..3 in a_k, of rows 4..7 in b_k (NRB = 8).
    var a0 = z; var a1 = z; var a2 = z; var a3 = z;
    var a4 = z; var a5 = z; var a6 = z; var a7 = z;
    var b0 = z; var b1 = z; var b2 = z; var b3 = z;
    var b4 = z; var b5 = z; var b6 = z; var b7 = z;
    if (out0 < out_rows()) {
        for (var u = lane; u < row_units(); u += TPB) {
            let c0 = decode_unit(wl, r.x, u);
            let c1 = decode_unit(wl, r.y, u);
            var c2: Codes; var c3: Codes;
            var d0: Codes; var d1: Codes; var d2: Codes; var d3: Codes;
            if (NRB >= 4u) {
                c2 = decode_unit(wl, r.z, u);
                c3 = decode_unit(wl, r.w, u);
            }
            if (NRB == 8u) {
                d0 = decode_unit(wl, q.x, u);
                d1 = decode_unit(wl, q.y, u);
                d2 = decode_unit(wl, q.z, u);
                d3 = decode_unit(wl, q.w, u);
            }
            var x = unit_x(0u, x_of(t0), u);
            a0 += decoded4(c0, c1, c2, c3, x); b0 += decoded4_hi(d0, d1, d2, d3, x);
            x = unit_x(1u, x_of(t0 + 1u), u);
            a1 += decoded4(c0, c1, c2, c3, x); b1 += decoded4_hi(d0, d1, d2, d3, x);
            if (NT >= 4u) {
                x = unit_x(2u, x_of(t0 + 2u), u);
                a2 += decoded4(c0, c1, c2, c3, x); b2 += decoded4_hi(d0, d1, d2, d3, x);
                x = unit_x(3u, x_of(t0 + 3u), u);
                a3 += decoded4(c0, c1, c2, c3, x); b3 += decoded4_hi(d0, d1, d2, d3, x);
            }
            if (NT == 8u) {
                x = unit_x(4u, x_of(t0 + 4u), u);
                a4 += decoded4(c0, c1, c2, c3, x); b4 += decoded4_hi(d0, d1, d2, d3, x);
                x = unit_x(5u, x_of(t0 + 5u), u);
                a5 += decoded4(c0, c1, c2, c3, x); b5 += decoded4_hi(d0, d1, d2, d3, x);
                x = unit_x(6u, x_of(t0 + 6u), u);
                a6 += decoded4(c0, c1, c2, c3, x); b6 += decoded4_hi(d0, d1, d2, d3, x);
                x = unit_x(7u, x_of(t0 + 7u), u);
                a7 += decoded4(c0, c1, c2, c3, x); b7 += decoded4_hi(d0, d1, d2, d3, x);
            }
        }
    }
    // One token's reduction after another through the same workgroup memory.
    reduce_store_blk(a0, b0, z, z, lid, group0, t0, sg_size);
    between_tokens();
    reduce_store_blk(a1, b1, z, z, lid, group0, t0 + 1u, sg_size);
    if (NT >= 4u) {
        between_tokens();
        reduce_store_blk(a2, b2, z, z, lid, group0, t0 + 2u, sg_size);
        between_tokens();
        reduce_store_blk(a3, b3, z, z, lid, group0, t0 + 3u, sg_size);
    }
    if (NT == 8u) {
        between_tokens();
        reduce_store_blk(a4, b4, z, z, lid, group0, t0 + 4u, sg_size);
        between_tokens();
        reduce_store_blk(a5, b5, z, z, lid, group0, t0 + 5u, sg_size);
        between_tokens();
        reduce_store_blk(a6, b6, z, z, lid, group0, t0 + 6u, sg_size);
        between_tokens();
        reduce_store_blk(a7, b7, z, z, lid, group0, t0 + 7u, sg_size);
    }
}

/// Between two tokens' reductions through the same workgroup memory (none with TPB = 1).
fn between_tokens() {
    if (TPB > 1u) { workgroupBarrier(); }
}

/// Decoded units of rows r0..r3 (r0, r1 where NRB = 2) against one token's x.
fn decoded4(c0: Codes, c1: Codes, c2: Codes, c3: Codes, x: UnitX) -> vec4<f32> {
    let a = vec2<f32>(unit_dot(c0, x), unit_dot(c1, x));
    if (NRB == 2u) { return vec4<f32>(a, 0.0, 0.0); }
    return vec4<f32>(a, unit_dot(c2, x), unit_dot(c3, x));
}

/// Decoded units of rows r4..r7 against one token's x (zeros unless NRB = 8).
fn decoded4_hi(d0: Codes, d1: Codes, d2: Codes, d3: Codes, x: UnitX) -> vec4<f32> {
    if (NRB != 8u) { return vec4<f32>(0.0); }
    return decoded4(d0, d1, d2, d3, x);
}
