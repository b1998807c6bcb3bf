//! OpenAI's chat-completions API over the [`Engine`]: the request checked before any work
//! ([`ChatRequest`]), responses and stream chunks in OpenAI's shape ([`response`]), errors
//! as OpenAI error objects ([`ApiError`]), and batches of `{custom_id, body}` JSONL lines
//! ([`batch`]). The native CLI and the browser package share it.

pub mod batch;
mod error;
mod request;
pub mod response;

use std::cell::Cell;
use std::rc::Rc;

use serde_json::{json, Value};

use crate::engine::{Engine, EngineError, Prompt, Wait};

pub use error::ApiError;
pub use request::ChatRequest;
pub use response::ResponseMeta;

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
    if let Some(edge) = req.image_max_edge {
        engine.image_options.max_edge = edge;
    }
    let prompt = match &req.tokens {
        Some(tokens) => Prompt { tokens: tokens.clone(), images: Vec::new() },
        None => engine.chat_prompt(&req.messages, load_url)?,
    };
    let max_ctx = engine.ctx.max_ctx() as usize;
    if prompt.tokens.len() >= max_ctx {
        return Err(ApiError::invalid(
            "messages",
            "context_length_exceeded",
            format!("the prompt is {} tokens; this engine's context holds {max_ctx} (prompt and reply)", prompt.tokens.len()),
        ));
    }
    let meta = ResponseMeta::new(req.model.as_deref().or(engine.decoder.cfg.name.as_deref()).unwrap_or("webvlm"));
    let mut opts = req.options.clone();
    opts.abort = abort;
    let logprobs = opts.logprobs.is_some();
    if req.stream {
        if let Some(wait) = on_chunk(response::chunk(&meta, json!({ "role": "assistant", "content": "" }), None, None)) {
            wait.await;
        }
    }
    let tokenizer = engine.tokenizer.clone();
    let g = engine
        .generate_prompt(&prompt, &opts, |step| {
            let lp = step.logprob.map(|e| json!({ "content": response::logprob_content(&tokenizer, std::slice::from_ref(e)) }));
            if !req.stream || (step.text.is_empty() && lp.is_none()) {
                return None;
            }
            on_chunk(response::chunk(&meta, json!({ "content": step.text }), lp, None))
        })
        .await?;
    if req.stream {
        on_chunk(response::chunk(&meta, json!({}), None, Some(g.finish.as_str())));
        if req.include_usage {
            on_chunk(response::usage_chunk(&meta, &g));
        }
    }
    Ok(response::completion(&meta, &g, &engine.tokenizer, logprobs))
}
