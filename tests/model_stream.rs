//! Streaming a GGUF file into GPU buffers chunk by chunk (`source::GgufStream`, the browser's
//! loading path) gives exactly the weights of the in-memory loader: logits and image
//! features are bit-identical, for odd chunk sizes, load-time requantization, and bytes
//! pushed before the model was planned; a truncated stream is an error. Split GGUF parts
//! (`webvlm split`) load like the single file, mapped and streamed.

use crate::common;
use common::*;
use webvlm::backend::{Device, Program};

use webvlm::engine::{Engine, Prompt};
use webvlm::gguf::{GgmlType, GgufError, MappedGguf};
use webvlm::kernels::matvec;
use webvlm::kernels::quant::Weight;
use webvlm::model::ContextOptions;
use webvlm::source::{Eager, GgufParts, GgufStream, LoadError, LoadQuant};

fn opts() -> ContextOptions {
    ContextOptions { max_ctx: 256, max_chunk: 16, ..Default::default() }
}

/// Pushes `bytes` in chunks of the given sizes (cycled) until the header is parsed, then
/// builds the engine (and vision, from a second stream) on the streams and pushes the rest.
/// Returns the engine and the most file bytes the streams held at once.
fn stream_engine(model: &[u8], mmproj: Option<(&[u8], LoadQuant)>, sizes: &[usize]) -> (Engine, usize) {
    let gpu = gpu();
    let mut text = GgufStream::new();
    let mut chunks = Chunks::new(model, sizes);
    while text.header().is_none() {
        text.push(&gpu, chunks.next().expect("header before the end")).unwrap();
    }
    let mut e = Engine::builder(gpu).context(opts()).load(&mut text).unwrap();
    text.seal(e.device()).unwrap();
    let mut held = text.held_bytes();
    for c in chunks {
        text.push(e.device(), c).unwrap();
        held = held.max(text.held_bytes());
    }
    text.finish().unwrap();
    if let Some((bytes, quant)) = mmproj {
        let mut vision = GgufStream::new();
        let mut chunks = Chunks::new(bytes, sizes);
        while vision.header().is_none() {
            vision.push(e.device(), chunks.next().unwrap()).unwrap();
        }
        e.add_vision(&mut vision, quant).unwrap();
        vision.seal(e.device()).unwrap();
        for c in chunks {
            vision.push(e.device(), c).unwrap();
            held = held.max(vision.held_bytes());
        }
        vision.finish().unwrap();
    }
    (e, held)
}

struct Chunks<'a> {
    rest: &'a [u8],
    sizes: Vec<usize>,
    i: usize,
}

impl<'a> Chunks<'a> {
    fn new(bytes: &'a [u8], sizes: &[usize]) -> Chunks<'a> {
        Chunks { rest: bytes, sizes: sizes.to_vec(), i: 0 }
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let n = self.sizes[self.i % self.sizes.len()].min(self.rest.len());
        self.i += 1;
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }
}

fn eager_engine(dir: &str, mmproj: Option<LoadQuant>) -> Engine {
    let model = MappedGguf::open(fixture(dir).join("model.gguf")).unwrap();
    let proj = MappedGguf::open(fixture(dir).join("mmproj.gguf")).unwrap();
    let mut proj = Eager(&proj);
    let builder = Engine::builder(gpu()).context(opts());
    let builder = match mmproj {
        Some(quant) => builder.vision(&mut proj, quant),
        None => builder,
    };
    builder.load(&mut Eager(&model)).unwrap()
}

/// Logits of the fixture's first image case (its image encoded by `e`).
fn image_case_logits(e: &mut Engine, dir: &str) -> Vec<f32> {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(dir).join("cases.json")).unwrap()).unwrap();
    let case = &cases["image_cases"][0];
    let tokens: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
    let images = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| e.image_features(&std::fs::read(fixture(dir).join(f.as_str().unwrap())).unwrap(), None).unwrap())
        .collect();
    pollster::block_on(e.logits(&Prompt { tokens, images })).unwrap()
}

#[test]
fn streamed_text_and_vision_equal_the_in_memory_load() {
    // Tekken: F16 text (tied head, 131072-row embedding), F16 mmproj with 32-wide matrices
    // (one Q8_0 block per row: odd block counts exercise the split-scale alignment).
    for (dir, quant) in [
        ("tiny_mistral3_tekken", LoadQuant::Keep),
        ("tiny_mistral3_tekken", LoadQuant::Q8_0),
        ("tiny_mistral3_b", LoadQuant::Q4_1),
    ] {
        let model = std::fs::read(fixture(dir).join("model.gguf")).unwrap();
        let proj = std::fs::read(fixture(dir).join("mmproj.gguf")).unwrap();
        let (mut streamed, held) = stream_engine(&model, Some((&proj, quant)), &[4097, 65536, 1, 100_003]);
        let mut eager = eager_engine(dir, Some(quant));
        let got = image_case_logits(&mut streamed, dir);
        let want = image_case_logits(&mut eager, dir);
        assert!(got == want, "{dir} {quant:?}: streamed logits differ (rel L2 {:.2e})", rel_l2(&got, &want));
        eprintln!("{dir} {quant:?}: {} logits identical; at most {held} file bytes held", got.len());
        assert!(held <= 3 << 20, "{dir}: {held} bytes held");
    }
}

