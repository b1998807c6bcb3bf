//! A Hugging Face folder written out as GGUF while it streams (`RepoLoad::write_gguf`: the file
//! the npm package keeps in Cache Storage in place of a repository's shards, and that
//! `webvlm convert` writes). The file alone loads the same engine as the streamed load:
//! logits equal bit for bit for the tiny Llama 3 at every load-time quantization and for the
//! tiny Mllama with an image, the same tokenizer and chat template; at Q8_0 its tensors are
//! those of llama.cpp's `convert_hf_to_gguf.py --outtype q8_0` byte for byte; the CLI writes
//! the same bytes and answers from the file as from the folder.

use crate::common;

use std::path::Path;
use std::rc::Rc;

use common::{cpu, fixture, run_cli, temp_path};
use serde_json::Value;
use webvlm::chat::ChatMessage;
use webvlm::engine::{Engine, Prompt, RepoLoad, Vision};
use webvlm::gguf::{parse_header, GgufHeaderParser, MappedGguf};
use webvlm::model::{ContextOptions, Precision};
use webvlm::source::{Eager, GgufBytes, LoadQuant, TensorSource};

fn opts() -> ContextOptions {
    ContextOptions { max_ctx: 128, max_chunk: 64, precision: Precision::F32 }
}

/// The folder streamed as the browser streams a repository (headers, then every shard in
/// uneven chunks), writing its GGUF: the engine and the file's bytes.
fn convert(folder: &Path, quant: LoadQuant) -> (Engine, Vec<u8>) {
    let read = |name: &str| std::fs::read(folder.join(name)).ok();
    let mut repo = RepoLoad::new(read, quant).unwrap();
    repo.write_gguf().unwrap();
    let shards: Vec<Vec<u8>> = repo.shard_names().iter().map(|n| read(n).unwrap()).collect();
    for (i, bytes) in shards.iter().enumerate() {
        let mut chunks = bytes.chunks(1000);
        while !repo.push_header(i, chunks.next().unwrap()).unwrap() {}
    }
    let engine = repo.build(cpu(), opts()).unwrap();
    assert!(repo.write_gguf().is_err(), "the output is asked for before the model is planned");
    let mut file = repo.take_gguf();
    let header = GgufHeaderParser::new().feed(&file).unwrap().expect("the header comes out when the model is planned");
    assert!(header.data_offset <= file.len() as u64, "the tensors' bytes follow as they stream");
    for (i, bytes) in shards.iter().enumerate() {
        let (mut at, mut size) = (0, 777);
        while at < bytes.len() {
            let end = (at + size).min(bytes.len());
            repo.push(engine.device(), i, &bytes[at..end]).unwrap();
            file.extend(repo.take_gguf());
            (at, size) = (end, size * 5 % 90_001 + 1);
        }
    }
    repo.finish().unwrap();
    file.extend(repo.take_gguf());
    (engine, file)
}

fn load_gguf(bytes: Vec<u8>) -> Engine {
    let file = GgufBytes::parse(bytes).expect("a valid GGUF");
    Engine::builder(cpu()).context(opts()).load(&mut Eager(&file)).unwrap()
}

