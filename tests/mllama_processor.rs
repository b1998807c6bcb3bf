//! A Llama 3.2 Vision folder's own image-processor settings (issue 29): `tiny_mllama_c` was
//! saved by transformers 5 (`processor_config.json`, `image_processor` object) with a processor
//! unlike the published one (mean / std not CLIP's, 42-px tiles, bicubic, rescale 1/250).
//! Its pixels, the engine's logits for its image prompts, and those of the GGUF `webvlm
//! convert` writes of it, equal transformers'; settings the model cannot take are typed
//! errors; a folder without a processor file keeps the published settings.

use crate::common;

use std::path::Path;

use common::{argmax, fixture, gpu, max_abs, read_npy, rel_l2, temp_path};
use serde_json::Value;
use webvlm::engine::{Engine, Prompt, RepoLoad};
use webvlm::image::mllama::{preprocess_mllama, MllamaPreprocess, Resample};
use webvlm::model::{ContextOptions, Precision};
use webvlm::source::hf::{mllama_preprocess, HfError, HfModel, MllamaConfig, PROCESSOR_CONFIG};
use webvlm::source::{Eager, GgufBytes, LoadQuant};

const FOLDER: &str = "tiny_mllama_c";

fn cases(folder: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(folder.join("cases.json")).unwrap()).unwrap()
}

fn image_cases(folder: &Path) -> Vec<Value> {
    cases(folder)["cases"].as_array().unwrap().iter().filter(|c| !c["images"].as_array().unwrap().is_empty()).cloned().collect()
}

/// The folder's Mllama preprocessing, as the engine builds it.
fn folder_options(folder: &Path) -> MllamaPreprocess {
    let hf = HfModel::open(folder).unwrap();
    let MllamaConfig { vision: v, .. } = hf.config().mllama.clone().unwrap();
    mllama_preprocess(hf.text_files().image_processor.as_ref(), v.image_size, v.patch_size, v.max_num_tiles).unwrap()
}

#[test]
fn the_folders_processor_is_read() {
    let folder = fixture(FOLDER);
    let opts = folder_options(&folder);
    assert_eq!((opts.tile_size, opts.max_image_tiles), (42, 4));
    assert_eq!((opts.image_mean, opts.image_std), ([0.52, 0.38, 0.61], [0.21, 0.33, 0.18]));
    assert_eq!((opts.resample, opts.rescale_factor, opts.normalize), (Resample::Bicubic, Some(0.004), true));
    // The fixtures saved with the published processor (preprocessor_config.json) read as
    // the published settings at their tile.
    for published in ["tiny_mllama_a", "tiny_mllama_b"] {
        let want = MllamaPreprocess { tile_size: 28, ..MllamaPreprocess::default() };
        assert_eq!(folder_options(&fixture(published)), want, "{published}");
    }
}

#[test]
fn pixels_match_transformers() {
    let folder = fixture(FOLDER);
    let opts = folder_options(&folder);
    let mut checked = 0;
    for case in image_cases(&folder) {
        let png = std::fs::read(folder.join(case["images"][0].as_str().unwrap())).unwrap();
        let px = preprocess_mllama(&png, &opts).unwrap();
        let (shape, want) = read_npy(&folder.join(case["pixel_values"].as_str().unwrap()));
        assert_eq!(shape, [1, px.num_tiles() as usize, 3, 42, 42], "{}", case["name"]);
        assert_eq!(px.tiling.aspect_ratio_id as u64, case["aspect_ratio_ids"][0].as_u64().unwrap());
        let err = max_abs(&px.tiles, &want);
        println!("{}: max abs {err:.2e}", case["name"]);
        assert!(err <= 1e-5, "{}: max abs {err}", case["name"]);
        // The published settings give other pixels.
        let published = MllamaPreprocess { tile_size: 42, ..MllamaPreprocess::default() };
        assert!(max_abs(&preprocess_mllama(&png, &published).unwrap().tiles, &want) > 0.1);
        checked += 1;
    }
    assert_eq!(checked, 2);
}

fn opts(precision: Precision) -> ContextOptions {
    ContextOptions { max_ctx: 64, max_chunk: 64, precision }
}

