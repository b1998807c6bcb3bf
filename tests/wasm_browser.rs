//! The wasm32 build of the crate on a browser's WebGPU (`wasm-bindgen-test` in headless
//! Chromium, SwiftShader in CI: `./build.sh wasm-test`). The same checks as the native GPU
//! tests, on the code path pages run: quantized matvec (whole and split across bindings),
//! RMSNorm, SiLU-gate and the greedy sampler against CPU references; a GGUF written by
//! `GgufWriter` parsed in any chunking; a synthetic model streamed through `GgufStream`
//! equal to the in-memory load; a transformers-made tiny model's logits; over-limit buffers
//! and lost devices as typed errors with their JS names.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen::JsValue;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use webvlm::backend::{Buffer, Device, Program};

use webvlm::api::ApiError;
use webvlm::backend::gpu::{Gpu, GpuError, GpuOptions};
use webvlm::engine::EngineError;
use webvlm::error::{Classify, ErrorClass};
use webvlm::gguf::{
    dequantize_to_vec, parse_header, random_blocks, GgmlType, GgufHeaderParser, GgufWriter, MetaValue, SplitMix64,
};
use webvlm::kernels::quant::{Weight, WeightError};
use webvlm::kernels::sample::{Sampler, SamplerState};
use webvlm::kernels::{elementwise, matvec, norm};
use webvlm::model::synthetic::{synthetic_ministral3_gguf, SyntheticShape};
use webvlm::model::{Context, ContextOptions, Decoder, ModelError, Precision};
use webvlm::source::{GgufBytes, GgufStream, LoadError};
use webvlm::web::error::{to_js, WebError};

wasm_bindgen_test_configure!(run_in_browser);

/// Kernels against f64 CPU references: f32 summation order only (as the native tests).
const TOL_KERNEL: f32 = 1e-5;
/// Tiny model logits against transformers, per position (as `tests/model_tiny.rs`).
const TOL_LOGITS: f32 = 1e-3;

/// The tiny Mistral 3 fixture (transformers + llama.cpp's converter) and its reference.
const TINY_MODEL: &[u8] = include_bytes!("fixtures/tiny_mistral3_c/model.gguf");
const TINY_CASES: &str = include_str!("fixtures/tiny_mistral3_c/cases.json");
const TINY_POS0: &[u8] = include_bytes!("fixtures/tiny_mistral3_c/pos0.npy");

async fn gpu() -> Device {
    Device::Gpu(Gpu::new(GpuOptions::default()).await.expect("the browser must give a WebGPU adapter"))
}

fn upload(gpu: &Device, data: &[f32]) -> Buffer {
    gpu.storage_with("test", bytemuck::cast_slice(data)).expect("buffer")
}

fn random_vec(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

/// ||a - b|| / ||b||.
fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt() as f32
}

fn argmax(x: &[f32]) -> usize {
    x.iter().enumerate().fold(0, |best, (i, v)| if *v > x[best] { i } else { best })
}

/// A version-1 little-endian f32 `.npy` array: shape and values.
fn npy_f32(bytes: &[u8]) -> (Vec<usize>, Vec<f32>) {
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).expect("ascii header");
    assert!(header.contains("'<f4'"), "not f32: {header}");
    let dims = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).expect("shape");
    let shape = dims.split(',').filter_map(|d| d.trim().parse().ok()).collect();
    (shape, bytemuck::pod_collect_to_vec(&bytes[10 + len..]))
}

async fn read_f32(gpu: &Device, buf: &Buffer, n: usize) -> Vec<f32> {
    gpu.read_f32(buf, 0, n).await.expect("readback")
}

async fn run_matvec(gpu: &Device, w: &Weight, x: &[f32], n_tok: usize) -> Vec<f32> {
    let bx = upload(gpu, x);
    let by = gpu.storage("y", (n_tok * w.rows as usize * 4) as u64).expect("y");
    let mut prog = Program::new();
    matvec::record(&mut prog, gpu, w, &bx, &by, n_tok as u32).expect("record");
    prog.run(gpu).expect("run");
    read_f32(gpu, &by, n_tok * w.rows as usize).await
}

