//! The grammar of a reply that must call a tool (`tool_choice: "required"` or a named
//! function), in each family's call syntax, for constrained decoding with llguidance's Lark
//! syntax: the syntax's markers (special tokens by id where the vocabulary has them), the
//! offered function names, and each function's arguments as an inline JSON Schema
//! (`%json {...}`), so that even a weak model writes a well-formed call whose arguments
//! validate.
//!
//! Reference: llama.cpp's `common/chat.cpp` (a grammar per format, trigger tokens kept as
//! "preserved tokens"), vLLM's structured outputs for named and required tool choices, and
//! llguidance's Lark syntax (its syntax documentation: `%json`, `<[id]>`). Qwen's XML calls carry
//! each parameter as raw text: a string parameter is one of its `enum` or one line without
//! `<` (at most its `maxLength` characters), any other parameter the JSON its schema admits.

use serde_json::{json, Map, Value};

use super::tool_calls::{ToolSpec, ToolSyntax};
use crate::constraint::with_json_options;

/// Most calls in one reply when parallel calls are allowed.
pub const MAX_PARALLEL_CALLS: usize = 4;

/// The Lark grammar of a reply of calls of `tools` (at least one; several, at most
/// [`MAX_PARALLEL_CALLS`], with `parallel`) in `syntax`. `marker` spells a marker text in the
/// grammar: `<[id]>` for a special token of the vocabulary, else the quoted text.
/// `after_think` prefixes a thought closed by `think_close` (the prompt opened a think block).
pub fn call_grammar(
    syntax: ToolSyntax,
    tools: &[ToolSpec],
    parallel: bool,
    after_think: Option<&str>,
    marker: &dyn Fn(&str) -> String,
) -> String {
    let max = if parallel { MAX_PARALLEL_CALLS } else { 1 };
    let mut g = String::new();
    let calls = match syntax {
        ToolSyntax::MistralJson => {
            let items = json!({ "anyOf": tools.iter().map(|t| call_object(t, "arguments", true)).collect::<Vec<_>>() });
            let list = json!({ "type": "array", "items": items, "minItems": 1, "maxItems": max });
            format!("{} %json {}", marker("[TOOL_CALLS]"), inline(list))
        }
        ToolSyntax::LlamaJson => {
            // Llama 3's templates take one call per turn.
            let one = json!({ "anyOf": tools.iter().map(|t| call_object(t, "parameters", false)).collect::<Vec<_>>() });
            format!("%json {}", inline(one))
        }
        _ => {
            for (i, tool) in tools.iter().enumerate() {
                g.push_str(&format!("call_{i}: {}\n", call_rule(syntax, tool, i, marker)));
            }
            for (i, tool) in tools.iter().enumerate() {
                if syntax == ToolSyntax::QwenXml {
                    qwen_params(&mut g, tool, i);
                }
            }
            let alternatives = (0..tools.len()).map(|i| format!("call_{i}")).collect::<Vec<_>>().join(" | ");
            g.push_str(&format!("call: {alternatives}\n"));
            let separator = if matches!(syntax, ToolSyntax::QwenXml | ToolSyntax::Hermes) { "\"\\n\" " } else { "" };
            format!("call ({separator}call){{0,{}}}", max - 1)
        }
    };
    let think = after_think.map_or(String::new(), |close| format!("/[^<]*/ {} /\\n{{0,2}}/ ", marker(close)));
    format!("start: {think}{calls}\n{g}")
}

/// One call of `tool` in a tag syntax (Hermes, Qwen's XML, Mistral's v11 and v13).
fn call_rule(syntax: ToolSyntax, tool: &ToolSpec, i: usize, marker: &dyn Fn(&str) -> String) -> String {
    let name = quoted(&tool.name);
    let args = format!("%json {}", inline(parameters(tool)));
    match syntax {
        ToolSyntax::Hermes => {
            let call = inline(call_object(tool, "arguments", false));
            format!("{} \"\\n\" %json {call} \"\\n\" {}", marker("<tool_call>"), marker("</tool_call>"))
        }
        ToolSyntax::QwenXml => format!(
            "{} {} params_{i} \"</function>\\n\" {}",
            marker("<tool_call>"),
            quoted(&format!("\n<function={}>\n", tool.name)),
            marker("</tool_call>")
        ),
        ToolSyntax::MistralCallId => {
            format!("{} {name} {} /[a-zA-Z0-9]{{9}}/ {} {args}", marker("[TOOL_CALLS]"), marker("[CALL_ID]"), marker("[ARGS]"))
        }
        _ => format!("{} {name} {} {args}", marker("[TOOL_CALLS]"), marker("[ARGS]")),
    }
}

