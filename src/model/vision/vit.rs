//! The pre-norm ViT that the Pixtral and Qwen2-VL-family encoders share (`pixtral/`,
//! `qwen_vl/`, which keep what is their own: patch embedding, position embeddings and
//! projector): the blocks ([`VitPass::record`]), the per-image buffers ([`VitScratch`]) and
//! the pass of one image in one command buffer ([`encode`]). Images are encoded one at a
//! time, their `n` patches in row-major grid order (attention over one image's patches is the
//! block-diagonal attention of a batch, without the mask). A block, on the residual stream
//! `x` (`[n][hidden]`):
//!
//! ```text
//! h = norm1(x);  q, k, v = h·Wq, h·Wk, h·Wv;  q, k = rope_2d(q), rope_2d(k)
//! x += attention(q, k, v)·Wo          (non-causal: every patch sees every patch)
//! x += ffn(norm2(x))
//! ```
//!
//! The encoders differ only in what [`VitShape`] and [`VitLayer`] say: the norm (Pixtral:
//! RMSNorm; Qwen: LayerNorm with bias), the projections (Pixtral: q, k and v apart, no
//! biases; Qwen: one fused `[3 hidden][hidden]` qkv with bias, q read in place and k, v copied
//! out, and a bias on the output projection), the 2D RoPE pairs (adjacent pairs of llama.cpp's
//! permuted rows, or rotate-half; the frequency table is the encoder's) and the FFN
//! (SiLU-gated `down(silu(gate·h) * up·h)`, or `down(gelu_tanh(up·h + b)) + b`). The FFN runs
//! in chunks of rows so that its `[rows][n_ff]` buffers stay within the binding limit (and
//! 64 MiB).
//!
//! References: transformers `PixtralTransformer` (`PixtralAttentionLayer`) and
//! `Qwen3_5VisionBlock`; llama.cpp `tools/mtmd/clip.cpp` `build_vit`, which builds both from
//! the norm type, the FFN type and the biases a file has.

use crate::backend::gpu::{GpuError, Result as GpuResult};
use crate::backend::{Buffer, Device, Program};
use crate::image::PixelImage;
use crate::kernels::attention::{attention_prefill, AttnShape, StepParams};
use crate::kernels::matmul::{self, record_rows, MatmulCompute};
use crate::kernels::quant::Weight;
use crate::kernels::rope::RopeMode;
use crate::kernels::vision::{rope_2d, PatchGrid, Rope2dFreqs, Rope2dLayout};
use crate::kernels::vision_qwen as vq;
use crate::kernels::{elementwise, norm};

use super::ImageFeatures;

/// Largest scratch buffer the FFN of one chunk of patch rows takes.
const FFN_CHUNK_BYTES: u64 = 64 << 20;

/// Bytes of `rows x cols` f32 values.
pub fn f32s(rows: u64, cols: u32) -> u64 {
    rows * cols as u64 * 4
}

/// How a block projects q, k and v.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvKind {
    /// Three matrices without biases, q, k and v each `[n][q_dim]` (Pixtral).
    Split,
    /// One `[3 q_dim][hidden]` matrix with a bias: rows `[n][3 q_dim]`, q read in place (Qwen).
    Fused,
}

/// A block's FFN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnKind {
    /// `down(silu(gate·h) * up·h)`, no biases (Pixtral).
    SiluGated,
    /// `down(gelu_tanh(up·h + b_up)) + b_down` (Qwen).
    GeluTanh,
}

/// The widths of an encoder's blocks and per-image buffers.
#[derive(Clone, Copy, Debug)]
pub struct VitShape {
    pub hidden: u32,
    pub n_head: u32,
    pub head_dim: u32,
    pub n_ff: u32,
    pub norm_eps: f32,
    /// Pixels per patch side.
    pub patch_size: u32,
    /// Width of the features (the text model's hidden size).
    pub text_hidden: u32,
    pub qkv: QkvKind,
    pub ffn: FfnKind,
    /// The 2D RoPE's pairs.
    pub rope: RopeMode,
    /// The buffers' label prefix.
    pub label: &'static str,
}

impl VitShape {
    fn q_dim(&self) -> u32 {
        self.n_head * self.head_dim
    }

    /// Columns of [`VitScratch::q`].
    fn q_cols(&self) -> u32 {
        match self.qkv {
            QkvKind::Split => self.q_dim(),
            QkvKind::Fused => 3 * self.q_dim(),
        }
    }

    /// Columns of the unfolded patches: `3 * patch * patch`.
    fn patch_dim(&self) -> u32 {
        3 * self.patch_size * self.patch_size
    }

