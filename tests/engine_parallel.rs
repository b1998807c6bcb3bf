//! Parallel runs (`Engine::parallel`): requests joining a running batch at different steps —
//! greedy, seeded sampling with penalties, a JSON-constrained one beside free ones, a stop
//! string, logprobs, an image prompt, one cut short by `max_tokens` — each give the tokens,
//! text, finish reason and logprobs they give alone (`Engine::generate_prompt`); a cancelled
//! sequence frees its slot for the next request; a full run refuses one more; a long prompt
//! is prefilled a chunk per step while the sequences already decoding get a token each step;
//! the next turn of a chat takes the slot holding its first turn, in the same run or in one the
//! engine kept between runs.

use crate::common;
use common::*;

use std::collections::HashMap;

use webvlm::backend::gpu::Geometry;
use webvlm::backend::Device;
use webvlm::chat::ChatMessage;
use webvlm::engine::{
    Engine, EngineError, FinishReason, GenerateOptions, Generation, KvPool, Parallel, ParallelEvent, Prompt, ResponseFormat,
};
use webvlm::gguf::MappedGguf;
use webvlm::model::ContextOptions;
use webvlm::sampling::SamplingParams;
use webvlm::source::hf::HfModel;
use webvlm::source::{Eager, LoadQuant};

fn engine(dev: Device) -> Engine {
    engine_of(dev, 256)
}

/// The tiny VLM with contexts of `max_ctx` positions.
fn engine_of(dev: Device, max_ctx: u32) -> Engine {
    engine_with(dev, ContextOptions { max_ctx, max_chunk: 16, ..Default::default() })
}

fn engine_with(dev: Device, opts: ContextOptions) -> Engine {
    let model = MappedGguf::open(fixture(TINY_VLM).join("model.gguf")).unwrap();
    let proj = MappedGguf::open(fixture(TINY_VLM).join("mmproj.gguf")).unwrap();
    Engine::builder(dev).context(opts).vision(&mut Eager(&proj), LoadQuant::Keep).load(&mut Eager(&model)).unwrap()
}

fn chat(e: &mut Engine, json: serde_json::Value) -> Prompt {
    let messages: Vec<ChatMessage> = serde_json::from_value(json).unwrap();
    e.chat_prompt(&messages, None, None, &mut read_tiny_vlm_image).unwrap()
}

/// The requests, with the step each joins at.
fn requests(e: &mut Engine) -> Vec<(usize, Prompt, GenerateOptions)> {
    let text = |e: &mut Engine, s: &str| chat(e, serde_json::json!([{ "role": "user", "content": s }]));
    let greedy = |max_tokens| GenerateOptions { max_tokens, ignore_eos: true, ..GenerateOptions::default() };
    let seeded = SamplingParams { temperature: 0.9, top_k: 40, frequency_penalty: 0.5, seed: Some(7), ..Default::default() };
    let image = serde_json::json!([{ "role": "user", "content": [
        { "type": "text", "text": "What is in the picture?" },
        { "type": "image_url", "image_url": { "url": "img_84x56.png" } }] }]);
    vec![
        (0, text(e, "Say something long."), greedy(14)),
        (0, text(e, "Hi"), GenerateOptions { sampling: seeded.clone(), ..greedy(12) }),
        (1, text(e, "Give me JSON."), GenerateOptions { response_format: ResponseFormat::JsonObject, ..greedy(16) }),
        (2, chat(e, image), greedy(9)),
        (2, text(e, "Count to ten, slowly, one number per line."), GenerateOptions { logprobs: Some(3), ..greedy(10) }),
        (3, text(e, "Hi"), greedy(3)),
        (4, text(e, "Say something long."), GenerateOptions { stop: vec!["gu po".into()], ..greedy(12) }),
        (5, text(e, "Another prompt of a different length than the others."), GenerateOptions { sampling: seeded, ..greedy(8) }),
    ]
}

/// Runs `requests` through one parallel run of `slots`, admitting each at its step; the
/// generations by request, the text each streamed, and the most sequences one step ran.
fn run_parallel(
    e: &mut Engine,
    requests: &[(usize, Prompt, GenerateOptions)],
    slots: u32,
) -> (Vec<Generation>, Vec<String>, usize) {
    let mut run = e.parallel(slots).unwrap();
    run_in(e, &mut run, requests)
}

/// [`run_parallel`] on a run already made (its slots keep what earlier requests left).
fn run_in(
    e: &mut Engine,
    run: &mut Parallel,
    requests: &[(usize, Prompt, GenerateOptions)],
) -> (Vec<Generation>, Vec<String>, usize) {
    run_checked(e, run, requests, |_| {})
}

/// [`run_in`], calling `check` on the run after every step.
fn run_checked(
    e: &mut Engine,
    run: &mut Parallel,
    requests: &[(usize, Prompt, GenerateOptions)],
    check: impl FnMut(&Parallel),
) -> (Vec<Generation>, Vec<String>, usize) {
    let (ended, streamed, widest) = run_to_ends(e, run, requests, check);
    let done = ended.into_iter().enumerate().map(|(i, end)| end.unwrap_or_else(|error| panic!("request {i}: {error}")));
    (done.collect(), streamed, widest)
}

