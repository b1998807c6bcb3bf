//! Unit tests of the memory plan on synthetic headers (metadata + tensor infos built in
//! memory, no weights): Mistral Small 3.1 24B and Ministral 3 3B at llama.cpp's Q4_K_M type
//! mix with their F16 Pixtral mmprojs, and a BF16 source for `choose_quant`.

use super::*;
use crate::gguf::MetaValue;

const GIB: u64 = 1 << 30;

/// WebGPU's default-ish limits of a desktop browser: 2 GiB buffers, 1 GiB bindings.
const LIMITS: PlanLimits = PlanLimits { max_buffer: 2 * GIB, max_storage_binding: GIB, repacked_weights: false };

struct Shape {
    arch: &'static str,
    n_embd: u32,
    n_layer: u32,
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    n_ff: u32,
    vocab: u32,
    tied: bool,
}

/// Mistral Small 3.1 24B (`docs/MODELS.md`).
const MISTRAL_SMALL: Shape = Shape {
    arch: "mistral3",
    n_embd: 5120,
    n_layer: 40,
    n_head: 32,
    n_head_kv: 8,
    head_dim: 128,
    n_ff: 32768,
    vocab: 131072,
    tied: false,
};
/// Ministral 3 3B.
const MINISTRAL_3B: Shape = Shape {
    arch: "mistral3",
    n_embd: 3072,
    n_layer: 26,
    n_head: 32,
    n_head_kv: 8,
    head_dim: 128,
    n_ff: 9216,
    vocab: 131072,
    tied: true,
};

fn tensor(name: String, dims: &[u64], ty: GgmlType) -> TensorInfo {
    TensorInfo { name, dims: dims.to_vec(), ty, offset: 0 }
}

/// The text model's metadata and tensors; `matrix(kind)` gives each matrix's type.
fn text_headers(s: &Shape, matrix: impl Fn(&str) -> GgmlType) -> (Metadata, Vec<TensorInfo>) {
    let mut md = Metadata::new();
    let mut kv = |k: &str, v: MetaValue| {
        md.insert(if k.starts_with("general.") { k.into() } else { format!("{}.{k}", s.arch) }, v).unwrap()
    };
    kv("general.architecture", MetaValue::String(s.arch.into()));
    kv("block_count", MetaValue::U32(s.n_layer));
    kv("context_length", MetaValue::U32(131072));
    kv("embedding_length", MetaValue::U32(s.n_embd));
    kv("feed_forward_length", MetaValue::U32(s.n_ff));
    kv("attention.head_count", MetaValue::U32(s.n_head));
    kv("attention.head_count_kv", MetaValue::U32(s.n_head_kv));
    kv("attention.key_length", MetaValue::U32(s.head_dim));
    kv("rope.freq_base", MetaValue::F32(1e9));
    let (d, q, kvd, ff) = (s.n_embd as u64, (s.n_head * s.head_dim) as u64, (s.n_head_kv * s.head_dim) as u64, s.n_ff as u64);
    let mut t = vec![
        tensor("token_embd.weight".into(), &[d, s.vocab as u64], matrix("token_embd")),
        tensor("output_norm.weight".into(), &[d], GgmlType::F32),
    ];
    if !s.tied {
        t.push(tensor("output.weight".into(), &[d, s.vocab as u64], matrix("output")));
    }
    for i in 0..s.n_layer {
        let n = |k: &str| format!("blk.{i}.{k}.weight");
        t.extend([
            tensor(n("attn_norm"), &[d], GgmlType::F32),
            tensor(n("attn_q"), &[d, q], matrix("attn_q")),
            tensor(n("attn_k"), &[d, kvd], matrix("attn_k")),
            tensor(n("attn_v"), &[d, kvd], matrix("attn_v")),
            tensor(n("attn_output"), &[q, d], matrix("attn_output")),
            tensor(n("ffn_norm"), &[d], GgmlType::F32),
            tensor(n("ffn_gate"), &[d, ff], matrix("ffn_gate")),
            tensor(n("ffn_up"), &[d, ff], matrix("ffn_up")),
            tensor(n("ffn_down"), &[ff, d], matrix("ffn_down")),
        ]);
    }
    (md, t)
}

