//! JSON helpers shared by the Hugging Face files (`config.json`, `generation_config.json`,
//! the processor configs): a file's bytes as an object, and an object with typed getters.

use serde_json::{Map, Value};

use super::HfError;

/// A JSON object (`config.json`, a nested config) with typed getters (errors name the key).
pub(super) struct Obj<'a>(pub(super) &'a Map<String, Value>);

impl Obj<'_> {
    pub(super) fn bad(key: &str, v: &Value, why: &'static str) -> HfError {
        HfError::BadValue { key: key.to_string(), value: v.to_string(), why }
    }

    pub(super) fn opt_u32(&self, key: &str) -> Result<Option<u32>, HfError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some).ok_or_else(|| Self::bad(key, v, "not a u32")),
        }
    }

    pub(super) fn u32(&self, key: &str) -> Result<u32, HfError> {
        self.opt_u32(key)?.ok_or_else(|| HfError::MissingKey(key.to_string()))
    }

    /// The first of `keys` present (the converter's `find_hparam`).
    pub(super) fn first_u32(&self, keys: &[&str]) -> Result<Option<u32>, HfError> {
        for key in keys {
            if let Some(v) = self.opt_u32(key)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    pub(super) fn opt_f64(&self, key: &str) -> Result<Option<f64>, HfError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().filter(|f| f.is_finite()).map(Some).ok_or_else(|| Self::bad(key, v, "not a finite number")),
        }
    }

    pub(super) fn opt_str(&self, key: &str) -> Result<Option<&str>, HfError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| Self::bad(key, v, "not a string")),
        }
    }
}

/// Parses a JSON file's bytes as an object.
pub(super) fn json_object(file: &str, bytes: &[u8]) -> Result<Map<String, Value>, HfError> {
    let json = |error: String| HfError::Json { file: file.to_string(), error };
    match serde_json::from_slice::<Value>(bytes).map_err(|e| json(e.to_string()))? {
        Value::Object(map) => Ok(map),
        _ => Err(json("not an object".into())),
    }
}
