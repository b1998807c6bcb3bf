//! The output side of a chat completion: what is generated, turned into OpenAI's stream
//! chunks as it comes ([`Reply::step`]: reasoning split from content, a call's text held
//! back and sent as `delta.tool_calls` fragments, logprobs) and into the `chat.completion`
//! object at the end ([`Reply::finish`]: the calls parsed, the finish reason).

use std::sync::Arc;

use serde_json::{json, Value};

use super::request::{ChatRequest, ToolRequest};
use super::response::{self, ResponseMeta};
use super::tools::{self, CallHold};
use crate::chat::reasoning::{split_reasoning, ReasoningSplitter, ThinkTags};
use crate::chat::tool_calls::ToolSyntax;
use crate::engine::{Engine, Generation, StepOutput};
use crate::tokenizer::Tokenizer;

/// The reply of one choice of a request (see the module docs; [`super::Choices`] holds a
/// request's choices).
pub struct Reply {
    meta: ResponseMeta,
    tokenizer: Arc<Tokenizer>,
    stream: bool,
    logprobs: bool,
    /// Whether the reply starts inside a think block, and the template's tags.
    reasoning: Option<(bool, ThinkTags)>,
    splitter: Option<ReasoningSplitter>,
    syntax: Option<ToolSyntax>,
    tools: ToolRequest,
    hold: Option<CallHold>,
    /// Draws call ids: from the response's own id (fresh per response).
    id_seed: u64,
}

impl Reply {
    /// Choice `index` of the response `meta`.
    pub(super) fn new(
        engine: &Engine,
        req: &ChatRequest,
        (meta, index): (&ResponseMeta, u32),
        reasoning: Option<(bool, ThinkTags)>,
        syntax: Option<ToolSyntax>,
        logprobs: bool,
    ) -> Reply {
        let id_seed = (meta.id.bytes().chain(index.to_le_bytes()))
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        Reply {
            tokenizer: engine.tokenizer().clone(),
            stream: req.stream,
            logprobs,
            reasoning,
            splitter: reasoning.map(|(opened, tags)| ReasoningSplitter::new(tags, opened)),
            syntax,
            hold: syntax.map(|s| CallHold::new(s, &req.tools, id_seed)),
            tools: req.tools.clone(),
            id_seed,
            meta: meta.clone(),
        }
    }

    /// The stream's first chunk (the assistant's role), when streaming.
    pub fn start(&self) -> Option<Value> {
        self.stream.then(|| response::chunk(&self.meta, json!({ "role": "assistant", "content": "" }), None, None))
    }

    /// The chunk of a generation step, when streaming and the step settles something to send.
    pub fn step(&mut self, step: &StepOutput<'_>) -> Option<Value> {
        let lp = step.logprob.map(|e| json!({ "content": response::logprob_content(&self.tokenizer, std::slice::from_ref(e)) }));
        if !self.stream || (step.text.is_empty() && lp.is_none()) {
            return None;
        }
        let delta = match self.splitter.as_mut() {
            Some(s) => reasoning_delta(s.push(step.text)),
            None => Some(json!({ "content": step.text })),
        };
        let delta = with_calls(delta.and_then(|d| hold_content(self.hold.as_mut(), d)), self.hold.as_mut());
        match delta {
            Some(delta) => Some(response::chunk(&self.meta, delta, lp, None)),
            None if lp.is_some() => Some(response::chunk(&self.meta, json!({ "content": "" }), lp, None)),
            None => None,
        }
    }

    /// The stream's last chunks (what was held back, the finish reason; none when not
    /// streaming) and the `chat.completion` object of `g`.
    pub fn finish(mut self, g: &Generation) -> (Vec<Value>, Value) {
        let (reasoning, content) = match self.reasoning {
            Some((opened, tags)) => {
                let (reasoning, content) = split_reasoning(&g.text, tags, opened);
                (Some(reasoning), content)
            }
            None => (None, g.text.clone()),
        };
        let calls = self.syntax.and_then(|s| tools::parse_reply(s, &self.tools, &content, &mut self.id_seed));
        let finish = if calls.is_some() { "tool_calls" } else { g.finish.as_str() };
        let mut chunks = Vec::new();
        if self.stream {
            let last = self
                .splitter
                .as_mut()
                .and_then(|s| reasoning_delta(s.finish()))
                .and_then(|d| hold_content(self.hold.as_mut(), d));
            // What the hold kept back: the calls' last fragments, or text that held none after all.
            let (held, call_deltas) = self.hold.map(|h| h.finish(calls.as_ref().map(|(_, c)| c.as_slice()))).unwrap_or_default();
            let tail = if !call_deltas.is_empty() {
                Some(json!({ "tool_calls": call_deltas }))
            } else {
                (!held.is_empty()).then(|| json!({ "content": held }))
            };
            chunks.extend([last, tail].into_iter().flatten().map(|delta| response::chunk(&self.meta, delta, None, None)));
            chunks.push(response::chunk(&self.meta, json!({}), None, Some(finish)));
        }
        let mut completion = response::completion(&self.meta, g, &self.tokenizer, self.logprobs);
        if let Some(message) = completion.pointer_mut("/choices/0/message") {
            message["content"] = json!(content);
            if let Some(reasoning) = reasoning {
                message["reasoning_content"] = json!(reasoning);
            }
            if let Some((before, calls)) = &calls {
                message["content"] = if before.is_empty() { Value::Null } else { json!(before) };
                message["tool_calls"] = tools::calls_json(calls);
            }
        }
        if let Some(choice) = completion.pointer_mut("/choices/0") {
            choice["finish_reason"] = json!(finish);
        }
        (chunks, completion)
    }
}

/// A stream delta with its `content` passed through `hold` (a call's text held back);
/// `None` when nothing is left to send.
fn hold_content(hold: Option<&mut CallHold>, mut delta: Value) -> Option<Value> {
    let (Some(hold), Some(text)) = (hold, delta.get("content").and_then(Value::as_str)) else { return Some(delta) };
    let sent = hold.push(text);
    let map = delta.as_object_mut()?;
    if sent.is_empty() {
        map.remove("content");
    } else {
        map.insert("content".into(), json!(sent));
    }
    (!map.is_empty()).then_some(delta)
}

/// `delta` with the call fragments the hold's text settles (a delta of its own when `delta`
/// is `None`).
fn with_calls(delta: Option<Value>, hold: Option<&mut CallHold>) -> Option<Value> {
    let calls = hold.map(CallHold::call_deltas).unwrap_or_default();
    if calls.is_empty() {
        return delta;
    }
    let mut delta = delta.unwrap_or_else(|| json!({}));
    delta["tool_calls"] = Value::Array(calls);
    Some(delta)
}

/// The stream delta of a settled `(reasoning, content)` pair, `None` when both are empty.
fn reasoning_delta((reasoning, content): (String, String)) -> Option<Value> {
    let mut delta = serde_json::Map::new();
    if !reasoning.is_empty() {
        delta.insert("reasoning_content".into(), json!(reasoning));
    }
    if !content.is_empty() {
        delta.insert("content".into(), json!(content));
    }
    (!delta.is_empty()).then_some(Value::Object(delta))
}
