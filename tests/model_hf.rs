//! A Hugging Face folder as a model (`tests/fixtures/tiny_llama_hf/`, made by
//! `scripts/make_hf_models.py`: a tiny random Llama 3 with Llama 3 RoPE scaling, BF16, three
//! safetensors shards): logits equal transformers' at every position; the folder and the
//! GGUF llama.cpp converts from it hold the same tensors byte for byte after the q/k
//! permutation and give equal logits; loaded as Q8_0 it holds the bytes of the converter's
//! `--outtype q8_0` GGUF and gives its logits; the tokenizer and chat template equal transformers';
//! generation defaults are read; malformed folders give typed errors.

use crate::common;

use std::path::{Path, PathBuf};

use webvlm::engine::Engine;
use webvlm::gguf::quant::quantize_q8_0;
use webvlm::gguf::GgmlType;
use webvlm::gguf::{dequantize_to_vec, MappedGguf};
use webvlm::model::{Context, ContextOptions, Decoder, Precision};
use webvlm::source::hf::{GenerationDefaults, HfError, HfModel, HfStream, HfTextFiles};
use webvlm::source::{Eager, LoadQuant, Requantize, TensorSource};
use webvlm::tokenizer::Tokenizer;

const VOCAB: usize = 384;

fn dir() -> PathBuf {
    common::fixture("tiny_llama_hf")
}

fn cases() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

/// Logits of every position of `tokens`, in one prefill.
fn logits(gpu: &webvlm::backend::Device, src: &dyn TensorSource, tokens: &[u32], precision: Precision) -> Vec<f32> {
    logits_quant(gpu, src, tokens, precision, LoadQuant::Keep)
}

/// [`logits`] with the float matrices requantized at load.
fn logits_quant(
    gpu: &webvlm::backend::Device,
    src: &dyn TensorSource,
    tokens: &[u32],
    precision: Precision,
    quant: LoadQuant,
) -> Vec<f32> {
    let dec = Decoder::load_from(gpu, &mut Requantize { inner: &mut Eager(src), quant }).unwrap();
    let mut ctx = Context::new(gpu, &dec, ContextOptions { max_ctx: 128, max_chunk: 64, precision }).unwrap();
    pollster::block_on(ctx.logits(gpu, &dec, tokens)).unwrap()
}

/// Worst relative L2 over positions, and whether every position's argmax agrees.
fn compare(got: &[f32], want: &[f32]) -> (f32, bool) {
    assert_eq!(got.len(), want.len());
    let mut worst = 0f32;
    let mut same = true;
    for (g, w) in got.chunks(VOCAB).zip(want.chunks(VOCAB)) {
        worst = worst.max(common::rel_l2(g, w));
        same &= common::argmax(g) == common::argmax(w);
    }
    (worst, same)
}

#[test]
fn logits_match_transformers_and_the_converted_gguf() {
    let gpu = common::gpu();
    let hf = HfModel::open(dir()).unwrap();
    let gguf = MappedGguf::open(dir().join("model.gguf")).unwrap();
    for case in cases()["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let tokens = ids(&case["tokens"]);
        let (shape, want) = common::read_npy(&dir().join(case["file"].as_str().unwrap()));
        assert_eq!(shape, [tokens.len(), VOCAB]);
        let got = logits(&gpu, &hf, &tokens, Precision::F32);
        let (err, same) = compare(&got, &want);
        eprintln!("{name}: {} positions, f32: rel L2 {err:.2e} vs transformers, argmax equal {same}", tokens.len());
        assert!(err <= 1e-4 && same, "{name}: rel L2 {err:.2e}, argmax equal {same}");
        let from_gguf = logits(&gpu, &gguf, &tokens, Precision::F32);
        let diff = common::max_abs(&got, &from_gguf);
        eprintln!("{name}: max |folder - converted GGUF| = {diff:e}");
        assert_eq!(diff, 0.0, "{name}: the folder and the GGUF differ");
        let (err, same) = compare(&logits(&gpu, &hf, &tokens, Precision::default()), &want);
        eprintln!("{name}: default precision (f16 KV cache): rel L2 {err:.2e}, argmax equal {same}");
        assert!(err <= 1e-3 && same, "{name}: default precision rel L2 {err:.2e}");
    }
}

