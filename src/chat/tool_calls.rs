//! Tool calls out of a model's reply: each family's call syntax parsed into OpenAI's
//! `tool_calls` shape (a name, an id, and the arguments as JSON text).
//!
//! References: vLLM's tool parsers (`vllm/tool_parsers/`: `mistral`, `hermes`, `llama3_json`,
//! `qwen3coder`), llama.cpp's `common/chat.cpp` (the same formats, Qwen3-Coder XML included),
//! and mistral-common's tokenizer versions (v3–v7 write a JSON list after `[TOOL_CALLS]`, v11
//! `name[CALL_ID]id[ARGS]{..}`, v13 `name[ARGS]{..}`).
//!
//! The parsers see the reply as text, control tokens spelled out, after the caller has split
//! off the reasoning. Content is the text before the first call (trailing whitespace
//! trimmed); after the last call only whitespace and end-of-turn tokens (`</s>`,
//! `<|im_end|>`, ...) may follow, anything else makes the reply malformed. A reply whose call
//! is cut short or malformed is an error: the caller then returns the whole text as content.
//! The parsers are lenient across versions of one family: the three Mistral syntaxes accept
//! each other's spelling, and `<tool_call>` blocks hold either Qwen's XML or Hermes' JSON.
//! Model output is untrusted: no input panics (a test feeds every prefix of every fixture).

use serde_json::{Map, Value};

mod stream;

pub use stream::PartialCall;

/// A call parsed out of a reply, in OpenAI's shape (`function.arguments` is JSON text).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The call's id: the one the reply wrote, or a fresh one.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments: a JSON object, as compact text.
    pub arguments: String,
}

/// A tool the request offers: its name and JSON-Schema parameters (an object schema, or
/// `Null` when none).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// The function's name.
    pub name: String,
    /// Its parameters' JSON Schema (`{"type": "object", "properties": {..}}`).
    pub parameters: Value,
}

/// Each family's call syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSyntax {
    /// Mistral tokenizer v3–v7: `[TOOL_CALLS][{"name": .., "arguments": {..}, "id": ..}, ..]`.
    MistralJson,
    /// Mistral tokenizer v11: `[TOOL_CALLS]name[CALL_ID]id[ARGS]{..}`, once per call.
    MistralCallId,
    /// Mistral tokenizer v13 (Ministral 3, Magistral): `[TOOL_CALLS]name[ARGS]{..}`, once per call.
    MistralArgs,
    /// Qwen3.5 / Qwen3-Coder: `<tool_call><function=name><parameter=p>value</parameter>..`.
    QwenXml,
    /// ChatML models (Hermes, Qwen2.5, SmolLM2): `<tool_call>{"name": .., "arguments": {..}}</tool_call>`.
    Hermes,
    /// Llama 3.1/3.2: the reply is `{"name": .., "parameters": {..}}` (`;`-separated when several).
    LlamaJson,
}

/// A reply split into its text and its calls.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedReply {
    /// The text before the first call (trailing whitespace trimmed), or the whole reply.
    pub content: String,
    /// The calls, in the reply's order.
    pub calls: Vec<ToolCall>,
}

/// Why a reply's call could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolParseError {
    /// The reply ends inside a call (as when `max_tokens` cuts it).
    #[error("the tool call is cut short")]
    Truncated,
    /// A call's JSON does not parse.
    #[error("invalid JSON in a tool call: {0}")]
    InvalidJson(String),
    /// A call names a tool the request does not offer.
    #[error("the reply calls an unknown tool `{0}`")]
    UnknownTool(String),
    /// A call does not follow the syntax.
    #[error("malformed tool call: {0}")]
    Malformed(String),
}

type Result<T> = std::result::Result<T, ToolParseError>;

