//! A chat-completions request in OpenAI's shape, checked field by field before any work
//! starts: unknown fields, wrong types and out-of-range values are [`ApiError`]s naming the
//! field. `null` means "the default", as in OpenAI's API: the model's published default
//! where it has one ([`ChatRequest::options_for`]), else OpenAI's.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::chat::tool_calls::ToolSpec;
use crate::chat::{ChatContent, ChatMessage, ContentPart};
use crate::engine::{GenerateOptions, ResponseFormat, SamplingPreset};
use crate::sampling::{SamplingParams, StopStrings, MAX_TOP_LOGPROBS};

use super::ApiError;

/// Fields a request may carry. `model` and `user` are accepted and not used; `tokens` (prompt
/// ids instead of messages) and `image_max_edge` are webvlm's; `chat_template_kwargs` is
/// vLLM's (extra variables for the chat template, e.g. `{"enable_thinking": false}`).
const FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "logit_bias",
    "seed",
    "stop",
    "n",
    "logprobs",
    "top_logprobs",
    "stream",
    "stream_options",
    "response_format",
    "user",
    "tokens",
    "image_max_edge",
    "chat_template_kwargs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
];

/// Most choices (`n`) one request may ask for.
pub const MAX_CHOICES: u32 = 16;

/// Most bytes `chat_template_kwargs` may take as JSON.
pub const MAX_CHAT_TEMPLATE_KWARGS_BYTES: usize = 16 * 1024;

/// Template variables a `chat_template_kwargs` entry may not set (the request sets them).
const RESERVED_TEMPLATE_VARS: &[&str] = &["messages", "add_generation_prompt", "bos_token", "eos_token"];

/// Roles a message may have (`developer` is read as `system`).
const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

/// A checked request.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// Prompt ids instead of messages (tests, the logits command's ids).
    pub tokens: Option<Vec<u32>>,
    /// Everything the generation loop needs (its `abort` is the caller's to set), with
    /// OpenAI's defaults where the request is silent; [`ChatRequest::options_for`] puts the
    /// model's defaults there instead.
    pub options: GenerateOptions,
    /// The sampling settings the request gave explicitly (the others are the model's to set).
    pub requested: SamplingPreset,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
    /// `n`: how many choices to generate from the prompt (prefilled once).
    pub n: u32,
    /// Longest image edge before tiling into 28-pixel tokens, for this request only (at most
    /// the model's image size: [`super::run`] and [`super::check`] refuse larger ones).
    pub image_max_edge: Option<u32>,
    /// `chat_template_kwargs`: extra chat-template variables (a JSON object of at most
    /// [`MAX_CHAT_TEMPLATE_KWARGS_BYTES`], none of the template's standard variables).
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// `tools`, `tool_choice` and `parallel_tool_calls`.
    pub tools: ToolRequest,
}

/// The functions a request offers the model and how it may call them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolRequest {
    /// `tools` as the request gave them (`{"type": "function", "function": {...}}`), for the
    /// chat template's `tools` variable.
    pub tools: Vec<Value>,
    /// Each tool's name and parameters schema, in the same order.
    pub specs: Vec<ToolSpec>,
    pub choice: ToolChoice,
    /// `parallel_tool_calls` (default true): whether one reply may hold several calls.
    pub parallel: bool,
}

/// `tool_choice`: whether the model may, must or must not call, or which function it calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// `none`: no call.
    None,
    /// `auto` (the default with tools): the model chooses.
    #[default]
    Auto,
    /// `required`: at least one call.
    Required,
    /// `{"type": "function", "function": {"name": ...}}`: a call of this function.
    Function(String),
}

/// Reads the fields of one JSON object, each at most once.
struct Fields(Map<String, Value>);

impl Fields {
    /// `name` as `T`, `None` when absent or null.
    fn get<T: DeserializeOwned>(&mut self, name: &str) -> Result<Option<T>, ApiError> {
        match self.0.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                serde_json::from_value(v).map(Some).map_err(|e| ApiError::invalid(name, "invalid_type", format!("`{name}`: {e}")))
            }
        }
    }
}