#[test]
fn bytes_pushed_before_planning_are_kept() {
    let dir = "tiny_mistral3_c";
    let model = std::fs::read(fixture(dir).join("model.gguf")).unwrap();
    // One chunk: header and every tensor arrive before the engine exists.
    let (mut streamed, _) = stream_engine(&model, None, &[model.len()]);
    let mut eager = eager_engine(dir, None);
    let ids = [1u32, 5, 9, 42, 7];
    let prompt = Prompt { tokens: ids.to_vec(), images: Vec::new() };
    let got = pollster::block_on(streamed.logits(&prompt)).unwrap();
    let want = pollster::block_on(eager.logits(&prompt)).unwrap();
    assert!(got == want, "streamed logits differ");
}

#[test]
fn truncated_stream_is_an_error() {
    let dir = "tiny_mistral3_c";
    let model = std::fs::read(fixture(dir).join("model.gguf")).unwrap();
    let gpu = gpu();
    let mut s = GgufStream::new();
    s.push(&gpu, &model[..model.len() - 100]).unwrap();
    let e = Engine::builder(gpu).context(opts()).load(&mut s).unwrap();
    s.seal(e.device()).unwrap();
    let err = s.finish();
    assert!(matches!(err, Err(LoadError::Stream(_))), "truncated data: {err:?}");
    let mut header_only = GgufStream::new();
    header_only.push(e.device(), &model[..100]).unwrap();
    assert!(matches!(header_only.finish(), Err(LoadError::Gguf(_))), "truncated header");
}

/// `Weight::write_rows` in even row groups over several parts equals one upload.
#[test]
fn row_writes_across_parts_equal_one_upload() {
    let gpu = gpu();
    for (ty, cols) in [(GgmlType::Q8_0, 96usize), (GgmlType::Q6_K, 256), (GgmlType::F16, 30), (GgmlType::F16, 7)] {
        let rows = 37usize;
        let bytes = webvlm::gguf::random_blocks(ty, rows * cols / ty.block_size(), 9);
        let whole = Weight::upload(&gpu, "w", ty, rows as u32, cols as u32, &bytes).unwrap();
        let parts = Weight::allocate(&gpu, "w", ty, rows as u32, cols as u32, whole.bytes_on_gpu() / 3).unwrap();
        assert!(parts.parts.len() >= 3, "{ty}: {} parts", parts.parts.len());
        let row = bytes.len() / rows;
        for (i, group) in bytes.chunks(row * 4).enumerate() {
            parts.write_rows(&gpu, (i * 4) as u32, group).unwrap();
        }
        let x = Rng::new(3).vec(cols);
        let got = run(&gpu, &parts, &x);
        assert_eq!(got, run(&gpu, &whole, &x), "{ty} {cols}: row writes differ from one upload");
        if ty == GgmlType::Q8_0 {
            let odd = parts.write_rows(&gpu, 1, &bytes[..row * 2]);
            assert!(odd.is_err(), "an odd first row breaks the scale alignment of 3-block rows");
        }
    }
}

fn run(gpu: &Device, w: &Weight, x: &[f32]) -> Vec<f32> {
    let (bx, by) = (upload(gpu, x), gpu.storage("y", w.rows as u64 * 4).unwrap());
    let mut prog = Program::new();
    matvec::record(&mut prog, gpu, w, &bx, &by, 1).unwrap();
    prog.run(gpu).unwrap();
    gpu.read_f32_blocking(&by, w.rows as usize).unwrap()
}

/// A published SHA-256 is checked over every byte pushed: the right digest loads, a wrong
/// one (or one corrupted byte) is a `Checksum` error at `finish`.
#[test]
fn published_sha256_is_verified() {
    use sha2::{Digest, Sha256};
    let model = std::fs::read(fixture("tiny_mistral3_c").join("model.gguf")).unwrap();
    let digest: [u8; 32] = Sha256::digest(&model).into();
    let mut corrupt = model.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    for (bytes, ok) in [(&model, true), (&corrupt, false)] {
        let gpu = gpu();
        let mut s = GgufStream::new();
        s.expect_sha256(digest).unwrap();
        s.push(&gpu, bytes).unwrap();
        let e = Engine::builder(gpu).context(opts()).load(&mut s).unwrap();
        s.seal(e.device()).unwrap();
        let r = s.finish();
        assert_eq!(r.is_ok(), ok, "{r:?}");
        if !ok {
            assert!(matches!(r, Err(LoadError::Checksum { .. })), "{r:?}");
        }
    }
}