/// llama.cpp's Q4_K_M mix (simplified: Q6_K for attn_v, ffn_down and the head).
fn q4_k_m(kind: &str) -> GgmlType {
    match kind {
        "attn_v" | "ffn_down" | "output" => GgmlType::Q6_K,
        _ => GgmlType::Q4_K,
    }
}

/// A Pixtral mmproj (hidden 1024, 24 layers, FFN 4096, F16 matrices) projecting to `text_hidden`.
fn pixtral_headers(text_hidden: u32) -> (Metadata, Vec<TensorInfo>) {
    let mut md = Metadata::new();
    let mut kv = |k: &str, v: MetaValue| md.insert(k.into(), v).unwrap();
    let rgb =
        |v: [f32; 3]| MetaValue::Array { elem: crate::gguf::ValueType::F32, items: v.into_iter().map(MetaValue::F32).collect() };
    kv("general.architecture", MetaValue::String("clip".into()));
    kv("clip.projector_type", MetaValue::String("pixtral".into()));
    kv("clip.vision.embedding_length", MetaValue::U32(1024));
    kv("clip.vision.block_count", MetaValue::U32(24));
    kv("clip.vision.feed_forward_length", MetaValue::U32(4096));
    kv("clip.vision.projection_dim", MetaValue::U32(text_hidden));
    kv("clip.vision.patch_size", MetaValue::U32(14));
    kv("clip.vision.image_size", MetaValue::U32(1540));
    kv("clip.vision.spatial_merge_size", MetaValue::U32(2));
    kv("clip.vision.attention.head_count", MetaValue::U32(16));
    kv("clip.vision.attention.layer_norm_epsilon", MetaValue::F32(1e-5));
    kv("clip.vision.image_mean", rgb([0.48, 0.46, 0.41]));
    kv("clip.vision.image_std", rgb([0.27, 0.26, 0.28]));
    let (d, ff, th) = (1024u64, 4096u64, text_hidden as u64);
    let f16 = GgmlType::F16;
    let mut t = vec![
        tensor("v.patch_embd.weight".into(), &[14, 14, 3, d], f16),
        tensor("v.pre_ln.weight".into(), &[d], GgmlType::F32),
        tensor("mm.input_norm.weight".into(), &[d], GgmlType::F32),
        tensor("mm.patch_merger.weight".into(), &[4 * d, d], f16),
        tensor("mm.1.weight".into(), &[d, th], f16),
        tensor("mm.2.weight".into(), &[th, th], f16),
    ];
    for i in 0..24 {
        let n = |k: &str| format!("v.blk.{i}.{k}.weight");
        t.extend([
            tensor(n("ln1"), &[d], GgmlType::F32),
            tensor(n("ln2"), &[d], GgmlType::F32),
            tensor(n("attn_q"), &[d, d], f16),
            tensor(n("attn_k"), &[d, d], f16),
            tensor(n("attn_v"), &[d, d], f16),
            tensor(n("attn_out"), &[d, d], f16),
            tensor(n("ffn_gate"), &[d, ff], f16),
            tensor(n("ffn_up"), &[d, ff], f16),
            tensor(n("ffn_down"), &[ff, d], f16),
        ]);
    }
    (md, t)
}

fn plan(text: &(Metadata, Vec<TensorInfo>), mmproj: Option<&(Metadata, Vec<TensorInfo>)>, opts: PlanOptions) -> MemoryPlan {
    MemoryPlan::new(headers(text), mmproj.map(headers), LIMITS, opts).unwrap()
}

fn headers(x: &(Metadata, Vec<TensorInfo>)) -> ModelHeaders<'_> {
    ModelHeaders { metadata: &x.0, tensors: &x.1 }
}

