//! Image preprocessing for Llama 3.2 Vision (Mllama): encoded bytes → up to
//! `max_image_tiles` normalised square tiles, plus the aspect-ratio id and mask the vision
//! encoder takes.
//!
//! Reference: transformers' `image_processing_pil_mllama.py` (`MllamaImageProcessorPil`,
//! the PIL backend of `MllamaImageProcessor`). Steps:
//! 1. decode, EXIF-orient and convert to RGB8 as [`super::preprocess`] does;
//! 2. [`optimal_tiled_canvas`]: of the canvases `(tiles_h * tile, tiles_w * tile)` over
//!    [`supported_aspect_ratios`], pick the smallest scale ≥ 1 that fits the image (else the
//!    largest scale < 1), ties broken by the smallest area;
//! 3. [`fit_to_canvas`]: the resize target, each side clamped to `[tile, canvas side]`, the
//!    aspect ratio kept by flooring the other side (the image is not always enlarged to fill
//!    the canvas);
//! 4. resize with Pillow's bilinear (or, as the processor asks, bicubic) filter on the 8-bit
//!    image (reproduced exactly in `resample`), pad right and bottom with 0 to the canvas;
//! 5. `x as f64 * rescale_factor` → f32 (`do_rescale`; else `x as f32`), then
//!    `(x - mean) / std` in f32 (`do_normalize`); padding pixels become `(0 - mean) / std`.
//!    The settings are the folder's (`source::hf::mllama_preprocess`), by default Llama 3.2
//!    Vision's (1/255, CLIP mean / std);
//! 6. split row-major into `tiles_h * tiles_w` tiles of `[3][tile][tile]`.
//!
//! The processor then pads every image to `max_image_tiles` tiles with all-zero tiles (zero
//! after normalisation, unlike the padding pixels of step 4); those are not produced here:
//! the encoder adds them (they take part in its attention).

use super::{decode_rgb8, open, resample, swaps_sides, ImageDecoder, ImageError, PreprocessOptions};

/// Llama 3.2 Vision's tile side (`preprocessor_config.json` `size`, = vision `image_size`).
pub const DEFAULT_TILE_SIZE: u32 = 560;
/// Llama 3.2 Vision's `max_image_tiles` (= vision `max_num_tiles`).
pub const DEFAULT_MAX_IMAGE_TILES: u32 = 4;
/// Largest accepted `max_image_tiles` (the aspect-ratio list grows with its square).
pub const MAX_IMAGE_TILES_LIMIT: u32 = 64;
/// Largest accepted output, `max_image_tiles * 3 * tile * tile` floats (1 GiB).
const MAX_OUTPUT_FLOATS: u64 = 1 << 28;

/// The resampling filter of the resize (`resample`: Pillow's 2 and 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// `Image.BILINEAR` (2; Llama 3.2 Vision's).
    Bilinear,
    /// `Image.BICUBIC` (3).
    Bicubic,
}

/// Settings of the Mllama image processor.
#[derive(Clone, Debug, PartialEq)]
pub struct MllamaPreprocess {
    /// Tile side in pixels (`size.height == size.width`).
    pub tile_size: u32,
    /// Most tiles per image (`max_image_tiles`).
    pub max_image_tiles: u32,
    /// Per-channel mean and standard deviation (used when [`normalize`](Self::normalize)).
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// The resize filter (`resample`).
    pub resample: Resample,
    /// `rescale_factor` when `do_rescale` (1/255), `None` when the processor does not rescale.
    pub rescale_factor: Option<f64>,
    /// `do_normalize`: `(x - mean) / std`.
    pub normalize: bool,
    /// Decoding limits and EXIF handling (its `max_edge` is not used).
    pub decode: PreprocessOptions,
}

impl Default for MllamaPreprocess {
    /// Llama 3.2 11B Vision's `preprocessor_config.json`: 560-px tiles, at most 4, bilinear,
    /// rescale by 1/255, CLIP mean / std (the Python floats rounded to f32, as numpy does).
    fn default() -> Self {
        MllamaPreprocess {
            tile_size: DEFAULT_TILE_SIZE,
            max_image_tiles: DEFAULT_MAX_IMAGE_TILES,
            image_mean: super::IMAGE_MEAN.map(|m| m as f32),
            image_std: super::IMAGE_STD.map(|s| s as f32),
            resample: Resample::Bilinear,
            rescale_factor: Some(1.0 / 255.0),
            normalize: true,
            decode: PreprocessOptions::default(),
        }
    }
}

