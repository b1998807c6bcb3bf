//! WGSL kernel families: one module per `shaders/*.wgsl` file. Each module mirrors its
//! shader's params struct, records dispatches into a [`crate::gpu::Program`] and carries a
//! plain CPU f32 reference used by the tests.

pub mod elementwise;
pub mod norm;
pub mod sample;
pub mod quant;
pub mod matvec;
pub mod matmul;
pub mod embedding;
pub mod attention;
pub mod rope;
pub mod vision;
pub mod bench;
