//! `webvlm`: the native command-line tool (generate, logits, chat, batch, info, split,
//! synthetic, bench).

use std::io::Write;
use std::process::ExitCode;

use webvlm::chat::{ChatContent, ChatMessage, ContentPart};
use webvlm::engine::{Engine, EngineError, GenerateOptions, Mmproj, Prompt};
use webvlm::gguf::MappedGguf;
use webvlm::gpu::{Gpu, GpuOptions};
use webvlm::model::{ContextOptions, Precision};
use webvlm::sampling::SamplingParams;
use webvlm::source::{LoadQuant, TensorSource};

mod api;
mod bench;
mod info;

pub const USAGE: &str = "usage:
  webvlm generate --model M.gguf [--mmproj P.gguf [--vision-quant Q] --image F ...]
                  --prompt TEXT [--chat]
                  [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--min-p P]
                  [--seed S] [--stop TEXT ...]
                  [--ctx N] [--chunk N] [--f16] [--image-max-edge N]
  webvlm logits   --model M.gguf [--mmproj P.gguf [--vision-quant Q] --image F ...]
                  (--prompt TEXT | --tokens ID,ID,...) --out OUT.npy
                  [--pos-offset N] [--ctx N] [--chunk N] [--f16] [--image-max-edge N]
  (--f16: f16 KV cache, and f16 prefill matmuls where the adapter has shader-f16;
   --vision-quant q8_0|q4_0|q4_1: requantize the mmproj matrices at load time)
  (images: with --chat they come first in the user message; otherwise each [IMG] in the
   prompt text is one image, or all images go before the text when it has none; with
   --tokens the ids hold the expanded layout and each [IMG] id takes the next feature)
  webvlm chat     --model M.gguf [--mmproj P.gguf] --request REQ.json [engine flags]
                  (an OpenAI chat-completions request; prints the response, or with
                   stream: true the chunks as server-sent events)
  webvlm batch    REQUESTS.jsonl --model M.gguf [--mmproj P.gguf] [--out RESULTS.jsonl]
                  (OpenAI batch lines {custom_id, body}; one result line per request)
  webvlm info     --model M.gguf
  webvlm split    --model M.gguf --parts N --out PREFIX  (writes PREFIX-00001-of-0000N.gguf ...)
  webvlm synthetic --out M.gguf [--mmproj-out P.gguf] [--shape 3b|tiny] [--seed S | --zeros]
                  [--vocab-from T.gguf]  (random weights with Ministral 3 3B's exact shapes,
                  the tokenizer of T, for load tests; --zeros: zero weights left as holes in
                  sparse files, which take almost no disk)
  webvlm bench    [--model M.gguf] [--synthetic [--shape 3b|tiny]] [--quick] [--json-only]
                  [--prompt-tokens N] [--decode-tokens N] [--prefill-reps N] [--reps N]
                  [--no-kernels] [--breakdown | --no-breakdown] [--no-model]
                  [--vision | --no-vision] [--vision-sizes 512,1024] [--vision-layers N]
                  [--vision-quant q8_0|q4_1|q4_0]";

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("generate") => generate(&args[1..]),
        Some("logits") => logits(&args[1..]),
        Some("chat") => api::chat(&args[1..]),
        Some("batch") => api::batch(&args[1..]),
        Some("info") => info::run(&args[1..]),
        Some("split") => info::split(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("synthetic") => synthetic(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parsed `--name value` flags and bare `--switch`es.
pub struct Flags(Vec<(String, Option<String>)>);

impl Flags {
    /// Parses `args`; `switches` take no value.
    pub fn parse(args: &[String], switches: &[&str]) -> Result<Flags, String> {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let name = a.strip_prefix("--").ok_or_else(|| format!("unexpected argument {a:?}"))?;
            if switches.contains(&name) {
                out.push((name.to_string(), None));
            } else {
                let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                out.push((name.to_string(), Some(v.clone())));
            }
        }
        Ok(Flags(out))
    }
    /// Every value of a repeatable flag, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(n, _)| n == name).filter_map(|(_, v)| v.as_deref()).collect()
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
    }
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }
    pub fn require(&self, name: &str) -> Result<&str, String> {
        self.get(name).ok_or_else(|| format!("--{name} is required\n{USAGE}"))
    }
    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{name}: cannot parse {v:?}")),
        }
    }
    /// Fails on flags outside `known`.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.0.iter().find(|(n, _)| !known.contains(&n.as_str())) {
            Some((n, _)) => Err(format!("unknown flag --{n}\n{USAGE}")),
            None => Ok(()),
        }
    }
}