#[test]
fn mistral_small_24b_is_refused_on_8_gib_and_fits_24_gib_at_4k() {
    let text = text_headers(&MISTRAL_SMALL, q4_k_m);
    let vision = pixtral_headers(5120);
    let p = plan(&text, Some(&vision), PlanOptions { ctx: 4096, ..Default::default() });
    // ~14.2 GiB of weights at this mix (llama.cpp's file: 13.3 GiB, half its ffn_down Q4_K); 40 layers x 2 x 1024 f16 = 160 KiB of KV cache per token.
    assert!((13 * GIB..15 * GIB).contains(&p.text_weights), "{}", p.text_weights);
    assert_eq!(p.state_per_token, 160 << 10);
    assert_eq!(p.state, 4096 * (160 << 10));
    // The F16 vision tower + projector: ~0.44 B parameters.
    assert!((800 << 20..1000 << 20).contains(&p.vision_weights), "{}", p.vision_weights);
    assert!(p.check(MemoryBudget::Bytes(24 * GIB)).is_ok());

    let small = MemoryBudget::Bytes(8 * GIB);
    assert_eq!(p.largest_context(small), None, "not even the weights fit");
    let err = p.check(small).unwrap_err();
    assert!(matches!(err, ModelError::DoesNotFit { largest_ctx: 0, available, .. } if available == 8 * GIB), "{err}");
    assert_eq!(crate::error::Classify::class(&err), crate::error::ErrorClass::AdapterTooSmall);
    assert!(err.to_string().contains("no context fits"), "{err}");

    // 18 GiB: the weights fit, the model's 131072 positions (20 GiB of cache) do not.
    let mid = MemoryBudget::Bytes(18 * GIB);
    let long = plan(&text, Some(&vision), PlanOptions { ctx: 131072, ..Default::default() });
    let err = long.check(mid).unwrap_err();
    let largest = long.largest_context(mid).unwrap();
    assert!(matches!(err, ModelError::DoesNotFit { largest_ctx, .. } if largest_ctx == largest), "{err}");
    assert!((4096..131072).contains(&largest), "{largest}");
    let at = |ctx| plan(&text, Some(&vision), PlanOptions { ctx, ..Default::default() });
    assert!(at(largest).check(mid).is_ok());
    assert!(at(largest + 1).check(mid).is_err());
    assert!(err.to_string().contains(&format!("the largest context that fits is {largest} tokens")), "{err}");
}

#[test]
fn ministral_3b_fits_4_gib() {
    let budget = MemoryBudget::Bytes(4 * GIB);
    let text = text_headers(&MINISTRAL_3B, q4_k_m);
    let p = plan(&text, None, PlanOptions::default());
    assert!(p.check(budget).is_ok(), "{p:?}");
    assert_eq!(p.largest_context(MemoryBudget::Unknown), Some(131072));
    assert!(p.check(MemoryBudget::Unknown).is_ok());
    // With its F16 vision tower (0.8 GiB) and the scratch of a 1540-pixel image (0.6 GiB),
    // 4 GiB holds a shorter context (measured: ~3.3k tokens at 104 KiB each).
    let with_vision = plan(&text, Some(&pixtral_headers(3072)), PlanOptions::default());
    assert!(with_vision.check(budget).is_err());
    let largest = with_vision.largest_context(budget).unwrap();
    assert!((2048..4096).contains(&largest), "{largest}");
}