/// [`run_checked`], with each request's failure as its end.
fn run_to_ends(
    e: &mut Engine,
    run: &mut Parallel,
    requests: &[(usize, Prompt, GenerateOptions)],
    mut check: impl FnMut(&Parallel),
) -> (Vec<Result<Generation, EngineError>>, Vec<String>, usize) {
    let (mut ids, mut done) = (HashMap::new(), HashMap::new());
    let mut streamed = vec![String::new(); requests.len()];
    let (mut step, mut widest) = (0, 0);
    while done.len() < requests.len() {
        let mut events = Vec::new();
        for (i, (_, prompt, opts)) in requests.iter().enumerate().filter(|(_, r)| r.0 == step) {
            let (id, admitted) = pollster::block_on(run.admit(e, prompt, opts)).unwrap();
            ids.insert(id, i);
            events.extend(admitted);
        }
        widest = widest.max(run.running());
        events.extend(pollster::block_on(run.step(e)).unwrap());
        check(run);
        for event in events {
            match event {
                ParallelEvent::Text { id, text, .. } => streamed[ids[&id]].push_str(&text),
                ParallelEvent::Done { id, generation } => assert!(done.insert(ids[&id], Ok(generation)).is_none()),
                ParallelEvent::Failed { id, error } => assert!(done.insert(ids[&id], Err(error)).is_none()),
            }
        }
        step += 1;
    }
    let generations = (0..requests.len()).map(|i| done.remove(&i).unwrap()).collect();
    (generations, streamed, widest)
}

/// Every request as alone: its tokens, text and finish; its logprobs bit for bit where a
/// step's prompt-chunk rows take the products they take alone (the CPU backend, and CPU
/// adapters' matvec), within 1e-4 in the GPU shape, where they run on the tiled matmul and
/// its rounding (docs/ARCHITECTURE.md).
fn same_as_alone(dev: Device, what: &str) {
    let exact = dev.caps().geometry == Geometry::Cpu;
    let mut e = engine(dev);
    let requests = requests(&mut e);
    let (batched, streamed, widest) = run_parallel(&mut e, &requests, 8);
    assert!(widest >= 6, "{what}: {widest} sequences at most");
    for (i, ((_, prompt, opts), got)) in requests.iter().zip(&batched).enumerate() {
        let want = pollster::block_on(e.generate_prompt(prompt, opts, |_| None)).unwrap();
        assert_eq!(got.tokens, want.tokens, "{what}: request {i}'s tokens");
        assert_eq!((&got.text, got.finish), (&want.text, want.finish), "{what}: request {i}");
        assert_eq!(streamed[i], got.text, "{what}: request {i}'s streamed text");
        assert_eq!(got.logprobs.len(), want.logprobs.len(), "{what}: request {i}'s logprobs");
        for (g, w) in got.logprobs.iter().zip(&want.logprobs) {
            assert_eq!(g.token, w.token, "{what}: request {i}");
            let same = if exact { g.logprob.to_bits() == w.logprob.to_bits() } else { (g.logprob - w.logprob).abs() < 1e-4 };
            assert!(same, "{what}: request {i}: logprob {} against {} alone", g.logprob, w.logprob);
        }
        if let Some(seed) = opts.sampling.seed {
            assert_eq!((got.seed, want.seed), (seed, seed), "{what}: request {i}'s seed");
        }
    }
    let json = &batched[2];
    assert!(
        serde_json::from_str::<serde_json::Value>(&json.text).is_ok() || json.finish == FinishReason::Length,
        "{}",
        json.text
    );
    assert_eq!(batched[6].finish, FinishReason::Stop, "the stop string ends request 6: {:?}", batched[6].text);
    assert_eq!(batched[5].tokens.len(), 3, "max_tokens");
}

#[test]
fn parallel_requests_generate_as_they_do_alone_on_the_cpu_backend() {
    same_as_alone(cpu(), "CPU backend");
}

#[test]
fn parallel_requests_generate_as_they_do_alone_on_the_gpu() {
    same_as_alone(gpu(), "GPU");
}

