//! Named JS errors at the wasm boundary. Every error leaving [`super::WebEngine`] is a JS
//! `Error` whose `name` is one of the classes of `js/errors.js` (`AdapterTooSmallError`,
//! `DeviceLostError`, ...), chosen from the Rust error's type and variant, never from its
//! message: `toWire` / `fromWire` then rebuild the class on the page.

use std::any::Any;
use std::fmt::Display;

use wasm_bindgen::{JsError, JsValue};

use crate::api::ApiError;
use crate::chat::ChatError;
use crate::engine::EngineError;
use crate::gguf::GgufError;
use crate::gpu::GpuError;
use crate::image::ImageError;
use crate::kernels::quant::WeightError;
use crate::model::{ConfigError, ContextError, LoadError, ModelError};
use crate::tokenizer::TokenizerError;

/// The failures a page can tell apart; [`ErrorKind::name`] is the JS class name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No WebGPU adapter.
    NoWebGpu,
    /// The adapter's limits cannot hold the model (buffer or binding sizes), or it refused
    /// the device the model needs.
    AdapterTooSmall,
    /// The GPU device was lost: the engine must be created again.
    DeviceLost,
    /// Not a model webvlm can run (architecture, tensor types, malformed GGUF, vocabulary).
    ModelNotSupported,
    /// The downloaded bytes do not match their published SHA-256.
    Download,
    /// A request the engine refuses (parameters, images, prompt too long).
    BadRequest,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The class name in `js/errors.js`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NoWebGpu => "NoWebGPUError",
            ErrorKind::AdapterTooSmall => "AdapterTooSmallError",
            ErrorKind::DeviceLost => "DeviceLostError",
            ErrorKind::ModelNotSupported => "ModelNotSupportedError",
            ErrorKind::Download => "DownloadError",
            ErrorKind::BadRequest => "BadRequestError",
            ErrorKind::Other => "WebvlmError",
        }
    }

    /// The kind of an error value of any of the crate's error types (looking through their
    /// wrappers); `serde_json` errors are malformed requests; strings are [`ErrorKind::Other`].
    pub fn of(e: &dyn Any) -> ErrorKind {
        if let Some(e) = e.downcast_ref::<EngineError>() {
            engine(e)
        } else if let Some(e) = e.downcast_ref::<ApiError>() {
            api(e)
        } else if let Some(e) = e.downcast_ref::<ModelError>() {
            model(e)
        } else if let Some(e) = e.downcast_ref::<LoadError>() {
            load(e)
        } else if let Some(e) = e.downcast_ref::<WeightError>() {
            weight(e)
        } else if let Some(e) = e.downcast_ref::<GpuError>() {
            gpu(e)
        } else if let Some(e) = e.downcast_ref::<ContextError>() {
            context(e)
        } else if let Some(e) = e.downcast_ref::<TokenizerError>() {
            tokenizer(e)
        } else if let Some(e) = e.downcast_ref::<ChatError>() {
            chat(e)
        } else if e.is::<ConfigError>() || e.is::<GgufError>() {
            ErrorKind::ModelNotSupported
        } else if e.is::<ImageError>() || e.is::<serde_json::Error>() {
            ErrorKind::BadRequest
        } else {
            ErrorKind::Other
        }
    }
}

/// A JS `Error` with `e`'s message and the `name` of its [`ErrorKind`].
pub fn to_js<E: Display + 'static>(e: &E) -> JsError {
    let kind = ErrorKind::of(e);
    let message = match kind {
        ErrorKind::AdapterTooSmall => format!("this GPU's WebGPU limits or free memory are too small for the model: {e}"),
        _ => e.to_string(),
    };
    let error = JsError::new(&message);
    let value: JsValue = error.clone().into(); // the same JS object
                                               // Setting a property on a fresh Error object cannot fail.
    let _ = js_sys::Reflect::set(&value, &JsValue::from_str("name"), &JsValue::from_str(kind.name()));
    // OpenAI's error fields, for requests the API layer refused.
    if let Some(api) = (e as &dyn Any).downcast_ref::<ApiError>() {
        let set = |k: &str, v: Option<&str>| {
            js_sys::Reflect::set(&value, &JsValue::from_str(k), &v.map_or(JsValue::NULL, JsValue::from_str))
        };
        let _ = (set("type", Some(api.kind)), set("code", api.code), set("param", api.param.as_deref()));
    }
    error
}

