//! The parsers against each family's replies: plain, nested and streamed arguments, every
//! prefix of every fixture (no input panics), malformed and truncated calls.

use super::*;
use serde_json::json;

/// The nested arguments' `trip` value, spaced as a model writes it.
macro_rules! trip {
    () => {
        r#"{"stops": [{"city": "Zürich", "note": "東京 🚀"}, {"city": "東京"}], "days": 3}"#
    };
}
/// The nested arguments, as the parsers write them back.
const NESTED: &str = r#"{"trip":{"stops":[{"city":"Zürich","note":"東京 🚀"},{"city":"東京"}],"days":3}}"#;

/// One syntax's spellings of the same calls: `get_weather(city=Paris)`, that and
/// `get_weather(city=東京, days=3)`, `plan_trip(NESTED)`, and malformed replies.
struct Fixture {
    syntax: ToolSyntax,
    one: &'static str,
    two: &'static str,
    nested: &'static str,
    malformed: &'static [&'static str],
}

fn fixtures() -> Vec<Fixture> {
    use ToolSyntax::*;
    vec![
        Fixture {
            syntax: MistralJson,
            one: r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}]"#,
            two: concat!(
                r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}, "#,
                r#"{"name": "get_weather", "arguments": {"city": "東京", "days": 3}, "id": "f5g6h7i8j"}]"#
            ),
            nested: concat!(r#"[TOOL_CALLS][{"name": "plan_trip", "arguments": {"trip": "#, trip!(), "}}]"),
            malformed: &[
                r#"[TOOL_CALLS][{"arguments": {"city": "Paris"}}]"#,
                r#"[TOOL_CALLS][{"name": "get_weather", "arguments": [1, 2]}]"#,
                r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": Paris}}]"#,
                r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}] and then"#,
                r#"[TOOL_CALLS][{"name": "get_weather", "arguments": "city=Paris"}]"#,
                "[TOOL_CALLS][]",
            ],
        },
        Fixture {
            syntax: MistralCallId,
            one: r#"[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"}"#,
            two: concat!(
                r#"[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"}"#,
                r#"[TOOL_CALLS]get_weather[CALL_ID]f5g6h7i8j[ARGS]{"city": "東京", "days": 3}"#
            ),
            nested: concat!(r#"[TOOL_CALLS]plan_trip[CALL_ID]k9l8m7n6o[ARGS]{"trip": "#, trip!(), "}"),
            malformed: &[
                r#"[TOOL_CALLS]get weather[CALL_ID]a1b2c3d4e[ARGS]{}"#,
                r#"[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]["Paris"]"#,
                r#"[TOOL_CALLS]get_weather[CALL_ID]a1 b2[ARGS]{}"#,
                r#"[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e{"city": "Paris"}"#,
                r#"[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"} trailing"#,
            ],
        },
        Fixture {
            syntax: MistralArgs,
            one: r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}"#,
            two: concat!(
                r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}"#,
                r#"[TOOL_CALLS]get_weather[ARGS]{"city": "東京", "days": 3}"#
            ),
            nested: concat!(r#"[TOOL_CALLS]plan_trip[ARGS]{"trip": "#, trip!(), "}"),
            malformed: &[
                r#"[TOOL_CALLS][ARGS]{"city": "Paris"}"#,
                r#"[TOOL_CALLS]get_weather{"city": "Paris"}"#,
                r#"[TOOL_CALLS]get_weather[ARGS]{"city" "Paris"}"#,
                r#"[TOOL_CALLS]get_weather[ARGS]"Paris""#,
                "[TOOL_CALLS]I cannot call tools.",
            ],
        },
        Fixture {
            syntax: QwenXml,
            one: "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
            two: concat!(
                "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>\n",
                "<tool_call>\n<function=get_weather>\n<parameter=city>\n東京\n</parameter>\n",
                "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
            ),
            nested: concat!(
                "<tool_call>\n<function=plan_trip>\n<parameter=trip>\n",
                trip!(),
                "\n</parameter>\n</function>\n</tool_call>"
            ),
            malformed: &[
                "<tool_call>\n<function=>\n</function>\n</tool_call>",
                "<tool_call>\n<function=get_weather>\nParis\n</function>\n</tool_call>",
                "<tool_call>\nget_weather(city=\"Paris\")\n</tool_call>",
                "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>\nDone!",
                "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n<tool_call>",
            ],
        },
        Fixture {
            syntax: Hermes,
            one: "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            two: concat!(
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n",
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"東京\", \"days\": 3}}\n</tool_call>"
            ),
            nested: concat!("<tool_call>\n{\"name\": \"plan_trip\", \"arguments\": {\"trip\": ", trip!(), "}}\n</tool_call>"),
            malformed: &[
                "<tool_call>\n{\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}\n</tool_call>",
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \"Paris\"}\n</tool_call>",
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</toolcall>",
                "<tool_call>\n[\"get_weather\", {\"city\": \"Paris\"}]\n</tool_call>",
            ],
        },
        Fixture {
            syntax: LlamaJson,
            one: r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#,
            two: r#"{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_weather", "parameters": {"city": "東京", "days": 3}}"#,
            nested: concat!(r#"{"type": "function", "name": "plan_trip", "parameters": {"trip": "#, trip!(), "}}"),
            malformed: &[
                r#"{"city": "Paris"}"#,
                r#"{"name": 3, "parameters": {}}"#,
                r#"<|python_tag|>brave_search.call(query="Paris")"#,
                r#"{"name": "get_weather", "parameters": {"city": "Paris"}} and some prose"#,
                r#"{"name": "get_weather", "parameters": {"city": "Paris",}}"#,
            ],
        },
    ]
}