/// A slot keeps the sequence it ran: the next turn of a chat, admitted when both slots are
/// free, takes the slot holding its first turn and prefills only what follows it (counted as
/// cached tokens), and gives the tokens it gets alone on a fresh engine.
#[test]
fn the_next_turn_of_a_chat_takes_the_slot_holding_the_first() {
    for (what, dev) in [("CPU backend", cpu as fn() -> Device), ("GPU", gpu)] {
        let mut e = engine(dev());
        let greedy = GenerateOptions { max_tokens: 8, ignore_eos: true, ..GenerateOptions::default() };
        let first = serde_json::json!([{ "role": "user", "content": "Say something long." }]);
        let (p1, p2) =
            (chat(&mut e, first.clone()), chat(&mut e, serde_json::json!([{ "role": "user", "content": "Count to ten." }])));
        let mut run = e.parallel(2).unwrap();
        let (turn1, ..) = run_in(&mut e, &mut run, &[(0, p1.clone(), greedy.clone()), (0, p2, greedy.clone())]);
        let mut messages = first.as_array().unwrap().clone();
        messages.push(serde_json::json!({ "role": "assistant", "content": turn1[0].text }));
        messages.push(serde_json::json!({ "role": "user", "content": "And then?" }));
        let next = chat(&mut e, serde_json::Value::Array(messages));
        assert!(next.tokens.starts_with(&p1.tokens), "{what}: the first turn's prompt starts the next one");
        // Kept by the engine between two runs (the package's calls), the slots keep them.
        let held = run.held_tokens();
        e.keep_parallel(run);
        let mut run = e.parallel(2).unwrap();
        assert_eq!(run.held_tokens(), held, "{what}: the kept run");
        let (got, ..) = run_in(&mut e, &mut run, &[(0, next.clone(), greedy.clone())]);
        assert!(got[0].cached_tokens >= p1.tokens.len(), "{what}: {} of {} cached", got[0].cached_tokens, next.tokens.len());
        let want = pollster::block_on(engine(dev()).generate_prompt(&next, &greedy, |_| None)).unwrap();
        assert_eq!(want.cached_tokens, 0);
        assert_eq!((&got[0].tokens, &got[0].text), (&want.tokens, &want.text), "{what}: the next turn's reply");
        // A run of another size starts empty, and so does one after new image settings.
        e.keep_parallel(run);
        let mut run = e.parallel(3).unwrap();
        assert_eq!(run.held_tokens(), 0, "{what}: a run of 3");
        run_in(&mut e, &mut run, &[(0, next.clone(), greedy.clone())]);
        assert!(run.held_tokens() > 0);
        e.keep_parallel(run);
        e.set_image_area(None, Some(1 << 20)).unwrap();
        assert_eq!(e.parallel(3).unwrap().held_tokens(), 0, "{what}: after new image settings");
    }
}

/// Steps `run` until `until` holds for the tokens streamed by sequence so far; returns them.
fn step_until(e: &mut Engine, run: &mut Parallel, mut until: impl FnMut(&HashMap<u64, usize>) -> bool) -> HashMap<u64, usize> {
    let mut streamed = HashMap::new();
    for _ in 0..100 {
        for event in pollster::block_on(run.step(e)).unwrap() {
            if let ParallelEvent::Text { id, .. } = event {
                *streamed.entry(id).or_default() += 1;
            }
        }
        if until(&streamed) {
            return streamed;
        }
    }
    panic!("not within 100 steps: {streamed:?}")
}

#[test]
fn a_cancelled_sequence_frees_its_slot() {
    let mut e = engine(cpu());
    let prompt = chat(&mut e, serde_json::json!([{ "role": "user", "content": "Hi" }]));
    let opts = GenerateOptions { max_tokens: 50, ignore_eos: true, ..GenerateOptions::default() };
    let mut run = e.parallel(2).unwrap();
    let (a, _) = pollster::block_on(run.admit(&mut e, &prompt, &opts)).unwrap();
    let (b, _) = pollster::block_on(run.admit(&mut e, &prompt, &opts)).unwrap();
    let full = pollster::block_on(run.admit(&mut e, &prompt, &opts)).map(|_| ()).unwrap_err();
    assert!(matches!(full, EngineError::Busy { running: 2 }), "{full}");
    let streamed = step_until(&mut e, &mut run, |s| s.len() == 2);
    let cancelled = pollster::block_on(run.cancel(a)).unwrap().expect("a is running");
    assert_eq!((cancelled.finish, cancelled.tokens.len()), (FinishReason::Abort, streamed[&a]));
    assert!(pollster::block_on(run.cancel(a)).unwrap().is_none(), "cancelled once");
    assert_eq!(run.running(), 1);
    let (c, _) = pollster::block_on(run.admit(&mut e, &prompt, &opts)).unwrap();
    let streamed = step_until(&mut e, &mut run, |s| s.contains_key(&c));
    assert!(!streamed.contains_key(&a) && streamed.contains_key(&b), "{streamed:?}");
    assert_eq!(run.running(), 2, "the slot went to the next request");
}

#[test]
fn a_long_prompt_is_prefilled_a_chunk_per_step_while_the_others_decode() {
    // The fixture's chunks are 16 tokens: a prompt of several chunks takes one chunk per step,
    // and the sequence already decoding gets its token at every one of those steps.
    let mut e = engine(cpu());
    let short = chat(&mut e, serde_json::json!([{ "role": "user", "content": "Hi" }]));
    let long =
        chat(&mut e, serde_json::json!([{ "role": "user", "content": "Count to ten, slowly, one number per line. ".repeat(8) }]));
    let opts = GenerateOptions { max_tokens: 60, ignore_eos: true, ..GenerateOptions::default() };
    let mut run = e.parallel(2).unwrap();
    let (s, _) = pollster::block_on(run.admit(&mut e, &short, &opts)).unwrap();
    step_until(&mut e, &mut run, |streamed| streamed.contains_key(&s));
    let (l, _) = pollster::block_on(run.admit(&mut e, &long, &opts)).unwrap();
    // What follows the template's system prompt, which the short prompt shares.
    let chunks = (long.tokens.len() - run.slots()[1].cached as usize).div_ceil(16);
    assert!(chunks >= 4, "{} tokens, {:?}", long.tokens.len(), run.slots());
    for step in 1..=chunks {
        let events = pollster::block_on(run.step(&mut e)).unwrap();
        let texts = |id| events.iter().filter(|ev| matches!(ev, ParallelEvent::Text { id: i, .. } if *i == id)).count();
        assert_eq!(texts(s), 1, "step {step}: the decoding sequence's token");
        assert_eq!(texts(l), usize::from(step == chunks), "step {step} of {chunks}: the long prompt's first token");
    }
}

