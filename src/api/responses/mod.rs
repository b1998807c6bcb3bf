//! OpenAI's Responses API (`POST /v1/responses`) over chat completions, as llama-server and
//! vLLM serve it: a request is read as the chat request it amounts to ([`input`]), runs as
//! one ([`super::run`]: the same prompt, tools, grammar and prompt cache), and its completion
//! and stream chunks are turned into the `response` object and its typed events
//! ([`output`]). Responses are kept in a bounded [`ResponseStore`] for `previous_response_id`
//! (the continued conversation's prefix is the prompt cache's to reuse).
//!
//! The native server takes the steps apart (it parses on the HTTP side and runs the chat
//! request on the engine thread); [`run`] does them all in one place for the browser.

mod input;
mod output;
mod store;

use std::cell::Cell;
use std::rc::Rc;

use serde_json::{json, Value};

pub use output::ResponseEvents;
pub use store::{ResponseStore, MAX_STORED_BYTES, MAX_STORED_RESPONSES};

use super::{ApiError, ChatRequest};
use crate::engine::{Engine, EngineError, Wait};

/// A checked Responses request: its chat body and what the response needs besides.
#[derive(Clone, Debug)]
pub struct ResponsesRequest {
    input: input::ResponsesInput,
    echo: output::Echo,
}

impl ResponsesRequest {
    /// Reads a request body; `store` resolves `previous_response_id`.
    pub fn read(body: Value, store: &ResponseStore) -> Result<Self, ApiError> {
        let input = input::read(body, store)?;
        let echo = output::Echo { ids: output::ResponseIds::new(), fields: input.echo.clone(), store: input.store };
        Ok(ResponsesRequest { input, echo })
    }

    /// The chat-completions body the request amounts to.
    pub fn chat_body(&self) -> &Value {
        &self.input.chat
    }

    /// The chat request, checked (its errors name the Responses fields).
    pub fn chat_request(&self, vocab: usize) -> Result<ChatRequest, ApiError> {
        ChatRequest::from_value(self.input.chat.clone(), vocab).map_err(|e| self.rename(e))
    }

    pub fn stream(&self) -> bool {
        self.input.stream
    }

    /// An error of the chat request or its run, naming the Responses field at fault.
    pub fn rename(&self, e: ApiError) -> ApiError {
        self.input.origins.rename(e)
    }

    /// The stream's event maker.
    pub fn events(&self) -> ResponseEvents {
        ResponseEvents::new(self.echo.clone())
    }

    /// The `response` object of the chat `completion`.
    pub fn response(&self, completion: &Value) -> Value {
        self.echo.response(Some(completion))
    }

    /// Keeps `response` in `store` when the request asked to (`store`, true by default), with
    /// the conversation and its reply (the completion's message, reasoning left out as the
    /// chat templates leave earlier turns' out).
    pub fn keep(&self, store: &mut ResponseStore, response: &Value, completion: &Value) {
        if !self.input.store {
            return;
        }
        let mut history = self.input.history.clone();
        if let Some(message) = completion.pointer("/choices/0/message") {
            let mut reply = json!({ "role": "assistant", "content": message["content"] });
            if let Some(calls) = message.get("tool_calls").filter(|c| c.is_array()) {
                reply["tool_calls"] = calls.clone();
            }
            history.push(reply);
        }
        store.insert(response, history);
    }
}

/// A Responses request running as its chat request: the chat stream's chunks become its
/// events, and the chat completion (or error) its `response` object, kept in a store when
/// asked. [`run`] drives one alone; the browser's requests running together (`web`'s
/// `generateMany`) drive one per Responses request among them.
pub struct ResponseRun {
    request: ResponsesRequest,
    events: ResponseEvents,
}

impl ResponseRun {
    /// Reads `body` (`store` resolves `previous_response_id`): the run and the chat request
    /// it runs as.
    pub fn start(body: Value, store: &ResponseStore, vocab: usize) -> Result<(ResponseRun, ChatRequest), ApiError> {
        let request = ResponsesRequest::read(body, store)?;
        let chat = request.chat_request(vocab)?;
        Ok((ResponseRun { events: request.events(), request }, chat))
    }

    /// The events of a chat stream chunk.
    pub fn chunk(&mut self, chunk: &Value) -> Vec<Value> {
        self.events.push(chunk)
    }

    /// The end of the chat run: the `response` object (kept in `store` when asked) and the
    /// stream's closing events (none unless it streams); or the error, naming the Responses
    /// field at fault.
    pub fn end(
        mut self,
        store: &mut ResponseStore,
        completion: Result<Value, ApiError>,
    ) -> Result<(Value, Vec<Value>), ApiError> {
        let completion = completion.map_err(|e| self.request.rename(e))?;
        let response = self.request.response(&completion);
        let closing = if self.request.stream() { self.events.finish(&response) } else { Vec::new() };
        self.request.keep(store, &response, &completion);
        Ok((response, closing))
    }
}

/// Runs a Responses request on `engine` (the browser's path): returns the `response` object;
/// with `stream`, each event goes to `on_event` as it is made (which may return a future to
/// await: backpressure). The response is kept in `store` when asked to.
pub async fn run(
    engine: &mut Engine,
    store: &mut ResponseStore,
    body: Value,
    load_url: &mut dyn FnMut(&str) -> Result<Vec<u8>, EngineError>,
    abort: Option<Rc<Cell<bool>>>,
    mut on_event: impl FnMut(Value) -> Option<Wait>,
) -> Result<Value, ApiError> {
    let (mut run, chat) = ResponseRun::start(body, store, engine.decoder().cfg.vocab as usize)?;
    let mut send = |events: Vec<Value>| events.into_iter().fold(None, |_, e| on_event(e));
    let completion = super::run(engine, &chat, load_url, abort, |chunk| send(run.chunk(&chunk))).await;
    let (response, closing) = run.end(store, completion)?;
    if let Some(wait) = send(closing) {
        wait.await;
    }
    Ok(response)
}
