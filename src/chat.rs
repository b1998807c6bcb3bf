//! Chat templates: OpenAI-shaped messages rendered to a prompt string by the model's Jinja
//! template (`tokenizer.chat_template`).
//!
//! Reference: transformers `utils/chat_template_utils.py` (`render_jinja_template`,
//! `_compile_jinja_template`). The template runs in minijinja configured like transformers'
//! sandboxed Jinja environment: `trim_blocks` and `lstrip_blocks` on, trailing newline
//! dropped, `raise_exception(msg)` and `strftime_now(fmt)` as globals, `{% generation %}`
//! blocks (transformers' assistant-mask extension) rendered as plain blocks, a Python
//! `json.dumps` `tojson` filter, and Python string/dict methods (`.strip()`, `.split()`,
//! `.items()`, ...) through `minijinja_contrib::pycompat`. Variables: `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, and `tools` / `documents` set to none
//! (not undefined), as transformers passes them when the request has neither.
//!
//! `strftime_now` reads UTC (transformers uses local time; neither wasm32 nor a bare native
//! build knows the time zone); [`ChatTemplate::set_fixed_time`] pins it for reproducibility.
//!
//! Message content is either a string or a list of parts; parts render as
//! `{"type": "text", "text": ...}` and `{"type": "image"}`, the shapes Mistral's and other
//! multimodal templates loop over.

mod hf;
mod pyfmt;
pub mod reasoning;
pub mod tool_calls;
pub mod tool_grammar;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Object, Serde};
use minijinja::{context, Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::tokenizer::{GgufVocab, Tokenizer};
use tool_calls::ToolSyntax;

pub use pyfmt::strftime;

/// The template used when a GGUF file has no `tokenizer.chat_template`: ChatML
/// (`<|im_start|>role\ncontent<|im_end|>\n`), the format of transformers' old default
/// template. Text parts are concatenated; an image part is the vision encoder's placeholder
/// ([`ChatTemplate::set_image_placeholder`], as llama.cpp's server puts its media marker in
/// the text whatever the template), or nothing without a vision encoder.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}\
{{- '<|im_start|>' + message['role'] + '\\n' }}\
{%- if message['content'] is string %}{{- message['content'] }}\
{%- else %}{%- for part in message['content'] %}{%- if part['type'] == 'text' %}{{- part['text'] }}\
{%- elif part['type'] == 'image' and image_placeholder is defined %}{{- image_placeholder }}{%- endif %}{%- endfor %}\
{%- endif %}\
{{- '<|im_end|>\\n' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// Name under which the template is stored in the environment.
const TEMPLATE_NAME: &str = "chat_template";

/// Largest template source accepted (real templates are a few tens of KB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// minijinja fuel of one render: one fuel pays for an instruction or for 64 bytes of data
/// the template makes (output, strings and lists from operators, filters and literals), so
/// this bounds both time and memory: 4 million instructions (an endless loop stops in a
/// fraction of a second) or 256 MB of data (a string doubled in a loop stops there). Real
/// templates take a few hundred instructions and a few copies of the text per message.
pub const TEMPLATE_FUEL: u64 = 4_000_000;
/// Deepest nesting of macro calls and includes (minijinja's default is 500, deeper than a
/// browser worker's stack allows for large frames).
pub const TEMPLATE_RECURSION: usize = 100;
/// Largest rendered prompt (far beyond any context window).
pub const MAX_PROMPT_BYTES: usize = 64 << 20;

/// Sentinel of the clock cell: read the system clock.
const SYSTEM_CLOCK: i64 = i64::MIN;

/// Why a chat template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template source is not valid Jinja (as minijinja parses it).
    #[error("chat template syntax: {0}")]
    Syntax(#[source] minijinja::Error),
    /// The template called `raise_exception(message)`, e.g. on a bad role order.
    #[error("chat template raised: {0}")]
    Raised(String),
    /// Rendering failed for another reason (undefined method, type error, ...).
    #[error("chat template render: {0}")]
    Render(#[source] minijinja::Error),
    /// The template is larger, runs longer, nests deeper or writes more than the limits
    /// ([`MAX_TEMPLATE_BYTES`], [`TEMPLATE_FUEL`], [`TEMPLATE_RECURSION`], [`MAX_PROMPT_BYTES`]):
    /// a hostile or broken template, or a conversation far past any context.
    #[error("chat template limit: {0}")]
    Limit(String),
}

/// One chat message, (de)serialized in OpenAI's shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// A plain string, a list of content parts, or none (an assistant turn of calls only).
    #[serde(default)]
    pub content: ChatContent,
    /// An assistant turn's calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<MessageToolCall>,
    /// A `tool` turn's answer to the call of this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message with plain-text content.
    pub fn text(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self { role: role.into(), content: ChatContent::Text(text.into()), ..Self::default() }
    }
}

/// Message content: `"hi"` or `[{"type": "text", "text": "hi"}, {"type": "image_url", ...}]`,
/// or `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChatContent {
    /// None: an assistant message of tool calls only.
    #[default]
    Null,
    /// Plain text.
    Text(String),
    /// Text and image parts in order.
    Parts(Vec<ContentPart>),
}

/// A call in an assistant message of the history, in OpenAI's shape:
/// `{"id", "type": "function", "function": {"name", "arguments": "<JSON text>"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

/// A called function's name and its arguments as JSON text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// One part of a multi-part message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "PartRepr", into = "PartRepr")]
pub enum ContentPart {
    /// A run of text.
    Text(String),
    /// An image, with the URL (or data URL) it came with, if any.
    Image { url: Option<String> },
}

/// Wire shapes of a part: OpenAI's `text` / `image_url`, and Hugging Face's `image`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum PartRepr {
    Text {
        text: String,
    },
    ImageUrl {
        image_url: ImageUrl,
    },
    Image {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default, skip_serializing)]
        image: Option<String>,
    },
}

