//! RoPE positions of a sequence whose decoder uses multimodal RoPE (Qwen3.5): the positions
//! of a token are no longer its KV row. Text tokens have three equal positions counting on
//! from the largest position before them + 1; image tokens have (t, h, w) positions
//! (`super::vision::mrope_positions`, transformers' `get_rope_index`). After an image the
//! text positions run behind (or ahead of) the rows by a delta (transformers' `rope_deltas`),
//! which [`RopeDeltas`] records per sequence so that decode steps, and passes appended to a
//! cached sequence, continue at the right position.

use super::vision::{mrope_positions, MropePositions, PromptImages};
use super::ModelError;

/// Where the text position of each KV row departs from the row: `(row, delta)` pairs in row
/// order, each meaning "from `row` on, a text token at row r has position r + delta" (until
/// the next pair). Empty for text-only sequences. A pair is recorded at the end of each
/// image; rows inside an image have the delta from before it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RopeDeltas(Vec<(u32, i64)>);

impl RopeDeltas {
    /// The delta of a text token at `row`.
    pub fn at(&self, row: u32) -> i64 {
        self.0.iter().rev().find(|(r, _)| *r <= row).map_or(0, |&(_, d)| d)
    }

    /// Keeps what describes the first `rows` rows (and the token after them).
    pub fn truncate(&mut self, rows: u32) {
        self.0.retain(|&(r, _)| r <= rows);
    }

    /// From `row` on the delta is `delta` (later pairs are dropped).
    pub fn set(&mut self, row: u32, delta: i64) {
        self.0.retain(|&(r, _)| r < row);
        if self.at(row) != delta {
            self.0.push((row, delta));
        }
    }

    /// The pairs up to `rows` (a snapshot of a prefix).
    pub fn prefix(&self, rows: u32) -> RopeDeltas {
        let mut d = self.clone();
        d.truncate(rows);
        d
    }
}

/// The positions of one pass over `tokens` whose first token is KV row `row0`.
pub(crate) struct PassPositions {
    /// The text position of `tokens[0]`: the position offset + `row0` + the delta there.
    base: i64,
    row0: u32,
    /// The delta at `row0`.
    delta0: i64,
    /// The pass's own M-RoPE positions (from 0), when it has images.
    mrope: Option<MropePositions>,
    /// `(i, delta)`: from `tokens[i]` on, the delta relative to `delta0` (image ends).
    changes: Vec<(usize, i64)>,
}

impl PassPositions {
    /// Positions of `tokens` at rows `row0..`, after a sequence whose deltas are `deltas`
    /// and whose positions start at `offset`; image tokens are those `images` fills.
    pub fn new(
        tokens: &[u32],
        row0: u32,
        offset: u32,
        deltas: &RopeDeltas,
        images: Option<&PromptImages<'_>>,
    ) -> Result<PassPositions, ModelError> {
        let delta0 = deltas.at(row0);
        let base = offset as i64 + row0 as i64 + delta0;
        let (mrope, changes) = match images.filter(|im| !im.images.is_empty()) {
            None => (None, Vec::new()),
            Some(im) => {
                let grids: Vec<_> = im.images.iter().map(|f| (1, f.rows, f.cols)).collect();
                let m = mrope_positions(tokens, im.token, &grids)?;
                let changes = image_ends(tokens, im.token, &m);
                (Some(m), changes)
            }
        };
        Ok(PassPositions { base, row0, delta0, mrope, changes })
    }

    /// `[3][range.len()]` positions of `tokens[range]`, axis by axis.
    pub fn chunk(&self, range: std::ops::Range<usize>) -> Vec<u32> {
        let at = |p: i64| u32::try_from(self.base + p).unwrap_or(0);
        match &self.mrope {
            None => {
                let t: Vec<u32> = range.map(|i| at(i as i64)).collect();
                [t.as_slice(); 3].concat()
            }
            Some(m) => m.axes.iter().flat_map(|a| a[range.clone()].iter().map(|&p| at(p as i64))).collect(),
        }
    }

    /// Records in `deltas` the image ends among `tokens[range]` (after the pass ran it).
    pub fn record(&self, range: std::ops::Range<usize>, deltas: &mut RopeDeltas) {
        for &(i, d) in self.changes.iter().filter(|(i, _)| *i > range.start && *i <= range.end) {
            deltas.set(self.row0 + i as u32, self.delta0 + d);
        }
    }
}

/// `(i, delta)` at each `i` that ends a run of image tokens: the next text position (the
/// largest position before `i` + 1) minus `i`.
fn image_ends(tokens: &[u32], pad: u32, m: &MropePositions) -> Vec<(usize, i64)> {
    let mut out = Vec::new();
    let mut max = 0u32;
    for i in 0..tokens.len() {
        max = max.max(m.axes[0][i]).max(m.axes[1][i]).max(m.axes[2][i]);
        let ends = tokens[i] == pad && tokens.get(i + 1) != Some(&pad);
        if ends {
            out.push((i + 1, max as i64 + 1 - (i as i64 + 1)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_hold_per_row_and_cut_back() {
        let mut d = RopeDeltas::default();
        d.set(8, -3);
        d.set(20, -5);
        assert_eq!((d.at(0), d.at(7), d.at(8), d.at(19), d.at(25)), (0, 0, -3, -3, -5));
        assert_eq!(d.prefix(10).at(25), -3);
        d.truncate(5);
        assert_eq!(d, RopeDeltas::default());
        d.set(4, 0);
        assert_eq!(d, RopeDeltas::default(), "a delta equal to the one before adds nothing");
    }

    #[test]
    fn image_ends_give_the_text_delta() {
        // One image of 2 x 3 merged patches: text after it runs 3 behind its rows.
        let tokens = [1, 9, 9, 9, 9, 9, 9, 2];
        let m = mrope_positions(&tokens, 9, &[(1, 2, 3)]).unwrap();
        assert_eq!(image_ends(&tokens, 9, &m), [(7, -3)]);
        assert_eq!(m.axes[0][7] as i64, 7 - 3);
    }
}
