//! Tool calls in chat completions: the request's `tools` handed to the chat template, the
//! markers of the model's call syntax kept in the decoded text, and the calls parsed out of
//! the reply ([`crate::chat::tool_calls`]) into OpenAI's `message.tool_calls` with
//! `finish_reason: "tool_calls"` (streamed: the text from the call's trigger on is held back
//! and sent as `delta.tool_calls`, arguments in fragments as the text settles them, so that
//! the assembled stream equals the response: [`CallHold`]).
//!
//! Reference: OpenAI's chat-completions `tools` / `tool_choice` / `parallel_tool_calls`;
//! llama.cpp's `common/chat.cpp` keeps the trigger tokens of a call ("preserved tokens") in
//! the text its parsers read, as [`super::run`] keeps [`ToolSyntax::markers`] ([`special_ids`]).

use std::borrow::Cow;

use serde_json::{json, Map, Value};

use super::request::{ChatRequest, ToolChoice, ToolRequest};
use super::ApiError;
use crate::chat::reasoning::ThinkTags;
use crate::chat::tool_calls::{openai_id, ToolCall, ToolSpec, ToolSyntax};
use crate::chat::tool_grammar::call_grammar;
use crate::engine::{Engine, GenerateOptions, LazyFormat, ResponseFormat, ThinkGate};

/// The template variables of `req`: its `chat_template_kwargs`, and `tools` where it offers
/// any (refused when the model's template writes no tool calls webvlm can read).
pub(super) fn template_kwargs<'r>(
    engine: &Engine,
    req: &'r ChatRequest,
) -> Result<Option<Cow<'r, Map<String, Value>>>, ApiError> {
    if req.tools.tools.is_empty() {
        return Ok(req.chat_template_kwargs.as_ref().map(Cow::Borrowed));
    }
    if engine.template().tool_syntax().is_none() {
        let message = "this model's chat template takes no tools (it writes none of the call syntaxes webvlm reads: \
                       Mistral's [TOOL_CALLS], Qwen's and Hermes' <tool_call>, Llama 3's ipython JSON)";
        return Err(ApiError::invalid("tools", "unsupported_value", message));
    }
    let mut kwargs = req.chat_template_kwargs.clone().unwrap_or_default();
    kwargs.insert("tools".into(), Value::Array(req.tools.tools.clone()));
    Ok(Some(Cow::Owned(kwargs)))
}

/// Refuses a tool whose parameters schema the constraint compiler cannot take.
pub(super) fn check_schemas(engine: &mut Engine, req: &ChatRequest) -> Result<(), ApiError> {
    for (i, spec) in req.tools.specs.iter().enumerate() {
        if spec.parameters.is_null() {
            continue;
        }
        let format = ResponseFormat::JsonSchema { schema: spec.parameters.clone(), strict: false };
        engine.check_response_format(&format).map_err(|e| {
            ApiError::invalid(
                format!("tools[{i}].function.parameters"),
                "invalid_value",
                format!("the schema cannot be used: {e}"),
            )
        })?;
    }
    Ok(())
}

/// The constraint `tool_choice` puts on the reply: with `required` or a named function, the
/// grammar of a call (of the named function, or of any tool; after the thought, closed by
/// `think_close`, when the prompt opened one), replacing any `response_format`. `None` for
/// `auto` and `none`.
pub(super) fn choice_format(engine: &Engine, req: &ChatRequest, think_close: Option<&str>) -> Option<ResponseFormat> {
    let syntax = engine.template().tool_syntax()?;
    let tools = match &req.tools.choice {
        ToolChoice::Required => req.tools.specs.clone(),
        ToolChoice::Function(name) => req.tools.specs.iter().filter(|s| &s.name == name).cloned().collect(),
        ToolChoice::Auto | ToolChoice::None => return None,
    };
    Some(grammar_format(engine, syntax, &tools, req.tools.parallel, think_close))
}