/// Runs `run` until none of its sequences is left: each one's generation.
fn run_to_end(e: &mut Engine, run: &mut Parallel, mut events: Vec<ParallelEvent>) -> HashMap<u64, Generation> {
    let mut done = HashMap::new();
    loop {
        for event in events {
            match event {
                ParallelEvent::Done { id, generation } => assert!(done.insert(id, generation).is_none()),
                ParallelEvent::Failed { id, error } => panic!("sequence {id}: {error}"),
                ParallelEvent::Text { .. } => {}
            }
        }
        if run.running() == 0 {
            return done;
        }
        events = pollster::block_on(run.step(e)).unwrap();
    }
}

fn qwen35_engine(dev: Device) -> Engine {
    let model = MappedGguf::open(fixture("tiny_qwen35_a").join("model.gguf")).unwrap();
    let opts = ContextOptions { max_ctx: 256, max_chunk: 16, ..Default::default() };
    Engine::builder(dev).context(opts).load(&mut Eager(&model)).unwrap()
}

/// The tiny Mistral 3 VLM and Qwen3.5 (recurrent layers) on each backend: a name for
/// messages, and a maker of the engine.
fn families_on_backends() -> Vec<(String, impl Fn() -> Engine)> {
    type Make = fn(Device) -> Engine;
    let backends = [("CPU backend", cpu as fn() -> Device), ("GPU", gpu)];
    let families = [("Mistral 3", engine as Make), ("Qwen3.5", qwen35_engine)];
    let pairs = families.into_iter().flat_map(|f| backends.map(|b| (f, b)));
    pairs.map(|((family, make), (backend, dev))| (format!("{family} on the {backend}"), move || make(dev()))).collect()
}

/// `n` choices of one prompt (OpenAI's `n`): the prompt is prefilled once — the other
/// choices' prompt tokens are all cached — and choice `i` gives the tokens and logprobs the
/// prompt gives alone with the request's seed plus `i`; on a decoder with recurrent layers
/// (Qwen3.5) as on one with a KV cache only.
#[test]
fn choices_of_one_prompt_prefill_it_once_and_sample_as_they_do_alone() {
    for (what, make) in families_on_backends() {
        let mut e = make();
        let prompt = chat(&mut e, serde_json::json!([{ "role": "user", "content": "Say something long, please." }]));
        let sampling = SamplingParams { temperature: 1.5, seed: Some(11), ..Default::default() };
        let opts =
            GenerateOptions { max_tokens: 10, ignore_eos: true, sampling, logprobs: Some(2), ..GenerateOptions::default() };
        let mut run = e.parallel(4).unwrap();
        let (ids, events) = pollster::block_on(run.admit_choices(&mut e, &prompt, &opts, 3)).unwrap();
        assert_eq!(run.running(), 3, "{what}");
        let mut done = run_to_end(&mut e, &mut run, events);
        let choices: Vec<Generation> = ids.iter().map(|id| done.remove(id).unwrap()).collect();
        let cached: Vec<usize> = choices.iter().map(|g| g.cached_tokens).collect();
        assert_eq!(cached, [0, prompt.tokens.len(), prompt.tokens.len()], "{what}: one prefill");
        for (i, got) in choices.iter().enumerate() {
            let mut alone = opts.clone();
            alone.sampling.seed = Some(11 + i as u64);
            let want = pollster::block_on(make().generate_prompt(&prompt, &alone, |_| None)).unwrap();
            assert_eq!((&got.tokens, got.seed), (&want.tokens, want.seed), "{what}: choice {i}");
            let bits = |g: &Generation| g.logprobs.iter().map(|l| l.logprob.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(got), bits(&want), "{what}: choice {i}'s logprobs");
        }
        assert!(choices[1].tokens != choices[0].tokens || choices[2].tokens != choices[0].tokens, "{what}: all alike");
    }
}

