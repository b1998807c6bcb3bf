//! Response objects in OpenAI's shape: `chat.completion` and `chat.completion.chunk`, the
//! `usage` block (plus webvlm's `timings`), and per-token `logprobs.content` entries.

use serde_json::{json, Value};

use crate::engine::Generation;
use crate::sampling::TokenLogprob;
use crate::tokenizer::Tokenizer;

/// What every object of one response shares.
#[derive(Clone, Debug)]
pub struct ResponseMeta {
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
}

impl ResponseMeta {
    /// A fresh `chatcmpl-…` id at the current time.
    pub fn new(model: &str) -> ResponseMeta {
        let (created, nanos) = now();
        ResponseMeta { id: format!("chatcmpl-{created:x}{nanos:08x}"), created, model: model.into() }
    }
}

/// Unix seconds and a sub-second counter for ids.
fn now() -> (u64, u32) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (d.as_secs(), d.subsec_nanos())
    }
    #[cfg(target_arch = "wasm32")]
    {
        let ms = js_sys::Date::now();
        ((ms / 1000.0) as u64, ((ms % 1000.0) * 1e6) as u32 ^ (js_sys::Math::random() * 4e9) as u32)
    }
}

/// The non-streaming response.
pub fn completion(meta: &ResponseMeta, g: &Generation, tokenizer: &Tokenizer, logprobs: bool) -> Value {
    json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": g.text },
            "logprobs": logprobs.then(|| json!({ "content": logprob_content(tokenizer, &g.logprobs) })),
            "finish_reason": g.finish.as_str(),
        }],
        "usage": usage(g),
    })
}

/// One streamed chunk: `delta` (`{"role"}` first, then `{"content"}`), the step's logprob
/// entries, and the finish reason on the last.
pub fn chunk(meta: &ResponseMeta, delta: Value, logprobs: Option<Value>, finish: Option<&str>) -> Value {
    json!({
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }],
    })
}

/// The last chunk of a stream with `stream_options.include_usage`: no choices, the usage.
pub fn usage_chunk(meta: &ResponseMeta, usage: Value) -> Value {
    json!({
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": [],
        "usage": usage,
    })
}

/// Token counts, with how many prompt tokens came from the prompt cache, and timings.
pub fn usage(g: &Generation) -> Value {
    let n = g.tokens.len();
    let prefilled = g.prompt_tokens - g.cached_tokens;
    json!({
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": n,
        "total_tokens": g.prompt_tokens + n,
        "prompt_tokens_details": { "cached_tokens": g.cached_tokens },
        "timings": {
            "time_to_first_token": g.time_to_first_token,
            "prefill_tokens_per_second": prefilled as f64 / g.time_to_first_token.max(1e-9),
            "decode_tokens_per_second": n.saturating_sub(1) as f64 / g.decode_seconds.max(1e-9),
            "mask_seconds": g.mask_seconds,
        },
    })
}

/// OpenAI's `logprobs.content`: per token its text, log-probability, UTF-8 bytes and the
/// most likely alternatives.
pub fn logprob_content(tokenizer: &Tokenizer, entries: &[TokenLogprob]) -> Value {
    let token = |id: u32, logprob: f32| {
        let bytes = tokenizer.token_bytes(id).unwrap_or_default();
        json!({ "token": String::from_utf8_lossy(&bytes), "logprob": logprob, "bytes": bytes })
    };
    entries
        .iter()
        .map(|e| {
            let mut v = token(e.token, e.logprob);
            v["top_logprobs"] = e.top.iter().map(|&(id, lp)| token(id, lp)).collect();
            v
        })
        .collect()
}