/// Under `tool_choice: "auto"`, the grammar of calls of any tool from the syntax's trigger
/// on, where the trigger is one token of the vocabulary (not for Llama 3's JSON, whose `{`
/// is no marker): the text before a call is free, the call is constrained. `reasoning` (the
/// prompt opened a think block; its tags): a trigger inside the thought does not count.
pub(super) fn lazy_format(engine: &Engine, req: &ChatRequest, reasoning: Option<(bool, ThinkTags)>) -> Option<LazyFormat> {
    if req.tools.choice != ToolChoice::Auto || req.tools.specs.is_empty() {
        return None;
    }
    let (syntax, trigger) = trigger_token(engine)?;
    let format = grammar_format(engine, syntax, &req.tools.specs, req.tools.parallel, None);
    let id = |text| engine.tokenizer().token_id(text);
    let think = reasoning.and_then(|(inside, tags)| Some(ThinkGate { open: id(tags.open)?, close: id(tags.close)?, inside }));
    Some(LazyFormat { trigger, format, think })
}

/// The template's call syntax and its trigger's token, where the trigger is one token and a
/// marker (Llama 3's `{` is plain text: neither constrained after nor banned).
fn trigger_token(engine: &Engine) -> Option<(ToolSyntax, u32)> {
    let syntax = engine.template().tool_syntax().filter(|&s| s != ToolSyntax::LlamaJson)?;
    Some((syntax, engine.tokenizer().token_id(syntax.trigger())?))
}

/// [`call_grammar`] with this vocabulary's spelling of the markers.
fn grammar_format(
    engine: &Engine,
    syntax: ToolSyntax,
    tools: &[ToolSpec],
    parallel: bool,
    think: Option<&str>,
) -> ResponseFormat {
    let tokenizer = engine.tokenizer();
    let marker = |text: &str| match tokenizer.token_id(text).filter(|&id| tokenizer.is_special(id)) {
        Some(id) => format!("<[{id}]>"),
        None => serde_json::to_string(text).unwrap_or_default(),
    };
    ResponseFormat::Lark(call_grammar(syntax, tools, parallel, think, &marker))
}

/// With `tool_choice: "none"`, the call trigger's token (where it is one) is banned.
pub(super) fn ban_trigger(engine: &Engine, req: &ChatRequest, opts: &mut GenerateOptions) {
    if req.tools.choice == ToolChoice::None && !req.tools.specs.is_empty() {
        if let Some((_, id)) = trigger_token(engine) {
            opts.sampling.logit_bias.push((id, -100.0));
        }
    }
}

/// The syntax replies are parsed in: the template's, when the request lets the model call.
pub(super) fn reply_syntax(engine: &Engine, req: &ChatRequest) -> Option<ToolSyntax> {
    (req.tools.choice != ToolChoice::None && !req.tools.specs.is_empty()).then(|| engine.template().tool_syntax()).flatten()
}

/// The ids of those of `texts` that are special tokens of this vocabulary (decoding keeps
/// them in the text when asked to).
pub(super) fn special_ids<'t>(engine: &Engine, texts: impl Iterator<Item = &'t str>) -> Vec<u32> {
    let tokenizer = engine.tokenizer();
    texts.filter_map(|m| tokenizer.token_id(m)).filter(|&id| tokenizer.is_special(id)).collect()
}

/// The calls of a finished reply: `(content before them, calls)`, or `None` when the reply
/// holds no well-formed call (it is then plain content). With `parallel_tool_calls: false`
/// only the first call counts.
pub(super) fn parse_reply(
    syntax: ToolSyntax,
    tools: &ToolRequest,
    content: &str,
    seed: &mut u64,
) -> Option<(String, Vec<ToolCall>)> {
    let parsed = syntax.parse(content, &tools.specs, &mut || openai_id(seed)).ok()?;
    let mut calls = parsed.calls;
    if calls.is_empty() {
        return None;
    }
    if !tools.parallel {
        calls.truncate(1);
    }
    Some((parsed.content, calls))
}

