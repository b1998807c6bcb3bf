//! Image preprocessing against transformers' `PixtralImageProcessorPil` (fixtures from
//! `scripts/make_image_refs.py`), plus typed errors for bad inputs.

use crate::common;

use common::{fixture, max_abs, read_npy};
use webvlm::image::{output_size, preprocess, preprocessed_size, ImageError, PixelImage, PreprocessOptions};

/// Exact paths (no JPEG): identical u8 pixels, so only f32 rounding in normalisation remains.
const EXACT_TOL: f32 = 1e-5;
/// JPEG: zune-jpeg and libjpeg-turbo IDCT / colour conversion differ by a few u8 steps; one
/// step is 1/255/std ≈ 0.0146 after normalisation. Measured: max 2 steps (0.029), mean abs
/// 0.0003; allowed: max 3 steps, mean 0.1 step.
const JPEG_MAX_TOL: f32 = 3.0 * 0.0147;
const JPEG_MEAN_TOL: f32 = 0.1 * 0.0147;

fn opts(max_edge: u32) -> PreprocessOptions {
    PreprocessOptions { max_edge, ..PreprocessOptions::default() }
}

fn load(name: &str, max_edge: u32) -> PixelImage {
    let bytes = std::fs::read(fixture(&format!("images/{name}"))).expect("fixture exists");
    preprocess(&bytes, &opts(max_edge)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn check(name: &str, max_edge: u32, tol: f32) -> PixelImage {
    let img = load(name, max_edge);
    let stem = name.rsplit_once('.').map(|(s, _)| s).unwrap_or(name);
    let (shape, want) = read_npy(&fixture(&format!("images/{stem}.npy")));
    assert_eq!(shape, vec![3, img.height as usize, img.width as usize], "{name}: shape");
    assert_eq!(img.data.len(), want.len());
    let err = max_abs(&img.data, &want);
    assert!(err <= tol, "{name}: max abs {err} > {tol}");
    img
}

#[test]
fn cases_json_matches_the_tests() {
    let text = std::fs::read_to_string(fixture("images/cases.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(cases.len(), 9);
    for c in &cases {
        let name = c["file"].as_str().unwrap();
        let max_edge = c["max_edge"].as_u64().unwrap() as u32;
        let shape: Vec<u64> = c["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let img = load(name, max_edge);
        assert_eq!(shape, vec![3, img.height as u64, img.width as u64], "{name}");
    }
}

#[test]
fn rgb_png_without_resize_is_exact() {
    let img = check("rgb_56x84.png", 1540, EXACT_TOL);
    assert_eq!((img.width, img.height, img.cols(), img.rows()), (56, 84, 2, 3));
}

#[test]
fn rgba_png_composites_on_white_and_upscales() {
    let img = check("rgba_100x60.png", 1540, EXACT_TOL);
    assert_eq!((img.width, img.height), (112, 84));
}

#[test]
fn palette_png_with_transparency() {
    check("palette_70x42.png", 1540, EXACT_TOL);
}

#[test]
fn gray16_png_rounds_to_8_bit() {
    check("gray16_56x56.png", 1540, EXACT_TOL);
}

#[test]
fn lossless_webp_is_exact() {
    check("lossless_84x56.webp", 1540, EXACT_TOL);
}

#[test]
fn gif_uses_first_frame() {
    check("anim_2frames_56x56.gif", 1540, EXACT_TOL);
}

#[test]
fn downscale_matches_pil_bicubic() {
    let img = check("rgb_300x200.png", 112, EXACT_TOL);
    assert_eq!((img.width, img.height), (112, 84));
    let img = check("rgb_130x181.png", 84, EXACT_TOL);
    assert_eq!((img.width, img.height), (84, 84));
}

#[test]
fn jpeg_exif_orientation_is_applied() {
    // Stored 84 wide x 56 high with orientation 6: upright it is 56 x 84.
    let img = load("exif6_84x56.jpg", 1540);
    assert_eq!((img.width, img.height), (56, 84));
    let (_, want) = read_npy(&fixture("images/exif6_84x56.npy"));
    let err = max_abs(&img.data, &want);
    let mean = img.data.iter().zip(&want).map(|(a, b)| (a - b).abs()).sum::<f32>() / want.len() as f32;
    eprintln!("jpeg vs Pillow: max abs {err}, mean abs {mean}");
    assert!(err <= JPEG_MAX_TOL && mean <= JPEG_MEAN_TOL, "jpeg: max {err}, mean {mean}");
    // Without EXIF handling the stored orientation comes through.
    let bytes = std::fs::read(fixture("images/exif6_84x56.jpg")).unwrap();
    let raw = preprocess(&bytes, &PreprocessOptions { apply_exif_orientation: false, ..opts(1540) }).unwrap();
    assert_eq!((raw.width, raw.height), (84, 56));
}

#[test]
fn output_size_rounds_up_to_28() {
    assert_eq!(output_size(1, 1, 1540), (28, 28));
    assert_eq!(output_size(3000, 4000, 1540), (1176, 1540));
    assert_eq!(output_size(29, 28, 1540), (56, 28));
}

/// The size `preprocess` gives is known from the image's header (dimensions and EXIF
/// orientation), before any pixel is decoded.
#[test]
fn header_size_is_the_preprocessed_size() {
    let names = [
        "rgb_300x200.png",
        "rgb_130x181.png",
        "rgba_100x60.png",
        "palette_70x42.png",
        "gray16_56x56.png",
        "lossless_84x56.webp",
        "anim_2frames_56x56.gif",
        "exif6_84x56.jpg",
    ];
    for name in names {
        let bytes = std::fs::read(fixture(&format!("images/{name}"))).unwrap();
        for max_edge in [28, 100, 1540] {
            for apply_exif_orientation in [true, false] {
                let o = PreprocessOptions { apply_exif_orientation, ..opts(max_edge) };
                let img = preprocess(&bytes, &o).unwrap();
                let size = preprocessed_size(&bytes, &o).unwrap();
                assert_eq!(size, (img.height, img.width), "{name}, max edge {max_edge}, EXIF {apply_exif_orientation}");
            }
        }
    }
    let bomb = std::fs::read(fixture("images/bomb_30000.png")).unwrap();
    assert!(matches!(preprocessed_size(&bomb, &opts(1540)), Err(ImageError::TooLarge { .. })));
    assert!(matches!(preprocessed_size(b"hello", &opts(1540)), Err(ImageError::NotAnImage)));
    let png = std::fs::read(fixture("images/rgb_56x84.png")).unwrap();
    assert!(matches!(preprocessed_size(&png, &opts(0)), Err(ImageError::InvalidOptions(_))));
}

fn bad(bytes: &[u8]) -> ImageError {
    match preprocess(bytes, &PreprocessOptions::default()) {
        Ok(img) => panic!("expected an error, got {}x{}", img.width, img.height),
        Err(e) => e,
    }
}

#[test]
fn decompression_bomb_is_rejected_from_the_header() {
    let bytes = std::fs::read(fixture("images/bomb_30000.png")).unwrap();
    match bad(&bytes) {
        ImageError::TooLarge { width: 30000, height: 30000, .. } => {}
        e => panic!("wrong error: {e:?}"),
    }
    // Only the header is needed: the file cut right after IHDR gives the same answer.
    match bad(&bytes[..33 + 64]) {
        ImageError::TooLarge { width: 30000, height: 30000, .. } => {}
        e => panic!("wrong error for header only: {e:?}"),
    }
}

#[test]
fn truncated_png_is_reported() {
    let bytes = std::fs::read(fixture("images/rgb_56x84.png")).unwrap();
    let e = bad(&bytes[..bytes.len() / 2]);
    assert!(matches!(e, ImageError::Truncated(_)), "{e:?}");
}

#[test]
fn not_an_image() {
    assert!(matches!(bad(b"hello, this is text and not an image"), ImageError::NotAnImage));
    assert!(matches!(bad(b""), ImageError::NotAnImage));
}

#[test]
fn unsupported_formats() {
    for name in ["tiny.bmp", "tiny.tiff"] {
        let bytes = std::fs::read(fixture(&format!("images/{name}"))).unwrap();
        assert!(matches!(bad(&bytes), ImageError::UnsupportedFormat(_)), "{name}");
    }
}

#[test]
fn zero_sized_image() {
    let bytes = std::fs::read(fixture("images/zero_width.png")).unwrap();
    let e = bad(&bytes);
    assert!(matches!(e, ImageError::ZeroSize { .. }), "{e:?}");
}

#[test]
fn garbage_after_a_valid_signature_does_not_panic() {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    let e = bad(&bytes);
    assert!(matches!(e, ImageError::Corrupt(_) | ImageError::Truncated(_)), "{e:?}");
}

#[test]
fn zero_max_edge_is_an_option_error() {
    let bytes = std::fs::read(fixture("images/rgb_56x84.png")).unwrap();
    assert!(matches!(preprocess(&bytes, &opts(0)), Err(ImageError::InvalidOptions(_))));
}