const MISTRAL_CALLS: &str = "[TOOL_CALLS]";
const MISTRAL_CALL_ID: &str = "[CALL_ID]";
const MISTRAL_ARGS: &str = "[ARGS]";
const TOOL_CALL_OPEN: &str = "<tool_call>";
const TOOL_CALL_CLOSE: &str = "</tool_call>";
const FUNCTION_OPEN: &str = "<function=";
const FUNCTION_CLOSE: &str = "</function>";
const PARAMETER_OPEN: &str = "<parameter=";
const PARAMETER_CLOSE: &str = "</parameter>";
const PYTHON_TAG: &str = "<|python_tag|>";
/// End-of-turn tokens that may follow the last call when the caller left them in.
const END_TOKENS: &[&str] = &["</s>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>"];

impl ToolSyntax {
    /// The syntax a chat template writes calls in, from the template source; `None` when the
    /// template has no tool support.
    pub fn detect(template: &str) -> Option<ToolSyntax> {
        let has = |s: &str| template.contains(s);
        if has(MISTRAL_CALLS) {
            Some(if has(MISTRAL_CALL_ID) {
                Self::MistralCallId
            } else if has(MISTRAL_ARGS) {
                Self::MistralArgs
            } else {
                Self::MistralJson
            })
        } else if has(TOOL_CALL_OPEN) {
            Some(if has(FUNCTION_OPEN) { Self::QwenXml } else { Self::Hermes })
        } else if (has("ipython") || has(PYTHON_TAG)) && has("tools") {
            Some(Self::LlamaJson)
        } else {
            None
        }
    }

    /// The text that starts a call in this syntax. For [`LlamaJson`](Self::LlamaJson) it is
    /// `{`, and only as the reply's first non-space character (or after `<|python_tag|>`).
    pub fn trigger(self) -> &'static str {
        match self {
            Self::MistralJson | Self::MistralCallId | Self::MistralArgs => MISTRAL_CALLS,
            Self::QwenXml | Self::Hermes => TOOL_CALL_OPEN,
            Self::LlamaJson => "{",
        }
    }

    /// The texts that delimit calls in this syntax, which vocabularies may hold as special
    /// tokens: decoding keeps them in the reply for the parser.
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            Self::MistralJson => &[MISTRAL_CALLS],
            Self::MistralCallId => &[MISTRAL_CALLS, MISTRAL_CALL_ID, MISTRAL_ARGS],
            Self::MistralArgs => &[MISTRAL_CALLS, MISTRAL_ARGS],
            Self::QwenXml | Self::Hermes => &[TOOL_CALL_OPEN, TOOL_CALL_CLOSE],
            Self::LlamaJson => &[PYTHON_TAG],
        }
    }

    /// Where the first call starts in `text`, if anywhere.
    fn find_trigger(self, text: &str) -> Option<usize> {
        match self {
            Self::LlamaJson => {
                let start = text.len() - text.trim_start().len();
                let rest = text.get(start..)?;
                (rest.starts_with('{') || rest.starts_with(PYTHON_TAG)).then_some(start)
            }
            _ => text.find(self.trigger()),
        }
    }

    /// Parses a whole reply: its calls, and the text before them as content. A reply with no
    /// trigger is all content; a trigger followed by a malformed or cut-short call is an error.
    /// `new_id` makes an id for each call whose text carries none.
    pub fn parse(self, text: &str, tools: &[ToolSpec], new_id: &mut dyn FnMut() -> String) -> Result<ParsedReply> {
        let Some(start) = self.find_trigger(text) else {
            return Ok(ParsedReply { content: text.to_string(), calls: Vec::new() });
        };
        let (before, body) = text.split_at(start);
        let calls = match self {
            Self::MistralJson | Self::MistralCallId | Self::MistralArgs => parse_mistral(body, tools, new_id)?,
            Self::QwenXml | Self::Hermes => parse_tagged(body, tools, new_id)?,
            Self::LlamaJson => parse_llama(body, tools, new_id)?,
        };
        if calls.is_empty() {
            return Err(ToolParseError::Malformed("no call after the trigger".into()));
        }
        Ok(ParsedReply { content: before.trim_end().to_string(), calls })
    }
}

