//! Batched steps (`StepBatch`): sequences of mixed prompt lengths join a running batch at
//! different steps and leave when their tokens are done (1 to 8 at once), and each one's
//! greedy tokens and every logits row are bit for bit those it gets decoding alone, or
//! within rounding when their prompts run in chunks inside the batched steps —
//! for each family's tiny model (Llama, Qwen3.5's hybrid of recurrent and attention layers,
//! Llama 3.2 Vision's cross-attention with one sequence holding an image) on the CPU backend
//! and on the GPU, where the sequences' caches may also be slots of one KV arena (RoPE and
//! attention of a step's sequences in one dispatch each).

use crate::common;
use common::*;

use std::rc::Rc;

use webvlm::backend::Device;
use webvlm::gguf::MappedGguf;
use webvlm::model::{BatchInput, Context, ContextOptions, Decoder, KvArena, ModelError, StepBatch};
use webvlm::source::hf::HfModel;

/// One sequence of a test: its prompt (and a cross-attention decoder's image states), the
/// batched step it joins at, how many tokens it generates.
struct Seq {
    prompt: Vec<u32>,
    image: Option<CrossImage>,
    join: usize,
    tokens: usize,
}

/// Projected image states, their tile count and the prompt's cross-attention mask.
struct CrossImage {
    states: Vec<f32>,
    n_tiles: u32,
    mask: Vec<u32>,
}

/// Greedy tokens and the logits row each was picked from.
type Run = (Vec<u32>, Vec<Vec<f32>>);

const OPTS: ContextOptions = ContextOptions { max_ctx: 96, max_chunk: 16, precision: webvlm::model::Precision::F32 };

/// Eight sequences over `vocab` (prompts of 1 to 37 tokens, two sharing a prefix), joining
/// so that the batch grows to 8 and shrinks again.
fn sequences(vocab: u32, seed: u64) -> Vec<Seq> {
    let mut rng = Rng::new(seed);
    let mut prompt = |n: usize| (0..n).map(|_| rng.below(vocab as u64) as u32).collect::<Vec<u32>>();
    let shared = prompt(12);
    let lengths = [(5, 0, 9), (37, 0, 14), (1, 1, 7), (9, 2, 11), (20, 3, 6), (3, 3, 12), (0, 4, 8), (7, 6, 5)];
    (lengths.iter().enumerate())
        .map(|(i, &(len, join, tokens))| {
            let prompt = match i {
                // Two sequences with a common prefix.
                6 => [shared.clone(), prompt(4)].concat(),
                3 => [shared.clone(), prompt(len)].concat(),
                _ => prompt(len),
            };
            Seq { prompt, image: None, join, tokens }
        })
        .collect()
}

/// A context for `seq` (given its image states), nothing run yet: of its own, or a slot of
/// `arena`.
fn new_context(dev: &Device, dec: &Decoder, seq: &Seq, arena: Option<&Rc<KvArena>>) -> Context {
    let mut ctx = match arena {
        Some(arena) => Context::in_arena(dev, dec, OPTS, arena).unwrap().expect("a free slot"),
        None => Context::new(dev, dec, OPTS).unwrap(),
    };
    if let Some(im) = &seq.image {
        ctx.set_cross_attention(dev, dec, &upload(dev, &im.states), im.n_tiles, &im.mask).unwrap();
    }
    ctx
}

fn prefill(dev: &Device, dec: &Decoder, seq: &Seq, arena: Option<&Rc<KvArena>>) -> (Context, Vec<f32>) {
    let mut ctx = new_context(dev, dec, seq, arena);
    ctx.submit_prompt(dev, dec, &seq.prompt, None).unwrap();
    let logits = pollster::block_on(ctx.read_logits(dev, dec)).unwrap();
    (ctx, logits)
}

/// The sequence decoded on a context of its own, one token per step.
fn alone(dev: &Device, dec: &Decoder, seq: &Seq) -> Run {
    let (mut ctx, mut logits) = prefill(dev, dec, seq, None);
    let (mut tokens, mut rows) = (vec![], vec![]);
    loop {
        tokens.push(argmax(&logits) as u32);
        rows.push(logits);
        if tokens.len() == seq.tokens {
            return (tokens, rows);
        }
        ctx.submit_token(dev, dec, *tokens.last().unwrap()).unwrap();
        logits = pollster::block_on(ctx.read_logits(dev, dec)).unwrap();
    }
}

/// How a sequence joins the batch.
#[derive(Clone, Copy, PartialEq)]
enum Join {
    /// Prefilled alone at its join step, then decoded in batched steps.
    Alone,
    /// Its prompt run in chunks by the batched steps, beside the others' tokens (a step's
    /// rows within a chunk's, the oldest prompt first).
    Chunked,
    /// As `Alone`, in a slot of one KV arena (GPU).
    Arena,
}

