//! The CPU backend's kernel tests, one module per `cpu_*.rs` file, in one binary: natively, and
//! built for aarch64 (scripts/test_neon.sh) and wasm32 (scripts/test_wasm_simd.sh), which run
//! some of the modules (`cargo test --test cpu MODULE::`).

mod cpu_common;
mod cpu_delta_net;
mod cpu_kernels;
mod cpu_levels;
mod cpu_matmul;
mod cpu_matvec;
mod cpu_program;
mod cpu_vision;