/// A request body's JSON, or the `invalid_json` error OpenAI gives.
pub fn request_json(json: &str) -> Result<Value, ApiError> {
    serde_json::from_str(json)
        .map_err(|e| ApiError::bad_request(None, "invalid_json", format!("the request is not valid JSON: {e}")))
}

impl ChatRequest {
    /// Parses and checks a JSON request. `vocab` bounds `logit_bias` ids and `tokens`.
    pub fn parse(json: &str, vocab: usize) -> Result<ChatRequest, ApiError> {
        Self::from_value(request_json(json)?, vocab)
    }

    /// [`Self::parse`] of an already parsed JSON value.
    pub fn from_value(value: Value, vocab: usize) -> Result<ChatRequest, ApiError> {
        let Value::Object(map) = value else {
            return Err(ApiError::bad_request(None, "invalid_type", "the request must be a JSON object"));
        };
        if let Some(key) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ApiError::invalid(
                key.as_str(),
                "unknown_parameter",
                format!("unrecognized request argument supplied: {key}"),
            ));
        }
        let mut f = Fields(map);
        let mut messages: Vec<ChatMessage> = f.get("messages")?.unwrap_or_default();
        let tokens: Option<Vec<u32>> = f.get("tokens")?;
        check_messages(&mut messages, tokens.is_some())?;
        let tools = tool_request(f.0.remove("tools"), f.0.remove("tool_choice"), f.get("parallel_tool_calls")?)?;
        if let Some(&id) = tokens.iter().flatten().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::invalid(
                "tokens",
                "invalid_value",
                format!("token {id} is not below the vocabulary size {vocab}"),
            ));
        }
        let requested = SamplingPreset {
            temperature: f.get("temperature")?,
            top_k: f.get("top_k")?,
            top_p: f.get("top_p")?,
            min_p: f.get("min_p")?,
            repetition_penalty: f.get("repetition_penalty")?,
            max_tokens: max_tokens(f.get("max_completion_tokens")?, f.get("max_tokens")?)?,
        };
        let sampling = SamplingParams {
            frequency_penalty: f.get("frequency_penalty")?.unwrap_or(0.0),
            presence_penalty: f.get("presence_penalty")?.unwrap_or(0.0),
            logit_bias: logit_bias(f.get("logit_bias")?)?,
            // Without a seed, each generation draws its own.
            seed: f.get::<i64>("seed")?.map(|s| s as u64),
            ..SamplingParams::default()
        };
        let n = f.get::<u32>("n")?.unwrap_or(1);
        if !(1..=MAX_CHOICES).contains(&n) {
            return Err(ApiError::invalid("n", "invalid_value", format!("n must be 1 to {MAX_CHOICES}, not {n}")));
        }
        let stop = match f.get::<StopField>("stop")? {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(v)) => v,
        };
        StopStrings::new(stop.clone()).map_err(|e| ApiError::invalid("stop", "invalid_value", e.to_string()))?;
        let logprobs = f.get::<bool>("logprobs")?.unwrap_or(false);
        let top = f.get::<usize>("top_logprobs")?;
        if top.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(ApiError::invalid(
                "top_logprobs",
                "invalid_value",
                format!("top_logprobs must be 0 to {MAX_TOP_LOGPROBS}"),
            ));
        }
        if top.is_some() && !logprobs {
            return Err(ApiError::invalid("top_logprobs", "invalid_value", "top_logprobs needs logprobs: true"));
        }
        let stream = f.get::<bool>("stream")?.unwrap_or(false);
        let stream_options: Option<StreamOptions> = f.get("stream_options")?;
        if stream_options.is_some() && !stream {
            return Err(ApiError::invalid("stream_options", "invalid_value", "stream_options is only allowed with stream: true"));
        }
        let image_max_edge = f.get::<u32>("image_max_edge")?;
        if image_max_edge == Some(0) {
            return Err(ApiError::invalid("image_max_edge", "invalid_value", "image_max_edge must be positive"));
        }
        let response_format = response_format(f.get("response_format")?)?;
        let chat_template_kwargs = chat_template_kwargs(f.0.remove("chat_template_kwargs"))?;
        let mut options = GenerateOptions {
            // Until the context is full.
            max_tokens: u32::MAX,
            sampling,
            stop,
            logprobs: logprobs.then_some(top.unwrap_or(0)),
            response_format,
            ignore_eos: false,
            keep_tokens: Vec::new(),
            lazy_format: None,
            abort: None,
        };
        requested.apply(&mut options);
        options.sampling.validate(vocab).map_err(|e| ApiError::invalid(e.param, "invalid_value", e.to_string()))?;
        Ok(ChatRequest {
            model: f.get("model")?,
            messages,
            tokens,
            options,
            requested,
            stream,
            include_usage: stream_options.and_then(|o| o.include_usage).unwrap_or(false),
            n,
            image_max_edge,
            chat_template_kwargs,
            tools,
        })
    }

    /// The generation options of this request on a model published with `defaults`
    /// ([`crate::engine::Engine::sampling_defaults`]): each sampling setting is the
    /// request's, else the model's, else OpenAI's.
    pub fn options_for(&self, defaults: &SamplingPreset) -> GenerateOptions {
        self.requested.resolve(defaults, self.options.clone())
    }
}

