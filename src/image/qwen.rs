//! Image preprocessing for the Qwen2-VL family of vision encoders (Qwen3-VL, Qwen3.5: mmproj
//! `clip.projector_type = qwen3vl_merger`). Reference: transformers' `Qwen2VLImageProcessorPil`
//! (`smart_resize`, PIL bicubic resize, `rescale` by 1/255, `normalize`, then the patch
//! flattening with `temporal_patch_size` 2).
//!
//! Decoding, EXIF orientation and the RGB conversion are those of [`super::preprocess`]. The
//! image is resized with Pillow's bicubic filter (reproduced exactly in `resample`) to
//! [`smart_resize`]'s size, normalised to `[3][height][width]` f32 ([`PixelImage`]), and
//! [`patch_rows`] lays it out as the processor's `pixel_values` rows (what the fixture holds).
//! The encoder itself unfolds the [`PixelImage`] on the GPU: both temporal frames of an image
//! are the same picture, so the 3D patch convolution is the sum of its two temporal slices
//! applied to one frame.

use super::{decode_rgb8, open, resample, swaps_sides, ImageDecoder, ImageError, PixelImage, PreprocessOptions};

/// Settings of the Qwen2-VL image processor.
#[derive(Clone, Debug, PartialEq)]
pub struct QwenPreprocess {
    /// Pixels per patch side (16 for Qwen3-VL / Qwen3.5).
    pub patch_size: u32,
    /// Patches per merged token side (2).
    pub merge_size: u32,
    /// Frames per temporal patch (2); a still image is repeated to fill them.
    pub temporal_patch_size: u32,
    /// Smallest resized area (`min_pixels`, transformers' `size["shortest_edge"]`).
    pub min_pixels: u64,
    /// Largest resized area (`max_pixels`, transformers' `size["longest_edge"]`).
    pub max_pixels: u64,
    /// Per-channel mean and standard deviation (the mmproj's `clip.vision.image_mean/std`).
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// Decoding limits and EXIF handling (its `max_edge` is not used).
    pub decode: PreprocessOptions,
}

impl Default for QwenPreprocess {
    /// Qwen3.5's `preprocessor_config.json`: patch 16, merge 2, temporal 2, 65536 ≤ area ≤
    /// 16777216, mean = std = 0.5.
    fn default() -> Self {
        QwenPreprocess {
            patch_size: 16,
            merge_size: 2,
            temporal_patch_size: 2,
            min_pixels: 65_536,
            max_pixels: 16_777_216,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            decode: PreprocessOptions::default(),
        }
    }
}

impl QwenPreprocess {
    /// Side alignment of the resized image: `patch_size * merge_size`.
    pub fn factor(&self) -> u32 {
        self.patch_size * self.merge_size
    }

    fn check(&self) -> Result<(), ImageError> {
        let bad = |m: String| Err(ImageError::InvalidOptions(m));
        if self.patch_size == 0 || self.merge_size == 0 || self.temporal_patch_size == 0 {
            return bad(format!(
                "patch {} / merge {} / temporal {} must be positive",
                self.patch_size, self.merge_size, self.temporal_patch_size
            ));
        }
        if self.min_pixels > self.max_pixels || self.max_pixels == 0 {
            return bad(format!("min_pixels {} > max_pixels {}", self.min_pixels, self.max_pixels));
        }
        if self.image_std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || self.image_mean.iter().any(|m| !m.is_finite()) {
            return bad(format!("image mean {:?} / std {:?}", self.image_mean, self.image_std));
        }
        Ok(())
    }
}

/// transformers' `smart_resize(height, width, factor, min_pixels, max_pixels)`: each side
/// rounded (half to even, as Python's `round`) to a multiple of `factor`, then scaled down
/// (floor) or up (ceil) by `sqrt` of the area ratio when the area leaves
/// `[min_pixels, max_pixels]`. Returns `(height, width)`; an aspect ratio above 200 is an error,
/// as in transformers.
pub fn smart_resize(height: u32, width: u32, factor: u32, min_pixels: u64, max_pixels: u64) -> Result<(u32, u32), ImageError> {
    if height == 0 || width == 0 {
        return Err(ImageError::ZeroSize { width, height });
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(ImageError::InvalidOptions(format!("aspect ratio of {width}x{height} exceeds 200")));
    }
    let mut h_bar = ((h / f).round_ties_even() * f).max(f);
    let mut w_bar = ((w / f).round_ties_even() * f).max(f);
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as u32, w_bar as u32))
}