#[wasm_bindgen_test]
async fn webgpu_device_opens_with_the_adapter_limits() {
    let gpu = gpu().await;
    let c = &gpu.caps();
    assert_eq!(c.backend, "BrowserWebGpu", "{c:?}");
    assert!(!c.subgroups, "wgpu cannot request subgroups on the web");
    // WebGPU's guaranteed minimums: every kernel is written within them.
    assert!(c.max_storage_binding >= 128 << 20 && c.max_buffer >= 256 << 20, "{c:?}");
    assert!(c.max_workgroup_invocations >= 256 && c.max_storage_buffers_per_stage >= 8, "{c:?}");
    let bytes: Vec<u8> = (0..1001u32).map(|i| (i * 7 % 251) as u8).collect();
    let buf = gpu.storage_with("bytes", &bytes).unwrap();
    assert_eq!(gpu.read(&buf, 0, bytes.len() as u64).await.unwrap(), bytes, "write then read back");
}

#[wasm_bindgen_test]
async fn quantized_matvec_matches_cpu_whole_and_split() {
    let gpu = gpu().await;
    let mut rng = SplitMix64::new(1);
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];
    for (i, ty) in types.into_iter().enumerate() {
        let cols = match ty.block_size() {
            256 => 512,
            32 => 96,
            _ => 257,
        };
        let rows = 37;
        let bytes = random_blocks(ty, rows * cols / ty.block_size(), 10 + i as u64);
        let deq = dequantize_to_vec(ty, &bytes, rows * cols).unwrap();
        let whole = Weight::upload(&gpu, "w", ty, rows as u32, cols as u32, &bytes).unwrap();
        let split =
            Weight::upload_with_part_limit(&gpu, "w", ty, rows as u32, cols as u32, &bytes, whole.bytes_on_gpu() / 3).unwrap();
        assert!(split.parts.len() >= 3, "{ty}: {} parts", split.parts.len());
        for n_tok in [1, 3] {
            let x = random_vec(&mut rng, n_tok * cols);
            let want = matvec::matvec_ref(&deq, rows, cols, &x, n_tok);
            let got = run_matvec(&gpu, &whole, &x, n_tok).await;
            let err = rel_l2(&got, &want);
            assert!(err < TOL_KERNEL, "{ty} n_tok {n_tok}: rel L2 {err:.2e}");
            assert_eq!(run_matvec(&gpu, &split, &x, n_tok).await, got, "{ty} n_tok {n_tok}: split parts differ");
        }
    }
}

#[wasm_bindgen_test]
async fn rms_norm_and_silu_gate_match_cpu() {
    let gpu = gpu().await;
    let mut rng = SplitMix64::new(2);
    for (rows, dim) in [(1usize, 3072usize), (3, 257), (2, 4099)] {
        let (x, w) = (random_vec(&mut rng, rows * dim), random_vec(&mut rng, dim));
        let y = gpu.storage("y", (rows * dim * 4) as u64).unwrap();
        let mut prog = Program::new();
        norm::rms_norm(&mut prog, &gpu, &upload(&gpu, &x), &upload(&gpu, &w), &y, rows as u32, dim as u32, 1e-5).unwrap();
        prog.run(&gpu).unwrap();
        let err = rel_l2(&read_f32(&gpu, &y, rows * dim).await, &norm::rms_norm_ref(&x, &w, dim, 1e-5));
        assert!(err < TOL_KERNEL, "rms_norm {rows}x{dim}: rel L2 {err:.2e}");
    }
    for n in [1usize, 257, 70_001] {
        let (a, b) = (random_vec(&mut rng, n), random_vec(&mut rng, n));
        let bb = upload(&gpu, &b);
        let mut prog = Program::new();
        elementwise::silu_mul_inplace(&mut prog, &gpu, &upload(&gpu, &a), &bb, n as u32).unwrap();
        prog.run(&gpu).unwrap();
        let err = rel_l2(&read_f32(&gpu, &bb, n).await, &elementwise::silu_mul_ref(&b, &a));
        assert!(err < TOL_KERNEL, "silu_mul n={n}: rel L2 {err:.2e}");
    }
}