/// `chat_template_kwargs`: null or a JSON object, bounded in size, with no standard
/// template variable among its keys.
/// The CLI's `--chat-template-kwargs` goes through it too.
pub fn chat_template_kwargs(v: Option<Value>) -> Result<Option<Map<String, Value>>, ApiError> {
    const FIELD: &str = "chat_template_kwargs";
    let map = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(ApiError::invalid(FIELD, "invalid_type", "chat_template_kwargs must be a JSON object")),
    };
    let size = serde_json::to_string(&map).map_or(usize::MAX, |s| s.len());
    if size > MAX_CHAT_TEMPLATE_KWARGS_BYTES {
        let message =
            format!("chat_template_kwargs is {size} bytes of JSON; at most {MAX_CHAT_TEMPLATE_KWARGS_BYTES} are allowed");
        return Err(ApiError::invalid(FIELD, "invalid_value", message));
    }
    if let Some(key) = map.keys().find(|k| RESERVED_TEMPLATE_VARS.contains(&k.as_str())) {
        let message = format!("chat_template_kwargs may not set `{key}` (the request sets it)");
        return Err(ApiError::invalid(format!("{FIELD}.{key}"), "invalid_value", message));
    }
    Ok(Some(map))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Checks the messages' roles and contents and reads `developer` as `system`: images only in
/// user messages; no content only in an assistant message of calls; calls of functions by
/// name; a `tool` message answers a call of an earlier assistant message by its id.
fn check_messages(messages: &mut [ChatMessage], have_tokens: bool) -> Result<(), ApiError> {
    if messages.is_empty() && !have_tokens {
        return Err(ApiError::invalid("messages", "invalid_value", "messages must be a non-empty array"));
    }
    let mut call_ids: Vec<&str> = Vec::new();
    for (i, m) in messages.iter_mut().enumerate() {
        let bad = |field: &str, message: String| ApiError::invalid(format!("messages[{i}]{field}"), "invalid_value", message);
        if !ROLES.contains(&m.role.as_str()) {
            return Err(bad(".role", format!("unknown role {:?} (system, developer, user, assistant, tool)", m.role)));
        }
        if m.role == "developer" {
            m.role = "system".into();
        }
        match &m.content {
            ChatContent::Parts(parts) if m.role != "user" && parts.iter().any(|p| matches!(p, ContentPart::Image { .. })) => {
                return Err(bad(".content", "only user messages may hold images".into()));
            }
            ChatContent::Null if m.role != "assistant" || m.tool_calls.is_empty() => {
                return Err(bad(".content", "content may be null only in an assistant message with tool_calls".into()));
            }
            _ => {}
        }
        if !m.tool_calls.is_empty() && m.role != "assistant" {
            return Err(bad(".tool_calls", "only assistant messages may hold tool_calls".into()));
        }
        for (j, call) in m.tool_calls.iter().enumerate() {
            if call.kind != "function" {
                return Err(bad(&format!(".tool_calls[{j}].type"), format!("unknown tool call type {:?} (function)", call.kind)));
            }
            if call.function.name.is_empty() {
                return Err(bad(&format!(".tool_calls[{j}].function.name"), "a call needs a function name".into()));
            }
        }
        match (m.role.as_str(), &m.tool_call_id) {
            ("tool", None) => return Err(bad(".tool_call_id", "a tool message needs the tool_call_id it answers".into())),
            ("tool", Some(id)) if !call_ids.contains(&id.as_str()) => {
                return Err(bad(".tool_call_id", format!("no earlier assistant message has a tool call of id {id:?}")));
            }
            ("tool", _) => {}
            (_, Some(_)) => return Err(bad(".tool_call_id", "only tool messages may carry a tool_call_id".into())),
            _ => {}
        }
        call_ids.extend(m.tool_calls.iter().map(|c| c.id.as_str()));
    }
    Ok(())
}

