//! Tool calling in chat completions: requests with `tools`, `tool_choice`, `tool` messages and
//! assistant calls checked field by field; conversations with tools, calls and results
//! rendered by each family's published template exactly as transformers renders them
//! (`tests/fixtures/tokenizer/chat_tools.json`, made by `scripts/make_tool_chat_refs.py`); and
//! the call syntax each template is detected to write; and `tool_choice` enforced by grammar on
//! four syntaxes' tiny random-weight models.

use crate::common::*;
use crate::gguf_vocab;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use webvlm::api::{run, ChatRequest, ToolChoice};
use webvlm::chat::tool_calls::ToolSyntax;
use webvlm::chat::{ChatContent, ChatMessage, ChatTemplate};
use webvlm::engine::{Engine, EngineError};
use webvlm::gguf::MappedGguf;
use webvlm::model::ContextOptions;
use webvlm::source::hf::HfModel;
use webvlm::source::Eager;

fn parse(request: Value) -> Result<ChatRequest, webvlm::api::ApiError> {
    ChatRequest::from_value(request, 1000)
}

fn weather_tool() -> Value {
    json!({ "type": "function", "function": {
        "name": "get_weather", "description": "Weather",
        "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] },
    }})
}

fn call_turn(id: &str) -> Value {
    json!({ "role": "assistant", "content": null,
        "tool_calls": [{ "id": id, "type": "function", "function": { "name": "get_weather", "arguments": "{\"city\": \"Paris\"}" } }] })
}

#[test]
fn bad_tool_requests_name_the_field() {
    let m = json!([{ "role": "user", "content": "hi" }]);
    let t = json!([weather_tool()]);
    let cases = [
        (json!({ "messages": m, "tools": {} }), "tools", "invalid_type"),
        (json!({ "messages": m, "tools": [{ "type": "retrieval" }] }), "tools[0].type", "invalid_value"),
        (
            json!({ "messages": m, "tools": [{ "type": "function", "function": { "name": "a b" } }] }),
            "tools[0].function.name",
            "invalid_value",
        ),
        (
            json!({ "messages": m, "tools": [{ "type": "function", "function": { "name": "f", "parameters": [] } }] }),
            "tools[0].function.parameters",
            "invalid_type",
        ),
        (
            json!({ "messages": m, "tools": [{ "type": "function", "function": { "name": "f", "params": {} } }] }),
            "tools[0].function.params",
            "unknown_parameter",
        ),
        (json!({ "messages": m, "tools": [weather_tool(), weather_tool()] }), "tools[1].function.name", "invalid_value"),
        (json!({ "messages": m, "tools": t, "tool_choice": "always" }), "tool_choice", "invalid_value"),
        (
            json!({ "messages": m, "tools": t, "tool_choice": { "type": "function", "function": { "name": "get_time" } } }),
            "tool_choice",
            "invalid_value",
        ),
        (json!({ "messages": m, "tool_choice": "required" }), "tool_choice", "invalid_value"),
        (json!({ "messages": m, "tools": t, "parallel_tool_calls": "yes" }), "parallel_tool_calls", "invalid_type"),
        (json!({ "messages": [{ "role": "user", "content": null }] }), "messages[0].content", "invalid_value"),
        (json!({ "messages": [{ "role": "assistant", "content": null }] }), "messages[0].content", "invalid_value"),
        (json!({ "messages": [{ "role": "tool", "content": "18 C" }] }), "messages[0].tool_call_id", "invalid_value"),
        (
            json!({ "messages": [call_turn("abc"), { "role": "tool", "tool_call_id": "xyz", "content": "18 C" }] }),
            "messages[1].tool_call_id",
            "invalid_value",
        ),
        (
            json!({ "messages": [{ "role": "user", "content": "x", "tool_call_id": "abc" }] }),
            "messages[0].tool_call_id",
            "invalid_value",
        ),
        (
            json!({ "messages": [{ "role": "user", "content": "x", "tool_calls": call_turn("a")["tool_calls"] }] }),
            "messages[0].tool_calls",
            "invalid_value",
        ),
    ];
    for (request, param, code) in cases {
        let err = parse(request.clone()).unwrap_err();
        assert_eq!((err.param.as_deref(), err.code), (Some(param), Some(code)), "{request}: {err:?}");
    }
}

