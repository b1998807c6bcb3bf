//! The seam between the model code and the two backends: one module per op family, each with
//! the wrappers the model code records with (on `backend` handles: a [`Program`], a
//! [`Device`], [`Buffer`]s). A wrapper makes the checks common to both backends, opens the
//! program's side for the device ([`Program::on`]) and records the op there: the WGSL
//! dispatch of `backend::gpu::<op>` or a CPU op calling `backend::cpu::<op>`, so the model
//! code is written once for both. Each module also carries the plain f32/f64 references the
//! tests compare both sides with; [`shapes`] holds the plain data both sides take. (Gated
//! DeltaNet's WGSL side is still in [`delta_net`].)
//!
//! [`Program`]: crate::backend::Program
//! [`Program::on`]: crate::backend::Program::on
//! [`Device`]: crate::backend::Device
//! [`Buffer`]: crate::backend::Buffer

pub mod attention;
pub mod bench;
pub mod cross_attention;
pub mod delta_net;
pub mod elementwise;
pub mod embedding;
pub mod gdn_prep;
pub mod matmul;
pub mod matvec;
pub mod norm;
pub mod quant;
pub mod rope;
pub mod sample;
pub mod shapes;
pub mod vision;
pub mod vision_mllama;
pub mod vision_qwen;
