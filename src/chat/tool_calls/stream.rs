//! The calls of a reply still being written, as far as its text settles them: each call's
//! name (and id, where the syntax writes one before the arguments) once its header is complete,
//! and the start of its arguments as the parser will write them back (compact JSON), so that
//! a stream can send argument fragments whose concatenation is the final `arguments`.
//!
//! Mistral's `name[ARGS]{..}` (v13) and `name[CALL_ID]id[ARGS]{..}` (v11), Hermes' JSON in
//! `<tool_call>` (`name` before `arguments`) and Qwen's XML (per completed parameter) stream
//! fragments; Mistral v3–v7's JSON list and Llama 3's JSON, whose ids or shapes are only known
//! at the end, settle nothing here (their calls come whole from [`ToolSyntax::parse`]).

use serde_json::{Map, Value};

use super::*;

/// A call as far as the reply's text settles it.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialCall {
    pub name: String,
    /// The id the text wrote for the call, if the syntax writes one (ahead of the arguments).
    pub id: Option<String>,
    /// What the final `arguments` text starts with.
    pub arguments: String,
}

impl ToolSyntax {
    /// The calls `text` (a reply being written, reasoning split off) settles so far, in
    /// order. Each later text that extends `text` settles the same calls or more, each
    /// call's `arguments` the same or longer, and [`ToolSyntax::parse`] of the whole reply
    /// (when it succeeds) writes arguments that start with them.
    pub fn settled_calls(self, text: &str, tools: &[ToolSpec]) -> Vec<PartialCall> {
        let Some(start) = self.find_trigger(text) else { return Vec::new() };
        let body = &text[start..];
        let mut calls = Vec::new();
        match self {
            Self::MistralArgs | Self::MistralCallId => {
                for segment in body.split(MISTRAL_CALLS).skip(1) {
                    match mistral_header(segment.trim_start(), tools) {
                        Some((name, id, args)) => calls.push(PartialCall { name, id, arguments: settled_json(args) }),
                        None => break,
                    }
                }
            }
            Self::QwenXml | Self::Hermes => {
                for block in body.split(TOOL_CALL_OPEN).skip(1) {
                    let block = block.trim_start();
                    let call = if block.starts_with('{') { hermes_header(block, tools) } else { xml_partial(block, tools) };
                    match call {
                        Some(call) => calls.push(call),
                        None => break,
                    }
                }
            }
            Self::MistralJson | Self::LlamaJson => {}
        }
        calls
    }
}

/// `name[ARGS]…` or `name[CALL_ID]id[ARGS]…`: the name, the id and the arguments' text, once
/// `[ARGS]` is written.
fn mistral_header<'t>(segment: &'t str, tools: &[ToolSpec]) -> Option<(String, Option<String>, &'t str)> {
    let (head, args) = segment.split_once(MISTRAL_ARGS)?;
    let (name, id) = match head.split_once(MISTRAL_CALL_ID) {
        Some((name, id)) => (name.trim(), Some(id.trim()).filter(|id| !id.is_empty())),
        None => (head.trim(), None),
    };
    let known = valid_name(name) && check_tool(name, tools).is_ok() && id.is_none_or(valid_name);
    known.then(|| (name.to_string(), id.map(String::from), args))
}

/// `{"name": "…", "arguments": …` (or `"parameters"`), once the name and the key are written.
fn hermes_header(block: &str, tools: &[ToolSpec]) -> Option<PartialCall> {
    let rest = block.strip_prefix('{')?.trim_start();
    let rest = rest.strip_prefix("\"name\"")?.trim_start().strip_prefix(':')?.trim_start();
    let (name, rest) = json_prefix(rest).ok()?;
    let name = name.as_str().filter(|n| check_tool(n, tools).is_ok())?.to_string();
    let rest = rest.trim_start().strip_prefix(',')?.trim_start();
    let args = ["\"arguments\"", "\"parameters\""].iter().find_map(|key| rest.strip_prefix(key))?;
    let args = args.trim_start().strip_prefix(':')?;
    Some(PartialCall { name, id: None, arguments: settled_json(args) })
}

