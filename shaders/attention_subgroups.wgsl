//! Native-only prelude of the attention shaders for adapters with subgroup operations (naga
//! takes them without an `enable` when the device has the feature; browsers would need one):
//! the row reductions start in registers. Lanes 4k..4k+3 of a 1-D workgroup share a subgroup
//! (subgroups take consecutive invocation indices and hold at least 4 of them, WebGPU's
//! minimum subgroup size), so two butterfly shuffles reduce over them.

const SUBGROUPS: bool = true;

/// `v` summed over the 4 lanes of this invocation's aligned group of 4, in all 4 of them.
fn lanes4_sum(v: vec4<f32>) -> vec4<f32> {
    let s = v + subgroupShuffleXor(v, 1u);
    return s + subgroupShuffleXor(s, 2u);
}

/// The largest `x` of this invocation's aligned group of 4 lanes, in all 4 of them.
fn lanes4_max(x: f32) -> f32 {
    let m = max(x, subgroupShuffleXor(x, 1u));
    return max(m, subgroupShuffleXor(m, 2u));
}