fn cases(folder: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(folder.join("cases.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

fn logits(e: &mut Engine, prompt: &Prompt) -> Vec<f32> {
    pollster::block_on(e.logits(prompt)).unwrap()
}

#[test]
fn the_converted_llama_loads_to_the_same_engine() {
    let folder = fixture("tiny_llama_hf");
    let all = cases(&folder);
    let messages: Vec<ChatMessage> = serde_json::from_value(serde_json::json!([
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, how are you?"}
    ]))
    .unwrap();
    let no_image = &mut |_: &str| -> Result<Vec<u8>, webvlm::engine::EngineError> { unreachable!("no images") };
    for quant in [LoadQuant::Keep, LoadQuant::Q8_0, LoadQuant::Q4_K, LoadQuant::Q4_0, LoadQuant::Q4_1] {
        let (mut streamed, bytes) = convert(&folder, quant);
        let size = bytes.len();
        let mut loaded = load_gguf(bytes);
        for case in all["cases"].as_array().unwrap() {
            let prompt = Prompt { tokens: ids(&case["tokens"]), images: Vec::new() };
            assert_eq!(logits(&mut loaded, &prompt), logits(&mut streamed, &prompt), "{quant:?} {}", case["name"]);
        }
        let (a, b) = (
            streamed.chat_prompt(&messages, None, None, no_image).unwrap(),
            loaded.chat_prompt(&messages, None, None, no_image).unwrap(),
        );
        assert_eq!(a.tokens, b.tokens, "{quant:?}: the template and tokenizer travel with the file");
        assert_eq!(streamed.text_tokens("Hello world").unwrap(), loaded.text_tokens("Hello world").unwrap());
        println!("{quant:?}: {size} bytes, logits equal on {} cases", all["cases"].as_array().unwrap().len());
    }
}

#[test]
fn at_q8_0_the_tensors_are_llama_cpps() {
    let folder = fixture("tiny_llama_hf");
    let (_, bytes) = convert(&folder, LoadQuant::Q8_0);
    let count = parse_header(&bytes).unwrap().tensors.len();
    let ours = GgufBytes::parse(bytes).unwrap();
    let theirs = MappedGguf::open(folder.join("model_q8_0.gguf")).unwrap();
    let mut checked = 0;
    for b in theirs.tensors() {
        let a = ours.tensor_info(&b.name).unwrap_or_else(|| panic!("{} is in our file", b.name));
        assert_eq!((a.ty, &a.dims), (b.ty, &b.dims), "{}", b.name);
        assert!(ours.tensor_data(&b.name).unwrap() == theirs.tensor_data(&b.name).unwrap(), "{}: bytes differ", b.name);
        checked += 1;
    }
    assert_eq!(count, checked, "the same tensors");
    assert!(checked > 10);
}

#[test]
fn the_converted_mllama_answers_about_images_as_the_stream() {
    let mut checked = 0;
    for folder in ["tiny_mllama_a", "tiny_mllama_b"].map(fixture) {
        let all = cases(&folder);
        let (mut streamed, bytes) = convert(&folder, LoadQuant::Q8_0);
        let mut loaded = load_gguf(bytes);
        assert!(loaded.vision().and_then(Vision::cross).is_some(), "the vision encoder is in the file");
        for case in all["cases"].as_array().unwrap().iter().filter(|c| !c["images"].as_array().unwrap().is_empty()) {
            let prompt = |e: &mut Engine| {
                let tokens = e.text_tokens(case["text"].as_str().unwrap()).unwrap();
                let images = (case["images"].as_array().unwrap().iter())
                    .map(|f| e.image_features(&std::fs::read(folder.join(f.as_str().unwrap())).unwrap(), None).unwrap())
                    .collect::<Vec<Rc<_>>>();
                e.prompt_with_images(&tokens, images).unwrap()
            };
            let (a, b) = (prompt(&mut streamed), prompt(&mut loaded));
            assert_eq!(a.tokens, ids(&case["tokens"]));
            assert_eq!(logits(&mut loaded, &b), logits(&mut streamed, &a), "{}", case["name"]);
            checked += 1;
        }
    }
    assert!(checked >= 3, "cases with images: {checked}");
}

#[test]
fn the_cli_writes_the_same_file_and_answers_from_it() {
    let folder = fixture("tiny_llama_hf");
    let out = temp_path("tiny_llama_q4_k.gguf");
    let dir = folder.to_str().unwrap();
    run_cli(&["convert", "--model", dir, "--quant", "q4_k", "--out", out.to_str().unwrap()]);
    let (_, bytes) = convert(&folder, LoadQuant::Q4_K);
    assert!(std::fs::read(&out).unwrap() == bytes, "the CLI's file is the stream's");
    let ask = |model: &[&str]| {
        let args = [model, &["--prompt", "Hello, how are you?", "--chat", "--max-tokens", "8", "--temperature", "0"]].concat();
        String::from_utf8(run_cli(&[&["generate"][..], &args].concat()).stdout).unwrap()
    };
    let from_file = ask(&["--model", out.to_str().unwrap()]);
    assert_eq!(from_file, ask(&["--model", dir, "--quant", "q4_k"]));
    assert!(!from_file.is_empty());
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_webvlm"))
        .args(["convert", "--model", out.to_str().unwrap(), "--out", "x.gguf"])
        .output()
        .unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("folder"));
}

/// `--quant auto` (the default): a folder's float matrices take Q8_0 when the budget allows
/// (no budget given natively), a GGUF keeps its types, and a budget too small even at 4 bits
/// refuses the model before loading.
#[test]
fn the_cli_chooses_the_quantization_of_a_folder() {
    let dir = fixture("tiny_llama_hf");
    let dir = dir.to_str().unwrap();
    let gguf = fixture("tiny_llama_hf/model.gguf");
    let logits = |model: &[&str]| {
        let out = temp_path(&format!("auto_quant_{}.npy", model.join("_").replace('/', "_")));
        let args = [&["logits"][..], model, &["--tokens", "1,2,3,4,5", "--out", out.to_str().unwrap()]].concat();
        run_cli(&args);
        std::fs::read(out).unwrap()
    };
    let auto = logits(&["--model", dir]);
    assert!(auto == logits(&["--model", dir, "--quant", "q8_0"]), "a folder takes Q8_0");
    assert!(auto != logits(&["--model", dir, "--quant", "keep"]), "BF16 and Q8_0 logits differ");
    let gguf = gguf.to_str().unwrap();
    assert!(logits(&["--model", gguf]) == logits(&["--model", gguf, "--quant", "keep"]), "a GGUF keeps its types");
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_webvlm"))
        .args(["generate", "--model", dir, "--prompt", "hi", "--gpu-memory", "64K"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("MiB"), "{}", String::from_utf8_lossy(&refused.stderr));
}