/// `<function=name>` and the parameters whose end is written, as the compact JSON object
/// [`xml_function`] makes of them, less its closing brace until `</function>`.
fn xml_partial(block: &str, tools: &[ToolSpec]) -> Option<PartialCall> {
    let (name, mut rest) = split_tag_name(block.strip_prefix(FUNCTION_OPEN)?).ok()?;
    if !valid_name(name) || check_tool(name, tools).is_err() {
        return None;
    }
    let schema = tools.iter().find(|t| t.name == name).map(|t| &t.parameters);
    let mut arguments = Map::new();
    let mut closed = false;
    loop {
        rest = rest.trim_start();
        if rest.starts_with(FUNCTION_CLOSE) {
            closed = true;
            break;
        }
        let Some(after) = rest.strip_prefix(PARAMETER_OPEN) else { break };
        let Ok((param, body)) = split_tag_name(after) else { break };
        let Some(end) = [PARAMETER_CLOSE, PARAMETER_OPEN, FUNCTION_CLOSE].iter().filter_map(|tag| body.find(tag)).min() else {
            break;
        };
        let (raw, tail) = body.split_at(end);
        let raw = raw.strip_prefix('\n').unwrap_or(raw);
        let raw = raw.strip_suffix('\n').unwrap_or(raw);
        arguments.insert(param.to_string(), convert_parameter(raw, &parameter_types(schema, param)));
        rest = tail.strip_prefix(PARAMETER_CLOSE).unwrap_or(tail);
    }
    let mut text = to_json(&Value::Object(arguments)).ok()?;
    if !closed {
        text.pop();
    }
    Some(PartialCall { name: name.to_string(), id: None, arguments: text })
}

