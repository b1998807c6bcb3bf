//! The Files API, as much of it as batches need: `POST /v1/files` (multipart/form-data with
//! `purpose=batch` and a `.jsonl` file), `GET /v1/files`, `GET /v1/files/{id}`,
//! `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`. Files live in memory until deleted
//! or, with `expires_after[anchor]=created_at` and `expires_after[seconds]=N` on the upload
//! (batch outputs: the batch's `output_expires_after`), until they expire: an expired file is
//! gone from every route (404). Batch outputs are stored here too (`purpose: "batch_output"`).
//!
//! The store is bounded ([`FileLimits`]: `--max-files`, `--max-files-bytes`): an upload that
//! would pass a limit is refused (400, `code: "storage_limit_exceeded"`, naming the limit);
//! nothing is evicted but expired files. A batch's results are always stored when it ends, so
//! a batch is refused while the store is full (see [`FileStore::check_room`]).

use std::collections::HashMap;
use std::ops::RangeInclusive;
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

/// The seconds a file may be given to live (`expires_after[seconds]`, a batch's
/// `output_expires_after.seconds`): one hour to 30 days, as OpenAI takes them.
pub const EXPIRY_SECONDS: RangeInclusive<u64> = 3600..=30 * 24 * 3600;

/// How many files the store holds at most, and how many bytes in all.
#[derive(Clone, Copy, Debug)]
pub struct FileLimits {
    pub max_files: usize,
    pub max_bytes: usize,
}

type Files = HashMap<String, (FileObject, Bytes)>;

/// The stored files by id.
pub struct FileStore {
    files: Mutex<Files>,
    limits: FileLimits,
}

impl FileStore {
    pub fn new(limits: FileLimits) -> FileStore {
        FileStore { files: Mutex::new(HashMap::new()), limits }
    }

    /// The files that have not expired.
    fn files(&self) -> MutexGuard<'_, Files> {
        // A panic while holding the lock cannot leave the map half-written: keep serving.
        let mut files = self.files.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        drop_expired(&mut files, super::unix_seconds());
        files
    }

    /// A new file object for `content`, living `expires_after` seconds if given.
    fn object(filename: String, purpose: &str, content: &Bytes, expires_after: Option<u64>) -> FileObject {
        let created_at = super::unix_seconds();
        FileObject {
            id: super::new_id("file-"),
            object: "file",
            bytes: content.len(),
            created_at,
            expires_at: expires_after.map(|seconds| created_at.saturating_add(seconds)),
            filename,
            purpose: purpose.into(),
            status: "processed",
            status_details: None,
        }
    }

    /// Stores `content` under a new id whatever the limits (a batch's results).
    pub fn insert(&self, filename: String, purpose: &str, content: Bytes, expires_after: Option<u64>) -> FileObject {
        let object = Self::object(filename, purpose, &content, expires_after);
        self.files().insert(object.id.clone(), (object.clone(), content));
        object
    }

    /// Stores an upload under a new id, or refuses it when it would pass a limit.
    fn upload(
        &self,
        filename: String,
        purpose: &str,
        content: Bytes,
        expires_after: Option<u64>,
    ) -> Result<FileObject, HttpError> {
        let mut files = self.files();
        let FileLimits { max_files, max_bytes } = self.limits;
        if files.len() >= max_files {
            return Err(storage_full(format!("this server holds at most {max_files} files (--max-files); delete some first")));
        }
        let stored: usize = files.values().map(|(object, _)| object.bytes).sum();
        if stored.saturating_add(content.len()) > max_bytes {
            let message = format!(
                "this server holds at most {max_bytes} bytes of files (--max-files-bytes): {stored} are stored and the file has {}; delete some first",
                content.len()
            );
            return Err(storage_full(message));
        }
        let object = Self::object(filename, purpose, &content, expires_after);
        files.insert(object.id.clone(), (object.clone(), content));
        Ok(object)
    }

    /// Refuses when the store is full (at either limit): a batch is refused then, since its
    /// results are stored here whatever the limits.
    pub fn check_room(&self) -> Result<(), HttpError> {
        let files = self.files();
        let FileLimits { max_files, max_bytes } = self.limits;
        let stored: usize = files.values().map(|(object, _)| object.bytes).sum();
        if files.len() >= max_files || stored >= max_bytes {
            let message = format!(
                "the file store is full ({} of {max_files} files, --max-files; {stored} of {max_bytes} bytes, --max-files-bytes): delete files before creating a batch, which stores its results as files",
                files.len()
            );
            return Err(storage_full(message));
        }
        Ok(())
    }

    /// A file and its content.
    pub fn get(&self, id: &str) -> Result<(FileObject, Bytes), HttpError> {
        self.files().get(id).cloned().ok_or_else(|| no_such_file(id))
    }
}

