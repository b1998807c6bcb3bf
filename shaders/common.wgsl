//! Helpers shared by several kernel families: part of every kernel module (`KernelSpec::new`
//! puts this file right before the family's own source, so no kernel can miss it; unused
//! declarations cost nothing). Only what at least two families use lives here; names are
//! spelled out so that they do not clash with the families' own (short) names.
//!
//! - Grid linearisation: a dispatch wider than 65535 workgroups is folded into x and y by
//!   `gpu::grid_1d` (x = ceil(n / y), so the last row may run past n: kernels bound-check).
//! - Cody-Waite reduction of an angle modulo 2*pi (Cody & Waite 1980): GPU `cos`/`sin` are
//!   accurate on [-pi, pi] only, and RoPE angles reach the position itself (radians).

/// Linear index of this workgroup in a grid folded by `gpu::grid_1d`: `wid.x + wid.y * nwg.x`.
fn linear_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

/// Linear index of this invocation in a folded grid of workgroups of `wg_size` invocations.
fn linear_invocation(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, wg_size: u32) -> u32 {
    return linear_workgroup(wid, nwg) * wg_size + lid;
}

// 2*pi = TWO_PI_C1 + TWO_PI_C2 + TWO_PI_C3; C1 and C2 have 8 significant bits, so k*C1 and
// k*C2 are exact for k < 2^16 (|angle| < 2^16 * 2*pi).
const TWO_PI_C1: f32 = 6.28125;
const TWO_PI_C2: f32 = 0.00193023681640625;
const TWO_PI_C3: f32 = 5.070363386039389e-06;
const INV_TWO_PI: f32 = 0.15915493667125702;

/// `angle` minus the nearest multiple of 2*pi, in [-pi, pi] (three-part Cody-Waite split).
fn reduce_angle(angle: f32) -> f32 {
    let k = round(angle * INV_TWO_PI);
    return ((angle - k * TWO_PI_C1) - k * TWO_PI_C2) - k * TWO_PI_C3;
}
