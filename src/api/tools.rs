//! Tool calls in chat completions: the request's `tools` handed to the chat template, the
//! markers of the model's call syntax kept in the decoded text, and the calls parsed out of
//! the reply ([`crate::chat::tool_calls`]) into OpenAI's `message.tool_calls` with
//! `finish_reason: "tool_calls"` (streamed: the text from the call's trigger on is held back
//! and sent as `delta.tool_calls` at the end, so the assembled stream equals the response).
//!
//! Reference: OpenAI's chat-completions `tools` / `tool_choice` / `parallel_tool_calls`;
//! llama.cpp's `common/chat.cpp` keeps the trigger tokens of a call ("preserved tokens") in
//! the text its parsers read, as [`kept_tokens`] keeps [`ToolSyntax::markers`].

use std::borrow::Cow;

use serde_json::{json, Map, Value};

use super::request::{ChatRequest, ToolChoice};
use super::ApiError;
use crate::chat::tool_calls::{openai_id, ToolCall, ToolSpec, ToolSyntax};
use crate::chat::tool_grammar::call_grammar;
use crate::engine::{Engine, GenerateOptions, LazyFormat, ResponseFormat};

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
/// grammar of a call (of the named function, or of any tool; after the thought when
/// `think_open`), replacing any `response_format`. `None` for `auto` and `none`.
pub(super) fn choice_format(engine: &Engine, req: &ChatRequest, think_open: bool) -> Option<ResponseFormat> {
    let syntax = engine.template().tool_syntax()?;
    let tools = match &req.tools.choice {
        ToolChoice::Required => req.tools.specs.clone(),
        ToolChoice::Function(name) => req.tools.specs.iter().filter(|s| &s.name == name).cloned().collect(),
        ToolChoice::Auto | ToolChoice::None => return None,
    };
    let think = think_open.then_some(crate::chat::reasoning::THINK_CLOSE);
    Some(grammar_format(engine, syntax, &tools, req.tools.parallel, think))
}

/// Under `tool_choice: "auto"`, the grammar of calls of any tool from the syntax's trigger
/// on, where the trigger is one token of the vocabulary (not for Llama 3's JSON, whose `{`
/// is no marker): the text before a call is free, the call is constrained.
pub(super) fn lazy_format(engine: &Engine, req: &ChatRequest) -> Option<LazyFormat> {
    if req.tools.choice != ToolChoice::Auto || req.tools.specs.is_empty() {
        return None;
    }
    let (syntax, trigger) = trigger_token(engine)?;
    Some(LazyFormat { trigger, format: grammar_format(engine, syntax, &req.tools.specs, req.tools.parallel, None) })
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

/// The special tokens of `syntax`'s markers in this vocabulary, kept in the decoded text.
pub(super) fn kept_tokens(engine: &Engine, syntax: ToolSyntax) -> Vec<u32> {
    let tokenizer = engine.tokenizer();
    syntax.markers().iter().filter_map(|m| tokenizer.token_id(m)).filter(|&id| tokenizer.is_special(id)).collect()
}

/// The calls of a finished reply: `(content before them, calls)`, or `None` when the reply
/// holds no well-formed call (it is then plain content). With `parallel_tool_calls: false`
/// only the first call counts.
pub(super) fn parse_reply(
    syntax: ToolSyntax,
    req: &ChatRequest,
    content: &str,
    seed: &mut u64,
) -> Option<(String, Vec<ToolCall>)> {
    let parsed = syntax.parse(content, &req.tools.specs, &mut || openai_id(seed)).ok()?;
    let mut calls = parsed.calls;
    if calls.is_empty() {
        return None;
    }
    if !req.tools.parallel {
        calls.truncate(1);
    }
    Some((parsed.content, calls))
}

/// OpenAI's `tool_calls` entries; `indexed` adds each call's `index` (stream deltas).
pub(super) fn calls_json(calls: &[ToolCall], indexed: bool) -> Value {
    let entry = |(i, c): (usize, &ToolCall)| {
        let mut v = json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } });
        if indexed {
            v["index"] = json!(i);
        }
        v
    };
    Value::Array(calls.iter().enumerate().map(entry).collect())
}

/// Holds back a streamed reply's text from where a call may start, so that a call's text is
/// never sent as content: from the trigger on (and a partial trigger at the end, until it
/// resolves), or for Llama 3's JSON calls the whole reply once it opens with `{` or
/// `<|python_tag|>`.
pub(super) struct CallHold {
    syntax: ToolSyntax,
    /// Text received and not yet sent.
    pending: String,
    /// Whether a (possible) call started: everything from here on is held.
    holding: bool,
    /// Whether text other than white space was sent (Llama 3's calls open the reply).
    sent_text: bool,
}

impl CallHold {
    pub(super) fn new(syntax: ToolSyntax) -> Self {
        Self { syntax, pending: String::new(), holding: false, sent_text: false }
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

    /// The text held back at the end of the reply.
    pub(super) fn finish(self) -> String {
        self.pending
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
        let mut hold = CallHold::new(syntax);
        let sent: String = deltas.iter().map(|d| hold.push(d)).collect();
        (sent, hold.finish())
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