impl MllamaPreprocess {
    fn check(&self) -> Result<(), ImageError> {
        let bad = |m: String| Err(ImageError::InvalidOptions(m));
        if self.tile_size == 0 || self.max_image_tiles == 0 || self.max_image_tiles > MAX_IMAGE_TILES_LIMIT {
            return bad(format!(
                "tile size {} / max_image_tiles {} (must be positive, tiles at most {MAX_IMAGE_TILES_LIMIT})",
                self.tile_size, self.max_image_tiles
            ));
        }
        let floats = self.max_image_tiles as u64 * 3 * self.tile_size as u64 * self.tile_size as u64;
        if floats > MAX_OUTPUT_FLOATS {
            return bad(format!("{} tiles of {} px exceed {MAX_OUTPUT_FLOATS} floats", self.max_image_tiles, self.tile_size));
        }
        if self.image_std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || self.image_mean.iter().any(|m| !m.is_finite()) {
            return bad(format!("image mean {:?} / std {:?}", self.image_mean, self.image_std));
        }
        if self.rescale_factor.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return bad(format!("rescale factor {:?}", self.rescale_factor));
        }
        Ok(())
    }
}

/// How an image of a given size is laid out in tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MllamaTiling {
    /// Tiles down and across: `(num_tiles_height, num_tiles_width)`.
    pub tiles_hw: (u32, u32),
    /// The resized image `(height, width)`, at most the canvas `tiles * tile` on each side.
    pub resized_hw: (u32, u32),
    /// 1-based index of `tiles_hw` in [`supported_aspect_ratios`] (0 is the model's padding
    /// id, never produced here).
    pub aspect_ratio_id: u32,
}

impl MllamaTiling {
    /// `tiles_h * tiles_w`.
    pub fn num_tiles(&self) -> u32 {
        self.tiles_hw.0 * self.tiles_hw.1
    }

    /// transformers' `aspect_ratio_mask` for this image: 1 for the first
    /// [`num_tiles`](Self::num_tiles) of `max_image_tiles` entries, 0 after.
    pub fn aspect_ratio_mask(&self, max_image_tiles: u32) -> Vec<u8> {
        (0..max_image_tiles).map(|i| u8::from(i == 0 || i < self.num_tiles())).collect()
    }
}

/// A preprocessed image for the Mllama vision encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct MllamaPixels {
    /// The layout: tile grid, resized size, aspect-ratio id.
    pub tiling: MllamaTiling,
    /// Tile side in pixels.
    pub tile_size: u32,
    /// `[num_tiles][3][tile][tile]` normalised RGB, tiles row-major over the canvas
    /// (tile `ty * tiles_w + tx`).
    pub tiles: Vec<f32>,
    /// `aspect_ratio_mask` over `max_image_tiles` (see [`MllamaTiling::aspect_ratio_mask`]).
    pub aspect_ratio_mask: Vec<u8>,
}

impl MllamaPixels {
    /// Number of tiles in [`tiles`](Self::tiles).
    pub fn num_tiles(&self) -> u32 {
        self.tiling.num_tiles()
    }
}

/// transformers' `get_all_supported_aspect_ratios`: every `(tiles_h, tiles_w)` with
/// `tiles_h * tiles_w <= max_image_tiles`, `tiles_h` major. For 4: (1,1) (1,2) (1,3) (1,4)
/// (2,1) (2,2) (3,1) (4,1). (transformers' docstring calls the pairs (width, height); its
/// canvas code and the aspect-ratio ids use them as (height, width), as here.)
pub fn supported_aspect_ratios(max_image_tiles: u32) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for h in 1..=max_image_tiles {
        for w in 1..=max_image_tiles {
            if h * w <= max_image_tiles {
                out.push((h, w));
            }
        }
    }
    out
}

