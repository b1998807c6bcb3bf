//! Hostile chat templates (a model file's `tokenizer.chat_template` is untrusted input): a
//! template that loops without end, recurses, writes without bound, builds huge values in
//! memory or is itself huge ends in `ChatError::Limit` naming the limit, quickly, and
//! classified as the model's fault; the real templates of the fixtures stay far inside the
//! limits on long conversations. A memory bomb that got past the limits would abort this
//! test binary (allocation failure) rather than fail an assertion.

use crate::gguf_vocab;

use std::time::Instant;

use webvlm::chat::{ChatError, ChatMessage, ChatTemplate, MAX_TEMPLATE_BYTES};
use webvlm::error::{Classify, ErrorClass};

fn render(source: &str) -> Result<String, ChatError> {
    ChatTemplate::new(source, "<s>", "</s>")?.render(&[ChatMessage::text("user", "hi")], true, None)
}

/// `source` fails with a limit whose message contains `says`, in a bounded time.
fn assert_limited(source: &str, says: &str) {
    let start = Instant::now();
    let Err(err) = render(source) else { panic!("{source:?} rendered without hitting a limit") };
    let elapsed = start.elapsed();
    assert!(matches!(err, ChatError::Limit(_)), "{source:?}: {err:?}");
    assert!(err.to_string().starts_with("chat template limit:") && err.to_string().contains(says), "{err}");
    assert_eq!(err.class(), ErrorClass::ModelNotSupported);
    // Not a timing assertion on speed, a guard against a hang: generous for debug builds.
    assert!(elapsed.as_secs() < 120, "{source:?} took {elapsed:?}");
}

#[test]
fn an_endless_loop_runs_out_of_fuel() {
    assert_limited("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", "fuel");
    // Output-free recursion through a loop over a growing list behaves the same.
    assert_limited("{% set ns = namespace(n=0) %}{% for i in range(100000) %}{% for j in range(100000) %}{% set ns.n = ns.n + 1 %}{% endfor %}{% endfor %}", "fuel");
}

#[test]
fn values_that_grow_in_memory_run_out_of_fuel() {
    let bombs = [
        // Doubling a string, a list, a joined list; each would pass any memory in 64 steps.
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = (ns.l + ns.l)|list %}{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = [ns.s, ns.s]|join %}{% endfor %}",
        "{% set ns = namespace(s='xy') %}{% for i in range(64) %}{% set ns.s = ns.s|replace('x', ns.s) %}{% endfor %}",
        // Two strings feeding each other (Fibonacci growth).
        "{% set ns = namespace(a='x', b='y') %}{% for i in range(100) %}{% set ns.a = ns.a ~ ns.b %}{% set ns.b = ns.a ~ ns.b %}{% endfor %}",
        // Doubling through recursion instead of a loop (20 calls from 100 kB, 100 GB at the end:
        // inside the recursion limit).
        "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ d('x' * 100000, 20) }}",
        // Three strings of minijinja's largest repeat (100 MB each), then joined.
        "{{ ' ' * 100000000 ~ ' ' * 100000000 ~ ' ' * 100000000 }}",
    ];
    for source in bombs {
        assert_limited(source, "fuel");
    }
}

#[test]
fn deep_recursion_is_refused() {
    assert_limited("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "deeper than");
}

#[test]
fn an_output_bomb_is_cut_off() {
    // 100 MB strings (minijinja's own cap on `*`) written 1000 times.
    assert_limited("{% set s = 'x' * 100000000 %}{% for i in range(1000) %}{{ s }}{% endfor %}", "bytes");
}

#[test]
fn a_huge_template_is_refused_before_compiling() {
    let source = "x".repeat(MAX_TEMPLATE_BYTES + 1);
    assert_limited(&source, "bytes");
}

#[test]
fn deeply_nested_syntax_is_a_syntax_error() {
    let source = format!("{{{{ {}1{} }}}}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(matches!(ChatTemplate::new(&source, "", ""), Err(ChatError::Syntax(_))));
}

/// The fixtures' real templates (ChatML, Tekken, Qwen3.5 with its backward scans) render a
/// 2000-message conversation inside the limits.
#[test]
fn real_templates_render_long_conversations() {
    let messages: Vec<ChatMessage> = (0..2000)
        .map(|i| ChatMessage::text(if i % 2 == 0 { "user" } else { "assistant" }, format!("message number {i} of a long chat")))
        .collect();
    let qwen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gguf_vocab::fixture("tokenizer/chat_qwen35.json")).unwrap()).unwrap();
    let sources = [
        ("chatml", webvlm::chat::CHATML_TEMPLATE.to_string()),
        ("tekken", gguf_vocab::vocab_for("tiny_mistral3_tekken").chat_template.expect("template")),
        ("qwen35", qwen["chat_template"].as_str().expect("template").to_string()),
    ];
    for (name, source) in sources {
        let template = ChatTemplate::new(&source, "<s>", "</s>").unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = template.render(&messages, true, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains("message number 1999 of a long chat"), "{name}");
    }
}
