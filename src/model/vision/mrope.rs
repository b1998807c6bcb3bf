//! Multimodal RoPE positions of a Qwen2-VL-family prompt (transformers'
//! `Qwen3_5Model.get_rope_index` for images): each token has a (t, h, w) position. Text
//! tokens have all three equal, counting on from the previous token's largest position + 1;
//! the `t × rows × cols` image tokens of one image (after the 2x2 merge) start at the next
//! text position `s` and take `(s + t_i, s + row, s + col)` in row-major order; text after
//! the image continues from the image's largest position + 1. The text decoder applies its
//! interleaved M-RoPE with these; generation continues at [`MropePositions::next`].

use crate::model::ModelError;

/// The three position streams of a prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MropePositions {
    /// `[3][n_tokens]`: temporal, height and width positions.
    pub axes: [Vec<u32>; 3],
    /// The position of the token after the prompt (all three axes; transformers' `rope_deltas`
    /// is `next - n_tokens`).
    pub next: u32,
}

impl MropePositions {
    /// transformers' `rope_deltas`: how far the text positions after the prompt run behind
    /// (negative) or ahead of the token index.
    pub fn rope_delta(&self) -> i64 {
        self.next as i64 - self.axes[0].len() as i64
    }
}

/// The positions of an expanded prompt `tokens` whose images are the runs of `image_pad`;
/// `grids[i]` is image i's `(t, rows, cols)` after the merge (the encoder's feature grid,
/// `t` = 1 for a still image). Fails when the pads do not match the grids.
pub fn mrope_positions(tokens: &[u32], image_pad: u32, grids: &[(u32, u32, u32)]) -> Result<MropePositions, ModelError> {
    let mut axes: [Vec<u32>; 3] = std::array::from_fn(|_| Vec::with_capacity(tokens.len()));
    let mut next = 0u32;
    let mut images = grids.iter();
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] != image_pad {
            axes.iter_mut().for_each(|a| a.push(next));
            next += 1;
            i += 1;
            continue;
        }
        let &(t, rows, cols) = images
            .next()
            .ok_or_else(|| ModelError::Invalid(format!("more image pads in the prompt than the {} images", grids.len())))?;
        let n = t as usize * rows as usize * cols as usize;
        if n == 0 || tokens.len() < i + n || tokens[i..i + n].iter().any(|&x| x != image_pad) {
            return Err(ModelError::Invalid(format!("image of {t}x{rows}x{cols} tokens does not match the pads at {i}")));
        }
        for ti in 0..t {
            for r in 0..rows {
                for c in 0..cols {
                    axes[0].push(next + ti);
                    axes[1].push(next + r);
                    axes[2].push(next + c);
                }
            }
        }
        next += t.max(rows).max(cols);
        i += n;
    }
    if images.next().is_some() {
        return Err(ModelError::Invalid(format!("fewer image pads in the prompt than the {} images", grids.len())));
    }
    Ok(MropePositions { axes, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_continues_after_the_largest_image_position() {
        let p = mrope_positions(&[1, 9, 9, 9, 9, 9, 9, 2], 9, &[(1, 2, 3)]).unwrap();
        assert_eq!(p.axes[0], [0, 1, 1, 1, 1, 1, 1, 4]);
        assert_eq!(p.axes[1], [0, 1, 1, 1, 2, 2, 2, 4]);
        assert_eq!(p.axes[2], [0, 1, 2, 3, 1, 2, 3, 4]);
        assert_eq!((p.next, p.rope_delta()), (5, -3));
        assert!(mrope_positions(&[9, 9], 9, &[(1, 1, 3)]).is_err());
        assert!(mrope_positions(&[9], 9, &[]).is_err());
        assert!(mrope_positions(&[1], 9, &[(1, 1, 1)]).is_err());
    }
}
