//! Pixtral vision-encoder ops: patch unfold (im2col) for the patch convolution, axial 2D RoPE,
//! and the 2x2 patch merger's unfold; the GPU side in `backend::gpu::vision`
//! (`shaders/vision.wgsl`), the CPU side in `backend::cpu::vision`. Reference: transformers
//! 5.x `PixtralVisionModel` (`patch_conv`, `PixtralVisionRotaryEmbedding`) and
//! `Mistral3PatchMerger` (`F.unfold(kernel_size=2, stride=2)`).
//!
//! - Patch embedding = [`patch_unfold`] then [`matmul::record`](super::matmul::record) with
//!   the conv weight as a `[hidden][C*P*P]` [`Weight`](super::quant::Weight): GGUF
//!   `v.patch_embd.weight` has dims `[P, P, C, hidden]`, i.e. torch `[hidden][C][P][P]`
//!   row-major, whose rows are already flattened `[c][ky][kx]` — the column order of the patches.
//! - 2D RoPE: frequency pair i of a head (i < head_dim/2) turns by `pos * inv_freq2d[i]`,
//!   with pos the patch row for i < head_dim/4 and the patch column after; the table is
//!   [`pixtral_inv_freq`]. Pair elements follow [`RopeMode`]: llama.cpp's converter permutes
//!   the vision q/k rows of every head (`reshape(n_head, 2, hd/2, in).swapaxes(1, 2)`: GGUF
//!   dims (2j, 2j+1) = HF dims (j, j + hd/2)), so **GGUF mmproj weights need
//!   [`RopeMode::Adjacent`]**; the Hugging Face checkpoint needs [`RopeMode::RotateHalf`].
//!   Both rotate pair j by the same angle. (llama.cpp's own `build_rope_2d` does the same: two
//!   "normal" ropes over the two halves of the head, rows with even, columns with odd frequencies.)
//! - Patch merge: an image's patch rows `[rows*cols][hidden]` → `[(rows/2)*(cols/2)][4*hidden]`,
//!   feature `c*4 + ki*2 + kj`, merged row `mr*(cols/2) + mc`; an odd last row/column is dropped
//!   as `F.unfold` does.

pub use super::shapes::{PatchGrid, Rope2dLayout};

use super::rope::{rope_inv_freq, RopeMode};
use crate::backend::gpu::{self, GpuError, Result};
use crate::backend::{cpu, Buffer, Device, On, Program};

/// Pixtral's patch size (pixels per side).
pub const PATCH: u32 = 14;

impl PatchGrid {
    /// The grid of an image of `height` x `width` pixels (multiples of `patch`).
    pub fn of_image(height: u32, width: u32, patch: u32) -> Result<PatchGrid> {
        if patch == 0 || !height.is_multiple_of(patch) || !width.is_multiple_of(patch) || height == 0 || width == 0 {
            return Err(GpuError::Shape(format!("image {height}x{width} is not a grid of {patch}-pixel patches")));
        }
        Ok(PatchGrid { rows: height / patch, cols: width / patch })
    }

    pub fn n_patches(&self) -> u32 {
        self.rows * self.cols
    }

    /// Tokens after the 2x2 merge.
    pub fn n_merged(&self) -> u32 {
        (self.rows / 2) * (self.cols / 2)
    }
}

/// Records the unfold of `pixels` (`[channels][height][width]` f32, sides multiples of
/// `patch`) into `patches` (`[n_patches][channels*patch*patch]`, patch rows row-major over the
/// grid, columns `[c][ky][kx]`).
#[allow(clippy::too_many_arguments)]
pub fn patch_unfold(
    prog: &mut Program,
    dev: &Device,
    pixels: &Buffer,
    patches: &Buffer,
    channels: u32,
    height: u32,
    width: u32,
    patch: u32,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            let (pixels, patches) = (pixels.gpu()?, patches.gpu()?);
            let grid = PatchGrid::of_image(height, width, patch)?;
            gpu::vision::patch_unfold(prog, gpu, pixels, patches, grid, channels, height, width, patch)
        }
        On::Cpu(prog, _) => {
            let [pixels, patches] = Buffer::cpu_handles([pixels, patches])?;
            prog.push("patch_unfold", move |pool| {
                let (c, h, w, p) = (channels as usize, height as usize, width as usize, patch as usize);
                Ok(cpu::vision::patch_unfold(pool, &pixels.read_n(c * h * w)?, &mut patches.write_n(c * h * w)?, c, h, w, p)?)
            });
            Ok(())
        }
    }
}

