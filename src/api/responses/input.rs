//! A Responses request read as the chat-completions request it amounts to: `instructions` as
//! a system message, the stored conversation of `previous_response_id`, then `input` (a
//! string, or items: messages of text and image parts, `function_call` and
//! `function_call_output` items), Responses' flat `tools` in chat's nested shape, `text.format`
//! as `response_format`, `max_output_tokens` as `max_tokens`. The chat request's own checks
//! then run, and their errors are renamed to the Responses fields they came from
//! ([`Origins::rename`]).

use serde_json::{json, Map, Value};

use super::store::ResponseStore;
use crate::api::ApiError;

/// Fields passed to the chat request under the same name: OpenAI's sampling fields and the
/// extras llama-server, vLLM and webvlm's chat completions take.
const PASSED: &[&str] = &[
    "model",
    "temperature",
    "top_p",
    "stream",
    "parallel_tool_calls",
    "user",
    "seed",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "logit_bias",
    "stop",
    "chat_template_kwargs",
    "image_max_edge",
];

/// Fields of the Responses API webvlm does not implement: refused when set to anything but
/// their default (`null`, or the value here).
const UNSUPPORTED: &[(&str, Value)] = &[
    ("background", Value::Bool(false)),
    ("truncation", Value::Null),
    ("include", Value::Null),
    ("reasoning", Value::Null),
    ("conversation", Value::Null),
    ("prompt", Value::Null),
    ("top_logprobs", Value::Null),
    ("max_tool_calls", Value::Null),
    ("service_tier", Value::Null),
];

/// What a Responses request keeps besides its chat body.
#[derive(Clone, Debug)]
pub struct ResponsesInput {
    /// The chat-completions body.
    pub chat: Value,
    /// The Responses path each chat message came from (`input[2]`, `instructions`,
    /// `previous_response_id`).
    pub origins: Origins,
    /// The conversation to store with the response: the previous response's, then this
    /// input's messages (without `instructions`, which OpenAI does not carry over).
    pub history: Vec<Value>,
    /// Fields the response object repeats as the request gave them.
    pub echo: Map<String, Value>,
    pub store: bool,
    pub stream: bool,
}

/// Reads a Responses request body.
pub fn read(body: Value, store: &ResponseStore) -> Result<ResponsesInput, ApiError> {
    let Value::Object(mut map) = body else {
        return Err(ApiError::bad_request(None, "invalid_type", "the request must be a JSON object"));
    };
    for (name, default) in UNSUPPORTED {
        match map.remove(*name) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if *name == "truncation" && s == "disabled" => {}
            Some(Value::Array(a)) if *name == "include" && a.is_empty() => {}
            Some(v) if v == *default => {}
            Some(_) => {
                return Err(ApiError::invalid(*name, "unsupported_parameter", format!("webvlm does not support `{name}`")));
            }
        }
    }
    let mut chat = Map::new();
    let mut echo = Map::new();
    let mut origins = Origins::default();
    let mut history = Vec::new();
    if let Some(instructions) = take(&mut map, "instructions") {
        let Value::String(text) = &instructions else {
            return Err(ApiError::invalid("instructions", "invalid_type", "instructions must be a string"));
        };
        origins.push("instructions", json!({ "role": "system", "content": text }));
        echo.insert("instructions".into(), instructions);
    }
    if let Some(previous) = take(&mut map, "previous_response_id") {
        let id = previous
            .as_str()
            .ok_or_else(|| ApiError::invalid("previous_response_id", "invalid_type", "previous_response_id must be a string"))?;
        let messages = store.history(id).ok_or_else(|| {
            let message = format!("Previous response with id '{id}' not found (not stored, or evicted from the store)");
            ApiError::invalid("previous_response_id", "previous_response_not_found", message)
        })?;
        for m in messages {
            origins.push("previous_response_id", m.clone());
            history.push(m.clone());
        }
        echo.insert("previous_response_id".into(), previous);
    }
    let input =
        take(&mut map, "input").ok_or_else(|| ApiError::invalid("input", "missing_required_parameter", "input is required"))?;
    for (origin, message) in input_messages(input)? {
        history.push(message.clone());
        origins.push(&origin, message);
    }
    let store_it = match take(&mut map, "store") {
        None => true,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(ApiError::invalid("store", "invalid_type", "store must be a boolean")),
    };
    if let Some(metadata) = take(&mut map, "metadata") {
        check_metadata(&metadata)?;
        echo.insert("metadata".into(), metadata);
    }
    if let Some(tools) = take(&mut map, "tools") {
        chat.insert("tools".into(), chat_tools(&tools)?);
        echo.insert("tools".into(), tools);
    }
    if let Some(choice) = take(&mut map, "tool_choice") {
        chat.insert("tool_choice".into(), chat_tool_choice(&choice)?);
        echo.insert("tool_choice".into(), choice);
    }
    if let Some(text) = take(&mut map, "text") {
        if let Some(format) = text_format(&text)? {
            chat.insert("response_format".into(), format);
        }
        echo.insert("text".into(), text);
    }
    if let Some(max) = take(&mut map, "max_output_tokens") {
        chat.insert("max_tokens".into(), max.clone());
        echo.insert("max_output_tokens".into(), max);
    }
    if let Some(options) = take(&mut map, "stream_options") {
        // `include_obfuscation` pads events against length side channels over networks.
        if !options.as_object().is_some_and(|o| o.keys().all(|k| k == "include_obfuscation")) {
            return Err(ApiError::invalid("stream_options", "invalid_value", "stream_options takes include_obfuscation only"));
        }
    }
    for name in PASSED {
        if let Some(v) = map.remove(*name) {
            if !v.is_null() {
                echo.insert((*name).into(), v.clone());
            }
            chat.insert((*name).into(), v);
        }
    }
    if let Some(key) = map.keys().next() {
        return Err(ApiError::invalid(
            key.as_str(),
            "unknown_parameter",
            format!("unrecognized request argument supplied: {key}"),
        ));
    }
    let stream = chat.get("stream").and_then(Value::as_bool).unwrap_or(false);
    chat.insert("messages".into(), Value::Array(origins.messages.clone()));
    Ok(ResponsesInput { chat: Value::Object(chat), origins, history, echo, store: store_it, stream })
}

