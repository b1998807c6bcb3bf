//! Weight decoders shared by matvec, matmul and embedding (prepended to their sources).
//! Block formats: ggml `ggml-common.h` / `dequantize_row_*` in `ggml-quants.c` (Q8_0, Q4_0,
//! Q4_1, Q4_K, Q5_K, Q6_K) plus F32, F16 and BF16. The GPU layout is documented in
//! `src/kernels/quant.rs`: one `array<u32>` per row part; Q4_1, Q4_K, Q5_K keep GGUF's
//! blocks, Q4_0, Q8_0 and Q6_K are split into 4-byte-aligned block bodies followed by an
//! array of their f16 scales (at word `scale_base`).
//!
//! The weight type is the override constant `WTYPE` (codes of `WeightFormat` in quant.rs);
//! the `switch` on it is folded when the pipeline is compiled, one pipeline per type.

override WTYPE: u32 = 0u;

const WT_F32: u32 = 0u;
const WT_F16: u32 = 1u;
const WT_BF16: u32 = 2u;
const WT_Q8_0: u32 = 3u;
const WT_Q4_0: u32 = 4u;
const WT_Q4_1: u32 = 5u;
const WT_Q4_K: u32 = 6u;
const WT_Q5_K: u32 = 7u;
const WT_Q6_K: u32 = 8u;

@group(0) @binding(1) var<storage, read> w: array<u32>;

/// Where a row part's data lives: `row_words` words per row (block bodies only for split
/// types), `bpr` blocks per row, `scale_base` the word offset of the f16 scale array.
struct WLayout {
    row_words: u32,
    bpr: u32,
    scale_base: u32,
}

/// Eight consecutive weights of one row.
struct W8 {
    a: vec4<f32>,
    b: vec4<f32>,
}

/// Elements per block of the current type.
fn wt_block() -> u32 {
    switch WTYPE {
        case WT_Q8_0, WT_Q4_0, WT_Q4_1: { return 32u; }
        case WT_Q4_K, WT_Q5_K, WT_Q6_K: { return 256u; }
        default: { return 1u; }
    }
}

/// Words of one block body in the row data.
fn wt_body_words() -> u32 {
    switch WTYPE {
        case WT_Q8_0: { return 8u; }
        case WT_Q4_0: { return 4u; }
        case WT_Q4_1: { return 5u; }
        case WT_Q4_K: { return 36u; }
        case WT_Q5_K: { return 44u; }
        case WT_Q6_K: { return 52u; }
        default: { return 0u; }
    }
}

/// The f16 scale of block `blk` (row * bpr + block) of a split type.
fn split_scale(l: WLayout, blk: u32) -> f32 {
    let word = w[l.scale_base + blk / 2u];
    return unpack2x16float(word >> (16u * (blk & 1u))).x;
}

/// The 4 bytes of a word, unsigned (written out: `unpack4xU8` needs a WGSL language extension).
fn u8x4(v: u32) -> vec4<u32> {
    return (vec4<u32>(v) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xFFu);
}

