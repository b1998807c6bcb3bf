//! The Batch API: `POST /v1/batches` (an uploaded `.jsonl` file of
//! `{custom_id, method, url, body}` lines for `/v1/chat/completions`), `GET /v1/batches`,
//! `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`. A batch is checked line by line
//! (`validating`; a bad line fails the batch with `errors`), then its requests go through
//! the engine queue, each behind the requests already waiting, as many at a time as the
//! engine runs at once (`--parallel`) (`in_progress`), and the results are written as files (`finalizing`, then `completed`):
//! the output file holds the lines that succeeded (`response: {status_code: 200, body}`),
//! the error file those that failed (`response: {status_code: 4xx/5xx, body: {error}}`),
//! and, after a cancel, those never run or cut short (`error: {code: "batch_cancelled"}`).
//! `request_counts.completed` counts the output file's lines and `failed` the error file's
//! (cancelled lines included), so a finished batch's counts add up to `total`.
//!
//! A cancel and the running lines share the store's lock: a line's cancel flag is set under
//! it, and a line that starts after a cancel is skipped. The result files expire after the
//! batch's `output_expires_after`, if given.
//!
//! The store keeps at most `--max-batches` batches: a new one evicts the oldest finished
//! (`completed`, `failed`, `cancelled`) batch object (its files stay), and is refused (400,
//! `code: "batch_limit_exceeded"`) when every kept batch is still running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::batch_input::parse_input;
use super::checks::check_request;
use super::errors::HttpError;
use super::files::check_expiry;
use super::worker::{Event, Job};
use super::App;

/// The only endpoint batches run.
pub const ENDPOINT: &str = "/v1/chat/completions";
const COMPLETION_WINDOW: &str = "24h";
const WINDOW_SECONDS: u64 = 24 * 60 * 60;
/// The statuses of a batch that has ended: only such batches are evicted.
const FINISHED: [&str; 4] = ["completed", "failed", "cancelled", "expired"];

/// OpenAI's `batch` object.
#[derive(Clone, Debug, Serialize)]
pub struct BatchObject {
    pub id: String,
    pub object: &'static str,
    pub endpoint: String,
    pub model: String,
    pub errors: Option<Value>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: &'static str,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub request_counts: RequestCounts,
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RequestCounts {
    pub total: usize,
    pub completed: usize,
    pub failed: usize,
}

/// A batch and how to stop it.
struct BatchEntry {
    object: BatchObject,
    /// Set by cancel: no further line starts.
    cancel: Arc<AtomicBool>,
    /// The running lines' cancel flags (their generations are aborted on cancel).
    running_lines: Vec<Arc<AtomicBool>>,
    /// Seconds the result files live (`output_expires_after`).
    output_expires_after: Option<u64>,
}

/// The batches by id, at most `max_batches` of them.
pub struct BatchStore {
    batches: Mutex<HashMap<String, BatchEntry>>,
    max_batches: usize,
}

impl BatchStore {
    pub fn new(max_batches: usize) -> BatchStore {
        BatchStore { batches: Mutex::new(HashMap::new()), max_batches }
    }

    fn batches(&self) -> MutexGuard<'_, HashMap<String, BatchEntry>> {
        self.batches.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps a new batch, evicting the oldest finished ones past the limit; refuses it when
    /// the batches kept are all running.
    fn insert(&self, entry: BatchEntry) -> Result<(), HttpError> {
        let mut batches = self.batches();
        while batches.len() >= self.max_batches {
            let finished = batches.values().map(|e| &e.object).filter(|b| FINISHED.contains(&b.status));
            let Some(oldest) = finished.min_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id))).map(|b| b.id.clone())
            else {
                let message = format!(
                    "this server keeps at most {} batches (--max-batches) and none of them has finished; retry when one has",
                    self.max_batches
                );
                return Err(HttpError::invalid("input_file_id", "batch_limit_exceeded", message));
            };
            batches.remove(&oldest);
        }
        batches.insert(entry.object.id.clone(), entry);
        Ok(())
    }

    /// Changes a batch's object (a running batch is never evicted, so `id` is there while it
    /// runs).
    fn update(&self, id: &str, change: impl FnOnce(&mut BatchEntry)) {
        if let Some(entry) = self.batches().get_mut(id) {
            change(entry);
        }
    }

    fn get(&self, id: &str) -> Result<BatchObject, HttpError> {
        self.batches().get(id).map(|e| e.object.clone()).ok_or_else(|| no_such_batch(id))
    }
}

