//! Image preprocessing for the Pixtral vision encoder: encoded bytes → normalised CHW f32.
//! (The Qwen2-VL family's processor, which shares the decoding below, is [`qwen`]; Llama 3.2
//! Vision's tiling processor is [`mllama`].)
//!
//! Reference: transformers 5.x `PixtralImageProcessorPil` (`image_processing_pil_pixtral.py`)
//! as driven by `PixtralProcessor` for Mistral 3 (`patch_size` 14 × `spatial_merge_size` 2 =
//! 28 passed to the image processor), plus `load_image`'s EXIF transpose. Steps:
//! 1. decode PNG / JPEG / WebP / GIF (first frame) with bounded memory: dimensions are read
//!    from the header and checked against [`PreprocessOptions::max_pixels`] before any pixel
//!    buffer is allocated ([`preprocessed_size`] reads the same header to tell the output
//!    size, and so the image's token count, before any decoding);
//! 2. apply the EXIF orientation (as `transformers.image_utils.load_image` does with
//!    `PIL.ImageOps.exif_transpose`; the processor itself does not look at EXIF);
//! 3. convert to RGB8, compositing alpha onto white with Pillow's `alpha_composite` integer
//!    arithmetic (`convert_to_rgb`). 16-bit samples become 8-bit by rounding `v / 257`; this
//!    deliberately differs from Pillow, which clamps 16-bit grayscale (`I;16`) to 255;
//! 4. resize to `get_resize_output_image_size`: if the longest edge exceeds `max_edge`, both
//!    sides are scaled by `ratio = max(h, w) / max_edge` and floored, then each side is
//!    rounded up to a multiple of 28 (so small images are upscaled to the next multiple);
//!    resampling is Pillow's bicubic, reproduced exactly in [`resample`];
//! 5. `x as f64 * (1/255)` → f32, then `(x - mean) / std` in f32, as transformers' numpy path.

pub mod mllama;
pub mod qwen;
mod resample;

use std::io::Cursor;

use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

/// Side alignment of the processed image: Pixtral patch 14 × spatial merge 2.
pub const PATCH_ALIGN: u32 = 28;
/// Default longest edge (Ministral 3 `preprocessor_config.json`: `longest_edge` 1540).
pub const DEFAULT_MAX_EDGE: u32 = 1540;
/// Default limit on decoded pixels (width × height): 40 MP, ~160 MB as RGBA8.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;
/// Per-channel normalisation mean (CLIP / OpenAI values used by Pixtral), as the Python
/// floats; numpy rounds them to f32 (decimal → f64 → f32), and so do we.
pub const IMAGE_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// Per-channel normalisation standard deviation (Python floats, rounded to f32 on use).
pub const IMAGE_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Why an image could not be preprocessed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The bytes match no known image signature.
    #[error("the data is not a recognised image")]
    NotAnImage,
    /// A recognised image format that webvlm does not decode (only PNG, JPEG, WebP, GIF).
    #[error("unsupported image format {0} (supported: PNG, JPEG, WebP, GIF)")]
    UnsupportedFormat(String),
    /// The header declares a zero width or height.
    #[error("the image has zero size ({width}x{height})")]
    ZeroSize { width: u32, height: u32 },
    /// The header declares more pixels than allowed (decompression-bomb guard).
    #[error("image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")]
    TooLarge { width: u32, height: u32, max_pixels: u64 },
    /// The decoder hit its memory limit for another reason (e.g. huge metadata).
    #[error("image decoder memory limit exceeded: {0}")]
    LimitExceeded(String),
    /// The data ends before the image does.
    #[error("the image data is truncated: {0}")]
    Truncated(String),
    /// The data is malformed in some other way.
    #[error("the image data is corrupt: {0}")]
    Corrupt(String),
    /// The options are unusable (e.g. `max_edge` of zero).
    #[error("invalid preprocessing options: {0}")]
    InvalidOptions(String),
}

/// Settings for [`preprocess`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreprocessOptions {
    /// Longest allowed edge before rounding up to multiples of 28 (transformers' `longest_edge`).
    pub max_edge: u32,
    /// Largest accepted decoded image, width × height, checked from the header.
    pub max_pixels: u64,
    /// Rotate / flip per the EXIF orientation tag (JPEG, PNG, WebP), as `load_image` does.
    pub apply_exif_orientation: bool,
    /// Area-bounded processors (the Qwen2-VL family's `smart_resize`): the smallest and
    /// largest resized area, width × height (transformers' `min_pixels` / `max_pixels`);
    /// `None` keeps the processor's own. Pixtral's resize ignores them.
    pub min_area: Option<u64>,
    pub max_area: Option<u64>,
}

impl Default for PreprocessOptions {
    fn default() -> Self {
        PreprocessOptions {
            max_edge: DEFAULT_MAX_EDGE,
            max_pixels: DEFAULT_MAX_PIXELS,
            apply_exif_orientation: true,
            min_area: None,
            max_area: None,
        }
    }
}

