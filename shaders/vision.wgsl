//! Pixtral vision-encoder data movement and 2D RoPE (reference: transformers 5.x
//! `modeling_pixtral.py` / `modeling_mistral3.py`).
//!
//! - `patch_unfold` (im2col): pixels CHW `[C][H][W]` f32 → patches `[n_patches][C*P*P]`, row
//!   `pr*cols + pc`, column `c*P*P + ky*P + kx` — the flattening of a torch Conv2d weight
//!   `[hidden][C][P][P]`, so `patches · Wᵀ` is `Conv2d(C, hidden, P, stride P, bias=False)`.
//! - `rope_2d`: axial 2D RoPE in place on q or k rows `[n][stride]`. Pair i of a head (i <
//!   head_dim/2) turns by `angle = f32(pos) * inv_freq[i]`, pos = patch row for i < head_dim/4
//!   and patch column otherwise (`inv_freq` = transformers' `cat(inv_freq[0::2], inv_freq[1::2])`).
//!   Pairs are (2i, 2i+1) when `neox == 0` (GGUF, whose vision q/k rows llama.cpp's converter
//!   permutes) or (i, i + head_dim/2) (`rotate_half`, the Hugging Face weights).
//! - `patch_merge`: `F.unfold(kernel 2, stride 2)` over the `[hidden][rows][cols]` grid of an
//!   image's patch rows `[rows*cols][hidden]` → `[(rows/2)*(cols/2)][hidden*4]`, feature
//!   `c*4 + ki*2 + kj` (channel-major), output row `mr*(cols/2) + mc` (odd edges dropped as unfold does).
//!
//! One invocation per output element (unfold, merge) or per (token, head, pair) (RoPE).

struct UnfoldParams {
    channels: u32,
    height: u32,      // pixels, a multiple of patch
    width: u32,       // pixels, a multiple of patch
    patch_size: u32,
}

struct MergeParams {
    hidden: u32,
    rows: u32,        // patch grid of the image
    cols: u32,
    _pad: u32,
}

struct Rope2dParams {
    n_tok: u32,       // patches of the image (rows * cols)
    n_heads: u32,
    head_dim: u32,    // a multiple of 4
    cols: u32,        // patch-grid columns: token t sits at (t / cols, t % cols)
    stride: u32,      // row stride (elements): element (t, h, d) = x[(row0 + t)*stride + offset + h*head_dim + d]
    offset: u32,
    row0: u32,        // first token row of the image in x
    neox: u32,        // 0: adjacent pairs (2i, 2i+1), 1: rotate-half pairs (i, i + head_dim/2)
}

// Each entry point uses one params struct (naga checks binding collisions per entry point).
@group(0) @binding(0) var<uniform> pu: UnfoldParams;
@group(0) @binding(0) var<uniform> pm: MergeParams;
@group(0) @binding(0) var<uniform> pr: Rope2dParams;
// patch_unfold / patch_merge
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
// rope_2d
@group(0) @binding(1) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn patch_unfold(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    let ps = pu.patch_size;
    let k = pu.channels * ps * ps;
    let cols = pu.width / ps;
    let n = (pu.height / ps) * cols * k;
    if (i >= n) { return; }
    let patch_i = i / k;
    let f = i % k;
    let c = f / (ps * ps);
    let ky = (f / ps) % ps;
    let kx = f % ps;
    let y = (patch_i / cols) * ps + ky;
    let xx = (patch_i % cols) * ps + kx;
    dst[i] = src[(c * pu.height + y) * pu.width + xx];
}

@compute @workgroup_size(WG)
fn patch_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    let hidden = pm.hidden;
    let mcols = pm.cols / 2u;
    let n = (pm.rows / 2u) * mcols * hidden * 4u;
    if (i >= n) { return; }
    let m = i / (hidden * 4u);
    let f = i % (hidden * 4u);
    let c = f / 4u;
    let ki = (f / 2u) % 2u;
    let kj = f % 2u;
    let row = 2u * (m / mcols) + ki;
    let col = 2u * (m % mcols) + kj;
    dst[i] = src[(row * pm.cols + col) * hidden + c];
}

@compute @workgroup_size(WG)
fn rope_2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let g = linear_invocation(wid, nwg, lid, WG);
    let half_dim = pr.head_dim / 2u;
    let per_tok = pr.n_heads * half_dim;
    let t = g / per_tok;
    if (t >= pr.n_tok) { return; }
    let h = (g % per_tok) / half_dim;
    let i = g % half_dim;
    var pos = t / pr.cols;           // patch row
    if (i >= half_dim / 2u) {
        pos = t % pr.cols;           // patch column
    }
    var d0 = 2u * i;
    var d1 = 2u * i + 1u;
    if (pr.neox != 0u) {
        d0 = i;
        d1 = i + half_dim;
    }
    // Reduced modulo 2*pi first (`reduce_angle`, common.wgsl): GPU cos/sin are accurate on
    // [-pi, pi] only.
    let r = reduce_angle(f32(pos) * inv_freq[i]);
    let cs = cos(r);
    let sn = sin(r);
    let base = (pr.row0 + t) * pr.stride + pr.offset + h * pr.head_dim;
    let x0 = x[base + d0];
    let x1 = x[base + d1];
    x[base + d0] = x0 * cs - x1 * sn;
    x[base + d1] = x1 * cs + x0 * sn;
}