#[test]
fn tool_requests_are_read() {
    let t = json!([weather_tool()]);
    let m = json!([
        { "role": "developer", "content": "Be brief." },
        { "role": "user", "content": "Weather in Paris?" },
        call_turn("a1b2c3d4e"),
        { "role": "tool", "tool_call_id": "a1b2c3d4e", "content": [{ "type": "text", "text": "18 C" }] },
    ]);
    let req = parse(json!({ "messages": m, "tools": t, "parallel_tool_calls": false })).unwrap();
    assert_eq!(req.messages[0].role, "system", "developer is read as system");
    assert_eq!(req.messages[2].content, ChatContent::Null);
    assert_eq!(req.messages[2].tool_calls[0].function.arguments, "{\"city\": \"Paris\"}");
    assert_eq!(req.messages[3].tool_call_id.as_deref(), Some("a1b2c3d4e"));
    assert_eq!((req.tools.choice.clone(), req.tools.parallel), (ToolChoice::Auto, false));
    assert_eq!(req.tools.specs[0].name, "get_weather");
    assert_eq!(req.tools.tools, t.as_array().unwrap().clone());
    let named = json!({ "type": "function", "function": { "name": "get_weather" } });
    for (choice, want) in [
        (json!("none"), ToolChoice::None),
        (json!("required"), ToolChoice::Required),
        (named, ToolChoice::Function("get_weather".into())),
    ] {
        let req = parse(json!({ "messages": m, "tools": t, "tool_choice": choice })).unwrap();
        assert_eq!(req.tools.choice, want);
    }
    let plain = parse(json!({ "messages": [{ "role": "user", "content": "hi" }] })).unwrap();
    assert_eq!((plain.tools.choice, plain.tools.specs.len()), (ToolChoice::None, 0));
}

#[derive(Deserialize)]
struct ToolFixture {
    tools: Vec<Value>,
    templates: Vec<FamilyTemplate>,
}

#[derive(Deserialize)]
struct FamilyTemplate {
    name: String,
    bos: String,
    eos: String,
    kwargs: Map<String, Value>,
    chat_template: String,
    cases: Vec<ToolCase>,
}

#[derive(Deserialize)]
struct ToolCase {
    name: String,
    messages: Vec<ChatMessage>,
    text: String,
}

/// When `scripts/make_tool_chat_refs.py` rendered the references: 2026-11-26 12:00 UTC.
const REFERENCES_RENDERED_AT: i64 = 1_795_694_400;