    /// Rows of one FFN chunk of `n` patches under a binding limit of `max_binding` bytes.
    fn ffn_rows(&self, n: u32, max_binding: u64) -> u32 {
        (max_binding.min(FFN_CHUNK_BYTES) / f32s(1, self.n_ff)).clamp(1, n as u64) as u32
    }

    /// Every buffer [`VitScratch::new`] allocates for an image of `grid` patches, as `(what,
    /// bytes)` (the step uniform aside).
    pub fn scratch_buffers(&self, grid: PatchGrid, max_binding: u64) -> Vec<(&'static str, u64)> {
        let (n, merged) = (grid.n_patches() as u64, grid.n_merged() as u64);
        let (d, q) = (self.hidden, self.q_dim());
        let ffn = f32s(self.ffn_rows(grid.n_patches(), max_binding) as u64, self.n_ff);
        let mut buffers = vec![
            ("pixels", 3 * f32s(grid.rows as u64 * self.patch_size as u64, grid.cols * self.patch_size)),
            ("patches", f32s(n, self.patch_dim())),
            ("residual stream", f32s(n, d)),
            ("normed activations", f32s(n, d)),
            ("queries", f32s(n, self.q_cols())),
            ("keys", f32s(n, q)),
            ("values", f32s(n, q)),
            ("attention output", f32s(n, q)),
            ("FFN chunk", ffn),
        ];
        if self.ffn == FfnKind::SiluGated {
            buffers.push(("FFN gate chunk", ffn));
        }
        buffers.push(("features", f32s(merged, self.text_hidden)));
        buffers
    }
}

/// The buffers of one image's blocks, and its pixels and features (the encoder keeps its own
/// buffers beside them); freed when the pass's features are returned.
pub struct VitScratch {
    pub step: Buffer,
    pub pixels: Buffer,
    /// The unfolded patches `[n][3 * patch * patch]`.
    pub patches: Buffer,
    /// The residual stream and the normed activations, `[n][hidden]` each.
    pub x: Buffer,
    pub h: Buffer,
    /// q `[n][q_dim]`, or the fused q, k, v rows `[n][3 q_dim]`.
    pub q: Buffer,
    pub k: Buffer,
    pub v: Buffer,
    pub attn: Buffer,
    /// FFN chunk: `[ffn_rows][n_ff]` each (the gate for a SiLU-gated FFN only).
    pub ffn_rows: u32,
    pub gate: Option<Buffer>,
    pub up: Buffer,
    /// The features `[n_merged][text_hidden]`.
    pub out: Buffer,
}

impl VitScratch {
    pub fn new(dev: &Device, c: &VitShape, image: &PixelImage, grid: PatchGrid) -> GpuResult<VitScratch> {
        if image.data.len() != 3 * image.height as usize * image.width as usize {
            return Err(GpuError::Shape(format!(
                "{} pixel values for a {}x{} RGB image",
                image.data.len(),
                image.width,
                image.height
            )));
        }
        let (n, merged) = (grid.n_patches() as u64, grid.n_merged() as u64);
        let ffn_rows = c.ffn_rows(grid.n_patches(), dev.caps().max_storage_binding);
        let buf = |label: &str, rows: u64, cols: u32| dev.storage(&format!("{}.{label}", c.label), f32s(rows, cols));
        let s = VitScratch {
            step: StepParams::create_buffer(dev)?,
            pixels: dev.storage_with(&format!("{}.pixels", c.label), bytemuck::cast_slice(&image.data))?,
            patches: buf("patches", n, c.patch_dim())?,
            x: buf("x", n, c.hidden)?,
            h: buf("h", n, c.hidden)?,
            q: buf(if c.qkv == QkvKind::Fused { "qkv" } else { "q" }, n, c.q_cols())?,
            k: buf("k", n, c.q_dim())?,
            v: buf("v", n, c.q_dim())?,
            attn: buf("attn", n, c.q_dim())?,
            ffn_rows,
            gate: (c.ffn == FfnKind::SiluGated).then(|| buf("gate", ffn_rows as u64, c.n_ff)).transpose()?,
            up: buf("up", ffn_rows as u64, c.n_ff)?,
            out: buf("features", merged, c.text_hidden)?,
        };
        debug_assert_eq!(s.bytes(), c.scratch_buffers(grid, dev.caps().max_storage_binding).iter().map(|b| b.1).sum::<u64>());
        Ok(s)
    }

    /// Bytes of every buffer (the step uniform aside).
    fn bytes(&self) -> u64 {
        let all = [&self.pixels, &self.patches, &self.x, &self.h, &self.q, &self.k, &self.v, &self.attn, &self.up, &self.out];
        all.into_iter().chain(&self.gate).map(Buffer::size).sum()
    }
}

