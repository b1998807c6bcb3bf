//! The Responses side of a chat completion: the `response` object (output items: a
//! `reasoning` item, a `message` of `output_text`, `function_call`s; `usage` with
//! `input_tokens_details.cached_tokens`), and the typed stream events made from the chat
//! stream's chunks (`response.created`, `response.output_item.added`,
//! `response.output_text.delta`, `response.function_call_arguments.delta`, ...,
//! `response.completed`), each with its `sequence_number`, in the order OpenAI sends them.

use serde_json::{json, Map, Value};

use crate::api::ApiError;

/// A response's ids: `resp_…`, and its items' ids made from the same suffix (the streamed
/// items and the final object's share them).
#[derive(Clone, Debug)]
pub struct ResponseIds {
    pub id: String,
    suffix: String,
    pub created_at: u64,
}

impl ResponseIds {
    pub fn new() -> Self {
        let meta = crate::api::ResponseMeta::new("");
        let suffix = meta.id.trim_start_matches("chatcmpl-").to_string();
        ResponseIds { id: format!("resp_{suffix}"), suffix, created_at: meta.created }
    }

    fn reasoning(&self) -> String {
        format!("rs_{}", self.suffix)
    }

    fn message(&self) -> String {
        format!("msg_{}", self.suffix)
    }

    fn call(&self, index: usize) -> String {
        format!("fc_{}_{index}", self.suffix)
    }
}

/// What the response object repeats of its request.
#[derive(Clone, Debug)]
pub struct Echo {
    pub ids: ResponseIds,
    pub fields: Map<String, Value>,
    pub store: bool,
}

impl Echo {
    /// The response object: in progress (no completion yet), or made from the chat
    /// `completion`.
    pub fn response(&self, completion: Option<&Value>) -> Value {
        let field = |name: &str, default: Value| self.fields.get(name).cloned().unwrap_or(default);
        let finish = completion.and_then(|c| c.pointer("/choices/0/finish_reason")).and_then(Value::as_str);
        let status = match finish {
            None => "in_progress",
            Some("length") => "incomplete",
            Some("abort") => "cancelled",
            Some(_) => "completed",
        };
        let output = completion.and_then(|c| c.pointer("/choices/0/message")).map_or_else(Vec::new, |m| self.output(m));
        json!({
            "id": self.ids.id,
            "object": "response",
            "created_at": self.ids.created_at,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": (status == "incomplete").then(|| json!({ "reason": "max_output_tokens" })),
            "instructions": field("instructions", Value::Null),
            "max_output_tokens": field("max_output_tokens", Value::Null),
            "metadata": field("metadata", json!({})),
            "model": completion.and_then(|c| c.get("model")).cloned().unwrap_or_else(|| field("model", Value::Null)),
            "output": output,
            "parallel_tool_calls": field("parallel_tool_calls", json!(true)),
            "previous_response_id": field("previous_response_id", Value::Null),
            "reasoning": { "effort": null, "summary": null },
            "store": self.store,
            "temperature": field("temperature", Value::Null),
            "text": field("text", json!({ "format": { "type": "text" } })),
            "tool_choice": field("tool_choice", json!("auto")),
            "tools": field("tools", json!([])),
            "top_p": field("top_p", Value::Null),
            "truncation": "disabled",
            "usage": completion.and_then(|c| c.get("usage")).map(usage),
            "user": field("user", Value::Null),
        })
    }

    /// The output items of a chat `message`: its reasoning, its text (when it has text or no
    /// calls), its calls.
    fn output(&self, message: &Value) -> Vec<Value> {
        let mut items = Vec::new();
        if let Some(reasoning) = message["reasoning_content"].as_str().filter(|r| !r.is_empty()) {
            items.push(reasoning_item(&self.ids.reasoning(), reasoning, "completed"));
        }
        let calls = message["tool_calls"].as_array().map_or(&[][..], Vec::as_slice);
        let text = message["content"].as_str().unwrap_or("");
        if !text.is_empty() || calls.is_empty() {
            items.push(message_item(&self.ids.message(), text, "completed"));
        }
        for (i, call) in calls.iter().enumerate() {
            items.push(call_item(&self.ids.call(i), call, &call["function"]["arguments"], "completed"));
        }
        items
    }
}

