//! The SmolLM2 reference fixture (`tests/fixtures/smollm2/reference.json`, made by
//! `scripts/make_smollm2_refs.py`) and the path of the model it was made from.

use super::fixture;

#[derive(serde::Deserialize)]
pub struct Reference {
    pub model: String,
    pub prompts: Vec<Prompt>,
}

#[derive(serde::Deserialize)]
pub struct Prompt {
    pub messages: Vec<webvlm::chat::ChatMessage>,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    /// Top-1 minus top-2 logit at each greedy step.
    pub greedy_margins: Vec<f32>,
    pub teacher_forced: TeacherForced,
    /// f16 logits `[logits_positions.len()][vocab]`.
    pub logits_file: String,
    pub logits_positions: Vec<usize>,
}

/// One forward over `prompt_ids + greedy_ids`: per-position argmax and top-1/top-2 margin.
#[derive(serde::Deserialize)]
pub struct TeacherForced {
    pub argmax: Vec<u32>,
    pub margin: Vec<f32>,
}

pub fn reference() -> Reference {
    serde_json::from_str(&std::fs::read_to_string(fixture("smollm2/reference.json")).unwrap()).unwrap()
}

/// The GGUF, fetched into the cache's `models/` by `scripts/fetch_smollm2.sh` (where:
/// [`super::cache::cached`]).
pub fn model_path(r: &Reference) -> std::path::PathBuf {
    let path = super::cache::cached(&format!("models/{}", r.model));
    assert!(path.exists(), "{} is missing: run scripts/fetch_smollm2.sh", path.display());
    path
}