/// `tools` (function tools: a name of 1-64 of `a-z A-Z 0-9 _ -`, unique; a `description`; an
/// object `parameters` schema; `strict`), `tool_choice` (`none`, `auto`, `required` or one of
/// the tools by name; without tools only `none`) and `parallel_tool_calls`.
fn tool_request(tools: Option<Value>, choice: Option<Value>, parallel: Option<bool>) -> Result<ToolRequest, ApiError> {
    let tools = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(ApiError::invalid("tools", "invalid_type", "tools must be an array")),
    };
    let mut specs: Vec<ToolSpec> = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let spec = tool_spec(tool, &format!("tools[{i}]"))?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(ApiError::invalid(
                format!("tools[{i}].function.name"),
                "invalid_value",
                format!("two tools are named {:?}", spec.name),
            ));
        }
        specs.push(spec);
    }
    let choice = match choice {
        None | Some(Value::Null) if specs.is_empty() => ToolChoice::None,
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) if s == "none" => ToolChoice::None,
        Some(Value::String(s)) if s == "auto" => ToolChoice::Auto,
        Some(Value::String(s)) if s == "required" => ToolChoice::Required,
        Some(Value::String(s)) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "invalid_value",
                format!("unknown tool_choice {s:?} (none, auto, required, or a function)"),
            ));
        }
        Some(Value::Object(map)) => {
            let mut f = Fields(map);
            let kind: Option<String> = f.get("type")?;
            if kind.as_deref() != Some("function") {
                return Err(ApiError::invalid("tool_choice.type", "invalid_value", "a named tool_choice has type \"function\""));
            }
            let name = f
                .get::<Map<String, Value>>("function")?
                .and_then(|mut m| m.remove("name"))
                .and_then(|n| n.as_str().map(str::to_string));
            let name = name.ok_or_else(|| {
                ApiError::invalid("tool_choice.function.name", "invalid_value", "a named tool_choice needs function.name")
            })?;
            if let Some(k) = f.0.keys().next() {
                return Err(ApiError::invalid(format!("tool_choice.{k}"), "unknown_parameter", format!("unknown field {k}")));
            }
            if !specs.iter().any(|s| s.name == name) {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "invalid_value",
                    format!("tool_choice names {name:?}, which is not among the tools"),
                ));
            }
            ToolChoice::Function(name)
        }
        Some(_) => return Err(ApiError::invalid("tool_choice", "invalid_type", "tool_choice must be a string or an object")),
    };
    if specs.is_empty() && choice != ToolChoice::None {
        return Err(ApiError::invalid("tool_choice", "invalid_value", "tool_choice other than none needs tools"));
    }
    Ok(ToolRequest { tools, specs, choice, parallel: parallel.unwrap_or(true) })
}

