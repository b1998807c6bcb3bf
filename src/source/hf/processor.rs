//! A folder's image-processor settings: the `image_processor` object of
//! `processor_config.json` (what transformers 5's `ProcessorMixin.save_pretrained` writes) or,
//! without one, `preprocessor_config.json` (the published Llama 3.2 Vision files, transformers
//! 4) — the order transformers' `ImageProcessingMixin.get_image_processor_dict` reads them in.
//!
//! [`HfImageProcessor`] holds the settings as written (every one optional) after checking their
//! values; [`mllama_preprocess`] turns them into the Mllama preprocessing options for a model's
//! vision config: a folder without a processor file gets the published Llama 3.2 Vision
//! processor (CLIP mean / std, bilinear, rescale 1/255, the config's tile size and tile
//! count); a file that leaves a setting out gets transformers' `MllamaImageProcessorPil` class
//! default for it (mean = std = 0.5, bilinear, rescale 1/255), as transformers does when it
//! loads that folder, except the tile size and tile count, which only the config's values can
//! serve. Settings webvlm does not reproduce (another resample filter, `do_resize` /
//! `do_pad` false, a tile size or tile count unlike the model's, which transformers refuses
//! too) are typed errors rather than silently different pixels.

use serde_json::{Map, Value};

use super::json::json_object;
use super::HfError;
use crate::image::mllama::{MllamaPreprocess, Resample};

/// transformers 5's processor file: the image processor's settings under `image_processor`.
pub const PROCESSOR_CONFIG: &str = "processor_config.json";
/// The image processor's own file (transformers 4, and the published Llama 3.2 Vision).
pub const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";

/// `IMAGENET_STANDARD_MEAN` / `_STD`: `MllamaImageProcessorPil`'s class defaults.
const IMAGENET_STANDARD: [f64; 3] = [0.5; 3];
/// The default `rescale_factor`.
const RESCALE_1_255: f64 = 1.0 / 255.0;

/// The image-processor settings of a folder, as written (`None`: the file leaves it out).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HfImageProcessor {
    /// The file they come from ([`PROCESSOR_CONFIG`] or [`PREPROCESSOR_CONFIG`]).
    pub file: &'static str,
    /// `image_processor_type`, e.g. `MllamaImageProcessor`.
    pub processor_type: Option<String>,
    /// Per-channel `image_mean` / `image_std` (a single number is every channel's).
    pub image_mean: Option<[f64; 3]>,
    pub image_std: Option<[f64; 3]>,
    /// `size.height` and `size.width` (Mllama's tile).
    pub size_hw: Option<(Option<u32>, Option<u32>)>,
    /// `size.shortest_edge` / `size.longest_edge` (the Qwen2-VL processors' pixel bounds).
    pub shortest_edge: Option<u64>,
    pub longest_edge: Option<u64>,
    /// `patch_size` (a number, or `{height, width}` of equal sides).
    pub patch_size: Option<u32>,
    /// `max_image_tiles` (Mllama).
    pub max_image_tiles: Option<u32>,
    /// `resample`: Pillow's filter number (0 nearest, 1 Lanczos, 2 bilinear, 3 bicubic, 4
    /// box, 5 Hamming).
    pub resample: Option<u32>,
    pub rescale_factor: Option<f64>,
    pub do_rescale: Option<bool>,
    pub do_normalize: Option<bool>,
    pub do_resize: Option<bool>,
    pub do_pad: Option<bool>,
    /// `min_pixels` / `max_pixels` (Qwen2-VL processors).
    pub min_pixels: Option<u64>,
    pub max_pixels: Option<u64>,
}

/// Typed getters over the processor object; errors name the file and key.
struct Fields<'a> {
    file: &'static str,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn bad(&self, key: &str, v: &Value, why: &'static str) -> HfError {
        HfError::Processor { file: self.file.into(), key: key.into(), value: v.to_string(), why }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, HfError> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| self.bad(key, v, "not a boolean"))).transpose()
    }

    fn positive(&self, key: &str, v: &Value) -> Result<u64, HfError> {
        v.as_u64().filter(|&n| n > 0 && n <= u32::MAX as u64 * 64).ok_or_else(|| self.bad(key, v, "not a positive integer"))
    }

    fn u32(&self, key: &str) -> Result<Option<u32>, HfError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let n = self.positive(key, v)?;
        u32::try_from(n).map(Some).map_err(|_| self.bad(key, v, "not a positive integer"))
    }

    fn u64(&self, key: &str) -> Result<Option<u64>, HfError> {
        self.get(key).map(|v| self.positive(key, v)).transpose()
    }

    /// Three per-channel values (one number: the same for each); `positive`: each > 0.
    fn rgb(&self, key: &str, positive: bool) -> Result<Option<[f64; 3]>, HfError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let values: Vec<Option<f64>> = match v {
            Value::Array(items) => items.iter().map(Value::as_f64).collect(),
            other => vec![other.as_f64(); 3],
        };
        let rgb = <[Option<f64>; 3]>::try_from(values).map_err(|_| self.bad(key, v, "not 3 values (R, G, B)"))?;
        let mut out = [0.0; 3];
        for (o, x) in out.iter_mut().zip(rgb) {
            *o = x.filter(|x| (*x as f32).is_finite()).ok_or_else(|| self.bad(key, v, "not finite numbers"))?;
            // f32 is what the preprocessing computes in.
            if positive && *o as f32 <= 0.0 {
                return Err(self.bad(key, v, "not positive"));
            }
        }
        Ok(Some(out))
    }
}