/// A preprocessed image ready for the vision encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelImage {
    /// Width in pixels, a multiple of [`PATCH_ALIGN`].
    pub width: u32,
    /// Height in pixels, a multiple of [`PATCH_ALIGN`].
    pub height: u32,
    /// `[3][height][width]` normalised RGB.
    pub data: Vec<f32>,
}

impl PixelImage {
    /// Image-token rows: `height / 28`.
    pub fn rows(&self) -> u32 {
        self.height / PATCH_ALIGN
    }
    /// Image-token columns: `width / 28`.
    pub fn cols(&self) -> u32 {
        self.width / PATCH_ALIGN
    }
}

/// transformers' `get_resize_output_image_size` for a square `longest_edge` box and
/// `patch = 28`: returns `(height, width)`. A side that would floor to 0 is kept at 1 (Python
/// would fail on it), so the result is never empty.
pub fn output_size(height: u32, width: u32, max_edge: u32) -> (u32, u32) {
    let (mut h, mut w) = (height as u64, width as u64);
    let ratio = f64::max(h as f64 / max_edge as f64, w as f64 / max_edge as f64);
    if ratio > 1.0 {
        h = (h as f64 / ratio).floor() as u64;
        w = (w as f64 / ratio).floor() as u64;
    }
    let align = |s: u64| ((s.max(1) - 1) / PATCH_ALIGN as u64 + 1) * PATCH_ALIGN as u64;
    (align(h) as u32, align(w) as u32)
}

/// Decodes, orients, converts, resizes and normalises one encoded image.
pub fn preprocess(bytes: &[u8], opts: &PreprocessOptions) -> Result<PixelImage, ImageError> {
    check_options(opts)?;
    let rgb = decode_rgb8(bytes, opts)?;
    let (w, h) = rgb.dimensions();
    let (out_h, out_w) = output_size(h, w, opts.max_edge);
    let resized = resample::resize_rgb8(rgb.as_raw(), w as usize, h as usize, out_w as usize, out_h as usize);
    drop(rgb);
    Ok(PixelImage { width: out_w, height: out_h, data: normalize_chw(&resized, out_w as usize, out_h as usize) })
}

/// The `(height, width)` that [`preprocess`] gives `bytes`, from the image's header alone
/// (its dimensions and EXIF orientation): no pixel is decoded, so the image's token count
/// ([`PATCH_ALIGN`]-pixel tokens) is known before any work. Fails as [`preprocess`] would on
/// a header it would reject.
pub fn preprocessed_size(bytes: &[u8], opts: &PreprocessOptions) -> Result<(u32, u32), ImageError> {
    check_options(opts)?;
    let mut decoder = open(bytes, opts)?;
    let (mut width, mut height) = decoder.dimensions();
    let orientation = if opts.apply_exif_orientation { decoder.orientation().ok() } else { None };
    if orientation.is_some_and(swaps_sides) {
        (width, height) = (height, width);
    }
    Ok(output_size(height, width, opts.max_edge))
}

/// Whether an EXIF orientation turns the image a quarter turn (its width becomes its height).
fn swaps_sides(o: Orientation) -> bool {
    matches!(o, Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH)
}

/// Rejects unusable options.
fn check_options(opts: &PreprocessOptions) -> Result<(), ImageError> {
    if opts.max_edge == 0 {
        return Err(ImageError::InvalidOptions("max_edge must be positive".into()));
    }
    Ok(())
}

/// Decodes to RGB8 (alpha on white), applying the EXIF orientation when asked.
pub fn decode_rgb8(bytes: &[u8], opts: &PreprocessOptions) -> Result<::image::RgbImage, ImageError> {
    let mut decoder = open(bytes, opts)?;
    // A malformed EXIF block is ignored rather than rejecting an otherwise good image.
    let orientation = if opts.apply_exif_orientation { decoder.orientation().ok() } else { None };
    let mut img = DynamicImage::from_decoder(decoder).map_err(map_err)?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(to_rgb8_on_white(img))
}

/// A decoder of a supported format whose header has been read and whose dimensions are
/// within the limits, with its memory bounded; no pixel is decoded yet.
fn open<'a>(bytes: &'a [u8], opts: &PreprocessOptions) -> Result<impl ImageDecoder + 'a, ImageError> {
    let format = ::image::guess_format(bytes).map_err(|_| ImageError::NotAnImage)?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif) {
        return Err(ImageError::UnsupportedFormat(format!("{format:?}")));
    }
    // Some decoders reject a zero side with a generic format error; read it ourselves first.
    if let Some((width, height)) = peek_dimensions(format, bytes) {
        check_dimensions(width, height, opts)?;
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // Room for a 16-bit RGBA buffer of the largest accepted image plus decoder state.
    limits.max_alloc = Some(opts.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(map_err)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, opts)?;
    Ok(decoder)
}

