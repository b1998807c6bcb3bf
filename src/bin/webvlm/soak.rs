//! `webvlm soak`: many requests against one engine, watching for leaks and failures.
//!
//! A seeded mix of OpenAI chat requests (text, images, streams completed and streams aborted
//! at a random token, JSON-schema replies, bad requests that must fail with a given error
//! code, long system prompts shared by many requests, so that the prompt cache both hits and
//! evicts under a small budget) runs through `api::run` as `webvlm chat` and the browser
//! package run them. Every `--sample-every` requests the GPU memory of live buffers (counted
//! by wgpu, [`webvlm::backend::gpu::Gpu::memory_stats`]) and the process's resident memory are
//! sampled. At the end, a seeded subset of greedy requests (run during the soak too) is run
//! again on the soaked engine and on a freshly loaded one: their replies must be equal.
//!
//! The summary goes to stdout as one JSON object and to stderr as text; the exit status is
//! non-zero when a request failed other than as its bad request asks, GPU or resident memory
//! after the warm-up moved by more than `--tolerance` percent, or a replayed reply differed.
//! `--plan` prints the settings and the requests as JSON lines instead
//! (`tests/browser/soak.test.js` runs the same mix in Chromium).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use base64::Engine as _;
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};
use webvlm::api::{run, ChatRequest};
use webvlm::engine::{Engine, EngineError};
use webvlm::gguf::{MappedGguf, SplitMix64};
use webvlm::model::ContextOptions;
use webvlm::source::{Eager, LoadQuant};

use crate::args::DeviceArgs;
use crate::stdout::outln;
use crate::CliResult;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_mistral3_tekken/model.gguf");
const MMPROJ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_mistral3_tekken/mmproj.gguf");

/// Images the requests attach (under `--fixtures`). The first is the largest (the most image
/// tokens): the plan opens with it, so that the memory it needs is reached in the warm-up.
const IMAGES: &[&str] = &[
    "images/rgb_130x181.png",
    "images/rgb_56x84.png",
    "images/gray16_56x56.png",
    "images/palette_70x42.png",
    "images/rgba_100x60.png",
    "images/exif6_84x56.jpg",
    "images/lossless_84x56.webp",
    "images/anim_2frames_56x56.gif",
    "tiny_mistral3_tekken/img_84x56.png",
    "tiny_mistral3_tekken/img_56x112.png",
];
/// An image that cannot be decoded (a bad request).
const BAD_IMAGE: &str = "images/zero_width.png";
/// Long system prompts shared by requests (prompt-cache hits), and how many of them the
/// prompt cache's budget holds (fewer: evictions).
const SYSTEM_PROMPTS: usize = 6;
const CACHED_PREFIXES: u64 = 3;
/// Cached prompt tokens that count as a hit of a system prompt (the chat template's own
/// first tokens are cached by almost every request).
const LONG_HIT: u64 = 64;

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// Requests to run
    #[arg(long, value_name = "N", default_value_t = 1000)]
    requests: usize,
    /// Seed of the request mix (kinds, prompts, images, abort points)
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// The model [default: the tiny VLM fixture]
    #[arg(long, value_name = "M.gguf", default_value = MODEL, hide_default_value = true)]
    model: PathBuf,
    /// Its vision projector [default: the tiny VLM fixture's]
    #[arg(long, value_name = "P.gguf", default_value = MMPROJ, hide_default_value = true)]
    mmproj: PathBuf,
    /// The folder of the images requests attach [default: tests/fixtures]
    #[arg(long, value_name = "DIR", default_value = FIXTURES, hide_default_value = true)]
    fixtures: PathBuf,
    /// Context size in tokens
    #[arg(long, value_name = "N", default_value_t = 1024)]
    ctx: u32,
    /// Most tokens a reply takes (aborted streams and JSON replies: 2 and 4 times as many)
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_tokens: u32,
    /// Requests before memory is expected to stay flat [default: a tenth, at least 50 or half]
    #[arg(long, value_name = "N")]
    warmup: Option<usize>,
    /// Sample memory every N requests
    #[arg(long, value_name = "N", default_value_t = 25)]
    sample_every: usize,
    /// Greedy requests replayed on a fresh engine at the end
    #[arg(long, value_name = "N", default_value_t = 10)]
    replay: usize,
    /// Most memory growth after the warm-up, in percent
    #[arg(long, value_name = "PCT", default_value_t = 5.0)]
    tolerance: f64,
    /// Print the requests as JSON lines and exit (for the browser soak)
    #[arg(long)]
    plan: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// What a planned request tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A plain text request.
    Text,
    /// A streamed reply, with usage.
    Stream,
    /// A stream aborted at a random chunk.
    Abort,
    /// An image and text.
    Image,
    /// A reply constrained to a JSON schema.
    Json,
    /// A request that must fail with a given error code.
    Bad,
    /// A request opening with a long shared system prompt (a prompt-cache hit or eviction).
    Cached,
}