/// `n` choices of a Llama 3.2 Vision prompt with an image: the first prefills it, the others
/// copy its state — self-attention rows, and each attaches the image's cross-attention store
/// — and choice `i` gives the tokens the prompt gives alone with the seed plus `i`.
#[test]
fn choices_of_an_image_prompt_on_llama_vision_sample_as_they_do_alone() {
    let folder = "tiny_mllama_a";
    let hf = HfModel::open(fixture(folder)).unwrap();
    let ctx = ContextOptions { max_ctx: 64, max_chunk: 64, ..Default::default() };
    let mut e = Engine::builder(gpu()).context(ctx).hf_text(hf.text_files()).load(&mut Eager(&hf)).unwrap();
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(&format!("{folder}/cases.json"))).unwrap()).unwrap();
    let tokens: Vec<u32> = serde_json::from_value(cases["cases"][0]["tokens"].clone()).unwrap();
    let image = e.image_features(&std::fs::read(fixture(&format!("{folder}/img_24x20.png"))).unwrap(), None).unwrap();
    let prompt = e.prompt_with_images(&tokens, vec![image]).unwrap();
    let sampling = SamplingParams { temperature: 1.5, seed: Some(5), ..Default::default() };
    let opts = GenerateOptions { max_tokens: 8, ignore_eos: true, sampling, ..GenerateOptions::default() };
    let mut run = e.parallel(3).unwrap();
    let (ids, events) = pollster::block_on(run.admit_choices(&mut e, &prompt, &opts, 3)).unwrap();
    let mut done = run_to_end(&mut e, &mut run, events);
    let choices: Vec<Generation> = ids.iter().map(|id| done.remove(id).unwrap()).collect();
    let cached: Vec<usize> = choices.iter().map(|g| g.cached_tokens).collect();
    assert_eq!(cached, [0, prompt.tokens.len(), prompt.tokens.len()], "one prefill");
    drop(run);
    for (i, got) in choices.iter().enumerate() {
        let mut alone = opts.clone();
        alone.sampling.seed = Some(5 + i as u64);
        let want = pollster::block_on(e.generate_prompt(&prompt, &alone, |_| None)).unwrap();
        assert_eq!(got.tokens, want.tokens, "choice {i}");
    }
    assert!(choices[1].tokens != choices[0].tokens || choices[2].tokens != choices[0].tokens, "all alike");
}

/// A choice waiting for a prompt that another choice was prefilling takes it over when that
/// one is cancelled.
#[test]
fn a_cancelled_first_choice_leaves_the_prompt_to_the_next() {
    let mut e = engine(cpu());
    let prompt = chat(&mut e, serde_json::json!([{ "role": "user", "content": "Count to ten, slowly. ".repeat(4) }]));
    let opts = GenerateOptions { max_tokens: 6, ignore_eos: true, ..GenerateOptions::default() };
    let mut run = e.parallel(2).unwrap();
    let (ids, _) = pollster::block_on(run.admit_choices(&mut e, &prompt, &opts, 2)).unwrap();
    pollster::block_on(run.step(&mut e)).unwrap();
    assert!(run.slots().iter().all(|s| s.prefilling), "{:?}", run.slots());
    assert_eq!(pollster::block_on(run.cancel(ids[0])).unwrap().unwrap().finish, FinishReason::Abort);
    let mut done = run_to_end(&mut e, &mut run, Vec::new());
    let want = pollster::block_on(engine(cpu()).generate_prompt(&prompt, &opts, |_| None)).unwrap();
    assert_eq!(done.remove(&ids[1]).unwrap().tokens, want.tokens);
}

/// A prompt starting like a running sequence's (a shared system prompt) copies the common
/// prefix from it instead of prefilling it, and gives the tokens it gets alone.
#[test]
fn a_prompt_sharing_a_running_sequences_prefix_copies_it() {
    for (what, dev) in [("CPU backend", cpu as fn() -> Device), ("GPU", gpu)] {
        let mut e = engine(dev());
        let system = "You are a careful assistant. Answer briefly and in plain words. ".repeat(3);
        let ask = |e: &mut Engine, q: &str| {
            chat(e, serde_json::json!([{ "role": "system", "content": system }, { "role": "user", "content": q }]))
        };
        let (a, b) = (ask(&mut e, "Hi"), ask(&mut e, "Count to ten."));
        let common = a.tokens.iter().zip(&b.tokens).take_while(|(x, y)| x == y).count();
        assert!(common >= 32, "{what}: {common} tokens in common");
        let opts = GenerateOptions { max_tokens: 8, ignore_eos: true, ..GenerateOptions::default() };
        let mut run = e.parallel(2).unwrap();
        let (first, _) = pollster::block_on(run.admit(&mut e, &a, &opts)).unwrap();
        step_until(&mut e, &mut run, |streamed| streamed.contains_key(&first));
        let (second, _) = pollster::block_on(run.admit(&mut e, &b, &opts)).unwrap();
        let got = run_to_end(&mut e, &mut run, Vec::new()).remove(&second).unwrap();
        assert_eq!(got.cached_tokens, common, "{what}: the common prefix copied");
        let want = pollster::block_on(engine(dev()).generate_prompt(&b, &opts, |_| None)).unwrap();
        assert_eq!((&got.tokens, &got.text), (&want.tokens, &want.text), "{what}");
        // Admitted together, before either ran: the second takes the prefix the first
        // prefilled meanwhile (its prefill waits, oldest first, for the step budget).
        let mut run = e.parallel(2).unwrap();
        let (_, _) = pollster::block_on(run.admit(&mut e, &a, &opts)).unwrap();
        let (second, _) = pollster::block_on(run.admit(&mut e, &b, &opts)).unwrap();
        let got = run_to_end(&mut e, &mut run, Vec::new()).remove(&second).unwrap();
        assert_eq!(got.cached_tokens, common, "{what}: the prefix prefilled meanwhile");
        assert_eq!((&got.tokens, &got.text), (&want.tokens, &want.text), "{what}");
        // Both prompts within one step's chunk: the second waits a step for the prefix the
        // first computes in it.
        let mut e = engine_with(dev(), ContextOptions { max_ctx: 256, max_chunk: 256, ..Default::default() });
        let mut run = e.parallel(2).unwrap();
        let (_, _) = pollster::block_on(run.admit(&mut e, &a, &opts)).unwrap();
        let (second, _) = pollster::block_on(run.admit(&mut e, &b, &opts)).unwrap();
        let got = run_to_end(&mut e, &mut run, Vec::new()).remove(&second).unwrap();
        assert_eq!(got.cached_tokens, common, "{what}: the prefix computed beside it");
        assert_eq!((&got.tokens, &got.text), (&want.tokens, &want.text), "{what}");
    }
}

