//! The server's errors: an [`ApiError`] (OpenAI's `{"error": {"message", "type", "param",
//! "code"}}`) with the HTTP status it is answered with, and `Retry-After` for a full queue.
//! Request faults are 400, a lost GPU device 503 (the server loads the model again, or stops),
//! other engine failures 500; the server's own refusals (401, 404, 405, 413, 429) are made
//! here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use webvlm::api::ApiError;
use webvlm::error::{Classify, ErrorClass};

/// An error response.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub error: ApiError,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
}

impl HttpError {
    fn new(status: StatusCode, kind: &'static str, param: Option<String>, code: Option<&'static str>, message: String) -> Self {
        let class = if status.is_server_error() { ErrorClass::Internal } else { ErrorClass::BadRequest };
        HttpError { status, error: ApiError { message, kind, param, code, class }, retry_after: None }
    }

    /// 400: a request the server refuses, naming the field at fault.
    pub fn invalid(param: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::invalid(param, code, message).into()
    }

    /// 401: no `Authorization: Bearer` header, or a wrong key.
    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", None, Some("invalid_api_key"), message.into())
    }

    /// 404: an object (model, file, batch) that does not exist; `param` names the field that
    /// named it, if any.
    pub fn not_found(param: Option<&str>, code: Option<&'static str>, message: String) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", param.map(String::from), code, message)
    }

    /// 404: no such route.
    pub fn unknown_route(method: &str, path: &str) -> Self {
        let message = format!("Unknown request URL: {method} {path}");
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", None, Some("unknown_url"), message)
    }

    /// 405: a known route asked with another method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        let message = format!("{path} does not take {method}");
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", None, Some("method_not_allowed"), message)
    }

    /// 413: a body over `--max-body-bytes`.
    pub fn too_large(limit: usize) -> Self {
        let message = format!("the request body is larger than this server's limit of {limit} bytes");
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", None, Some("request_too_large"), message)
    }

    /// 429: the queue is full; try again after `retry_after` seconds.
    pub fn queue_full(capacity: usize, retry_after: u64) -> Self {
        let message = format!("the server is busy: {capacity} requests are already waiting for the engine; retry later");
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "requests", None, Some("rate_limit_exceeded"), message);
        e.retry_after = Some(retry_after);
        e
    }

    /// 500: the server itself failed (the engine thread is gone).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, Some("server_error"), message.into())
    }

    /// 503: the engine cannot take requests (its device is lost and the model could not be
    /// loaded again).
    pub fn unavailable(reason: impl Into<String>) -> Self {
        unavailable(reason.into()).into()
    }
}

/// The error of a request the engine cannot take any more: `reason` is why.
pub fn unavailable(reason: String) -> ApiError {
    ApiError { message: reason, kind: "server_error", param: None, code: Some("device_lost"), class: ErrorClass::DeviceLost }
}

/// The status of an API error: request faults are 400, a lost device 503, the rest 500.
pub fn status_of(e: &ApiError) -> StatusCode {
    match e.class() {
        ErrorClass::BadRequest => StatusCode::BAD_REQUEST,
        ErrorClass::DeviceLost => StatusCode::SERVICE_UNAVAILABLE,
        ErrorClass::NoGpu
        | ErrorClass::AdapterTooSmall
        | ErrorClass::ModelNotSupported
        | ErrorClass::Download
        | ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ApiError> for HttpError {
    fn from(error: ApiError) -> HttpError {
        HttpError { status: status_of(&error), error, retry_after: None }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.error.to_json())).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