impl Kind {
    /// Its name in the plan and the summary.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Stream => "stream",
            Kind::Abort => "abort",
            Kind::Image => "image",
            Kind::Json => "json",
            Kind::Bad => "bad",
            Kind::Cached => "cached",
        }
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One planned request.
#[derive(Clone, Debug, Serialize)]
pub struct Item {
    i: usize,
    kind: Kind,
    /// The request body; `raw` instead when it is not valid JSON.
    body: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<&'static str>,
    /// Streams: abort after this many content chunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    abort_after: Option<u32>,
    /// Bad requests: the error code (and field) they must fail with.
    #[serde(skip_serializing_if = "Option::is_none")]
    expect: Option<Expect>,
    /// Greedy requests replayed on a fresh engine at the end.
    replay: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Expect {
    code: &'static str,
    param: Option<&'static str>,
}

/// The crate's SplitMix64, with the draws the mix needs: seeded, the same everywhere.
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const WORDS: &[&str] = &[
    "the",
    "model",
    "reads",
    "an",
    "image",
    "and",
    "answers",
    "in",
    "short",
    "sentences",
    "about",
    "colors",
    "shapes",
    "light",
    "river",
    "mountain",
    "city",
    "street",
    "window",
    "garden",
    "music",
    "number",
    "always",
    "never",
    "quickly",
    "carefully",
    "blue",
    "green",
    "red",
    "yellow",
    "small",
    "large",
    "old",
    "new",
    "bright",
    "dark",
    "warm",
    "cold",
];

fn words(rng: &mut Rng, n: usize) -> String {
    (0..n).map(|_| WORDS[rng.below(WORDS.len() as u64) as usize]).collect::<Vec<_>>().join(" ")
}

/// The long system prompts (about 150 tokens each), from the seed.
fn system_prompts(seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed ^ 0x0051_57E3);
    (0..SYSTEM_PROMPTS).map(|k| format!("You are assistant number {k}. {}.", words(&mut rng, 140))).collect()
}

/// The first requests of every plan: those that raise the engine's memory to its high-water
/// marks (the wasm heap and resident memory never shrink), so that the warm-up reaches them:
/// an image request with the largest image (`images[0]`) and a JSON-schema request (the first
/// one builds the vocabulary's token trie, about 14 MB for a 131k-token vocabulary).
const OPENING: [Kind; 2] = [Kind::Image, Kind::Json];

