//! OpenAI's chat-completions API over the [`Engine`]: the request checked before any work
//! ([`ChatRequest`]), responses and stream chunks in OpenAI's shape ([`response`]), errors
//! as OpenAI error objects ([`ApiError`]), and batches of `{custom_id, body}` JSONL lines
//! ([`batch`]). The native CLI and the browser package share it.

pub mod batch;
mod error;
mod request;
pub mod response;
pub mod responses;
mod tools;

use std::cell::Cell;
use std::rc::Rc;

use serde_json::{json, Value};

use crate::chat::reasoning::{split_reasoning, ReasoningSplitter};
use crate::chat::{ChatContent, ContentPart};
use crate::engine::{Engine, EngineError, Prompt, Wait};
use crate::image::PreprocessOptions;

pub use error::ApiError;
pub use request::{chat_template_kwargs, ChatRequest, ToolChoice, ToolRequest, MAX_CHAT_TEMPLATE_KWARGS_BYTES};
pub use response::ResponseMeta;

/// Refuses what [`run`] would refuse before any image is fetched: an invalid or unsupported
/// `response_format`, an `image_max_edge` above the model's image size, a prompt longer than
/// the context (counted before the images' tokens, a lower bound). The browser's worker calls it before downloading a request's image URLs.
pub fn check(engine: &mut Engine, req: &ChatRequest) -> Result<(), ApiError> {
    engine.check_response_format(&req.options.response_format)?;
    tools::check_schemas(engine, req)?;
    for format in
        tools::choice_format(engine, req, None).into_iter().chain(tools::lazy_format(engine, req, None).map(|l| l.format))
    {
        engine.check_response_format(&format).map_err(|e| {
            ApiError::invalid("tool_choice", "invalid_value", format!("the tools' call grammar cannot be used: {e}"))
        })?;
    }
    image_options(engine, req)?;
    let kwargs = tools::template_kwargs(engine, req)?;
    let has_images = req.messages.iter().any(|m| match &m.content {
        ChatContent::Parts(parts) => parts.iter().any(|p| matches!(p, ContentPart::Image { .. })),
        ChatContent::Text(_) | ChatContent::Null => false,
    });
    let tokens = match &req.tokens {
        Some(tokens) => tokens.len(),
        None => match engine.chat_tokens(&req.messages, kwargs.as_deref()) {
            Ok(tokens) => tokens.len(),
            // With images, generation meets them first (a bad one is its error).
            Err(_) if has_images => return Ok(()),
            Err(e) => return Err(e.into()),
        },
    };
    check_length(engine, tokens, if has_images { " before its images" } else { "" })
}

fn check_length(engine: &Engine, tokens: usize, counted: &str) -> Result<(), ApiError> {
    let max_ctx = engine.max_context() as usize;
    if tokens < max_ctx {
        return Ok(());
    }
    let size = if counted.is_empty() { format!("{tokens} tokens") } else { format!("at least {tokens} tokens{counted}") };
    let message = format!("the prompt is {size}; this engine's context holds {max_ctx} (prompt and reply)");
    Err(ApiError::invalid("messages", "context_length_exceeded", message))
}

/// The image preprocessing settings of a request ([`Engine::image_options_for`]).
fn image_options(engine: &Engine, req: &ChatRequest) -> Result<PreprocessOptions, ApiError> {
    engine.image_options_for(req.image_max_edge).map_err(|e| ApiError::invalid("image_max_edge", "invalid_value", e.to_string()))
}

