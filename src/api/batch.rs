//! Batches in the shape of OpenAI's Batch API: JSONL input lines `{"custom_id", "body"}`
//! (`method` and `url` accepted and ignored), run one after another or up to N at a time in
//! batched steps (`many.rs`); each gives an output line `{"id", "custom_id",
//! "response": {"status_code", "body"} | null, "error": {...} | null}`, in input order. A
//! request that fails is reported on its line and the batch goes on.

use serde_json::{json, Value};

use super::many::{run_many, ManyEvent, ManyRequest};
use super::{run, ApiError, ChatRequest};
use crate::engine::{Engine, EngineError};

/// One input line: its `custom_id` and the request body, or why the line is unusable.
pub struct BatchLine {
    pub custom_id: Option<String>,
    pub body: Result<Value, ApiError>,
}

/// Splits JSONL into lines (blank lines skipped); a malformed line is an error on that line.
pub fn parse_lines(jsonl: &str) -> Vec<BatchLine> {
    jsonl
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let bad = |m: &str| ApiError::invalid("body", "invalid_value", m);
            let Ok(Value::Object(mut o)) = serde_json::from_str::<Value>(line) else {
                return BatchLine { custom_id: None, body: Err(bad("the line is not a JSON object")) };
            };
            let custom_id = o.get("custom_id").and_then(Value::as_str).map(String::from);
            let body = match (o.remove("body"), &custom_id) {
                (_, None) => Err(ApiError::invalid("custom_id", "invalid_value", "each line needs a string custom_id")),
                (Some(body @ Value::Object(_)), _) => Ok(body),
                _ => Err(bad("each line needs a request object in body")),
            };
            BatchLine { custom_id, body }
        })
        .collect()
}

/// The output line of one request.
pub fn output_line(index: usize, custom_id: Option<&str>, result: Result<Value, ApiError>) -> Value {
    let (response, error) = match result {
        Ok(body) => (json!({ "status_code": 200, "body": body }), Value::Null),
        Err(e) => (Value::Null, json!({ "code": e.code, "message": e.message, "param": e.param })),
    };
    json!({ "id": format!("batch_req_{index}"), "custom_id": custom_id, "response": response, "error": error })
}

/// Runs every line (non-streaming), up to `parallel` at a time, and returns the output
/// lines in input order; `on_done(index, total, line)` reports each as it ends.
pub async fn run_batch(
    engine: &mut Engine,
    jsonl: &str,
    load_url: &mut dyn FnMut(&str) -> Result<Vec<u8>, EngineError>,
    parallel: u32,
    on_done: impl FnMut(usize, usize, &Value),
) -> Vec<Value> {
    let lines = parse_lines(jsonl);
    let vocab = engine.decoder().cfg.vocab as usize;
    let requests: Vec<_> = (lines.iter())
        .map(|line| match line.body.clone().and_then(|b| ChatRequest::from_value(b, vocab)) {
            Ok(req) if req.stream => Err(ApiError::invalid("stream", "unsupported_value", "batch requests cannot stream")),
            other => other,
        })
        .collect();
    let mut out = Outputs { lines: &lines, done: lines.iter().map(|_| None).collect(), on_done };
    if parallel <= 1 {
        for (i, req) in requests.into_iter().enumerate() {
            let result = match req {
                Ok(req) => run(engine, &req, load_url, None, |_| None).await,
                Err(e) => Err(e),
            };
            out.set(i, result);
        }
    } else {
        let requests = requests.into_iter().map(|request| ManyRequest { request, abort: None });
        run_many(engine, requests, load_url, parallel, |i, event| {
            if let ManyEvent::Done(result) = event {
                out.set(i, result);
            }
            None
        })
        .await;
    }
    out.done.into_iter().map(|l| l.expect("every line ends")).collect()
}

/// The output lines as they end.
struct Outputs<'l, F> {
    lines: &'l [BatchLine],
    done: Vec<Option<Value>>,
    on_done: F,
}

impl<F: FnMut(usize, usize, &Value)> Outputs<'_, F> {
    fn set(&mut self, i: usize, result: Result<Value, ApiError>) {
        let line = output_line(i, self.lines[i].custom_id.as_deref(), result);
        (self.on_done)(i, self.lines.len(), &line);
        self.done[i] = Some(line);
    }
}
