//! The per-token kernels around a Gated DeltaNet layer (Yang, Kautz & Hatamizadeh 2024,
//! arXiv:2412.06464) as Qwen3.5 / Qwen3-Next use it: everything but the delta rule itself.
//! Reference: transformers `modeling_qwen3_5.py` (`Qwen3_5GatedDeltaNet.forward`,
//! `causal_conv1d_update` / `causal_conv1d_fn`, `Qwen3_5RMSNormGated`; the same code as
//! `modeling_qwen3_next.py`). Inputs and their GGUF tensors: `src/kernels/gdn_prep.rs`.
//!
//! - `conv_step` + `conv_state`: causal depthwise conv1d (kernel K, no bias) over the mixed
//!   q|k|v rows, then SiLU: `y[t][c] = silu(sum_j w[c][j] * xe[t + j][c])` where `xe` is the
//!   rolling state (the K-1 inputs before this step) followed by the step's rows. One invocation
//!   per (token, channel); `conv_state` (a second dispatch, after every read of the old state)
//!   then keeps the last K-1 rows of `xe` per channel, so chunk after chunk equals one pass.
//! - `gdn_decay`: `g = A * softplus(a + dt_bias)` with `A = -exp(A_log)` (as the GGUF stores
//!   it), `beta = sigmoid(b)`; one invocation per (token, v head). Softplus as torch
//!   (threshold 20: `x` above), `log1p` of small arguments from the atanh series so that the
//!   far negative tail keeps its relative precision (a plain `log(1 + exp(x))` is 0 there).
//! - `gated_rms_norm`: per (token, v head) row of `o`: `rmsnorm(o) * w * silu(z)` (norm before
//!   gate, weight used as is), one workgroup per row, tree reduction in workgroup memory.
//!
//! Every kernel covers `min(step.n_tok, p.max_tok)` token rows: a program recorded for a chunk
//! of `max_tok` rows is replayed for shorter steps. No subgroups, f32 only.

// `struct Step` comes from `step.wgsl`, prepended by the Rust side.

struct Params {
    max_tok: u32,   // token rows covered by the grid
    width: u32,     // conv: channels C; decay, norm: v heads
    kernel: u32,    // conv: kernel size K; norm: head dim dv
    x_stride: u32,  // conv: x, decay: a, norm: z: element (t, i) = buf[t * x_stride + x_offset + i]
    x_offset: u32,
    b_stride: u32,  // decay: b, the same way
    b_offset: u32,
    eps: f32,       // norm
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;

// conv_step
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> conv_w: array<f32>;
@group(0) @binding(4) var<storage, read> conv_state_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> conv_y: array<f32>;
// conv_state (x at binding 2)
@group(0) @binding(3) var<storage, read_write> conv_state_rw: array<f32>;
// gdn_decay
@group(0) @binding(2) var<storage, read> dec_a: array<f32>;
@group(0) @binding(3) var<storage, read> dec_b: array<f32>;
@group(0) @binding(4) var<storage, read> dec_ssm_a: array<f32>;
@group(0) @binding(5) var<storage, read> dec_dt_bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> dec_g: array<f32>;
@group(0) @binding(7) var<storage, read_write> dec_beta: array<f32>;
// gated_rms_norm
@group(0) @binding(2) var<storage, read> gn_o: array<f32>;
@group(0) @binding(3) var<storage, read> gn_z: array<f32>;
@group(0) @binding(4) var<storage, read> gn_w: array<f32>;
@group(0) @binding(5) var<storage, read_write> gn_out: array<f32>;

const WG: u32 = 256u;
const NORM_WG: u32 = 128u;
var<workgroup> partial: array<f32, NORM_WG>;

fn n_rows() -> u32 {
    return min(step.n_tok, p.max_tok);
}

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

/// `log(1 + u)` for 0 <= u <= 1: `2 atanh(s)` with `s = u / (2 + u)` <= 1/3, series to s^19
/// (remainder < 1e-10 relative), accurate for tiny u where `1 + u` rounds to 1.
fn log1p_small(u: f32) -> f32 {
    let s = u / (2.0 + u);
    let s2 = s * s;
    var acc = 1.0 / 19.0;
    for (var k = 17.0; k > 0.0; k -= 2.0) {
        acc = 1.0 / k + s2 * acc;
    }
    return 2.0 * s * acc;
}

/// torch's `F.softplus(v)` (beta 1, threshold 20).
fn softplus(v: f32) -> f32 {
    if (v > 20.0) { return v; }
    let u = exp(v);
    if (u <= 1.0) { return log1p_small(u); }
    return log(1.0 + u);
}

@compute @workgroup_size(WG)
fn conv_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    let c_n = p.width;
    let t = i / c_n;
    if (t >= n_rows()) { return; }
    let c = i % c_n;
    let k = p.kernel;
    let hist = k - 1u;
    var acc = 0.0;
    for (var j = 0u; j < k; j++) {
        // xe[t + j]: the state's slot t + j, or the step's row t + j - (K - 1).
        let e = t + j;
        var v: f32;
        if (e < hist) {
            v = conv_state_in[c * hist + e];
        } else {
            v = x[(e - hist) * p.x_stride + p.x_offset + c];
        }
        acc += conv_w[c * k + j] * v;
    }
    conv_y[t * c_n + c] = silu(acc);
}

@compute @workgroup_size(WG)
fn conv_state(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let c = linear_invocation(wid, nwg, lid, WG);
    if (c >= p.width) { return; }
    let n = n_rows();
    let hist = p.kernel - 1u;
    // New slot j = xe[n + j]: an old slot n + j > j (not yet overwritten, j ascends) or a row.
    for (var j = 0u; j < hist; j++) {
        let e = n + j;
        var v: f32;
        if (e < hist) {
            v = conv_state_rw[c * hist + e];
        } else {
            v = x[(e - hist) * p.x_stride + p.x_offset + c];
        }
        conv_state_rw[c * hist + j] = v;
    }
}

@compute @workgroup_size(WG)
fn gdn_decay(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    let h_n = p.width;
    let t = i / h_n;
    if (t >= n_rows()) { return; }
    let h = i % h_n;
    let a = dec_a[t * p.x_stride + p.x_offset + h];
    let b = dec_b[t * p.b_stride + p.b_offset + h];
    dec_g[i] = dec_ssm_a[h] * softplus(a + dec_dt_bias[h]);
    dec_beta[i] = 1.0 / (1.0 + exp(-b));
}

@compute @workgroup_size(NORM_WG)
fn gated_rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg);
    let h_n = p.width;
    let dv = p.kernel;
    let t = row / h_n;
    // Uniform per workgroup: the whole workgroup leaves together (no barrier is skipped).
    if (t >= n_rows()) { return; }
    let h = row % h_n;
    let base = row * dv;
    var acc = 0.0;
    for (var i = lid; i < dv; i += NORM_WG) {
        let v = gn_o[base + i];
        acc += v * v;
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = NORM_WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { partial[lid] += partial[lid + s]; }
        workgroupBarrier();
    }
    let scale = inverseSqrt(partial[0] / f32(dv) + p.eps);
    let zb = t * p.x_stride + p.x_offset + h * dv;
    for (var i = lid; i < dv; i += NORM_WG) {
        gn_out[base + i] = gn_o[base + i] * scale * gn_w[i] * silu(gn_z[zb + i]);
    }
}