fn no_such_batch(id: &str) -> HttpError {
    HttpError::not_found(Some("batch_id"), None, format!("No such Batch object: {id}"))
}

/// The body of `POST /v1/batches`.
struct CreateBatch {
    input_file_id: String,
    metadata: Option<Map<String, Value>>,
    output_expires_after: Option<u64>,
}

fn parse_create(body: Value) -> Result<CreateBatch, HttpError> {
    let Value::Object(mut fields) = body else {
        return Err(HttpError::invalid("body", "invalid_type", "the request must be a JSON object"));
    };
    let mut string = |name: &str| match fields.remove(name) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(HttpError::invalid(name, "missing_required_parameter", format!("{name} is required"))),
        Some(_) => Err(HttpError::invalid(name, "invalid_type", format!("{name} must be a string"))),
    };
    let input_file_id = string("input_file_id")?;
    let endpoint = string("endpoint")?;
    let window = string("completion_window")?;
    if endpoint != ENDPOINT {
        let message = format!("endpoint {endpoint:?} is not supported: this server runs batches of {ENDPOINT}");
        return Err(HttpError::invalid("endpoint", "unsupported_value", message));
    }
    if window != COMPLETION_WINDOW {
        return Err(HttpError::invalid("completion_window", "unsupported_value", "completion_window must be \"24h\""));
    }
    let metadata = match fields.remove("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) if m.len() <= 16 && m.values().all(Value::is_string) => Some(m),
        Some(_) => {
            return Err(HttpError::invalid("metadata", "invalid_value", "metadata must be an object of at most 16 string values"))
        }
    };
    let output_expires_after = match fields.remove("output_expires_after") {
        None | Some(Value::Null) => None,
        Some(expiry) => Some(output_expiry(&expiry)?),
    };
    if let Some(name) = fields.keys().next() {
        return Err(HttpError::invalid(
            name.clone(),
            "unknown_parameter",
            format!("unrecognized request argument supplied: {name}"),
        ));
    }
    Ok(CreateBatch { input_file_id, metadata, output_expires_after })
}

/// `output_expires_after`, as OpenAI takes it: `{anchor: "created_at", seconds}` with one hour
/// to 30 days; the seconds the result files live.
fn output_expiry(expiry: &Value) -> Result<u64, HttpError> {
    let known = expiry.as_object().is_some_and(|fields| fields.keys().all(|k| k == "anchor" || k == "seconds"));
    let anchor = expiry.get("anchor").and_then(Value::as_str).filter(|_| known);
    check_expiry("output_expires_after", anchor, expiry.get("seconds").and_then(Value::as_u64))
}

