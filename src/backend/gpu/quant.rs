//! The weight decoders the products prepend (`shaders/quant.wgsl`: one decoder per
//! [`WeightFormat`](crate::kernels::quant::WeightFormat), chosen by the `WTYPE` override) and
//! their view of a weight part ([`WLayout`]). The parts' byte layout is
//! `kernels::quant`'s ([`repack`](crate::kernels::quant::repack)).

use bytemuck::{Pod, Zeroable};

use super::KernelSpec;
use crate::kernels::quant::{Weight, WeightPart};

/// The shared decoder source, prepended to matvec, matmul and embedding kernels.
pub const QUANT_WGSL: &str = include_str!("../../../shaders/quant.wgsl");

/// The decoder's view of a part, the `WLayout` struct of `shaders/quant.wgsl` (padded to 16 B).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct WLayout {
    /// Words per row (block bodies only for split types).
    pub row_words: u32,
    /// Blocks per row.
    pub bpr: u32,
    /// Word offset of the split f16 scales.
    pub scale_base: u32,
    pub _pad: u32,
}

/// The decoder layout of `part` of `w`.
pub fn layout(w: &Weight, part: &WeightPart) -> WLayout {
    let cols = w.cols as usize;
    WLayout {
        row_words: (w.format.row_body_bytes(cols) / 4) as u32,
        bpr: (cols / w.format.block()) as u32,
        scale_base: part.scale_base,
        _pad: 0,
    }
}

/// `spec` specialised for `w`: the decoders prepended, `WTYPE` set.
pub fn specialise(w: &Weight, spec: KernelSpec) -> KernelSpec {
    spec.with_prefix(QUANT_WGSL).with_constant("WTYPE", w.format.code() as i64)
}
