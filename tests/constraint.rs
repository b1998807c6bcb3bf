//! JSON-schema constrained decoding (`webvlm::constraint`, llguidance) on real vocabularies:
//! Tekken (the tiny Mistral 3 fixture carries the full 131k vocabulary), SmolLM2 (the GGUF
//! fetched by `scripts/fetch_smollm2.sh`) and the tiny SentencePiece fixture.
//!
//! Completions are driven by a seeded random sampler over the mask (uniform among allowed
//! tokens, sometimes restricted to tokens that close a string, object or array so that
//! unbounded documents end), decoded with our tokenizer, parsed by serde_json and validated
//! against the schema by an independent validator (the `jsonschema` crate, formats on).
//! Every completion must end within its token budget. Run
//! `cargo test --release --test integration constraint::mask_cost -- --nocapture --test-threads=1` for the
//! mask-cost figures.

use crate::gguf_vocab;
use crate::json_schemas;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use webvlm::constraint::{Constraint, ConstraintError, ConstraintFactory, SchemaCache};
use webvlm::tokenizer::Tokenizer;

/// Tokens a completion may take before the test fails.
const BUDGET: usize = 400;

/// A vocabulary under test: our tokenizer and the constraint factory built from it.
struct Vocab {
    name: &'static str,
    tokenizer: Arc<Tokenizer>,
    factory: ConstraintFactory,
    build_time: Duration,
}

fn load(name: &'static str) -> Vocab {
    let tokenizer = Arc::new(Tokenizer::from_gguf_vocab(&gguf_vocab::vocab_for(name)).expect("tokenizer from GGUF"));
    let t0 = Instant::now();
    let factory = ConstraintFactory::new(tokenizer.clone()).expect("constraint factory");
    Vocab { name, tokenizer, factory, build_time: t0.elapsed() }
}

fn tekken() -> &'static Vocab {
    static V: OnceLock<Vocab> = OnceLock::new();
    V.get_or_init(|| load("tekken"))
}

fn smollm2() -> &'static Vocab {
    static V: OnceLock<Vocab> = OnceLock::new();
    V.get_or_init(|| load("smollm2"))
}

fn llama_spm() -> &'static Vocab {
    static V: OnceLock<Vocab> = OnceLock::new();
    V.get_or_init(|| load("llama_spm"))
}

/// SplitMix64: deterministic test randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

fn allowed(mask: &[u32], t: u32) -> bool {
    mask[(t / 32) as usize] >> (t % 32) & 1 == 1
}

fn set_bits(mask: &[u32]) -> Vec<u32> {
    let mut ids = Vec::new();
    for (w, &word) in mask.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            ids.push(w as u32 * 32 + bits.trailing_zeros());
            bits &= bits - 1;
        }
    }
    ids
}

/// The decoded text of `ids` (no special tokens can occur in a constrained completion).
fn text_of(v: &Vocab, ids: &[u32]) -> String {
    v.tokenizer.decode(ids, false).expect("decode")
}

/// Mask-computation times: the first mask of each constraint, and all later ones.
#[derive(Default)]
struct Timing {
    first: Vec<Duration>,
    masks: Vec<Duration>,
}