/// OpenAI allows `"image_url": "..."` and `"image_url": {"url": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum ImageUrl {
    Object { url: String },
    Plain(String),
}

impl From<PartRepr> for ContentPart {
    fn from(repr: PartRepr) -> Self {
        match repr {
            PartRepr::Text { text } => Self::Text(text),
            PartRepr::ImageUrl { image_url: ImageUrl::Object { url } | ImageUrl::Plain(url) } => Self::Image { url: Some(url) },
            PartRepr::Image { url, image } => Self::Image { url: url.or(image) },
        }
    }
}

impl From<ContentPart> for PartRepr {
    fn from(part: ContentPart) -> Self {
        match part {
            ContentPart::Text(text) => Self::Text { text },
            ContentPart::Image { url: Some(url) } => Self::ImageUrl { image_url: ImageUrl::Object { url } },
            ContentPart::Image { url: None } => Self::Image { url: None, image: None },
        }
    }
}

/// A Python-dict-like map for the template: fixed keys in insertion order, so `tojson` and
/// `.items()` list them as transformers would (minijinja's own maps are sorted by key).
#[derive(Debug)]
struct Fields(Vec<(&'static str, Value)>);

impl Object for Fields {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        self.0.iter().find(|(name, _)| *name == key).map(|(_, value)| value.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.iter().map(|(name, _)| Value::from(*name)).collect())
    }
}

/// A JSON object for the template with its keys in the request's order (`tools` render with
/// `tojson` as transformers renders the same dicts; minijinja's own maps sort their keys).
/// The request keeps its order: serde_json's `preserve_order` is on (llguidance enables it).
#[derive(Debug)]
struct JsonObject(Vec<(String, Value)>);

impl Object for JsonObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        self.0.iter().find(|(name, _)| name == key).map(|(_, value)| value.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.iter().map(|(name, _)| Value::from(name.as_str())).collect())
    }
}

/// A JSON object (`chat_template_kwargs`, or an object inside it) as a template map, in key
/// order.
fn json_object(map: &serde_json::Map<String, serde_json::Value>) -> Value {
    Value::from_object(JsonObject(map.iter().map(|(k, v)| (k.clone(), json_value(v))).collect()))
}

/// A JSON value (a `chat_template_kwargs` entry) as a template value, objects in key order.
fn json_value(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Object(map) => json_object(map),
        serde_json::Value::Array(items) => Value::from(items.iter().map(json_value).collect::<Vec<Value>>()),
        other => Value::from(Serde(other)),
    }
}