/// The request mix: `n` items from `seed`, opening with [`OPENING`]; `replay` greedy ones
/// spread evenly through it.
pub fn plan(n: usize, seed: u64, replay: usize, max_tokens: u32, ctx: u32, images: &[String], bad_image: &str) -> Vec<Item> {
    let mut rng = Rng::new(seed);
    let systems = system_prompts(seed);
    let replay_at: Vec<usize> = (0..replay.min(n)).map(|k| (k * n + n / 2) / replay.min(n).max(1)).collect();
    let mut items = Vec::with_capacity(n);
    for i in 0..n {
        let is_replay = replay_at.contains(&i);
        let roll = rng.below(100);
        let kind = match () {
            _ if i < OPENING.len() => OPENING[i],
            _ if is_replay => {
                [Kind::Text, Kind::Image, Kind::Json, Kind::Text][replay_at.iter().position(|&r| r == i).unwrap_or(0) % 4]
            }
            _ if roll < 24 => Kind::Text,
            _ if roll < 38 => Kind::Stream,
            _ if roll < 52 => Kind::Abort,
            _ if roll < 68 => Kind::Image,
            _ if roll < 80 => Kind::Json,
            _ if roll < 90 => Kind::Bad,
            _ => Kind::Cached,
        };
        let system = (kind == Kind::Cached || (kind != Kind::Image && rng.chance(40)) || (is_replay && i % 2 == 0))
            .then(|| systems[rng.below(SYSTEM_PROMPTS as u64) as usize].clone());
        let n_words = 3 + rng.below(12) as usize;
        let user = format!("Request {i}: {}?", words(&mut rng, n_words));
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(json!({ "role": "system", "content": s }));
        }
        let greedy = is_replay || rng.chance(50);
        let mut body = json!({ "max_tokens": 1 + rng.below(max_tokens as u64) });
        if greedy {
            body["temperature"] = json!(0);
        } else {
            body["temperature"] = json!(0.8);
            body["seed"] = json!(rng.below(1 << 30));
        }
        let (mut abort_after, mut expect, mut raw) = (None, None, None);
        match kind {
            Kind::Image => {
                let url = if i == 0 { &images[0] } else { &images[rng.below(images.len() as u64) as usize] };
                messages.push(json!({ "role": "user", "content": [
                    { "type": "image_url", "image_url": { "url": url } },
                    { "type": "text", "text": user },
                ] }));
                if !is_replay && rng.chance(50) {
                    body["stream"] = json!(true);
                }
            }
            Kind::Json => {
                messages.push(json!({ "role": "user", "content": format!("{user} Answer in JSON.") }));
                body["max_tokens"] = json!(4 * max_tokens);
                body["response_format"] = json!({ "type": "json_schema", "json_schema": { "name": "answer", "strict": true,
                    "schema": { "type": "object", "additionalProperties": false, "required": ["answer", "n"],
                        "properties": { "answer": { "type": "string", "maxLength": 12 }, "n": { "type": "integer" } } } } });
            }
            Kind::Abort => {
                messages.push(json!({ "role": "user", "content": user }));
                body["max_tokens"] = json!(2 * max_tokens);
                body["stream"] = json!(true);
                abort_after = Some(rng.below(2 * max_tokens as u64) as u32);
            }
            Kind::Stream => {
                messages.push(json!({ "role": "user", "content": user }));
                body["stream"] = json!(true);
                body["stream_options"] = json!({ "include_usage": true });
            }
            Kind::Bad => {
                messages.push(json!({ "role": "user", "content": user }));
                let (code, param) = match rng.below(8) {
                    0 => {
                        body["bogus"] = json!(1);
                        ("unknown_parameter", Some("bogus"))
                    }
                    1 => {
                        body["temperature"] = json!(-1);
                        ("invalid_value", Some("temperature"))
                    }
                    2 => {
                        body["max_tokens"] = json!("ten");
                        ("invalid_type", Some("max_tokens"))
                    }
                    3 => {
                        raw = Some(r#"{"messages": [{"role": "user", "content": "unterminated"#);
                        ("invalid_json", None)
                    }
                    4 => {
                        *messages.last_mut().expect("the user message") = json!({ "role": "user", "content": [
                            { "type": "image_url", "image_url": { "url": bad_image } }, { "type": "text", "text": user } ] });
                        ("invalid_image", Some("messages"))
                    }
                    5 => {
                        *messages.last_mut().expect("the user message") = json!({ "role": "user", "content": [
                            { "type": "image_url", "image_url": { "url": "data:image/png;base64,aGVsbG8gd29ybGQ=" } },
                            { "type": "text", "text": user } ] });
                        ("invalid_image", Some("messages"))
                    }
                    6 => {
                        *messages.last_mut().expect("the user message") =
                            json!({ "role": "user", "content": words(&mut rng, ctx as usize + 64) });
                        ("context_length_exceeded", Some("messages"))
                    }
                    _ => {
                        body["response_format"] = json!({ "type": "json_schema",
                            "json_schema": { "name": "bad", "schema": { "type": "no-such-type" } } });
                        ("invalid_json_schema", Some("response_format"))
                    }
                };
                expect = Some(Expect { code, param });
            }
            Kind::Text | Kind::Cached => messages.push(json!({ "role": "user", "content": user })),
        }
        body["messages"] = Value::Array(messages);
        items.push(Item { i, kind, body, raw, abort_after, expect, replay: is_replay });
    }
    items
}

/// What one request came to.
enum Outcome {
    /// A reply: its finish reason, text and cached prompt tokens.
    Reply { finish: String, text: String, cached: u64 },
    /// An error: `code/param`, and its message.
    Error { key: String, message: String },
}