/// `[TOOL_CALLS]` repeated, each followed by a JSON list/object (v3–v7) or
/// `name[CALL_ID]id[ARGS]{..}` / `name[ARGS]{..}` (v11, v13). `body` starts with the trigger.
fn parse_mistral(body: &str, tools: &[ToolSpec], new_id: &mut dyn FnMut() -> String) -> Result<Vec<ToolCall>> {
    let mut calls = Vec::new();
    let mut rest = body;
    while let Some(after) = rest.strip_prefix(MISTRAL_CALLS) {
        let after = after.trim_start();
        if after.starts_with(MISTRAL_ARGS) || after.starts_with(MISTRAL_CALL_ID) {
            return Err(ToolParseError::Malformed("a call has no name".into()));
        }
        let tail = if after.starts_with('[') || after.starts_with('{') {
            let (value, tail) = json_prefix(after)?;
            json_calls(value, tools, new_id, &mut calls)?;
            tail
        } else {
            mistral_named_call(after, tools, new_id, &mut calls)?
        };
        rest = tail.trim_start();
    }
    expect_end(rest, &[MISTRAL_CALLS])?;
    Ok(calls)
}

/// One `name[CALL_ID]id[ARGS]{..}` or `name[ARGS]{..}` call; returns the text after it.
fn mistral_named_call<'t>(
    text: &'t str,
    tools: &[ToolSpec],
    new_id: &mut dyn FnMut() -> String,
    calls: &mut Vec<ToolCall>,
) -> Result<&'t str> {
    let Some((name, rest)) = text.find('[').map(|i| text.split_at(i)) else {
        return Err(truncated_if(valid_name(text.trim()) || text.trim().is_empty(), "a call's name runs on"));
    };
    let name = name.trim();
    if !valid_name(name) {
        return Err(ToolParseError::Malformed(format!("invalid function name {:?}", snippet(name))));
    }
    check_tool(name, tools)?;
    let mut rest = rest;
    let mut id = None;
    if let Some(after) = rest.strip_prefix(MISTRAL_CALL_ID) {
        let Some((raw, tail)) = after.find(MISTRAL_ARGS).map(|i| after.split_at(i)) else {
            let (id, tag) = after.split_at(after.find('[').unwrap_or(after.len()));
            let partial = (id.is_empty() || valid_name(id)) && MISTRAL_ARGS.starts_with(tag);
            return Err(truncated_if(partial, "a call id is not followed by [ARGS]"));
        };
        let raw = raw.trim();
        if !raw.is_empty() && !valid_name(raw) {
            return Err(ToolParseError::Malformed(format!("invalid call id {:?}", snippet(raw))));
        }
        id = (!raw.is_empty()).then(|| raw.to_string());
        rest = tail;
    }
    let Some(args) = rest.strip_prefix(MISTRAL_ARGS) else {
        let partial = MISTRAL_ARGS.starts_with(rest) || MISTRAL_CALL_ID.starts_with(rest);
        return Err(truncated_if(partial, "a function name is not followed by [ARGS]"));
    };
    let (value, tail) = json_prefix(args)?;
    let arguments = arguments_text(Some(value))?;
    calls.push(ToolCall { id: id.unwrap_or_else(new_id), name: name.to_string(), arguments });
    Ok(tail)
}

/// `<tool_call>` blocks, whitespace between, each holding Qwen's XML function or a Hermes JSON
/// object. `body` starts with the trigger.
fn parse_tagged(body: &str, tools: &[ToolSpec], new_id: &mut dyn FnMut() -> String) -> Result<Vec<ToolCall>> {
    let mut calls = Vec::new();
    let mut rest = body;
    while let Some(block) = rest.strip_prefix(TOOL_CALL_OPEN) {
        let block = block.trim_start();
        let tail = if block.starts_with('{') || block.starts_with('[') {
            let (value, tail) = json_prefix(block)?;
            json_calls(value, tools, new_id, &mut calls)?;
            tail
        } else {
            let (call, tail) = xml_function(block, tools, new_id)?;
            calls.push(call);
            tail
        };
        rest = expect_tag(tail.trim_start(), TOOL_CALL_CLOSE)?.trim_start();
    }
    expect_end(rest, &[TOOL_CALL_OPEN])?;
    Ok(calls)
}

