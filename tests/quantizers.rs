//! The load-time quantizers against llama.cpp: each gives exactly the bytes llama.cpp's own
//! `ggml_quantize_chunk` wrote for the same input (`tests/fixtures/quantizers/`, made by
//! `scripts/make_quantizer_refs.py`), and a BF16/F32 matrix loaded with `LoadQuant::Q4_K`
//! uploads those bytes and multiplies like the CPU reference on their dequantization.

use crate::common;
use common::*;
use webvlm::backend::{Device, Program};

use webvlm::gguf::quant::{quantize_q4_0, quantize_q4_1, quantize_q4_k, quantize_q8_0};
use webvlm::gguf::{dequantize_to_vec, GgmlType, GgufError, GgufWriter};
use webvlm::kernels::matvec;
use webvlm::kernels::quant::Weight;
use webvlm::source::{Eager, GgufBytes, GgufStream, LoadQuant, WeightLoader};

type Quantizer = fn(&[f32]) -> Result<Vec<u8>, GgufError>;

const QUANTIZERS: [(&str, GgmlType, Quantizer); 4] = [
    ("q8_0", GgmlType::Q8_0, quantize_q8_0),
    ("q4_0", GgmlType::Q4_0, quantize_q4_0),
    ("q4_1", GgmlType::Q4_1, quantize_q4_1),
    ("q4_k", GgmlType::Q4_K, quantize_q4_k),
];

/// The fixture's input and the case name of each 256-value super-block.
fn fixture_input() -> (Vec<f32>, Vec<String>) {
    let (_, x) = read_npy(&fixture("quantizers/input.npy"));
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("quantizers/index.json")).unwrap()).unwrap();
    let cases: Vec<String> = index["cases"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    assert_eq!(x.len(), cases.len() * 256);
    (x, cases)
}

#[test]
fn quantizers_match_llama_cpp_byte_for_byte() {
    let (x, cases) = fixture_input();
    for (name, ty, quantize) in QUANTIZERS {
        let want = std::fs::read(fixture(&format!("quantizers/{name}.bin"))).unwrap();
        let got = quantize(&x).unwrap();
        assert_eq!(got.len(), want.len(), "{name}: length");
        let (bs, ts) = (ty.block_size(), ty.type_size());
        let bad: Vec<usize> = (0..want.len() / ts).filter(|&b| got[b * ts..(b + 1) * ts] != want[b * ts..(b + 1) * ts]).collect();
        if let Some(&b) = bad.first() {
            panic!(
                "{name}: {} of {} blocks differ; first: block {b} (case {:?})\n  input {:?}\n  ours  {:02x?}\n  llama {:02x?}",
                bad.len(),
                want.len() / ts,
                cases[b * bs / 256],
                &x[b * bs..(b + 1) * bs],
                &got[b * ts..(b + 1) * ts],
                &want[b * ts..(b + 1) * ts],
            );
        }
    }
}

/// Q4_K falls back like llama-quantize for rows that are not whole super-blocks; 32-block
/// requests keep the file's type where the row is not whole blocks.
#[test]
fn load_quant_targets_and_names() {
    use GgmlType::*;
    assert_eq!(LoadQuant::Q4_K.target(BF16, 512), Q4_K);
    assert_eq!(LoadQuant::Q4_K.target(F16, 96), Q8_0);
    assert_eq!(LoadQuant::Q4_K.target(BF16, 90), BF16);
    assert_eq!(LoadQuant::Q4_0.target(F32, 90), F32);
    assert_eq!(LoadQuant::Keep.target(BF16, 512), BF16);
    assert_eq!("Q4_K".parse::<LoadQuant>(), Ok(LoadQuant::Q4_K));
    assert!("q5_k".parse::<LoadQuant>().unwrap_err().contains("q4_k"));
}

/// Rows x cols values, exactly representable in BF16.
fn bf16_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..rows * cols).map(|_| half::bf16::from_f32((rng.uniform() - 0.5) * 0.2).to_f32()).collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect()
}