/// transformers' `get_optimal_tiled_canvas`: the canvas `(height, width)` in pixels for an
/// image of `height x width` (both non-zero). Scales are computed and compared in f64 exactly
/// as numpy does.
pub fn optimal_tiled_canvas(height: u32, width: u32, max_image_tiles: u32, tile: u32) -> (u32, u32) {
    let canvases: Vec<(u32, u32)> = supported_aspect_ratios(max_image_tiles).iter().map(|&(h, w)| (h * tile, w * tile)).collect();
    let scales: Vec<f64> = canvases
        .iter()
        .map(|&(ch, cw)| {
            let (sh, sw) = (ch as f64 / height as f64, cw as f64 / width as f64);
            if sw > sh {
                sh
            } else {
                sw
            }
        })
        .collect();
    let up = scales.iter().copied().filter(|&s| s >= 1.0).reduce(f64::min);
    let selected = up.unwrap_or_else(|| scales.iter().copied().filter(|&s| s < 1.0).fold(f64::NEG_INFINITY, f64::max));
    // Among the canvases with that scale, the first of smallest area (numpy's argmin).
    let mut best: Option<(u64, (u32, u32))> = None;
    for (&canvas, &s) in canvases.iter().zip(&scales) {
        let area = canvas.0 as u64 * canvas.1 as u64;
        if s == selected && best.is_none_or(|(a, _)| area < a) {
            best = Some((area, canvas));
        }
    }
    best.map_or((tile, tile), |(_, c)| c)
}

/// transformers' `get_image_size_fit_to_canvas`: the resized `(height, width)` of an image of
/// `height x width` (both non-zero) on a `canvas_h x canvas_w` canvas.
pub fn fit_to_canvas(height: u32, width: u32, canvas_h: u32, canvas_w: u32, tile: u32) -> (u32, u32) {
    let target_w = width.clamp(tile.min(canvas_w), canvas_w);
    let target_h = height.clamp(tile.min(canvas_h), canvas_h);
    let scale_h = target_h as f64 / height as f64;
    let scale_w = target_w as f64 / width as f64;
    if scale_w < scale_h {
        let h = ((height as f64 * scale_w).floor() as u32).max(1);
        (h.min(target_h), target_w)
    } else {
        let w = ((width as f64 * scale_h).floor() as u32).max(1);
        (target_h, w.min(target_w))
    }
}

/// The tiling of an image of `height x width` under `opts`.
pub fn tiling(height: u32, width: u32, opts: &MllamaPreprocess) -> Result<MllamaTiling, ImageError> {
    opts.check()?;
    if height == 0 || width == 0 {
        return Err(ImageError::ZeroSize { width, height });
    }
    let tile = opts.tile_size;
    let (canvas_h, canvas_w) = optimal_tiled_canvas(height, width, opts.max_image_tiles, tile);
    let tiles_hw = (canvas_h / tile, canvas_w / tile);
    let resized_hw = fit_to_canvas(height, width, canvas_h, canvas_w, tile);
    let index = supported_aspect_ratios(opts.max_image_tiles).iter().position(|&a| a == tiles_hw);
    // The canvas is always one of the supported ratios; the fallback keeps this panic-free.
    let aspect_ratio_id = index.map_or(1, |i| i as u32 + 1);
    Ok(MllamaTiling { tiles_hw, resized_hw, aspect_ratio_id })
}

/// The tiling [`preprocess_mllama`] gives `bytes`, from the image's header alone
/// (dimensions and EXIF orientation): the tile count is known before any pixel is decoded.
pub fn preprocessed_tiling(bytes: &[u8], opts: &MllamaPreprocess) -> Result<MllamaTiling, ImageError> {
    opts.check()?;
    let mut decoder = open(bytes, &opts.decode)?;
    let (mut width, mut height) = decoder.dimensions();
    let orientation = if opts.decode.apply_exif_orientation { decoder.orientation().ok() } else { None };
    if orientation.is_some_and(swaps_sides) {
        (width, height) = (height, width);
    }
    tiling(height, width, opts)
}

/// Decodes, orients, converts, resizes (Pillow bilinear or bicubic), pads, normalises and tiles one
/// encoded image for the Mllama vision encoder.
pub fn preprocess_mllama(bytes: &[u8], opts: &MllamaPreprocess) -> Result<MllamaPixels, ImageError> {
    opts.check()?;
    let rgb = decode_rgb8(bytes, &opts.decode)?;
    let (w, h) = rgb.dimensions();
    let tiling = tiling(h, w, opts)?;
    let (rh, rw) = tiling.resized_hw;
    let resized = if (rw, rh) == (w, h) {
        rgb.into_raw()
    } else {
        let filter = match opts.resample {
            Resample::Bilinear => resample::Filter::Bilinear,
            Resample::Bicubic => resample::Filter::Bicubic,
        };
        resample::resize_rgb8_with(rgb.as_raw(), w as usize, h as usize, rw as usize, rh as usize, filter)
    };
    let tiles = split_tiles(&resized, (rh as usize, rw as usize), tiling.tiles_hw, opts);
    Ok(MllamaPixels {
        tiling,
        tile_size: opts.tile_size,
        tiles,
        aspect_ratio_mask: tiling.aspect_ratio_mask(opts.max_image_tiles),
    })
}