#[wasm_bindgen_test]
async fn greedy_sampler_picks_the_cpu_argmax() {
    let gpu = gpu().await;
    let mut rng = SplitMix64::new(3);
    for vocab in [5usize, 4097, 131_072] {
        let logits = random_vec(&mut rng, vocab * 2);
        let sampler = Sampler::new(&gpu, vocab as u32).unwrap();
        let out = gpu.storage("out", 16).unwrap();
        let mut prog = Program::new();
        sampler.record(&mut prog, &gpu, &upload(&gpu, &logits), vocab as u32, &out, 2).unwrap();
        sampler.set(&gpu, &SamplerState::greedy()).unwrap();
        prog.run(&gpu).unwrap();
        let id = u32::from_le_bytes(gpu.read(&out, 8, 4).await.unwrap().try_into().unwrap());
        assert_eq!(id as usize, argmax(&logits[vocab..]), "vocab {vocab}");
    }
}

#[wasm_bindgen_test]
fn gguf_written_by_the_writer_parses_in_any_chunking() {
    let q8 = random_blocks(GgmlType::Q8_0, 6, 4);
    let norm: Vec<u8> = (0..64).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", MetaValue::String("llama".into()));
    w.add_kv("llama.block_count", MetaValue::U32(3));
    w.add_kv("llama.rope.freq_base", MetaValue::F32(1e4));
    w.add_tensor("blk.0.attn_q.weight", &[64, 3], GgmlType::Q8_0, q8.clone()).unwrap();
    w.add_tensor("output_norm.weight", &[64], GgmlType::F32, norm.clone()).unwrap();
    let file = w.write().unwrap();
    let whole = parse_header(&file).unwrap();
    assert_eq!(whole.metadata.get_u32("llama.block_count").unwrap(), 3);
    assert_eq!(whole.metadata.get_f32("llama.rope.freq_base").unwrap(), 1e4);
    let t = whole.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((t.dims.as_slice(), t.ty), (&[64u64, 3][..], GgmlType::Q8_0));
    let range = whole.absolute_range(t).unwrap();
    assert_eq!(&file[range.start as usize..range.end as usize], &q8[..], "tensor bytes at their offset");
    for chunk in [1, 7, 4096] {
        let mut parser = GgufHeaderParser::new();
        let mut header = None;
        for c in file.chunks(chunk) {
            if let Some(h) = parser.feed(c).unwrap() {
                header = Some(h);
                break;
            }
        }
        assert_eq!(header.as_ref(), Some(&whole), "chunks of {chunk} bytes");
    }
}

/// Streams `file` into a decoder in chunks of `sizes` (cycled), as the page does.
fn stream_decoder(gpu: &Device, file: &[u8], sizes: &[usize]) -> Decoder {
    let mut stream = GgufStream::new();
    let mut chunks = Vec::new();
    let (mut at, mut i) = (0, 0);
    while at < file.len() {
        let end = (at + sizes[i % sizes.len()]).min(file.len());
        chunks.push(&file[at..end]);
        (at, i) = (end, i + 1);
    }
    let mut chunks = chunks.into_iter();
    while stream.header().is_none() {
        stream.push(gpu, chunks.next().expect("header before the end")).unwrap();
    }
    let decoder = Decoder::load_from(gpu, &mut stream).unwrap();
    stream.seal(gpu).unwrap();
    for c in chunks {
        stream.push(gpu, c).unwrap();
    }
    stream.finish().unwrap();
    decoder
}

async fn logits(gpu: &Device, dec: &Decoder, tokens: &[u32]) -> Vec<f32> {
    let opts = ContextOptions { max_ctx: 256, max_chunk: 16, precision: Precision::F32 };
    let mut ctx = Context::new(gpu, dec, opts).unwrap();
    ctx.logits(gpu, dec, tokens).await.unwrap()
}

#[wasm_bindgen_test]
async fn synthetic_model_streamed_equals_the_in_memory_load() {
    let gpu = gpu().await;
    let file = synthetic_ministral3_gguf(&SyntheticShape::tiny(), 5).unwrap();
    let streamed = stream_decoder(&gpu, &file, &[4097, 65_536, 1, 100_003]);
    let eager = Decoder::load(&gpu, &GgufBytes::parse(file).unwrap()).unwrap();
    let tokens = [1u32, 17, 300, 999, 4, 512, 23];
    let got = logits(&gpu, &streamed, &tokens).await;
    assert_eq!(got.len(), tokens.len() * 1024);
    assert!(got.iter().all(|v| v.is_finite()), "finite logits");
    assert!(got == logits(&gpu, &eager, &tokens).await, "streamed logits differ from the in-memory load");
}

