//! Image features in a prompt: every position whose id is the vocabulary's `[IMG]` takes the
//! next feature row, images in the order given (transformers' `masked_scatter` of the image
//! features into the input embeddings). The context copies the rows into the embeddings of
//! each chunk between the gather and the first block, one buffer copy per run of
//! consecutive `[IMG]` positions of one image (one per merged patch row).

use std::rc::Rc;

use super::ImageFeatures;
use crate::model::ModelError;

/// Images to place in a prompt.
#[derive(Clone, Copy)]
pub struct PromptImages<'a> {
    /// The `[IMG]` token id.
    pub token: u32,
    pub images: &'a [Rc<ImageFeatures>],
}

/// `rows` feature rows of image `image` from row `src_row` go to chunk row `dst_row`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RowRun {
    pub image: usize,
    pub src_row: u32,
    pub dst_row: u32,
    pub rows: u32,
}

impl PromptImages<'_> {
    /// Checks that the prompt's `[IMG]` count equals the feature rows and their width.
    pub(crate) fn check(&self, tokens: &[u32], dim: u32) -> Result<(), ModelError> {
        let slots = tokens.iter().filter(|&&t| t == self.token).count() as u64;
        let rows = self.images.iter().map(|f| f.n_tokens() as u64).sum::<u64>();
        if slots != rows {
            return Err(ModelError::ImageTokens { slots, rows });
        }
        match self.images.iter().find(|f| f.dim != dim) {
            Some(f) => Err(ModelError::ImageWidth { got: f.dim, want: dim }),
            None => Ok(()),
        }
    }

    /// The copies for the chunk `tokens[start..start + len]` of a checked prompt.
    pub(crate) fn runs(&self, tokens: &[u32], start: usize, len: usize) -> Vec<RowRun> {
        let sizes: Vec<u32> = self.images.iter().map(|f| f.n_tokens()).collect();
        let before = tokens[..start].iter().filter(|&&t| t == self.token).count() as u64;
        runs(&sizes, &tokens[start..start + len], self.token, before)
    }
}

/// Runs for one chunk whose first `[IMG]` takes global feature row `first` (rows counted
/// across `sizes`, the images' row counts in order).
fn runs(sizes: &[u32], chunk: &[u32], token: u32, first: u64) -> Vec<RowRun> {
    let mut out: Vec<RowRun> = Vec::new();
    let (mut image, mut row) = (0usize, first);
    for (pos, _) in chunk.iter().enumerate().filter(|(_, &t)| t == token) {
        while row >= sizes[image] as u64 {
            row -= sizes[image] as u64;
            image += 1;
        }
        let (src_row, dst_row) = (row as u32, pos as u32);
        match out.last_mut() {
            Some(r) if r.image == image && r.src_row + r.rows == src_row && r.dst_row + r.rows == dst_row => r.rows += 1,
            _ => out.push(RowRun { image, src_row, dst_row, rows: 1 }),
        }
        row += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: u32 = 10;
    const B: u32 = 12;
    const E: u32 = 13;

    fn run(image: usize, src_row: u32, dst_row: u32, rows: u32) -> RowRun {
        RowRun { image, src_row, dst_row, rows }
    }

    #[test]
    fn one_run_per_patch_row_and_image() {
        // Image 0: 2 x 2 merged patches, image 1: 1 x 3.
        let prompt = [1, I, I, B, I, I, E, 5, I, I, I, E, 6];
        assert_eq!(runs(&[4, 3], &prompt, I, 0), vec![run(0, 0, 1, 2), run(0, 2, 4, 2), run(1, 0, 8, 3)]);
    }

    #[test]
    fn chunks_continue_where_the_previous_chunk_stopped() {
        let prompt = [1, I, I, B, I, I, E, 5, I, I, I, E, 6];
        // Chunk [5..10) starts inside image 0's second row and ends inside image 1.
        assert_eq!(runs(&[4, 3], &prompt[5..10], I, 3), vec![run(0, 3, 0, 1), run(1, 0, 3, 2)]);
        // Two adjacent images with no separator still get separate runs.
        assert_eq!(runs(&[1, 1], &[I, I], I, 0), vec![run(0, 0, 0, 1), run(1, 0, 1, 1)]);
        assert!(runs(&[4], &[5, 6], I, 0).is_empty());
    }
}