/// The 4 bytes of a word as signed i8 values.
fn i8x4(v: u32) -> vec4<i32> {
    return bitcast<vec4<i32>>(vec4<u32>(v) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
}

/// Bytes of two consecutive words as unsigned values.
fn bytes8(w0: u32, w1: u32) -> W8 {
    return W8(vec4<f32>(u8x4(w0)), vec4<f32>(u8x4(w1)));
}

/// Nibbles (shift 0 or 4) of the 8 bytes in two words.
fn nibbles8(w0: u32, w1: u32, shift: u32) -> W8 {
    let m = 0x0F0F0F0Fu;
    return bytes8((w0 >> shift) & m, (w1 >> shift) & m);
}

/// 6-bit scale and min `j` (0..7) of a K-quant block, ggml's `get_scale_min_k4`.
fn scale_min_k4(s: vec3<u32>, j: u32) -> vec2<f32> {
    let lo = u8x4(s.x);
    let mid = u8x4(s.y);
    let hi = u8x4(s.z);
    if (j < 4u) {
        return vec2<f32>(f32(lo[j] & 63u), f32(mid[j] & 63u));
    }
    let i = j - 4u;
    let sc = (hi[i] & 0xFu) | ((lo[i] >> 6u) << 4u);
    let mn = (hi[i] >> 4u) | ((mid[i] >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(mn));
}

fn w8_scale(v: W8, d: f32, m: f32) -> W8 {
    return W8(v.a * d + m, v.b * d + m);
}

/// Weights k..k+7 of `row` (k % 8 == 0, k + 8 <= cols).
fn wdecode8(l: WLayout, row: u32, k: u32) -> W8 {
    switch WTYPE {
        case WT_F32: {
            let o = row * l.row_words + k;
            let a = vec4<u32>(w[o], w[o + 1u], w[o + 2u], w[o + 3u]);
            let b = vec4<u32>(w[o + 4u], w[o + 5u], w[o + 6u], w[o + 7u]);
            return W8(bitcast<vec4<f32>>(a), bitcast<vec4<f32>>(b));
        }
        case WT_F16: {
            let o = row * l.row_words + k / 2u;
            let a = vec4<f32>(unpack2x16float(w[o]), unpack2x16float(w[o + 1u]));
            let b = vec4<f32>(unpack2x16float(w[o + 2u]), unpack2x16float(w[o + 3u]));
            return W8(a, b);
        }
        case WT_BF16: {
            let o = row * l.row_words + k / 2u;
            let u = vec4<u32>(w[o], w[o + 1u], w[o + 2u], w[o + 3u]);
            let lo = bitcast<vec4<f32>>(u << vec4<u32>(16u));
            let hi = bitcast<vec4<f32>>(u & vec4<u32>(0xFFFF0000u));
            return W8(vec4<f32>(lo.x, hi.x, lo.y, hi.y), vec4<f32>(lo.z, hi.z, lo.w, hi.w));
        }
        default: {}
    }
    let bs = wt_block();
    let e = k % bs;
    let base = row * l.row_words + (k / bs) * wt_body_words();
    let blk = row * l.bpr + k / bs;
    switch WTYPE {
        case WT_Q8_0: { // body: 32 i8
            let o = base + e / 4u;
            let a = vec4<f32>(i8x4(w[o]));
            let b = vec4<f32>(i8x4(w[o + 1u]));
            let d = split_scale(l, blk);
            return W8(a * d, b * d);
        }
        case WT_Q4_0: { // body: 16 B, low nibbles = elements 0..15, high = 16..31
            let o = base + (e % 16u) / 4u;
            let d = split_scale(l, blk);
            return w8_scale(nibbles8(w[o], w[o + 1u], 4u * (e / 16u)), d, -8.0 * d);
        }
        case WT_Q4_1: { // f16 d, f16 m, 16 B nibbles
            let dm = unpack2x16float(w[base]);
            let o = base + 1u + (e % 16u) / 4u;
            return w8_scale(nibbles8(w[o], w[o + 1u], 4u * (e / 16u)), dm.x, dm.y);
        }
        case WT_Q4_K, WT_Q5_K: { // f16 d, f16 dmin, 12 B scales, [Q5_K: 32 B qh], 128 B qs
            let dm = unpack2x16float(w[base]);
            let j = e / 64u;        // 64-element chunk: 32 qs bytes
            let h = (e / 32u) % 2u; // low or high nibbles
            let li = e % 32u;
            let sm = scale_min_k4(vec3<u32>(w[base + 1u], w[base + 2u], w[base + 3u]), 2u * j + h);
            var qo = base + 4u;
            if (WTYPE == WT_Q5_K) { qo = base + 12u; }
            let o = qo + j * 8u + li / 4u;
            var q = nibbles8(w[o], w[o + 1u], 4u * h);
            if (WTYPE == WT_Q5_K) {
                let bit = 2u * j + h;
                let qh0 = (w[base + 4u + li / 4u] >> bit) & 0x01010101u;
                let qh1 = (w[base + 5u + li / 4u] >> bit) & 0x01010101u;
                let hb = bytes8(qh0, qh1);
                q = W8(q.a + 16.0 * hb.a, q.b + 16.0 * hb.b);
            }
            return w8_scale(q, dm.x * sm.x, -dm.y * sm.y);
        }
        case WT_Q6_K: { // body: ql[128], qh[64], i8 scales[16]
            let n = e / 128u;       // half
            let g = (e / 32u) % 4u; // quarter of the half
            let li = e % 32u;
            let ql = base + n * 16u + (g % 2u) * 8u + li / 4u;
            let lo = nibbles8(w[ql], w[ql + 1u], 4u * (g / 2u));
            let qh = base + 32u + n * 8u + li / 4u;
            let m3 = 0x03030303u;
            let hi = bytes8((w[qh] >> (2u * g)) & m3, (w[qh + 1u] >> (2u * g)) & m3);
            let si = n * 8u + li / 16u + 2u * g;
            let sc = f32(i8x4(w[base + 48u + si / 4u])[si % 4u]);
            let d = split_scale(l, blk) * sc;
            return W8((lo.a + 16.0 * hi.a - 32.0) * d, (lo.b + 16.0 * hi.b - 32.0) * d);
        }
        default: { return W8(vec4<f32>(0.0), vec4<f32>(0.0)); }
    }
}

/// One weight of a plain-type row (F32, F16, BF16), for row tails not a multiple of 8.
fn wdecode1(l: WLayout, row: u32, k: u32) -> f32 {
    switch WTYPE {
        case WT_F32: { return bitcast<f32>(w[row * l.row_words + k]); }
        case WT_F16: { return unpack2x16float(w[row * l.row_words + k / 2u])[k % 2u]; }
        case WT_BF16: {
            let u = w[row * l.row_words + k / 2u];
            return bitcast<f32>(select(u << 16u, u & 0xFFFF0000u, k % 2u == 1u));
        }
        default: { return 0.0; }
    }
}

fn dot8(v: W8, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    return dot(v.a, xa) + dot(v.b, xb);
}
