//! Mllama (Llama 3.2 Vision) text side against transformers' fixtures
//! (`tests/fixtures/tiny_mllama_a`, `tiny_mllama_b`, from `scripts/make_mllama_models.py`):
//! the cross-attention mask webvlm builds from the token ids equals the processor's.

mod common;
use common::*;
use webvlm::model::families::mllama::{kernel_mask, processor_mask};

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