/// One `tools` entry, `at` its path for errors.
fn tool_spec(tool: &Value, at: &str) -> Result<ToolSpec, ApiError> {
    let bad = |field: &str, kind: &'static str, message: String| ApiError::invalid(format!("{at}{field}"), kind, message);
    let Value::Object(map) = tool else { return Err(bad("", "invalid_type", "a tool must be an object".into())) };
    let mut f = Fields(map.clone());
    if f.get::<String>("type")?.as_deref() != Some("function") {
        return Err(bad(".type", "invalid_value", "a tool has type \"function\"".into()));
    }
    let function: Map<String, Value> =
        f.get("function")?.ok_or_else(|| bad(".function", "invalid_value", "a tool needs its function".into()))?;
    if let Some(k) = f.0.keys().next() {
        return Err(bad(&format!(".{k}"), "unknown_parameter", format!("unknown field {k}")));
    }
    let mut f = Fields(function);
    let name: String = f.get("name")?.ok_or_else(|| bad(".function.name", "invalid_value", "a function needs a name".into()))?;
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(bad(
            ".function.name",
            "invalid_value",
            "a function name is 1-64 characters of a-z, A-Z, 0-9, _ and -".into(),
        ));
    }
    let _description: Option<String> = f.get("description")?;
    let _strict: Option<bool> = f.get("strict")?;
    let parameters = match f.0.remove("parameters") {
        None | Some(Value::Null) => Value::Null,
        Some(p @ Value::Object(_)) => p,
        Some(_) => return Err(bad(".function.parameters", "invalid_type", "parameters must be a JSON Schema object".into())),
    };
    if let Some(k) = f.0.keys().next() {
        return Err(bad(&format!(".function.{k}"), "unknown_parameter", format!("unknown field {k}")));
    }
    Ok(ToolSpec { name, parameters })
}

/// `max_completion_tokens` (or the older `max_tokens`): at least 1; absent means the model's
/// default, else "until the context is full".
fn max_tokens(completion: Option<i64>, legacy: Option<i64>) -> Result<Option<u32>, ApiError> {
    let (name, n) = match (completion, legacy) {
        (Some(n), _) => ("max_completion_tokens", n),
        (None, Some(n)) => ("max_tokens", n),
        (None, None) => return Ok(None),
    };
    let n = u32::try_from(n)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| ApiError::invalid(name, "invalid_value", format!("{name} must be at least 1, got {n}")))?;
    Ok(Some(n))
}

/// OpenAI's `{"<token id>": bias}` map.
fn logit_bias(map: Option<Map<String, Value>>) -> Result<Vec<(u32, f32)>, ApiError> {
    let bad = |m: String| ApiError::invalid("logit_bias", "invalid_value", m);
    map.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let id = k.parse::<u32>().map_err(|_| bad(format!("{k:?} is not a token id")))?;
            let bias = v.as_f64().ok_or_else(|| bad(format!("the bias of token {id} is not a number")))?;
            Ok((id, bias as f32))
        })
        .collect()
}

/// `{"type": "text" | "json_object" | "json_schema", "json_schema": {name, schema, strict, description}}`.
fn response_format(v: Option<Map<String, Value>>) -> Result<ResponseFormat, ApiError> {
    let Some(map) = v else { return Ok(ResponseFormat::Text) };
    let bad = |param: &str, m: &str| ApiError::invalid(param, "invalid_value", m);
    let mut f = Fields(map);
    let kind: String = f.get("type")?.ok_or_else(|| bad("response_format.type", "response_format needs a type"))?;
    let format = match kind.as_str() {
        "text" => ResponseFormat::Text,
        "json_object" => ResponseFormat::JsonObject,
        "json_schema" => {
            let spec: Map<String, Value> =
                f.get("json_schema")?.ok_or_else(|| bad("response_format.json_schema", "json_schema is required"))?;
            let mut s = Fields(spec);
            let name: String = s.get("name")?.ok_or_else(|| bad("response_format.json_schema.name", "name is required"))?;
            if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(bad("response_format.json_schema.name", "name must be 1-64 characters of a-z, A-Z, 0-9, _ and -"));
            }
            let _description: Option<String> = s.get("description")?;
            let schema: Value = s.get("schema")?.unwrap_or_else(|| serde_json::json!({}));
            let strict = s.get::<bool>("strict")?.unwrap_or(false);
            if let Some(k) = s.0.keys().next() {
                return Err(ApiError::invalid(
                    format!("response_format.json_schema.{k}"),
                    "unknown_parameter",
                    format!("unknown field {k}"),
                ));
            }
            ResponseFormat::JsonSchema { schema, strict }
        }
        other => {
            return Err(bad(
                "response_format.type",
                &format!("unknown response format {other:?} (text, json_object, json_schema)"),
            ))
        }
    };
    if let Some(k) = f.0.keys().next() {
        return Err(ApiError::invalid(format!("response_format.{k}"), "unknown_parameter", format!("unknown field {k}")));
    }
    Ok(format)
}