/// The sequences through one batch: each joining at its step, then decoded in batched
/// steps with whichever others are running; returns the runs, the most sequences one step
/// took and the steps that held both a prompt chunk and tokens.
fn batched(dev: &Device, dec: &Decoder, seqs: &[Seq], join: Join) -> (Vec<Run>, usize, usize) {
    let mut batch = StepBatch::new(dev, dec, 8, OPTS.max_chunk, OPTS.precision).unwrap();
    let arena = (join == Join::Arena).then(|| Context::arena(dev, dec, OPTS, 8).unwrap());
    let mut running: Vec<Option<Context>> = seqs.iter().map(|_| None).collect();
    let mut runs: Vec<Run> = seqs.iter().map(|_| (vec![], vec![])).collect();
    let (mut step, mut widest, mut mixed) = (0, 0, 0);
    while runs.iter().zip(seqs).any(|(r, s)| r.0.len() < s.tokens) {
        for (i, seq) in seqs.iter().enumerate().filter(|(_, s)| s.join == step) {
            running[i] = Some(match join {
                Join::Alone | Join::Arena => {
                    let (ctx, logits) = prefill(dev, dec, seq, arena.as_ref());
                    runs[i].0.push(argmax(&logits) as u32);
                    runs[i].1.push(logits);
                    ctx
                }
                Join::Chunked => new_context(dev, dec, seq, None),
            });
        }
        // Those with tokens still to generate feed their last one; prompts run a chunk, the
        // step's rows within one chunk's (as `engine::Parallel` plans them).
        let live = |i: usize| running[i].is_some() && runs[i].0.len() < seqs[i].tokens;
        let decoding = (0..seqs.len()).filter(|&i| live(i) && !runs[i].0.is_empty()).count();
        let (mut active, mut inputs) = (vec![], vec![]);
        let mut budget = (OPTS.max_chunk as usize).saturating_sub(decoding).max(1);
        for (i, seq) in seqs.iter().enumerate() {
            let (Some(ctx), true) = (&running[i], live(i)) else { continue };
            let n_past = ctx.n_past() as usize;
            if !runs[i].0.is_empty() {
                inputs.push(BatchInput::Token(*runs[i].0.last().unwrap()));
            } else if budget > 0 {
                let end = seq.prompt.len().min(n_past + budget);
                budget -= end - n_past;
                inputs.push(BatchInput::Chunk { tokens: &seq.prompt, end, images: None });
            } else {
                continue;
            }
            active.push(i);
        }
        if !active.is_empty() {
            let tokens = inputs.iter().filter(|i| matches!(i, BatchInput::Token(_))).count();
            mixed += (tokens > 0 && tokens < inputs.len()) as usize;
            let ends: Vec<bool> = (inputs.iter())
                .map(|i| match i {
                    BatchInput::Token(_) => true,
                    BatchInput::Chunk { tokens, end, .. } => *end == tokens.len(),
                })
                .collect();
            let mut ctxs: Vec<&mut Context> =
                running.iter_mut().enumerate().filter(|(i, _)| active.contains(i)).map(|(_, c)| c.as_mut().unwrap()).collect();
            let logits = pollster::block_on(batch.step(dev, dec, &mut ctxs, inputs)).unwrap();
            for ((&i, row), end) in active.iter().zip(logits.chunks(dec.cfg.vocab as usize)).zip(ends) {
                if end {
                    runs[i].0.push(argmax(row) as u32);
                    runs[i].1.push(row.to_vec());
                }
            }
            widest = widest.max(active.len());
        }
        // Finished sequences leave.
        (0..seqs.len()).filter(|&i| runs[i].0.len() == seqs[i].tokens).for_each(|i| running[i] = None);
        step += 1;
    }
    (runs, widest, mixed)
}

/// Checks every sequence's tokens against its own run, and its logits: bit for bit when each
/// joins prefilled alone (decode steps only), within `tolerance` when prompts run in the
/// batched steps (a step holding a chunk runs its products on the prefill kernel).
fn check(dev: &Device, dec: &Decoder, seqs: &[Seq], join: Join, what: &str) {
    let (runs, widest, mixed) = batched(dev, dec, seqs, join);
    assert_eq!(widest, 8, "{what}: the batch reaches 8 sequences");
    if join == Join::Chunked {
        assert!(mixed >= 4, "{what}: {mixed} steps held both prompt chunks and tokens");
    }
    for (i, (seq, run)) in seqs.iter().zip(&runs).enumerate() {
        let want = alone(dev, dec, seq);
        assert_eq!(run.0, want.0, "{what}: sequence {i}'s tokens");
        let diff = max_row_diff(&run.1, &want.1);
        match join {
            Join::Alone | Join::Arena => {
                assert!(run.1 == want.1, "{what}: sequence {i}'s logits differ from its own, max |d| {diff}")
            }
            Join::Chunked => assert!(diff <= LOGITS_TOLERANCE, "{what}: sequence {i}'s logits differ from its own by {diff}"),
        }
    }
}