/// OpenAI's `tool_calls` entries.
pub(super) fn calls_json(calls: &[ToolCall]) -> Value {
    let entry =
        |c: &ToolCall| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } });
    Value::Array(calls.iter().map(entry).collect())
}

/// Holds back a streamed reply's text from where a call may start, so that a call's text is
/// never sent as content: from the trigger on (and a partial trigger at the end, until it
/// resolves), or for Llama 3's JSON calls the whole reply once it opens with `{` or
/// `<|python_tag|>`. The held calls go out as OpenAI's `delta.tool_calls`: each call's index,
/// id, type and name once its header is written, then its arguments in fragments as the text
/// settles them ([`ToolSyntax::settled_calls`]), the rest when the reply is parsed.
pub(super) struct CallHold {
    syntax: ToolSyntax,
    tools: Vec<ToolSpec>,
    /// Calls a reply may hold: one without `parallel_tool_calls`.
    max_calls: usize,
    /// Draws the ids of calls whose text writes none, in the order [`parse_reply`] draws them.
    id_seed: u64,
    /// Text received and not yet sent.
    pending: String,
    /// Whether a (possible) call started: everything from here on is held.
    holding: bool,
    /// Whether text other than white space was sent (Llama 3's calls open the reply).
    sent_text: bool,
    /// The calls sent so far: their ids and the arguments sent.
    sent_calls: Vec<(String, String)>,
}

impl CallHold {
    /// A hold for the reply to a request offering `tools`; `id_seed` is what
    /// [`parse_reply`] will draw ids from.
    pub(super) fn new(syntax: ToolSyntax, tools: &ToolRequest, id_seed: u64) -> Self {
        Self {
            syntax,
            tools: tools.specs.clone(),
            max_calls: if tools.parallel { usize::MAX } else { 1 },
            id_seed,
            pending: String::new(),
            holding: false,
            sent_text: false,
            sent_calls: Vec::new(),
        }
    }

    /// Takes a content delta; returns what may be sent now.
    pub(super) fn push(&mut self, delta: &str) -> String {
        self.pending.push_str(delta);
        if self.holding {
            return String::new();
        }
        let cut = match self.syntax {
            ToolSyntax::LlamaJson => self.llama_cut(),
            _ => {
                let trigger = self.syntax.trigger();
                match self.pending.find(trigger) {
                    Some(at) => {
                        self.holding = true;
                        at
                    }
                    None => self.pending.len() - partial_suffix(&self.pending, trigger),
                }
            }
        };
        // White space is sent with the text after it: before a call it is no content.
        let cut = self.pending[..cut].trim_end().len();
        let sent: String = self.pending.drain(..cut).collect();
        self.sent_text |= !sent.trim().is_empty();
        sent
    }

    /// Where the text held for a Llama 3 call starts in `pending` (its end when none may).
    fn llama_cut(&mut self) -> usize {
        if self.sent_text {
            return self.pending.len();
        }
        const TAG: &str = "<|python_tag|>";
        let body = self.pending.trim_start();
        if body.starts_with('{') || body.starts_with(TAG) {
            self.holding = true;
            0
        } else if body.is_empty() || TAG.starts_with(body) {
            0
        } else {
            self.pending.len()
        }
    }

    /// The `delta.tool_calls` entries the held text settles beyond those sent: new calls'
    /// headers and their arguments' new fragments.
    pub(super) fn call_deltas(&mut self) -> Vec<Value> {
        if !self.holding {
            return Vec::new();
        }
        let mut deltas = Vec::new();
        for (i, call) in self.syntax.settled_calls(&self.pending, &self.tools).into_iter().enumerate().take(self.max_calls) {
            if i == self.sent_calls.len() {
                let id = call.id.clone().unwrap_or_else(|| openai_id(&mut self.id_seed));
                deltas.push(
                    json!({ "index": i, "id": id, "type": "function", "function": { "name": call.name, "arguments": "" } }),
                );
                self.sent_calls.push((id, String::new()));
            }
            let sent = &mut self.sent_calls[i].1;
            if call.arguments.len() > sent.len() && call.arguments.starts_with(sent.as_str()) {
                deltas.push(json!({ "index": i, "function": { "arguments": &call.arguments[sent.len()..] } }));
                *sent = call.arguments;
            }
        }
        deltas
    }