/// Drives `constraint` with random choices until it ends (EOS or finished); returns the
/// generated ids (without EOS). Checks along the way: the mask is never empty, every
/// sampled token commits, and EOS is allowed only when the text so far is a valid document.
fn complete(
    v: &Vocab,
    mut constraint: Constraint,
    check: &jsonschema::Validator,
    seed: u64,
    close_bias: f64,
    timing: &mut Timing,
) -> Vec<u32> {
    let mut rng = Rng(seed);
    let eos = v.tokenizer.eos_ids();
    let mut ids = Vec::new();
    for _ in 0..BUDGET {
        let t0 = Instant::now();
        let mask = constraint.mask().expect("mask");
        if ids.is_empty() {
            timing.first.push(t0.elapsed());
        } else {
            timing.masks.push(t0.elapsed());
        }
        assert_eq!(mask.len(), v.factory.vocab_size().div_ceil(32));
        let set = set_bits(&mask);
        assert!(!set.is_empty(), "{}: empty mask after {:?}", v.name, text_of(v, &ids));
        let eos_ok: Vec<u32> = set.iter().copied().filter(|t| eos.contains(t)).collect();
        if !eos_ok.is_empty() {
            let text = text_of(v, &ids);
            if let Some(why) = json_schemas::violations(check, &text) {
                panic!("{}: EOS allowed after invalid {text:?}: {why}", v.name);
            }
        }
        if constraint.is_finished() {
            assert_eq!(set, eos_ok, "{}: finished, but non-EOS tokens allowed", v.name);
        }
        let others: Vec<u32> = set.iter().copied().filter(|t| !eos.contains(t)).collect();
        let token = if !eos_ok.is_empty() && (others.is_empty() || rng.chance(0.5)) {
            eos_ok[rng.below(eos_ok.len())]
        } else {
            let closing: Vec<u32> = others
                .iter()
                .copied()
                .filter(|&t| {
                    let b = v.factory.token_bytes(t).unwrap_or_default();
                    b.iter().any(|c| matches!(c, b'"' | b'}' | b']'))
                })
                .collect();
            if !closing.is_empty() && rng.chance(close_bias) {
                closing[rng.below(closing.len())]
            } else {
                others[rng.below(others.len())]
            }
        };
        constraint.commit(token).unwrap_or_else(|e| panic!("{}: commit {token} after {:?}: {e}", v.name, text_of(v, &ids)));
        if eos.contains(&token) {
            assert!(constraint.is_finished(), "{}: EOS committed but not finished", v.name);
            return ids;
        }
        ids.push(token);
    }
    panic!("{}: no end within {BUDGET} tokens: {:?}", v.name, text_of(v, &ids));
}

/// Generates `seeds` completions of `schema` on `v`, checks each, returns them.
fn run_schema(v: &Vocab, schema: &Value, seeds: u64, close_bias: f64) -> Vec<String> {
    let check = json_schemas::validator(schema);
    let mut timing = Timing::default();
    (0..seeds)
        .map(|seed| {
            let constraint = v.factory.json_schema(schema, true).expect("schema compiles");
            let ids = complete(v, constraint, &check, 1000 + seed, close_bias, &mut timing);
            let text = text_of(v, &ids);
            // The constraint saw the same bytes the tokenizer decodes.
            let bytes: Vec<u8> = ids.iter().flat_map(|&t| v.factory.token_bytes(t).unwrap_or_default().to_vec()).collect();
            let spelled = String::from_utf8_lossy(&bytes);
            assert!(
                spelled == text || spelled.strip_prefix(' ') == Some(&text),
                "{}: constraint bytes {spelled:?} != decoded {text:?}",
                v.name
            );
            if let Some(why) = json_schemas::violations(&check, &text) {
                panic!("{}: completion {text:?} of {schema} is invalid: {why}", v.name);
            }
            text
        })
        .collect()
}

/// Every schema, three completions each, on one vocabulary; returns the count.
fn completions_on(v: &Vocab) -> usize {
    let mut n = 0;
    for (name, schema) in json_schemas::schemas() {
        let texts = run_schema(v, &schema, 3, 0.1);
        println!("{} {name}: {texts:?}", v.name);
        n += texts.len();
    }
    n
}

#[test]
fn completions_validate_tekken() {
    assert!(completions_on(tekken()) >= 40);
}

#[test]
fn completions_validate_smollm2() {
    assert!(completions_on(smollm2()) >= 40);
}

#[test]
fn completions_validate_sentencepiece() {
    assert!(completions_on(llama_spm()) >= 40);
}

#[test]
fn json_object_completions() {
    let schema = json!({"type": "object"});
    for v in [tekken(), smollm2()] {
        let check = json_schemas::validator(&schema);
        let mut timing = Timing::default();
        for seed in 0..5 {
            let constraint = v.factory.json_object().expect("json_object");
            let ids = complete(v, constraint, &check, 7 + seed, 0.5, &mut timing);
            let text = text_of(v, &ids);
            let doc: Value = serde_json::from_str(&text).expect("JSON");
            assert!(doc.is_object(), "{}: {text:?} is not an object", v.name);
            println!("{} json_object: {text:?}", v.name);
        }
    }
}

