//! The plain data both backends' ops take: shapes, layouts, tables and constants that the
//! kernel wrappers (`kernels::*`, which record an op on either backend) and the two sides
//! they call (the WGSL dispatches of `backend::gpu::*`, the CPU kernels of `backend::cpu::*`)
//! share. Each family's module re-exports its own and holds their methods; here they depend
//! on nothing that records, so either side can use them without depending on the wrappers
//! that call it.

use bytemuck::{Pod, Zeroable};

// Products (`matvec`, `matmul`).

/// What the dispatch does with its sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// `y = W x`.
    Store,
    /// `y += W x` (the residual add).
    Add,
    /// W stacks `[gate; up]` (2h rows): `y[r] = silu(gate_r . x) * (up_r . x)` for `r < h`.
    SiluMul,
}

/// Where a product lands: token `t`'s output row `r` is `y[t * stride + offset + r]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output {
    pub stride: u32,
    pub offset: u32,
    pub epilogue: Epilogue,
}

/// Tile type and inner-product precision of the tiled matmul (the GPU's; the CPU's matmul
/// takes its own mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatmulCompute {
    /// f32 tiles, f32 accumulation: the default, on every adapter.
    #[default]
    F32,
    /// f16 tiles and f16 products summed per K step of 32, accumulated in f32 across steps.
    /// Needs `shader-f16` ([`Caps::f16`](crate::backend::gpu::Caps)); inputs beyond ±65504 are clamped.
    F16,
}

// Attention over the KV cache (`attention`).

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// f32: exact, the default.
    #[default]
    F32,
    /// IEEE binary16, two per `u32` word (element 2i in the low half, as `pack2x16float`):
    /// half the memory and half the attention reads. Written with `pack2x16float` (rounding
    /// to a neighbouring f16, |rel err| <= 2^-10; values beyond ±65504 are undefined), read
    /// with `unpack2x16float`: no `shader-f16` needed.
    F16,
}

/// Record-time shape of an attention dispatch.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_head: u32,
    pub n_kv_head: u32,
    /// <= [`MAX_HEAD_DIM`](super::attention::MAX_HEAD_DIM), a multiple of 4 (the kernels are built for its [`RowWidth`](crate::backend::gpu::attention::RowWidth)).
    pub head_dim: u32,
    /// Token rows the grid covers; the step's `n_tok` may be smaller.
    pub max_tok: u32,
    /// q row stride and first column (elements, multiples of 4): dense is `n_head*head_dim`, 0.
    pub q_stride: u32,
    pub q_offset: u32,
    /// Score scale, normally `1/sqrt(head_dim)`.
    pub scale: f32,
    /// Causal mask (text); false lets every new token see all `kv_start + n_tok` keys (vision).
    pub causal: bool,
    /// Element type of the caches read.
    pub kv: KvDtype,
    /// Mllama's vision mask: query rows `t >= valid_rows` (padding tokens) see only keys
    /// `< valid_rows`; the others see every key. `u32::MAX` (the default): no such rows.
    pub valid_rows: u32,
}

// Rotary position embedding (`rope`).

/// Which elements form a rotated pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeMode {
    /// (x[2i], x[2i+1]): llama.cpp "normal" RoPE, for GGUF `llama` / `mistral3` Q and K.
    Adjacent,
    /// (x[i], x[i + n_rot/2]): transformers' `rotate_half` (llama.cpp "neox").
    RotateHalf,
}

/// A CPU frequency table: `inv_freq[i]` for i in 0..dim/2, optional per-frequency divisors
/// (`freq_factors`, llama.cpp's `rope_freqs` tensor: Llama 3's RoPE scaling; angles are
/// `f32(pos) * inv_freq[i] / freq_factors[i]`, as ggml computes them) and the cos/sin
/// multiplier.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    pub inv_freq: Vec<f32>,
    pub attn_factor: f32,
    pub freq_factors: Option<Vec<f32>>,
}

/// Llama-4 / Ministral 3 query scaling `1 + beta * ln(1 + floor(pos / orig_ctx))`; beta 0 is off.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QScale {
    pub beta: f32,
    pub orig_ctx: u32,
}

/// Where the heads of one token row live: element (t, h, d) is
/// `buf[t * stride + offset + h * head_dim + d]` (dense: `stride = n_heads * head_dim`, offset 0;
/// a fused QKV buffer uses its row width and the section's column offset).
#[derive(Clone, Copy, Debug)]
pub struct RopeLayout {
    pub n_heads: u32,
    pub head_dim: u32,
    pub mode: RopeMode,
    /// Rows covered by the dispatch; the kernel stops at the step's `n_tok`.
    pub max_tok: u32,
    pub stride: u32,
    pub offset: u32,
}

