//! Native-only prelude of `matvec.wgsl` for adapters with subgroup operations (naga takes them
//! without an `enable` when the device has the feature; browsers would need one). The entry
//! points pass the subgroup size to the shared bodies; `lanes_sum` adds `v` over aligned
//! groups of `width` lanes of the subgroup (a butterfly: log2(width) shuffles, every lane ends
//! with its group's sum). `width` is a power of two no larger than the subgroup.

const SUBGROUPS: bool = true;

fn lanes_sum(v: vec4<f32>, width: u32) -> vec4<f32> {
    var s = v;
    for (var o = 1u; o < width; o *= 2u) {
        s += subgroupShuffleXor(s, o);
    }
    return s;
}

@compute @workgroup_size(WG)
fn matvec_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32, @builtin(subgroup_size) sg_size: u32) {
    matvec_main(wid, nwg, lid, sg_size);
}

@compute @workgroup_size(WG)
fn matvec_blk_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32, @builtin(subgroup_size) sg_size: u32) {
    matvec_blk_main(wid, nwg, lid, sg_size);
}