/// Each family's published template renders a conversation with tools, calls (one, and two in
/// a turn where the template takes them), their results and a follow-up exactly as
/// transformers does, from the messages in OpenAI's wire shape (arguments as JSON text) with
/// `tools` passed as the API passes them; and each is detected to write its family's calls.
#[test]
fn tool_conversations_render_as_transformers_renders_them() {
    let path = gguf_vocab::fixture("tokenizer/chat_tools.json");
    let fixture: ToolFixture = serde_json::from_str(&std::fs::read_to_string(&path).expect("chat_tools.json")).expect("JSON");
    let mut failures = Vec::new();
    let mut rendered = 0;
    for family in &fixture.templates {
        let mut template = ChatTemplate::new(&family.chat_template, &family.bos, &family.eos).expect("template compiles");
        // Templates that print today's date (Mistral Small's) print the references' day.
        template.set_fixed_time(Some(REFERENCES_RENDERED_AT));
        let want = match family.name.as_str() {
            "qwen35" => ToolSyntax::QwenXml,
            "hermes_qwen25" => ToolSyntax::Hermes,
            "mistral_nemo_v3" => ToolSyntax::MistralJson,
            "mistral_small_32_v11" => ToolSyntax::MistralCallId,
            "ministral3_v13" => ToolSyntax::MistralArgs,
            _ => ToolSyntax::LlamaJson,
        };
        assert_eq!(template.tool_syntax(), Some(want), "{}", family.name);
        let mut kwargs = family.kwargs.clone();
        kwargs.insert("tools".into(), Value::Array(fixture.tools.clone()));
        for case in &family.cases {
            let text = template.render(&case.messages, true, Some(&kwargs)).expect("render");
            if text != case.text {
                failures.push(format!("{} {}: rendered\n{text:?}\nwant\n{:?}", family.name, case.name, case.text));
            }
            rendered += 1;
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(rendered, 12);
}

/// The tiny random-weight engines of three families, on the CPU backend, with their real
/// templates: Ministral 3's (Tekken vocabulary, `[TOOL_CALLS]name[ARGS]{..}`), Qwen3.5's
/// (XML calls) and Llama 3.2 Vision's (JSON calls); and for Hermes' `<tool_call>` JSON (the
/// ChatML family's), another tiny Qwen3.5 with Qwen2.5's published template.
fn family_engines() -> Vec<(&'static str, Engine)> {
    let fixture_json: Value =
        serde_json::from_str(&std::fs::read_to_string(gguf_vocab::fixture("tokenizer/chat_tools.json")).unwrap()).unwrap();
    let hermes = fixture_json["templates"].as_array().unwrap().iter().find(|t| t["name"] == "hermes_qwen25").unwrap();
    let hermes = gguf_with_template(&fixture("tiny_qwen35_b").join("model.gguf"), hermes["chat_template"].as_str().unwrap());
    let opts = ContextOptions { max_ctx: 2048, max_chunk: 64, ..Default::default() };
    let gguf = |name: &str| MappedGguf::open(fixture(name).join("model.gguf")).unwrap();
    let mllama = HfModel::open(fixture("tiny_mllama_a")).unwrap();
    vec![
        ("ministral3", Engine::builder(cpu()).context(opts).load(&mut Eager(&gguf(TINY_VLM))).unwrap()),
        ("qwen35", Engine::builder(cpu()).context(opts).load(&mut Eager(&gguf("tiny_qwen35_a"))).unwrap()),
        ("llama32_vision", Engine::builder(cpu()).context(opts).hf_text(mllama.text_files()).load(&mut Eager(&mllama)).unwrap()),
        ("hermes_qwen25", Engine::builder(cpu()).context(opts).load(&mut Eager(&hermes)).unwrap()),
    ]
}

/// A tool whose arguments a random walk finishes quickly: bounded strings, an enum, a bounded
/// integer, one optional property.
fn bounded_tools() -> Value {
    json!([
        { "type": "function", "function": { "name": "get_weather", "parameters": { "type": "object", "properties": {
            "city": { "type": "string", "maxLength": 8 },
            "unit": { "type": "string", "enum": ["c", "f"] },
            "days": { "type": "integer", "minimum": 1, "maximum": 7 } }, "required": ["city", "unit"] } } },
        { "type": "function", "function": { "name": "get_time", "parameters": { "type": "object", "properties": {
            "zone": { "type": "string", "maxLength": 6 } }, "required": ["zone"] } } },
    ])
}

fn run_request(e: &mut Engine, request: Value) -> Value {
    run_streamed(e, request).0
}

/// The response to `request` and its stream chunks (none unless it streams).
fn run_streamed(e: &mut Engine, request: Value) -> (Value, Vec<Value>) {
    let req = ChatRequest::from_value(request, e.decoder().cfg.vocab as usize).unwrap();
    let mut chunks = Vec::new();
    let reply = pollster::block_on(run(e, &req, &mut |u| Err(EngineError::BadImageUrl(u.into())), None, |c| {
        chunks.push(c);
        None
    }))
    .unwrap();
    (reply, chunks)
}

/// A stream's deltas put together: `(content, tool_calls, finish_reason)`, each call's
/// argument fragments joined in its `index`.
fn assemble(chunks: &[Value]) -> (String, Vec<Value>, String) {
    let (mut content, mut calls, mut finish) = (String::new(), Vec::<Value>::new(), String::new());
    for chunk in chunks {
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        content.push_str(delta["content"].as_str().unwrap_or_default());
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = call["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                calls.push(json!({ "id": call["id"], "type": call["type"], "function": { "name": call["function"]["name"], "arguments": "" } }));
            }
            let args = format!(
                "{}{}",
                calls[i]["function"]["arguments"].as_str().unwrap(),
                call["function"]["arguments"].as_str().unwrap_or_default()
            );
            calls[i]["function"]["arguments"] = json!(args);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (content, calls, finish)
}

/// With random weights, `tool_choice: "required"` still ends every seeded sampled request in
/// `tool_calls` whose arguments validate against their tool's schema (the independent
/// `jsonschema` crate), a named function is always the one called, and `none` never calls.
#[test]
fn tool_choice_is_enforced_by_grammar_on_random_weights() {
    let tools = bounded_tools();
    let validators: Vec<(String, jsonschema::Validator)> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["function"]["name"].as_str().unwrap().to_string(),
                jsonschema::validator_for(&t["function"]["parameters"]).unwrap(),
            )
        })
        .collect();
    let messages = json!([{ "role": "user", "content": "Weather in Paris, please." }]);
    let named = json!({ "type": "function", "function": { "name": "get_time" } });
    for (family, mut e) in family_engines() {
        for seed in 0..30 {
            let choice = if seed % 3 == 2 { named.clone() } else { json!("required") };
            let reply = run_request(
                &mut e,
                json!({ "messages": messages, "tools": tools, "tool_choice": choice, "temperature": 1.0, "seed": seed, "max_tokens": 600,
                        "chat_template_kwargs": { "enable_thinking": false } }),
            );
            let choice0 = &reply["choices"][0];
            assert_eq!(choice0["finish_reason"], "tool_calls", "{family} seed {seed}: {reply}");
            let calls = choice0["message"]["tool_calls"].as_array().unwrap();
            assert!(!calls.is_empty(), "{family} seed {seed}");
            for call in calls {
                let name = call["function"]["name"].as_str().unwrap();
                if seed % 3 == 2 {
                    assert_eq!(name, "get_time", "{family} seed {seed}: a named choice calls that function");
                }
                let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
                let (_, validator) = validators.iter().find(|(n, _)| n == name).unwrap();
                assert!(validator.is_valid(&args), "{family} seed {seed}: {name}({args}) does not validate");
                assert_eq!(call["type"], "function");
                assert!(!call["id"].as_str().unwrap().is_empty());
            }
        }
        // Under `auto` the text is free until the call's trigger token, then the call is
        // constrained: the trigger favoured by `logit_bias`, every reply is a valid call.
        let trigger = match family {
            "ministral3" => "[TOOL_CALLS]",
            "llama32_vision" => "",
            _ => "<tool_call>",
        };
        if let Some(id) = e.tokenizer().token_id(trigger) {
            for seed in 0..10 {
                let reply = run_request(
                    &mut e,
                    json!({ "messages": messages, "tools": tools, "temperature": 1.0, "seed": seed, "max_tokens": 600,
                            "logit_bias": { id.to_string(): 100 }, "chat_template_kwargs": { "enable_thinking": false } }),
                );
                let calls = reply["choices"][0]["message"]["tool_calls"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{family} auto seed {seed}: {reply}"));
                for call in calls {
                    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
                    let (_, validator) =
                        validators.iter().find(|(n, _)| n == call["function"]["name"].as_str().unwrap()).unwrap();
                    assert!(validator.is_valid(&args), "{family} auto seed {seed}: {args}");
                }
            }
        }
        // Streamed, the deltas put together equal the stream's own response, ids included, and
        // the plain response (the ids apart: each response draws its own). The arguments come
        // in fragments, but for Llama 3's JSON (held whole: a reply that opens with `{` may be
        // text).
        let mut most_fragments = 0;
        for seed in 0..3 {
            let request = json!({ "messages": messages, "tools": tools, "tool_choice": "required", "temperature": 1.0, "seed": seed,
                                  "max_tokens": 600, "chat_template_kwargs": { "enable_thinking": false } });
            let whole = run_request(&mut e, request.clone());
            let mut streamed = request;
            streamed["stream"] = json!(true);
            let (reply, chunks) = run_streamed(&mut e, streamed);
            let (content, mut calls, finish) = assemble(&chunks);
            let message = &whole["choices"][0]["message"];
            assert_eq!(content, message["content"].as_str().unwrap_or_default(), "{family} seed {seed}");
            assert_eq!(finish, "tool_calls", "{family} seed {seed}");
            assert_eq!(json!(calls), reply["choices"][0]["message"]["tool_calls"], "{family} seed {seed}");
            let mut want = message["tool_calls"].clone();
            for (got, want) in calls.iter_mut().zip(want.as_array_mut().unwrap()) {
                got["id"] = json!("");
                want["id"] = json!("");
            }
            assert_eq!(json!(calls), want, "{family} seed {seed}");
            let fragments = chunks
                .iter()
                .flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().cloned().unwrap_or_default())
                .filter(|d| d["index"] == 0 && d["function"]["arguments"].as_str().is_some_and(|a| !a.is_empty()))
                .count();
            most_fragments = most_fragments.max(fragments);
        }
        if family == "llama32_vision" {
            assert_eq!(most_fragments, 1, "Llama 3's calls come whole");
        } else {
            assert!(most_fragments > 2, "{family}: the first call's arguments came in {most_fragments} fragments at most");
        }
        for seed in 0..10 {
            let reply = run_request(
                &mut e,
                json!({ "messages": messages, "tools": tools, "tool_choice": "none", "temperature": 1.0, "seed": seed, "max_tokens": 24 }),
            );
            assert_ne!(reply["choices"][0]["finish_reason"], "tool_calls", "{family} seed {seed}: {reply}");
            assert!(reply["choices"][0]["message"].get("tool_calls").is_none());
        }
    }
}

