//! Batched decode steps (`DecodeBatch`): sequences of mixed prompt lengths join a running
//! batch at different steps and leave when their tokens are done (1 to 8 at once), and each
//! one's greedy tokens and every logits row are bit for bit those it gets decoding alone —
//! for each family's tiny model (Llama, Qwen3.5's hybrid of recurrent and attention layers,
//! Llama 3.2 Vision's cross-attention with one sequence holding an image) on the CPU backend
//! and on the GPU.

use crate::common;
use common::*;

use webvlm::backend::Device;
use webvlm::gguf::MappedGguf;
use webvlm::model::{Context, ContextOptions, DecodeBatch, Decoder, ModelError};
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

fn prefill(dev: &Device, dec: &Decoder, seq: &Seq) -> (Context, Vec<f32>) {
    let mut ctx = Context::new(dev, dec, OPTS).unwrap();
    if let Some(im) = &seq.image {
        ctx.set_cross_attention(dev, dec, &upload(dev, &im.states), im.n_tiles, &im.mask).unwrap();
    }
    ctx.submit_prompt(dev, dec, &seq.prompt, None).unwrap();
    let logits = pollster::block_on(ctx.read_logits(dev, dec)).unwrap();
    (ctx, logits)
}

/// The sequence decoded on a context of its own, one token per step.
fn alone(dev: &Device, dec: &Decoder, seq: &Seq) -> Run {
    let (mut ctx, mut logits) = prefill(dev, dec, seq);
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

/// The sequences through one batch: each prefilled alone at its join step, then decoded in
/// batched steps with whichever others are running; returns the runs and the most
/// sequences one step took.
fn batched(dev: &Device, dec: &Decoder, seqs: &[Seq]) -> (Vec<Run>, usize) {
    let mut batch = DecodeBatch::new(dev, dec, 8, OPTS.precision).unwrap();
    let mut running: Vec<Option<Context>> = seqs.iter().map(|_| None).collect();
    let mut runs: Vec<Run> = seqs.iter().map(|_| (vec![], vec![])).collect();
    let (mut step, mut widest) = (0, 0);
    while runs.iter().zip(seqs).any(|(r, s)| r.0.len() < s.tokens) {
        for (i, seq) in seqs.iter().enumerate().filter(|(_, s)| s.join == step) {
            let (ctx, logits) = prefill(dev, dec, seq);
            runs[i].0.push(argmax(&logits) as u32);
            runs[i].1.push(logits);
            running[i] = Some(ctx);
        }
        // Those with tokens still to generate feed their last one.
        let active: Vec<usize> = (0..seqs.len()).filter(|&i| running[i].is_some() && runs[i].0.len() < seqs[i].tokens).collect();
        if !active.is_empty() {
            let tokens: Vec<u32> = active.iter().map(|&i| *runs[i].0.last().unwrap()).collect();
            let mut ctxs: Vec<&mut Context> =
                running.iter_mut().enumerate().filter(|(i, _)| active.contains(i)).map(|(_, c)| c.as_mut().unwrap()).collect();
            let logits = pollster::block_on(batch.step(dev, dec, &mut ctxs, &tokens)).unwrap();
            for (&i, row) in active.iter().zip(logits.chunks(dec.cfg.vocab as usize)) {
                runs[i].0.push(argmax(row) as u32);
                runs[i].1.push(row.to_vec());
            }
            widest = widest.max(active.len());
        }
        // Finished sequences leave.
        (0..seqs.len()).filter(|&i| runs[i].0.len() == seqs[i].tokens).for_each(|i| running[i] = None);
        step += 1;
    }
    (runs, widest)
}

fn check(dev: &Device, dec: &Decoder, seqs: &[Seq], what: &str) {
    let (runs, widest) = batched(dev, dec, seqs);
    assert_eq!(widest, 8, "{what}: the batch reaches 8 sequences");
    for (i, (seq, run)) in seqs.iter().zip(&runs).enumerate() {
        let want = alone(dev, dec, seq);
        assert_eq!(run.0, want.0, "{what}: sequence {i}'s tokens");
        assert!(run.1 == want.1, "{what}: sequence {i}'s logits differ from its own, max |d| {}", max_row_diff(&run.1, &want.1));
    }
}

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

fn every_family(dev: &Device, backend: &str) {
    let dec = llama(dev);
    check(dev, &dec, &sequences(dec.cfg.vocab, 1), &format!("llama on {backend}"));
    let dec = qwen35(dev);
    check(dev, &dec, &sequences(dec.cfg.vocab, 2), &format!("qwen35 on {backend}"));
    let (dec, seqs) = mllama(dev);
    check(dev, &dec, &seqs, &format!("mllama on {backend}"));
}

#[test]
fn batched_sequences_decode_as_they_do_alone_on_the_cpu_backend() {
    every_family(&cpu(), "the CPU backend");
}

#[test]
fn batched_sequences_decode_as_they_do_alone_on_the_gpu() {
    every_family(&gpu(), "the GPU");
}

#[test]
fn a_batched_step_refuses_what_it_cannot_run() {
    let dev = cpu();
    let dec = llama(&dev);
    let mut batch = DecodeBatch::new(&dev, &dec, 2, OPTS.precision).unwrap();
    let seqs = sequences(dec.cfg.vocab, 4);
    let (mut a, _) = prefill(&dev, &dec, &seqs[0]);
    let (mut b, _) = prefill(&dev, &dec, &seqs[1]);
    let (mut c, _) = prefill(&dev, &dec, &seqs[2]);
    let mut fresh = Context::new(&dev, &dec, OPTS).unwrap();
    let step = |batch: &mut DecodeBatch, ctxs: &mut [&mut Context], tokens: &[u32]| {
        pollster::block_on(batch.step(&dev, &dec, ctxs, tokens)).unwrap_err()
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