/// CPU reference of [`patch_unfold`].
pub fn patch_unfold_ref(pixels: &[f32], channels: usize, height: usize, width: usize, patch: usize) -> Vec<f32> {
    let (rows, cols, k) = (height / patch, width / patch, channels * patch * patch);
    let mut out = vec![0.0; rows * cols * k];
    for pr in 0..rows {
        for pc in 0..cols {
            let dst = &mut out[(pr * cols + pc) * k..][..k];
            for c in 0..channels {
                for ky in 0..patch {
                    for kx in 0..patch {
                        let y = pr * patch + ky;
                        let x = pc * patch + kx;
                        dst[(c * patch + ky) * patch + kx] = pixels[(c * height + y) * width + x];
                    }
                }
            }
        }
    }
    out
}

/// Direct CPU convolution `Conv2d(channels, hidden, patch, stride=patch, bias=False)` of
/// `pixels` `[channels][height][width]` with torch weight `[hidden][channels][patch][patch]`,
/// as patch rows `[n_patches][hidden]` (torch's `conv(x).flatten(1).T`), f64 accumulation.
pub fn conv2d_patch_ref(
    pixels: &[f32],
    weight: &[f32],
    channels: usize,
    height: usize,
    width: usize,
    patch: usize,
    hidden: usize,
) -> Vec<f32> {
    let (rows, cols) = (height / patch, width / patch);
    let mut out = vec![0.0; rows * cols * hidden];
    for oy in 0..rows {
        for ox in 0..cols {
            for o in 0..hidden {
                let mut acc = 0f64;
                for c in 0..channels {
                    for ky in 0..patch {
                        for kx in 0..patch {
                            let w = weight[((o * channels + c) * patch + ky) * patch + kx];
                            let x = pixels[(c * height + oy * patch + ky) * width + ox * patch + kx];
                            acc += w as f64 * x as f64;
                        }
                    }
                }
                out[(oy * cols + ox) * hidden + o] = acc as f32;
            }
        }
    }
    out
}

/// transformers' `PixtralVisionRotaryEmbedding.compute_axial_rope_parameters`:
/// `inv_freq = 1 / theta^(arange(0, dim, 2) / dim)` (f32), then `cat(inv_freq[0::2], inv_freq[1::2])`
/// — `head_dim/2` entries: the even frequencies (patch row) then the odd ones (patch column).
pub fn pixtral_inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    let f = rope_inv_freq(head_dim, theta);
    f.iter().step_by(2).chain(f.iter().skip(1).step_by(2)).copied().collect()
}

/// A 2D RoPE table on the GPU (upload once per model).
pub struct Rope2dFreqs {
    pub inv_freq: Buffer,
    pub head_dim: u32,
}

impl Rope2dFreqs {
    /// Uploads [`pixtral_inv_freq`]`(head_dim, theta)`.
    pub fn upload(dev: &Device, head_dim: u32, theta: f64) -> Result<Rope2dFreqs> {
        let table = pixtral_inv_freq(head_dim as usize, theta);
        Ok(Rope2dFreqs { inv_freq: dev.storage_with("rope2d_inv_freq", bytemuck::cast_slice(&table))?, head_dim })
    }
}

impl Rope2dLayout {
    /// Dense `[n][n_heads*head_dim]` rows starting at row 0.
    pub fn dense(n_heads: u32, head_dim: u32, mode: RopeMode) -> Rope2dLayout {
        Rope2dLayout { n_heads, head_dim, mode, stride: n_heads * head_dim, offset: 0, row0: 0 }
    }
}