/// The GGUF bytes a Q4_K weight holds on the GPU (Q4_K is uploaded unchanged).
fn read_back(gpu: &Device, w: &Weight) -> Vec<u8> {
    let mut out = Vec::new();
    for part in &w.parts {
        let n = part.rows as u64 * w.src_row_bytes();
        out.extend(gpu.read_blocking(&part.buffer, 0, n).unwrap());
    }
    out
}

fn run_matvec(gpu: &Device, w: &Weight, x: &[f32]) -> Vec<f32> {
    let bx = upload(gpu, x);
    let by = gpu.storage("y", w.rows as u64 * 4).unwrap();
    let mut prog = Program::new();
    matvec::record(&mut prog, gpu, w, &bx, &by, 1).unwrap();
    prog.run(gpu).unwrap();
    gpu.read_f32_blocking(&by, w.rows as usize).unwrap()
}

#[test]
fn q4_k_load_uploads_llama_cpp_bytes_and_multiplies() {
    let gpu = gpu();
    // "a" BF16 6 x 512, "b" F32 4 x 256, "c" BF16 2 x 96 (falls back to Q8_0).
    let (a, b, c) = (bf16_matrix(6, 512, 1), bf16_matrix(4, 256, 2), bf16_matrix(2, 96, 3));
    let mut w = GgufWriter::new();
    w.add_tensor("a", &[512, 6], GgmlType::BF16, bf16_bytes(&a)).unwrap();
    w.add_tensor("b", &[256, 4], GgmlType::F32, bytemuck::cast_slice(&b).to_vec()).unwrap();
    w.add_tensor("c", &[96, 2], GgmlType::BF16, bf16_bytes(&c)).unwrap();
    let file = w.write().unwrap();
    let src = GgufBytes::parse(file.clone()).unwrap();

    // Eager, and streamed in uneven chunks (the browser's path).
    let mut stream = GgufStream::new();
    assert!(stream.push_header(&file).unwrap());
    let mut loaded = Vec::new();
    for loader in [&mut Eager(&src) as &mut dyn WeightLoader, &mut stream] {
        let wa = loader.matrix(&gpu, "a", 6, 512, LoadQuant::Q4_K).unwrap();
        let wb = loader.matrix(&gpu, "b", 4, 256, LoadQuant::Q4_K).unwrap();
        let wc = loader.matrix(&gpu, "c", 2, 96, LoadQuant::Q4_K).unwrap();
        loaded.push([wa, wb, wc]);
    }
    stream.seal(&gpu).unwrap();
    for chunk in file.chunks(1000) {
        stream.push(&gpu, chunk).unwrap();
    }
    stream.finish().unwrap();

    for [wa, wb, wc] in &loaded {
        assert_eq!((wa.ty, wb.ty, wc.ty), (GgmlType::Q4_K, GgmlType::Q4_K, GgmlType::Q8_0));
        for (w, values, cols) in [(wa, &a, 512), (wb, &b, 256)] {
            let q = quantize_q4_k(values).unwrap();
            assert_eq!(read_back(&gpu, w), q, "{}: uploaded bytes", w.label);
            let deq = dequantize_to_vec(GgmlType::Q4_K, &q, values.len()).unwrap();
            let x: Vec<f32> = Rng::new(cols as u64).vec(cols);
            let got = run_matvec(&gpu, w, &x);
            let err = rel_l2(&got, &matvec::matvec_ref(&deq, w.rows as usize, cols, &x, 1));
            assert!(err < 1e-5, "{}: rel L2 {err:.2e}", w.label);
        }
        let deq = dequantize_to_vec(GgmlType::Q8_0, &quantize_q8_0(&c).unwrap(), c.len()).unwrap();
        let x = Rng::new(96).vec(96);
        let err = rel_l2(&run_matvec(&gpu, wc, &x), &matvec::matvec_ref(&deq, 2, 96, &x, 1));
        assert!(err < 1e-5, "c: rel L2 {err:.2e}");
    }
}
