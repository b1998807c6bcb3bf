//! Tool calling in chat completions: requests with `tools`, `tool_choice`, `tool` messages and
//! assistant calls checked field by field; conversations with tools, calls and results
//! rendered by each family's published template exactly as transformers renders them
//! (`tests/fixtures/tokenizer/chat_tools.json`, made by `scripts/make_tool_chat_refs.py`); and
//! the call syntax each template is detected to write.

use crate::gguf_vocab;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use webvlm::api::{ChatRequest, ToolChoice};
use webvlm::chat::tool_calls::ToolSyntax;
use webvlm::chat::{ChatContent, ChatMessage, ChatTemplate};

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
        let template = ChatTemplate::new(&family.chat_template, &family.bos, &family.eos).expect("template compiles");
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