/// Rejects empty images and images above `max_pixels`.
fn check_dimensions(width: u32, height: u32, opts: &PreprocessOptions) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize { width, height });
    }
    if width as u64 * height as u64 > opts.max_pixels {
        return Err(ImageError::TooLarge { width, height, max_pixels: opts.max_pixels });
    }
    Ok(())
}

/// Header dimensions for PNG (IHDR, big-endian at byte 16) and GIF (logical screen,
/// little-endian at byte 6), where the header has a fixed place; `None` otherwise.
fn peek_dimensions(format: ImageFormat, bytes: &[u8]) -> Option<(u32, u32)> {
    let be = |i: usize| Some(u32::from_be_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
    let le16 = |i: usize| Some(u16::from_le_bytes(bytes.get(i..i + 2)?.try_into().ok()?) as u32);
    match format {
        ImageFormat::Png if bytes.get(12..16) == Some(b"IHDR") => Some((be(16)?, be(20)?)),
        ImageFormat::Gif => Some((le16(6)?, le16(8)?)),
        _ => None,
    }
}

/// `convert_to_rgb`: opaque images convert directly; images with alpha are composited onto
/// opaque white with Pillow's `ImagingAlphaComposite` fixed-point formula.
fn to_rgb8_on_white(img: DynamicImage) -> ::image::RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = ::image::RgbImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = src[3] as u32;
        for c in 0..3 {
            dst[c] = composite_on_white(src[c], a);
        }
    }
    out
}

/// One channel of Pillow's `alpha_composite(white, src)` (PRECISION_BITS 7, exact division by
/// 255 via `SHIFTFORDIV255`); verified against Pillow for all 65536 (value, alpha) pairs.
fn composite_on_white(v: u8, a: u32) -> u8 {
    const PB: u32 = 7;
    if a == 0 {
        return 255;
    }
    let outa255 = a * 255 + 255 * (255 - a);
    let coef1 = a * 255 * 255 * (1 << PB) / outa255;
    let coef2 = 255 * (1 << PB) - coef1;
    let t = v as u32 * coef1 + 255 * coef2 + (0x80 << PB);
    ((((t >> 8) + t) >> 8) >> PB) as u8
}

/// HWC RGB8 → CHW f32: `f32(v as f64 * (1/255))`, then `(x - mean) / std` in f32.
fn normalize_chw(rgb: &[u8], w: usize, h: usize) -> Vec<f32> {
    normalize_chw_with(rgb, w, h, IMAGE_MEAN.map(|m| m as f32), IMAGE_STD.map(|s| s as f32))
}

/// [`normalize_chw`] with the given per-channel mean and standard deviation.
fn normalize_chw_with(rgb: &[u8], w: usize, h: usize, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let plane = w * h;
    let mut data = vec![0f32; 3 * plane];
    let scale = 1.0f64 / 255.0;
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let x = (px[c] as f64 * scale) as f32;
            data[c * plane + i] = (x - mean[c]) / std[c];
        }
    }
    data
}

/// Sorts the `image` crate's errors into our variants.
fn map_err(e: ::image::ImageError) -> ImageError {
    use ::image::error::{ImageError as E, LimitErrorKind};
    match e {
        E::Limits(l) => match l.kind() {
            LimitErrorKind::DimensionError => ImageError::LimitExceeded(format!("dimensions: {l}")),
            _ => ImageError::LimitExceeded(l.to_string()),
        },
        E::Unsupported(u) => ImageError::UnsupportedFormat(u.to_string()),
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => ImageError::Truncated(io.to_string()),
        E::IoError(io) => ImageError::Corrupt(io.to_string()),
        E::Decoding(d) => {
            let msg = d.to_string();
            let lower = msg.to_ascii_lowercase();
            if ["eof", "end of file", "truncated", "unexpected end", "no more data", "not enough data"]
                .iter()
                .any(|k| lower.contains(k))
            {
                ImageError::Truncated(msg)
            } else {
                ImageError::Corrupt(msg)
            }
        }
        other => ImageError::Corrupt(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_size_mirrors_transformers() {
        assert_eq!(output_size(84, 56, 1540), (84, 56));
        assert_eq!(output_size(60, 100, 1540), (84, 112));
        // ratio = 300/112: 200/ratio = 74.67 → 74 → 84; 300/ratio = 112 → 112.
        assert_eq!(output_size(200, 300, 112), (84, 112));
        assert_eq!(output_size(1, 10_000, 1540), (28, 1540));
    }

    #[test]
    fn composite_extremes() {
        assert_eq!(composite_on_white(0, 0), 255);
        assert_eq!(composite_on_white(0, 255), 0);
        assert_eq!(composite_on_white(200, 255), 200);
    }
}
