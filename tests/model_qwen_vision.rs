//! The Qwen3.5 vision path (mmproj `clip.projector_type = qwen3vl_merger`) against
//! transformers (`tests/fixtures/tiny_qwen35_a`, `scripts/make_qwen35_models.py`):
//! preprocessing (`Qwen2VLImageProcessorPil`), the prompt layout, the M-RoPE positions
//! (`get_rope_index`) and the encoder's features (`get_image_features`).

use crate::common;

use common::{fixture, gpu, max_abs, read_npy, rel_l2};
use serde_json::Value;
use webvlm::gguf::MappedGguf;
use webvlm::image::qwen::{patch_rows, preprocess_qwen, preprocessed_size_qwen, QwenPreprocess};
use webvlm::image::{ImageError, PixelImage};
use webvlm::kernels::matmul::MatmulCompute;
use webvlm::model::vision::{mrope_positions, PromptLayout, VisionEncoder};
use webvlm::model::ModelError;
use webvlm::source::{GgufStream, LoadQuant, TensorSource};

/// Features in f32 against transformers' float32 `get_image_features` (relative L2 per image).
/// Measured on lavapipe: <= 9.6e-7 in both kernel geometries; the limit leaves room for other
/// adapters' summation orders (f32 rounding, ~1e-6).
const TOL_FEATURES: f32 = 5e-6;
/// Matrices requantized at load (rel L2; a wrong block layout gives errors of order 1) and
/// f16-tile matmuls. Measured on `one_image`, the same in both kernel geometries: Q8_0 7.1e-3,
/// Q4_1 0.121, Q4_0 0.126, f16 tiles 1.5e-3. Limits about twice those.
const TOL_Q8_FEATURES: f32 = 1.5e-2;
const TOL_Q4_FEATURES: f32 = 0.26;
const TOL_F16_FEATURES: f32 = 3.2e-3;

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture("tiny_qwen35_a/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The fixture's processor settings (min/max pixels 32² and 256² for the tiny images).
fn processor(cases: &Value) -> QwenPreprocess {
    let p = &cases["image_processor"];
    let u = |k: &str| p[k].as_u64().unwrap();
    let rgb = |k: &str| -> [f32; 3] { std::array::from_fn(|i| p[k][i].as_f64().unwrap() as f32) };
    QwenPreprocess {
        patch_size: u("patch_size") as u32,
        merge_size: u("merge_size") as u32,
        temporal_patch_size: u("temporal_patch_size") as u32,
        min_pixels: u("min_pixels"),
        max_pixels: u("max_pixels"),
        image_mean: rgb("image_mean"),
        image_std: rgb("image_std"),
        ..QwenPreprocess::default()
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// An int32 `.npy` file (the fixture's position ids).
fn read_npy_i32(path: &std::path::Path) -> (Vec<usize>, Vec<i32>) {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'<i4'") && header.contains("'fortran_order': False"), "{header}");
    let shape_str = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape = shape_str.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    (shape, bytemuck::pod_collect_to_vec(&bytes[10 + header_len..]))
}

fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("tiny_qwen35_a/{name}"))).unwrap()
}

#[test]
fn pixel_values_and_grids_match_the_processor() {
    let cases = cases();
    let opts = processor(&cases);
    for case in cases["image_cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut rows = Vec::new();
        for (i, image) in case["images"].as_array().unwrap().iter().enumerate() {
            let img = preprocess_qwen(&image_bytes(image.as_str().unwrap()), &opts).unwrap();
            assert_eq!(
                [img.width as u64, img.height as u64],
                *ids(&case["resized_sizes_wh"][i]).iter().map(|&x| x as u64).collect::<Vec<_>>()
            );
            let (r, (gh, gw)) = patch_rows(&img, opts.patch_size, opts.merge_size, opts.temporal_patch_size);
            assert_eq!(vec![1, gh, gw], ids(&case["image_grid_thw"][i]), "{name} image {i}: grid");
            rows.extend(r);
        }
        let (shape, want) = read_npy(&fixture(&format!("tiny_qwen35_a/{}", case["pixel_values"].as_str().unwrap())));
        assert_eq!(shape.iter().product::<usize>(), rows.len(), "{name}: {shape:?}");
        let err = max_abs(&rows, &want);
        // Pillow's bicubic is reproduced bit for bit: only the f32 normalisation can differ.
        println!("{name}: pixel_values max abs err {err:e}");
        assert!(err <= 1e-6, "{name}: max abs {err}");
    }
}

