//! Images in prompts: where their bytes come from (data URLs, or a loader the caller gives
//! for other URLs), the image-embedding cache, and the expansion of each image placeholder
//! the chat template writes into the encoder's token layout ([`PromptLayout`]).

use std::rc::Rc;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::image::PreprocessOptions;
use crate::model::{ImageDigest, ImageFeatures, PromptLayout};

use super::EngineError;

/// The length of [`expand`]'s result for images of `(rows, cols)` feature rows, without the
/// images' features.
pub fn expanded_len(layout: &PromptLayout, tokens: &[u32], grids: &[(u32, u32)]) -> Result<usize, EngineError> {
    let placeholders = count_placeholders(layout, tokens, grids.len())?;
    let images: usize = grids.iter().map(|&(rows, cols)| layout.image_len(rows, cols)).sum();
    Ok(tokens.len() - placeholders + images)
}

/// Replaces the i-th image placeholder of `tokens` by the layout of `images[i]`.
pub fn expand(layout: &PromptLayout, tokens: &[u32], images: &[Rc<ImageFeatures>]) -> Result<Vec<u32>, EngineError> {
    count_placeholders(layout, tokens, images.len())?;
    let mut next = images.iter();
    let mut out = Vec::with_capacity(tokens.len() + images.iter().map(|f| layout.image_len(f.rows, f.cols)).sum::<usize>());
    for &t in tokens {
        match (t == layout.placeholder()).then(|| next.next()).flatten() {
            Some(f) => out.extend(layout.image(f.rows, f.cols)),
            None => out.push(t),
        }
    }
    Ok(out)
}

/// The placeholders in `tokens`, which must be one per image.
fn count_placeholders(layout: &PromptLayout, tokens: &[u32], images: usize) -> Result<usize, EngineError> {
    let placeholders = tokens.iter().filter(|&&t| t == layout.placeholder()).count();
    if placeholders != images {
        return Err(EngineError::ImageCount { placeholders, images });
    }
    Ok(placeholders)
}

/// The bytes of a `data:` URL (`data:image/png;base64,...`); other URLs give `None`.
pub fn data_url_bytes(url: &str) -> Option<Result<Vec<u8>, EngineError>> {
    let rest = url.strip_prefix("data:")?;
    let bad = |reason: &str| EngineError::BadImageUrl(format!("{reason} in a data URL"));
    let Some((header, payload)) = rest.split_once(',') else { return Some(Err(bad("no ','"))) };
    if !header.ends_with(";base64") {
        return Some(Err(bad("no ';base64'")));
    }
    let payload: String = payload.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    Some(DATA_URL_BASE64.decode(payload).map_err(|e| bad(&format!("bad base64 ({e})"))))
}

/// Standard base64 with its `=` padding optional, as browsers read data URLs (the
/// `STANDARD` engine requires the padding).
const DATA_URL_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Cache key: the [`ImageDigest`] of the image's bytes and preprocessing settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key(ImageDigest);

impl Key {
    /// SHA-256 over every setting (fixed-width fields, then the length-prefixed encoder
    /// settings `encoder`) and then the bytes, so no two different (settings, bytes) pairs
    /// give the same input.
    fn of(bytes: &[u8], opts: &PreprocessOptions, encoder: &[u8]) -> Key {
        // Destructured so that a new setting cannot be left out of the key.
        let PreprocessOptions { max_edge, max_pixels, apply_exif_orientation, min_area, max_area } = opts;
        let mut h = Sha256::new();
        h.update(max_edge.to_le_bytes());
        h.update(max_pixels.to_le_bytes());
        h.update([u8::from(*apply_exif_orientation)]);
        for bound in [min_area, max_area] {
            h.update([u8::from(bound.is_some())]);
            h.update(bound.unwrap_or(0).to_le_bytes());
        }
        h.update((encoder.len() as u64).to_le_bytes());
        h.update(encoder);
        h.update(bytes);
        Key(h.finalize().into())
    }
}

/// Image features by image content, least recently used evicted beyond a byte budget.
pub struct ImageCache {
    entries: Vec<(Key, Rc<ImageFeatures>)>,
    max_bytes: u64,
    /// Encoder runs and cache hits since creation.
    pub misses: u64,
    pub hits: u64,
}