/// Checks every image case of `folder` through `e` against transformers' logits.
fn check_engine(e: &mut Engine, folder: &Path, tol: f32, what: &str) -> usize {
    let mut checked = 0;
    for case in image_cases(folder) {
        let name = format!("{what} {}", case["name"]);
        let tokens = e.text_tokens(case["text"].as_str().unwrap()).unwrap();
        let png = std::fs::read(folder.join(case["images"][0].as_str().unwrap())).unwrap();
        let image = e.image_features(&png, None).unwrap();
        let prompt: Prompt = e.prompt_with_images(&tokens, vec![image]).unwrap();
        let want_ids: Vec<u32> = case["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        assert_eq!(prompt.tokens, want_ids, "{name}");
        let (shape, want) = read_npy(&folder.join(case["logits"].as_str().unwrap()));
        let got = pollster::block_on(e.logits(&prompt)).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let err = rel_l2(&got, &want);
        println!("{name}: rel L2 {err:.2e}");
        assert!(err <= tol, "{name}: rel L2 {err:.2e} > {tol:.0e}");
        for (g, w) in got.chunks(shape[1]).zip(want.chunks(shape[1])) {
            assert_eq!(argmax(g), argmax(w), "{name}");
        }
        checked += 1;
    }
    checked
}

#[test]
fn engine_logits_match_transformers() {
    let folder = fixture(FOLDER);
    let mut checked = 0;
    for (precision, tol) in [(Precision::F32, 1e-4), (Precision::default(), 1e-3)] {
        let hf = HfModel::open(&folder).unwrap();
        let mut e = Engine::builder(gpu()).context(opts(precision)).hf_text(hf.text_files()).load(&mut Eager(&hf)).unwrap();
        checked += check_engine(&mut e, &folder, tol, &format!("folder {precision:?}"));
    }
    assert_eq!(checked, 4);
}

/// The folder streamed and written out as GGUF (what `webvlm convert` and the npm package
/// keep), at the folder's own types.
fn convert(folder: &Path) -> Vec<u8> {
    let read = |name: &str| std::fs::read(folder.join(name)).ok();
    let mut repo = RepoLoad::new(read, LoadQuant::Keep).unwrap();
    repo.write_gguf().unwrap();
    let shards: Vec<Vec<u8>> = repo.shard_names().iter().map(|n| read(n).unwrap()).collect();
    for (i, bytes) in shards.iter().enumerate() {
        assert!(repo.push_header(i, bytes).unwrap());
    }
    let engine = repo.build(gpu(), opts(Precision::F32)).unwrap();
    let mut file = repo.take_gguf();
    for (i, bytes) in shards.iter().enumerate() {
        repo.push(engine.device(), i, bytes).unwrap();
        file.extend(repo.take_gguf());
    }
    repo.finish().unwrap();
    file.extend(repo.take_gguf());
    file
}

#[test]
fn the_converted_file_keeps_the_processor() {
    let folder = fixture(FOLDER);
    let file = GgufBytes::parse(convert(&folder)).unwrap();
    let mut e = Engine::builder(gpu()).context(opts(Precision::F32)).load(&mut Eager(&file)).unwrap();
    assert_eq!(check_engine(&mut e, &folder, 1e-4, "converted"), 2);
}

/// A copy of the fixture folder with `processor_config.json`'s `image_processor` object
/// changed by `edit`.
fn with_processor(name: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> std::path::PathBuf {
    let src = fixture(FOLDER);
    let dir = temp_path(name);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(src.join(PROCESSOR_CONFIG)).unwrap()).unwrap();
    edit(cfg["image_processor"].as_object_mut().unwrap());
    std::fs::write(dir.join(PROCESSOR_CONFIG), serde_json::to_vec(&cfg).unwrap()).unwrap();
    dir
}

#[test]
fn settings_the_model_cannot_take_are_typed_errors() {
    for (name, key, value) in [
        ("proc_tile", "size", serde_json::json!({"height": 28, "width": 28})),
        ("proc_tiles", "max_image_tiles", serde_json::json!(2)),
        ("proc_std", "image_std", serde_json::json!([0.2, 0.0, 0.3])),
        ("proc_mean", "image_mean", serde_json::json!([0.2, 0.3])),
        ("proc_filter", "resample", serde_json::json!(1)),
    ] {
        let dir = with_processor(name, |p| {
            p.insert(key.into(), value.clone());
        });
        match HfModel::open(&dir) {
            Err(HfError::Processor { key: k, .. }) => assert_eq!(k, key, "{name}"),
            Err(e) => panic!("{name}: {e}"),
            Ok(_) => panic!("{name}: {key} = {value} accepted"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