fn tools() -> Vec<ToolSpec> {
    let spec = |name: &str, parameters: Value| ToolSpec { name: name.into(), parameters };
    let object = |properties: Value| json!({"type": "object", "properties": properties});
    vec![
        spec("get_weather", object(json!({"city": {"type": "string"}, "days": {"type": "integer"}}))),
        spec("plan_trip", object(json!({"trip": {"type": "object"}}))),
        spec(
            "configure",
            object(json!({
                "count": {"type": "integer"}, "label": {"type": "string"}, "verbose": {"type": "boolean"},
                "options": {"type": "object"}, "tags": {"type": "array"}, "ratio": {"type": "number"},
                "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}]}, "code": {"type": "string"},
                "size": {"type": ["integer", "null"]}
            })),
        ),
        spec("ping", Value::Null),
    ]
}

/// Parses with [`tools`], numbering generated ids `gen1`, `gen2`, ...
fn parse(syntax: ToolSyntax, text: &str) -> Result<ParsedReply> {
    parse_with(syntax, text, &tools())
}

fn parse_with(syntax: ToolSyntax, text: &str, tools: &[ToolSpec]) -> Result<ParsedReply> {
    let mut n = 0;
    syntax.parse(text, tools, &mut || {
        n += 1;
        format!("gen{n}")
    })
}

fn calls(syntax: ToolSyntax, text: &str) -> Vec<ToolCall> {
    match parse(syntax, text) {
        Ok(reply) => reply.calls,
        Err(e) => panic!("{syntax:?} failed on {text:?}: {e}"),
    }
}

fn arguments(call: &ToolCall) -> Value {
    serde_json::from_str(&call.arguments).expect("arguments are JSON")
}

/// The prefixes of `text` that cut it at a character boundary, shortest first.
fn prefixes(text: &str) -> impl Iterator<Item = &str> {
    text.char_indices().map(move |(i, _)| &text[..i]).chain(std::iter::once(text))
}

