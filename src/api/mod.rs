//! OpenAI's chat-completions API over the [`Engine`]: the request checked before any work
//! ([`ChatRequest`]), responses and stream chunks in OpenAI's shape ([`response`]), errors
//! as OpenAI error objects ([`ApiError`]), and batches of `{custom_id, body}` JSONL lines
//! ([`batch`]). The native CLI and the browser package share it.

pub mod batch;
mod choices;
mod error;
pub mod many;
mod reply;
mod request;
pub mod response;
pub mod responses;
mod tools;

use std::cell::Cell;
use std::rc::Rc;

use serde_json::Value;

use crate::chat::{ChatContent, ContentPart};
use crate::engine::{Engine, EngineError, GenerateOptions, Prompt, Wait};
use crate::image::PreprocessOptions;

pub use choices::Choices;
pub use error::ApiError;
pub use reply::Reply;
pub use request::{
    chat_template_kwargs, request_json, ChatRequest, ToolChoice, ToolRequest, MAX_CHAT_TEMPLATE_KWARGS_BYTES, MAX_CHOICES,
};
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

/// A checked request made ready to generate: its prompt, its generation options, and the
/// [`Choices`] that turn what is generated into chunks and the `chat.completion` object.
pub struct Prepared {
    pub prompt: Prompt,
    pub opts: GenerateOptions,
    pub choices: Choices,
}

/// Readies a checked request: builds its prompt (image URLs that are not `data:` URLs go to
/// `load_url`), its generation options (`abort` ends it early) with the call grammar and
/// think-tag handling its tools and template ask for, and its reply.
pub fn prepare(
    engine: &mut Engine,
    req: &ChatRequest,
    load_url: &mut dyn FnMut(&str) -> Result<Vec<u8>, EngineError>,
    abort: Option<Rc<Cell<bool>>>,
) -> Result<Prepared, ApiError> {
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
    check_length(engine, prompt.tokens.len(), "")?;
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
    let meta = ResponseMeta::new(req.model.as_deref().or(engine.decoder().cfg.name.as_deref()).unwrap_or("webvlm"));
    let replies = (0..req.n).map(|i| Reply::new(engine, req, (&meta, i), reasoning, syntax, opts.logprobs.is_some()));
    let choices = Choices::new(meta.clone(), replies.collect(), req.stream, req.include_usage);
    Ok(Prepared { prompt, opts, choices })
}

/// Runs a checked request ([`prepare`], then the generation) and returns the
/// `chat.completion` object. With `stream`, each chunk goes to `on_chunk` as it is made
/// (which may return a future to await: backpressure). A request of `n` > 1 choices runs
/// them together on a parallel run of `n` sequences ([`many::run_many`]).
pub async fn run(
    engine: &mut Engine,
    req: &ChatRequest,
    load_url: &mut dyn FnMut(&str) -> Result<Vec<u8>, EngineError>,
    abort: Option<Rc<Cell<bool>>>,
    mut on_chunk: impl FnMut(Value) -> Option<Wait>,
) -> Result<Value, ApiError> {
    if req.n > 1 {
        let (request, mut end) = (many::ManyRequest { request: Ok(req.clone()), abort }, None);
        many::run_many(engine, std::iter::once(request), load_url, req.n, |_, event| match event {
            many::ManyEvent::Chunk(chunk) => on_chunk(chunk),
            many::ManyEvent::Done(result) => {
                end = Some(result);
                None
            }
        })
        .await;
        return end.expect("run_many ends every request");
    }
    let Prepared { prompt, opts, mut choices } = prepare(engine, req, load_url, abort)?;
    for chunk in choices.start() {
        if let Some(wait) = on_chunk(chunk) {
            wait.await;
        }
    }
    let g = engine.generate_prompt(&prompt, &opts, |step| choices.step(0, step).and_then(&mut on_chunk)).await?;
    let (chunks, completion) = choices.finish(0, &g);
    for chunk in chunks {
        if let Some(wait) = on_chunk(chunk) {
            wait.await;
        }
    }
    Ok(completion.expect("the only choice ended"))
}