/// Lays the resized RGB8 image (`rh x rw`, interleaved) on the zero-padded canvas, normalises
/// it and cuts it into `[tiles_h * tiles_w][3][tile][tile]`.
fn split_tiles(rgb: &[u8], (rh, rw): (usize, usize), (th, tw): (u32, u32), opts: &MllamaPreprocess) -> Vec<f32> {
    let t = opts.tile_size as usize;
    // Value of every 8-bit level per channel: numpy's rescale (`x.astype(f64) * factor` →
    // f32; without it the normalisation's `astype(f32)`), then `(x - mean) / std` in f32 (the
    // arithmetic of `normalize_chw_with`, looked up instead of recomputed per pixel).
    let level = |c: usize, v: usize| {
        let x = opts.rescale_factor.map_or(v as f32, |s| (v as f64 * s) as f32);
        if opts.normalize {
            (x - opts.image_mean[c]) / opts.image_std[c]
        } else {
            x
        }
    };
    let lut: Vec<[f32; 256]> = (0..3).map(|c| std::array::from_fn(|v| level(c, v))).collect();
    let plane = t * t;
    let mut out = vec![0f32; th as usize * tw as usize * 3 * plane];
    for ty in 0..th as usize {
        for tx in 0..tw as usize {
            let base = (ty * tw as usize + tx) * 3 * plane;
            for y in 0..t {
                let sy = ty * t + y;
                for x in 0..t {
                    let sx = tx * t + x;
                    let inside = sy < rh && sx < rw;
                    for (c, lut) in lut.iter().enumerate() {
                        let v = if inside { rgb[3 * (sy * rw + sx) + c] } else { 0 };
                        out[base + c * plane + y * t + x] = lut[v as usize];
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aspect_ratios_for_four_tiles() {
        let want = [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1)];
        assert_eq!(supported_aspect_ratios(4), want);
        assert_eq!(supported_aspect_ratios(1), [(1, 1)]);
    }

    #[test]
    fn canvas_prefers_the_smallest_upscale_then_the_smallest_area() {
        // 24 x 50 with 28-px tiles: scale 1.12 on (28, 56) beats 1.167 on (28, 84).
        assert_eq!(optimal_tiled_canvas(24, 50, 4, 28), (28, 56));
        // 60 x 60 cannot be upscaled anywhere: the largest downscale, 56/60 on (56, 56).
        assert_eq!(optimal_tiled_canvas(60, 60, 4, 28), (56, 56));
        // 480 x 640 with 560-px tiles: scale 7/6 on both (560, 1120) and (1120, 1120) → the
        // smaller.
        assert_eq!(optimal_tiled_canvas(480, 640, 4, 560), (560, 1120));
    }

    #[test]
    fn fit_keeps_the_aspect_ratio_and_never_leaves_the_canvas() {
        assert_eq!(fit_to_canvas(20, 24, 28, 28, 28), (23, 28));
        assert_eq!(fit_to_canvas(480, 640, 560, 1120, 560), (480, 640));
        assert_eq!(fit_to_canvas(1080, 1920, 1120, 1120, 560), (630, 1120));
        assert_eq!(fit_to_canvas(3, 120, 14, 56, 14), (1, 56));
    }

    #[test]
    fn mask_marks_the_real_tiles() {
        let t = MllamaTiling { tiles_hw: (1, 2), resized_hw: (24, 50), aspect_ratio_id: 2 };
        assert_eq!(t.aspect_ratio_mask(4), vec![1, 1, 0, 0]);
    }

    #[test]
    fn bad_options_and_sizes_are_typed_errors() {
        let opts = MllamaPreprocess::default();
        assert!(matches!(tiling(0, 5, &opts), Err(ImageError::ZeroSize { .. })));
        for bad in [
            MllamaPreprocess { tile_size: 0, ..opts.clone() },
            MllamaPreprocess { max_image_tiles: 0, ..opts.clone() },
            MllamaPreprocess { max_image_tiles: 1000, ..opts.clone() },
            MllamaPreprocess { tile_size: 100_000, ..opts.clone() },
            MllamaPreprocess { image_std: [0.0, 1.0, 1.0], ..opts.clone() },
            MllamaPreprocess { rescale_factor: Some(f64::NAN), ..opts.clone() },
        ] {
            assert!(matches!(tiling(10, 10, &bad), Err(ImageError::InvalidOptions(_))), "{bad:?}");
        }
    }
}
