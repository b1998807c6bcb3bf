//! Prelude of the attention shaders where subgroup operations are not used (the browser, CPU
//! geometry, adapters without them): the row reductions run in workgroup memory only, and
//! these stand-ins of `attention_subgroups.wgsl` are never called.

const SUBGROUPS: bool = false;

fn lanes4_sum(v: vec4<f32>) -> vec4<f32> {
    return v;
}

fn lanes4_max(x: f32) -> f32 {
    return x;
}