async fn execute(engine: &mut Engine, item: &Item, vocab: usize) -> Outcome {
    let text = item.raw.map_or_else(|| item.body.to_string(), str::to_string);
    let req = match ChatRequest::parse(&text, vocab) {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let abort = Rc::new(Cell::new(false));
    let mut chunks = 0u32;
    let limit = item.abort_after;
    let flag = abort.clone();
    let mut no_files = |url: &str| Err(EngineError::BadImageUrl(format!("{url}: the soak sends data URLs only")));
    let result = run(engine, &req, &mut no_files, Some(abort), |chunk| {
        if chunk.pointer("/choices/0/delta/content").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
            chunks += 1;
        }
        if limit.is_some_and(|n| chunks >= n) {
            flag.set(true);
        }
        None
    })
    .await;
    match result {
        Ok(c) => Outcome::Reply {
            finish: c.pointer("/choices/0/finish_reason").and_then(Value::as_str).unwrap_or("?").to_string(),
            text: c.pointer("/choices/0/message/content").and_then(Value::as_str).unwrap_or("").to_string(),
            cached: c.pointer("/usage/prompt_tokens_details/cached_tokens").and_then(Value::as_u64).unwrap_or(0),
        },
        Err(e) => error(&e),
    }
}

fn error(e: &webvlm::api::ApiError) -> Outcome {
    let key = format!("{}/{}", e.code.unwrap_or("-"), e.param.as_deref().unwrap_or("-"));
    Outcome::Error { key, message: e.message.clone() }
}

/// One memory sample.
#[derive(Clone, Copy, Debug, Serialize)]
struct Sample {
    /// Requests done when it was taken.
    requests: usize,
    live_buffers: u64,
    gpu_bytes: u64,
    rss_bytes: u64,
    prompt_cache_bytes: u64,
}

fn sample(engine: &Engine, requests: usize) -> Sample {
    let gpu = engine.device().memory_stats().unwrap_or_default();
    Sample {
        requests,
        live_buffers: gpu.live_buffers,
        gpu_bytes: gpu.buffer_bytes,
        rss_bytes: rss_bytes(),
        prompt_cache_bytes: engine.prompt_cache_stats().saved_bytes,
    }
}

/// The process's resident memory (`VmRSS` of /proc/self/status; 0 where there is none, which
/// fails the soak: its drift is undefined).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).map_or(0, |kb| kb * 1024)
}

fn load(args: &SoakArgs) -> Result<Engine, Box<dyn std::error::Error>> {
    let model = MappedGguf::open(&args.model)?;
    let mmproj = MappedGguf::open(&args.mmproj)?;
    let dev = args.device.device()?;
    let opts = ContextOptions { max_ctx: args.ctx, ..ContextOptions::for_adapter(dev.caps()) };
    let mut engine = Engine::builder(dev).context(opts).vision(&mut Eager(&mmproj), LoadQuant::Keep).load(&mut Eager(&model))?;
    // Room for a few of the long system prompts only: the rest are evicted.
    let longest = system_prompts(args.seed).iter().map(|s| engine.tokenizer().encode(s, false).map_or(0, |t| t.len())).max();
    let per_token = engine.context().state_bytes_per_token();
    engine.set_prompt_cache_bytes(CACHED_PREFIXES * (longest.unwrap_or(0) as u64 + 32) * per_token);
    Ok(engine)
}

