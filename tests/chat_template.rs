//! Chat templates against transformers' `apply_chat_template` fixtures
//! (`tests/fixtures/tokenizer/chat_*.json`), plus the Hugging Face template semantics the
//! fixtures do not reach: `raise_exception`, content parts, `tojson`, pycompat methods.

use crate::gguf_vocab;

use serde::Deserialize;
use webvlm::chat::reasoning::ThinkTags;
use webvlm::chat::{ChatContent, ChatError, ChatMessage, ChatTemplate, ContentPart, CHATML_TEMPLATE};
use webvlm::tokenizer::Tokenizer;

#[derive(Deserialize)]
struct ChatFixture {
    chat_template: String,
    conversations: Vec<Conversation>,
}

#[derive(Deserialize)]
struct Conversation {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    text: String,
    ids: Vec<u32>,
}

/// Renders and tokenizes every conversation of `chat_<file>.json` with the template and
/// tokenizer read from the `model` GGUF; returns the number of conversations checked.
fn check_chat_fixture(file: &str, model: &str) -> usize {
    let path = gguf_vocab::fixture(&format!("tokenizer/chat_{file}.json"));
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fixture: ChatFixture = serde_json::from_str(&json).expect("fixture JSON");
    let vocab = gguf_vocab::vocab_for(model);
    assert_eq!(vocab.chat_template.as_deref(), Some(fixture.chat_template.as_str()), "{file}: GGUF template");
    let tokenizer = Tokenizer::from_gguf_vocab(&vocab).expect("tokenizer");
    let template = ChatTemplate::from_vocab(&vocab, &tokenizer).expect("template compiles");

    let mut failures = Vec::new();
    for (i, conv) in fixture.conversations.iter().enumerate() {
        let text = template.render(&conv.messages, conv.add_generation_prompt, None).expect("render");
        if text != conv.text {
            failures.push(format!("conversation {i}: rendered\n{text:?}\nwant\n{:?}", conv.text));
            continue;
        }
        let ids = tokenizer.encode(&text, false).expect("encode");
        if ids != conv.ids {
            failures.push(format!("conversation {i}: ids {ids:?}\nwant {:?}", conv.ids));
        }
    }
    assert!(failures.is_empty(), "{file}: {} mismatches:\n{}", failures.len(), failures.join("\n"));
    fixture.conversations.len()
}

#[test]
fn smollm2_chatml_matches_transformers() {
    assert_eq!(check_chat_fixture("smollm2", "smollm2"), 4);
}

#[test]
fn tekken_template_matches_transformers() {
    assert_eq!(check_chat_fixture("tiny_mistral3_tekken", "tekken"), 4);
}

fn tekken_template() -> ChatTemplate {
    let vocab = gguf_vocab::vocab_for("tekken");
    let source = vocab.chat_template.expect("tekken GGUF has a template");
    ChatTemplate::new(&source, "<s>", "</s>").expect("compiles")
}

#[test]
fn raise_exception_becomes_a_typed_error() {
    let messages = [ChatMessage::text("user", "a"), ChatMessage::text("user", "b")];
    match tekken_template().render(&messages, true, None) {
        Err(ChatError::Raised(message)) => assert_eq!(
            message,
            "After the optional system message, conversation roles must alternate user and \
             assistant roles except for tool calls and results."
        ),
        other => panic!("expected ChatError::Raised, got {other:?}"),
    }
    let messages = [ChatMessage::text("narrator", "x")];
    assert!(matches!(tekken_template().render(&messages, true, None), Err(ChatError::Raised(m)) if m.contains("got narrator")));
}

#[test]
fn image_parts_render_as_image_chunks() {
    let json = r#"[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
        ]}
    ]"#;
    let messages: Vec<ChatMessage> = serde_json::from_str(json).expect("OpenAI messages");
    let ChatContent::Parts(parts) = &messages[1].content else { panic!("parts") };
    assert_eq!(parts[1], ContentPart::Image { url: Some("data:image/png;base64,AAAA".into()) });
    // Two chunks are sorted by type by this template: the image comes first.
    let text = tekken_template().render(&messages, true, None).expect("render");
    assert_eq!(text, "<s>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][INST][IMG]What is this?[/INST]");
}

#[test]
fn messages_round_trip_through_openai_json() {
    let messages = vec![
        ChatMessage::text("user", "hi"),
        ChatMessage {
            role: "user".into(),
            content: ChatContent::Parts(vec![
                ContentPart::Text("look".into()),
                ContentPart::Image { url: Some("https://x/y.png".into()) },
                ContentPart::Image { url: None },
            ]),
            ..ChatMessage::default()
        },
    ];
    let json = serde_json::to_string(&messages).expect("serialize");
    assert_eq!(
        json,
        r#"[{"role":"user","content":"hi"},{"role":"user","content":[{"type":"text","text":"look"},{"type":"image_url","image_url":{"url":"https://x/y.png"}},{"type":"image"}]}]"#
    );
    let back: Vec<ChatMessage> = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, messages);
    let plain: ContentPart = serde_json::from_str(r#"{"type":"image_url","image_url":"u"}"#).expect("plain url");
    assert_eq!(plain, ContentPart::Image { url: Some("u".into()) });
}

