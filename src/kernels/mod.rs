//! WGSL kernel families: one module per `shaders/*.wgsl` file. Each module mirrors its
//! shader's params struct, records dispatches into a [`crate::gpu::Program`] and carries a
//! plain CPU f32 reference used by the tests.

pub mod attention;
pub mod bench;
pub mod elementwise;
pub mod embedding;
pub mod matmul;
pub mod matvec;
pub mod norm;
pub mod quant;
pub mod rope;
pub mod sample;
pub mod vision;
