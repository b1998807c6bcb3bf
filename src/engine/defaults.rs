//! Sampling settings a model is published with, and how a request's own settings merge with
//! them: a field the request sets wins, a field it leaves unset takes the model's default,
//! and a field neither sets keeps OpenAI's default ([`GenerateOptions`] as the API builds
//! it). This is how vLLM applies a model's `generation_config.json` (its default
//! `--generation-config auto`: `temperature`, `top_p`, `top_k`, `min_p`,
//! `repetition_penalty`, `max_new_tokens` as `max_tokens`) and, for `do_sample: false`, how
//! transformers' `generate` reads it (greedy search: the sampling warpers are unused).
//!
//! Where the defaults come from:
//! - a Hugging Face folder: its `generation_config.json` ([`GenerationDefaults`]);
//! - a GGUF file: llama.cpp's recommended-sampler keys (gguf-py `Keys.General.SAMPLING_*`:
//!   `general.sampling.temp`, `.top_k`, `.top_p`, `.min_p`, `.penalty_repeat`). llama.cpp's
//!   repeat penalty looks back `penalty_last_n` tokens; here, as in transformers and vLLM,
//!   it covers the prompt and the reply. The sampler sequence, XTC and Mirostat keys have no
//!   equivalent and are not read.

use crate::gguf::Metadata;
use crate::sampling::{ParamError, SamplingParams};
use crate::source::hf::GenerationDefaults;

use super::{EngineError, GenerateOptions};

/// llama.cpp's GGUF keys of a model's recommended sampling settings.
pub const GGUF_TEMPERATURE: &str = "general.sampling.temp";
pub const GGUF_TOP_K: &str = "general.sampling.top_k";
pub const GGUF_TOP_P: &str = "general.sampling.top_p";
pub const GGUF_MIN_P: &str = "general.sampling.min_p";
pub const GGUF_REPETITION_PENALTY: &str = "general.sampling.penalty_repeat";

/// Sampling settings of which any may be unset: the ones a request gives explicitly, or
/// the ones a model is published with. [`SamplingPreset::or`] layers one over another and
/// [`SamplingPreset::apply`] writes the set ones into a generation's options.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplingPreset {
    /// `0` is greedy.
    pub temperature: Option<f32>,
    /// `0` disables top-k.
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// Most tokens of a reply (`max_new_tokens`, OpenAI's `max_completion_tokens`).
    pub max_tokens: Option<u32>,
}

/// A model's published sampling default outside what a request may ask for.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("the model's {origin} has an invalid sampling default: {source}")]
pub struct SamplingDefaultError {
    /// `generation_config.json` or the GGUF `general.sampling.*` keys.
    pub origin: &'static str,
    pub source: ParamError,
}

impl SamplingPreset {
    /// Each of `self`'s fields, or `fallback`'s where `self` leaves it unset.
    pub fn or(&self, fallback: &SamplingPreset) -> SamplingPreset {
        SamplingPreset {
            temperature: self.temperature.or(fallback.temperature),
            top_k: self.top_k.or(fallback.top_k),
            top_p: self.top_p.or(fallback.top_p),
            min_p: self.min_p.or(fallback.min_p),
            repetition_penalty: self.repetition_penalty.or(fallback.repetition_penalty),
            max_tokens: self.max_tokens.or(fallback.max_tokens),
        }
    }

    /// The options a generation runs with, for every surface (the chat API, `webvlm generate`):
    /// each sampling setting is the caller's (`self`), else the model's published default
    /// (`model`, [`crate::engine::Engine::sampling_defaults`]), else the surface's own in
    /// `base` (OpenAI's for the API, greedy for the CLI).
    pub fn resolve(&self, model: &SamplingPreset, mut base: GenerateOptions) -> GenerateOptions {
        self.or(model).apply(&mut base);
        base
    }