/// One `<function=name><parameter=p>\nvalue\n</parameter>..</function>`; returns the text
/// after it. A value may also end at the next `<parameter=` or at `</function>` (as vLLM and
/// llama.cpp accept a missing `</parameter>`).
fn xml_function<'t>(text: &'t str, tools: &[ToolSpec], new_id: &mut dyn FnMut() -> String) -> Result<(ToolCall, &'t str)> {
    let rest = expect_tag(text, FUNCTION_OPEN)?;
    let (name, mut rest) = split_tag_name(rest)?;
    if !valid_name(name) {
        return Err(ToolParseError::Malformed(format!("invalid function name {:?}", snippet(name))));
    }
    check_tool(name, tools)?;
    let schema = tools.iter().find(|t| t.name == name).map(|t| &t.parameters);
    let mut arguments = Map::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(FUNCTION_CLOSE) {
            let call = ToolCall { id: new_id(), name: name.to_string(), arguments: to_json(&Value::Object(arguments))? };
            return Ok((call, after));
        }
        let Some(after) = rest.strip_prefix(PARAMETER_OPEN) else {
            let partial = PARAMETER_OPEN.starts_with(rest) || FUNCTION_CLOSE.starts_with(rest);
            return Err(truncated_if(partial, &format!("expected a parameter, found {:?}", snippet(rest))));
        };
        let (param, body) = split_tag_name(after)?;
        if param.is_empty() || param.contains('<') {
            return Err(ToolParseError::Malformed(format!("invalid parameter name {:?}", snippet(param))));
        }
        let end = [PARAMETER_CLOSE, PARAMETER_OPEN, FUNCTION_CLOSE]
            .iter()
            .filter_map(|tag| body.find(tag))
            .min()
            .ok_or(ToolParseError::Truncated)?;
        let (raw, tail) = body.split_at(end);
        rest = tail.strip_prefix(PARAMETER_CLOSE).unwrap_or(tail);
        let raw = raw.strip_prefix('\n').unwrap_or(raw);
        let raw = raw.strip_suffix('\n').unwrap_or(raw);
        arguments.insert(param.to_string(), convert_parameter(raw, &parameter_types(schema, param)));
    }
}

/// The name in `name>rest` (after `<function=` or `<parameter=`), trimmed, and the rest.
fn split_tag_name(text: &str) -> Result<(&str, &str)> {
    let Some(end) = text.find('>') else {
        return Err(truncated_if(!text.contains('<'), "a tag is not closed"));
    };
    let (name, rest) = text.split_at(end);
    Ok((name.trim(), &rest[1..]))
}