#[test]
fn bad_images_give_typed_errors() {
    let opts = QwenPreprocess { min_pixels: 1024, max_pixels: 65536, ..QwenPreprocess::default() };
    let png = image_bytes("img_100x44.png");
    assert!(matches!(preprocess_qwen(b"not an image", &opts), Err(ImageError::NotAnImage)));
    assert!(matches!(preprocess_qwen(&png[..png.len() / 2], &opts), Err(ImageError::Truncated(_) | ImageError::Corrupt(_))));
    let mut tiny_limit = opts.clone();
    tiny_limit.decode.max_pixels = 100;
    assert!(matches!(preprocess_qwen(&png, &tiny_limit), Err(ImageError::TooLarge { .. })));
    assert!(matches!(preprocessed_size_qwen(&png, &tiny_limit), Err(ImageError::TooLarge { .. })));
    assert!(preprocessed_size_qwen(b"GIF89a", &opts).is_err());
    let bad = QwenPreprocess { min_pixels: 10, max_pixels: 5, ..opts.clone() };
    assert!(matches!(preprocess_qwen(&png, &bad), Err(ImageError::InvalidOptions(_))));
    let bad = QwenPreprocess { image_std: [0.0; 3], ..opts };
    assert!(matches!(preprocess_qwen(&png, &bad), Err(ImageError::InvalidOptions(_))));
}

#[test]
fn expanded_prompts_and_positions_match_the_processor() {
    let cases = cases();
    let t = &cases["token_ids"];
    let names = |s: &str| match s {
        "<|vision_start|>" => t["vision_start_token_id"].as_u64().map(|x| x as u32),
        "<|vision_end|>" => t["vision_end_token_id"].as_u64().map(|x| x as u32),
        "<|image_pad|>" => t["image_token_id"].as_u64().map(|x| x as u32),
        _ => None,
    };
    let layout = PromptLayout::qwen_vl(&names).unwrap();
    let merge = cases["image_processor"]["merge_size"].as_u64().unwrap() as u32;
    for case in cases["image_cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let want = ids(&case["tokens"]);
        let grids: Vec<(u32, u32, u32)> = case["image_grid_thw"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let g = ids(g);
                (g[0], g[1] / merge, g[2] / merge)
            })
            .collect();
        // The template's prompt: one placeholder per image, between vision start and end.
        let mut template = want.clone();
        template.dedup_by(|a, b| *a == layout.placeholder() && a == b);
        let mut images = grids.iter();
        let mut expanded = Vec::new();
        for &tok in &template {
            if tok == layout.placeholder() {
                let &(_, rows, cols) = images.next().unwrap();
                expanded.extend(layout.image(rows, cols));
            } else {
                expanded.push(tok);
            }
        }
        assert_eq!(expanded, want, "{name}: expanded prompt");

        let pos = mrope_positions(&want, layout.fill(), &grids).unwrap();
        let (shape, want_pos) = read_npy_i32(&fixture(&format!("tiny_qwen35_a/{}", case["position_ids"].as_str().unwrap())));
        assert_eq!(shape, vec![3, want.len()], "{name}");
        let got: Vec<i32> = pos.axes.iter().flatten().map(|&p| p as i32).collect();
        assert_eq!(got, want_pos, "{name}: position ids");
        assert_eq!(pos.rope_delta(), case["rope_deltas"][0].as_i64().unwrap(), "{name}: rope delta");
    }
}

#[test]
fn features_match_transformers() {
    let cases = cases();
    let opts = processor(&cases);
    let gpu = gpu();
    let mmproj = MappedGguf::open(fixture("tiny_qwen35_a/mmproj.gguf")).unwrap();
    let enc = VisionEncoder::load(&gpu, &mmproj as &dyn TensorSource, LoadQuant::Keep).unwrap();
    assert!(matches!(enc, VisionEncoder::QwenVl(_)));
    // The encoder's own preprocessing (default pixel bounds: min 256², so upscaled).
    let default = enc.preprocess(&image_bytes("img_96x32.png"), &Default::default()).unwrap();
    assert_eq!((default.height, default.width), (160, 448));
    assert_eq!(enc.preprocessed_size(&image_bytes("img_96x32.png"), &Default::default()).unwrap(), (160, 448));
    for case in cases["image_cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        for (i, image) in case["images"].as_array().unwrap().iter().enumerate() {
            let img = preprocess_qwen(&image_bytes(image.as_str().unwrap()), &opts).unwrap();
            let grid = ids(&case["image_grid_thw"][i]);
            assert_eq!(enc.feature_grid(img.height, img.width), (grid[1] / 2, grid[2] / 2), "{name} image {i}");
            let features = enc.encode(&gpu, &img).unwrap();
            let got = pollster::block_on(features.read(&gpu)).unwrap();
            let (shape, want) = read_npy(&fixture(&format!("tiny_qwen35_a/{}", case["features"][i].as_str().unwrap())));
            assert_eq!(shape, vec![features.n_tokens() as usize, features.dim as usize], "{name} image {i}: shape");
            let err = rel_l2(&got, &want);
            println!("{name} image {i}: features rel L2 {err:.2e}, max abs {:.2e}", max_abs(&got, &want));
            assert!(err <= TOL_FEATURES, "{name} image {i}: rel L2 {err}");
        }
    }
}

