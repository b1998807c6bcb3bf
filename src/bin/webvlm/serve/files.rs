//! The Files API, as much of it as batches need: `POST /v1/files` (multipart/form-data with
//! `purpose=batch` and a `.jsonl` file), `GET /v1/files`, `GET /v1/files/{id}`,
//! `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`. Files live in memory for the
//! server's lifetime; batch outputs are stored here too (`purpose: "batch_output"`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::errors::HttpError;
use super::App;

/// OpenAI's `file` object.
#[derive(Clone, Debug, Serialize)]
pub struct FileObject {
    pub id: String,
    pub object: &'static str,
    pub bytes: usize,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub filename: String,
    pub purpose: String,
    /// Deprecated by OpenAI, still sent: `processed` once stored.
    pub status: &'static str,
    pub status_details: Option<String>,
}

/// The stored files by id.
#[derive(Default)]
pub struct FileStore(Mutex<HashMap<String, (FileObject, Bytes)>>);

impl FileStore {
    fn files(&self) -> MutexGuard<'_, HashMap<String, (FileObject, Bytes)>> {
        // A panic while holding the lock cannot leave the map half-written: keep serving.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores `content` under a new id.
    pub fn insert(&self, filename: String, purpose: &str, content: Bytes) -> FileObject {
        let object = FileObject {
            id: super::new_id("file-"),
            object: "file",
            bytes: content.len(),
            created_at: super::unix_seconds(),
            expires_at: None,
            filename,
            purpose: purpose.into(),
            status: "processed",
            status_details: None,
        };
        self.files().insert(object.id.clone(), (object.clone(), content));
        object
    }

    /// A file and its content.
    pub fn get(&self, id: &str) -> Result<(FileObject, Bytes), HttpError> {
        self.files().get(id).cloned().ok_or_else(|| no_such_file(id))
    }
}

/// 404 for an unknown file id.
pub fn no_such_file(id: &str) -> HttpError {
    HttpError::not_found(Some("file_id"), None, format!("No such File object: {id}"))
}

pub async fn upload(
    State(app): State<Arc<App>>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Json<FileObject>, HttpError> {
    let mut form = form.map_err(|e| HttpError::invalid("file", "invalid_value", e.body_text()))?;
    let limit = app.limits.max_body_bytes;
    let mut purpose = None;
    let mut file = None;
    while let Some(field) = form.next_field().await.map_err(|e| multipart_error(e, limit))? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "purpose" => purpose = Some(field.text().await.map_err(|e| multipart_error(e, limit))?),
            "file" => {
                let filename = field.file_name().unwrap_or("upload.jsonl").to_string();
                file = Some((filename, field.bytes().await.map_err(|e| multipart_error(e, limit))?));
            }
            // The SDKs' optional expiry fields: files here live as long as the server.
            _ if name.starts_with("expires_after") => {}
            _ => return Err(HttpError::invalid(name.clone(), "unknown_parameter", format!("unknown field {name}"))),
        }
    }
    let purpose = purpose.ok_or_else(|| HttpError::invalid("purpose", "missing_required_parameter", "purpose is required"))?;
    if purpose != "batch" {
        let message = format!("purpose {purpose:?} is not supported: this server stores files for batches only (purpose=batch)");
        return Err(HttpError::invalid("purpose", "unsupported_value", message));
    }
    let (filename, content) = file.ok_or_else(|| HttpError::invalid("file", "missing_required_parameter", "file is required"))?;
    if !filename.ends_with(".jsonl") {
        return Err(HttpError::invalid("file", "invalid_file_format", "batch input files must be .jsonl files"));
    }
    if std::str::from_utf8(&content).is_err() {
        return Err(HttpError::invalid("file", "invalid_file_format", "the file is not UTF-8 text"));
    }
    Ok(Json(app.files.insert(filename, &purpose, content)))
}

/// A multipart read failure: 413 past the body limit, else 400.
fn multipart_error(e: MultipartError, limit: usize) -> HttpError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        HttpError::too_large(limit)
    } else {
        HttpError::invalid("file", "invalid_value", format!("the multipart body cannot be read: {}", e.body_text()))
    }
}

pub async fn list(State(app): State<Arc<App>>) -> Json<Value> {
    let mut files: Vec<FileObject> = app.files.files().values().map(|(object, _)| object.clone()).collect();
    files.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    Json(json!({ "object": "list", "data": files, "has_more": false }))
}

pub async fn retrieve(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<FileObject>, HttpError> {
    Ok(Json(app.files.get(&id)?.0))
}

pub async fn content(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response, HttpError> {
    let (_, content) = app.files.get(&id)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], content).into_response())
}

pub async fn delete(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<Value>, HttpError> {
    app.files.files().remove(&id).ok_or_else(|| no_such_file(&id))?;
    Ok(Json(json!({ "id": id, "object": "file", "deleted": true })))
}