/// The JSON-Schema types a tool's parameter may take: `type` (a name or a list), or the types
/// of its `anyOf` / `oneOf` branches; empty when the schema says nothing.
fn parameter_types<'s>(schema: Option<&'s Value>, param: &str) -> Vec<&'s str> {
    fn types_of<'a>(schema: &'a Value, out: &mut Vec<&'a str>) {
        match schema.get("type") {
            Some(Value::String(t)) => out.push(t),
            Some(Value::Array(ts)) => out.extend(ts.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    let mut types = Vec::new();
    let Some(property) = schema.and_then(|s| s.get("properties")).and_then(|p| p.get(param)) else {
        return types;
    };
    types_of(property, &mut types);
    for key in ["anyOf", "oneOf"] {
        for branch in property.get(key).and_then(Value::as_array).into_iter().flatten() {
            types_of(branch, &mut types);
        }
    }
    types
}

/// A Qwen XML parameter's text as a JSON value, by its schema types: a string when the schema
/// says string (or the text is not JSON), else the JSON the text spells.
fn convert_parameter(raw: &str, types: &[&str]) -> Value {
    const KNOWN: &[&str] = &["string", "integer", "number", "boolean", "object", "array", "null"];
    let as_string = || Value::String(raw.to_string());
    if !types.iter().any(|t| KNOWN.contains(t)) {
        return serde_json::from_str(raw).unwrap_or_else(|_| as_string());
    }
    let text = raw.trim();
    if types.contains(&"null") && text == "null" {
        return Value::Null;
    }
    if types.contains(&"boolean") {
        if text.eq_ignore_ascii_case("true") {
            return Value::Bool(true);
        } else if text.eq_ignore_ascii_case("false") {
            return Value::Bool(false);
        }
    }
    if types.iter().any(|t| matches!(*t, "integer" | "number" | "object" | "array")) {
        if let Ok(value) = serde_json::from_str::<Value>(text) {
            let fits = |t: &&str| match *t {
                "integer" | "number" => value.is_number(),
                "object" => value.is_object(),
                "array" => value.is_array(),
                _ => false,
            };
            if types.iter().any(fits) {
                return value;
            }
        }
    }
    as_string()
}

/// The reply as JSON call objects, optionally after `<|python_tag|>`, separated by `;` or
/// whitespace. `body` starts with `{` or the tag.
fn parse_llama(body: &str, tools: &[ToolSpec], new_id: &mut dyn FnMut() -> String) -> Result<Vec<ToolCall>> {
    let mut calls = Vec::new();
    let mut rest = body;
    loop {
        rest = rest.strip_prefix(PYTHON_TAG).unwrap_or(rest).trim_start();
        if !rest.starts_with('{') {
            return Err(truncated_if(rest.is_empty(), "the call is not a JSON object"));
        }
        let (value, tail) = json_prefix(rest)?;
        if !value.is_object() {
            return Err(ToolParseError::Malformed("the call is not a JSON object".into()));
        }
        json_calls(value, tools, new_id, &mut calls)?;
        let tail = tail.trim_start();
        rest = tail.strip_prefix(';').unwrap_or(tail).trim_start();
        if !(rest.starts_with('{') || rest.starts_with(PYTHON_TAG)) {
            expect_end(rest, &[])?;
            return Ok(calls);
        }
    }
}

/// Calls from a JSON call object or a list of them, appended to `calls`. An object has `name`
/// and `arguments` (or `parameters`; missing means none), optionally `id`; OpenAI's nested
/// `{"function": {"name": .., "arguments": ..}}` is accepted too.
fn json_calls(value: Value, tools: &[ToolSpec], new_id: &mut dyn FnMut() -> String, calls: &mut Vec<ToolCall>) -> Result<()> {
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => return Err(ToolParseError::Malformed("a call is not a JSON object".into())),
    };
    for item in items {
        let Value::Object(mut object) = item else {
            return Err(ToolParseError::Malformed("a call is not a JSON object".into()));
        };
        let id = match object.remove("id") {
            Some(Value::String(id)) if !id.is_empty() => id,
            _ => new_id(),
        };
        if !object.contains_key("name") {
            if let Some(Value::Object(function)) = object.remove("function") {
                object = function;
            }
        }
        let name = match object.remove("name") {
            Some(Value::String(name)) if !name.trim().is_empty() => name,
            _ => return Err(ToolParseError::Malformed("a call has no name".into())),
        };
        check_tool(&name, tools)?;
        let arguments = arguments_text(object.remove("arguments").or_else(|| object.remove("parameters")))?;
        calls.push(ToolCall { id, name, arguments });
    }
    Ok(())
}