/// A field's value, `None` when absent or null.
fn take(map: &mut Map<String, Value>, name: &str) -> Option<Value> {
    map.remove(name).filter(|v| !v.is_null())
}

/// The chat messages of `input`, each with the path it came from. Consecutive
/// `function_call` items join the assistant message before them (or a new one).
fn input_messages(input: Value) -> Result<Vec<(String, Value)>, ApiError> {
    let items = match input {
        Value::String(text) => return Ok(vec![("input".into(), json!({ "role": "user", "content": text }))]),
        Value::Array(items) if !items.is_empty() => items,
        _ => return Err(ApiError::invalid("input", "invalid_value", "input must be a string or a non-empty array of items")),
    };
    let mut out: Vec<(String, Value)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let at = format!("input[{i}]");
        let Value::Object(mut item) = item else {
            return Err(ApiError::invalid(at, "invalid_type", "an input item must be an object"));
        };
        let kind = match item.remove("type") {
            None => "message".to_string(),
            Some(Value::String(s)) => s,
            Some(_) => return Err(ApiError::invalid(format!("{at}.type"), "invalid_type", "an item's type must be a string")),
        };
        // Output items sent back as input carry their id and status.
        item.remove("id");
        item.remove("status");
        match kind.as_str() {
            "message" => out.push((at.clone(), message(item, &at)?)),
            "function_call" => {
                let call = function_call(item, &at)?;
                let joins = out.last().is_some_and(|(_, m)| m["role"] == "assistant");
                if !joins {
                    out.push((at, json!({ "role": "assistant", "content": null })));
                }
                let last = &mut out.last_mut().expect("pushed").1;
                match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    Some(calls) => calls.push(call),
                    None => last["tool_calls"] = json!([call]),
                }
            }
            "function_call_output" => out.push((at.clone(), function_call_output(item, &at)?)),
            // Reasoning sent back: the chat templates drop earlier turns' reasoning.
            "reasoning" => {}
            other => {
                let message = format!(
                    "input items of type {other:?} are not supported (message, function_call, function_call_output, reasoning)"
                );
                return Err(ApiError::invalid(format!("{at}.type"), "unsupported_value", message));
            }
        }
    }
    Ok(out)
}