fn gpu(e: &GpuError) -> ErrorKind {
    match e {
        GpuError::NoAdapter(_) => ErrorKind::NoWebGpu,
        GpuError::RequestDevice(_) | GpuError::BufferTooLarge { .. } | GpuError::OutOfMemory(_) => ErrorKind::AdapterTooSmall,
        e if e.is_device_lost() => ErrorKind::DeviceLost,
        _ => ErrorKind::Other,
    }
}

fn weight(e: &WeightError) -> ErrorKind {
    match e {
        WeightError::Unsupported(_) | WeightError::SizeMismatch { .. } | WeightError::BadShape { .. } => {
            ErrorKind::ModelNotSupported
        }
        WeightError::RowTooLarge { .. } => ErrorKind::AdapterTooSmall,
        WeightError::Gpu(e) => gpu(e),
        _ => ErrorKind::Other,
    }
}

fn load(e: &LoadError) -> ErrorKind {
    match e {
        LoadError::Weight(e) => weight(e),
        LoadError::Gpu(e) => gpu(e),
        LoadError::Checksum { .. } => ErrorKind::Download,
        LoadError::InPart { error, .. } => load(error),
        _ => ErrorKind::ModelNotSupported,
    }
}

fn model(e: &ModelError) -> ErrorKind {
    match e {
        ModelError::Load(e) => load(e),
        ModelError::Gpu(e) => gpu(e),
        _ => ErrorKind::ModelNotSupported,
    }
}

fn context(e: &ContextError) -> ErrorKind {
    match e {
        ContextError::Gpu(e) => gpu(e),
        ContextError::ImageWidth { .. } => ErrorKind::ModelNotSupported,
        _ => ErrorKind::BadRequest,
    }
}

fn tokenizer(e: &TokenizerError) -> ErrorKind {
    match e {
        TokenizerError::UnknownId { .. } => ErrorKind::BadRequest,
        TokenizerError::StreamDiverged { .. } | TokenizerError::Backend(_) => ErrorKind::Other,
        _ => ErrorKind::ModelNotSupported,
    }
}

fn chat(e: &ChatError) -> ErrorKind {
    match e {
        ChatError::Syntax(_) => ErrorKind::ModelNotSupported,
        _ => ErrorKind::BadRequest,
    }
}

/// An engine error flattened to OpenAI's error object (the chat-completions path): its code,
/// else its type. A lost device is recognised in the text until the conversion from
/// [`EngineError`] gives it a code of its own.
fn api(e: &ApiError) -> ErrorKind {
    match e.code {
        Some("device_lost") => ErrorKind::DeviceLost,
        Some("adapter_too_small") => ErrorKind::AdapterTooSmall,
        _ if e.kind == "invalid_request_error" => ErrorKind::BadRequest,
        _ if GpuError::is_device_lost_message(&e.message) => ErrorKind::DeviceLost,
        _ => ErrorKind::Other,
    }
}

fn engine(e: &EngineError) -> ErrorKind {
    match e {
        EngineError::Model(e) => model(e),
        EngineError::Context(e) => context(e),
        EngineError::Tokenizer(e) => tokenizer(e),
        EngineError::Chat(e) => chat(e),
        EngineError::Gpu(e) => gpu(e),
        EngineError::Gguf(_) | EngineError::NoImageTokens => ErrorKind::ModelNotSupported,
        _ => ErrorKind::BadRequest,
    }
}
