// The per-step uniform written by the decode loop (mirrors `kernels::attention::StepParams`),
// prepended to the RoPE and attention shaders.
struct Step {
    kv_start: u32,   // cache row of the first new token
    n_tok: u32,      // new tokens this step (<= the recorded max_tok)
    rope_pos0: u32,  // position id of the first new token
    kv_base: u32,    // the sequence's first row in the cache buffers (its range of a KV arena)
}


// A token row's step and the row of its sequence's first token in the step's rows: what
// `seq_of(t)` gives, from the prelude the Rust side picks (one sequence's uniform `step`, or
// a batched step's `steps`, one sequence per row).
struct SeqStep {
    step: Step,
    tok0: u32,
}
