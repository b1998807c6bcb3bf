// The per-step uniform written by the decode loop (mirrors `kernels::attention::StepParams`),
// prepended to the RoPE and attention shaders.
struct Step {
    kv_start: u32,   // cache row of the first new token
    n_tok: u32,      // new tokens this step (<= the recorded max_tok)
    rope_pos0: u32,  // position id of the first new token
    _pad: u32,
}