/// Every id's bytes reproduce `decode`: each id alone, and random sequences of ids.
fn check_token_bytes(v: &Vocab, strip_space: bool) {
    let tok = &v.tokenizer;
    let n = tok.vocab_size() as u32;
    let spell = |ids: &[u32]| -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&t| tok.token_bytes(t).expect("in vocab")).collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match text.strip_prefix(' ') {
            Some(rest) if strip_space => rest.to_string(),
            _ => text,
        }
    };
    let mut failures = Vec::new();
    for id in 0..n {
        let decoded = tok.decode(&[id], false).expect("decode");
        if spell(&[id]) != decoded && failures.len() < 10 {
            failures.push(format!("id {id}: {:?} vs decode {decoded:?}", spell(&[id])));
        }
    }
    assert!(failures.is_empty(), "{}: {}", v.name, failures.join("\n"));
    let mut rng = Rng(42);
    for _ in 0..300 {
        // SentencePiece's decoder turns an invalid run of byte tokens into one U+FFFD per
        // byte (not one per invalid sequence as from_utf8_lossy does): valid text only there.
        let ids: Vec<u32> = (0..1 + rng.below(12))
            .map(|_| rng.below(n as usize) as u32)
            .filter(|&t| !strip_space || tok.token_bytes(t).is_some_and(|b| std::str::from_utf8(&b).is_ok()))
            .collect();
        let decoded = tok.decode(&ids, false).expect("decode");
        assert_eq!(spell(&ids), decoded, "{}: ids {ids:?}", v.name);
    }
    assert!(tok.token_bytes(n).is_none());
}

#[test]
fn token_bytes_reproduce_decode() {
    check_token_bytes(tekken(), false);
    check_token_bytes(smollm2(), false);
    check_token_bytes(llama_spm(), true);
    // SentencePiece specifics: the word marker is a space, byte pieces are their byte.
    let spm = &llama_spm().tokenizer;
    let byte_a = spm.token_id("<0x41>").expect("byte piece");
    assert_eq!(spm.token_bytes(byte_a).as_deref(), Some(&b"A"[..]));
    let ids = spm.encode("hello world", false).expect("encode");
    let bytes: Vec<u8> = ids.iter().flat_map(|&t| spm.token_bytes(t).unwrap()).collect();
    assert_eq!(bytes, b" hello world");
}

#[test]
fn special_tokens_never_match_text() {
    for v in [tekken(), smollm2(), llama_spm()] {
        let tok = &v.tokenizer;
        let specials: Vec<u32> = (0..tok.vocab_size() as u32).filter(|&t| tok.is_special(t)).collect();
        assert!(!specials.is_empty(), "{}: no special tokens", v.name);
        for &eos in tok.eos_ids() {
            assert!(specials.contains(&eos), "{}: EOS {eos} not special", v.name);
        }
        for &t in &specials {
            let bytes = v.factory.token_bytes(t).expect("in vocab");
            assert_eq!(bytes.first(), Some(&0xFF), "{}: special {t} not marked", v.name);
        }
        // No special token is ever allowed inside a document.
        let mut c = v.factory.json_object().expect("json_object");
        let mask = c.mask().expect("mask");
        assert!(specials.iter().all(|&t| !allowed(&mask, t)), "{}", v.name);
        for text in ["{", "\"", "a"] {
            let t = tok.token_id(text).expect("single-character token");
            c.commit(t).expect("commit");
            let mask = c.mask().expect("mask");
            assert!(specials.iter().all(|&t| !allowed(&mask, t)), "{} after {text}", v.name);
        }
        println!("{}: {} special tokens", v.name, specials.len());
    }
}

/// Commits the tokens of `text` (our encoding) one by one.
fn feed(v: &Vocab, c: &mut Constraint, text: &str) {
    for t in v.tokenizer.encode(text, false).expect("encode") {
        c.commit(t).unwrap_or_else(|e| panic!("{}: feeding {text:?}: {e}", v.name));
    }
}