#[test]
fn the_cpu_backends_repacked_copies_are_counted() {
    // Where the CPU backend repacks its matrices, each product's matrix is counted
    // twice (its repacked copy is a little larger); an untied model's token embedding is a
    // table, not a product's, and the tied one is the LM head's.
    let opts = PlanOptions { ctx: 4096, ..Default::default() };
    let repacking = PlanLimits { repacked_weights: true, ..LIMITS };
    for shape in [&MINISTRAL_3B, &MISTRAL_SMALL] {
        let text = text_headers(shape, q4_k_m);
        let (alone, repacked) = (plan(&text, None, opts), MemoryPlan::new(headers(&text), None, repacking, opts).unwrap());
        let copies: u64 = text
            .1
            .iter()
            .filter(|t| t.dims.len() == 2 && (shape.tied || t.name != "token_embd.weight"))
            .map(|t| Repacked::bytes_for(t.ty, t.dims[1] as usize, t.dims[0] as usize))
            .sum();
        assert!(copies > alone.text_weights * 9 / 10, "{copies} of {}", alone.text_weights);
        assert_eq!(repacked.text_weights, alone.text_weights + copies, "tied: {}", shape.tied);
        assert_eq!(repacked.state, alone.state);
    }
}

#[test]
fn kv_cache_over_the_binding_limit_is_refused() {
    let text = text_headers(&MISTRAL_SMALL, q4_k_m);
    let h = ModelHeaders { metadata: &text.0, tensors: &text.1 };
    // One layer's f32 cache row is 4 KiB: a 64 MiB binding holds 16384 positions.
    let limits = PlanLimits { max_buffer: 64 << 20, max_storage_binding: 64 << 20, repacked_weights: false };
    let opts = PlanOptions { ctx: 16385, kv: KvDtype::F32, ..Default::default() };
    let err = MemoryPlan::new(h, None, limits, opts).unwrap_err();
    assert!(matches!(err, ModelError::BufferTooLarge { limit, .. } if limit == 64 << 20), "{err}");
    let ok = MemoryPlan::new(h, None, limits, PlanOptions { ctx: 16384, ..opts }).unwrap();
    assert_eq!(ok.ctx_buffer_limit, 16384);
}

#[test]
fn choose_quant_picks_q8_0_when_it_fits_else_4_bit() {
    let text = text_headers(&MISTRAL_SMALL, |_| GgmlType::BF16);
    let h = ModelHeaders { metadata: &text.0, tensors: &text.1 };
    let opts = PlanOptions { ctx: 4096, ..Default::default() };
    let choose = |gib: u64| MemoryPlan::choose_quant(h, None, LIMITS, opts, MemoryBudget::Bytes(gib * GIB));
    // BF16 blocks: ~44 GiB; Q8_0 ~23 GiB (the embedding and head requantized too, as
    // `source::Requantize` does); Q4_0 ~13 GiB.
    assert_eq!(choose(32).unwrap(), LoadQuant::Q8_0);
    assert_eq!(choose(18).unwrap(), LoadQuant::Q4_0);
    assert!(matches!(choose(8), Err(ModelError::DoesNotFit { .. })));
    // An already quantized file keeps its types.
    let q = text_headers(&MISTRAL_SMALL, q4_k_m);
    let qh = ModelHeaders { metadata: &q.0, tensors: &q.1 };
    assert_eq!(MemoryPlan::choose_quant(qh, None, LIMITS, opts, MemoryBudget::Bytes(GIB)).unwrap(), LoadQuant::Keep);
}

#[test]
fn budgets_parse_with_binary_units() {
    let p = |s: &str| s.parse::<MemoryBudget>();
    assert_eq!(p("8G"), Ok(MemoryBudget::Bytes(8 * GIB)));
    assert_eq!(p("8GiB"), Ok(MemoryBudget::Bytes(8 * GIB)));
    assert_eq!(p("1.5g"), Ok(MemoryBudget::Bytes(3 * GIB / 2)));
    assert_eq!(p("512M"), Ok(MemoryBudget::Bytes(512 << 20)));
    assert_eq!(p("4096"), Ok(MemoryBudget::Bytes(4096)));
    for bad in ["", "G", "8X", "-1G", "0", "1e30T"] {
        assert!(p(bad).is_err(), "{bad:?}");
    }
}

