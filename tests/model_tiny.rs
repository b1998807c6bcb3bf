//! Tiny random models made by transformers and converted by llama.cpp's converter
//! (`scripts/make_tiny_models.py`): `webvlm logits` must match transformers' logits at every
//! position, including positions past 16384 (YaRN frequencies and Ministral 3's query scaling).

mod common;
use common::*;

/// Relative L2 error allowed per position (f32 compute and `--kv-f32`; the reference is f32 too).
const TOL_REL_L2: f32 = 1e-3;

#[derive(serde::Deserialize)]
struct Cases {
    model: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    tokens: Vec<u32>,
    pos_offset: u32,
    logits: String,
}

fn check_fixture(dir: &str) {
    let root = fixture(dir);
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(root.join("cases.json")).unwrap()).unwrap();
    let model = root.join(&cases.model);
    for case in &cases.cases {
        let out = temp_path(&format!("{dir}-{}.npy", case.name));
        let ids: Vec<String> = case.tokens.iter().map(u32::to_string).collect();
        run_cli(&[
            "logits",
            "--model",
            model.to_str().unwrap(),
            "--tokens",
            &ids.join(","),
            "--pos-offset",
            &case.pos_offset.to_string(),
            "--ctx",
            "256",
            "--kv-f32",
            "--out",
            out.to_str().unwrap(),
        ]);
        let (shape, got) = read_npy(&out);
        let (want_shape, want) = read_npy(&root.join(&case.logits));
        assert_eq!(shape, want_shape, "{dir}/{}: shape", case.name);
        let vocab = shape[1];
        let mut worst = 0f32;
        for (t, (g, w)) in got.chunks(vocab).zip(want.chunks(vocab)).enumerate() {
            let err = rel_l2(g, w);
            worst = worst.max(err);
            assert!(err <= TOL_REL_L2, "{dir}/{} position {t}: rel L2 {err:.2e}", case.name);
            assert_eq!(argmax(g), argmax(w), "{dir}/{} position {t}: argmax", case.name);
        }
        eprintln!("{dir}/{}: {} positions from {}, worst rel L2 {worst:.2e}", case.name, shape[0], case.pos_offset);
    }
}

#[test]
fn tiny_mistral3_with_tekken_matches_transformers() {
    check_fixture("tiny_mistral3_tekken");
}

#[test]
fn tiny_mistral3_second_shape_matches_transformers() {
    check_fixture("tiny_mistral3_b");
}

#[test]
fn tiny_llama_with_sentencepiece_matches_transformers() {
    check_fixture("tiny_llama_spm");
}