/// Largest difference of a logit from the sequence's own (f32 rounding of the tiled matmul
/// against the decode kernel, through a few layers of a tiny model).
const LOGITS_TOLERANCE: f32 = 1e-4;

fn max_row_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().zip(b).map(|(a, b)| max_abs(a, b)).fold(0.0, f32::max)
}

fn llama(dev: &Device) -> Decoder {
    Decoder::load(dev, &MappedGguf::open(fixture("tiny_mistral3_b").join("model.gguf")).unwrap()).unwrap()
}

fn qwen35(dev: &Device) -> Decoder {
    Decoder::load(dev, &MappedGguf::open(fixture("tiny_qwen35_a").join("model.gguf")).unwrap()).unwrap()
}

/// The tiny Llama 3.2 Vision decoder, and sequences of which the second holds an image (the
/// fixture's first case: its tokens, states and mask).
fn mllama(dev: &Device) -> (Decoder, Vec<Seq>) {
    let dec = Decoder::load(dev, &HfModel::open(fixture("tiny_mllama_a")).unwrap()).unwrap();
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("tiny_mllama_a/cases.json")).unwrap()).unwrap();
    let case = &cases["cases"][0];
    let file = |key: &str| read_npy(&fixture(&format!("tiny_mllama_a/{}", case[key].as_str().unwrap())));
    let ((_, states), (shape, mask)) = (file("cross_attention_states"), file("cross_attention_mask"));
    let mut seqs = sequences(dec.cfg.vocab, 3);
    seqs[1].prompt = case["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    let n_tiles = (shape[1] * shape[2]) as u32;
    seqs[1].image = Some(CrossImage { states, n_tiles, mask: mask.iter().map(|&v| v as u32).collect() });
    (dec, seqs)
}

fn every_family(dev: &Device, backend: &str, join: Join) {
    let dec = llama(dev);
    check(dev, &dec, &sequences(dec.cfg.vocab, 1), join, &format!("llama on {backend}"));
    let dec = qwen35(dev);
    check(dev, &dec, &sequences(dec.cfg.vocab, 2), join, &format!("qwen35 on {backend}"));
    let (dec, seqs) = mllama(dev);
    check(dev, &dec, &seqs, join, &format!("mllama on {backend}"));
}

#[test]
fn batched_sequences_decode_as_they_do_alone_on_the_cpu_backend() {
    every_family(&cpu(), "the CPU backend", Join::Alone);
}

#[test]
fn batched_sequences_decode_as_they_do_alone_on_the_gpu() {
    every_family(&gpu(), "the GPU", Join::Alone);
}

#[test]
fn batched_sequences_in_one_kv_arena_decode_as_they_do_alone_on_the_gpu() {
    every_family(&gpu(), "the GPU, in one KV arena", Join::Arena);
}

#[test]
fn prompts_chunked_beside_decoding_sequences_run_as_they_do_alone_on_the_cpu_backend() {
    every_family(&cpu(), "the CPU backend", Join::Chunked);
}

#[test]
fn prompts_chunked_beside_decoding_sequences_run_as_they_do_alone_on_the_gpu() {
    every_family(&gpu(), "the GPU", Join::Chunked);
}

#[test]
fn a_batched_step_refuses_what_it_cannot_run() {
    let dev = cpu();
    let dec = llama(&dev);
    let mut batch = StepBatch::new(&dev, &dec, 2, OPTS.max_chunk, OPTS.precision).unwrap();
    let seqs = sequences(dec.cfg.vocab, 4);
    let (mut a, _) = prefill(&dev, &dec, &seqs[0], None);
    let (mut b, _) = prefill(&dev, &dec, &seqs[1], None);
    let (mut c, _) = prefill(&dev, &dec, &seqs[2], None);
    let mut fresh = Context::new(&dev, &dec, OPTS).unwrap();
    let step = |batch: &mut StepBatch, ctxs: &mut [&mut Context], tokens: &[u32]| {
        pollster::block_on(batch.decode(&dev, &dec, ctxs, tokens)).unwrap_err()
    };
    let invalid = |e: ModelError| matches!(e, ModelError::Invalid(_));
    assert!(invalid(step(&mut batch, &mut [&mut a, &mut b, &mut c], &[1, 1, 1])), "more sequences than the batch holds");
    assert!(invalid(step(&mut batch, &mut [&mut a], &[1, 1])), "a token per sequence");
    assert!(invalid(step(&mut batch, &mut [&mut fresh], &[1])), "a sequence not prefilled");
    let vocab = dec.cfg.vocab;
    assert!(matches!(step(&mut batch, &mut [&mut a], &[vocab]), ModelError::BadToken { .. }));
    let before = (a.n_past(), b.n_past());
    let err = step(&mut batch, &mut [&mut a, &mut b], &[1, vocab]);
    assert!(matches!(err, ModelError::BadToken { .. }), "{err}");
    assert_eq!((a.n_past(), b.n_past()), before, "a refused step feeds no sequence");
}
