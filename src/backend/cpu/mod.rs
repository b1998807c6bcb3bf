//! The CPU backend's kernels (issue 30): ops named as their `kernels::*` GPU counterparts,
//! built for CPUs rather than translated from the shaders. [`simd`] picks the instruction set
//! once per process, [`pool`] runs each op's tasks on persistent threads, [`quant`] holds the
//! per-format row dot products (fast and exact modes) and the matmul's tiles, [`mod@matvec`] is
//! the decode matvec, [`mod@matmul`] the prefill matmul (panels of weight rows against tiles
//! of tokens) and [`mod@bench`] measures them against this machine's memory bandwidth.
//! The decoder's other f32 ops: [`norm`] (RMSNorm, LayerNorm), [`elementwise`] (residual add,
//! SiLU/sigmoid gates, GELU), [`rope`] (RoPE, M-RoPE), [`attention`] (online-softmax
//! attention over the KV cache), and Qwen3.5's linear attention: [`gdn_prep`] (causal conv1d,
//! decay, gated norm), [`delta_net`] (the gated delta rule's recurrence) and
//! [`delta_net_chunked`] (its chunked form, for prefill), sharing [`ops`]' `ShapeError` and
//! task split. Multimodal: [`mod@embedding`] (token rows of any weight format),
//! [`cross_attention`] (Mllama's masked attention over image states), and the vision
//! encoders' [`vision`] (Pixtral), [`vision_qwen`] and [`vision_mllama`]. [`program`] holds the
//! buffers and recorded programs the ops will run in once models record onto this backend.

pub mod attention;
pub mod bench;
pub mod cross_attention;
pub mod delta_net;
pub mod delta_net_chunked;
pub mod device;
pub mod elementwise;
pub mod embedding;
pub mod gdn_prep;
pub mod matmul;
pub mod matvec;
pub mod norm;
pub mod ops;
pub mod pool;
pub mod program;
pub mod quant;
pub mod repacked;
pub mod rope;
pub mod simd;
pub mod vision;
pub mod vision_mllama;
pub mod vision_qwen;

pub use device::Device;
pub use matmul::{matmul, matmul_into};
pub use matvec::{matvec, matvec_into, Epilogue, MatvecError, Mode, Output, Weight};
pub use ops::ShapeError;
pub use pool::{PoolActivity, PoolError, ThreadPool};
pub use program::{Buffer, Mapped, Program, ProgramError};
pub use repacked::{matmul_repacked, matmul_repacked_into, Repacked};
pub use simd::{Simd, SimdError};