#[test]
fn mask_forbids_invalid_continuations() {
    let schema = json!({
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": false
    });
    for v in [tekken(), smollm2()] {
        let eos = v.tokenizer.eos_ids();
        let mut c = v.factory.json_schema(&schema, true).expect("schema");
        let mask = c.mask().expect("mask");
        assert!(eos.iter().all(|&t| !allowed(&mask, t)), "{}: EOS at start", v.name);
        feed(v, &mut c, "{\"a\":");
        let mask = c.mask().expect("mask");
        for t in set_bits(&mask) {
            let b = v.factory.token_bytes(t).expect("in vocab");
            let first = b.iter().find(|c| !c.is_ascii_whitespace());
            assert!(
                first.is_none_or(|c| c.is_ascii_digit() || *c == b'-'),
                "{}: {:?} allowed after {{\"a\":",
                v.name,
                String::from_utf8_lossy(b)
            );
        }
        assert!(eos.iter().all(|&t| !allowed(&mask, t)), "{}: EOS mid-object", v.name);
        let close = v.tokenizer.token_id("}").expect("} token");
        assert!(!allowed(&mask, close));
        let err = c.commit(close).expect_err("} must be rejected");
        assert!(matches!(err, ConstraintError::Rejected { .. }), "{err}");
        let quote = v.tokenizer.token_id("\"").expect("\" token");
        assert!(matches!(c.commit(quote), Err(ConstraintError::Rejected { .. })));
        // The rejections changed nothing: the document can still be completed.
        feed(v, &mut c, "42");
        let mask = c.mask().expect("mask");
        assert!(eos.iter().all(|&t| !allowed(&mask, t)), "{}: EOS before }}", v.name);
        assert!(!c.is_finished());
        feed(v, &mut c, "}");
        assert!(c.is_finished(), "{}", v.name);
        let mask = c.mask().expect("mask");
        assert_eq!(set_bits(&mask), eos, "{}: only EOS after the document", v.name);
        c.commit(eos[0]).expect("EOS");
        assert!(c.is_finished());
        assert!(matches!(c.commit(close), Err(ConstraintError::Rejected { .. } | ConstraintError::Parser(_))));
        let n = v.factory.vocab_size() as u32;
        assert!(matches!(c.commit(n), Err(ConstraintError::UnknownToken { .. })));
    }
}

#[test]
fn eos_allowed_exactly_when_complete() {
    // A top-level number is complete after each digit, but may go on.
    let v = tekken();
    let eos = v.tokenizer.eos_ids();
    let mut c = v.factory.json_schema(&json!({"type": "integer", "minimum": 0, "maximum": 999}), true).expect("schema");
    assert!(eos.iter().all(|&t| !allowed(&c.mask().unwrap(), t)));
    feed(v, &mut c, "1");
    assert!(eos.iter().all(|&t| allowed(&c.mask().unwrap(), t)));
    assert!(!c.is_finished());
    feed(v, &mut c, "2");
    assert!(eos.iter().all(|&t| allowed(&c.mask().unwrap(), t)));
    feed(v, &mut c, "3");
    assert!(c.is_finished(), "999 is the largest: nothing may follow 123");
    // A string is complete only after its closing quote.
    let mut c = v.factory.json_schema(&json!({"type": "string", "maxLength": 5}), true).unwrap();
    feed(v, &mut c, "\"ab");
    assert!(eos.iter().all(|&t| !allowed(&c.mask().unwrap(), t)));
    feed(v, &mut c, "\"");
    assert!(c.is_finished());
}

fn rejected(v: &Vocab, schema: Value, strict: bool) -> String {
    match v.factory.json_schema(&schema, strict) {
        Err(e @ ConstraintError::Schema(_)) => e.to_string(),
        Err(e) => panic!("{schema}: wrong error {e}"),
        Ok(_) => panic!("{schema} (strict {strict}) was accepted"),
    }
}

#[test]
fn invalid_schemas_are_rejected() {
    let v = tekken();
    let cases = [
        (json!({"type": "nosuchtype"}), "nosuchtype"),
        (json!({"type": "object", "properties": 5}), "properties"),
        (json!({"type": "object", "required": "a"}), "required"),
        (json!({"type": "string", "maxLength": "ten"}), "maxLength"),
        (json!({"type": "integer", "minimum": 10, "maximum": 1}), ""),
        (json!({"$ref": "#/$defs/missing"}), "missing"),
        (json!({"$ref": "https://example.com/schema.json"}), ""),
        (json!({"type": "string", "pattern": "(["}), ""),
        (json!(false), "admits no document"),
        (json!(42), "object or a boolean"),
        (json!({"allOf": [{"type": "string"}, {"type": "integer"}]}), ""),
    ];
    for (schema, needle) in cases {
        let msg = rejected(v, schema.clone(), false);
        assert!(msg.contains(needle), "{schema}: message {msg:?} lacks {needle:?}");
        println!("{schema}: {msg}");
    }
}