#[test]
fn bad_mmproj_configs_are_typed_errors() {
    let mmproj = MappedGguf::open(fixture("tiny_qwen35_a/mmproj.gguf")).unwrap();
    let md = mmproj.metadata();
    let cfg = webvlm::model::vision::qwen_vl::QwenVlConfig::from_metadata(md, 64).unwrap();
    assert_eq!((cfg.hidden, cfg.n_head, cfg.head_dim, cfg.n_ff, cfg.pos_side, cfg.text_hidden), (32, 2, 16, 64, 8, 64));
    assert!(matches!(webvlm::model::vision::qwen_vl::QwenVlConfig::from_metadata(md, 63), Err(ModelError::Invalid(_))));
}

/// Loading while the mmproj streams in (weights filled after `load_from` returns, as in the
/// browser) gives the same features as the in-memory load.
#[test]
fn streamed_load_equals_the_in_memory_load() {
    let cases = cases();
    let opts = processor(&cases);
    let gpu = gpu();
    let img = preprocess_qwen(&image_bytes("img_100x44.png"), &opts).unwrap();
    let mmproj = MappedGguf::open(fixture("tiny_qwen35_a/mmproj.gguf")).unwrap();
    let eager = VisionEncoder::load(&gpu, &mmproj as &dyn TensorSource, LoadQuant::Keep).unwrap();
    let want = pollster::block_on(eager.encode(&gpu, &img).unwrap().read(&gpu)).unwrap();

    let bytes = std::fs::read(fixture("tiny_qwen35_a/mmproj.gguf")).unwrap();
    let mut chunks = bytes.chunks(1000);
    let mut stream = GgufStream::new();
    while stream.header().is_none() {
        stream.push(&gpu, chunks.next().unwrap()).unwrap();
    }
    let streamed = VisionEncoder::load_from(&gpu, &mut stream, LoadQuant::Keep).unwrap();
    stream.seal(&gpu).unwrap();
    for c in chunks {
        stream.push(&gpu, c).unwrap();
    }
    stream.finish().unwrap();
    let got = pollster::block_on(streamed.encode(&gpu, &img).unwrap().read(&gpu)).unwrap();
    assert_eq!(got, want);
}

/// Requantized weights and f16 matmuls stay near the f32 features; images whose patch grid
/// is not made of 2x2 windows are shape errors.
#[test]
fn reduced_precision_error_is_measured_and_bad_grids_fail() {
    let cases = cases();
    let opts = processor(&cases);
    let gpu = gpu();
    let case = &cases["image_cases"][0];
    let img = preprocess_qwen(&image_bytes(case["images"][0].as_str().unwrap()), &opts).unwrap();
    let (_, want) = read_npy(&fixture(&format!("tiny_qwen35_a/{}", case["features"][0].as_str().unwrap())));
    let mmproj = MappedGguf::open(fixture("tiny_qwen35_a/mmproj.gguf")).unwrap();
    let runs = [
        (LoadQuant::Q8_0, MatmulCompute::F32, TOL_Q8_FEATURES),
        (LoadQuant::Q4_1, MatmulCompute::F32, TOL_Q4_FEATURES),
        (LoadQuant::Q4_0, MatmulCompute::F32, TOL_Q4_FEATURES),
        (LoadQuant::Keep, MatmulCompute::F16, TOL_F16_FEATURES),
    ];
    for (quant, compute, tol) in runs {
        if compute == MatmulCompute::F16 && !gpu.caps().f16 {
            continue;
        }
        let mut enc = VisionEncoder::load(&gpu, &mmproj as &dyn TensorSource, quant).unwrap();
        enc.set_compute(compute);
        let got = pollster::block_on(enc.encode(&gpu, &img).unwrap().read(&gpu)).unwrap();
        let err = rel_l2(&got, &want);
        println!("{quant:?} / {compute:?}: features rel L2 {err:.2e}");
        assert!(err <= tol, "{quant:?} / {compute:?}: rel L2 {err}");
    }
    let enc = VisionEncoder::load(&gpu, &mmproj as &dyn TensorSource, LoadQuant::Keep).unwrap();
    let odd = PixelImage { width: 32, height: 48, data: vec![0.0; 3 * 32 * 48] };
    assert!(enc.encode(&gpu, &odd).is_err());
    let ragged = PixelImage { width: 40, height: 32, data: vec![0.0; 3 * 40 * 32] };
    assert!(enc.encode(&gpu, &ragged).is_err());
    let short = PixelImage { width: 32, height: 32, data: vec![0.0; 10] };
    assert!(enc.encode(&gpu, &short).is_err());
}