/// A `message` item (an "easy" one without `type` too) as a chat message.
fn message(mut item: Map<String, Value>, at: &str) -> Result<Value, ApiError> {
    let role = item.remove("role").unwrap_or(Value::Null);
    let content = match item.remove("content") {
        Some(Value::String(text)) => Value::String(text),
        Some(Value::Array(parts)) => Value::Array(
            parts
                .into_iter()
                .enumerate()
                .map(|(j, p)| content_part(p, &format!("{at}.content[{j}]")))
                .collect::<Result<_, _>>()?,
        ),
        _ => {
            return Err(ApiError::invalid(
                format!("{at}.content"),
                "invalid_type",
                "a message's content is a string or an array of parts",
            ))
        }
    };
    no_more(&item, at)?;
    Ok(json!({ "role": role, "content": content }))
}

/// A content part as chat's: text of every kind, `input_image` as an `image_url` part.
fn content_part(part: Value, at: &str) -> Result<Value, ApiError> {
    let Value::Object(mut part) = part else {
        return Err(ApiError::invalid(at, "invalid_type", "a content part must be an object"));
    };
    let kind = part.remove("type").and_then(|t| t.as_str().map(String::from)).unwrap_or_default();
    let field = |part: &mut Map<String, Value>, name: &str| match part.remove(name) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(ApiError::invalid(format!("{at}.{name}"), "invalid_type", format!("a {kind} part needs a string {name}"))),
    };
    let chat = match kind.as_str() {
        "input_text" | "output_text" => {
            part.remove("annotations");
            part.remove("logprobs");
            json!({ "type": "text", "text": field(&mut part, "text")? })
        }
        "refusal" => json!({ "type": "text", "text": field(&mut part, "refusal")? }),
        "input_image" => {
            part.remove("detail");
            if part.get("file_id").is_some_and(|f| !f.is_null()) {
                return Err(ApiError::invalid(
                    format!("{at}.file_id"),
                    "unsupported_parameter",
                    "images by file_id are not supported: send image_url",
                ));
            }
            part.remove("file_id");
            json!({ "type": "image_url", "image_url": { "url": field(&mut part, "image_url")? } })
        }
        other => {
            let message =
                format!("content parts of type {other:?} are not supported (input_text, input_image, output_text, refusal)");
            return Err(ApiError::invalid(format!("{at}.type"), "unsupported_value", message));
        }
    };
    no_more(&part, at)?;
    Ok(chat)
}

/// A `function_call` item as a chat `tool_calls` entry.
fn function_call(mut item: Map<String, Value>, at: &str) -> Result<Value, ApiError> {
    let mut string = |name: &str| match item.remove(name) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(ApiError::invalid(format!("{at}.{name}"), "invalid_type", format!("a function_call needs a string {name}"))),
    };
    let (call_id, name, arguments) = (string("call_id")?, string("name")?, string("arguments")?);
    no_more(&item, at)?;
    Ok(json!({ "id": call_id, "type": "function", "function": { "name": name, "arguments": arguments } }))
}

/// A `function_call_output` item as a `tool` message.
fn function_call_output(mut item: Map<String, Value>, at: &str) -> Result<Value, ApiError> {
    let Some(Value::String(call_id)) = item.remove("call_id") else {
        return Err(ApiError::invalid(format!("{at}.call_id"), "invalid_type", "a function_call_output needs a string call_id"));
    };
    let output = match item.remove("output") {
        Some(Value::String(s)) => Value::String(s),
        Some(Value::Array(parts)) => Value::Array(
            parts
                .into_iter()
                .enumerate()
                .map(|(j, p)| content_part(p, &format!("{at}.output[{j}]")))
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(ApiError::invalid(format!("{at}.output"), "invalid_type", "a function_call_output needs its output")),
    };
    no_more(&item, at)?;
    Ok(json!({ "role": "tool", "tool_call_id": call_id, "content": output }))
}

/// Refuses a field left over in an object read at `at`.
fn no_more(map: &Map<String, Value>, at: &str) -> Result<(), ApiError> {
    match map.keys().next() {
        Some(k) => Err(ApiError::invalid(format!("{at}.{k}"), "unknown_parameter", format!("unknown field {k}"))),
        None => Ok(()),
    }
}

/// Responses' flat function tools (`{type, name, description, parameters, strict}`) in chat's
/// nested shape; hosted tools (web search, file search, ...) are refused.
fn chat_tools(tools: &Value) -> Result<Value, ApiError> {
    let Value::Array(tools) = tools else { return Err(ApiError::invalid("tools", "invalid_type", "tools must be an array")) };
    let nest = |(i, tool): (usize, &Value)| {
        let at = format!("tools[{i}]");
        let Value::Object(map) = tool else { return Err(ApiError::invalid(at, "invalid_type", "a tool must be an object")) };
        let mut function = map.clone();
        match function.remove("type") {
            Some(Value::String(t)) if t == "function" => {}
            other => {
                let message =
                    format!("tools of type {} are not supported: webvlm runs function tools", other.unwrap_or(Value::Null));
                return Err(ApiError::invalid(format!("{at}.type"), "unsupported_value", message));
            }
        }
        Ok(json!({ "type": "function", "function": function }))
    };
    Ok(Value::Array(tools.iter().enumerate().map(nest).collect::<Result<_, _>>()?))
}

/// `tool_choice`: the strings as they are, `{"type": "function", "name"}` nested as chat's.
fn chat_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(map) if map.get("type") == Some(&json!("function")) && map.len() == 2 && map.contains_key("name") => {
            Ok(json!({ "type": "function", "function": { "name": map["name"] } }))
        }
        _ => Err(ApiError::invalid(
            "tool_choice",
            "unsupported_value",
            "tool_choice is none, auto, required or {\"type\": \"function\", \"name\": ...}",
        )),
    }
}