/// Runs a checked request: builds its prompt (image URLs that are not `data:` URLs go to
/// `load_url`), generates, and returns the `chat.completion` object. With `stream`, each
/// chunk goes to `on_chunk` as it is made (which may return a future to await: backpressure).
pub async fn run(
    engine: &mut Engine,
    req: &ChatRequest,
    load_url: &mut dyn FnMut(&str) -> Result<Vec<u8>, EngineError>,
    abort: Option<Rc<Cell<bool>>>,
    mut on_chunk: impl FnMut(Value) -> Option<Wait>,
) -> Result<Value, ApiError> {
    engine.check_response_format(&req.options.response_format)?;
    tools::check_schemas(engine, req)?;
    let image_options = image_options(engine, req)?;
    let kwargs = tools::template_kwargs(engine, req)?;
    let prompt = match &req.tokens {
        Some(tokens) => Prompt { tokens: tokens.clone(), images: Vec::new() },
        None => engine.chat_prompt(&req.messages, Some(&image_options), kwargs.as_deref(), load_url)?,
    };
    // Replies of a template with think tags are split into reasoning and content; a prompt
    // of raw ids is split when its text left a think block open.
    let think_tags = engine.template().think_tags();
    let reasoning_opened = match (&req.tokens, think_tags) {
        (Some(tokens), Some(tags)) => {
            Some(tags.prompt_opens(&engine.tokenizer().decode(tokens, false).map_err(EngineError::from)?))
        }
        (Some(_), None) => None,
        (None, _) => engine.reasoning_opened(&req.messages, kwargs.as_deref())?,
    };
    let reasoning = reasoning_opened.zip(think_tags);
    let mut splitter = reasoning.map(|(opened, tags)| ReasoningSplitter::new(tags, opened));
    check_length(engine, prompt.tokens.len(), "")?;
    let meta = ResponseMeta::new(req.model.as_deref().or(engine.decoder().cfg.name.as_deref()).unwrap_or("webvlm"));
    let mut opts = req.options_for(engine.sampling_defaults());
    opts.abort = abort;
    let think_close = reasoning.filter(|&(opened, _)| opened).map(|(_, tags)| tags.close);
    if let Some(format) = tools::choice_format(engine, req, think_close) {
        opts.response_format = format;
    }
    opts.lazy_format = tools::lazy_format(engine, req, reasoning);
    tools::ban_trigger(engine, req, &mut opts);
    let syntax = tools::reply_syntax(engine, req);
    // The markers of calls and think blocks stay in the decoded text for the parsers.
    let markers = syntax.map_or(&[][..], |s| s.markers()).iter().copied();
    let think_markers = reasoning.map(|(_, tags)| [tags.open, tags.close]).into_iter().flatten();
    opts.keep_tokens = tools::special_ids(engine, markers.chain(think_markers));
    // Call ids drawn from the response's own id (fresh per response).
    let mut id_seed = meta.id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut hold = syntax.map(|s| tools::CallHold::new(s, req, id_seed));
    let logprobs = opts.logprobs.is_some();
    if req.stream {
        if let Some(wait) = on_chunk(response::chunk(&meta, json!({ "role": "assistant", "content": "" }), None, None)) {
            wait.await;
        }
    }
    let tokenizer = engine.tokenizer().clone();
    let g = engine
        .generate_prompt(&prompt, &opts, |step| {
            let lp = step.logprob.map(|e| json!({ "content": response::logprob_content(&tokenizer, std::slice::from_ref(e)) }));
            if !req.stream || (step.text.is_empty() && lp.is_none()) {
                return None;
            }
            let delta = match splitter.as_mut() {
                Some(s) => reasoning_delta(s.push(step.text)),
                None => Some(json!({ "content": step.text })),
            };
            let delta = with_calls(delta.and_then(|d| hold_content(hold.as_mut(), d)), hold.as_mut());
            match delta {
                Some(delta) => on_chunk(response::chunk(&meta, delta, lp, None)),
                None if lp.is_some() => on_chunk(response::chunk(&meta, json!({ "content": "" }), lp, None)),
                None => None,
            }
        })
        .await?;
    let (reasoning, content) = match reasoning {
        Some((opened, tags)) => {
            let (reasoning, content) = split_reasoning(&g.text, tags, opened);
            (Some(reasoning), content)
        }
        None => (None, g.text.clone()),
    };
    let calls = syntax.and_then(|s| tools::parse_reply(s, req, &content, &mut id_seed));
    let finish = if calls.is_some() { "tool_calls" } else { g.finish.as_str() };
    if req.stream {
        let last = splitter.as_mut().and_then(|s| reasoning_delta(s.finish())).and_then(|d| hold_content(hold.as_mut(), d));
        // What the hold kept back: the calls' last fragments, or text that held none after all.
        let (held, call_deltas) = hold.map(|h| h.finish(calls.as_ref().map(|(_, c)| c.as_slice()))).unwrap_or_default();
        let tail = if !call_deltas.is_empty() {
            Some(json!({ "tool_calls": call_deltas }))
        } else {
            (!held.is_empty()).then(|| json!({ "content": held }))
        };
        for delta in [last, tail].into_iter().flatten() {
            if let Some(wait) = on_chunk(response::chunk(&meta, delta, None, None)) {
                wait.await;
            }
        }
        on_chunk(response::chunk(&meta, json!({}), None, Some(finish)));
        if req.include_usage {
            on_chunk(response::usage_chunk(&meta, &g));
        }
    }
    let mut completion = response::completion(&meta, &g, engine.tokenizer(), logprobs);
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
    Ok(completion)
}

/// A stream delta with its `content` passed through `hold` (a call's text held back);
/// `None` when nothing is left to send.
fn hold_content(hold: Option<&mut tools::CallHold>, mut delta: Value) -> Option<Value> {
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
fn with_calls(delta: Option<Value>, hold: Option<&mut tools::CallHold>) -> Option<Value> {
    let calls = hold.map(tools::CallHold::call_deltas).unwrap_or_default();
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