/// A block's norm and its weights.
#[derive(Clone, Copy)]
pub enum Norm<'a> {
    Rms(&'a Buffer),
    /// Weight and bias.
    Layer(&'a Buffer, &'a Buffer),
}

impl Norm<'_> {
    #[allow(clippy::too_many_arguments)]
    fn record(self, p: &mut Program, dev: &Device, x: &Buffer, y: &Buffer, rows: u32, dim: u32, eps: f32) -> GpuResult<()> {
        match self {
            Norm::Rms(w) => norm::rms_norm(p, dev, x, w, y, rows, dim, eps),
            Norm::Layer(w, b) => vq::layer_norm(p, dev, x, w, b, y, rows, dim, eps),
        }
    }
}

/// A block's q, k, v projection weights ([`QkvKind`]).
#[derive(Clone, Copy)]
pub enum Qkv<'a> {
    Split { q: &'a Weight, k: &'a Weight, v: &'a Weight },
    Fused { w: &'a Weight, b: &'a Buffer },
}

/// A block's FFN weights ([`FfnKind`]).
#[derive(Clone, Copy)]
pub enum Ffn<'a> {
    SiluGated { gate: &'a Weight, up: &'a Weight, down: &'a Weight },
    GeluTanh { up: &'a Weight, up_b: &'a Buffer, down: &'a Weight, down_b: &'a Buffer },
}

/// One block's weights, borrowed from the encoder's.
#[derive(Clone, Copy)]
pub struct VitLayer<'a> {
    pub norm1: Norm<'a>,
    pub qkv: Qkv<'a>,
    /// The attention output projection and its bias, if any.
    pub o: &'a Weight,
    pub o_b: Option<&'a Buffer>,
    pub norm2: Norm<'a>,
    pub ffn: Ffn<'a>,
}

/// What one image's blocks run with.
pub struct VitPass<'a> {
    pub shape: &'a VitShape,
    pub rope: &'a Rope2dFreqs,
    pub compute: MatmulCompute,
    pub grid: PatchGrid,
}

impl VitPass<'_> {
    /// Records `layers` on the residual stream `s.x`. Each FFN's output goes to `ffn_out`, an
    /// `[n][hidden]` buffer free while the FFN runs (Pixtral: `s.q`, free until the next
    /// block; Qwen: its own `tmp`).
    pub fn record<'w>(
        &self,
        p: &mut Program,
        dev: &Device,
        s: &VitScratch,
        ffn_out: &Buffer,
        layers: impl IntoIterator<Item = VitLayer<'w>>,
    ) -> GpuResult<()> {
        let (c, grid, mm) = (self.shape, self.grid, self.compute);
        let (d, n, eps) = (c.hidden, grid.n_patches(), c.norm_eps);
        let dense = Rope2dLayout::dense(c.n_head, c.head_dim, c.rope);
        let attn = AttnShape { causal: false, ..AttnShape::new(c.n_head, c.n_head, c.head_dim, n) };
        for l in layers {
            l.norm1.record(p, dev, &s.x, &s.h, n, d, eps)?;
            let attn = match l.qkv {
                Qkv::Split { q, k, v } => {
                    matmul::record_with(p, dev, q, &s.h, &s.q, n, mm)?;
                    matmul::record_with(p, dev, k, &s.h, &s.k, n, mm)?;
                    matmul::record_with(p, dev, v, &s.h, &s.v, n, mm)?;
                    rope_2d(p, dev, self.rope, &s.q, &dense, grid)?;
                    rope_2d(p, dev, self.rope, &s.k, &dense, grid)?;
                    attn
                }
                Qkv::Fused { w, b } => {
                    let fused = |offset| Rope2dLayout { offset, stride: 3 * d, ..dense };
                    matmul::record_with(p, dev, w, &s.h, &s.q, n, mm)?;
                    vq::add_bias(p, dev, b, &s.q, n, 3 * d)?;
                    rope_2d(p, dev, self.rope, &s.q, &fused(0), grid)?;
                    rope_2d(p, dev, self.rope, &s.q, &fused(d), grid)?;
                    vq::copy_cols(p, dev, &s.q, &s.k, n, d, 3 * d, d)?;
                    vq::copy_cols(p, dev, &s.q, &s.v, n, d, 3 * d, 2 * d)?;
                    AttnShape { q_stride: 3 * d, q_offset: 0, ..attn }
                }
            };
            attention_prefill(p, dev, &attn, &s.step, &s.q, &s.k, &s.v, &s.attn)?;
            matmul::record_with(p, dev, l.o, &s.attn, &s.h, n, mm)?;
            if let Some(b) = l.o_b {
                vq::add_bias(p, dev, b, &s.h, n, d)?;
            }
            elementwise::add_inplace(p, dev, &s.h, &s.x, n * d)?;
            l.norm2.record(p, dev, &s.x, &s.h, n, d, eps)?;
            self.ffn(p, dev, s, l.ffn, ffn_out)?;
            elementwise::add_inplace(p, dev, ffn_out, &s.x, n * d)?;
        }
        Ok(())
    }

    /// The FFN of `s.h` into `out`, `s.ffn_rows` rows at a time.
    fn ffn(&self, p: &mut Program, dev: &Device, s: &VitScratch, ffn: Ffn<'_>, out: &Buffer) -> GpuResult<()> {
        let (ff, n, mm) = (self.shape.n_ff, self.grid.n_patches(), self.compute);
        for r0 in (0..n).step_by(s.ffn_rows as usize) {
            let m = s.ffn_rows.min(n - r0);
            match ffn {
                Ffn::SiluGated { gate, up, down } => {
                    let g = s.gate.as_ref().ok_or_else(|| GpuError::Shape("a SiLU-gated FFN without a gate buffer".into()))?;
                    record_rows(p, dev, gate, (&s.h, r0), (g, 0), m, mm)?;
                    record_rows(p, dev, up, (&s.h, r0), (&s.up, 0), m, mm)?;
                    elementwise::silu_mul_inplace(p, dev, &s.up, g, m * ff)?;
                    record_rows(p, dev, down, (g, 0), (out, r0), m, mm)?;
                }
                Ffn::GeluTanh { up, up_b, down, .. } => {
                    record_rows(p, dev, up, (&s.h, r0), (&s.up, 0), m, mm)?;
                    vq::add_bias(p, dev, up_b, &s.up, m, ff)?;
                    vq::gelu_tanh(p, dev, &s.up, m * ff)?;
                    record_rows(p, dev, down, (&s.up, 0), (out, r0), m, mm)?;
                }
            }
        }
        match ffn {
            Ffn::GeluTanh { down_b, .. } => vq::add_bias(p, dev, down_b, out, n, self.shape.hidden),
            Ffn::SiluGated { .. } => Ok(()),
        }
    }
}