impl HfImageProcessor {
    /// The settings of a folder from its files' bytes (`None` where a file is absent), in
    /// transformers' order: `processor_config.json`'s `image_processor` object, else
    /// `preprocessor_config.json`. `None` when neither holds one.
    pub fn from_files(processor_config: Option<&[u8]>, preprocessor_config: Option<&[u8]>) -> Result<Option<Self>, HfError> {
        if let Some(bytes) = processor_config {
            match json_object(PROCESSOR_CONFIG, bytes)?.get("image_processor") {
                Some(Value::Object(map)) => return Self::parse(PROCESSOR_CONFIG, map).map(Some),
                None | Some(Value::Null) => {}
                Some(v) => {
                    let why = "not an object";
                    return Err(HfError::Processor {
                        file: PROCESSOR_CONFIG.into(),
                        key: "image_processor".into(),
                        value: v.to_string(),
                        why,
                    });
                }
            }
        }
        preprocessor_config.map(|bytes| Self::parse(PREPROCESSOR_CONFIG, &json_object(PREPROCESSOR_CONFIG, bytes)?)).transpose()
    }

    /// Reads and checks the settings of one processor object (other keys are ignored).
    pub fn parse(file: &'static str, map: &Map<String, Value>) -> Result<Self, HfError> {
        let f = Fields { file, map };
        let processor_type = match f.get("image_processor_type") {
            None => None,
            Some(v) => Some(v.as_str().ok_or_else(|| f.bad("image_processor_type", v, "not a string"))?.to_string()),
        };
        let (mut size_hw, mut shortest_edge, mut longest_edge) = (None, None, None);
        match f.get("size") {
            None => {}
            Some(Value::Object(size)) => {
                let s = Fields { file, map: size };
                let (h, w) = (s.u32("height")?, s.u32("width")?);
                if h.is_some() || w.is_some() {
                    size_hw = Some((h, w));
                }
                shortest_edge = s.u64("shortest_edge")?;
                longest_edge = s.u64("longest_edge")?;
            }
            // transformers 4 wrote a bare number for a square size.
            Some(v) => {
                let n = f.u32("size")?.ok_or_else(|| f.bad("size", v, "not a size"))?;
                size_hw = Some((Some(n), Some(n)));
            }
        }
        let patch_size = match f.get("patch_size") {
            Some(Value::Object(p)) => {
                let p = Fields { file, map: p };
                match (p.u32("height")?, p.u32("width")?) {
                    (Some(h), Some(w)) if h == w => Some(h),
                    _ => return Err(f.bad("patch_size", &Value::Object(p.map.clone()), "not a square patch")),
                }
            }
            _ => f.u32("patch_size")?,
        };
        let resample = match f.get("resample") {
            None => None,
            Some(v) => {
                Some(v.as_u64().filter(|&n| n <= 5).ok_or_else(|| f.bad("resample", v, "not a Pillow filter (0 to 5)"))? as u32)
            }
        };
        let rescale_factor = match f.get("rescale_factor") {
            None => None,
            Some(v) => Some(
                v.as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0 && (*x as f32).is_normal())
                    .ok_or_else(|| f.bad("rescale_factor", v, "not a positive finite number"))?,
            ),
        };
        let out = HfImageProcessor {
            file,
            processor_type,
            image_mean: f.rgb("image_mean", false)?,
            image_std: f.rgb("image_std", true)?,
            size_hw,
            shortest_edge,
            longest_edge,
            patch_size,
            max_image_tiles: f.u32("max_image_tiles")?,
            resample,
            rescale_factor,
            do_rescale: f.bool("do_rescale")?,
            do_normalize: f.bool("do_normalize")?,
            do_resize: f.bool("do_resize")?,
            do_pad: f.bool("do_pad")?,
            min_pixels: f.u64("min_pixels")?,
            max_pixels: f.u64("max_pixels")?,
        };
        if let (Some(lo), Some(hi)) = (out.min_pixels, out.max_pixels) {
            if lo > hi {
                return Err(f.bad("min_pixels", &Value::from(lo), "above max_pixels"));
            }
        }
        Ok(out)
    }

    fn bad(&self, key: &str, value: impl ToString, why: &'static str) -> HfError {
        HfError::Processor { file: self.file.into(), key: key.into(), value: value.to_string(), why }
    }
}