/// A slot saves the sequence a prompt overwrites to the engine's prompt cache: with one slot,
/// a chat, then another, then the first chat's next turn — which copies the first chat back
/// from the saved prefix (its prompt counted as cached) and gives the tokens it gets alone.
#[test]
fn a_slot_keeps_what_it_overwrites_in_the_engines_prompt_cache() {
    let mut e = engine(cpu());
    let greedy = GenerateOptions { max_tokens: 8, ignore_eos: true, ..GenerateOptions::default() };
    let first = serde_json::json!([{ "role": "user", "content": "Say something long. ".repeat(6) }]);
    let p1 = chat(&mut e, first.clone());
    let other =
        chat(&mut e, serde_json::json!([{ "role": "system", "content": "Be brief." }, { "role": "user", "content": "Hi" }]));
    let mut run = e.parallel(1).unwrap();
    let (turn1, ..) = run_in(&mut e, &mut run, &[(0, p1.clone(), greedy.clone())]);
    run_in(&mut e, &mut run, &[(0, other, greedy.clone())]);
    assert_eq!(e.prompt_cache_stats().saved_tokens.len(), 1, "the first chat saved: {:?}", e.prompt_cache_stats());
    let mut messages = first.as_array().unwrap().clone();
    messages.push(serde_json::json!({ "role": "assistant", "content": turn1[0].text }));
    messages.push(serde_json::json!({ "role": "user", "content": "And then?" }));
    let next = chat(&mut e, serde_json::Value::Array(messages));
    let (got, ..) = run_in(&mut e, &mut run, &[(0, next.clone(), greedy.clone())]);
    assert!(got[0].cached_tokens >= p1.tokens.len(), "{} of {} cached", got[0].cached_tokens, next.tokens.len());
    let want = pollster::block_on(engine(cpu()).generate_prompt(&next, &greedy, |_| None)).unwrap();
    assert_eq!((&got[0].tokens, &got[0].text), (&want.tokens, &want.text));
}

/// A free slot's kept chat that the KV pool takes rows from is saved to the engine's prompt
/// cache first: two chats in two slots of a pool of 384 rows, then the second chat's next
/// turn, which grows past what the first chat's slot leaves it; then the first chat's next
/// turn copies its chat back from the saved prefix and gives the tokens it gets alone.
#[test]
fn a_free_slot_gives_its_rows_to_the_pool_after_saving_its_chat() {
    let mut e = engine_of(cpu(), 384);
    let greedy = |max_tokens| GenerateOptions { max_tokens, ignore_eos: true, ..GenerateOptions::default() };
    let user = |text: &str| serde_json::json!({ "role": "user", "content": text });
    let [first, second] = [user("Say something long."), user("Say something else.")].map(|m| vec![m]);
    let [p1, p2] = [&first, &second].map(|m| chat(&mut e, serde_json::Value::Array(m.clone())));
    let mut run = e.parallel(2).unwrap();
    run.set_kv_pool(KvPool { rows: 384, page: 16 }).unwrap();
    let (turn1, ..) = run_in(&mut e, &mut run, &[(0, p1.clone(), greedy(8)), (0, p2, greedy(8))]);
    assert_eq!(e.prompt_cache_stats().saved_tokens.len(), 0, "{:?}", e.prompt_cache_stats());
    let next_turn = |mut messages: Vec<serde_json::Value>, answer: &str, e: &mut Engine| {
        messages.extend([serde_json::json!({ "role": "assistant", "content": answer }), user("And then?")]);
        chat(e, serde_json::Value::Array(messages))
    };
    let next2 = next_turn(second, &turn1[1].text, &mut e);
    assert!(next2.tokens.len() + 120 + p1.tokens.len() > 400, "{} {}", next2.tokens.len(), p1.tokens.len());
    let (got2, ..) = run_in(&mut e, &mut run, &[(0, next2, greedy(120))]);
    assert!(got2[0].cached_tokens > 0, "the second chat's slot kept it");
    assert_eq!(e.prompt_cache_stats().saved_tokens.len(), 1, "the first chat saved: {:?}", e.prompt_cache_stats());
    let next1 = next_turn(first, &turn1[0].text, &mut e);
    let (got1, ..) = run_in(&mut e, &mut run, &[(0, next1.clone(), greedy(8))]);
    assert!(got1[0].cached_tokens >= p1.tokens.len(), "{} of {} cached", got1[0].cached_tokens, next1.tokens.len());
    let want = pollster::block_on(engine_of(cpu(), 384).generate_prompt(&next1, &greedy(8), |_| None)).unwrap();
    assert_eq!((&got1[0].tokens, &got1[0].text), (&want.tokens, &want.text));
}