/// Llama 3.2 11B Vision's headers as its Hugging Face folder maps them (BF16, the encoder in
/// the same view): the encoder's tensors are the vision weights, the 32 self-attention
/// layers keep a KV cache, the 8 cross layers an image store.
#[cfg(feature = "synthetic")]
fn mllama_11b_headers() -> (Metadata, Vec<TensorInfo>) {
    use crate::model::synthetic::MllamaShape;
    use crate::source::hf::{HfConfig, HfTensors};
    let shape = MllamaShape::llama32_11b_vision();
    let cfg = HfConfig::parse(shape.config_json().to_string().as_bytes()).unwrap();
    let stored = shape.hf_tensors();
    let tensors = HfTensors::new(&cfg, stored.iter().map(|(n, d)| (n.as_str(), GgmlType::BF16, d.as_slice()))).unwrap();
    (cfg.metadata(), tensors.iter().map(|t| t.info.clone()).collect())
}

#[test]
#[cfg(feature = "synthetic")]
fn llama_3_2_11b_vision_splits_its_encoder_and_plans_the_image_store() {
    let model = mllama_11b_headers();
    let p = plan(&model, None, PlanOptions { ctx: 4096, chunk: 512, ..Default::default() });
    // 32 self-attention layers x 2 x 1024 f16 = 128 KiB per token.
    assert_eq!(p.state_per_token, 128 << 10);
    assert_eq!(p.state, 4096 * (128 << 10));
    // 8 cross layers x keys and values of 4 x 1601 image tokens x 1024 f32, and the mask rows
    // of a 512-token chunk x 4 tiles.
    assert_eq!(p.cross_store, 8 * 2 * 4 * (4 * 1601) * 1024 + 4 * 512 * 4);
    // BF16: the text model ~9.8 B parameters, the encoder and projector ~0.89 B.
    assert!((19_000_000_000..20_500_000_000).contains(&p.text_weights), "{}", p.text_weights);
    assert!((1_700_000_000..1_850_000_000).contains(&p.vision_weights), "{}", p.vision_weights);
    // One 4-tile image's encoder buffers: seven 6432 x 1280 activations, the 6404 x 7680
    // features, the 6404 x 4096 states, ...
    assert!((600 << 20..800 << 20).contains(&p.vision_scratch), "{}", p.vision_scratch);

    // Requantized as the CLI loads a folder: the encoder's matrices too, its tables not
    // (the 9 x 4 x 1601 x 1280 tile position table alone is 147 MB of BF16).
    let q8 = plan(&model, None, PlanOptions { ctx: 4096, chunk: 512, text_quant: LoadQuant::Q8_0, ..Default::default() });
    assert!((10_000_000_000..11_000_000_000).contains(&q8.text_weights), "{}", q8.text_weights);
    assert!((950_000_000..1_100_000_000).contains(&q8.vision_weights), "{}", q8.vision_weights);
    // 8 GiB hold it at 4-bit, not at Q8_0.
    let opts = PlanOptions { ctx: 4096, chunk: 512, ..Default::default() };
    let choose = |gib: u64| MemoryPlan::choose_quant(headers(&model), None, LIMITS, opts, MemoryBudget::Bytes(gib * GIB));
    assert_eq!(choose(16).unwrap(), LoadQuant::Q8_0);
    assert_eq!(choose(8).unwrap(), LoadQuant::Q4_0);
}