#[test]
fn tensors_equal_the_converted_gguf() {
    let hf = HfModel::open(dir()).unwrap();
    let gguf = MappedGguf::open(dir().join("model.gguf")).unwrap();
    let mut names: Vec<&str> = hf.tensors().map(|t| t.info.name.as_str()).collect();
    let mut want: Vec<&str> = gguf.tensors().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    want.sort_unstable();
    assert_eq!(names, want, "tensor names");
    for name in names {
        let (a, b) = (hf.tensor_info(name).unwrap(), gguf.tensor_info(name).unwrap());
        assert_eq!(a.dims, b.dims, "{name}: dims");
        let (da, db) = (hf.tensor_data(name).unwrap(), gguf.tensor_data(name).unwrap());
        if a.ty == b.ty {
            assert!(da == db, "{name}: bytes differ");
        } else {
            // The converter stores 1-D tensors (norms) as F32; the folder keeps BF16.
            let n = a.n_elements() as usize;
            assert_eq!(dequantize_to_vec(a.ty, &da, n).unwrap(), dequantize_to_vec(b.ty, &db, n).unwrap(), "{name}: values");
            assert_eq!(a.dims.len(), 1, "{name}: only vectors change type");
        }
    }
}

/// Requantized to Q8_0 at load, the folder's BF16 matrices become the bytes llama.cpp's
/// converter writes with `--outtype q8_0` (gguf-py's quantizer), and the logits equal that
/// file's.
#[test]
fn q8_0_load_equals_the_converters_q8_0() {
    let hf = HfModel::open(dir()).unwrap();
    let q8 = MappedGguf::open(dir().join("model_q8_0.gguf")).unwrap();
    let mut matrices = 0;
    for t in q8.tensors().filter(|t| t.ty == GgmlType::Q8_0) {
        let info = hf.tensor_info(&t.name).unwrap();
        let values = dequantize_to_vec(info.ty, &hf.tensor_data(&t.name).unwrap(), info.n_elements() as usize).unwrap();
        assert!(quantize_q8_0(&values).unwrap() == q8.tensor_data(&t.name).unwrap().as_ref(), "{}: Q8_0 bytes", t.name);
        matrices += 1;
    }
    assert_eq!(matrices, 1 + 2 * 7, "token_embd and 7 matrices per block");
    let gpu = common::gpu();
    let tokens = ids(&cases()["cases"][2]["tokens"]);
    let got = logits_quant(&gpu, &hf, &tokens, Precision::F32, LoadQuant::Q8_0);
    let want = logits(&gpu, &q8, &tokens, Precision::F32);
    let diff = common::max_abs(&got, &want);
    eprintln!("chat, Q8_0: max |folder - converted Q8_0 GGUF| = {diff:e}");
    assert_eq!(diff, 0.0);
    let (_, reference) = common::read_npy(&dir().join("chat.npy"));
    let (err, same) = compare(&got, &reference);
    eprintln!("chat, Q8_0: rel L2 {err:.2e} vs transformers' BF16 logits, argmax equal {same}");
    assert!(err > 0.0 && err < 0.1, "Q8_0 rel L2 {err:.2e}");
}

#[test]
fn metadata_has_the_converters_model_keys() {
    let hf = HfModel::open(dir()).unwrap();
    let gguf = MappedGguf::open(dir().join("model.gguf")).unwrap();
    let md = hf.metadata();
    for (key, value) in md.iter() {
        assert_eq!(Some(value), gguf.metadata().get(key), "{key}");
    }
    for (key, _) in gguf.metadata().iter().filter(|(k, _)| k.starts_with("llama.")) {
        assert!(md.contains(key), "{key} missing from the folder's metadata");
    }
}