/// Four requests of different kinds (greedy with logprobs, seeded, JSON-constrained, a
/// longer prompt) and on the tiny VLM one with an image, joining at steps 0 to 3, asking
/// for up to `most` tokens.
fn mixed_requests(e: &mut Engine, what: &str, most: u32) -> Vec<(usize, Prompt, GenerateOptions)> {
    let text = |e: &mut Engine, s: &str| chat(e, serde_json::json!([{ "role": "user", "content": s }]));
    let greedy = |max_tokens| GenerateOptions { max_tokens, ignore_eos: true, logprobs: Some(2), ..Default::default() };
    let seeded = SamplingParams { temperature: 0.9, top_k: 40, seed: Some(5), ..Default::default() };
    let mut requests = vec![
        (0, text(e, "Say something long."), greedy(most)),
        (0, text(e, "Hi"), GenerateOptions { sampling: seeded, ..greedy(most * 8 / 9) }),
        (1, text(e, "Give me JSON."), GenerateOptions { response_format: ResponseFormat::JsonObject, ..greedy(most * 7 / 9) }),
        (2, text(e, "Count to ten, slowly, one number per line, and then back."), greedy(most * 5 / 6)),
    ];
    if what.starts_with("Mistral 3") {
        // An image prompt: a recomputed sequence's features go back over its [IMG] rows.
        let image = serde_json::json!([{ "role": "user", "content": [
            { "type": "text", "text": "What is in the picture?" },
            { "type": "image_url", "image_url": { "url": "img_84x56.png" } }] }]);
        requests.push((3, chat(e, image), greedy(most * 2 / 3)));
    }
    requests
}

/// Each of `requests` gave in a run what it gives alone: its tokens, text (streamed as
/// well) and finish, and its logprobs within 1e-4 (a recomputed sequence's fed tokens come
/// back from prefill passes, not decode steps).
fn assert_as_alone(
    what: &str,
    e: &mut Engine,
    requests: &[(usize, Prompt, GenerateOptions)],
    got: &[Generation],
    streamed: &[String],
) {
    for (i, ((_, prompt, opts), got)) in requests.iter().zip(got).enumerate() {
        let want = pollster::block_on(e.generate_prompt(prompt, opts, |_| None)).unwrap();
        assert_eq!(got.tokens, want.tokens, "{what}: request {i}'s tokens");
        assert_eq!((&got.text, got.finish), (&want.text, want.finish), "{what}: request {i}");
        assert_eq!(streamed[i], got.text, "{what}: request {i}'s streamed text");
        for (g, w) in got.logprobs.iter().zip(&want.logprobs) {
            assert_eq!(g.token, w.token, "{what}: request {i}");
            assert!((g.logprob - w.logprob).abs() < 1e-4, "{what}: request {i}: {} against {}", g.logprob, w.logprob);
        }
    }
}

/// A KV pool of one sequence's context (256 rows, pages of 16) under four or five sequences
/// (one with an image) that together need more: the newest are preempted and recomputed,
/// never failed, the pool is never exceeded, and every request gives what it gives alone
/// ([`assert_as_alone`]); on a decoder with recurrent layers (Qwen3.5) as on one with a KV
/// cache only. A pool smaller than one context is refused.
#[test]
fn a_full_kv_pool_preempts_the_newest_sequence_and_recomputes_it() {
    for (what, make) in families_on_backends() {
        let mut e = make();
        let requests = mixed_requests(&mut e, &what, 90);
        let mut run = e.parallel(requests.len() as u32).unwrap();
        let small = run.set_kv_pool(KvPool { rows: 255, page: 16 });
        assert!(matches!(small, Err(EngineError::KvPoolTooSmall { least: 256, .. })), "{what}: {small:?}");
        run.set_kv_pool(KvPool { rows: 256, page: 16 }).unwrap();
        let mut held = 0;
        let (batched, streamed, widest) = run_checked(&mut e, &mut run, &requests, |run| {
            held = held.max(run.kv_rows_held());
            assert!(run.kv_rows_held() <= 256, "{what}: {:?}", run.slots());
        });
        assert!(widest == requests.len() && held > 200, "{what}: {widest} sequences, {held} rows at most");
        assert!(run.preemptions() > 0, "{what}: no sequence was preempted");
        assert_as_alone(&what, &mut e, &requests, &batched, &streamed);
        eprintln!("{what}: {} preemptions, {held} of 256 rows held at most", run.preemptions());
    }
}

