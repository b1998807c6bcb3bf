//! OpenAI's error object: `{"error": {"message", "type", "param", "code"}}`.

use serde::Serialize;

use crate::constraint::ConstraintError;
use crate::engine::EngineError;
use crate::error::{Classify, ErrorClass};
use crate::model::ModelError;

/// A request that cannot run, or a generation that failed, in OpenAI's error shape.
#[derive(Clone, Debug, PartialEq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub message: String,
    /// `invalid_request_error` for bad requests, `server_error` for engine failures.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault (`temperature`, `messages[1].content`, ...).
    pub param: Option<String>,
    /// `unknown_parameter`, `invalid_type`, `invalid_value`, `unsupported_value`,
    /// `invalid_json`, `context_length_exceeded`, `invalid_image`, `invalid_json_schema`,
    /// `device_lost`, `adapter_too_small`, `engine_error`.
    pub code: Option<&'static str>,
    /// What the failure means (not serialized: OpenAI's object has no such field).
    #[serde(skip)]
    pub class: ErrorClass,
}

impl ApiError {
    /// A bad request naming the field at fault.
    pub fn invalid(param: impl Into<String>, code: &'static str, message: impl Into<String>) -> ApiError {
        Self::bad_request(Some(param.into()), code, message)
    }

    /// A bad request, the field at fault named when there is one.
    pub fn bad_request(param: Option<String>, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: Some(code),
            class: ErrorClass::BadRequest,
        }
    }

    /// `{"error": {...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }
}

impl From<EngineError> for ApiError {
    /// Input errors become `invalid_request_error`s naming their field; the rest are
    /// `server_error`s with a code from their class.
    fn from(e: EngineError) -> ApiError {
        let message = e.to_string();
        let invalid = |param: &str, code| ApiError::invalid(param, code, message.clone());
        match &e {
            EngineError::Param(p) => return invalid(p.param, "invalid_value"),
            EngineError::Model(ModelError::ContextFull { .. }) | EngineError::PromptTooLong { .. } => {
                return invalid("messages", "context_length_exceeded")
            }
            EngineError::Model(ModelError::BadToken { .. } | ModelError::Empty) => return invalid("tokens", "invalid_value"),
            EngineError::Constraint(ConstraintError::Schema(_)) => return invalid("response_format", "invalid_json_schema"),
            EngineError::Image(_) | EngineError::BadImageUrl(_) | EngineError::ImageCount { .. } | EngineError::NoVision => {
                return invalid("messages", "invalid_image")
            }
            EngineError::Chat(_) | EngineError::Tokenizer(_) => return invalid("messages", "invalid_value"),
            _ => {}
        }
        let class = e.class();
        if class == ErrorClass::BadRequest {
            // The rest of the request's faults (image rows that do not fit their positions,
            // every token masked away) name no single field.
            return ApiError::bad_request(None, "invalid_value", message);
        }
        let code = match class {
            ErrorClass::DeviceLost => "device_lost",
            ErrorClass::AdapterTooSmall => "adapter_too_small",
            ErrorClass::NoGpu
            | ErrorClass::ModelNotSupported
            | ErrorClass::Download
            | ErrorClass::BadRequest
            | ErrorClass::Internal => "engine_error",
        };
        ApiError { message, kind: "server_error", param: None, code: Some(code), class }
    }
}

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        self.class
    }
}