impl ImageCache {
    pub fn new(max_bytes: u64) -> ImageCache {
        ImageCache { entries: Vec::new(), max_bytes, misses: 0, hits: 0 }
    }

    /// The cached features of `bytes` preprocessed with `opts` by an encoder whose own
    /// settings are `encoder` ([`super::Vision::preprocess_key`]), or those `encode` makes
    /// (preprocessing and encoding the image).
    pub fn get_or_encode(
        &mut self,
        bytes: &[u8],
        opts: &PreprocessOptions,
        encoder: &[u8],
        encode: impl FnOnce() -> Result<ImageFeatures, EngineError>,
    ) -> Result<Rc<ImageFeatures>, EngineError> {
        let key = Key::of(bytes, opts, encoder);
        if let Some(i) = self.entries.iter().position(|(k, _)| *k == key) {
            // Most recently used last.
            let entry = self.entries.remove(i);
            self.entries.push(entry);
            self.hits += 1;
            return Ok(self.entries.last().map(|(_, f)| f.clone()).expect("just pushed"));
        }
        let mut features = encode()?;
        features.content = Some(key.0);
        let features = Rc::new(features);
        self.misses += 1;
        self.entries.push((key, features.clone()));
        while self.bytes() > self.max_bytes && self.entries.len() > 1 {
            self.entries.remove(0);
        }
        Ok(features)
    }

    /// Bytes of GPU memory the cached features hold.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|(_, f)| f.bytes()).sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_decode_as_in_a_browser() {
        let ok = |url: &str| data_url_bytes(url).expect("a data URL").expect("decodes");
        assert_eq!(ok("data:image/png;base64,QUJD"), b"ABC");
        assert_eq!(ok("data:image/png;base64,QU\n JD\r\n"), b"ABC", "whitespace is skipped");
        assert_eq!(ok("data:image/png;base64,QUI="), b"AB");
        assert_eq!(ok("data:image/png;base64,QUI"), b"AB", "padding may be left out");
        assert_eq!(ok("data:;base64,"), b"");
        let bad = [
            "data:image/png;base64,@@@",
            "data:image/png;base64,Q",
            "data:image/png;base64,QR==",
            "data:image/png;base64,QUJD=",
            "data:image/png,QUJD",
            "data:image/png;base64",
        ];
        for url in bad {
            assert!(matches!(data_url_bytes(url), Some(Err(EngineError::BadImageUrl(_)))), "{url}");
        }
        assert!(data_url_bytes("https://example.com/a.png").is_none());
    }

    #[test]
    fn image_keys_are_equal_only_for_equal_bytes_and_settings() {
        let opts = PreprocessOptions::default();
        let bytes = b"the bytes of one image";
        let key = Key::of(bytes, &opts, b"");
        assert_eq!(key, Key::of(bytes, &opts.clone(), b""));
        assert_ne!(key, Key::of(b"the bytes of one imagf", &opts, b""));
        assert_ne!(key, Key::of(b"the bytes of one image\0", &opts, b""));
        assert_ne!(key, Key::of(bytes, &opts, b"qwen2vl"), "another encoder's settings");
        assert_ne!(Key::of(bytes, &opts, b"q"), Key::of(b"qthe bytes of one image", &opts, b""));
        let others = [
            PreprocessOptions { max_edge: 28, ..opts.clone() },
            PreprocessOptions { max_pixels: 1000, ..opts.clone() },
            PreprocessOptions { apply_exif_orientation: false, ..opts.clone() },
            PreprocessOptions { min_area: Some(0), ..opts.clone() },
            PreprocessOptions { max_area: Some(1024), ..opts.clone() },
            PreprocessOptions { min_area: Some(1024), ..opts.clone() },
        ];
        for other in &others {
            assert_ne!(key, Key::of(bytes, other, b""), "{other:?}");
        }
        assert_ne!(Key::of(bytes, &others[4], b""), Key::of(bytes, &others[5], b""), "which bound is set");
    }
}
