//! Compute backends behind the model code. `cpu`: native CPU kernels (runtime SIMD
//! dispatch, a persistent thread pool); the wgpu backend is `gpu` + `kernels` for now.

pub mod cpu;