/// What the template sees of a message: `{"role": ..., "content": str | [part, ...]}`,
/// a part being `{"type": "text", "text": ...}` or `{"type": "image"}`, then where the
/// message has them `tool_calls` (`[{"id", "type", "function": {"name", "arguments"}}]`, the
/// arguments as the object their JSON text holds, as transformers' documentation passes
/// them and templates iterate or `tojson` them; text that is no JSON object stays text) and
/// `tool_call_id`.
fn message_value(message: &ChatMessage) -> Value {
    let content = match &message.content {
        // As an empty string: templates test it as one (Ministral 3's raises on none).
        ChatContent::Null => Value::from(""),
        ChatContent::Text(text) => Value::from(text.as_str()),
        ChatContent::Parts(parts) => Value::from(
            parts
                .iter()
                .map(|part| match part {
                    ContentPart::Text(text) => Fields(vec![("type", Value::from("text")), ("text", Value::from(text.as_str()))]),
                    ContentPart::Image { .. } => Fields(vec![("type", Value::from("image"))]),
                })
                .map(Value::from_object)
                .collect::<Vec<Value>>(),
        ),
    };
    let mut fields = vec![("role", Value::from(message.role.as_str())), ("content", content)];
    if !message.tool_calls.is_empty() {
        fields.push(("tool_calls", Value::from(message.tool_calls.iter().map(call_value).collect::<Vec<Value>>())));
    }
    if let Some(id) = &message.tool_call_id {
        fields.push(("tool_call_id", Value::from(id.as_str())));
    }
    Value::from_object(Fields(fields))
}

/// A history call as the template sees it ([`message_value`]).
fn call_value(call: &MessageToolCall) -> Value {
    let arguments = match serde_json::from_str::<serde_json::Value>(&call.function.arguments) {
        Ok(serde_json::Value::Object(map)) => json_object(&map),
        _ => Value::from(call.function.arguments.as_str()),
    };
    let function = Fields(vec![("name", Value::from(call.function.name.as_str())), ("arguments", arguments)]);
    Value::from_object(Fields(vec![
        ("id", Value::from(call.id.as_str())),
        ("type", Value::from(call.kind.as_str())),
        ("function", Value::from_object(function)),
    ]))
}

/// Marks the error `raise_exception` returns, so `render` can tell it apart.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Raised(String);

/// A compiled chat template with its special-token strings.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    clock: Arc<AtomicI64>,
    think_tags: Option<reasoning::ThinkTags>,
    tool_syntax: Option<ToolSyntax>,
    /// What the vision encoder's prompts hold per image, as text (`image_placeholder`).
    image_placeholder: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `template_source`; `bos_token` / `eos_token` fill the variables of those names.
    pub fn new(template_source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        if template_source.len() > MAX_TEMPLATE_BYTES {
            return Err(ChatError::Limit(format!(
                "the template has {} bytes, more than {MAX_TEMPLATE_BYTES}",
                template_source.len()
            )));
        }
        let clock = Arc::new(AtomicI64::new(SYSTEM_CLOCK));
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(TEMPLATE_RECURSION);
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
        env.set_syntax(syntax.map_err(ChatError::Syntax)?);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", pyfmt::tojson);
        env.add_function("raise_exception", |message: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
        });
        let cell = Arc::clone(&clock);
        env.add_function("strftime_now", move |format: String| {
            let fixed = cell.load(Ordering::Relaxed);
            let now = if fixed == SYSTEM_CLOCK { unix_now() } else { fixed };
            pyfmt::strftime(&format, now)
        });
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(template_source)).map_err(ChatError::Syntax)?;
        let think_tags = reasoning::ThinkTags::detect(template_source);
        let tool_syntax = ToolSyntax::detect(template_source);
        let (bos_token, eos_token) = (bos_token.into(), eos_token.into());
        Ok(Self { env, bos_token, eos_token, clock, think_tags, tool_syntax, image_placeholder: None })
    }

    /// The model's template (or [`CHATML_TEMPLATE`] when it has none), with BOS/EOS
    /// spelled as the tokenizer's vocabulary spells them.
    pub fn from_vocab(vocab: &GgufVocab, tokenizer: &Tokenizer) -> Result<Self, ChatError> {
        let source = vocab.chat_template.as_deref().unwrap_or(CHATML_TEMPLATE);
        let spell = |id: Option<u32>| id.and_then(|id| tokenizer.token_text(id)).unwrap_or_default();
        Self::new(source, &spell(vocab.bos_id), &spell(vocab.eos_id))
    }

    /// Makes `strftime_now` report this instant (seconds since the Unix epoch, UTC) instead
    /// of the system clock; `None` goes back to the clock. For reproducible prompts.
    pub fn set_fixed_time(&mut self, unix_seconds: Option<i64>) {
        self.clock.store(unix_seconds.unwrap_or(SYSTEM_CLOCK), Ordering::Relaxed);
    }

    /// Sets the template variable `image_placeholder`: the text of the tokens a prompt holds
    /// per image for the vision encoder loaded (the engine sets it). Models' own templates
    /// write their placeholders themselves; [`CHATML_TEMPLATE`] writes this one.
    pub fn set_image_placeholder(&mut self, text: String) {
        self.image_placeholder = Some(text);
    }

    /// The tags of the think blocks the template writes, if any: replies are then split into
    /// `reasoning_content` and `content` ([`reasoning`]).
    pub fn think_tags(&self) -> Option<reasoning::ThinkTags> {
        self.think_tags
    }

    /// The syntax the template writes tool calls in; `None` when it takes no `tools`.
    pub fn tool_syntax(&self) -> Option<ToolSyntax> {
        self.tool_syntax
    }

    /// Renders `messages`; `add_generation_prompt` appends the assistant turn opener.
    /// `kwargs` are extra template variables (`chat_template_kwargs`, e.g.
    /// `{"enable_thinking": false}`), as transformers' `apply_chat_template(**kwargs)` passes
    /// them. The standard variables (`messages`, `add_generation_prompt`, `bos_token`,
    /// `eos_token`) win over a kwarg of the same name.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<String, ChatError> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(ChatError::Render)?;
        let messages: Vec<Value> = messages.iter().map(message_value).collect();
        let base = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        let placeholder = match &self.image_placeholder {
            Some(text) => context! { image_placeholder => text },
            None => context! {},
        };
        let defaults = context! { tools => Value::from(()), documents => Value::from(()) };
        let extra = kwargs.map_or(Value::from(()), json_object);
        let ctx = context! { ..base, ..placeholder, ..extra, ..defaults };
        let mut out = BoundedOutput::default();
        template.render_captured_to(ctx, &mut out).map_err(|err| match raised_message(&err) {
            Some(message) => ChatError::Raised(message),
            None if out.overflowed => ChatError::Limit(format!("the rendered prompt passes {MAX_PROMPT_BYTES} bytes")),
            None if err.kind() == ErrorKind::OutOfFuel => ChatError::Limit(format!(
                "the template ran out of fuel ({TEMPLATE_FUEL}: instructions, or 64 bytes of data each)"
            )),
            None if is_too_deep(&err) => ChatError::Limit(format!("the template nests calls deeper than {TEMPLATE_RECURSION}")),
            None => ChatError::Render(err),
        })?;
        // minijinja writes whole `str`s, so the bytes are UTF-8.
        Ok(String::from_utf8(out.bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }
}