/// The Mllama preprocessing options of a model whose vision config has tiles of `image_size`
/// px, patches of `patch_size` and at most `max_num_tiles` tiles, under the folder's processor
/// settings `proc` (see the module docs for the defaults). The decoding limits are
/// [`crate::image::PreprocessOptions::default`]'s.
pub fn mllama_preprocess(
    proc: Option<&HfImageProcessor>,
    image_size: u32,
    patch_size: u32,
    max_num_tiles: u32,
) -> Result<MllamaPreprocess, HfError> {
    let published = MllamaPreprocess { tile_size: image_size, max_image_tiles: max_num_tiles, ..MllamaPreprocess::default() };
    let Some(p) = proc else { return Ok(published) };
    if let Some(t) = p.processor_type.as_deref().filter(|t| !t.starts_with("MllamaImageProcessor")) {
        return Err(p.bad("image_processor_type", t, "not an Mllama image processor"));
    }
    let tile_size = match p.size_hw {
        None if p.shortest_edge.is_some() || p.longest_edge.is_some() => {
            return Err(p.bad("size", "shortest_edge / longest_edge", "not {height, width} (Mllama tiles are square)"))
        }
        None => image_size,
        Some((Some(h), Some(w))) if h == w => h,
        Some((h, w)) => return Err(p.bad("size", format!("{h:?} x {w:?}"), "not a square tile")),
    };
    if patch_size == 0 || !tile_size.is_multiple_of(patch_size) {
        return Err(p.bad("size", tile_size, "not a multiple of vision_config.patch_size"));
    }
    if tile_size != image_size {
        return Err(p.bad("size", tile_size, "not vision_config.image_size (the position embeddings' tile)"));
    }
    let max_image_tiles = p.max_image_tiles.unwrap_or(max_num_tiles);
    if max_image_tiles != max_num_tiles {
        return Err(p.bad("max_image_tiles", max_image_tiles, "not vision_config.max_num_tiles"));
    }
    for (key, value) in [("do_resize", p.do_resize), ("do_pad", p.do_pad)] {
        if value == Some(false) {
            return Err(p.bad(key, false, "unsupported (the Mllama processor always resizes and pads)"));
        }
    }
    let resample = match p.resample.unwrap_or(2) {
        2 => Resample::Bilinear,
        3 => Resample::Bicubic,
        n => return Err(p.bad("resample", n, "unsupported filter (webvlm resamples bilinear 2 and bicubic 3)")),
    };
    let f32s = |v: [f64; 3]| v.map(|x| x as f32);
    Ok(MllamaPreprocess {
        tile_size,
        max_image_tiles,
        image_mean: f32s(p.image_mean.unwrap_or(IMAGENET_STANDARD)),
        image_std: f32s(p.image_std.unwrap_or(IMAGENET_STANDARD)),
        resample,
        rescale_factor: p.do_rescale.unwrap_or(true).then_some(p.rescale_factor.unwrap_or(RESCALE_1_255)),
        normalize: p.do_normalize.unwrap_or(true),
        ..published
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<HfImageProcessor, HfError> {
        HfImageProcessor::from_files(None, Some(json.as_bytes())).map(Option::unwrap)
    }

    fn bad_key(r: Result<impl std::fmt::Debug, HfError>) -> String {
        match r {
            Err(HfError::Processor { key, .. }) => key,
            other => panic!("not a processor error: {other:?}"),
        }
    }

    #[test]
    fn the_published_file_reads_as_written() {
        let p = parse(
            r#"{"do_convert_rgb": true, "do_normalize": true, "do_pad": true, "do_rescale": true, "do_resize": true,
                "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "MllamaImageProcessor",
                "image_std": [0.26862954, 0.26130258, 0.27577711], "max_image_tiles": 4, "processor_class": "MllamaProcessor",
                "resample": 2, "rescale_factor": 0.00392156862745098, "size": {"height": 560, "width": 560}}"#,
        )
        .unwrap();
        assert_eq!(p.file, PREPROCESSOR_CONFIG);
        assert_eq!(p.size_hw, Some((Some(560), Some(560))));
        let opts = mllama_preprocess(Some(&p), 560, 14, 4).unwrap();
        // The published file gives exactly the published defaults.
        assert_eq!(opts, mllama_preprocess(None, 560, 14, 4).unwrap());
        assert_eq!(opts, MllamaPreprocess::default());
    }

    #[test]
    fn processor_config_comes_first() {
        let nested = br#"{"image_processor": {"image_mean": 0.25, "size": {"height": 28, "width": 28}}, "processor_class": "MllamaProcessor"}"#;
        let legacy = br#"{"image_mean": [0.1, 0.2, 0.3]}"#;
        let p = HfImageProcessor::from_files(Some(nested), Some(legacy)).unwrap().unwrap();
        assert_eq!((p.file, p.image_mean), (PROCESSOR_CONFIG, Some([0.25; 3])));
        // A processor_config.json without the object: preprocessor_config.json.
        let p = HfImageProcessor::from_files(Some(br#"{"processor_class": "X"}"#), Some(legacy)).unwrap().unwrap();
        assert_eq!((p.file, p.image_mean), (PREPROCESSOR_CONFIG, Some([0.1, 0.2, 0.3])));
        assert_eq!(HfImageProcessor::from_files(Some(b"{}"), None).unwrap(), None);
        assert_eq!(HfImageProcessor::from_files(None, None).unwrap(), None);
    }

    #[test]
    fn left_out_settings_take_the_class_defaults_and_the_config_tile() {
        let p = parse(r#"{"image_std": [0.2, 0.3, 0.4], "do_normalize": true, "resample": 3, "do_rescale": false}"#).unwrap();
        let o = mllama_preprocess(Some(&p), 42, 14, 2).unwrap();
        assert_eq!((o.tile_size, o.max_image_tiles), (42, 2));
        assert_eq!((o.image_mean, o.image_std), ([0.5; 3], [0.2, 0.3, 0.4]));
        assert_eq!((o.resample, o.rescale_factor, o.normalize), (Resample::Bicubic, None, true));
        let o = mllama_preprocess(Some(&parse(r#"{"rescale_factor": 0.004, "size": 42}"#).unwrap()), 42, 14, 4).unwrap();
        assert_eq!(o.rescale_factor, Some(0.004));
    }

    #[test]
    fn bad_values_are_typed_errors() {
        for (json, key) in [
            (r#"{"image_std": [0.2, 0.0, 0.4]}"#, "image_std"),
            (r#"{"image_std": [0.2, -1, 0.4]}"#, "image_std"),
            (r#"{"image_std": [0.2, 0.3]}"#, "image_std"),
            (r#"{"image_mean": [0.2, 0.3, 0.4, 0.5]}"#, "image_mean"),
            (r#"{"image_mean": [0.2, "a", 0.4]}"#, "image_mean"),
            (r#"{"image_mean": "0.5"}"#, "image_mean"),
            (r#"{"image_std": 1e300}"#, "image_std"),
            (r#"{"rescale_factor": 0}"#, "rescale_factor"),
            (r#"{"rescale_factor": -0.5}"#, "rescale_factor"),
            (r#"{"size": {"height": 0, "width": 560}}"#, "height"),
            (r#"{"size": "big"}"#, "size"),
            (r#"{"max_image_tiles": -4}"#, "max_image_tiles"),
            (r#"{"resample": 9}"#, "resample"),
            (r#"{"do_rescale": "yes"}"#, "do_rescale"),
            (r#"{"patch_size": {"height": 14, "width": 16}}"#, "patch_size"),
            (r#"{"min_pixels": 100, "max_pixels": 10}"#, "min_pixels"),
        ] {
            assert_eq!(bad_key(parse(json)), key, "{json}");
        }
        assert!(matches!(parse("[1]"), Err(HfError::Json { .. })));
        let nested = br#"{"image_processor": 3}"#;
        assert_eq!(bad_key(HfImageProcessor::from_files(Some(nested), None)), "image_processor");
    }

    #[test]
    fn settings_the_model_cannot_take_are_typed_errors() {
        for (json, key) in [
            (r#"{"size": {"height": 28, "width": 42}}"#, "size"),
            (r#"{"size": {"height": 35, "width": 35}}"#, "size"),
            (r#"{"size": {"height": 56, "width": 56}}"#, "size"),
            (r#"{"size": {"shortest_edge": 28}}"#, "size"),
            (r#"{"max_image_tiles": 2}"#, "max_image_tiles"),
            (r#"{"do_pad": false}"#, "do_pad"),
            (r#"{"do_resize": false}"#, "do_resize"),
            (r#"{"resample": 1}"#, "resample"),
            (r#"{"image_processor_type": "CLIPImageProcessor"}"#, "image_processor_type"),
        ] {
            assert_eq!(bad_key(mllama_preprocess(Some(&parse(json).unwrap()), 28, 14, 4)), key, "{json}");
        }
    }
}
