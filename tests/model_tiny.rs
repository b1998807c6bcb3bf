//! Tiny random models made by transformers and converted by llama.cpp's converter
//! (`scripts/make_tiny_models.py`): `webvlm logits` must match transformers' logits at every
//! position, including positions past 16384 (YaRN frequencies and Ministral 3's query scaling).
//! Generation's pipelined decode loop on the tiny Ministral 3 model: the same tokens as a
//! step-by-step loop, greedy and seeded; stops at `max_tokens`, the context's end, a stop
//! string or an abort with no extra token; the dropped surplus step leaves a state the next
//! request reuses as a fresh engine would; no host wait before the last token.

use crate::common;
use common::*;

use std::cell::Cell;
use std::rc::Rc;

use webvlm::engine::{Engine, FinishReason, GenerateOptions, Generation};
use webvlm::gguf::MappedGguf;
use webvlm::kernels::sample::SamplerState;
use webvlm::model::{Context, ContextOptions, Counters, Decoder};
use webvlm::sampling::{fold_seed, SamplingParams};
use webvlm::source::{Eager, GgufBytes};

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
    check_fixture_with(dir, &["--backend", "gpu"]);
}

/// [`check_fixture`] with more `webvlm logits` arguments.
fn check_fixture_with(dir: &str, extra: &[&str]) {
    let root = fixture(dir);
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(root.join("cases.json")).unwrap()).unwrap();
    let model = root.join(&cases.model);
    for case in &cases.cases {
        let out = temp_path(&format!("{dir}-{}.npy", case.name));
        let ids: Vec<String> = case.tokens.iter().map(u32::to_string).collect();
        let args = [
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
        ];
        run_cli(&[&args[..], extra].concat());
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

/// `webvlm logits --backend cpu --cpu-mode exact`: the GPU's tolerance on the CPU backend.
#[test]
fn cpu_backend_logits_from_the_cli_match_transformers() {
    check_fixture_with("tiny_mistral3_b", &["--backend", "cpu", "--cpu-mode", "exact", "--threads", "2"]);
}

/// The same cases through the model code on the CPU backend (exact mode, f32 KV cache): the
/// GPU's tolerance against transformers, and its argmax, at every position.
#[test]
fn tiny_models_match_transformers_on_the_cpu_backend() {
    let dev = cpu();
    for dir in ["tiny_mistral3_tekken", "tiny_mistral3_b", "tiny_llama_spm"] {
        let root = fixture(dir);
        let cases: Cases = serde_json::from_str(&std::fs::read_to_string(root.join("cases.json")).unwrap()).unwrap();
        let model = MappedGguf::open(root.join(&cases.model)).unwrap();
        let dec = webvlm::model::Decoder::load_from(&dev, &mut Eager(&model)).unwrap();
        // Chunks of 16 (the prefill matmul and attention, a second chunk over cached keys) and
        // of 1 (every step a decode step: matvec, decode attention).
        for (case, chunk) in cases.cases.iter().flat_map(|c| [(c, 16), (c, 1)]) {
            let opts = ContextOptions { max_ctx: 256, max_chunk: chunk, precision: webvlm::model::Precision::F32 };
            let mut ctx = Context::new(&dev, &dec, opts).unwrap();
            ctx.set_position_offset(case.pos_offset);
            let got = pollster::block_on(ctx.logits(&dev, &dec, &case.tokens)).unwrap();
            let (shape, want) = read_npy(&root.join(&case.logits));
            let vocab = shape[1];
            assert_eq!(got.len(), want.len(), "{dir}/{}: logits", case.name);
            let mut worst = 0f32;
            for (t, (g, w)) in got.chunks(vocab).zip(want.chunks(vocab)).enumerate() {
                let err = rel_l2(g, w);
                worst = worst.max(err);
                assert!(err <= TOL_REL_L2, "CPU {dir}/{} chunk {chunk} position {t}: rel L2 {err:.2e}", case.name);
                assert_eq!(argmax(g), argmax(w), "CPU {dir}/{} chunk {chunk} position {t}: argmax", case.name);
            }
            eprintln!("CPU backend {dir}/{}, chunks of {chunk}: {} positions, worst rel L2 {worst:.2e}", case.name, shape[0]);
        }
    }
}

/// On the CPU backend a mapped GGUF's matrices are used where they lie in the file, stacks
/// (q/k/v, gate/up) as parts in several places of it, and give the logits of the same file
/// read into memory (whose matrices are copied) bit for bit; a device that copies weights
/// (`--no-mmap`) copies them from the map too.
#[test]
fn cpu_backend_uses_mapped_weights_where_they_lie() {
    let dev = cpu();
    let root = fixture("tiny_mistral3_b");
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(root.join("cases.json")).unwrap()).unwrap();
    let path = root.join(&cases.model);
    let mapped = MappedGguf::open(&path).unwrap();
    let in_memory = GgufBytes::parse(std::fs::read(&path).unwrap()).unwrap();
    let from_map = Decoder::load_from(&dev, &mut Eager(&mapped)).unwrap();
    let copied = Decoder::load_from(&dev, &mut Eager(&in_memory)).unwrap();
    let matrices = |d: &Decoder| d.layer_matrices().into_iter().chain([d.lm_head()]).cloned().collect::<Vec<_>>();
    assert!(matrices(&from_map).iter().all(|w| w.is_mapped()), "every matrix of the mapped file is used in place");
    assert!(matrices(&from_map).iter().any(|w| w.parts.len() > 1), "a stack of matrices from several places");
    assert!(!matrices(&copied).iter().any(|w| w.is_mapped()), "a file in memory is copied");
    let mut copying = webvlm::backend::cpu::Device::new(2, webvlm::backend::cpu::Mode::Exact).unwrap();
    copying.map_weights = false;
    let no_mmap = Decoder::load_from(&webvlm::backend::Device::Cpu(copying), &mut Eager(&mapped)).unwrap();
    assert!(!matrices(&no_mmap).iter().any(|w| w.is_mapped()), "--no-mmap copies");
    let opts = ContextOptions { max_ctx: 64, max_chunk: 16, precision: webvlm::model::Precision::F32 };
    let logits = |dec: &Decoder| {
        let mut ctx = Context::new(&dev, dec, opts).unwrap();
        pollster::block_on(ctx.logits(&dev, dec, &cases.cases[0].tokens)).unwrap()
    };
    assert_eq!(logits(&from_map), logits(&copied));
}