#[test]
fn tokenizer_and_chat_template_match_transformers() {
    let hf = HfModel::open(dir()).unwrap();
    let text = hf.text_files();
    let tok = Tokenizer::from_hf(&text.tokenizer_json, text.tokenizer_config.as_deref()).unwrap();
    let refs = cases();
    for s in refs["strings"].as_array().unwrap() {
        let input = s["text"].as_str().unwrap();
        assert_eq!(tok.encode(input, true).unwrap(), ids(&s["ids"]), "{input:?}");
        assert_eq!(tok.encode(input, false).unwrap(), ids(&s["ids_no_special"]), "{input:?}");
        assert_eq!(tok.decode(&ids(&s["ids"]), true).unwrap(), s["decoded"].as_str().unwrap());
    }
    assert_eq!(tok.bos_id(), Some(refs["bos_id"].as_u64().unwrap() as u32));
    assert!(tok.is_special(refs["bos_id"].as_u64().unwrap() as u32));

    // The engine: the template renders as transformers' apply_chat_template, and generation's
    // end ids include generation_config.json's.
    let engine = Engine::builder(common::gpu())
        .context(ContextOptions { max_ctx: 128, ..Default::default() })
        .hf_text(text)
        .load(&mut Eager(&hf))
        .unwrap();
    let chat = &refs["chat"];
    let messages: Vec<webvlm::chat::ChatMessage> = serde_json::from_value(chat["messages"].clone()).unwrap();
    let rendered = engine.template().render(&messages, true, None).unwrap();
    assert_eq!(rendered, chat["rendered"].as_str().unwrap());
    assert_eq!(engine.tokenizer().encode(&rendered, false).unwrap(), ids(&chat["ids"]));
    for id in ids(&refs["eos_ids"]) {
        assert!(engine.tokenizer().eos_ids().contains(&id), "eos id {id}");
    }
}

#[test]
fn generation_defaults_are_read() {
    let hf = HfModel::open(dir()).unwrap();
    let want = GenerationDefaults {
        do_sample: Some(true),
        temperature: Some(0.6),
        top_p: Some(0.9),
        top_k: Some(40),
        min_p: None,
        repetition_penalty: Some(1.1),
        max_new_tokens: Some(48),
        eos_token_ids: vec![380, 383],
    };
    assert_eq!(hf.generation_defaults(), &want);
}