fn reasoning_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "in_progress" { json!([]) } else { json!([{ "type": "reasoning_text", "text": text }]) };
    json!({ "type": "reasoning", "id": id, "summary": [], "content": content, "status": status })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "in_progress" { json!([]) } else { json!([text_part(text)]) };
    json!({ "type": "message", "id": id, "status": status, "role": "assistant", "content": content })
}

fn text_part(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] })
}

fn call_item(id: &str, call: &Value, arguments: &Value, status: &str) -> Value {
    json!({
        "type": "function_call", "id": id, "call_id": call["id"], "name": call["function"]["name"],
        "arguments": arguments, "status": status,
    })
}

/// Responses' usage from chat's: input and output tokens, cached input tokens, and webvlm's
/// `timings`. Reasoning tokens are not counted apart (0).
fn usage(chat: &Value) -> Value {
    json!({
        "input_tokens": chat["prompt_tokens"],
        "input_tokens_details": { "cached_tokens": chat.pointer("/prompt_tokens_details/cached_tokens").cloned().unwrap_or(json!(0)) },
        "output_tokens": chat["completion_tokens"],
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": chat["total_tokens"],
        "timings": chat["timings"],
    })
}

/// The `function_call` item being streamed.
#[derive(Debug)]
struct OpenCall {
    output_index: usize,
    call_id: Value,
    name: Value,
    arguments: String,
}

/// The text item being streamed.
#[derive(Debug)]
struct OpenItem {
    reasoning: bool,
    output_index: usize,
    text: String,
}

/// Turns a chat stream's chunks into Responses events.
#[derive(Debug)]
pub struct ResponseEvents {
    echo: Echo,
    sequence: u64,
    started: bool,
    /// Output items sent (their ids).
    sent: Vec<String>,
    open: Option<OpenItem>,
    open_call: Option<OpenCall>,
}

impl ResponseEvents {
    pub fn new(echo: Echo) -> Self {
        ResponseEvents { echo, sequence: 0, started: false, sent: Vec::new(), open: None, open_call: None }
    }