/// The tiny Ministral 3 model (text only) with a `max_ctx`-token context.
fn tiny_engine(max_ctx: u32) -> Engine {
    tiny_engine_on(gpu(), max_ctx)
}

fn tiny_engine_on(dev: webvlm::backend::Device, max_ctx: u32) -> Engine {
    let model = MappedGguf::open(fixture(TINY_VLM).join("model.gguf")).unwrap();
    Engine::builder(dev)
        .context(ContextOptions { max_ctx, max_chunk: 16, ..Default::default() })
        .load(&mut Eager(&model))
        .unwrap()
}

const PROMPT: [u32; 5] = [1, 3, 1784, 8961, 4];

/// `n` tokens from a synchronous loop on a context of its own (prefill, then one decode at a
/// time, each token read before the next step is submitted): the reference for the engine's
/// pipelined loop.
fn step_by_step(e: &Engine, prompt: &[u32], n: usize, mut s: SamplerState) -> Vec<u32> {
    let (gpu, dec) = (e.device(), e.decoder());
    let opts = ContextOptions { max_ctx: 512, max_chunk: 16, precision: e.context().precision() };
    let mut ctx = Context::new(gpu, dec, opts).unwrap();
    let mut out = vec![pollster::block_on(ctx.prefill(gpu, dec, prompt, &s)).unwrap()];
    while out.len() < n {
        s.draw += 1;
        out.push(pollster::block_on(ctx.decode(gpu, dec, &s)).unwrap());
        assert_eq!(ctx.steps_in_flight(), 0);
    }
    out
}

fn generate(e: &mut Engine, prompt: &[u32], opts: &GenerateOptions) -> (Generation, Counters) {
    let before = e.context().counters();
    let g = pollster::block_on(e.generate(prompt, opts, |_| {})).unwrap();
    let after = e.context().counters();
    let delta = Counters {
        submits: after.submits - before.submits,
        read_back_bytes: after.read_back_bytes - before.read_back_bytes,
        host_waits: after.host_waits - before.host_waits,
    };
    assert_eq!(e.context().steps_in_flight(), 0, "no step is left in flight");
    (g, delta)
}

fn greedy(max_tokens: u32) -> GenerateOptions {
    GenerateOptions { max_tokens, ignore_eos: true, ..Default::default() }
}

/// The GPU's pipelined loop and the CPU backend's host-sampled one pick the same greedy
/// tokens, in exact and in fast (8-bit activations) mode.
#[test]
fn gpu_and_cpu_backends_give_the_same_greedy_tokens() {
    let want = generate(&mut tiny_engine(512), &PROMPT, &greedy(24)).0.tokens;
    for mode in [webvlm::backend::cpu::Mode::Exact, webvlm::backend::cpu::Mode::Fast] {
        let dev = cpu_in(mode);
        let got = generate(&mut tiny_engine_on(dev, 512), &PROMPT, &greedy(24)).0.tokens;
        assert_eq!(got, want, "CPU backend, {mode:?} mode");
    }
}