/// Text logits of a few ids.
fn text_logits(e: &mut Engine) -> Vec<f32> {
    let prompt = Prompt { tokens: vec![1, 5, 9, 42, 7], images: Vec::new() };
    pollster::block_on(e.logits(&prompt)).unwrap()
}

/// A model cut into three parts by `webvlm split` loads to the same logits as the single
/// file: memory-mapped natively (the first part's name finds the rest), and streamed the
/// browser's way (every part's header first, then every part from byte 0).
#[test]
fn split_parts_load_like_one_file() {
    let dir = "tiny_mistral3_c";
    let single = fixture(dir).join("model.gguf");
    let prefix = temp_path("split_c");
    run_cli(&["split", "--model", single.to_str().unwrap(), "--parts", "3", "--out", prefix.to_str().unwrap()]);
    let names: Vec<_> = (1..=3).map(|i| webvlm::gguf::split_name(prefix.to_str().unwrap(), i, 3)).collect();
    let want = text_logits(&mut eager_engine(dir, None));

    let mapped = MappedGguf::open(&names[0]).unwrap();
    assert_eq!(mapped.paths().len(), 3);
    let got = text_logits(&mut Engine::builder(gpu()).context(opts()).load(&mut Eager(&mapped)).unwrap());
    assert!(got == want, "mapped parts: logits differ (rel L2 {:.2e})", rel_l2(&got, &want));

    let parts: Vec<Vec<u8>> = names.iter().map(|n| std::fs::read(n).unwrap()).collect();
    let gpu = gpu();
    let mut streams = GgufParts::new(3).unwrap();
    for (i, p) in parts.iter().enumerate() {
        let mut chunks = Chunks::new(p, &[777, 4096]);
        while !streams.push_header(i, chunks.next().expect("header before the end")).unwrap() {}
    }
    assert!(streams.headers_complete().unwrap());
    let mut e = Engine::builder(gpu).context(opts()).load(&mut streams).unwrap();
    streams.seal(e.device()).unwrap();
    for (i, p) in parts.iter().enumerate() {
        Chunks::new(p, &[65536, 3]).try_for_each(|c| streams.push(e.device(), i, c)).unwrap();
    }
    streams.finish().unwrap();
    let got = text_logits(&mut e);
    assert!(got == want, "streamed parts: logits differ (rel L2 {:.2e})", rel_l2(&got, &want));
}

/// Parts out of order, a missing part and a truncated part are typed errors.
#[test]
fn bad_split_parts_are_errors() {
    let model = std::fs::read(fixture("tiny_mistral3_c").join("model.gguf")).unwrap();
    let header = webvlm::gguf::parse_header(&model).unwrap();
    let parts = webvlm::gguf::split_model(&header, &model, 3).unwrap();
    let headers_of = |order: &[usize]| {
        let mut s = GgufParts::new(order.len()).unwrap();
        for (i, &k) in order.iter().enumerate() {
            assert!(s.push_header(i, &parts[k]).unwrap());
        }
        s
    };
    let swapped = headers_of(&[0, 2, 1]).headers_complete();
    assert!(matches!(swapped, Err(LoadError::Gguf(GgufError::SplitMismatch(_)))), "{swapped:?}");
    let missing = headers_of(&[0, 1]).headers_complete();
    assert!(matches!(missing, Err(LoadError::Gguf(GgufError::MissingSplit { .. }))), "{missing:?}");
    assert!(matches!(GgufParts::new(3).unwrap().push_header(3, &parts[0]), Err(LoadError::Stream(_))));

    let gpu = gpu();
    let mut s = headers_of(&[0, 1, 2]);
    assert!(s.headers_complete().unwrap());
    let e = Engine::builder(gpu).context(opts()).load(&mut s).unwrap();
    s.seal(e.device()).unwrap();
    for (i, p) in parts.iter().enumerate() {
        let end = if i == 1 { p.len() - 64 } else { p.len() };
        s.push(e.device(), i, &p[..end]).unwrap();
    }
    let err = s.finish().unwrap_err();
    assert!(matches!(&err, LoadError::InPart { no: 2, count: 3, .. }), "{err:?}");
    assert!(err.to_string().starts_with("part 2 of 3: "), "{err}");
}
