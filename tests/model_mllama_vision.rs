//! The Mllama vision encoder + projector against transformers: for every image case of
//! `tiny_mllama_a` / `tiny_mllama_b`, the cross-attention states from the fixture's
//! processor tiles and from the PNG through `preprocess_mllama` equal the recorded
//! `cross_attention_states` (`[max_tiles * tokens][text_hidden]`), also with the features
//! and MLP chunks split by a small binding limit; the memory plan's vision scratch is the
//! bytes an encode allocates; bad inputs are refused.

use crate::common;

use webvlm::backend::Device;
use webvlm::gguf::TensorInfo;
use webvlm::image::mllama::{preprocess_mllama, MllamaPreprocess};
use webvlm::kernels::matmul::MatmulCompute;
use webvlm::model::vision::mllama::MllamaVision;
use webvlm::model::{MemoryPlan, ModelHeaders, PlanLimits, PlanOptions};
use webvlm::source::hf::HfModel;
use webvlm::source::{LoadQuant, TensorSource};

/// f32 matmuls: float64 numpy and transformers agree to ~4e-7; what is left is f32 rounding.
const TOL_F32: f32 = 1e-4;
/// f16 matmul inputs (each rounded by up to 2^-11 relative, over 4 + 2 layers of the tiny
/// models): ~1.0e-3 seen.
const TOL_F16: f32 = 3e-3;

fn cases(model: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(common::fixture(&format!("{model}/cases.json"))).unwrap()).unwrap()
}

fn states(gpu: &Device, enc: &MllamaVision, tiles: &[f32], num_tiles: u32, ratio: u32) -> Vec<f32> {
    let s = enc.encode_tiles(gpu, tiles, num_tiles, ratio).unwrap();
    gpu.read_f32_blocking(&s.buffer, (s.rows * s.dim) as usize).unwrap()
}

#[test]
fn states_match_transformers() {
    for dev in [common::gpu(), common::cpu()] {
        check_states(&dev);
    }
}