#[test]
fn unsupported_keywords_fail_only_when_strict() {
    let v = tekken();
    for (schema, needle) in [
        (json!({"type": "array", "items": {"type": "integer"}, "uniqueItems": true}), "uniqueItems"),
        (json!({"type": "array", "contains": {"type": "integer"}}), "contains"),
        (json!({"not": {"type": "string"}}), "not"),
        (json!({"oneOf": [{"type": "integer"}, {"type": "number"}]}), "oneOf"),
        (json!({"type": "string", "format": "no-such-format"}), "no-such-format"),
    ] {
        let msg = rejected(v, schema.clone(), true);
        assert!(msg.contains(needle), "{schema}: message {msg:?} lacks {needle:?}");
        let lenient = v.factory.json_schema(&schema, false).expect("accepted when not strict");
        assert!(!lenient.warnings().is_empty(), "{schema}: no warning when not strict");
        println!("{schema}: strict: {msg}; lenient: {:?}", lenient.warnings());
    }
    // Keywords no draft defines are ignored, as JSON Schema says, strict or not.
    let c = v
        .factory
        .json_schema(&json!({"type": "boolean", "x-vendor": 1, "title": "t"}), true)
        .expect("unknown keywords are ignored");
    assert!(c.warnings().is_empty());
    // `true` is the empty schema.
    v.factory.json_schema(&json!(true), true).expect("true schema");
}

fn micros(d: &[Duration], q: f64) -> f64 {
    let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Mask cost per generated token (µs), on each real vocabulary, over a mix of schemas.
#[test]
fn mask_cost() {
    for v in [tekken(), smollm2()] {
        let mut timing = Timing::default();
        let mut compile = Vec::new();
        for (_, schema) in json_schemas::schemas() {
            let check = json_schemas::validator(&schema);
            for seed in 0..3 {
                let t0 = Instant::now();
                let c = v.factory.json_schema(&schema, true).expect("schema");
                compile.push(t0.elapsed());
                complete(v, c, &check, 5000 + seed, 0.1, &mut timing);
            }
        }
        let mean = |t: &[Duration]| t.iter().map(Duration::as_secs_f64).sum::<f64>() / t.len() as f64 * 1e6;
        let t = &timing.masks;
        println!(
            "{} ({} tokens): factory {:.0} ms; schema compile mean {:.0} µs; first mask mean \
             {:.0} µs; later masks ({} tokens): mean {:.0} µs, median {:.0} µs, p95 {:.0} µs, \
             max {:.0} µs",
            v.name,
            v.factory.vocab_size(),
            v.build_time.as_secs_f64() * 1e3,
            mean(&compile),
            mean(&timing.first),
            t.len(),
            mean(t),
            micros(t, 0.5),
            micros(t, 0.95),
            micros(t, 1.0),
        );
        assert!(t.len() > 100);
    }
}

/// A schema is compiled once while among the last few used; each use starts fresh.
#[test]
fn schema_cache_compiles_each_schema_once() {
    let v = tekken();
    let mut cache = SchemaCache::new(ConstraintFactory::new(v.tokenizer.clone()).expect("factory"));
    let schema =
        json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a", "b"]});
    let mut first = cache.json_schema(&schema, true).expect("schema");
    let fresh = first.mask().expect("mask");
    feed(v, &mut first, r#"{"a": 12, "b": "x"#);
    let mut second = cache.json_schema(&schema, true).expect("schema");
    assert_eq!(cache.factory().compilations(), 1);
    assert_eq!(second.mask().expect("mask"), fresh, "a cached constraint starts fresh");
    assert_ne!(first.mask().expect("mask"), fresh);
    // The same keys in another order give another grammar (properties in document order),
    // the other strict flag another compile; an invalid schema is an error every time.
    let reordered =
        json!({"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}, "required": ["a", "b"]});
    cache.json_schema(&reordered, true).expect("schema");
    cache.json_schema(&schema, false).expect("schema");
    assert_eq!(cache.factory().compilations(), 3);
    for _ in 0..2 {
        assert!(matches!(cache.json_schema(&json!({"type": "nosuchtype"}), true), Err(ConstraintError::Schema(_))));
    }
    assert_eq!(cache.factory().compilations(), 5);
    // Beyond the last few schemas, the least recently used is compiled again.
    cache.json_schema(&schema, true).expect("schema");
    for n in 0..4 {
        cache.json_schema(&json!({"type": "integer", "minimum": n}), true).expect("schema");
    }
    assert_eq!(cache.factory().compilations(), 9);
    cache.json_schema(&schema, true).expect("schema");
    assert_eq!(cache.factory().compilations(), 10);
}