#[derive(serde::Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    tokens: Vec<u32>,
    pos_offset: u32,
    argmax: Vec<usize>,
}

#[wasm_bindgen_test]
async fn tiny_mistral3_logits_match_transformers() {
    let gpu = gpu().await;
    let cases: Cases = serde_json::from_str(TINY_CASES).unwrap();
    let case = &cases.cases[0];
    assert_eq!(case.pos_offset, 0, "the pos0 case");
    let dec = stream_decoder(&gpu, TINY_MODEL, &[65_537, 3]);
    let got = logits(&gpu, &dec, &case.tokens).await;
    let (shape, want) = npy_f32(TINY_POS0);
    assert_eq!(shape, [case.tokens.len(), dec.cfg.vocab as usize]);
    for (t, (g, w)) in got.chunks(shape[1]).zip(want.chunks(shape[1])).enumerate() {
        let err = rel_l2(g, w);
        assert!(err <= TOL_LOGITS, "position {t}: rel L2 {err:.2e}");
        assert_eq!(argmax(g), case.argmax[t], "position {t}: argmax");
    }
}

fn js_name(e: impl Classify + std::fmt::Display + 'static) -> String {
    let v: JsValue = to_js(&e).into();
    js_sys::Reflect::get(&v, &"name".into()).unwrap().as_string().unwrap()
}

#[wasm_bindgen_test]
async fn over_limit_buffers_are_adapter_too_small_errors() {
    let gpu = gpu().await;
    let limit = gpu.caps().max_storage_binding.min(gpu.caps().max_buffer);
    let err = gpu.storage("huge", limit + 4).unwrap_err();
    assert!(matches!(err, GpuError::BufferTooLarge { .. }), "{err:?}");
    assert_eq!(js_name(err), "AdapterTooSmallError");
    // One row of a weight larger than a binding, as the model loader reports it.
    let row = Weight::allocate(&gpu, "w", GgmlType::Q8_0, 4, 1024, 512).err().expect("a row over the part limit");
    assert!(matches!(row, WeightError::RowTooLarge { .. }), "{row:?}");
    let wrapped = EngineError::Model(ModelError::Load(LoadError::Weight(row)));
    assert_eq!(wrapped.class(), ErrorClass::AdapterTooSmall);
    assert_eq!(js_name(wrapped), "AdapterTooSmallError");
    // Other kinds keep their own names.
    assert_eq!(js_name(parse_header(b"GGUX").unwrap_err()), "ModelNotSupportedError");
    assert_eq!(js_name(serde_json::from_str::<u32>("{").unwrap_err()), "BadRequestError");
    assert_eq!(js_name(ApiError::invalid("top_k", "invalid_type", "top_k must be a u32")), "BadRequestError");
    assert_eq!(js_name(WebError::Busy), "WebvlmError");
}

#[wasm_bindgen_test]
async fn a_lost_device_fails_reads_with_device_lost() {
    let gpu = gpu().await;
    let buf = gpu.storage_with("x", &[1, 2, 3, 4]).unwrap();
    // Destroyed while the read's map is pending: the browser rejects the map before it
    // resolves `device.lost`.
    let device = gpu.gpu().unwrap().device.clone();
    wasm_bindgen_futures::spawn_local(async move { device.destroy() });
    let err = gpu.read(&buf, 0, 4).await.unwrap_err();
    assert!(err.is_device_lost(), "pending read: {err:?}");
    let message = err.to_string();
    assert_eq!(js_name(err), "DeviceLostError");
    // Every later operation fails the same way.
    let err = gpu.read(&buf, 0, 4).await.unwrap_err();
    assert!(err.is_device_lost(), "later read: {err:?}");
    // Also once flattened into an OpenAI error object (the chat-completions path): by its
    // type, not its text (another error quoting the text keeps its own class).
    assert_eq!(js_name(ApiError::from(EngineError::Gpu(err))), "DeviceLostError");
    assert_eq!(js_name(ApiError::from(EngineError::Gpu(GpuError::Device(message)))), "WebvlmError");
    assert!(gpu.check_errors().is_err_and(|e| e.is_device_lost()));
}