    fn event(&mut self, kind: &str, mut fields: Value) -> Value {
        fields["type"] = json!(kind);
        fields["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        fields
    }

    /// The events of one chat chunk (the first chunk's start with `response.created`).
    pub fn push(&mut self, chunk: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            let response = self.echo.response(None);
            out.push(self.event("response.created", json!({ "response": response })));
            out.push(self.event("response.in_progress", json!({ "response": response })));
        }
        let Some(delta) = chunk.pointer("/choices/0/delta") else { return out };
        if let Some(text) = delta["reasoning_content"].as_str().filter(|t| !t.is_empty()) {
            self.text_delta(true, text, &mut out);
        }
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            self.text_delta(false, text, &mut out);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            self.call_delta(call, &mut out);
        }
        out
    }

    /// A `delta.tool_calls` entry: a new call (its id and name) opens a `function_call` item,
    /// closing the item before it; argument fragments go to the open call's item.
    fn call_delta(&mut self, call: &Value, out: &mut Vec<Value>) {
        if call.get("id").is_some() {
            self.close(out);
            let index = call["index"].as_u64().unwrap_or(0) as usize;
            let id = self.echo.ids.call(index);
            let output_index = self.sent.len();
            self.sent.push(id.clone());
            out.push(self.event(
                "response.output_item.added",
                json!({ "output_index": output_index, "item": call_item(&id, call, &json!(""), "in_progress") }),
            ));
            self.open_call = Some(OpenCall {
                output_index,
                call_id: call["id"].clone(),
                name: call["function"]["name"].clone(),
                arguments: String::new(),
            });
        }
        let Some(fragment) = call.pointer("/function/arguments").and_then(Value::as_str).filter(|f| !f.is_empty()) else {
            return;
        };
        let Some(open) = self.open_call.as_mut() else { return };
        open.arguments.push_str(fragment);
        let at = json!({ "item_id": self.sent[open.output_index], "output_index": open.output_index, "delta": fragment });
        out.push(self.event("response.function_call_arguments.delta", at));
    }

    /// A text delta of the reasoning or the message, opening its item first.
    fn text_delta(&mut self, reasoning: bool, text: &str, out: &mut Vec<Value>) {
        if self.open.as_ref().is_some_and(|o| o.reasoning != reasoning) {
            self.close(out);
        }
        if self.open.is_none() {
            let output_index = self.sent.len();
            let id = if reasoning { self.echo.ids.reasoning() } else { self.echo.ids.message() };
            self.sent.push(id.clone());
            let item = if reasoning { reasoning_item(&id, "", "in_progress") } else { message_item(&id, "", "in_progress") };
            out.push(self.event("response.output_item.added", json!({ "output_index": output_index, "item": item })));
            let part = if reasoning { json!({ "type": "reasoning_text", "text": "" }) } else { text_part("") };
            let at = json!({ "item_id": id, "output_index": output_index, "content_index": 0, "part": part });
            out.push(self.event("response.content_part.added", at));
            self.open = Some(OpenItem { reasoning, output_index, text: String::new() });
        }
        let open = self.open.as_mut().expect("opened");
        open.text.push_str(text);
        let output_index = open.output_index;
        let at = json!({ "item_id": self.sent[output_index], "output_index": output_index, "content_index": 0, "delta": text });
        if reasoning {
            out.push(self.event("response.reasoning_text.delta", at));
        } else {
            out.push(self.event("response.output_text.delta", merge(&at, json!({ "logprobs": [] }))));
        }
    }

    /// Ends the item being streamed: a call's arguments `done`; a text's `done`, its part's;
    /// then the item's own.
    fn close(&mut self, out: &mut Vec<Value>) {
        if let Some(call) = self.open_call.take() {
            let id = self.sent[call.output_index].clone();
            let at = json!({ "item_id": id, "output_index": call.output_index, "arguments": call.arguments, "name": call.name });
            out.push(self.event("response.function_call_arguments.done", at));
            let entry = json!({ "id": call.call_id, "function": { "name": call.name } });
            let item = call_item(&id, &entry, &json!(call.arguments), "completed");
            out.push(self.event("response.output_item.done", json!({ "output_index": call.output_index, "item": item })));
        }
        let Some(open) = self.open.take() else { return };
        let id = self.sent[open.output_index].clone();
        let at = json!({ "item_id": id, "output_index": open.output_index, "content_index": 0 });
        let (kind, part, item) = if open.reasoning {
            let part = json!({ "type": "reasoning_text", "text": open.text });
            ("response.reasoning_text.done", part, reasoning_item(&id, &open.text, "completed"))
        } else {
            ("response.output_text.done", text_part(&open.text), message_item(&id, &open.text, "completed"))
        };
        let mut done = merge(&at, json!({ "text": open.text }));
        if !open.reasoning {
            done["logprobs"] = json!([]);
        }
        out.push(self.event(kind, done));
        out.push(self.event("response.content_part.done", merge(&at, json!({ "part": part }))));
        out.push(self.event("response.output_item.done", json!({ "output_index": open.output_index, "item": item })));
    }

    /// The last events: the open item closed, the items the stream never opened (an empty
    /// message), then `response.completed` (or `response.incomplete`) with the whole object.
    pub fn finish(&mut self, response: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        self.close(&mut out);
        for item in response["output"].as_array().into_iter().flatten() {
            if self.sent.iter().any(|id| item["id"] == *id) {
                continue;
            }
            let output_index = self.sent.len();
            self.sent.push(item["id"].as_str().unwrap_or_default().into());
            out.push(self.event("response.output_item.added", json!({ "output_index": output_index, "item": item })));
            out.push(self.event("response.output_item.done", json!({ "output_index": output_index, "item": item })));
        }
        let kind = if response["status"] == "completed" { "response.completed" } else { "response.incomplete" };
        out.push(self.event(kind, json!({ "response": response })));
        out
    }

    /// The `error` event of a generation that failed midway.
    pub fn error(&mut self, e: &ApiError) -> Value {
        self.event("error", json!({ "code": e.code, "message": e.message, "param": e.param }))
    }
}

