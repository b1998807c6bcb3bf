//! The CPU backend's kernels (issue 30): ops named as their `kernels::*` GPU counterparts,
//! built for CPUs rather than translated from the shaders. [`simd`] picks the instruction set
//! once per process, [`pool`] runs each op's tasks on persistent threads, [`quant`] holds the
//! per-format row dot products (fast and exact modes), [`mod@matvec`] is the decode matvec and
//! [`mod@bench`] measures them against this machine's memory bandwidth.
//! The decoder's other f32 ops: [`norm`] (RMSNorm, LayerNorm), [`elementwise`] (residual add,
//! SiLU/sigmoid gates, GELU), [`rope`] (RoPE, M-RoPE) and [`attention`] (online-softmax
//! attention over the KV cache), sharing [`ops`]' `ShapeError` and task split.

pub mod attention;
pub mod bench;
pub mod elementwise;
pub mod matvec;
pub mod norm;
pub mod ops;
pub mod pool;
pub mod quant;
pub mod rope;
pub mod simd;

pub use matvec::{matvec, matvec_into, Epilogue, MatvecError, Mode, Output, Weight};
pub use ops::ShapeError;
pub use pool::{PoolError, ThreadPool};
pub use simd::{Simd, SimdError};