/// A batched step that fails on a device that is not lost (made to fail once it has run:
/// its sequences hold part of it) fails no request: its sequences are recomputed and then
/// run in steps of their own. With every step of more than two sequences failing, each request
/// gives what it gives alone ([`assert_as_alone`]); with every step that runs a word of one
/// prompt failing, that request alone fails, with the step's error, once its steps are down
/// to that one row, and the others give what they give alone. On a decoder with recurrent
/// layers (Qwen3.5) as on one with a KV cache only.
#[test]
fn a_failed_step_recomputes_its_sequences_and_fails_only_a_step_of_one_row() {
    for (what, make) in families_on_backends() {
        let mut e = make();
        let requests = mixed_requests(&mut e, &what, 27);
        let mut run = e.parallel(requests.len() as u32).unwrap();
        run.fail_steps_when(|rows| rows.len() > 2);
        let (batched, streamed, _) = run_checked(&mut e, &mut run, &requests, |_| {});
        assert!(run.failed_steps() > 0, "{what}: no step failed");
        assert_as_alone(&what, &mut e, &requests, &batched, &streamed);
        eprintln!("{what}: {} failed steps", run.failed_steps());

        // A token of request 3's prompt that no other prompt has, on an engine that has not
        // cached the prompt (which would then run none of its rows), with its own image
        // features.
        let mut e = make();
        let requests = mixed_requests(&mut e, &what, 27);
        let others: Vec<u32> =
            requests.iter().enumerate().filter(|&(i, _)| i != 3).flat_map(|(_, r)| r.1.tokens.clone()).collect();
        let poison = *requests[3].1.tokens.iter().find(|t| !others.contains(t)).expect("a word of its own");
        let mut run = e.parallel(requests.len() as u32).unwrap();
        run.fail_steps_when(move |rows| rows.iter().any(|row| row.contains(&poison)));
        let (mut ended, streamed, _) = run_to_ends(&mut e, &mut run, &requests, |_| {});
        match ended.remove(3) {
            Err(error) => assert!(error.to_string().contains("failed on purpose"), "{what}: {error}"),
            Ok(done) => panic!("{what}: request 3 ran its poisoned row: {:?}", done.text),
        }
        let (mut requests, mut streamed) = (requests, streamed);
        let _ = (requests.remove(3), streamed.remove(3));
        let done: Vec<Generation> = ended.into_iter().map(|end| end.unwrap_or_else(|e| panic!("{what}: {e}"))).collect();
        assert_as_alone(&what, &mut e, &requests, &done, &streamed);
    }
}

/// The sequences of a failed step run alone until they decode again, then rejoin the batch:
/// with the first step in which every sequence decodes made to fail, the steps after it hold
/// several sequences again, and each request gives what it gives alone.
#[test]
fn sequences_rejoin_the_batch_after_a_failed_step() {
    for (what, make) in families_on_backends() {
        let mut e = make();
        let requests = mixed_requests(&mut e, &what, 27);
        let n = requests.len();
        let mut run = e.parallel(n as u32).unwrap();
        // The most sequences of a step after the failed one, once that has failed.
        let widest_after = std::rc::Rc::new(std::cell::Cell::new(None::<usize>));
        let seen = widest_after.clone();
        run.fail_steps_when(move |rows| match seen.get() {
            None => {
                let all_decode = rows.len() == n && rows.iter().all(|r| r.len() == 1);
                seen.set(all_decode.then_some(0));
                all_decode
            }
            Some(widest) => {
                seen.set(Some(widest.max(rows.len())));
                false
            }
        });
        let (batched, streamed, _) = run_checked(&mut e, &mut run, &requests, |_| {});
        assert_eq!(run.failed_steps(), 1, "{what}");
        let widest = widest_after.get().expect("a step in which every sequence decodes");
        assert!(widest >= 2, "{what}: the steps after the failed one held {widest} sequence at most");
        assert_as_alone(&what, &mut e, &requests, &batched, &streamed);
        eprintln!("{what}: {widest} sequences in a step after the failed one");
    }
}

/// A sequence preempted while decoding is prefilled again with the tokens it was fed: the
/// [IMG] tokens an image request was made to pick (by `logit_bias`) go back as text, as they
/// were fed, not as image rows. Both prompts fit the pool of 384 rows; some 50 steps into
/// decoding, the older request's growth preempts the image request, which is recomputed once
/// the older one is done.
#[test]
fn a_preempted_sequence_feeds_back_the_image_tokens_it_picked_as_text() {
    for (what, dev) in [("CPU backend", cpu as fn() -> Device), ("GPU", gpu)] {
        let mut e = engine_of(dev(), 384);
        let long = chat(&mut e, serde_json::json!([{ "role": "user", "content": "Say something long." }]));
        let image = chat(
            &mut e,
            serde_json::json!([{ "role": "user", "content": [
                { "type": "text", "text": "What is in the picture?" },
                { "type": "image_url", "image_url": { "url": "img_84x56.png" } }] }]),
        );
        assert!(long.tokens.len() + image.tokens.len() + 2 * 40 < 384, "{} {}", long.tokens.len(), image.tokens.len());
        let img = e.tokenizer().token_id("[IMG]").unwrap();
        assert!(image.tokens.contains(&img));
        let greedy = |max_tokens| GenerateOptions { max_tokens, ignore_eos: true, ..GenerateOptions::default() };
        let sampling = SamplingParams { logit_bias: vec![(img, 100.0)], ..Default::default() };
        let requests = [(0, long, greedy(200)), (0, image, GenerateOptions { sampling, ..greedy(100) })];
        let mut run = e.parallel(2).unwrap();
        run.set_kv_pool(KvPool { rows: 384, page: 16 }).unwrap();
        let (got, ..) = run_in(&mut e, &mut run, &requests);
        assert!(run.preemptions() > 0, "{what}: no preemption");
        assert!(got[1].tokens.iter().all(|&t| t == img), "{what}: {:?}", got[1].tokens);
        for (i, ((_, prompt, opts), got)) in requests.iter().zip(&got).enumerate() {
            let want = pollster::block_on(e.generate_prompt(prompt, opts, |_| None)).unwrap();
            assert_eq!(got.tokens, want.tokens, "{what}: request {i}");
        }
    }
}