/// Rule `params_{i}`: the `<parameter=...>` blocks of `tool`'s properties in schema order,
/// the required ones always and the others optionally.
fn qwen_params(g: &mut String, tool: &ToolSpec, i: usize) {
    let schema = parameters(tool);
    let required: Vec<&str> = schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let mut body = Vec::new();
    for (name, prop) in schema["properties"].as_object().into_iter().flatten() {
        let choices: Option<Vec<String>> =
            prop["enum"].as_array().and_then(|e| e.iter().map(|v| v.as_str().map(quoted)).collect());
        let value = match choices {
            Some(choices) if !choices.is_empty() => format!("({})", choices.join(" | ")),
            _ if prop["type"] == "string" => {
                let most = prop["maxLength"].as_u64().map_or(String::new(), |n| n.to_string());
                format!("/[^<\\n]{{0,{most}}}/")
            }
            _ => format!("%json {}", inline(prop.clone())),
        };
        let block = format!("{} {value} \"\\n</parameter>\\n\"", quoted(&format!("<parameter={name}>\n")));
        body.push(if required.contains(&name.as_str()) { format!("({block})") } else { format!("({block})?") });
    }
    let body = if body.is_empty() { "\"\"".to_string() } else { body.join(" ") };
    g.push_str(&format!("params_{i}: {body}\n"));
}

/// `tool`'s parameters schema, closed (`additionalProperties: false` unless it says
/// otherwise: a call holds the parameters the tool declares, as llama.cpp's grammars and
/// OpenAI's strict mode have it); an object of no properties where it has none.
fn parameters(tool: &ToolSpec) -> Value {
    let mut schema = match &tool.parameters {
        Value::Object(_) => tool.parameters.clone(),
        _ => json!({ "type": "object", "properties": {} }),
    };
    if let Some(map) = schema.as_object_mut() {
        map.entry("additionalProperties").or_insert(Value::Bool(false));
    }
    schema
}

/// The schema of a JSON call of `tool`: `{"name": <its name>, <args_key>: <its arguments>}`
/// (and a 9-character `id`, Mistral's, with `with_id`).
fn call_object(tool: &ToolSpec, args_key: &str, with_id: bool) -> Value {
    let mut properties = Map::new();
    properties.insert("name".into(), json!({ "const": tool.name }));
    properties.insert(args_key.into(), parameters(tool));
    let mut required = vec![json!("name"), json!(args_key)];
    if with_id {
        properties.insert("id".into(), json!({ "type": "string", "pattern": "^[a-zA-Z0-9]{9}$" }));
        required.push(json!("id"));
    }
    json!({ "type": "object", "properties": properties, "required": required, "additionalProperties": false })
}

/// `schema` to inline as `%json`, with the constraint module's JSON options (strict, and
/// bounded whitespace between tokens).
fn inline(mut schema: Value) -> Value {
    with_json_options(&mut schema, true);
    schema
}

/// `text` as a Lark string literal.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<ToolSpec> {
        let parameters = json!({ "type": "object", "properties": {
            "city": { "type": "string", "maxLength": 12 }, "days": { "type": "integer" } }, "required": ["city"] });
        vec![ToolSpec { name: "get_weather".into(), parameters }, ToolSpec { name: "now".into(), parameters: Value::Null }]
    }

    fn literal(text: &str) -> String {
        quoted(text)
    }

    #[test]
    fn grammars_name_every_tool_and_marker() {
        for syntax in [
            ToolSyntax::MistralJson,
            ToolSyntax::MistralCallId,
            ToolSyntax::MistralArgs,
            ToolSyntax::QwenXml,
            ToolSyntax::Hermes,
            ToolSyntax::LlamaJson,
        ] {
            let g = call_grammar(syntax, &tools(), true, None, &literal);
            assert!(g.starts_with("start: "), "{g}");
            assert!(g.contains("get_weather") && g.contains("now"), "{syntax:?}: {g}");
            if syntax != ToolSyntax::LlamaJson {
                assert!(syntax.markers().iter().all(|m| g.contains(&quoted(m))), "{syntax:?}: {g}");
            }
        }
        let qwen = call_grammar(ToolSyntax::QwenXml, &tools(), false, Some("</think>"), &|m| format!("<[{}]>", m.len()));
        assert!(qwen.starts_with("start: /[^<]*/ <[8]> /\\n{0,2}/ call (\"\\n\" call){0,0}"), "{qwen}");
        assert!(qwen.contains("(\"<parameter=city>\\n\" /[^<\\n]{0,12}/ \"\\n</parameter>\\n\") (\"<parameter=days>\\n\" %json {\"type\":\"integer\",\"x-guidance\""), "{qwen}");
    }
}