fn data_url(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let ext = match path.extension().and_then(|e| e.to_str()).unwrap_or("png") {
        "jpg" => "jpeg",
        ext => ext,
    };
    Ok(format!("data:image/{ext};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

/// Percent change of `to` from `from`.
fn pct(from: u64, to: u64) -> f64 {
    // From zero (no figure was read) the drift is undefined, and never within a tolerance.
    if from == 0 {
        return f64::NAN;
    }
    (to as f64 - from as f64) / from as f64 * 100.0
}

pub fn run_soak(args: &SoakArgs) -> CliResult {
    let images = IMAGES.iter().map(|p| data_url(&args.fixtures.join(p))).collect::<Result<Vec<_>, _>>()?;
    let bad_image = data_url(&args.fixtures.join(BAD_IMAGE))?;
    let items = plan(args.requests, args.seed, args.replay, args.max_tokens, args.ctx, &images, &bad_image);
    if args.plan {
        // The settings a browser engine needs to run the same mix (its prompt-cache budget
        // from this engine's bytes per cached token).
        let engine = load(args)?;
        let settings = json!({ "settings": { "requests": items.len(), "seed": args.seed, "ctx": args.ctx,
            "max_tokens": args.max_tokens, "prompt_cache_bytes": engine.prompt_cache_stats().budget_bytes } });
        outln!("{settings}");
        for item in &items {
            outln!("{}", serde_json::to_string(item)?);
        }
        return Ok(());
    }
    let warmup = args.warmup.unwrap_or((args.requests / 10).max(50.min(args.requests / 2)));
    let started = Instant::now();
    let mut engine = load(args)?;
    let vocab = crate::vocab_size(&engine);
    let load_seconds = started.elapsed().as_secs_f64();
    let mut samples = vec![sample(&engine, 0)];
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    let mut finishes: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut unexpected: Vec<Value> = Vec::new();
    let (mut hits, mut cached_tokens) = (0u64, 0u64);
    let mut in_soak: Vec<(usize, String)> = Vec::new();
    let soak_started = Instant::now();
    for item in &items {
        *kinds.entry(item.kind.name()).or_default() += 1;
        let outcome = pollster::block_on(execute(&mut engine, item, vocab));
        if let Err(e) = engine.device().check_errors() {
            unexpected.push(json!({ "request": item.i, "kind": item.kind.name(), "error": format!("GPU: {e}") }));
        }
        match (&outcome, &item.expect) {
            (Outcome::Reply { finish, text, cached }, None) => {
                *finishes.entry(finish.clone()).or_default() += 1;
                // Every prompt shares the template's first tokens; a system prompt's hit is longer.
                if *cached >= LONG_HIT {
                    hits += 1;
                }
                cached_tokens += cached;
                if item.replay {
                    in_soak.push((item.i, text.clone()));
                }
            }
            (Outcome::Error { key, .. }, Some(want)) if *key == format!("{}/{}", want.code, want.param.unwrap_or("-")) => {
                *expected.entry(key.clone()).or_default() += 1;
            }
            (Outcome::Reply { finish, .. }, Some(want)) => unexpected.push(json!({ "request": item.i, "kind": item.kind.name(),
                "error": format!("succeeded ({finish}) where {} was expected", want.code) })),
            (Outcome::Error { key, message }, _) => {
                unexpected.push(json!({ "request": item.i, "kind": item.kind.name(), "error": format!("{key}: {message}") }))
            }
        }
        let done = item.i + 1;
        if done % args.sample_every == 0 || done == warmup || done == items.len() {
            samples.push(sample(&engine, done));
            if samples.len() % 4 == 0 {
                let s = samples.last().unwrap();
                eprintln!("[{done}/{}] gpu {} B in {} buffers, rss {} B", items.len(), s.gpu_bytes, s.live_buffers, s.rss_bytes);
            }
        }
    }
    let soak_seconds = soak_started.elapsed().as_secs_f64();
    let cache = engine.prompt_cache_stats();

    // The seeded subset: again on the soaked engine, then on a fresh one.
    let replayed: Vec<&Item> = items.iter().filter(|it| it.replay).collect();
    let run_all = |engine: &mut Engine| -> Vec<String> {
        replayed
            .iter()
            .map(|it| match pollster::block_on(execute(engine, it, vocab)) {
                Outcome::Reply { text, .. } => text,
                Outcome::Error { key, message } => format!("<error {key}: {message}>"),
            })
            .collect()
    };
    let soaked = run_all(&mut engine);
    drop(engine);
    let mut fresh_engine = load(args)?;
    let fresh = run_all(&mut fresh_engine);
    let soak_texts: Vec<&String> = in_soak.iter().map(|(_, t)| t).collect();
    let equal_end = soaked == fresh;
    let equal_in_soak = soak_texts.len() == fresh.len() && soak_texts.iter().zip(&fresh).all(|(a, b)| *a == b);
    let mismatches: Vec<Value> = (replayed.iter().enumerate())
        .filter(|&(k, _)| soaked[k] != fresh[k] || soak_texts.get(k).is_none_or(|t| **t != fresh[k]))
        .map(|(k, it)| json!({ "request": it.i, "fresh": fresh[k], "soaked": soaked[k], "in_soak": soak_texts.get(k) }))
        .collect();

    let start = samples[0];
    let warm = *samples.iter().find(|s| s.requests >= warmup).unwrap_or(&start);
    let end = *samples.last().unwrap_or(&start);
    let after: Vec<&Sample> = samples.iter().filter(|s| s.requests >= warm.requests).collect();
    let max_gpu = after.iter().map(|s| s.gpu_bytes).max().unwrap_or(0);
    let max_rss = after.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
    let drift = json!({
        "gpu_end_pct": pct(warm.gpu_bytes, end.gpu_bytes), "gpu_max_pct": pct(warm.gpu_bytes, max_gpu),
        "rss_end_pct": pct(warm.rss_bytes, end.rss_bytes), "rss_max_pct": pct(warm.rss_bytes, max_rss),
        "buffers_end": end.live_buffers as i64 - warm.live_buffers as i64,
    });
    // (after warm-up, max, end) of each figure watched: on the CPU backend the model's buffers
    // are the process's memory, and its resident size alone is watched.
    let on_gpu = fresh_engine.device().gpu().is_ok();
    let mut watched = vec![(warm.rss_bytes, max_rss, end.rss_bytes)];
    if on_gpu {
        watched.push((warm.gpu_bytes, max_gpu, end.gpu_bytes));
    }
    let flat = watched.iter().all(|&(w, max, end)| pct(w, max) <= args.tolerance && pct(w, end).abs() <= args.tolerance);
    let pass = unexpected.is_empty() && flat && equal_end && equal_in_soak && (start.gpu_bytes > 0 || !on_gpu);
    let summary = json!({
        "requests": items.len(), "seed": args.seed, "max_tokens": args.max_tokens, "ctx": args.ctx, "warmup": warmup,
        "adapter": fresh_engine.device().caps().adapter, "load_seconds": load_seconds, "soak_seconds": soak_seconds,
        "kinds": kinds, "finish_reasons": finishes,
        "errors": { "expected": expected, "unexpected": unexpected.len(), "unexpected_list": unexpected },
        "prompt_cache": { "hits_of_64_tokens_or_more": hits, "cached_tokens": cached_tokens, "evicted": cache.evicted,
            "saved_bytes": cache.saved_bytes, "budget_bytes": cache.budget_bytes },
        "memory": { "start": start, "after_warmup": warm, "end": end, "max_gpu_bytes": max_gpu, "max_rss_bytes": max_rss,
            "drift": drift, "tolerance_pct": args.tolerance, "flat": flat, "samples": samples },
        "replay": { "requests": replayed.len(), "equal_end": equal_end, "equal_in_soak": equal_in_soak, "mismatches": mismatches },
        "pass": pass,
    });
    outln!("{summary}");
    report(&summary);
    if !pass {
        return Err("soak failed: see the summary".into());
    }
    Ok(())
}

/// The summary as text, on stderr.
fn report(s: &Value) {
    let mib = |v: &Value| v.as_u64().map_or(0.0, |b| b as f64 / (1 << 20) as f64);
    let m = &s["memory"];
    eprintln!(
        "soak: {} requests in {:.1} s (+ {:.1} s load) on {}",
        s["requests"],
        s["soak_seconds"].as_f64().unwrap_or(0.0),
        s["load_seconds"].as_f64().unwrap_or(0.0),
        s["adapter"].as_str().unwrap_or("?")
    );
    eprintln!("  kinds: {}", s["kinds"]);
    eprintln!("  finish reasons: {}", s["finish_reasons"]);
    eprintln!("  expected errors: {}", s["errors"]["expected"]);
    eprintln!("  unexpected errors: {}", s["errors"]["unexpected"]);
    for e in s["errors"]["unexpected_list"].as_array().into_iter().flatten().take(10) {
        eprintln!("    {e}");
    }
    eprintln!("  prompt cache: {}", s["prompt_cache"]);
    for (name, key) in [("start", "start"), ("after warm-up", "after_warmup"), ("end", "end")] {
        let x = &m[key];
        eprintln!(
            "  memory at {name} (request {}): GPU {:.2} MiB in {} buffers, RSS {:.1} MiB",
            x["requests"],
            mib(&x["gpu_bytes"]),
            x["live_buffers"],
            mib(&x["rss_bytes"])
        );
    }
    eprintln!("  max after warm-up: GPU {:.2} MiB, RSS {:.1} MiB", mib(&m["max_gpu_bytes"]), mib(&m["max_rss_bytes"]));
    eprintln!("  drift: {} (flat within {}%: {})", m["drift"], m["tolerance_pct"], m["flat"]);
    let r = &s["replay"];
    eprintln!(
        "  replay of {} greedy requests on a fresh engine: equal to the soaked engine's {}, to the soak's own {}",
        r["requests"], r["equal_end"], r["equal_in_soak"]
    );
    eprintln!("  pass: {}", s["pass"]);
}