/// An encoder around the shared blocks: what [`encode`] and [`record_pass`] ask of it.
pub(super) trait PatchEncoder {
    /// The encoder's own per-image buffers (position taps, projector activations).
    type Own;
    fn vit_shape(&self) -> VitShape;
    /// Checks an image's patch grid against the encoder's merge.
    fn check_grid(&self, grid: PatchGrid) -> GpuResult<()>;
    fn own_scratch(&self, dev: &Device, grid: PatchGrid) -> GpuResult<Self::Own>;
    /// Records the whole pass: patch embedding, blocks ([`VitPass::record`]), projector into `s.out`.
    fn record(&self, dev: &Device, s: &VitScratch, own: &Self::Own, image: &PixelImage, grid: PatchGrid) -> GpuResult<Program>;
}

/// Encodes one image: records and submits the whole encoder in one command buffer and
/// returns the features without waiting for them (the GPU queue orders later work).
pub(super) fn encode<E: PatchEncoder>(e: &E, dev: &Device, image: &PixelImage) -> GpuResult<ImageFeatures> {
    let shape = e.vit_shape();
    let grid = patch_grid(e, &shape, image)?;
    let s = VitScratch::new(dev, &shape, image, grid)?;
    let own = e.own_scratch(dev, grid)?;
    let prog = e.record(dev, &s, &own, image, grid)?;
    StepParams::new(0, grid.n_patches(), 0).write(dev, &s.step)?;
    prog.run(dev)?;
    Ok(ImageFeatures { buffer: s.out, rows: grid.rows / 2, cols: grid.cols / 2, dim: shape.text_hidden, content: None })
}

/// The recorded pass of one image with fresh scratch, not run (benchmarks read its launch
/// geometry).
pub(super) fn record_pass<E: PatchEncoder>(e: &E, dev: &Device, image: &PixelImage) -> GpuResult<Program> {
    let shape = e.vit_shape();
    let grid = patch_grid(e, &shape, image)?;
    let s = VitScratch::new(dev, &shape, image, grid)?;
    e.record(dev, &s, &e.own_scratch(dev, grid)?, image, grid)
}

/// The patch grid of `image`, checked by the encoder.
fn patch_grid<E: PatchEncoder>(e: &E, shape: &VitShape, image: &PixelImage) -> GpuResult<PatchGrid> {
    let grid = PatchGrid::of_image(image.height, image.width, shape.patch_size)?;
    e.check_grid(grid)?;
    Ok(grid)
}
