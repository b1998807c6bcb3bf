//! Pixtral's vision-encoder ops, those of [`kernels::vision`](crate::kernels::vision)
//! (transformers `PixtralVisionModel`, `Mistral3PatchMerger`), with its [`PatchGrid`] and
//! [`Rope2dLayout`]:
//!
//! - [`patch_unfold`] (im2col): an image `[channels][height][width]` into patch rows
//!   `[n_patches][channels*patch*patch]`, columns `[c][ky][kx]`; [`conv2d_patch`] is the patch
//!   convolution (`Conv2d(stride=patch, bias=False)`) as that unfold then
//!   [`matmul`] with the torch weight `[hidden][c][ky][kx]` as a
//!   [`Weight`] of `[hidden][channels*patch*patch]` (as ggml's `ggml_conv_2d` via `im2col`).
//! - [`rope_2d`]: axial 2D RoPE in place, frequency pair i turning by the patch row for
//!   i < head_dim/4 and the column after, through [`rope`](super::rope)'s row rotation.
//! - [`patch_merge`]: the 2x2 merger's `F.unfold(k=2, s=2)`, patch rows `[rows*cols][hidden]`
//!   into `[(rows/2)*(cols/2)][4*hidden]`, feature `c*4 + ki*2 + kj`; an odd last row or
//!   column is dropped.
//!
//! The f32 math matches `patch_unfold_ref`, `rope_2d_ref` and `patch_merge_ref` bit for bit;
//! output rows are split over the pool.

use super::matmul::matmul;
use super::matvec::{MatvecError, Mode, Weight};
use super::ops::{check_len, check_min_len, for_each_chunk, invalid, rows_per_task, ShapeError};
use super::pool::ThreadPool;
use super::rope::rotate_row;
use crate::kernels::shapes::RopeLayout;
pub use crate::kernels::shapes::{PatchGrid, Rope2dLayout};

/// A vision op that cannot run as asked.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error(transparent)]
    Matvec(#[from] MatvecError),
    #[error("{op}: cannot allocate {bytes} bytes")]
    OutOfMemory { op: &'static str, bytes: usize },
}

impl VisionError {
    /// Whether the allocator refused the op's memory.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            VisionError::OutOfMemory { .. } => true,
            VisionError::Matvec(e) => e.is_out_of_memory(),
            VisionError::Shape(_) => false,
        }
    }
}

/// The patch grid of a `height` x `width` image (sides multiples of `patch`).
fn grid(op: &'static str, height: usize, width: usize, patch: usize) -> Result<(usize, usize), ShapeError> {
    if patch == 0 || height == 0 || width == 0 || !height.is_multiple_of(patch) || !width.is_multiple_of(patch) {
        return Err(invalid(op, format!("image {height}x{width} is not a grid of {patch}-pixel patches")));
    }
    Ok((height / patch, width / patch))
}

/// Unfolds `pixels` (`[channels][height][width]`, sides multiples of `patch`) into `patches`
/// (`[n_patches][channels*patch*patch]`, patches row-major over the grid).
#[allow(clippy::too_many_arguments)]
pub fn patch_unfold(
    pool: &ThreadPool,
    pixels: &[f32],
    patches: &mut [f32],
    channels: usize,
    height: usize,
    width: usize,
    patch: usize,
) -> Result<(), ShapeError> {
    const OP: &str = "patch_unfold";
    let (rows, cols) = grid(OP, height, width, patch)?;
    let k = channels * patch * patch;
    if k == 0 {
        return Err(invalid(OP, "no channels".into()));
    }
    check_len(OP, "pixels", pixels.len(), channels * height * width)?;
    check_len(OP, "patches", patches.len(), rows * cols * k)?;
    let per = rows_per_task(pool, rows * cols, k);
    for_each_chunk(pool, patches, per * k, |i, out| {
        for (j, dst) in out.chunks_exact_mut(k).enumerate() {
            let (pr, pc) = ((i * per + j) / cols, (i * per + j) % cols);
            // Each (c, ky) is one contiguous run of `patch` pixels.
            for (n, run) in dst.chunks_exact_mut(patch).enumerate() {
                let (c, ky) = (n / patch, n % patch);
                run.copy_from_slice(&pixels[(c * height + pr * patch + ky) * width + pc * patch..][..patch]);
            }
        }
    });
    Ok(())
}