    /// The end of the reply, parsed into `calls` (`None`: it holds none): what is left to
    /// send, as the held text (content) or the calls' remaining `delta.tool_calls` entries.
    pub(super) fn finish(self, calls: Option<&[ToolCall]>) -> (String, Vec<Value>) {
        let Some(calls) = calls else { return (self.pending, Vec::new()) };
        let mut deltas = Vec::new();
        for (i, call) in calls.iter().enumerate() {
            match self.sent_calls.get(i) {
                // The final arguments start with the fragments sent (settled_calls' promise).
                Some((_, sent)) => {
                    if let Some(rest) = call.arguments.strip_prefix(sent.as_str()).filter(|r| !r.is_empty()) {
                        deltas.push(json!({ "index": i, "function": { "arguments": rest } }));
                    }
                }
                None => deltas.push(json!({
                    "index": i, "id": call.id, "type": "function", "function": { "name": call.name, "arguments": call.arguments },
                })),
            }
        }
        (String::new(), deltas)
    }
}

/// The length of the longest end of `text` that begins `trigger` (shorter than it).
fn partial_suffix(text: &str, trigger: &str) -> usize {
    (1..trigger.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && trigger.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold_all(syntax: ToolSyntax, deltas: &[&str]) -> (String, String) {
        let mut hold =
            CallHold::new(syntax, &ChatRequest::from_value(json!({ "messages": [] , "tokens": [1] }), 10).unwrap().tools, 1);
        let sent: String = deltas.iter().map(|d| hold.push(d)).collect();
        (sent, hold.finish(None).0)
    }

    #[test]
    fn holds_from_the_trigger_on() {
        let (sent, held) = hold_all(ToolSyntax::QwenXml, &["Let me check.", "\n\n<tool", "_call>\n<function=f>", "</tool_call>"]);
        assert_eq!(sent, "Let me check.");
        assert_eq!(held, "\n\n<tool_call>\n<function=f></tool_call>");
    }

    #[test]
    fn releases_a_partial_trigger_that_does_not_complete() {
        let (sent, held) = hold_all(ToolSyntax::MistralArgs, &["a [TOOL", "S] b"]);
        assert_eq!((sent.as_str(), held.as_str()), ("a [TOOLS] b", ""));
        let (sent, held) = hold_all(ToolSyntax::Hermes, &["x <tool_"]);
        assert_eq!((sent.as_str(), held.as_str()), ("x", " <tool_"));
    }

    #[test]
    fn llama_calls_open_the_reply() {
        let (sent, held) = hold_all(ToolSyntax::LlamaJson, &[" ", "{\"name\":", " \"f\"}"]);
        assert_eq!((sent.as_str(), held.as_str()), ("", " {\"name\": \"f\"}"));
        let (sent, held) = hold_all(ToolSyntax::LlamaJson, &["<|python", "_tag|>{}"]);
        assert_eq!((sent.as_str(), held.as_str()), ("", "<|python_tag|>{}"));
        let (sent, held) = hold_all(ToolSyntax::LlamaJson, &["Sure: ", "{\"a\": 1}"]);
        assert_eq!((sent.as_str(), held.as_str()), ("Sure: {\"a\": 1}", ""));
    }

    #[test]
    fn partial_suffix_respects_characters() {
        assert_eq!(partial_suffix("ab<tool", "<tool_call>"), 5);
        assert_eq!(partial_suffix("é", "<tool_call>"), 0);
        assert_eq!(partial_suffix("", "<tool_call>"), 0);
    }
}