/// `a`'s fields with `b`'s added.
fn merge(a: &Value, b: Value) -> Value {
    let mut out = a.clone();
    if let (Some(out), Value::Object(b)) = (out.as_object_mut(), b) {
        out.extend(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(delta: Value, finish: Option<&str>) -> Value {
        json!({ "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] })
    }

    #[test]
    fn a_chat_stream_becomes_typed_events_that_match_the_response() {
        let echo = Echo { ids: ResponseIds::new(), fields: Map::new(), store: true };
        let mut events = ResponseEvents::new(echo.clone());
        let call = json!({ "index": 0, "id": "call_1", "type": "function", "function": { "name": "f", "arguments": "" } });
        let fragment = |text: &str| json!({ "tool_calls": [{ "index": 0, "function": { "arguments": text } }] });
        let chunks = [
            chunk(json!({ "role": "assistant", "content": "" }), None),
            chunk(json!({ "reasoning_content": "hm" }), None),
            chunk(json!({ "content": "Sure" }), None),
            chunk(json!({ "content": "." }), None),
            chunk(json!({ "tool_calls": [call] }), None),
            chunk(fragment("{\"a\""), None),
            chunk(fragment(":1}"), None),
            chunk(json!({}), Some("tool_calls")),
        ];
        let mut all: Vec<Value> = chunks.iter().flat_map(|c| events.push(c)).collect();
        let completion = json!({
            "model": "m",
            "choices": [{ "message": { "role": "assistant", "content": "Sure.", "reasoning_content": "hm",
                "tool_calls": [{ "id": "call_1", "type": "function", "function": { "name": "f", "arguments": "{\"a\":1}" } }] },
                "finish_reason": "tool_calls" }],
            "usage": { "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": { "cached_tokens": 2 } },
        });
        let response = echo.response(Some(&completion));
        all.extend(events.finish(&response));
        let kinds: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert!(all.iter().enumerate().all(|(i, e)| e["sequence_number"] == i), "sequence numbers count up from 0");
        // Each item as its output_item.done event sent it is the final object's.
        let done: Vec<&Value> = all.iter().filter(|e| e["type"] == "response.output_item.done").map(|e| &e["item"]).collect();
        let output: Vec<&Value> = response["output"].as_array().unwrap().iter().collect();
        assert_eq!(done, output);
        assert_eq!(response["usage"]["input_tokens_details"]["cached_tokens"], 2);
        assert_eq!(response["status"], "completed");
    }

    #[test]
    fn an_empty_reply_still_has_its_message_and_a_cut_one_is_incomplete() {
        let echo = Echo { ids: ResponseIds::new(), fields: Map::new(), store: false };
        let mut events = ResponseEvents::new(echo.clone());
        let mut all = events.push(&chunk(json!({ "role": "assistant", "content": "" }), None));
        let completion = json!({ "choices": [{ "message": { "content": "" }, "finish_reason": "length" }], "usage": {} });
        let response = echo.response(Some(&completion));
        all.extend(events.finish(&response));
        assert_eq!(response["status"], "incomplete");
        assert_eq!(response["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(all.last().unwrap()["type"], "response.incomplete");
        assert_eq!(all.iter().filter(|e| e["type"] == "response.output_item.done").count(), 1);
    }
}
