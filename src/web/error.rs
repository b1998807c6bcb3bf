//! Named JS errors at the wasm boundary. Every error leaving [`super::WebEngine`] is a JS
//! `Error` whose `name` is one of the classes of `js/errors.js` (`AdapterTooSmallError`,
//! `DeviceLostError`, ...), chosen from the error's [`ErrorClass`] (its type and variant,
//! never its message): `toWire` / `fromWire` then rebuild the class on the page.

use std::any::Any;
use std::fmt::Display;

use wasm_bindgen::{JsError, JsValue};

use crate::api::ApiError;
use crate::error::{Classify, ErrorClass};

/// Failures of the wasm surface itself (calls out of order, arguments it cannot use).
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// A call came while another one holds the engine (calls must not overlap).
    #[error("the engine is busy")]
    Busy,
    /// A call that needs a model before one was loaded.
    #[error("no model is loaded")]
    NotLoaded,
    /// A call after loading failed half way (the engine must be created again).
    #[error("the engine failed to load")]
    LoadFailed,
    /// `finishLoad` before the text model's header was pushed.
    #[error("the model never loaded")]
    NeverLoaded,
    /// mmproj bytes pushed before the text model's header.
    #[error("push the text model's header before the mmproj")]
    MmprojFirst,
    /// A digest that is not 64 hex digits.
    #[error("{0:?} is not a SHA-256 (64 hex digits)")]
    BadSha256(String),
    /// `expectSha256` for a file other than `text` / `mmproj`, or one already streaming.
    #[error("expectSha256: unknown or already started file {0:?}")]
    UnknownFile(String),
    /// An engine option that cannot be used.
    #[error("invalid engine option: {0}")]
    BadOption(String),
    /// `openRepository` after the model's bytes started, or twice.
    #[error("openRepository must come once, before any model bytes")]
    RepoLate,
    /// A repository shard's bytes pushed before every shard's header.
    #[error("push every shard's header before the shards' bytes")]
    HeadersFirst,
}

impl Classify for WebError {
    fn class(&self) -> ErrorClass {
        match self {
            WebError::Busy
            | WebError::NotLoaded
            | WebError::LoadFailed
            | WebError::NeverLoaded
            | WebError::MmprojFirst
            | WebError::BadSha256(_)
            | WebError::UnknownFile(_)
            | WebError::BadOption(_)
            | WebError::RepoLate
            | WebError::HeadersFirst => ErrorClass::Internal,
        }
    }
}

/// The class name in `js/errors.js`.
pub fn js_name(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::NoGpu => "NoWebGPUError",
        ErrorClass::AdapterTooSmall => "AdapterTooSmallError",
        ErrorClass::DeviceLost => "DeviceLostError",
        ErrorClass::ModelNotSupported => "ModelNotSupportedError",
        ErrorClass::Download => "DownloadError",
        ErrorClass::BadRequest => "BadRequestError",
        ErrorClass::Internal => "WebvlmError",
    }
}

/// A JS `Error` with `e`'s message and the name of its class.
pub fn to_js<E: Classify + Display + 'static>(e: &E) -> JsError {
    let class = e.class();
    let message = match class {
        ErrorClass::AdapterTooSmall => format!("this GPU's WebGPU limits or free memory are too small for the model: {e}"),
        _ => e.to_string(),
    };
    let error = JsError::new(&message);
    // The same JS object; setting a property on a fresh Error object cannot fail.
    let value: JsValue = error.clone().into();
    let _ = js_sys::Reflect::set(&value, &JsValue::from_str("name"), &JsValue::from_str(js_name(class)));
    // OpenAI's error fields, for requests the API layer refused.
    if let Some(api) = (e as &dyn Any).downcast_ref::<ApiError>() {
        let set = |k: &str, v: Option<&str>| {
            js_sys::Reflect::set(&value, &JsValue::from_str(k), &v.map_or(JsValue::NULL, JsValue::from_str))
        };
        let _ = (set("type", Some(api.kind)), set("code", api.code), set("param", api.param.as_deref()));
    }
    error
}