    /// Overwrites the fields of `opts` this preset sets; the others stay as they are.
    pub fn apply(&self, opts: &mut GenerateOptions) {
        self.apply_sampling(&mut opts.sampling);
        if let Some(n) = self.max_tokens {
            opts.max_tokens = n;
        }
    }

    fn apply_sampling(&self, s: &mut SamplingParams) {
        let set = |field: &mut f32, value: Option<f32>| *field = value.unwrap_or(*field);
        set(&mut s.temperature, self.temperature);
        set(&mut s.top_p, self.top_p);
        set(&mut s.min_p, self.min_p);
        set(&mut s.repetition_penalty, self.repetition_penalty);
        s.top_k = self.top_k.unwrap_or(s.top_k);
    }

    /// The defaults of a Hugging Face `generation_config.json`. `do_sample: false` makes
    /// the default greedy (temperature 0) and drops top-k, top-p and min-p, which greedy
    /// search does not use; the repetition penalty and `max_new_tokens` still apply.
    pub fn from_generation_config(g: &GenerationDefaults) -> Result<SamplingPreset, SamplingDefaultError> {
        let greedy = g.do_sample == Some(false);
        let sampling = |v: Option<f32>| if greedy { None } else { v };
        SamplingPreset {
            temperature: if greedy { Some(0.0) } else { g.temperature },
            top_k: if greedy { None } else { g.top_k },
            top_p: sampling(g.top_p),
            min_p: sampling(g.min_p),
            repetition_penalty: g.repetition_penalty,
            max_tokens: g.max_new_tokens,
        }
        .checked("generation_config.json")
    }

    /// The defaults of llama.cpp's `general.sampling.*` keys; a top-k of 0 or below is
    /// llama.cpp's "off".
    pub fn from_gguf(meta: &Metadata) -> Result<SamplingPreset, EngineError> {
        let top_k = match meta.get(GGUF_TOP_K) {
            None => None,
            Some(_) => Some(u32::try_from(meta.get_i64(GGUF_TOP_K)?.max(0)).unwrap_or(u32::MAX)),
        };
        let preset = SamplingPreset {
            temperature: meta.get_opt_f32(GGUF_TEMPERATURE)?,
            top_k,
            top_p: meta.get_opt_f32(GGUF_TOP_P)?,
            min_p: meta.get_opt_f32(GGUF_MIN_P)?,
            repetition_penalty: meta.get_opt_f32(GGUF_REPETITION_PENALTY)?,
            max_tokens: None,
        };
        Ok(preset.checked("GGUF general.sampling.* keys")?)
    }