/// Records 2D RoPE in place on the `grid.n_patches()` token rows of one image in `x`.
pub fn rope_2d(
    prog: &mut Program,
    dev: &Device,
    freqs: &Rope2dFreqs,
    x: &Buffer,
    layout: &Rope2dLayout,
    grid: PatchGrid,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            let table = (freqs.inv_freq.gpu()?, freqs.head_dim);
            gpu::vision::rope_2d(prog, gpu, table, x.gpu()?, layout, grid)
        }
        On::Cpu(prog, _) => {
            let (x, inv_freq, layout) = (x.cpu()?.clone(), freqs.inv_freq.cpu()?.clone(), *layout);
            prog.push("rope_2d", move |pool| Ok(cpu::vision::rope_2d(pool, &mut x.write()?, &layout, grid, &inv_freq.read()?)?));
            Ok(())
        }
    }
}

/// CPU reference of [`rope_2d`] (f32 math as transformers: `angle = f32(pos) * inv_freq[i]`,
/// `x*cos + rotate(x)*sin`).
pub fn rope_2d_ref(x: &[f32], layout: &Rope2dLayout, grid: PatchGrid, inv_freq: &[f32]) -> Vec<f32> {
    let mut y = x.to_vec();
    let (hd, half) = (layout.head_dim as usize, layout.head_dim as usize / 2);
    for t in 0..grid.n_patches() as usize {
        let (row, col) = (t / grid.cols as usize, t % grid.cols as usize);
        for h in 0..layout.n_heads as usize {
            let base = (layout.row0 as usize + t) * layout.stride as usize + layout.offset as usize + h * hd;
            for (i, &f) in inv_freq.iter().enumerate().take(half) {
                let pos = if i < half / 2 { row } else { col };
                let (d0, d1) = match layout.mode {
                    RopeMode::Adjacent => (2 * i, 2 * i + 1),
                    RopeMode::RotateHalf => (i, i + half),
                };
                let angle = pos as f32 * f;
                let (c, s) = (angle.cos(), angle.sin());
                let (x0, x1) = (x[base + d0], x[base + d1]);
                y[base + d0] = x0 * c - x1 * s;
                y[base + d1] = x1 * c + x0 * s;
            }
        }
    }
    y
}

/// Records the 2x2 merge of one image's patch rows `x` (`[rows*cols][hidden]`) into `out`
/// (`[(rows/2)*(cols/2)][4*hidden]`, channel-major `[c][ki][kj]`).
pub fn patch_merge(prog: &mut Program, dev: &Device, x: &Buffer, out: &Buffer, hidden: u32, grid: PatchGrid) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::vision::patch_merge(prog, gpu, x.gpu()?, out.gpu()?, hidden, grid),
        On::Cpu(prog, _) => {
            let [x, out] = Buffer::cpu_handles([x, out])?;
            prog.push("patch_merge", move |pool| {
                let n = grid.n_patches() as usize * hidden as usize;
                Ok(cpu::vision::patch_merge(pool, &x.read_n(n)?, &mut out.write_n(n)?, hidden as usize, grid)?)
            });
            Ok(())
        }
    }
}

/// CPU reference of [`patch_merge`], from torch semantics: `x.view(rows, cols, d).permute(2, 0, 1)`
/// is the image `[d][rows][cols]`; `F.unfold(k=2, s=2)` gives `[d*4][L]` with channel
/// `c*4 + ki*2 + kj` and block `L = mr*(cols/2) + mc` holding pixel `(2mr + ki, 2mc + kj)`;
/// `.view(d*4, -1).t()` makes it `[L][d*4]`.
pub fn patch_merge_ref(x: &[f32], hidden: usize, grid: PatchGrid) -> Vec<f32> {
    let (rows, cols) = (grid.rows as usize, grid.cols as usize);
    let image = |c: usize, r: usize, q: usize| x[(r * cols + q) * hidden + c];
    let (lr, lc) = (rows / 2, cols / 2);
    let mut unfolded = vec![0.0; hidden * 4 * lr * lc]; // [d*4][L]
    for c in 0..hidden {
        for ki in 0..2 {
            for kj in 0..2 {
                for mr in 0..lr {
                    for mc in 0..lc {
                        unfolded[(c * 4 + ki * 2 + kj) * lr * lc + mr * lc + mc] = image(c, 2 * mr + ki, 2 * mc + kj);
                    }
                }
            }
        }
    }
    let (n, f) = (lr * lc, hidden * 4);
    (0..n * f).map(|i| unfolded[(i % f) * n + i / f]).collect()
}
