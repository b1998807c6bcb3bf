//! Reading the header off the front of a safetensors file: all at once from a byte
//! slice ([`parse_header`]) or pushed chunk by chunk as it streams in ([`HeaderParser`]).
//!
//! Reference: the safetensors format (<https://github.com/huggingface/safetensors>,
//! "Format"); the push interface mirrors `gguf::GgufHeaderParser`. The 8-byte length is
//! checked against [`MAX_HEADER_LEN`] before any buffer is sized from it, and the
//! parser's buffer grows only with bytes actually received.

use super::error::SafetensorsError;
use super::header::{SafetensorsHeader, MAX_HEADER_LEN};

/// Bytes of the little-endian header length that opens the file.
pub const LENGTH_PREFIX: u64 = 8;

/// The JSON length from the 8-byte prefix, checked against the limit.
fn header_len(prefix: [u8; 8]) -> Result<u64, SafetensorsError> {
    let len = u64::from_le_bytes(prefix);
    if len > MAX_HEADER_LEN {
        return Err(SafetensorsError::HeaderTooLarge { len, limit: MAX_HEADER_LEN });
    }
    Ok(len)
}

/// Parses the header from `bytes`, which hold at least the length prefix and the whole
/// JSON (the data section may follow, in part or whole). Tensor ranges are not checked
/// against a file length here: call [`SafetensorsHeader::validate_data`] with it.
pub fn parse_header(bytes: &[u8]) -> Result<SafetensorsHeader, SafetensorsError> {
    let Some(prefix) = bytes.first_chunk::<8>() else {
        return Err(SafetensorsError::TruncatedLength { len: bytes.len() as u64 });
    };
    let len = header_len(*prefix)?;
    let json = &bytes[8..];
    // `len` ≤ MAX_HEADER_LEN, so it fits usize on every target.
    let json =
        json.get(..len as usize).ok_or(SafetensorsError::TruncatedHeader { header_len: len, available: json.len() as u64 })?;
    SafetensorsHeader::from_json(json, LENGTH_PREFIX + len)
}

/// Incremental header parser, independent of where the bytes come from.
#[derive(Debug, Default)]
pub struct HeaderParser {
    /// The length prefix, or the JSON once the length is known.
    buf: Vec<u8>,
    /// The JSON length, once the prefix is complete.
    len: Option<u64>,
    done: bool,
    failed: bool,
}

impl HeaderParser {
    /// A parser at the start of a file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of the file consumed so far; once the header is returned, the start of the
    /// data section (`header.data_start`). Bytes of a chunk past that are not consumed.
    pub fn bytes_consumed(&self) -> u64 {
        match self.len {
            None => self.buf.len() as u64,
            Some(_) => LENGTH_PREFIX + self.buf.len() as u64,
        }
    }

    /// Whether the header has been returned.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// The error to report when the input ends now, before the header is complete.
    pub fn eof_error(&self) -> SafetensorsError {
        match self.len {
            None => SafetensorsError::TruncatedLength { len: self.buf.len() as u64 },
            Some(len) => SafetensorsError::TruncatedHeader { header_len: len, available: self.buf.len() as u64 },
        }
    }

    /// Feeds the next chunk. Returns the header, once, as soon as its last byte arrives;
    /// `Ok(None)` means more bytes are needed (or the header was returned already). The
    /// data section starts at `header.data_start` (the chunk's bytes past it are left to
    /// the caller). After an error every call fails with `ParserFailed`.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Option<SafetensorsHeader>, SafetensorsError> {
        if self.done {
            return Ok(None);
        }
        if self.failed {
            return Err(SafetensorsError::ParserFailed);
        }
        let result = self.run(chunk);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn run(&mut self, mut chunk: &[u8]) -> Result<Option<SafetensorsHeader>, SafetensorsError> {
        let len = match self.len {
            Some(len) => len,
            None => {
                chunk = take(&mut self.buf, chunk, LENGTH_PREFIX);
                let Some(prefix) = self.buf.first_chunk::<8>() else {
                    return Ok(None);
                };
                let len = header_len(*prefix)?;
                self.buf.clear();
                self.len = Some(len);
                len
            }
        };
        take(&mut self.buf, chunk, len);
        if (self.buf.len() as u64) < len {
            return Ok(None);
        }
        let header = SafetensorsHeader::from_json(&self.buf, LENGTH_PREFIX + len)?;
        self.done = true;
        Ok(Some(header))
    }
}

/// Moves bytes from `chunk` into `buf` until `buf` holds `want`; returns what is left.
fn take<'a>(buf: &mut Vec<u8>, chunk: &'a [u8], want: u64) -> &'a [u8] {
    let missing = want.saturating_sub(buf.len() as u64);
    let n = usize::try_from(missing).map_or(chunk.len(), |m| m.min(chunk.len()));
    buf.extend_from_slice(&chunk[..n]);
    &chunk[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str) -> Vec<u8> {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.extend_from_slice(&[0u8; 8]);
        bytes
    }

    #[test]
    fn push_parser_stops_at_the_data_section() {
        let bytes = file(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}  "#);
        let mut parser = HeaderParser::new();
        assert!(parser.feed(&bytes[..3]).unwrap().is_none());
        assert!(matches!(parser.eof_error(), SafetensorsError::TruncatedLength { len: 3 }));
        let header = parser.feed(&bytes[3..]).unwrap().unwrap();
        assert_eq!(parser.bytes_consumed(), header.data_start);
        assert_eq!(header.data_start, bytes.len() as u64 - 8);
        assert_eq!(header, parse_header(&bytes).unwrap());
        assert!(parser.feed(b"more").unwrap().is_none());
    }

    #[test]
    fn absurd_length_fails_before_allocating() {
        let bytes = (1u64 << 60).to_le_bytes();
        let mut parser = HeaderParser::new();
        assert!(matches!(parser.feed(&bytes), Err(SafetensorsError::HeaderTooLarge { len, .. }) if len == 1 << 60));
        assert!(matches!(parser.feed(b"{}"), Err(SafetensorsError::ParserFailed)));
    }
}