/// The ChatML fallback drops image parts without a vision encoder and writes the encoder's
/// placeholder (set by the engine) with one.
#[test]
fn chatml_fallback_template() {
    let mut t = ChatTemplate::new(CHATML_TEMPLATE, "", "").expect("compiles");
    let messages = [
        ChatMessage::text("system", "S"),
        ChatMessage {
            role: "user".into(),
            content: ChatContent::Parts(vec![
                ContentPart::Text("a".into()),
                ContentPart::Image { url: None },
                ContentPart::Text("b".into()),
            ]),
            ..ChatMessage::default()
        },
    ];
    assert_eq!(
        t.render(&messages, true, None).expect("render"),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(t.render(&messages[..1], false, None).expect("render"), "<|im_start|>system\nS<|im_end|>\n");
    t.set_image_placeholder("[IMG]".into());
    assert_eq!(t.render(&messages[1..], false, None).expect("render"), "<|im_start|>user\na[IMG]b<|im_end|>\n");
}

#[test]
fn python_semantics_tojson_pycompat_strftime() {
    let source = "{{ messages|tojson }}|{{ messages[0]|tojson(indent=2) }}|\
                  {{ messages[0].content.strip().split(' ')|join(',') }}|\
                  {% for k, v in messages[0].items() %}{{ k }}={{ v|trim }};{% endfor %}|\
                  {{ strftime_now('%d %B %Y') }}|{{ tools is none }}|{{ bos_token }}{{ eos_token }}";
    let mut t = ChatTemplate::new(source, "<s>", "</s>").expect("compiles");
    t.set_fixed_time(Some(1_709_211_909)); // 2024-02-29 13:05:09 UTC
    let messages = [ChatMessage::text("user", " a \"b\" é<>\n ")];
    assert_eq!(
        t.render(&messages, false, None).expect("render"),
        "[{\"role\": \"user\", \"content\": \" a \\\"b\\\" é<>\\n \"}]|\
         {\n  \"role\": \"user\",\n  \"content\": \" a \\\"b\\\" é<>\\n \"\n}|\
         a,\"b\",é<>|role=user;content=a \"b\" é<>;|29 February 2024|True|<s></s>"
    );
}

#[test]
fn trim_and_lstrip_blocks_like_transformers() {
    let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
    let t = ChatTemplate::new(source, "", "").expect("compiles");
    let messages = [ChatMessage::text("user", "x"), ChatMessage::text("user", "y")];
    assert_eq!(t.render(&messages, false, None).expect("render"), "[x]\n[y]\n");
}

#[test]
fn syntax_errors_are_reported_at_compile_time() {
    assert!(matches!(ChatTemplate::new("{% for %}", "", ""), Err(ChatError::Syntax(_))));
}

#[test]
fn generation_blocks_render_their_body() {
    let source = "{% for m in messages %}{%- if m.role == 'assistant' %}{% generation %}<{{ m.content }}>{%- endgeneration %}{% else %}[{{ m.content }}]{% endif %}{% endfor %}";
    let t = ChatTemplate::new(source, "", "").expect("compiles");
    let messages = [ChatMessage::text("user", "q"), ChatMessage::text("assistant", "a")];
    assert_eq!(t.render(&messages, false, None).expect("render"), "[q]<a>");
}

#[derive(Deserialize)]
struct Qwen35Fixture {
    chat_template: String,
    cases: Vec<Qwen35Case>,
}

#[derive(Deserialize)]
struct Qwen35Case {
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    kwargs: serde_json::Map<String, serde_json::Value>,
    text: String,
}

fn qwen35_fixture() -> Qwen35Fixture {
    let path = gguf_vocab::fixture("tokenizer/chat_qwen35.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("chat_qwen35.json")).expect("fixture JSON")
}

/// Qwen3.5's template (llama.cpp's `Qwen3.5-4B.jinja`) with `chat_template_kwargs`
/// (`enable_thinking` true / false / absent, `tools`), images and multi-turn think blocks,
/// against transformers' `render_jinja_template`; the prompts then tokenize with the tiny
/// qwen35 vocabulary, each image placeholder one `<|image_pad|>` id.
#[test]
fn qwen35_template_matches_transformers() {
    let fixture = qwen35_fixture();
    let template = ChatTemplate::new(&fixture.chat_template, "", "<|im_end|>").expect("template compiles");
    assert_eq!(template.think_tags(), Some(ThinkTags::ANGLE));
    let vocab = gguf_vocab::read_vocab(&gguf_vocab::fixture("tiny_qwen35_a/model.gguf"));
    let tokenizer = Tokenizer::from_gguf_vocab(&vocab).expect("tokenizer");
    let pad = tokenizer.token_id("<|image_pad|>").expect("<|image_pad|>");
    let mut failures = Vec::new();
    for case in &fixture.cases {
        let kwargs = (!case.kwargs.is_empty()).then_some(&case.kwargs);
        let text = template.render(&case.messages, case.add_generation_prompt, kwargs).expect("render");
        if text != case.text {
            failures.push(format!("{}: rendered\n{text:?}\nwant\n{:?}", case.name, case.text));
        }
        let images = case.messages.iter().map(|m| match &m.content {
            ChatContent::Parts(parts) => parts.iter().filter(|p| matches!(p, ContentPart::Image { .. })).count(),
            ChatContent::Text(_) | ChatContent::Null => 0,
        });
        let ids = tokenizer.encode(&text, false).expect("encode");
        assert_eq!(ids.iter().filter(|&&id| id == pad).count(), images.sum::<usize>(), "{}", case.name);
        let thinking_off = case.kwargs.get("enable_thinking") == Some(&serde_json::Value::Bool(false));
        if case.add_generation_prompt {
            assert_eq!(ThinkTags::ANGLE.prompt_opens(&text), !thinking_off, "{}", case.name);
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(fixture.cases.len(), 9);
}

/// Templates without think tags render as before and do not split replies.
#[test]
fn templates_without_think_tags_are_not_split() {
    let template = ChatTemplate::new(CHATML_TEMPLATE, "", "").expect("chatml");
    assert_eq!(template.think_tags(), None);
    let kwargs: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(r#"{"enable_thinking": false, "messages": "ignored"}"#).expect("json");
    let messages = [ChatMessage::text("user", "Hi")];
    // A kwarg never replaces a standard variable.
    assert_eq!(
        template.render(&messages, true, Some(&kwargs)).expect("render"),
        template.render(&messages, true, None).expect("render")
    );
}

/// A Qwen3.5 reply streamed token by token as generation decodes it (special tokens
/// skipped): `<think>` / `</think>` survive the decode (not special, as in Qwen's own
/// tokenizer), and the split of the streamed deltas, `</think>` one token of its own, equals
/// the whole-reply split, with and without the prompt having opened the block.
#[test]
fn qwen35_streamed_reply_splits_reasoning() {
    use webvlm::chat::reasoning::{split_reasoning, ReasoningSplitter};
    let vocab = gguf_vocab::read_vocab(&gguf_vocab::fixture("tiny_qwen35_a/model.gguf"));
    let tok = Tokenizer::from_gguf_vocab(&vocab).expect("tokenizer");
    let close = tok.token_id("</think>").expect("</think>");
    assert!(!tok.is_special(close));
    for (reply, opened, reasoning, content) in [
        ("Let me see: a cat.\n</think>\n\nThe cat sat.<|im_end|>", true, Some("Let me see: a cat.\n"), "The cat sat."),
        ("<think>\nhmm\n</think>\n\nIt is a cat.<|im_end|>", false, Some("\nhmm\n"), "It is a cat."),
        ("</think>\n\nJust the answer.<|im_end|>", true, Some(""), "Just the answer."),
        ("No block at all.<|im_end|>", false, None, "No block at all."),
    ] {
        let ids = tok.encode(reply, false).expect("encode");
        assert!(ids.contains(&close) == reply.contains("</think>"), "{reply:?}");
        let mut stream = tok.decode_stream(true);
        let mut splitter = ReasoningSplitter::new(ThinkTags::ANGLE, opened);
        let (mut r, mut c, mut text) = (String::new(), String::new(), String::new());
        let mut feed = |delta: &str, splitter: &mut ReasoningSplitter| {
            text.push_str(delta);
            let (dr, dc) = splitter.push(delta);
            r += &dr;
            c += &dc;
        };
        for &id in &ids {
            if let Some(delta) = stream.step(&tok, id).expect("step") {
                feed(&delta, &mut splitter);
            }
        }
        if let Some(delta) = stream.flush(&tok).expect("flush") {
            feed(&delta, &mut splitter);
        }
        let (dr, dc) = splitter.finish();
        r += &dr;
        c += &dc;
        assert_eq!((splitter.saw_reasoning().then_some(r.as_str()), c.as_str()), (reasoning, content), "{reply:?}");
        let (whole_r, whole_c) = split_reasoning(&text, ThinkTags::ANGLE, opened);
        assert_eq!((whole_r.as_deref(), whole_c.as_str()), (reasoning, content), "{reply:?}");
    }
}