pub fn open_engine(flags: &Flags) -> Result<Engine, Box<dyn std::error::Error>> {
    let model = MappedGguf::open(flags.require("model")?)?;
    let mmproj = flags.get("mmproj").map(MappedGguf::open).transpose()?;
    if mmproj.is_none() && flags.has("image") {
        return Err("--image needs --mmproj (the model's vision projector file)".into());
    }
    let gpu = Gpu::new_blocking(GpuOptions::default())?;
    let precision = if flags.has("f16") { Precision::reduced(&gpu.caps) } else { Precision::default() };
    let opts = ContextOptions {
        max_ctx: flags.num("ctx", ContextOptions::default().max_ctx)?,
        max_chunk: flags.num("chunk", ContextOptions::default().max_chunk)?,
        precision,
    };
    let quant: LoadQuant = flags.get("vision-quant").map(str::parse).transpose()?.unwrap_or_default();
    let mmproj = mmproj.as_ref().map(|m| Mmproj { src: m as &dyn TensorSource, quant });
    let mut engine = Engine::load_with_vision(gpu, &model as &dyn TensorSource, mmproj, opts)?;
    engine.image_options.max_edge = flags.num("image-max-edge", engine.image_options.max_edge)?;
    Ok(engine)
}

fn synthetic(args: &[String]) -> CliResult {
    use webvlm::model::synthetic::{
        synthetic_ministral3_writer, synthetic_pixtral_mmproj_writer, SyntheticShape, SyntheticWeights, VisionShape,
    };
    let flags = Flags::parse(args, &["zeros"])?;
    flags.only(&["out", "mmproj-out", "shape", "seed", "vocab-from", "zeros"])?;
    let weights =
        if flags.has("zeros") { SyntheticWeights::Zeros } else { SyntheticWeights::Random { seed: flags.num("seed", 1)? } };
    let (text, vision) = match flags.get("shape").unwrap_or("3b") {
        "3b" => (SyntheticShape::ministral3_3b(), VisionShape::ministral3_3b()),
        "tiny" => (SyntheticShape::tiny(), VisionShape::tiny()),
        other => return Err(format!("--shape {other}: expected 3b or tiny").into()),
    };
    // A real model's tokenizer (e.g. the Tekken fixture) makes the file loadable by the engine.
    let vocab = match flags.get("vocab-from") {
        Some(path) => {
            let src = MappedGguf::open(path)?;
            src.metadata().iter().filter(|(k, _)| k.starts_with("tokenizer.")).map(|(k, v)| (k.to_string(), v.clone())).collect()
        }
        None => Vec::new(),
    };
    let out = flags.require("out")?;
    write_gguf(out, &synthetic_ministral3_writer(&text, weights, &vocab)?)?;
    if let Some(path) = flags.get("mmproj-out") {
        write_gguf(path, &synthetic_pixtral_mmproj_writer(&vision, weights)?)?;
    }
    Ok(())
}

/// Writes `gguf` to `path` (the error names the file: a 3B model needs ~3 GB free, unless
/// its weights are zeros, which become holes).
fn write_gguf(path: &str, gguf: &webvlm::gguf::GgufWriter) -> CliResult {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?);
    gguf.write_to(&mut file).and_then(|()| file.flush()).map_err(|e| format!("{path}: {e}"))?;
    eprintln!("wrote {path}");
    Ok(())
}

pub fn read_file(path: &str) -> Result<Vec<u8>, EngineError> {
    std::fs::read(path).map_err(|e| EngineError::BadImageUrl(format!("{path}: {e}")))
}

