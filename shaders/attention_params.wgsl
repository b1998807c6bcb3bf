// Shape parameters shared by the attention kernels (mirrors `Params` in
// `src/kernels/attention.rs`), prepended to `attention_prefill.wgsl` and `attention_decode.wgsl`.
struct Params {
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    max_tok: u32,
    q_stride: u32,  // elements per q row (multiple of 4)
    q_offset: u32,  // elements (multiple of 4)
    kv_stride: u32, // elements per cache row (n_kv_head * head_dim)
    causal: u32,
    scale: f32,
    n_split: u32,   // decode: key splits
    _pad0: u32,
    _pad1: u32,
}