/// A copy of the fixture folder in a fresh temporary directory, changed by `edit`.
fn broken(name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let out = common::temp_path(&format!("hf-{name}"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if !path.extension().is_some_and(|e| e == "npy" || e == "gguf") {
            std::fs::copy(&path, out.join(path.file_name().unwrap())).unwrap();
        }
    }
    edit(&out);
    out
}

fn edit_config(folder: &Path, from: &str, to: &str) {
    let path = folder.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

#[test]
fn malformed_folders_give_typed_errors() {
    let open = |folder: PathBuf| HfModel::open(folder).err().expect("the folder must be refused");
    let e = open(broken("no-config", |d| std::fs::remove_file(d.join("config.json")).unwrap()));
    assert!(matches!(&e, HfError::MissingFile(f) if f == "config.json"), "{e}");
    let e = open(broken("no-tokenizer", |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap()));
    assert!(matches!(&e, HfError::MissingFile(f) if f == "tokenizer.json"), "{e}");
    let e = open(broken("arch", |d| edit_config(d, "LlamaForCausalLM", "MambaForCausalLM")));
    assert!(matches!(&e, HfError::UnsupportedArch { arch, .. } if arch == "MambaForCausalLM"), "{e}");
    let e = open(broken("key", |d| edit_config(d, "\"num_hidden_layers\"", "\"layers\"")));
    assert!(matches!(&e, HfError::MissingKey(k) if k == "num_hidden_layers"), "{e}");
    let e = open(broken("json", |d| edit_config(d, "\"architectures\"", "architectures")));
    assert!(matches!(&e, HfError::Json { file, .. } if file == "config.json"), "{e}");
    let e = open(broken("heads", |d| edit_config(d, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3")));
    assert!(matches!(&e, HfError::TensorShape { .. }), "{e}");
    let e = open(broken("gen", |d| std::fs::write(d.join("generation_config.json"), "{\"top_k\": \"many\"}").unwrap()));
    assert!(matches!(&e, HfError::BadValue { .. }), "{e}");
    let e = open(broken("weights", |d| std::fs::remove_file(d.join("model.safetensors.index.json")).unwrap()));
    assert!(matches!(&e, HfError::Safetensors(_)), "{e}");

    // The tokenizer files are read by the text layer when the engine is built.
    let json = std::fs::read(dir().join("tokenizer.json")).unwrap();
    let bad = |json: &[u8], config: &[u8]| Tokenizer::from_hf(json, Some(config)).expect_err("refused").to_string();
    assert!(bad(b"{\"model\":", b"{}").starts_with("tokenizer.json: "));
    assert!(bad(&json, b"{\"eos_token\": \"<|missing|>\"}").contains("not in the vocabulary"));
    assert!(bad(&json, b"[").starts_with("tokenizer_config.json: "));
}

/// The folder streamed as the browser streams a repository: every shard's header first (in
/// 7-byte chunks), then every shard from byte 0 in uneven chunks; `cut` bytes are left off
/// the end of the last shard; `digest` is given as shard 0's published SHA-256.
fn streamed(
    gpu: &webvlm::backend::Device,
    quant: LoadQuant,
    cut: usize,
    digest: Option<[u8; 32]>,
) -> Result<Decoder, webvlm::source::LoadError> {
    let read = |name: &str| std::fs::read(dir().join(name)).ok();
    let text = HfTextFiles::from_reader(|name| Ok(read(name))).unwrap();
    let mut stream = HfStream::new(&read("config.json").unwrap(), text, read("model.safetensors.index.json").as_deref())?;
    let shards: Vec<Vec<u8>> = stream.shard_names().iter().map(|n| read(n).unwrap()).collect();
    assert!(shards.len() > 1, "the fixture is sharded");
    for (i, bytes) in shards.iter().enumerate() {
        let mut chunks = bytes.chunks(7);
        while !stream.push_header(i, chunks.next().expect("header within the file"))? {}
    }
    assert!(stream.headers_complete()?);
    let dec = Decoder::load_from(gpu, &mut Requantize { inner: &mut stream, quant }).unwrap();
    stream.seal()?;
    if let Some(d) = digest {
        stream.expect_sha256(0, d)?;
    }
    let last = shards.len() - 1;
    for (i, bytes) in shards.iter().enumerate() {
        let bytes = if i == last { &bytes[..bytes.len() - cut] } else { &bytes[..] };
        let (mut at, mut size) = (0, 1000);
        while at < bytes.len() {
            let end = (at + size).min(bytes.len());
            stream.push(gpu, i, &bytes[at..end])?;
            (at, size) = (end, size * 3 % 70_001 + 1);
        }
    }
    stream.finish()?;
    assert_eq!(stream.held_bytes(), 0, "nothing held once every tensor is in");
    Ok(dec)
}

#[test]
fn streamed_shards_load_the_same_model() {
    let gpu = common::gpu();
    let hf = HfModel::open(dir()).unwrap();
    let case = &cases()["cases"][0];
    let tokens = ids(&case["tokens"]);
    // The Q8_0 load also checks shard 0 against its true SHA-256.
    let shard0 = std::fs::read(dir().join("model-00001-of-00003.safetensors")).unwrap();
    let sha0: [u8; 32] = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&shard0)).into();
    for (quant, digest) in [(LoadQuant::Keep, None), (LoadQuant::Q8_0, Some(sha0))] {
        let dec = streamed(&gpu, quant, 0, digest).unwrap();
        let mut ctx =
            Context::new(&gpu, &dec, ContextOptions { max_ctx: 128, max_chunk: 64, precision: Precision::F32 }).unwrap();
        let got = pollster::block_on(ctx.logits(&gpu, &dec, &tokens)).unwrap();
        let want = logits_quant(&gpu, &hf, &tokens, Precision::F32, quant);
        assert_eq!(got, want, "{quant:?}: streamed and mapped loads differ");
    }
    let err = streamed(&gpu, LoadQuant::Keep, 1, None).err().expect("a truncated shard");
    assert!(matches!(err, webvlm::source::LoadError::Stream(_)), "{err}");
    let err = streamed(&gpu, LoadQuant::Keep, 0, Some([7; 32])).err().expect("a shard that does not hash to its digest");
    assert!(matches!(err, webvlm::source::LoadError::Checksum { .. }), "{err}");
}