#[test]
fn one_call() {
    for f in fixtures() {
        let reply = parse(f.syntax, f.one).unwrap();
        assert_eq!(reply.content, "", "{:?}", f.syntax);
        assert_eq!(reply.calls.len(), 1, "{:?}", f.syntax);
        assert_eq!(reply.calls[0].name, "get_weather", "{:?}", f.syntax);
        assert_eq!(reply.calls[0].arguments, r#"{"city":"Paris"}"#, "{:?}", f.syntax);
    }
}

#[test]
fn parallel_calls() {
    for f in fixtures() {
        let calls = calls(f.syntax, f.two);
        let args: Vec<_> = calls.iter().map(|c| c.arguments.as_str()).collect();
        assert_eq!(args, [r#"{"city":"Paris"}"#, r#"{"city":"東京","days":3}"#], "{:?}", f.syntax);
        assert!(calls.iter().all(|c| c.name == "get_weather"), "{:?}", f.syntax);
    }
}

#[test]
fn nested_unicode_arguments_round_trip() {
    let expected: Value = serde_json::from_str(NESTED).unwrap();
    for f in fixtures() {
        let calls = calls(f.syntax, f.nested);
        assert_eq!(calls.len(), 1, "{:?}", f.syntax);
        assert_eq!(calls[0].name, "plan_trip");
        assert_eq!(calls[0].arguments, NESTED, "{:?}", f.syntax);
        assert_eq!(arguments(&calls[0]), expected, "{:?}", f.syntax);
    }
}

#[test]
fn text_before_the_call_is_content() {
    for f in fixtures() {
        let text = format!("Let me check.\n\n{}", f.one);
        let reply = parse(f.syntax, &text).unwrap();
        if f.syntax == ToolSyntax::LlamaJson {
            // A Llama call is the whole reply: a `{` after text is text.
            assert_eq!(reply, ParsedReply { content: text, calls: vec![] });
        } else {
            assert_eq!(reply.content, "Let me check.", "{:?}", f.syntax);
            assert_eq!(reply.calls.len(), 1, "{:?}", f.syntax);
        }
    }
    let reply = parse(ToolSyntax::LlamaJson, &format!("\n  {}", fixtures()[5].one)).unwrap();
    assert_eq!((reply.content.as_str(), reply.calls.len()), ("", 1));
}

/// A call after a thought: the reply split first (`<think>` and Mistral's `[THINK]`, a
/// call's trigger mentioned inside the thought), the content then parsed to the call.
#[test]
fn a_call_after_thinking() {
    use crate::chat::reasoning::{split_reasoning, ThinkTags};
    for f in fixtures() {
        for tags in [ThinkTags::ANGLE, ThinkTags::MISTRAL] {
            let thought = format!("Maybe {} get_weather, for Paris.", f.syntax.trigger());
            let reply = format!("{}{thought}{}\n\n{}", tags.open, tags.close, f.one);
            let (reasoning, content) = split_reasoning(&reply, tags, false);
            assert_eq!(reasoning.as_deref(), Some(thought.as_str()), "{:?}", f.syntax);
            let calls = calls(f.syntax, &content);
            assert_eq!((calls.len(), calls[0].arguments.as_str()), (1, r#"{"city":"Paris"}"#), "{:?} {tags:?}", f.syntax);
        }
    }
}

#[test]
fn every_cut_of_a_call_is_truncated() {
    for f in fixtures() {
        let start = f.syntax.trigger().len();
        for full in [f.one, f.nested] {
            for cut in prefixes(full).filter(|p| p.len() >= start && p.len() < full.len()) {
                assert_eq!(parse(f.syntax, cut), Err(ToolParseError::Truncated), "{:?} on {cut:?}", f.syntax);
            }
        }
    }
}

#[test]
fn reply_without_a_call_is_content() {
    for f in fixtures() {
        for text in
            ["", "The weather in Paris is sunny.", "Sets like {1, 2} and lists like [1, 2].\n", "<tool call> [TOOL CALLS]"]
        {
            assert_eq!(parse(f.syntax, text), Ok(ParsedReply { content: text.into(), calls: vec![] }), "{:?}", f.syntax);
        }
    }
}

#[test]
fn malformed_calls_are_errors() {
    for f in fixtures() {
        for text in f.malformed {
            let err = parse(f.syntax, text).expect_err(text);
            assert_ne!(err, ToolParseError::Truncated, "{:?} on {text:?}", f.syntax);
        }
    }
}

#[test]
fn unknown_tools_are_errors_unless_none_are_offered() {
    for f in fixtures() {
        let text = f.one.replace("get_weather", "launch");
        assert_eq!(parse(f.syntax, &text), Err(ToolParseError::UnknownTool("launch".into())), "{:?}", f.syntax);
        let reply = parse_with(f.syntax, &text, &[]).unwrap();
        assert_eq!((reply.calls[0].name.as_str(), reply.calls[0].arguments.as_str()), ("launch", r#"{"city":"Paris"}"#));
    }
}

#[test]
fn ids_come_from_the_text_or_new_id() {
    for f in fixtures() {
        let ids: Vec<_> = calls(f.syntax, f.two).into_iter().map(|c| c.id).collect();
        let expected = match f.syntax {
            ToolSyntax::MistralJson | ToolSyntax::MistralCallId => ["a1b2c3d4e", "f5g6h7i8j"],
            _ => ["gen1", "gen2"],
        };
        assert_eq!(ids, expected, "{:?}", f.syntax);
    }
}

#[test]
fn mistral_spellings() {
    use ToolSyntax::*;
    let spaced = "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"days\": 3, \"city\": \"Paris\"}}]</s>";
    let call = &calls(MistralJson, spaced)[0];
    assert_eq!((call.id.as_str(), call.arguments.as_str()), ("gen1", r#"{"days":3,"city":"Paris"}"#));
    // A single object, arguments as a JSON string (kept as written).
    let single = r#"[TOOL_CALLS]{"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}"#;
    assert_eq!(calls(MistralJson, single)[0].arguments, r#"{"city": "Paris"}"#);
    let no_args = r#"[TOOL_CALLS][{"name": "ping"}]"#;
    assert_eq!(calls(MistralJson, no_args)[0].arguments, "{}");
    let bad_string = r#"[TOOL_CALLS][{"name": "get_weather", "arguments": "{\"city\": "}]"#;
    assert!(matches!(parse(MistralJson, bad_string), Err(ToolParseError::InvalidJson(_))));
    // v13 with end-of-turn and whitespace after; text after is malformed.
    let args = "Checking. [TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"} \n</s>";
    let reply = parse(MistralArgs, args).unwrap();
    assert_eq!((reply.content.as_str(), reply.calls.len()), ("Checking.", 1));
    assert!(matches!(parse(MistralArgs, "[TOOL_CALLS]ping[ARGS]{} ok"), Err(ToolParseError::Malformed(_))));
    // The versions read each other's spelling.
    for syntax in [MistralJson, MistralCallId, MistralArgs] {
        for f in &fixtures()[..3] {
            assert_eq!(calls(syntax, f.two).len(), 2, "{syntax:?} on {:?}", f.syntax);
        }
    }
    assert_eq!(calls(MistralCallId, "[TOOL_CALLS]ping[CALL_ID][ARGS]{}")[0].id, "gen1");
}

#[test]
fn qwen_parameters_follow_the_schema() {
    let text = concat!(
        "<tool_call>\n<function=configure>\n",
        "<parameter=count>\n3\n</parameter>\n<parameter=label>\n3\n</parameter>\n",
        "<parameter=verbose>\nTrue\n</parameter>\n<parameter=options>\n{\"depth\": 2, \"mode\": \"fast\"}\n</parameter>\n",
        "<parameter=tags>\n[\"a\", \"b\"]\n</parameter>\n<parameter=ratio>\n0.5\n</parameter>\n",
        "<parameter=limit>\nnull\n</parameter>\n<parameter=size>\n7\n</parameter>\n",
        "<parameter=code>\ndef f():\n    return 1\n\n</parameter>\n",
        "</function>\n</tool_call>"
    );
    let expected = concat!(
        r#"{"count":3,"label":"3","verbose":true,"options":{"depth":2,"mode":"fast"},"tags":["a","b"],"#,
        r#""ratio":0.5,"limit":null,"size":7,"code":"def f():\n    return 1\n"}"#
    );
    assert_eq!(calls(ToolSyntax::QwenXml, text)[0].arguments, expected);
    // A value that does not fit its non-string type stays a string.
    let loose = "<tool_call>\n<function=configure>\n<parameter=count>\nmany\n</parameter>\n<parameter=label>\nnull\n</parameter>\n</function>\n</tool_call>";
    assert_eq!(calls(ToolSyntax::QwenXml, loose)[0].arguments, r#"{"count":"many","label":"null"}"#);
}

#[test]
fn qwen_without_schema_and_lenient_closing() {
    // `ping` has no schema: JSON where the value parses, else a string.
    let text = "<tool_call>\n<function=ping>\n<parameter=a>\n42\n</parameter>\n<parameter=b>\nhello\nworld\n</parameter>\n<parameter=c>\n{\"x\": 1}\n</parameter>\n</function>\n</tool_call>";
    assert_eq!(calls(ToolSyntax::QwenXml, text)[0].arguments, r#"{"a":42,"b":"hello\nworld","c":{"x":1}}"#);
    let bare = "<tool_call>\n<function=ping>\n</function>\n</tool_call>";
    assert_eq!(calls(ToolSyntax::QwenXml, bare)[0].arguments, "{}");
    // A missing `</parameter>` ends at the next parameter or at `</function>`.
    let open =
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n<parameter=days>\n2\n</function>\n</tool_call><|im_end|>";
    assert_eq!(calls(ToolSyntax::QwenXml, open)[0].arguments, r#"{"city":"Paris","days":2}"#);
}

#[test]
fn tool_call_blocks_hold_xml_or_json() {
    let all = fixtures();
    let mixed = format!("{}\n{}", all[3].one, all[4].one);
    for syntax in [ToolSyntax::QwenXml, ToolSyntax::Hermes] {
        assert_eq!(calls(syntax, &mixed).len(), 2);
    }
}

#[test]
fn llama_spellings() {
    use ToolSyntax::LlamaJson;
    let tagged = r#"<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>"#;
    assert_eq!(calls(LlamaJson, tagged)[0].arguments, r#"{"city":"Paris"}"#);
    let lines = "  \n{\"type\": \"function\", \"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}};\n<|eot_id|>";
    let reply = parse(LlamaJson, lines).unwrap();
    assert_eq!(reply.content, "");
    assert_eq!(
        reply.calls.iter().map(|c| c.arguments.as_str()).collect::<Vec<_>>(),
        [r#"{"city":"Paris"}"#, r#"{"city":"Rome"}"#]
    );
    let openai = r#"{"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}"#;
    assert_eq!(calls(LlamaJson, openai)[0].arguments, r#"{"city": "Paris"}"#);
}

#[test]
fn detect_from_template_snippets() {
    use ToolSyntax::*;
    let cases = [
        ("{%- if message.tool_calls %}[TOOL_CALLS]{{ message.tool_calls | tojson }}{% endif %}", Some(MistralJson)),
        ("[TOOL_CALLS]{{ call.function.name }}[CALL_ID]{{ call.id }}[ARGS]{{ call.function.arguments }}", Some(MistralCallId)),
        ("[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS][TOOL_CALLS]{{ name }}[ARGS]{{ args }}", Some(MistralArgs)),
        ("<tool_call>\n<function={{ tool_call.name }}>\n<parameter={{ name }}>", Some(QwenXml)),
        ("<tool_call>\n{{ tool_call | tojson }}\n</tool_call>", Some(Hermes)),
        ("{%- if tools is not none %}<|start_header_id|>ipython<|end_header_id|>", Some(LlamaJson)),
        ("{% if tools %}<|python_tag|>{{ call }}{% endif %}", Some(LlamaJson)),
        ("<|start_header_id|>ipython<|end_header_id|>", None),
        ("{% for message in messages %}{{ message.content }}{% endfor %}", None),
    ];
    for (template, expected) in cases {
        assert_eq!(ToolSyntax::detect(template), expected, "{template}");
    }
    assert_eq!(MistralArgs.trigger(), "[TOOL_CALLS]");
    assert_eq!((QwenXml.trigger(), Hermes.trigger(), LlamaJson.trigger()), ("<tool_call>", "<tool_call>", "{"));
}

#[test]
fn ids_are_alphanumeric_and_differ() {
    let mut state = 7;
    let ids: Vec<_> = (0..100).map(|_| mistral_id(&mut state)).collect();
    assert!(ids.iter().all(|id| id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric())));
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len());
    let id = openai_id(&mut state);
    assert!(id.len() == 29 && id.starts_with("call_") && id[5..].chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
    assert_ne!(openai_id(&mut 1), openai_id(&mut 2));
}

#[test]
fn garbage_never_panics() {
    let mut texts: Vec<String> = Vec::new();
    for f in fixtures() {
        for full in [f.one, f.two, f.nested].into_iter().chain(f.malformed.iter().copied()) {
            texts.extend(prefixes(full).map(String::from));
            texts.extend(full.char_indices().map(|(i, _)| full[i..].to_string()));
        }
    }
    const PIECES: &[&str] = &[
        "[TOOL_CALLS]",
        "[CALL_ID]",
        "[ARGS]",
        "<tool_call>",
        "</tool_call>",
        "<function=",
        "</function>",
        "<parameter=",
        "</parameter>",
        "<|python_tag|>",
        "</s>",
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        ";",
        "\n",
        " ",
        ">",
        "<",
        "=",
        "\\",
        "\\u00",
        "get_weather",
        "\"name\"",
        "\"arguments\"",
        "\"parameters\"",
        "3",
        "null",
        "Zürich",
        "東京",
        "🚀",
        "x",
    ];
    let mut state = 1;
    for _ in 0..3000 {
        let len = splitmix64(&mut state) % 24;
        texts.push((0..len).map(|_| PIECES[(splitmix64(&mut state) % PIECES.len() as u64) as usize]).collect());
    }
    texts.push(format!("[TOOL_CALLS]{}", "[".repeat(100_000)));
    texts.push("{\"name\": ".repeat(10_000));
    let tools = tools();
    for text in &texts {
        for f in fixtures() {
            for tools in [&tools[..], &[]] {
                if let Ok(reply) = parse_with(f.syntax, text, tools) {
                    for call in &reply.calls {
                        assert!(arguments(call).is_object(), "{:?} on {text:?}", f.syntax);
                    }
                }
            }
        }
    }
}