/// The render's output, refusing to grow past [`MAX_PROMPT_BYTES`] (the render then fails
/// with a write error, which [`ChatTemplate::render`] reports as [`ChatError::Limit`]).
#[derive(Default)]
struct BoundedOutput {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_PROMPT_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("the rendered prompt is too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `err` is minijinja's recursion limit (it has no error kind of its own).
fn is_too_deep(err: &minijinja::Error) -> bool {
    err.kind() == ErrorKind::InvalidOperation && err.detail().is_some_and(|d| d.contains("recursion limit exceeded"))
}

/// Rewrites transformers' `{% generation %}` / `{% endgeneration %}` block tags (its
/// `AssistantTracker` extension, which only marks assistant spans and renders the body as is)
/// to `{% if true %}` / `{% endif %}`, keeping any `-`/`+` whitespace control.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        let (before, tag) = rest.split_at(open);
        out.push_str(before);
        let body = &tag[2..];
        let control = body.strip_prefix(['-', '+']).map_or(0, |_| 1);
        let trimmed = body[control..].trim_start();
        let word_end = trimmed.find(|c: char| !c.is_ascii_alphanumeric() && c != '_').unwrap_or(trimmed.len());
        let replacement = match &trimmed[..word_end] {
            "generation" => "if true",
            "endgeneration" => "endif",
            _ => {
                out.push_str("{%");
                rest = body;
                continue;
            }
        };
        out.push_str("{%");
        out.push_str(&body[..control]);
        out.push(' ');
        out.push_str(replacement);
        rest = &trimmed[word_end..];
    }
    out.push_str(rest);
    out
}

/// The message of a `raise_exception` call somewhere in `err`'s source chain.
fn raised_message(err: &minijinja::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(Raised(message)) = e.downcast_ref::<Raised>() {
            return Some(message.clone());
        }
        source = e.source();
    }
    None
}

/// Seconds since the Unix epoch (UTC; transformers uses local time, which the browser and
/// a bare native build cannot know without a time-zone database).
#[cfg(not(target_arch = "wasm32"))]
fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Seconds since the Unix epoch from the JavaScript clock (`SystemTime` panics on wasm32).
#[cfg(target_arch = "wasm32")]
fn unix_now() -> i64 {
    (js_sys::Date::now() / 1000.0) as i64
}