/// The prompt of `generate` / `logits --prompt`: chat or plain text, with the `--image`s.
fn text_prompt(engine: &mut Engine, flags: &Flags, text: &str) -> Result<Prompt, EngineError> {
    let files = flags.all("image");
    if flags.has("chat") {
        // Plain string content unless there are images: not every template takes part lists.
        let message = if files.is_empty() {
            ChatMessage::text("user", text)
        } else {
            let mut parts: Vec<ContentPart> = files.iter().map(|f| ContentPart::Image { url: Some(f.to_string()) }).collect();
            parts.push(ContentPart::Text(text.to_string()));
            ChatMessage { role: "user".into(), content: ChatContent::Parts(parts) }
        };
        return engine.chat_prompt(&[message], &mut |url| read_file(url));
    }
    let images = files.iter().map(|f| engine.image_features(&read_file(f)?)).collect::<Result<Vec<_>, _>>()?;
    let mut tokens = engine.text_tokens(text)?;
    if !images.is_empty() && !tokens.contains(&engine.image_tokens()?.img) {
        let at = engine.tokenizer.bos_id().filter(|&b| tokens.first() == Some(&b)).map_or(0, |_| 1);
        let img = engine.image_tokens()?.img;
        tokens.splice(at..at, std::iter::repeat_n(img, images.len()));
    }
    engine.prompt_with_images(&tokens, images)
}

fn generate(args: &[String]) -> CliResult {
    let flags = Flags::parse(args, &["chat", "f16"])?;
    flags.only(&[
        "model",
        "mmproj",
        "vision-quant",
        "image",
        "image-max-edge",
        "prompt",
        "chat",
        "max-tokens",
        "temperature",
        "top-k",
        "top-p",
        "min-p",
        "stop",
        "seed",
        "ctx",
        "chunk",
        "f16",
    ])?;
    let text = flags.require("prompt")?;
    let mut engine = open_engine(&flags)?;
    let prompt = text_prompt(&mut engine, &flags, text)?;
    let sampling = SamplingParams {
        temperature: flags.num("temperature", 0.0)?,
        top_k: flags.num("top-k", 0)?,
        top_p: flags.num("top-p", 1.0)?,
        min_p: flags.num("min-p", 0.0)?,
        seed: flags.num("seed", 0)?,
        ..Default::default()
    };
    let opts = GenerateOptions {
        max_tokens: flags.num("max-tokens", 256)?,
        sampling,
        stop: flags.all("stop").into_iter().map(String::from).collect(),
        ..Default::default()
    };
    let mut stdout = std::io::stdout();
    let out = pollster::block_on(engine.generate_prompt(&prompt, &opts, |step| {
        let _ = stdout.write_all(step.text.as_bytes());
        let _ = stdout.flush();
        None
    }))?;
    println!();
    let n = out.tokens.len().max(1) as f64;
    eprintln!(
        "[{} prompt tokens ({} images), {} generated ({:?}); first token {:.0} ms; decode {:.1} tokens/s]",
        out.prompt_tokens,
        prompt.images.len(),
        out.tokens.len(),
        out.finish,
        out.time_to_first_token * 1e3,
        (n - 1.0) / out.decode_seconds.max(1e-9)
    );
    Ok(())
}

fn logits(args: &[String]) -> CliResult {
    let flags = Flags::parse(args, &["f16"])?;
    flags.only(&[
        "model",
        "mmproj",
        "vision-quant",
        "image",
        "image-max-edge",
        "prompt",
        "tokens",
        "out",
        "pos-offset",
        "ctx",
        "chunk",
        "f16",
    ])?;
    let out_path = flags.require("out")?;
    let mut engine = open_engine(&flags)?;
    let prompt = match (flags.get("tokens"), flags.get("prompt")) {
        (Some(t), None) => {
            let tokens = t
                .split(',')
                .map(|s| s.trim().parse::<u32>().map_err(|_| format!("--tokens: bad id {s:?}")))
                .collect::<Result<_, _>>()?;
            let images =
                flags.all("image").iter().map(|f| engine.image_features(&read_file(f)?)).collect::<Result<_, EngineError>>()?;
            Prompt { tokens, images }
        }
        (None, Some(p)) => text_prompt(&mut engine, &flags, p)?,
        _ => return Err(format!("give exactly one of --tokens and --prompt\n{USAGE}").into()),
    };
    engine.ctx.set_position_offset(flags.num("pos-offset", 0)?);
    let values = pollster::block_on(engine.logits(&prompt))?;
    let (n, vocab) = (prompt.tokens.len(), engine.decoder.cfg.vocab as usize);
    let file = std::io::BufWriter::new(std::fs::File::create(out_path)?);
    webvlm::npy::write_f32(file, &[n, vocab], &values)?;
    eprintln!("wrote logits [{n}, {vocab}] to {out_path}");
    Ok(())
}
