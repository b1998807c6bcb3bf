//! Mllama (Llama 3.2 Vision) text side against transformers' fixtures
//! (`tests/fixtures/tiny_mllama_a`, `tiny_mllama_b`, from `scripts/make_mllama_models.py`):
//! the cross-attention mask webvlm builds from the token ids equals the processor's, and
//! the decoder fed each case's ids and projected vision states (`cross_attention_states`,
//! bypassing the vision encoder) gives transformers' logits at every position.

use crate::common;
use common::*;
use webvlm::backend::Device;
use webvlm::model::families::mllama::{kernel_mask, processor_mask};
use webvlm::model::{Context, ContextOptions, Decoder, Precision};
use webvlm::source::hf::HfModel;

/// Logits of every position of `case` (its images' states set first), in chunks of `chunk`.
/// (chunks of 1 take the decode path: one-token matvecs and split-K attention).
fn case_logits(
    gpu: &Device,
    dec: &Decoder,
    folder: &str,
    case: &serde_json::Value,
    precision: Precision,
    chunk: u32,
) -> Vec<f32> {
    let ids: Vec<u32> = case["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    let mut ctx = Context::new(gpu, dec, ContextOptions { max_ctx: 64, max_chunk: chunk, precision }).unwrap();
    if let Some(file) = case["cross_attention_states"].as_str() {
        let (_, states) = read_npy(&fixture(&format!("{folder}/{file}")));
        let (shape, mask) = read_npy(&fixture(&format!("{folder}/{}", case["cross_attention_mask"].as_str().unwrap())));
        let n_tiles = (shape[1] * shape[2]) as u32;
        let mask: Vec<u32> = mask.iter().map(|&v| v as u32).collect();
        ctx.set_cross_attention(gpu, dec, &upload(gpu, &states), n_tiles, &mask).unwrap();
    }
    pollster::block_on(ctx.logits(gpu, dec, &ids)).unwrap()
}

#[test]
fn logits_match_transformers() {
    let gpu = gpu();
    let mut checked = 0;
    for folder in ["tiny_mllama_a", "tiny_mllama_b"] {
        let hf = HfModel::open(fixture(folder)).unwrap();
        let dec = Decoder::load(&gpu, &hf).unwrap();
        let cases: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(&format!("{folder}/cases.json"))).unwrap()).unwrap();
        for case in cases["cases"].as_array().unwrap() {
            let name = format!("{folder} {}", case["name"]);
            let (shape, want) = read_npy(&fixture(&format!("{folder}/{}", case["logits"].as_str().unwrap())));
            let vocab = shape[1];
            for (precision, chunk, tol) in
                [(Precision::F32, 64, 1e-4), (Precision::default(), 64, 1e-3), (Precision::F32, 5, 1e-4)]
            {
                let got = case_logits(&gpu, &dec, folder, case, precision, chunk);
                assert_eq!(got.len(), want.len(), "{name}");
                let err = rel_l2(&got, &want);
                println!("{name} {precision:?} chunk {chunk}: rel L2 {err:.2e}");
                assert!(err <= tol, "{name} {precision:?} chunk {chunk}: rel L2 {err}");
                for (g, w) in got.chunks(vocab).zip(want.chunks(vocab)) {
                    assert_eq!(argmax(g), argmax(w), "{name} {precision:?} chunk {chunk}");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 4);
}

/// The Mllama decoder (cross-attention layers, gated adds, masks) on the CPU backend (exact
/// mode): f32 tolerances, prefill chunks and decode steps.
#[test]
fn logits_match_transformers_on_the_cpu_backend() {
    let dev = cpu();
    for folder in ["tiny_mllama_a", "tiny_mllama_b"] {
        let hf = HfModel::open(fixture(folder)).unwrap();
        let dec = Decoder::load(&dev, &hf).unwrap();
        let cases: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(&format!("{folder}/cases.json"))).unwrap()).unwrap();
        for case in cases["cases"].as_array().unwrap() {
            let (shape, want) = read_npy(&fixture(&format!("{folder}/{}", case["logits"].as_str().unwrap())));
            for chunk in [64, 5] {
                let got = case_logits(&dev, &dec, folder, case, Precision::F32, chunk);
                let err = rel_l2(&got, &want);
                println!("cpu {folder} {} chunk {chunk}: rel L2 {err:.2e}", case["name"]);
                assert!(err <= 1e-4, "cpu {folder} {} chunk {chunk}: rel L2 {err}", case["name"]);
                for (g, w) in got.chunks(shape[1]).zip(want.chunks(shape[1])) {
                    assert_eq!(argmax(g), argmax(w), "cpu {folder} {} chunk {chunk}", case["name"]);
                }
            }
        }
    }
}

#[test]
fn cross_attention_mask_is_the_processors() {
    let mut checked = 0;
    for folder in ["tiny_mllama_a", "tiny_mllama_b"] {
        let cases: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(&format!("{folder}/cases.json"))).unwrap()).unwrap();
        let image_token = cases["image_token_index"].as_u64().unwrap() as u32;
        for case in cases["cases"].as_array().unwrap() {
            let Some(file) = case["cross_attention_mask"].as_str() else { continue };
            let ids: Vec<u32> = case["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
            let tiles: Vec<u32> = case["num_tiles"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
            let (shape, want) = read_npy(&fixture(&format!("{folder}/{file}")));
            assert_eq!(shape, [ids.len(), tiles.len(), 4]);
            let got = processor_mask(&ids, image_token, &tiles, 4);
            assert_eq!(got.iter().map(|&v| v as f32).collect::<Vec<_>>(), want, "{folder} {}", case["name"]);
            // Text before the image sees every tile and drops its MLP output.
            let first = ids.iter().position(|&t| t == image_token).unwrap();
            let (rows, row_mask) = kernel_mask(&got, tiles.len() * 4);
            assert!(first > 0 && rows[..first * 4].iter().all(|&v| v == 1) && row_mask[..first].iter().all(|&v| v == 0.0));
            assert!(row_mask[first..].iter().all(|&v| v == 1.0));
            checked += 1;
        }
    }
    assert_eq!(checked, 3);
}