/// The patch convolution `Conv2d(channels, w.rows, patch, stride=patch, bias=False)` of
/// `pixels` (`[channels][height][width]`) as patch rows `out` `[n_patches][w.rows]`: `w` is the
/// torch weight `[hidden][channels][patch][patch]` as `[hidden][channels*patch*patch]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_patch(
    pool: &ThreadPool,
    w: &Weight,
    pixels: &[f32],
    out: &mut [f32],
    channels: usize,
    height: usize,
    width: usize,
    patch: usize,
    mode: Mode,
) -> Result<(), VisionError> {
    const OP: &str = "conv2d_patch";
    let (rows, cols) = grid(OP, height, width, patch)?;
    check_len(OP, "weight columns", w.cols(), channels * patch * patch)?;
    check_len(OP, "out", out.len(), rows * cols * w.rows())?;
    let n = rows * cols * w.cols();
    let mut patches = Vec::new();
    patches.try_reserve_exact(n).map_err(|_| VisionError::OutOfMemory { op: OP, bytes: 4 * n })?;
    patches.resize(n, 0f32);
    patch_unfold(pool, pixels, &mut patches, channels, height, width, patch)?;
    matmul(pool, w, &patches, out, rows * cols, mode)?;
    Ok(())
}

/// 2D RoPE in place on the `grid.n_patches()` token rows of one image in `x` (laid out as
/// `layout`), with `inv_freq` the `head_dim/2` frequencies of
/// [`pixtral_inv_freq`](crate::kernels::vision::pixtral_inv_freq).
pub fn rope_2d(
    pool: &ThreadPool,
    x: &mut [f32],
    layout: &Rope2dLayout,
    grid: PatchGrid,
    inv_freq: &[f32],
) -> Result<(), ShapeError> {
    const OP: &str = "rope_2d";
    let l = layout;
    let (hd, stride, offset) = (l.head_dim as usize, l.stride as usize, l.offset as usize);
    let row = offset + l.n_heads as usize * hd;
    if hd == 0 || !hd.is_multiple_of(4) || row > stride {
        return Err(invalid(OP, format!("{} heads of {hd} in rows of {stride} from {offset}", l.n_heads)));
    }
    check_len(OP, "inv_freq", inv_freq.len(), hd / 2)?;
    let (n_tok, cols) = (grid.n_patches() as usize, grid.cols as usize);
    let start = l.row0 as usize * stride;
    check_min_len(OP, "x", x.len(), start + n_tok * stride)?;
    let rl =
        RopeLayout { n_heads: l.n_heads, head_dim: l.head_dim, mode: l.mode, max_tok: 0, stride: l.stride, offset: l.offset };
    let quarter = hd / 4;
    for_each_chunk(pool, &mut x[start..][..n_tok * stride], stride, |t, row| {
        let pos = [(t / cols) as f32, (t % cols) as f32];
        let cs: Vec<(f32, f32)> = (inv_freq.iter().enumerate())
            .map(|(i, &f)| {
                let angle = pos[(i >= quarter) as usize] * f;
                (angle.cos(), angle.sin())
            })
            .collect();
        rotate_row(row, &rl, &cs, 1.0);
    });
    Ok(())
}

/// The 2x2 merge of one image's patch rows `x` (`[rows*cols][hidden]`) into `out`
/// (`[(rows/2)*(cols/2)][4*hidden]`, feature `c*4 + ki*2 + kj`).
pub fn patch_merge(pool: &ThreadPool, x: &[f32], out: &mut [f32], hidden: usize, grid: PatchGrid) -> Result<(), ShapeError> {
    const OP: &str = "patch_merge";
    let (rows, cols) = (grid.rows as usize, grid.cols as usize);
    if hidden == 0 {
        return Err(invalid(OP, "hidden size 0".into()));
    }
    check_len(OP, "x", x.len(), rows * cols * hidden)?;
    let (lr, lc, f) = (rows / 2, cols / 2, 4 * hidden);
    check_len(OP, "out", out.len(), lr * lc * f)?;
    if lc == 0 {
        return Ok(());
    }
    let per = rows_per_task(pool, lr * lc, f);
    for_each_chunk(pool, out, per * f, |i, out| {
        for (j, dst) in out.chunks_exact_mut(f).enumerate() {
            let (mr, mc) = ((i * per + j) / lc, (i * per + j) % lc);
            for (k, (ki, kj)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                let src = &x[((2 * mr + ki) * cols + 2 * mc + kj) * hidden..][..hidden];
                for (d, &v) in dst.chunks_exact_mut(4).zip(src) {
                    d[k] = v;
                }
            }
        }
    });
    Ok(())
}
