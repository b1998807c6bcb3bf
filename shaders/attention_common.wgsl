// Declarations shared by the attention kernels, prepended to `attention_prefill.wgsl` and
// `attention_decode.wgsl` by `src/kernels/attention.rs`: their shape parameters (`Params`
// mirrors `Params` there), the row width of their workgroup tiles (`HD4`) and the start of
// the online softmax's running max (`NEG`).
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
    n_split: u32,   // decode: key splits of the grid
    split_keys: u32, // decode: fewest keys per split (fewer splits are used for short contexts)
    _pad1: u32,
}

const HD4: u32 = 32u;      // vec4s per row of the workgroup tiles: MAX_HEAD_DIM (128) / 4
const NEG: f32 = -1.0e30;  // initial running max of the online softmax
