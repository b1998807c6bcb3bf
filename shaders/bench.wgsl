//! Roofline kernels for `webvlm bench`: what the adapter can attain, to compare the real
//! kernels with (the STREAM benchmark's "copy" idea, McCalpin 1995, and a peak-FLOP probe).
//!
//! - `copy`: dst[i] = src[i] over vec4<u32>, one element per invocation (coalesced), the
//!   attainable read+write bandwidth.
//! - `read_sum`: each invocation reads PER vec4<u32> at a stride of the whole grid
//!   (coalesced) and folds them with xor; the result is written only when it equals a value
//!   random data essentially never gives, so the loads cannot be removed and the writes cost
//!   nothing: the attainable read-only bandwidth.
//! - `fma_peak`: each invocation runs CHAINS independent vec4<f32> fma chains for `iters`
//!   iterations in registers (no memory traffic): peak f32 FMA throughput,
//!   2 * 4 * CHAINS * iters FLOP per invocation.
//! Grid: x/y folded by `gpu::grid_1d` (`linear_invocation`, common.wgsl).

struct Params {
    n: u32,       // copy / read_sum: vec4 elements; fma: invocations
    iters: u32,   // fma_peak: iterations of the chains
    stride: u32,  // read_sum: invocations in the grid (elements between one thread's loads)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;

const WG: u32 = 256u;
const PER: u32 = 16u;

@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i < p.n) {
        dst[i] = src[i];
    }
}

@compute @workgroup_size(WG)
fn read_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    var acc = vec4<u32>(0u);
    for (var k = 0u; k < PER; k++) {
        let j = i + k * p.stride;
        if (j < p.n) {
            acc ^= src[j];
        }
    }
    if (all(acc == vec4<u32>(0x9E3779B9u))) {
        dst[i % arrayLength(&dst)] = acc;
    }
}

@compute @workgroup_size(WG)
fn fma_peak(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = linear_invocation(wid, nwg, lid, WG);
    if (i >= p.n) {
        return;
    }
    let s = f32(i & 255u) * 1.0e-6;
    let b = vec4<f32>(0.999, 0.998, 0.997, 0.996);
    let c = vec4<f32>(1.0e-4, 2.0e-4, 3.0e-4, 4.0e-4);
    // CHAINS = 8 independent accumulators hide the FMA latency.
    var a0 = vec4<f32>(s);
    var a1 = vec4<f32>(s + 0.1);
    var a2 = vec4<f32>(s + 0.2);
    var a3 = vec4<f32>(s + 0.3);
    var a4 = vec4<f32>(s + 0.4);
    var a5 = vec4<f32>(s + 0.5);
    var a6 = vec4<f32>(s + 0.6);
    var a7 = vec4<f32>(s + 0.7);
    for (var k = 0u; k < p.iters; k++) {
        a0 = fma(a0, b, c);
        a1 = fma(a1, b, c);
        a2 = fma(a2, b, c);
        a3 = fma(a3, b, c);
        a4 = fma(a4, b, c);
        a5 = fma(a5, b, c);
        a6 = fma(a6, b, c);
        a7 = fma(a7, b, c);
    }
    let r = (a0 + a1) + (a2 + a3) + (a4 + a5) + (a6 + a7);
    dst[i % arrayLength(&dst)] = bitcast<vec4<u32>>(r);
}