/// A call's arguments as JSON text: an object re-serialized compactly (key order kept), a
/// string that holds a JSON object kept as written, nothing (or null) as `{}`.
fn arguments_text(arguments: Option<Value>) -> Result<String> {
    match arguments {
        None | Some(Value::Null) => Ok("{}".into()),
        Some(object @ Value::Object(_)) => to_json(&object),
        Some(Value::String(text)) if text.trim().is_empty() => Ok("{}".into()),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(_)) => Ok(text),
            Ok(_) => Err(ToolParseError::Malformed("the arguments are not a JSON object".into())),
            Err(e) => Err(ToolParseError::InvalidJson(e.to_string())),
        },
        Some(_) => Err(ToolParseError::Malformed("the arguments are not a JSON object".into())),
    }
}

/// The JSON value at the start of `text` (leading whitespace skipped) and the text after it.
fn json_prefix(text: &str) -> Result<(Value, &str)> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    match stream.next() {
        None => Err(ToolParseError::Truncated),
        Some(Err(e)) if e.is_eof() => Err(ToolParseError::Truncated),
        Some(Err(e)) => Err(ToolParseError::InvalidJson(e.to_string())),
        Some(Ok(value)) => {
            let tail = text.get(stream.byte_offset()..).ok_or_else(|| ToolParseError::Malformed("JSON end".into()))?;
            Ok((value, tail))
        }
    }
}

fn to_json(value: &Value) -> Result<String> {
    serde_json::to_string(value).map_err(|e| ToolParseError::Malformed(e.to_string()))
}

/// `text` after `tag`; `Truncated` when `text` is a prefix of it, else `Malformed`.
fn expect_tag<'t>(text: &'t str, tag: &str) -> Result<&'t str> {
    text.strip_prefix(tag)
        .ok_or_else(|| truncated_if(tag.starts_with(text), &format!("expected {tag}, found {:?}", snippet(text))))
}

/// Checks that only whitespace and end-of-turn tokens follow the last call; text that could
/// still grow into one of `next` (another call's start) is a cut-short reply.
fn expect_end(text: &str, next: &[&str]) -> Result<()> {
    let mut rest = text.trim_start();
    while let Some(after) = END_TOKENS.iter().find_map(|t| rest.strip_prefix(t)) {
        rest = after.trim_start();
    }
    if rest.is_empty() {
        Ok(())
    } else {
        Err(truncated_if(next.iter().any(|t| t.starts_with(rest)), &format!("text after the calls: {:?}", snippet(rest))))
    }
}

fn truncated_if(truncated: bool, why: &str) -> ToolParseError {
    if truncated {
        ToolParseError::Truncated
    } else {
        ToolParseError::Malformed(why.to_string())
    }
}

/// A function name or id as the text-delimited syntaxes write it: no spaces, brackets,
/// braces, quotes or angle brackets.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| !c.is_whitespace() && !"[]{}\"<>=".contains(c))
}

fn check_tool(name: &str, tools: &[ToolSpec]) -> Result<()> {
    if tools.is_empty() || tools.iter().any(|t| t.name == name) {
        Ok(())
    } else {
        Err(ToolParseError::UnknownTool(name.to_string()))
    }
}

/// The start of `text`, for error messages.
fn snippet(text: &str) -> String {
    text.chars().take(32).collect()
}

/// One splitmix64 step: the next pseudo-random value from `state`.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn alphanumerics(state: &mut u64, len: usize) -> String {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len).map(|_| char::from(ALPHABET[(splitmix64(state) % 62) as usize])).collect()
}

/// A 9-character alphanumeric call id (Mistral's format), advancing `state`.
pub fn mistral_id(state: &mut u64) -> String {
    alphanumerics(state, 9)
}

/// An OpenAI-style call id, `call_` and 24 alphanumerics, advancing `state`.
pub fn openai_id(state: &mut u64) -> String {
    format!("call_{}", alphanumerics(state, 24))
}

#[cfg(test)]
mod tests;