/// `text.format` as chat's `response_format` (`None` for plain text).
fn text_format(text: &Value) -> Result<Option<Value>, ApiError> {
    let Value::Object(text) = text else { return Err(ApiError::invalid("text", "invalid_type", "text must be an object")) };
    if let Some(k) = text.keys().find(|k| *k != "format" && *k != "verbosity") {
        return Err(ApiError::invalid(format!("text.{k}"), "unknown_parameter", format!("unknown field {k}")));
    }
    let Some(format) = text.get("format").filter(|f| !f.is_null()) else { return Ok(None) };
    let Value::Object(format) = format else {
        return Err(ApiError::invalid("text.format", "invalid_type", "text.format must be an object"));
    };
    Ok(match format.get("type").and_then(Value::as_str) {
        Some("text") => None,
        Some("json_object") => Some(json!({ "type": "json_object" })),
        Some("json_schema") => {
            let mut schema = format.clone();
            schema.remove("type");
            Some(json!({ "type": "json_schema", "json_schema": schema }))
        }
        _ => {
            return Err(ApiError::invalid(
                "text.format.type",
                "invalid_value",
                "text.format.type is text, json_object or json_schema",
            ))
        }
    })
}

/// `metadata`: at most 16 string values, keys of at most 64 characters, values of 512.
fn check_metadata(metadata: &Value) -> Result<(), ApiError> {
    let ok = metadata.as_object().is_some_and(|m| {
        m.len() <= 16 && m.iter().all(|(k, v)| k.chars().count() <= 64 && v.as_str().is_some_and(|v| v.chars().count() <= 512))
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "metadata",
            "invalid_value",
            "metadata is at most 16 string values (keys up to 64 characters, values up to 512)",
        ))
    }
}

/// The chat messages of a Responses request and where each came from.
#[derive(Clone, Debug, Default)]
pub struct Origins {
    messages: Vec<Value>,
    paths: Vec<String>,
}

impl Origins {
    fn push(&mut self, path: &str, message: Value) {
        self.messages.push(message);
        self.paths.push(path.into());
    }

    /// An error of the chat request, its field renamed to the Responses field it came from.
    pub fn rename(&self, mut e: ApiError) -> ApiError {
        if let Some(param) = e.param.take() {
            e.param = Some(self.rename_param(&param));
        }
        e
    }

