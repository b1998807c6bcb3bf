//! Llama 3.2 Vision (Mllama) image preprocessing against transformers'
//! `MllamaImageProcessorPil` (fixtures from `scripts/make_mllama_models.py`): tiles, aspect
//! ratio ids and masks of every supported aspect ratio, the images of the tiny Mllama model
//! cases, and the canvas arithmetic at Llama 3.2 Vision's 560-px tiles.

use crate::common;

use common::{fixture, max_abs, read_npy};
use serde_json::Value;
use webvlm::image::mllama::{
    preprocess_mllama, preprocessed_tiling, supported_aspect_ratios, tiling, MllamaPixels, MllamaPreprocess,
};
use webvlm::image::ImageError;

/// Identical resized u8 pixels leave only f32 rounding in the normalisation.
const TOL: f32 = 1e-5;

fn json(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn opts(tile: u32) -> MllamaPreprocess {
    MllamaPreprocess { tile_size: tile, ..MllamaPreprocess::default() }
}

/// Options from a model folder's `preprocessor_config.json`.
fn opts_from_config(folder: &str) -> MllamaPreprocess {
    let cfg = json(&format!("{folder}/preprocessor_config.json"));
    let f3 = |v: &Value| -> [f32; 3] { std::array::from_fn(|i| v[i].as_f64().unwrap() as f32) };
    assert_eq!(cfg["resample"], 2, "bilinear");
    assert_eq!(cfg["size"]["height"], cfg["size"]["width"]);
    MllamaPreprocess {
        tile_size: cfg["size"]["height"].as_u64().unwrap() as u32,
        max_image_tiles: cfg["max_image_tiles"].as_u64().unwrap() as u32,
        image_mean: f3(&cfg["image_mean"]),
        image_std: f3(&cfg["image_std"]),
        ..MllamaPreprocess::default()
    }
}

/// Preprocesses `png`, checks it against `want_npy` (`[.., num_tiles, 3, tile, tile]`, the
/// leading dimensions of size 1) and the header-only tiling; returns the max abs error.
fn check_pixels(png: &str, want_npy: &str, opts: &MllamaPreprocess) -> (MllamaPixels, f32) {
    let bytes = std::fs::read(fixture(png)).unwrap();
    let px = preprocess_mllama(&bytes, opts).unwrap_or_else(|e| panic!("{png}: {e}"));
    let t = opts.tile_size as usize;
    let (shape, want) = read_npy(&fixture(want_npy));
    let tail = &shape[shape.len() - 4..];
    assert_eq!(tail, [px.num_tiles() as usize, 3, t, t], "{png}: shape {shape:?}");
    assert_eq!(px.tiles.len(), want.len(), "{png}");
    assert_eq!(preprocessed_tiling(&bytes, opts).unwrap(), px.tiling, "{png}: header tiling");
    let err = max_abs(&px.tiles, &want);
    assert!(err <= TOL, "{png}: max abs {err} > {TOL}");
    (px, err)
}

#[test]
fn every_aspect_ratio_matches_the_processor() {
    let cases = json("mllama_preprocess/cases.json");
    let ratios: Vec<(u32, u32)> = cases["supported_aspect_ratios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a[0].as_u64().unwrap() as u32, a[1].as_u64().unwrap() as u32))
        .collect();
    assert_eq!(supported_aspect_ratios(4), ratios);
    let mut ids_seen = vec![false; ratios.len() + 1];
    let mut worst = 0f32;
    for c in cases["cases"].as_array().unwrap() {
        let file = c["file"].as_str().unwrap();
        let opts = opts(c["tile"].as_u64().unwrap() as u32);
        let (px, err) = check_pixels(
            &format!("mllama_preprocess/{file}"),
            &format!("mllama_preprocess/{}", c["pixel_values"].as_str().unwrap()),
            &opts,
        );
        worst = worst.max(err);
        assert_eq!(px.tiling.aspect_ratio_id, c["aspect_ratio_id"].as_u64().unwrap() as u32, "{file}");
        assert_eq!(px.aspect_ratio_mask.iter().map(|&m| m as u32).collect::<Vec<_>>(), u32s(&c["aspect_ratio_mask"]), "{file}");
        let canvas = u32s(&c["canvas_hw"]);
        let (th, tw) = px.tiling.tiles_hw;
        assert_eq!([th * opts.tile_size, tw * opts.tile_size], canvas[..], "{file}: canvas");
        let (rh, rw) = px.tiling.resized_hw;
        assert_eq!([rh, rw], u32s(&c["resized_hw"])[..], "{file}: resized");
        ids_seen[px.tiling.aspect_ratio_id as usize] = true;
    }
    assert!(ids_seen[1..].iter().all(|&s| s), "every aspect ratio id is exercised: {ids_seen:?}");
    eprintln!("mllama preprocess: max abs error {worst} over {} images", cases["cases"].as_array().unwrap().len());
}

#[test]
fn canvas_and_resize_at_560_px_tiles() {
    let cases = json("mllama_preprocess/cases.json");
    let opts = MllamaPreprocess::default();
    for c in cases["canvas_560"].as_array().unwrap() {
        let (h, w) = (c["height"].as_u64().unwrap() as u32, c["width"].as_u64().unwrap() as u32);
        let t = tiling(h, w, &opts).unwrap();
        assert_eq!([t.tiles_hw.0 * 560, t.tiles_hw.1 * 560], u32s(&c["canvas_hw"])[..], "{h}x{w}: canvas");
        assert_eq!([t.resized_hw.0, t.resized_hw.1], u32s(&c["resized_hw"])[..], "{h}x{w}: resized");
    }
}

#[test]
fn tiny_model_case_images_match_the_processor() {
    for folder in ["tiny_mllama_a", "tiny_mllama_b"] {
        let opts = opts_from_config(folder);
        let cases = json(&format!("{folder}/cases.json"));
        let mut n = 0;
        for c in cases["cases"].as_array().unwrap() {
            let images = c["images"].as_array().unwrap();
            if images.is_empty() {
                continue;
            }
            assert_eq!(images.len(), 1, "one image per case");
            let png = format!("{folder}/{}", images[0].as_str().unwrap());
            let (px, err) = check_pixels(&png, &format!("{folder}/{}", c["pixel_values"].as_str().unwrap()), &opts);
            assert_eq!(vec![px.tiling.aspect_ratio_id], u32s(&c["aspect_ratio_ids"]), "{png}");
            assert_eq!(vec![px.num_tiles()], u32s(&c["num_tiles"]), "{png}");
            let mask: Vec<u32> = px.aspect_ratio_mask.iter().map(|&m| m as u32).collect();
            assert_eq!(mask, u32s(&c["aspect_ratio_mask"][0]), "{png}");
            eprintln!("{png}: {} tiles, aspect ratio id {}, max abs error {err}", px.num_tiles(), px.tiling.aspect_ratio_id);
            n += 1;
        }
        assert!(n > 0, "{folder} has image cases");
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let opts = MllamaPreprocess::default();
    assert!(matches!(preprocess_mllama(b"not an image", &opts), Err(ImageError::NotAnImage)));
    let png = std::fs::read(fixture("mllama_preprocess/img_20x20_t28.png")).unwrap();
    assert!(matches!(preprocess_mllama(&png[..png.len() / 2], &opts), Err(ImageError::Truncated(_) | ImageError::Corrupt(_))));
    let no_tiles = MllamaPreprocess { max_image_tiles: 0, ..opts.clone() };
    assert!(matches!(preprocess_mllama(&png, &no_tiles), Err(ImageError::InvalidOptions(_))));
    let small = MllamaPreprocess { decode: webvlm::image::PreprocessOptions { max_pixels: 100, ..Default::default() }, ..opts };
    assert!(matches!(preprocessed_tiling(&png, &small), Err(ImageError::TooLarge { .. })));
}