    /// `self` when every set value is one a request could ask for.
    fn checked(self, origin: &'static str) -> Result<SamplingPreset, SamplingDefaultError> {
        let bad = |source| SamplingDefaultError { origin, source };
        if self.max_tokens == Some(0) {
            return Err(bad(ParamError::new("max_tokens", "0 is not at least 1")));
        }
        let mut params = SamplingParams::default();
        self.apply_sampling(&mut params);
        params.validate(0).map_err(bad)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::MetaValue;

    fn openai() -> GenerateOptions {
        let mut opts = GenerateOptions { max_tokens: u32::MAX, ..Default::default() };
        opts.sampling = SamplingParams::default();
        opts
    }

    #[test]
    fn the_request_wins_then_the_model_then_openai() {
        let model = SamplingPreset {
            temperature: Some(0.6),
            top_k: Some(40),
            top_p: Some(0.9),
            repetition_penalty: Some(1.1),
            max_tokens: Some(48),
            ..Default::default()
        };
        let request = SamplingPreset { temperature: Some(0.0), max_tokens: Some(5), ..Default::default() };
        let mut opts = openai();
        request.or(&model).apply(&mut opts);
        let s = &opts.sampling;
        assert_eq!((s.temperature, s.top_k, s.top_p, s.repetition_penalty, opts.max_tokens), (0.0, 40, 0.9, 1.1, 5));
        assert_eq!(s.min_p, 0.0, "set by neither: OpenAI's default");
        // A model without defaults changes nothing.
        let mut plain = openai();
        SamplingPreset::default().or(&SamplingPreset::default()).apply(&mut plain);
        assert_eq!((plain.sampling, plain.max_tokens), (SamplingParams::default(), u32::MAX));
    }

    #[test]
    fn do_sample_false_is_greedy_with_the_penalty_and_length_kept() {
        let g = GenerationDefaults::parse(
            br#"{"do_sample": false, "temperature": 0.7, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.05, "max_new_tokens": 9}"#,
        )
        .unwrap();
        let p = SamplingPreset::from_generation_config(&g).unwrap();
        let want =
            SamplingPreset { temperature: Some(0.0), repetition_penalty: Some(1.05), max_tokens: Some(9), ..Default::default() };
        assert_eq!(p, want);
        // do_sample true or absent: the values as published.
        for text in [&br#"{"do_sample": true, "temperature": 0.7, "top_k": 20}"#[..], br#"{"temperature": 0.7, "top_k": 20}"#] {
            let p = SamplingPreset::from_generation_config(&GenerationDefaults::parse(text).unwrap()).unwrap();
            assert_eq!((p.temperature, p.top_k, p.top_p), (Some(0.7), Some(20), None));
        }
        // A request's explicit temperature still samples on a greedy-by-default model.
        let mut opts = openai();
        SamplingPreset { temperature: Some(1.0), ..Default::default() }.or(&want).apply(&mut opts);
        assert_eq!(opts.sampling.temperature, 1.0);
    }

    #[test]
    fn defaults_outside_the_request_ranges_are_refused() {
        for (text, param) in [
            (&br#"{"temperature": 2.5}"#[..], "temperature"),
            (br#"{"top_p": 0}"#, "top_p"),
            (br#"{"repetition_penalty": 0}"#, "repetition_penalty"),
            (br#"{"min_p": 1.5}"#, "min_p"),
            (br#"{"max_new_tokens": 0}"#, "max_tokens"),
        ] {
            let err = SamplingPreset::from_generation_config(&GenerationDefaults::parse(text).unwrap()).unwrap_err();
            assert_eq!((err.origin, err.source.param), ("generation_config.json", param));
        }
    }

    #[test]
    fn gguf_keys_are_llama_cpps() {
        let mut meta = Metadata::new();
        for (k, v) in [
            (GGUF_TEMPERATURE, MetaValue::F32(0.15)),
            (GGUF_TOP_K, MetaValue::I32(64)),
            (GGUF_TOP_P, MetaValue::F32(0.95)),
            (GGUF_MIN_P, MetaValue::F32(0.05)),
            (GGUF_REPETITION_PENALTY, MetaValue::F32(1.1)),
            ("general.sampling.mirostat", MetaValue::I32(2)),
        ] {
            meta.insert(k.into(), v).unwrap();
        }
        let p = SamplingPreset::from_gguf(&meta).unwrap();
        let want = SamplingPreset {
            temperature: Some(0.15),
            top_k: Some(64),
            top_p: Some(0.95),
            min_p: Some(0.05),
            repetition_penalty: Some(1.1),
            max_tokens: None,
        };
        assert_eq!(p, want);
        assert_eq!(SamplingPreset::from_gguf(&Metadata::new()).unwrap(), SamplingPreset::default());

        let one = |k: &str, v: MetaValue| {
            let mut m = Metadata::new();
            m.insert(k.into(), v).unwrap();
            SamplingPreset::from_gguf(&m)
        };
        assert_eq!(one(GGUF_TOP_K, MetaValue::I32(-1)).unwrap().top_k, Some(0), "llama.cpp: <= 0 is off");
        assert!(matches!(one(GGUF_TEMPERATURE, MetaValue::String("hot".into())), Err(EngineError::Gguf(_))));
        assert!(matches!(one(GGUF_TOP_P, MetaValue::F32(1.5)), Err(EngineError::SamplingDefault(_))));
    }
}
