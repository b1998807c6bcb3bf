//! `generation_config.json`: the sampling defaults a model is published with (applied to
//! requests that leave them unset: `engine::SamplingPreset::from_generation_config`).
//!
//! Reference: transformers' `generation/configuration_utils.py` (`GenerationConfig`): keys
//! absent from the file keep transformers' defaults, which here are `None` (the caller's own
//! defaults apply).

use serde_json::Value;

use super::json::json_object;
use super::HfError;

/// What a model's `generation_config.json` asks for; `None` where the file says nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    /// `do_sample`: false means greedy whatever the temperature.
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<u32>,
    /// `eos_token_id` (an id or a list): ids that end generation.
    pub eos_token_ids: Vec<u32>,
}

impl GenerationDefaults {
    /// Parses `generation_config.json`.
    pub fn parse(bytes: &[u8]) -> Result<Self, HfError> {
        let file = "generation_config.json";
        let map = json_object(file, bytes)?;
        let bad = |key: &str, v: &Value, why| HfError::BadValue { key: format!("{file}: {key}"), value: v.to_string(), why };
        let get = |key: &str| map.get(key).filter(|v| !v.is_null());
        let float = |key: &str| -> Result<Option<f32>, HfError> {
            get(key)
                .map(|v| v.as_f64().filter(|f| f.is_finite()).map(|f| f as f32).ok_or_else(|| bad(key, v, "not a number")))
                .transpose()
        };
        let uint = |v: &Value, key: &str| v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad(key, v, "not a u32"));
        let eos_token_ids = match get("eos_token_id") {
            None => Vec::new(),
            Some(Value::Array(items)) => items.iter().map(|v| uint(v, "eos_token_id")).collect::<Result<_, _>>()?,
            Some(v) => vec![uint(v, "eos_token_id")?],
        };
        Ok(GenerationDefaults {
            do_sample: get("do_sample").map(|v| v.as_bool().ok_or_else(|| bad("do_sample", v, "not a bool"))).transpose()?,
            temperature: float("temperature")?,
            top_p: float("top_p")?,
            top_k: get("top_k").map(|v| uint(v, "top_k")).transpose()?,
            min_p: float("min_p")?,
            repetition_penalty: float("repetition_penalty")?,
            max_new_tokens: get("max_new_tokens").map(|v| uint(v, "max_new_tokens")).transpose()?,
            eos_token_ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_eos_id_or_a_list() {
        let g = GenerationDefaults::parse(br#"{"eos_token_id": 7, "temperature": 0.7, "top_k": null}"#).unwrap();
        assert_eq!((g.eos_token_ids, g.temperature, g.top_k), (vec![7], Some(0.7), None));
        let g = GenerationDefaults::parse(br#"{"eos_token_id": [1, 2]}"#).unwrap();
        assert_eq!(g.eos_token_ids, [1, 2]);
        assert!(matches!(GenerationDefaults::parse(br#"{"top_k": -3}"#), Err(HfError::BadValue { .. })));
    }
}