/// Decodes, orients, converts, resizes ([`smart_resize`], Pillow bicubic) and normalises one
/// encoded image for a Qwen2-VL-style encoder.
pub fn preprocess_qwen(bytes: &[u8], opts: &QwenPreprocess) -> Result<PixelImage, ImageError> {
    opts.check()?;
    let rgb = decode_rgb8(bytes, &opts.decode)?;
    let (w, h) = rgb.dimensions();
    let (out_h, out_w) = smart_resize(h, w, opts.factor(), opts.min_pixels, opts.max_pixels)?;
    let resized = if (out_w, out_h) == (w, h) {
        rgb.into_raw()
    } else {
        resample::resize_rgb8(rgb.as_raw(), w as usize, h as usize, out_w as usize, out_h as usize)
    };
    let data = super::normalize_chw_with(&resized, out_w as usize, out_h as usize, opts.image_mean, opts.image_std);
    Ok(PixelImage { width: out_w, height: out_h, data })
}

/// The `(height, width)` that [`preprocess_qwen`] gives `bytes`, from the image's header
/// alone (dimensions and EXIF orientation): the image's token count,
/// `(height / factor) * (width / factor)`, is known before any pixel is decoded.
pub fn preprocessed_size_qwen(bytes: &[u8], opts: &QwenPreprocess) -> Result<(u32, u32), ImageError> {
    opts.check()?;
    let mut decoder = open(bytes, &opts.decode)?;
    let (mut width, mut height) = decoder.dimensions();
    let orientation = if opts.decode.apply_exif_orientation { decoder.orientation().ok() } else { None };
    if orientation.is_some_and(swaps_sides) {
        (width, height) = (height, width);
    }
    smart_resize(height, width, opts.factor(), opts.min_pixels, opts.max_pixels)
}

/// The processor's `pixel_values` rows of `image`: `[n_patches][3 * temporal * patch * patch]`,
/// columns `[c][t][ky][kx]` (the frame repeated `temporal` times), rows in merge-window-major
/// order (`(bh, bw)` windows of `merge x merge` patches row-major, the patches of a window
/// row-major). Returns the rows and the grid `(h, w)` in patches.
pub fn patch_rows(image: &PixelImage, patch: u32, merge: u32, temporal: u32) -> (Vec<f32>, (u32, u32)) {
    let (p, m, t) = (patch as usize, merge as usize, temporal as usize);
    let (iw, ih) = (image.width as usize, image.height as usize);
    let (gh, gw) = (ih / p, iw / p);
    let cols = 3 * t * p * p;
    let mut out = Vec::with_capacity(gh * gw * cols);
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for i in 0..m {
                for j in 0..m {
                    let (py, px) = ((bh * m + i) * p, (bw * m + j) * p);
                    for c in 0..3 {
                        for _ in 0..t {
                            for ky in 0..p {
                                let row = c * ih * iw + (py + ky) * iw + px;
                                out.extend_from_slice(&image.data[row..row + p]);
                            }
                        }
                    }
                }
            }
        }
    }
    (out, (gh as u32, gw as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_mirrors_transformers() {
        // The fixture's 100x44 image (factor 32, 32² ≤ area ≤ 256²) becomes 96x32.
        assert_eq!(smart_resize(44, 100, 32, 1024, 65536).unwrap(), (32, 96));
        // Round half to even: 48/32 = 1.5 → 2, 80/32 = 2.5 → 2.
        assert_eq!(smart_resize(48, 80, 32, 0, 1 << 30).unwrap(), (64, 64));
        // Too large: scaled down by sqrt(area ratio), floored.
        assert_eq!(smart_resize(1000, 1000, 32, 1024, 65536).unwrap(), (256, 256));
        // Too small: scaled up, ceiled.
        assert_eq!(smart_resize(20, 20, 32, 4096, 65536).unwrap(), (64, 64));
        assert!(smart_resize(1, 300, 32, 0, 1 << 30).is_err());
        assert!(matches!(smart_resize(0, 3, 32, 0, 10), Err(ImageError::ZeroSize { .. })));
    }
}