#[test]
fn pipelined_generation_matches_a_step_by_step_loop() {
    let mut e = tiny_engine(512);
    let n = 12;
    let seeded = SamplingParams { temperature: 1.0, top_p: 0.95, seed: Some(7), ..Default::default() };
    let seeded_state = SamplerState { temperature: 1.0, top_p: 0.95, seed: fold_seed(7), ..Default::default() };
    let cases = [(greedy(n), SamplerState::greedy()), (GenerateOptions { sampling: seeded, ..greedy(n) }, seeded_state)];
    let mut outputs = Vec::new();
    for (opts, state) in cases {
        let want = step_by_step(&e, &PROMPT, n as usize, state);
        e.set_prompt_cache_bytes(0);
        let (g, counted) = generate(&mut e, &PROMPT, &opts);
        assert_eq!(g.tokens, want, "{:?}", opts.sampling);
        assert_eq!(g.text, e.tokenizer().decode(&want, true).unwrap());
        assert_eq!(g.finish, FinishReason::Length);
        // One prefill submit and n - 1 decode steps, a 4-byte id each; the host waits for the
        // GPU only at the last token (known in advance to be the last: nothing after it).
        assert_eq!(counted, Counters { submits: n as u64, read_back_bytes: 4 * n as u64, host_waits: 1 });
        outputs.push(g.tokens);
        // The next request starts from a clean prompt cache (the live sequence is reused).
        pollster::block_on(e.generate(&[1, 5, 6], &greedy(1), |_| {})).unwrap();
    }
    assert_ne!(outputs[0], outputs[1], "seeded sampling at temperature 1 is not the argmax");
}

#[test]
fn pipelined_generation_stops_at_its_limits_without_an_extra_token() {
    let mut e = tiny_engine(512);
    let want = step_by_step(&e, &PROMPT, 16, SamplerState::greedy());
    let full = e.tokenizer().decode(&want, true).unwrap();

    // max_tokens: never submitted past (one host wait, at the last token).
    let (g, counted) = generate(&mut e, &PROMPT, &greedy(5));
    assert_eq!((g.tokens.as_slice(), g.finish), (&want[..5], FinishReason::Length));
    assert_eq!((counted.submits, counted.host_waits), (5, 1));
    assert_eq!(e.context().n_past() as usize, PROMPT.len() + 4, "the last token is not fed");

    // The context's end: a context of prompt + 4 positions takes 4 decode steps, 5 tokens.
    let mut short = tiny_engine(PROMPT.len() as u32 + 4);
    let (g, counted) = generate(&mut short, &PROMPT, &greedy(16));
    assert_eq!((g.tokens.as_slice(), g.finish), (&want[..5], FinishReason::Length));
    assert_eq!((counted.submits, counted.host_waits), (5, 1));

    // A stop string completed by token k: tokens up to k, the text before the stop string,
    // and the step submitted after token k dropped.
    let k = (3..want.len())
        .find(|&k| {
            let piece = e.tokenizer().decode(&want[k..=k], true).unwrap();
            !piece.trim().is_empty() && !e.tokenizer().decode(&want[..k], true).unwrap().contains(piece.as_str())
        })
        .expect("a token whose text is new");
    let stop = e.tokenizer().decode(&want[k..=k], true).unwrap();
    let opts = GenerateOptions { stop: vec![stop.clone()], ..greedy(16) };
    let (g, counted) = generate(&mut e, &PROMPT, &opts);
    assert_eq!((g.tokens.as_slice(), g.finish), (&want[..=k], FinishReason::Stop));
    assert_eq!(g.text, full[..full.find(&stop).unwrap()]);
    assert_eq!(counted.host_waits, 0, "a step was in flight at every read");
    assert_eq!(counted.submits as usize, k + 2, "the prefill, k steps and the surplus one");
    assert_eq!(e.context().n_past() as usize, PROMPT.len() + k, "the surplus step is forgotten");
    follow_up_matches_a_fresh_engine(&mut e, &g.tokens);

    // Abort after the third token: three tokens, the step after them dropped.
    let abort = Rc::new(Cell::new(false));
    let opts = GenerateOptions { abort: Some(abort.clone()), ..greedy(16) };
    let mut seen = 0;
    let g = pollster::block_on(e.generate(&PROMPT, &opts, |_| {
        seen += 1;
        abort.set(seen == 3);
    }))
    .unwrap();
    assert_eq!((g.tokens.as_slice(), g.finish), (&want[..3], FinishReason::Abort));
    assert_eq!(e.context().n_past() as usize, PROMPT.len() + 2);
    follow_up_matches_a_fresh_engine(&mut e, &g.tokens);
}

/// A request continuing `PROMPT` + `reply` with new tokens reuses the cache (all but the
/// last reply token, fed by the dropped step) and gives what a fresh engine gives.
fn follow_up_matches_a_fresh_engine(e: &mut Engine, reply: &[u32]) {
    let next: Vec<u32> = PROMPT.iter().chain(reply).chain(&[1784, 8961, 4]).copied().collect();
    let (g, _) = generate(e, &next, &greedy(6));
    assert_eq!(g.cached_tokens, PROMPT.len() + reply.len() - 1);
    let (fresh, _) = generate(&mut tiny_engine(512), &next, &greedy(6));
    assert_eq!(fresh.cached_tokens, 0);
    assert_eq!(g.tokens, fresh.tokens);
}
