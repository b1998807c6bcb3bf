//! OpenAI's error object: `{"error": {"message", "type", "param", "code"}}`.

use serde::Serialize;

use crate::engine::EngineError;
use crate::gpu::GpuError;

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
    /// `context_length_exceeded`, `invalid_image`, `invalid_json_schema`, `engine_error`.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A bad request naming the field at fault.
    pub fn invalid(param: impl Into<String>, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { message: message.into(), kind: "invalid_request_error", param: Some(param.into()), code: Some(code) }
    }

    /// `{"error": {...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }
}

impl From<EngineError> for ApiError {
    /// Input errors become `invalid_request_error`s naming their field; the rest are
    /// `server_error`s.
    fn from(e: EngineError) -> ApiError {
        use crate::model::ContextError;
        let message = e.to_string();
        let gpu = match &e {
            EngineError::Gpu(g) | EngineError::Context(ContextError::Gpu(g)) => Some(g),
            _ => None,
        };
        match gpu {
            Some(g) if g.is_device_lost() => {
                return ApiError { message, kind: "server_error", param: None, code: Some("device_lost") }
            }
            Some(GpuError::OutOfMemory(_) | GpuError::BufferTooLarge { .. }) => {
                return ApiError { message, kind: "server_error", param: None, code: Some("adapter_too_small") }
            }
            _ => {}
        }
        match &e {
            EngineError::Param(p) => ApiError::invalid(p.param, "invalid_value", message),
            EngineError::Context(ContextError::ContextFull { .. }) | EngineError::PromptTooLong { .. } => {
                ApiError::invalid("messages", "context_length_exceeded", message)
            }
            EngineError::Context(ContextError::BadToken { .. } | ContextError::Empty) => {
                ApiError::invalid("tokens", "invalid_value", message)
            }
            EngineError::Constraint(crate::constraint::ConstraintError::Schema(_)) => {
                ApiError::invalid("response_format", "invalid_json_schema", message)
            }
            EngineError::Image(_) | EngineError::BadImageUrl(_) | EngineError::ImageCount { .. } | EngineError::NoVision => {
                ApiError::invalid("messages", "invalid_image", message)
            }
            EngineError::Chat(_) | EngineError::Tokenizer(_) => ApiError::invalid("messages", "invalid_value", message),
            _ => ApiError { message, kind: "server_error", param: None, code: Some("engine_error") },
        }
    }
}