/// A call after thinking (Qwen3.5 with its think block on, `</think>` favoured so that the
/// random thoughts end): the thought is split out as `reasoning_content`, the call after it is
/// constrained and parsed. And `response_format` beside tools, as vLLM has it: under `auto` the
/// format constrains the reply and no call can start (the trigger favoured all the same),
/// under `required` the call grammar wins.
#[test]
fn calls_after_thinking_and_beside_response_format() {
    let tools = bounded_tools();
    let messages = json!([{ "role": "user", "content": "Weather in Paris, please." }]);
    let mut engines = family_engines();
    let (_, qwen) = engines.iter_mut().find(|(f, _)| *f == "qwen35").unwrap();
    let close = qwen.tokenizer().token_id("</think>").expect("Qwen3.5's vocabulary has </think>");
    let mut thoughts = 0;
    for seed in 0..6 {
        let request = json!({ "messages": messages, "tools": tools, "tool_choice": "required", "temperature": 1.0, "seed": seed,
                              "max_tokens": 600, "logit_bias": { close.to_string(): 6 } });
        let reply = run_request(qwen, request.clone());
        let message = &reply["choices"][0]["message"];
        assert_eq!(reply["choices"][0]["finish_reason"], "tool_calls", "seed {seed}: {reply}");
        assert!(message["reasoning_content"].is_string(), "seed {seed}: the thought is split out: {message}");
        assert!(!message["tool_calls"].as_array().unwrap().is_empty());
        thoughts += usize::from(!message["reasoning_content"].as_str().unwrap().trim().is_empty());
        let mut streamed = request;
        streamed["stream"] = json!(true);
        let (_, chunks) = run_streamed(qwen, streamed);
        let reasoning: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str()).collect();
        assert_eq!(reasoning, message["reasoning_content"].as_str().unwrap(), "seed {seed}");
        assert_eq!(assemble(&chunks).2, "tool_calls");
    }
    assert!(thoughts > 0, "no reply thought before its call");
    // Under `auto`, a trigger inside the thought stays thought (the lazy grammar waits for
    // `</think>`) and one after it starts the call: with both favoured, replies whose thought
    // holds `<tool_call>` still end in calls.
    let trigger = qwen.tokenizer().token_id("<tool_call>").unwrap();
    let mut mentioned_then_called = 0;
    for seed in 0..8 {
        let bias = json!({ close.to_string(): 100, trigger.to_string(): 100 });
        let request = json!({ "messages": messages, "tools": tools, "temperature": 1.0, "seed": seed, "max_tokens": 300, "logit_bias": bias });
        let reply = run_request(qwen, request);
        let message = &reply["choices"][0]["message"];
        let reasoning = message["reasoning_content"].as_str().unwrap_or_default();
        if reasoning.contains("<tool_call>") && message["tool_calls"].as_array().is_some_and(|c| !c.is_empty()) {
            mentioned_then_called += 1;
        }
    }
    assert!(mentioned_then_called > 0, "no reply called after a thought that held the trigger");

    let (_, ministral) = engines.iter_mut().find(|(f, _)| *f == "ministral3").unwrap();
    let trigger = ministral.tokenizer().token_id("[TOOL_CALLS]").unwrap();

    let schema = json!({ "type": "json_schema", "json_schema": { "name": "answer", "strict": true, "schema": {
        "type": "object", "properties": { "ok": { "type": "boolean" } }, "required": ["ok"], "additionalProperties": false } } });
    for seed in 0..4 {
        let auto = run_request(
            ministral,
            json!({ "messages": messages, "tools": tools, "response_format": schema, "temperature": 1.0, "seed": seed,
                    "max_tokens": 60, "logit_bias": { trigger.to_string(): 100 } }),
        );
        let choice = &auto["choices"][0];
        assert!(choice["message"]["tool_calls"].is_null(), "seed {seed}: auto with a format called: {auto}");
        let content: Value = serde_json::from_str(choice["message"]["content"].as_str().unwrap()).unwrap();
        assert!(content["ok"].is_boolean(), "seed {seed}: {content}");
        let required = run_request(
            ministral,
            json!({ "messages": messages, "tools": tools, "tool_choice": "required", "response_format": schema, "temperature": 1.0,
                    "seed": seed, "max_tokens": 600 }),
        );
        assert_eq!(required["choices"][0]["finish_reason"], "tool_calls", "seed {seed}: {required}");
    }
}