/// The compact JSON that `raw`, the start of a JSON value being written, settles: the
/// re-serialization of any completion of it starts with the returned text. Cuts where the
/// text so far can be closed (after an opening bracket, after a complete value, inside a
/// string value), closes it, re-serializes it and takes the closers off again.
fn settled_json(raw: &str) -> String {
    let bytes = raw.as_bytes();
    // Open brackets, and the last cut: its byte offset and the closers it needs.
    let mut stack: Vec<u8> = Vec::new();
    let mut cut: Option<(usize, String)> = None;
    let closers = |stack: &[u8], quote: bool| {
        let brackets = stack.iter().rev().map(|&b| if b == b'{' { '}' } else { ']' });
        (if quote { "\"" } else { "" }).chars().chain(brackets).collect::<String>()
    };
    let (mut in_string, mut string_is_key, mut expect_key, mut in_scalar) = (false, false, false, false);
    let mut escape = 0usize; // bytes of an escape sequence still to come
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escape > 0 {
                escape -= 1;
            } else if b == b'\\' {
                escape = if bytes.get(i + 1) == Some(&b'u') { 5 } else { 1 };
                continue;
            } else if b == b'"' {
                in_string = false;
                if !string_is_key {
                    cut = Some((i + 1, closers(&stack, false)));
                }
                continue;
            }
            if escape == 0 && !string_is_key && raw.is_char_boundary(i + 1) {
                cut = Some((i + 1, closers(&stack, true)));
            }
            continue;
        }
        if in_scalar && !(b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
            in_scalar = false;
            cut = Some((i, closers(&stack, false)));
        }
        match b {
            b'{' | b'[' => {
                stack.push(b);
                expect_key = b == b'{';
                cut = Some((i + 1, closers(&stack, false)));
            }
            b'}' | b']' => {
                stack.pop();
                cut = Some((i + 1, closers(&stack, false)));
                if stack.is_empty() {
                    break;
                }
            }
            b'"' => {
                in_string = true;
                string_is_key = expect_key;
                expect_key = false;
            }
            b',' => expect_key = stack.last() == Some(&b'{'),
            b':' | b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => in_scalar = true,
        }
    }
    let Some((at, closers)) = cut else { return String::new() };
    let Ok(value) = serde_json::from_str::<Value>(&format!("{}{closers}", &raw[..at])) else { return String::new() };
    let Ok(mut text) = to_json(&value) else { return String::new() };
    text.truncate(text.len().saturating_sub(closers.len()));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settled_json_is_a_prefix_of_every_completion() {
        let whole = r#" {"city": "Z\u00fcrich \"old\" 東京", "days": 12, "ok": true, "stops": [1.50, {"a": null}], "e": {}}"#;
        let final_text = to_json(&serde_json::from_str::<Value>(whole).unwrap()).unwrap();
        let mut last = String::new();
        let mut grew = 0;
        for end in (0..=whole.len()).filter(|&e| whole.is_char_boundary(e)) {
            let settled = settled_json(&whole[..end]);
            assert!(final_text.starts_with(&settled), "{:?} settles {settled:?}, not a prefix of {final_text:?}", &whole[..end]);
            assert!(settled.len() >= last.len() || settled.is_empty(), "{:?}: {settled:?} after {last:?}", &whole[..end]);
            grew += usize::from(settled.len() > last.len());
            last = settled;
        }
        assert_eq!(last, final_text);
        assert!(grew > 20, "the prefix grows step by step ({grew} times)");
        assert_eq!(settled_json(r#"{"a": 1"#), "{");
        assert_eq!(settled_json(r#"{"a": "x\"#), r#"{"a":"x"#);
    }

    fn tools() -> Vec<ToolSpec> {
        let weather = json!({ "type": "object", "properties": { "city": { "type": "string" }, "days": { "type": "integer" } } });
        vec![ToolSpec { name: "get_weather".into(), parameters: weather }]
    }

    /// Every prefix of each syntax's two-call reply settles calls whose arguments start the
    /// parsed reply's, and the whole reply settles them all.
    #[test]
    fn every_prefix_settles_a_prefix_of_the_parsed_calls() {
        let replies = [
            (ToolSyntax::MistralArgs, "Sure.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_weather[ARGS]{\"city\": \"東京\", \"days\": 3}"),
            (ToolSyntax::MistralCallId, "[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_weather[CALL_ID]f5g6h7i8j[ARGS]{\"days\": 3}"),
            (ToolSyntax::Hermes, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"days\": 3}}\n</tool_call>"),
            (ToolSyntax::QwenXml, "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n<parameter=city>\n東京\n</parameter>\n</function>\n</tool_call>"),
        ];
        for (syntax, reply) in replies {
            let parsed = syntax.parse(reply, &tools(), &mut || "id".into()).unwrap();
            let mut fragments = 0;
            let mut last: Vec<PartialCall> = Vec::new();
            for end in (0..=reply.len()).filter(|&e| reply.is_char_boundary(e)) {
                let settled = syntax.settled_calls(&reply[..end], &tools());
                assert!(settled.len() >= last.len(), "{syntax:?} at {end}: fewer calls");
                for (i, call) in settled.iter().enumerate() {
                    let want = &parsed.calls[i];
                    assert_eq!(call.name, want.name, "{syntax:?} at {end}");
                    assert!(
                        want.arguments.starts_with(&call.arguments),
                        "{syntax:?} at {end}: {:?} vs {:?}",
                        call.arguments,
                        want.arguments
                    );
                    if call.id.is_some() {
                        assert_eq!(call.id.as_deref(), Some(want.id.as_str()));
                    }
                    fragments += usize::from(last.get(i).is_some_and(|l| l.arguments != call.arguments));
                }
                last = settled;
            }
            let args: Vec<&str> = last.iter().map(|c| c.arguments.as_str()).collect();
            let want: Vec<&str> = parsed.calls.iter().map(|c| c.arguments.as_str()).collect();
            assert_eq!(args, want, "{syntax:?}: the whole reply settles the whole arguments");
            assert!(fragments >= 2, "{syntax:?}: the arguments grew in {fragments} steps");
        }
        assert!(ToolSyntax::MistralJson.settled_calls("[TOOL_CALLS][{\"name\": \"get_weather\"", &tools()).is_empty());
    }
}
