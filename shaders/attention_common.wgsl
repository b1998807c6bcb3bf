// Declarations shared by the attention kernels, prepended to `attention_prefill.wgsl`,
// `attention_prefill_gpu.wgsl`, `attention_decode.wgsl` and `attention_decode_rows.wgsl` by
// `src/backend/gpu/attention.rs`: their shape parameters (`Params` mirrors `Params` there),
// the start of the online softmax's running max (`NEG`) and decode's split plan. The row
// width of their tiles and register arrays (`HD4`, vec4s per row: 32 for head_dim <= 128, 64
// for head_dim <= 256) is not here: a width prelude chosen per head_dim by the Rust side
// defines it, with the sizes that depend on it.
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
    valid_rows: u32, // prefill: rows t >= valid_rows see only keys < valid_rows (Mllama vision)
}

const NEG: f32 = -1.0e30;  // initial running max of the online softmax

// Decode's split lengths are whole tiles of DECODE_TILE keys (`DECODE_TILE` in
// src/backend/gpu/attention.rs).
const DECODE_TILE: u32 = 64u;

/// Decode's (keys per split, splits that hold keys) for `kv_len` keys: both decode kernels and
/// their combine passes use it (`split_keys` / `active_splits` in src/backend/gpu/attention.rs).
fn split_plan(kv_len: u32) -> vec2<u32> {
    let n = max(kv_len, 1u);
    let want = clamp((n + p.split_keys - 1u) / p.split_keys, 1u, p.n_split);
    let per = ((n + want - 1u) / want + DECODE_TILE - 1u) / DECODE_TILE * DECODE_TILE;
    return vec2<u32>(per, (n + per - 1u) / per);
}