/// At WebGPU's default 128 MiB binding (lavapipe's too) the 11B's encoder fits: its 6404 x
/// 7680 f32 features (196.7 MB) go in row parts, which together take the same bytes, so the
/// vision scratch is the same as under a 1 GiB binding and counts every buffer of one 4-tile
/// image. Below the 104.9 MB states (one buffer the decoder reads whole) it is refused.
#[test]
#[cfg(feature = "synthetic")]
fn llama_3_2_11b_vision_encoder_fits_a_128_mib_binding() {
    let model = mllama_11b_headers();
    let opts = PlanOptions { ctx: 4096, chunk: 512, ..Default::default() };
    let at = |binding: u64| {
        MemoryPlan::new(
            headers(&model),
            None,
            PlanLimits { max_buffer: 2 * GIB, max_storage_binding: binding, repacked_weights: false },
            opts,
        )
    };
    let small = at(128 << 20).unwrap();
    assert_eq!(small.vision_scratch, plan(&model, None, opts).vision_scratch);
    let f32s = |rows: u64, cols: u64| 4 * rows * cols;
    let (tiles, tokens, padded, d) = (4, 1601, 1608, 1280);
    let want = tiles * f32s(3 * 560, 560) // tile pixels
        + f32s(1600, 3 * 14 * 14) // one tile's patches
        + f32s(tiles * 1600, d) // patch embeddings
        + 4 + 4 * tokens // aspect-ratio id, position ids
        + 2 * f32s(tiles, d) // pre / post tile embeddings
        + f32s(tiles * tokens, d) // tile position embeddings
        + f32s(tokens, d) // position embeddings
        + 7 * f32s(tiles * padded, d) // x, h, tmp, q, k, v, attn
        + f32s((64 << 20) / f32s(1, 5120), 5120) // MLP chunk of at most 64 MiB
        + f32s(tiles * tokens, 7680) // features, all parts
        + f32s(tiles * tokens, 4096); // states
    assert_eq!(small.vision_scratch, want);
    let err = at(64 << 20).unwrap_err();
    assert!(matches!(err, ModelError::BufferTooLarge { bytes, .. } if bytes == f32s(tiles * tokens, 4096)), "{err}");
}

/// A Qwen3.5-4B mmproj's scratch is every buffer its encoder allocates for the largest image
/// it takes at the default edge (the processor bounds the area: a 1540-pixel square, sides
/// rounded up to 1568, 49 merge windows of 32); at a 128 MiB binding the position rows (four
/// per patch) are refused.
#[test]
#[cfg(feature = "synthetic")]
fn qwen35_4b_vision_scratch_is_the_encoders_buffers() {
    use crate::gguf::GgufHeaderParser;
    use crate::model::synthetic::{synthetic_qwen_vl_mmproj_writer, QwenVisionShape, SyntheticWeights};
    let s = QwenVisionShape::qwen35_4b();
    let (bytes, _, data_len) = synthetic_qwen_vl_mmproj_writer(&s, SyntheticWeights::Zeros).unwrap().layout().unwrap();
    let h = GgufHeaderParser::with_file_len(bytes.len() as u64 + data_len).feed(&bytes).unwrap().unwrap();
    let vision = (h.metadata, h.tensors);
    let text = text_headers(&MINISTRAL_3B, q4_k_m);
    let f32s = |rows: u64, cols: u32| 4 * rows * cols as u64;
    let (n, m, d) = (98 * 98, 49 * 49, s.hidden);
    let want = f32s(3 * 1568, 1568) // pixels
        + f32s(n, 3 * 16 * 16) // patches
        + 9 * f32s(n, d) // x, h, qkv (3), k, v, attention output, tmp
        + f32s(((64 << 20) / f32s(1, s.n_ff)).min(n), s.n_ff) // MLP chunk of at most 64 MiB
        + f32s(m, s.text_hidden) // features
        + 4 * 4 * n + f32s(4 * n, d) + 8 * 4 * n // position ids, rows and taps
        + 8 * n // window taps
        + f32s(m, 4 * d); // merger hidden layer
    assert_eq!(plan(&text, Some(&vision), PlanOptions::default()).vision_scratch, want);
    let small = PlanLimits { max_buffer: 2 * GIB, max_storage_binding: 128 << 20, repacked_weights: false };
    let err = MemoryPlan::new(headers(&text), Some(headers(&vision)), small, PlanOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::BufferTooLarge { bytes, .. } if bytes == f32s(4 * n, d)), "{err}");
    assert!(err.to_string().contains("position rows of a 1568x1568 image"), "{err}");
}