/// Removes the files whose `expires_at` is `now` or earlier.
fn drop_expired(files: &mut Files, now: u64) {
    files.retain(|_, (object, _)| object.expires_at.is_none_or(|at| at > now));
}

/// 400 for an upload (or a batch) the store has no room for.
fn storage_full(message: String) -> HttpError {
    HttpError::invalid("file", "storage_limit_exceeded", message)
}

/// `expires_after` (`anchor`, `seconds`) as OpenAI takes it: the anchor `created_at`, the
/// seconds within [`EXPIRY_SECONDS`]; the seconds, or an error naming `param`.
pub fn check_expiry(param: &str, anchor: Option<&str>, seconds: Option<u64>) -> Result<u64, HttpError> {
    match (anchor, seconds) {
        (Some("created_at"), Some(seconds)) if EXPIRY_SECONDS.contains(&seconds) => Ok(seconds),
        _ => {
            let (low, high) = (EXPIRY_SECONDS.start(), EXPIRY_SECONDS.end());
            let message = format!("{param} must be {{\"anchor\": \"created_at\", \"seconds\": N}} with N from {low} to {high}");
            Err(HttpError::invalid(param, "invalid_value", message))
        }
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
    let (mut anchor, mut seconds) = (None, None);
    while let Some(field) = form.next_field().await.map_err(|e| multipart_error(e, limit))? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "purpose" => purpose = Some(field.text().await.map_err(|e| multipart_error(e, limit))?),
            "file" => {
                let filename = field.file_name().unwrap_or("upload.jsonl").to_string();
                file = Some((filename, field.bytes().await.map_err(|e| multipart_error(e, limit))?));
            }
            "expires_after[anchor]" => anchor = Some(field.text().await.map_err(|e| multipart_error(e, limit))?),
            "expires_after[seconds]" => seconds = Some(field.text().await.map_err(|e| multipart_error(e, limit))?),
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
    let expires_after = match (anchor, seconds) {
        (None, None) => None,
        (anchor, seconds) => {
            let seconds = seconds.and_then(|s| s.trim().parse::<u64>().ok());
            Some(check_expiry("expires_after", anchor.as_deref().map(str::trim), seconds)?)
        }
    };
    Ok(Json(app.files.upload(filename, &purpose, content, expires_after)?))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(expires_at: Option<u64>) -> (FileObject, Bytes) {
        let mut object = FileStore::object("a.jsonl".into(), "batch", &Bytes::from_static(b"{}"), None);
        object.expires_at = expires_at;
        (object, Bytes::from_static(b"{}"))
    }

    #[test]
    fn expired_files_are_dropped_at_their_expiry() {
        let mut files: Files = [("never", None), ("later", Some(200)), ("now", Some(100)), ("past", Some(50))]
            .into_iter()
            .map(|(id, at)| (id.to_string(), stored(at)))
            .collect();
        drop_expired(&mut files, 100);
        let mut left: Vec<&str> = files.keys().map(String::as_str).collect();
        left.sort();
        assert_eq!(left, ["later", "never"]);
    }

    #[test]
    fn expiry_is_checked_as_openai_checks_it() {
        assert_eq!(check_expiry("p", Some("created_at"), Some(3600)).ok(), Some(3600));
        assert_eq!(check_expiry("p", Some("created_at"), Some(2_592_000)).ok(), Some(2_592_000));
        for (anchor, seconds) in [
            (Some("created_at"), Some(3599)),
            (Some("created_at"), Some(2_592_001)),
            (Some("now"), Some(3600)),
            (None, Some(3600)),
            (Some("created_at"), None),
        ] {
            let e = check_expiry("p", anchor, seconds).unwrap_err();
            assert_eq!((e.status.as_u16(), e.error.param.as_deref()), (400, Some("p")));
        }
    }
}
