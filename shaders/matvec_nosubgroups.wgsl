//! Prelude of `matvec.wgsl` where subgroup operations are not used (the browser, CPU
//! adapters, adapters without them): the reductions run in workgroup memory only.

const SUBGROUPS: bool = false;

fn lanes_sum(v: vec4<f32>, width: u32) -> vec4<f32> {
    return v;
}