    fn rename_param(&self, param: &str) -> String {
        if let Some(rest) = param.strip_prefix("messages[") {
            let (index, field) = rest.split_once(']').unwrap_or((rest, ""));
            let Some(path) = index.parse::<usize>().ok().and_then(|i| self.paths.get(i)) else { return "input".into() };
            // A message made of several items (calls) or of a whole field names the item only.
            if path == "instructions" || path == "previous_response_id" || path == "input" || field.starts_with(".tool_calls") {
                return path.clone();
            }
            return format!("{path}{}", field.replace(".tool_call_id", ".call_id").replace(".image_url.url", ".image_url"));
        }
        if let Some(rest) = param.strip_prefix("tools[") {
            return format!("tools[{}", rest.replacen("].function.", "].", 1).replacen("].function", "]", 1));
        }
        match param {
            "messages" => "input".into(),
            "max_tokens" | "max_completion_tokens" => "max_output_tokens".into(),
            "tool_choice.function.name" => "tool_choice.name".into(),
            _ => match param.strip_prefix("response_format") {
                Some(rest) => format!("text.format{}", rest.replacen(".json_schema", "", 1)),
                None => param.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_ok(body: Value) -> ResponsesInput {
        read(body, &ResponseStore::default()).expect("a valid request")
    }

    #[test]
    fn items_become_chat_messages() {
        let r = read_ok(json!({
            "instructions": "Be brief.",
            "input": [
                { "role": "user", "content": [{ "type": "input_text", "text": "Weather?" },
                    { "type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "auto" }] },
                { "type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f", "arguments": "{}", "status": "completed" },
                { "type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"a\":1}" },
                { "type": "function_call_output", "call_id": "c1", "output": "18" },
            ],
            "max_output_tokens": 9,
            "text": { "format": { "type": "json_schema", "name": "n", "schema": {}, "strict": true } },
        }));
        let messages = r.chat["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[0], json!({ "role": "system", "content": "Be brief." }));
        assert_eq!(messages[1]["content"][1], json!({ "type": "image_url", "image_url": { "url": "data:image/png;base64,AA" } }));
        assert_eq!(messages[2]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(messages[2]["tool_calls"][1]["function"], json!({ "name": "g", "arguments": "{\"a\":1}" }));
        assert_eq!(messages[3], json!({ "role": "tool", "tool_call_id": "c1", "content": "18" }));
        assert_eq!(r.chat["max_tokens"], 9);
        assert_eq!(r.chat["response_format"]["json_schema"], json!({ "name": "n", "schema": {}, "strict": true }));
        assert_eq!(r.history.len(), 3, "instructions are not stored");
        assert!(r.store);
    }

    #[test]
    fn chat_errors_name_the_responses_fields() {
        let r = read_ok(json!({
            "instructions": "x",
            "input": [{ "role": "user", "content": "a" }, { "type": "function_call_output", "call_id": "c9", "output": "1" }],
            "tools": [{ "type": "function", "name": "f" }],
        }));
        let rename = |p: &str| r.origins.rename_param(p);
        assert_eq!(rename("messages[2].tool_call_id"), "input[1].call_id");
        assert_eq!(rename("messages[1].content[0].image_url.url"), "input[0].content[0].image_url");
        assert_eq!(rename("messages[0].content"), "instructions");
        assert_eq!(rename("tools[0].function.name"), "tools[0].name");
        assert_eq!(rename("tools[0].function"), "tools[0]");
        assert_eq!(rename("max_tokens"), "max_output_tokens");
        assert_eq!(rename("response_format.json_schema.name"), "text.format.name");
        assert_eq!(rename("tool_choice.function.name"), "tool_choice.name");
        assert_eq!(rename("temperature"), "temperature");
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (json!({}), "input"),
            (json!({ "input": "a", "reasoning": { "effort": "low" } }), "reasoning"),
            (json!({ "input": "a", "truncation": "auto" }), "truncation"),
            (json!({ "input": "a", "frobnicate": 1 }), "frobnicate"),
            (json!({ "input": "a", "previous_response_id": "resp_none" }), "previous_response_id"),
            (json!({ "input": [{ "type": "item_reference", "id": "x" }] }), "input[0].type"),
            (json!({ "input": [{ "role": "user", "content": [{ "type": "input_file" }] }] }), "input[0].content[0].type"),
            (json!({ "input": [{ "type": "function_call", "call_id": "c", "name": "f" }] }), "input[0].arguments"),
            (json!({ "input": "a", "tools": [{ "type": "web_search" }] }), "tools[0].type"),
            (json!({ "input": "a", "tool_choice": { "type": "allowed_tools" } }), "tool_choice"),
            (json!({ "input": "a", "text": { "format": { "type": "xml" } } }), "text.format.type"),
            (json!({ "input": "a", "metadata": { "k": 1 } }), "metadata"),
        ];
        for (body, param) in cases {
            let e = read(body.clone(), &ResponseStore::default()).expect_err(&body.to_string());
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
        }
        // Defaults are accepted.
        read_ok(json!({ "input": "a", "truncation": "disabled", "include": [], "background": false, "reasoning": null }));
    }
}
