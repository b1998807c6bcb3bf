//! The Batch API: `POST /v1/batches` (an uploaded `.jsonl` file of
//! `{custom_id, method, url, body}` lines for `/v1/chat/completions`), `GET /v1/batches`,
//! `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`. A batch is checked line by line
//! (`validating`; a bad line fails the batch with `errors`), then its requests go through
//! the engine queue one at a time, each behind the requests already waiting
//! (`in_progress`), and the results are written as files (`finalizing`, then `completed`):
//! the output file holds the lines that succeeded (`response: {status_code: 200, body}`),
//! the error file those that failed (`response: {status_code: 4xx/5xx, body: {error}}`),
//! and, after a cancel, those never run (`error: {code: "batch_cancelled"}`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::batch_input::{parse_input, InputLine};
use super::checks::check_request;
use super::errors::{status_of, HttpError};
use super::worker::{Event, Job};
use super::App;

/// The only endpoint batches run.
pub const ENDPOINT: &str = "/v1/chat/completions";
const COMPLETION_WINDOW: &str = "24h";
const WINDOW_SECONDS: u64 = 24 * 60 * 60;

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
    /// The running line's cancel flag (its generation is aborted on cancel).
    running_line: Option<Arc<AtomicBool>>,
}

/// The batches by id.
#[derive(Default)]
pub struct BatchStore(Mutex<HashMap<String, BatchEntry>>);

impl BatchStore {
    fn batches(&self) -> MutexGuard<'_, HashMap<String, BatchEntry>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes a batch's object (a batch is never removed, so `id` is always there).
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
    match fields.remove("output_expires_after") {
        None | Some(Value::Null) => {}
        Some(expiry) => check_output_expiry(&expiry)?,
    }
    if let Some(name) = fields.keys().next() {
        return Err(HttpError::invalid(
            name.clone(),
            "unknown_parameter",
            format!("unrecognized request argument supplied: {name}"),
        ));
    }
    Ok(CreateBatch { input_file_id, metadata })
}

/// `output_expires_after`, as OpenAI takes it: `{anchor: "created_at", seconds}` with one hour
/// to 30 days. It is checked and not applied: files here live as long as the server (as the
/// upload's `expires_after`).
fn check_output_expiry(expiry: &Value) -> Result<(), HttpError> {
    let anchor = expiry.get("anchor").and_then(Value::as_str);
    let seconds = expiry.get("seconds").and_then(Value::as_u64);
    let known = expiry.as_object().is_some_and(|fields| fields.keys().all(|k| k == "anchor" || k == "seconds"));
    if anchor == Some("created_at") && seconds.is_some_and(|s| (3600..=30 * 24 * 3600).contains(&s)) && known {
        return Ok(());
    }
    let message = "output_expires_after must be {\"anchor\": \"created_at\", \"seconds\": N} with N from 3600 to 2592000";
    Err(HttpError::invalid("output_expires_after", "invalid_value", message))
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
    let entry = BatchEntry { object: object.clone(), cancel: cancel.clone(), running_line: None };
    app.batches.batches().insert(object.id.clone(), entry);
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

/// Stops a batch: no further line starts and the running one is aborted; the batch is
/// `cancelling` until its partial results are written, then `cancelled`.
pub async fn cancel(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<BatchObject>, HttpError> {
    let mut batches = app.batches.batches();
    let entry = batches.get_mut(&id).ok_or_else(|| no_such_batch(&id))?;
    if !matches!(entry.object.status, "validating" | "in_progress") {
        let message = format!("a batch that is {} cannot be cancelled", entry.object.status);
        return Err(HttpError::invalid("batch_id", "invalid_state", message));
    }
    entry.cancel.store(true, Ordering::SeqCst);
    if let Some(line) = &entry.running_line {
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
                e.object.status = "failed";
                e.object.failed_at = Some(super::unix_seconds());
                e.object.errors = Some(json!({ "object": "list", "data": errors }));
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
    let (mut outputs, mut errors) = (String::new(), String::new());
    for line in &lines {
        if cancel.load(Ordering::SeqCst) {
            let error = json!({ "code": "batch_cancelled", "message": "the batch was cancelled before this request ran" });
            push_line(&mut errors, &line.custom_id, Value::Null, error);
            continue;
        }
        let result = run_line(&app, &id, line).await;
        let aborted = match &result {
            Ok(completion) => completion.pointer("/choices/0/finish_reason") == Some(&json!("abort")),
            Err(_) => true,
        };
        if aborted && cancel.load(Ordering::SeqCst) {
            let error = json!({ "code": "batch_cancelled", "message": "the batch was cancelled while this request ran" });
            push_line(&mut errors, &line.custom_id, Value::Null, error);
            continue;
        }
        let succeeded = result.is_ok();
        let response = match result {
            Ok(completion) => json!({ "status_code": 200, "request_id": super::new_id(""), "body": completion }),
            Err(e) => json!({ "status_code": e.status.as_u16(), "request_id": super::new_id(""), "body": e.error.to_json() }),
        };
        push_line(if succeeded { &mut outputs } else { &mut errors }, &line.custom_id, response, Value::Null);
        app.batches.update(&id, |e| {
            let counts = &mut e.object.request_counts;
            *if succeeded { &mut counts.completed } else { &mut counts.failed } += 1;
        });
    }
    app.batches.update(&id, |e| {
        if e.object.status == "in_progress" {
            e.object.status = "finalizing";
        }
        e.object.finalizing_at = Some(super::unix_seconds());
    });
    let store = |text: String, kind: &str| {
        (!text.is_empty()).then(|| app.files.insert(format!("{id}_{kind}.jsonl"), "batch_output", text.into()).id)
    };
    let (output_file_id, error_file_id) = (store(outputs, "output"), store(errors, "error"));
    app.batches.update(&id, |e| {
        let now = Some(super::unix_seconds());
        e.object.output_file_id = output_file_id;
        e.object.error_file_id = error_file_id;
        e.running_line = None;
        if cancel.load(Ordering::SeqCst) {
            e.object.status = "cancelled";
            e.object.cancelled_at = now;
        } else {
            e.object.status = "completed";
            e.object.completed_at = now;
        }
    });
}

/// One line's request through the engine queue: its `chat.completion`, or the error a
/// request of its own would have had.
async fn run_line(app: &App, batch_id: &str, line: &InputLine) -> Result<Value, HttpError> {
    let checked = check_request(&app.model, app.limits.max_image_bytes, line.body.clone())?;
    if checked.stream {
        return Err(HttpError::invalid("stream", "unsupported_value", "batch requests cannot stream"));
    }
    let line_cancel = Arc::new(AtomicBool::new(false));
    app.batches.update(batch_id, |e| e.running_line = Some(line_cancel.clone()));
    let (job, mut events) = Job::new(checked.body, line_cancel, None);
    app.engine.submit(job)?;
    loop {
        match events.recv().await {
            Some(Event::Chunk(_)) => continue,
            Some(Event::Done(completion)) => return Ok(completion),
            Some(Event::Failed(error)) => return Err(HttpError { status: status_of(&error), error, retry_after: None }),
            None => return Err(HttpError::internal("the engine thread stopped")),
        }
    }
}

/// Appends one result line `{id, custom_id, response, error}`.
fn push_line(out: &mut String, custom_id: &str, response: Value, error: Value) {
    let line = json!({ "id": super::new_id("batch_req_"), "custom_id": custom_id, "response": response, "error": error });
    out.push_str(&line.to_string());
    out.push('\n');
}