#[test]
fn sequences_at_once_take_a_context_each_and_the_refusal_names_the_most_that_fit() {
    let text = text_headers(&MINISTRAL_3B, q4_k_m);
    let one = plan(&text, None, PlanOptions { ctx: 8192, ..Default::default() });
    let four = plan(&text, None, PlanOptions { ctx: 8192, seqs: 4, ..Default::default() });
    // The engine's own context and one per sequence: weights once, state and buffers five
    // times, a sequence's logits buffer one row (the engine's a 512-token chunk's).
    assert_eq!(four.contexts(), 5);
    assert_eq!(one.step - one.slot_step, 511 * 4 * 131072);
    let per_context = one.state + one.slot_step + one.cross_store;
    // And one context's KV range, for the copy of a sequence's cache growing to a larger one,
    // and the batched step's rows (each with a row of logits).
    let growth = one.state_per_token * 8192;
    let batch = |n: u64| one.batch_step[0] + n * one.batch_step[1];
    assert!(one.batch_step[1] > 4 * 131072, "{:?}", one.batch_step);
    assert_eq!(four.total(), one.total() + 4 * per_context + growth + batch(4));
    // A budget that holds the weights and three contexts (and a growing KV range, a batch of
    // two): two sequences (1 + 2 contexts).
    let budget = MemoryBudget::Bytes(one.total() + 2 * per_context + growth + batch(2) + per_context / 2);
    assert!(one.check(budget).is_ok());
    assert_eq!(four.largest_seqs(budget, 64), 2);
    assert_eq!(four.largest_seqs(MemoryBudget::Unknown, 64), 64);
    let err = four.check(budget).unwrap_err();
    assert!(matches!(err, ModelError::DoesNotFit { seqs: 4, largest_seqs: 2, .. }), "{err}");
    assert!(
        err.to_string().contains("for 4 sequences") && err.to_string().contains("the most sequences that fit at 8192 tokens: 2"),
        "{err}"
    );
    let two = plan(&text, None, PlanOptions { ctx: 8192, seqs: 2, ..Default::default() });
    assert!(two.check(budget).is_ok());
    // The largest context for four sequences: every context's KV cache at it fits.
    let ctx = four.largest_context(budget).unwrap();
    let at = |ctx| plan(&text, None, PlanOptions { ctx, seqs: 4, ..Default::default() });
    assert!(at(ctx).check(budget).is_ok() && at(ctx + 1).check(budget).is_err(), "{ctx}");
}

#[test]
fn a_kv_pool_is_counted_in_place_of_a_context_per_sequence() {
    let text = text_headers(&MINISTRAL_3B, q4_k_m);
    let one = plan(&text, None, PlanOptions { ctx: 8192, ..Default::default() });
    let four = plan(&text, None, PlanOptions { ctx: 8192, seqs: 4, ..Default::default() });
    let pooled = plan(&text, None, PlanOptions { ctx: 8192, seqs: 4, kv_pool: Some(2 * 8192), ..Default::default() });
    // Four contexts' buffers, and the KV rows of two whole contexts and of one growing (no
    // recurrent layers).
    let batch = |n: u64| one.batch_step[0] + n * one.batch_step[1];
    assert_eq!(pooled.total(), one.total() + 4 * (one.slot_step + one.cross_store) + 3 * one.state + batch(4));
    assert!(pooled.total() < four.total());
    // A budget that holds eight sequences' buffers and a pool of two contexts: without the
    // pool (a whole context each), fewer of them.
    let eight = plan(&text, None, PlanOptions { seqs: 8, ..pooled.options });
    let budget = MemoryBudget::Bytes(eight.total());
    assert!(eight.check(budget).is_ok());
    assert_eq!(eight.largest_seqs(budget, 64), 8);
    let per_sequence = one.slot_step + one.cross_store + one.state + one.batch_step[1];
    let without_pool = (eight.total() - one.total() - one.state - one.batch_step[0]) / per_sequence;
    assert_eq!(four.largest_seqs(budget, 64) as u64, without_pool);
    assert!(without_pool < 8, "{without_pool}");
}
