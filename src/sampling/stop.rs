//! OpenAI `stop` strings over streamed text: each delta is released at once except the
//! longest suffix that could still begin a stop string, so a stop string split over any
//! number of deltas is caught and never shown.
//!
//! Generation stops where the first stop string is complete (the smallest end offset;
//! among stop strings ending there, the one starting first), and the text from that stop
//! string's start on is dropped. Because the decision depends only on the text, the result
//! is the same however the text is split into deltas.

use super::ParamError;

/// OpenAI's limit on the number of stop strings.
pub const MAX_STOP_STRINGS: usize = 4;
/// Longest stop string accepted, in UTF-8 bytes (bounds the held-back text).
pub const MAX_STOP_BYTES: usize = 256;

/// What one delta releases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopStep {
    /// Text safe to show now (never part of a stop string).
    pub emit: String,
    /// A stop string completed: end generation; later deltas emit nothing.
    pub stopped: bool,
}

/// A streaming stop-string matcher for one generation.
#[derive(Clone, Debug)]
pub struct StopStrings {
    stops: Vec<String>,
    /// Text not yet released: a suffix that may begin a stop string.
    held: String,
    stopped: bool,
}

impl StopStrings {
    /// Checks OpenAI's rules (at most [`MAX_STOP_STRINGS`]) plus non-empty strings of at
    /// most [`MAX_STOP_BYTES`] bytes. An empty list never stops.
    pub fn new(stops: Vec<String>) -> Result<StopStrings, ParamError> {
        if stops.len() > MAX_STOP_STRINGS {
            return Err(ParamError::new("stop", format!("{} strings given, at most {MAX_STOP_STRINGS} allowed", stops.len())));
        }
        for s in &stops {
            if s.is_empty() {
                return Err(ParamError::new("stop", "stop strings must not be empty"));
            }
            if s.len() > MAX_STOP_BYTES {
                return Err(ParamError::new(
                    "stop",
                    format!("a stop string is {} bytes, at most {MAX_STOP_BYTES} allowed", s.len()),
                ));
            }
        }
        Ok(StopStrings { stops, held: String::new(), stopped: false })
    }

    /// True once a stop string has matched.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds the next decoded text and returns what can be shown.
    pub fn push(&mut self, delta: &str) -> StopStep {
        if self.stopped {
            return StopStep { emit: String::new(), stopped: true };
        }
        self.held.push_str(delta);
        if let Some(start) = self.first_match() {
            self.held.truncate(start);
            self.stopped = true;
            return StopStep { emit: std::mem::take(&mut self.held), stopped: true };
        }
        let split = self.held.len() - self.partial_suffix();
        let rest = self.held.split_off(split);
        StopStep { emit: std::mem::replace(&mut self.held, rest), stopped: false }
    }

    /// Releases the held-back text when generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Start of the stop string that completes first in the held text.
    fn first_match(&self) -> Option<usize> {
        let found = self.stops.iter().filter_map(|s| self.held.find(s.as_str()).map(|at| (at + s.len(), at)));
        found.min().map(|(_, start)| start)
    }

    /// Length of the longest suffix of the held text that is a proper prefix of some stop
    /// string (stop strings start on a char boundary, so such a suffix does too).
    fn partial_suffix(&self) -> usize {
        let longest = |s: &String| {
            (1..s.len().min(self.held.len() + 1))
                .rev()
                .find(|&k| s.is_char_boundary(k) && self.held.ends_with(&s[..k]))
                .unwrap_or(0)
        };
        self.stops.iter().map(longest).max().unwrap_or(0)
    }
}