/// The three sections of a fused q|k|v row: q heads from column 0, `k` (its stride is the
/// row's, its offset k's first column), v at `v_offset`.
#[derive(Clone, Copy, Debug)]
pub struct QkvRope {
    pub n_q_heads: u32,
    pub k: RopeLayout,
    pub v_offset: u32,
    /// The query scaling (q only).
    pub q_scale: QScale,
}

/// The axis (0: t, 1: h, 2: w) whose position turns rotated pair `i` under `sections`.
pub fn mrope_axis(i: usize, sections: [u32; 3]) -> usize {
    match i % 3 {
        1 if i < 3 * sections[1] as usize => 1,
        2 if i < 3 * sections[2] as usize => 2,
        _ => 0,
    }
}

// Vision encoders (`vision`).

/// The patch grid of one image: `rows = H / patch`, `cols = W / patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchGrid {
    pub rows: u32,
    pub cols: u32,
}

/// Where q or k heads live: element (t, h, d) of the image's token t is
/// `x[(row0 + t) * stride + offset + h * head_dim + d]`.
#[derive(Clone, Copy, Debug)]
pub struct Rope2dLayout {
    pub n_heads: u32,
    /// A multiple of 4 (two halves of pairs).
    pub head_dim: u32,
    pub mode: RopeMode,
    pub stride: u32,
    pub offset: u32,
    /// First token row of the image in the buffer (several images share one buffer).
    pub row0: u32,
}

// Qwen vision (`vision_qwen`).

/// One term of a [`gather_rows`](super::vision_qwen::gather_rows) output row: `weight * src[row]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq)]
pub struct Tap {
    pub row: u32,
    pub weight: f32,
}

// Gated DeltaNet inputs (`gdn_prep`).

/// torch's `F.softplus` threshold: `softplus(x) = x` above it.
pub const SOFTPLUS_THRESHOLD: f32 = 20.0;

/// Where a per-token vector lives in a buffer of rows: element `(t, i)` is
/// `buf[t * stride + offset + i]` (a projection's output row, or a window of a fused one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowWindow {
    pub stride: u32,
    pub offset: u32,
}

/// The conv's shape: up to `max_tok` rows of `channels`, kernel `kernel` (Qwen3.5: 4).
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    pub max_tok: u32,
    pub channels: u32,
    pub kernel: u32,
}

/// The gated norm's shape: up to `max_tok` rows of `n_heads` heads of `head_dim`.
#[derive(Clone, Copy, Debug)]
pub struct GatedNormShape {
    pub max_tok: u32,
    pub n_heads: u32,
    pub head_dim: u32,
    /// Qwen3.5: `rms_norm_eps` = 1e-6.
    pub eps: f32,
}

// The gated delta rule (`delta_net`).

/// The L2-norm epsilon of transformers' `l2norm` (as FLA's).
pub const L2_EPS: f64 = 1e-6;

/// Which k head v head h reads when Hv > Hk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KHeads {
    /// `h % Hk`: llama.cpp's converter reorders the V heads of a GGUF from grouped to tiled
    /// order (`_reorder_v_heads`, so that ggml's broadcast repeats the k heads), hence GGUF files.
    Tiled,
    /// `h / (Hv / Hk)`: Hugging Face checkpoints (`repeat_interleave` of q and k).
    Grouped,
}

/// Shapes and the places of q, k, v in the rows of the mixed (conv1d output) buffer: element d
/// of q head kh at token t is `qkv[t * row_stride + q_offset + kh * d_k + d]`, k likewise at
/// `k_offset`, v head h at `v_offset + h * d_v + d`.
#[derive(Clone, Copy, Debug)]
pub struct DeltaNetLayout {
    pub n_k_heads: u32,
    pub n_v_heads: u32,
    pub d_k: u32,
    pub d_v: u32,
    pub row_stride: u32,
    pub q_offset: u32,
    pub k_offset: u32,
    pub v_offset: u32,
    pub k_heads: KHeads,
}

// Mllama's cross-attention (`cross_attention`).

/// Record-time shape of a cross-attention dispatch.
#[derive(Clone, Copy, Debug)]
pub struct CrossAttnShape {
    pub n_tok: u32,
    pub n_head: u32,
    pub n_kv_head: u32,
    pub head_dim: u32,
    /// Floats per q row (`n_head * head_dim` when dense).
    pub q_stride: u32,
    pub n_tiles: u32,
    pub tile_keys: u32,
    /// Score scale, `1/sqrt(head_dim)`.
    pub scale: f32,
}