pub async fn create(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Result<Json<BatchObject>, HttpError> {
    let request = parse_create(super::body_json(body, app.limits.max_body_bytes)?)?;
    let (file, content) = app.files.get(&request.input_file_id).map_err(|_| {
        let message = format!("No such File object: {}", request.input_file_id);
        HttpError::not_found(Some("input_file_id"), None, message)
    })?;
    if file.purpose != "batch" {
        return Err(HttpError::invalid("input_file_id", "invalid_value", "the input file's purpose must be \"batch\""));
    }
    app.files.check_room()?;
    let created_at = super::unix_seconds();
    let object = BatchObject {
        id: super::new_id("batch_"),
        object: "batch",
        endpoint: ENDPOINT.into(),
        model: app.model.id.clone(),
        errors: None,
        input_file_id: request.input_file_id,
        completion_window: COMPLETION_WINDOW.into(),
        status: "validating",
        output_file_id: None,
        error_file_id: None,
        created_at,
        in_progress_at: None,
        expires_at: Some(created_at + WINDOW_SECONDS),
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        request_counts: RequestCounts::default(),
        metadata: request.metadata,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let output_expires_after = request.output_expires_after;
    let entry = BatchEntry { object: object.clone(), cancel: cancel.clone(), running_lines: Vec::new(), output_expires_after };
    app.batches.insert(entry)?;
    tokio::spawn(run_batch(app.clone(), object.id.clone(), content, cancel));
    Ok(Json(object))
}

pub async fn list(State(app): State<Arc<App>>) -> Json<Value> {
    let mut batches: Vec<BatchObject> = app.batches.batches().values().map(|e| e.object.clone()).collect();
    batches.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    let first_id = batches.first().map(|b| b.id.clone());
    let last_id = batches.last().map(|b| b.id.clone());
    Json(json!({ "object": "list", "data": batches, "first_id": first_id, "last_id": last_id, "has_more": false }))
}

pub async fn retrieve(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<BatchObject>, HttpError> {
    Ok(Json(app.batches.get(&id)?))
}

/// Stops a batch: no further line starts and the running ones are aborted; the batch is
/// `cancelling` until its partial results are written, then `cancelled`.
pub async fn cancel(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<BatchObject>, HttpError> {
    let mut batches = app.batches.batches();
    let entry = batches.get_mut(&id).ok_or_else(|| no_such_batch(&id))?;
    if !matches!(entry.object.status, "validating" | "in_progress") {
        let message = format!("a batch that is {} cannot be cancelled", entry.object.status);
        return Err(HttpError::invalid("batch_id", "invalid_state", message));
    }
    entry.cancel.store(true, Ordering::SeqCst);
    for line in &entry.running_lines {
        line.store(true, Ordering::SeqCst);
    }
    entry.object.status = "cancelling";
    entry.object.cancelling_at = Some(super::unix_seconds());
    Ok(Json(entry.object.clone()))
}

/// Validates the input, runs each line through the engine queue, writes the result files.
async fn run_batch(app: Arc<App>, id: String, content: Bytes, cancel: Arc<AtomicBool>) {
    let lines = match parse_input(&content, ENDPOINT) {
        Ok(lines) => lines,
        Err(errors) => {
            app.batches.update(&id, |e| {
                let now = Some(super::unix_seconds());
                if cancel.load(Ordering::SeqCst) {
                    e.object.status = "cancelled";
                    e.object.cancelled_at = now;
                } else {
                    e.object.status = "failed";
                    e.object.failed_at = now;
                    e.object.errors = Some(json!({ "object": "list", "data": errors }));
                }
            });
            return;
        }
    };
    app.batches.update(&id, |e| {
        // A cancel during validation leaves the status at `cancelling`.
        if e.object.status == "validating" {
            e.object.status = "in_progress";
        }
        e.object.in_progress_at = Some(super::unix_seconds());
        e.object.request_counts.total = lines.len();
    });
    // Up to `--parallel` lines at a time, each started as one ends; results kept in order.
    let mut results: Vec<Option<LineResult>> = lines.iter().map(|_| None).collect();
    let mut running = tokio::task::JoinSet::new();
    let mut next = 0;
    while next < lines.len() || !running.is_empty() {
        while next < lines.len() && running.len() < app.engine.parallel {
            let (app, id, body, i) = (app.clone(), id.clone(), lines[next].body.clone(), next);
            let cancelled = cancel.load(Ordering::SeqCst);
            running.spawn(async move {
                let result = if cancelled { LineResult::Cancelled } else { run_line(&app, &id, body).await };
                (i, result)
            });
            next += 1;
        }
        let Some(Ok((i, result))) = running.join_next().await else { continue };
        let completed = matches!(result, LineResult::Completed(_));
        app.batches.update(&id, |e| {
            let counts = &mut e.object.request_counts;
            *if completed { &mut counts.completed } else { &mut counts.failed } += 1;
        });
        results[i] = Some(result);
    }
    let (mut outputs, mut errors) = (String::new(), String::new());
    for (line, result) in lines.iter().zip(results) {
        match result.unwrap_or(LineResult::Failed(HttpError::internal("the line's task stopped"))) {
            LineResult::Completed(completion) => {
                let response = json!({ "status_code": 200, "request_id": super::new_id(""), "body": completion });
                push_line(&mut outputs, &line.custom_id, response, Value::Null);
            }
            LineResult::Failed(e) => {
                let response =
                    json!({ "status_code": e.status.as_u16(), "request_id": super::new_id(""), "body": e.error.to_json() });
                push_line(&mut errors, &line.custom_id, response, Value::Null);
            }
            LineResult::Cancelled => {
                let error =
                    json!({ "code": "batch_cancelled", "message": "the batch was cancelled before this request completed" });
                push_line(&mut errors, &line.custom_id, Value::Null, error);
            }
        }
    }
    let mut expires_after = None;
    app.batches.update(&id, |e| {
        if e.object.status == "in_progress" {
            e.object.status = "finalizing";
        }
        e.object.finalizing_at = Some(super::unix_seconds());
        expires_after = e.output_expires_after;
    });
    let store = |text: String, kind: &str| {
        (!text.is_empty()).then(|| app.files.insert(format!("{id}_{kind}.jsonl"), "batch_output", text.into(), expires_after).id)
    };
    let (output_file_id, error_file_id) = (store(outputs, "output"), store(errors, "error"));
    app.batches.update(&id, |e| {
        let now = Some(super::unix_seconds());
        e.object.output_file_id = output_file_id;
        e.object.error_file_id = error_file_id;
        if cancel.load(Ordering::SeqCst) {
            e.object.status = "cancelled";
            e.object.cancelled_at = now;
        } else {
            e.object.status = "completed";
            e.object.completed_at = now;
        }
    });
}

/// How one line ended.
enum LineResult {
    /// Its `chat.completion`: a line of the output file.
    Completed(Value),
    /// The error a request of its own would have had.
    Failed(HttpError),
    /// Skipped or cut short by the batch's cancel.
    Cancelled,
}

/// One line's request through the engine queue.
async fn run_line(app: &App, batch_id: &str, body: Value) -> LineResult {
    let checked = match check_request(&app.model, app.limits.max_image_bytes, body) {
        Ok(checked) => checked,
        Err(e) => return LineResult::Failed(e),
    };
    if checked.stream {
        return LineResult::Failed(HttpError::invalid("stream", "unsupported_value", "batch requests cannot stream"));
    }
    let line_cancel = Arc::new(AtomicBool::new(false));
    app.batches.update(batch_id, |e| {
        // Under the lock `cancel` takes: a cancel since the caller looked skips the line.
        if e.cancel.load(Ordering::SeqCst) {
            line_cancel.store(true, Ordering::SeqCst);
        }
        e.running_lines.push(line_cancel.clone());
    });
    let result = run_checked(app, checked.body, &line_cancel).await;
    app.batches.update(batch_id, |e| e.running_lines.retain(|l| !Arc::ptr_eq(l, &line_cancel)));
    result
}

/// A checked line's request through the engine queue, `line_cancel` its cancel flag.
async fn run_checked(app: &App, body: Value, line_cancel: &Arc<AtomicBool>) -> LineResult {
    let (job, mut events) = Job::new(body, line_cancel.clone(), None);
    if let Err(e) = app.engine.submit(job) {
        return LineResult::Failed(e);
    }
    let cancelled = || line_cancel.load(Ordering::SeqCst);
    loop {
        match events.recv().await {
            Some(Event::Chunk(_)) => continue,
            Some(Event::Done(completion))
                if cancelled() && completion.pointer("/choices/0/finish_reason") == Some(&json!("abort")) =>
            {
                return LineResult::Cancelled
            }
            Some(Event::Done(completion)) => return LineResult::Completed(completion),
            Some(Event::Failed(error)) => return LineResult::Failed(error.into()),
            // The engine skips a job cancelled before it started, sending nothing.
            None if cancelled() => return LineResult::Cancelled,
            None => return LineResult::Failed(HttpError::internal("the engine thread stopped")),
        }
    }
}

/// Appends one result line `{id, custom_id, response, error}`.
fn push_line(out: &mut String, custom_id: &str, response: Value, error: Value) {
    let line = json!({ "id": super::new_id("batch_req_"), "custom_id": custom_id, "response": response, "error": error });
    out.push_str(&line.to_string());
    out.push('\n');
}