/// [`states_match_transformers`] on one device (the CPU backend computes f32 whatever
/// `compute` asks).
fn check_states(gpu: &Device) {
    let mut seen = 0;
    for model in ["tiny_mllama_a", "tiny_mllama_b"] {
        let hf = HfModel::open(common::fixture(model)).unwrap();
        let mut enc = MllamaVision::load(gpu, &hf, LoadQuant::Keep).unwrap();
        let opts = MllamaPreprocess { tile_size: enc.cfg.image_size, ..MllamaPreprocess::default() };
        let cases = cases(model);
        for case in cases["cases"].as_array().unwrap().iter().filter(|c| c["cross_attention_states"].is_string()) {
            let name = case["name"].as_str().unwrap();
            let file = |key: &str| common::fixture(&format!("{model}/{}", case[key].as_str().unwrap()));
            let (_, tiles) = common::read_npy(&file("pixel_values"));
            let (shape, want) = common::read_npy(&file("cross_attention_states"));
            assert_eq!(shape, [enc.cfg.state_rows() as usize, enc.cfg.text_hidden as usize]);
            let num_tiles = case["num_tiles"][0].as_u64().unwrap() as u32;
            let ratio = case["aspect_ratio_ids"][0].as_u64().unwrap() as u32;
            let png = std::fs::read(common::fixture(&format!("{model}/{}", case["images"][0].as_str().unwrap()))).unwrap();
            let pixels = preprocess_mllama(&png, &opts).unwrap();
            assert_eq!((pixels.num_tiles(), pixels.tiling.aspect_ratio_id), (num_tiles, ratio));
            for (compute, tol) in [(MatmulCompute::F32, TOL_F32), (MatmulCompute::F16, TOL_F16)] {
                enc.compute = compute;
                let got = states(gpu, &enc, &tiles, num_tiles, ratio);
                let err = common::rel_l2(&got, &want);
                let s = enc.encode(gpu, &pixels).unwrap();
                let from_png = gpu.read_f32_blocking(&s.buffer, (s.rows * s.dim) as usize).unwrap();
                let err_png = common::rel_l2(&from_png, &want);
                eprintln!("{model}/{name} ({num_tiles} tiles, {compute:?}): rel L2 {err:.2e}, from the PNG {err_png:.2e}");
                assert!(err <= tol && err_png <= tol, "{model}/{name} {compute:?}: rel L2 {err:.2e} / {err_png:.2e}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 3, "{seen} image cases");
}

/// One image case of a fixture model: the processor's tiles and transformers' states.
struct ImageCase {
    name: String,
    tiles: Vec<f32>,
    num_tiles: u32,
    ratio: u32,
    want: Vec<f32>,
}

/// Every image case of a fixture model.
fn image_cases(model: &str) -> Vec<ImageCase> {
    let cases = cases(model);
    let with_states = cases["cases"].as_array().unwrap().iter().filter(|c| c["cross_attention_states"].is_string());
    with_states
        .map(|case| {
            let file = |key: &str| common::fixture(&format!("{model}/{}", case[key].as_str().unwrap()));
            ImageCase {
                name: case["name"].as_str().unwrap().to_string(),
                tiles: common::read_npy(&file("pixel_values")).1,
                num_tiles: case["num_tiles"][0].as_u64().unwrap() as u32,
                ratio: case["aspect_ratio_ids"][0].as_u64().unwrap() as u32,
                want: common::read_npy(&file("cross_attention_states")).1,
            }
        })
        .collect()
}

/// A binding limit of 7 feature rows: the features go in parts of 7, 7 and 6 rows (the
/// kept layers' scatter and the projector run per part, each writing its rows of the
/// states), the MLP in chunks of fewer rows than the pass; the states still match
/// transformers, and the encode without the limit.
#[test]
fn split_features_match_transformers() {
    let gpu = common::gpu();
    let mut seen = 0;
    for model in ["tiny_mllama_a", "tiny_mllama_b"] {
        let hf = HfModel::open(common::fixture(model)).unwrap();
        let mut enc = MllamaVision::load(&gpu, &hf, LoadQuant::Keep).unwrap();
        let limit = 7 * 4 * enc.cfg.output_dim as u64;
        let parts = enc.cfg.feature_parts(limit);
        assert_eq!(parts, [(0, 7), (7, 7), (14, 6)], "{model}: {} state rows", enc.cfg.state_rows());
        assert!(enc.cfg.ffn_chunk_rows(limit) < enc.cfg.pass_rows(), "{model}: the MLP is chunked too");
        for ImageCase { name, tiles, num_tiles, ratio, want } in image_cases(model) {
            enc.split_limit = None;
            let whole = states(&gpu, &enc, &tiles, num_tiles, ratio);
            enc.split_limit = Some(limit);
            let split = states(&gpu, &enc, &tiles, num_tiles, ratio);
            let (err, err_whole) = (common::rel_l2(&split, &want), common::rel_l2(&split, &whole));
            eprintln!("{model}/{name} ({num_tiles} tiles) split: rel L2 {err:.2e}, against the whole encode {err_whole:.2e}");
            assert!(err <= TOL_F32 && err_whole <= TOL_F32, "{model}/{name}: rel L2 {err:.2e} / {err_whole:.2e}");
            seen += 1;
        }
    }
    assert!(seen >= 3, "{seen} image cases");
}

/// The memory plan's vision scratch, from the folder's headers at the adapter's limits, is
/// what the encode of an image of `max_tiles` tiles (the largest) allocates, states included.
#[test]
fn memory_plan_counts_the_encoders_buffers() {
    let gpu = common::gpu();
    for model in ["tiny_mllama_a", "tiny_mllama_b"] {
        let hf = HfModel::open(common::fixture(model)).unwrap();
        let infos: Vec<TensorInfo> = hf.tensors().map(|t| t.info.clone()).collect();
        let headers = ModelHeaders { metadata: hf.metadata(), tensors: &infos };
        let opts = PlanOptions { ctx: 64, chunk: 16, ..PlanOptions::default() };
        let plan = MemoryPlan::new(headers, None, PlanLimits::from_caps(gpu.caps()), opts).unwrap();
        let enc = MllamaVision::load(&gpu, &hf, LoadQuant::Keep).unwrap();
        let max_tiles = enc.cfg.max_tiles;
        let ratio = enc.cfg.aspect_ratios.iter().position(|&(down, across)| down * across == max_tiles).unwrap() as u32 + 1;
        let tiles = common::Rng::new(3).vec((max_tiles * 3 * enc.cfg.image_size * enc.cfg.image_size) as usize);
        let s = enc.encode_tiles(&gpu, &tiles, max_tiles, ratio).unwrap();
        assert_eq!(plan.vision_scratch, s.scratch_bytes, "{model}");
    }
}

#[test]
fn bad_inputs_are_refused() {
    let gpu = common::gpu();
    let hf = HfModel::open(common::fixture("tiny_mllama_a")).unwrap();
    let enc = MllamaVision::load(&gpu, &hf, LoadQuant::Keep).unwrap();
    let tile = 3 * (enc.cfg.image_size * enc.cfg.image_size) as usize;
    let tiles = vec![0.0; 2 * tile];
    // Wrong pixel count, no tiles, too many tiles, id 0, an id whose ratio has 1 tile.
    assert!(enc.encode_tiles(&gpu, &tiles[..tile + 1], 1, 1).is_err());
    assert!(enc.encode_tiles(&gpu, &[], 0, 1).is_err());
    assert!(enc.encode_tiles(&gpu, &vec![0.0; 5 * tile], 5, 1).is_err());
    assert!(enc.encode_tiles(&gpu, &tiles, 2, 0).is_err());
    assert!(enc.encode_tiles(&gpu, &tiles, 2, 1).is_err());
    assert!(enc.encode_tiles(&gpu, &tiles, 2, 99).is_err());
    assert!(enc.encode_tiles(&gpu, &tiles, 2, 2).is_ok());
}
