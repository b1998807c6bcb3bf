//! Mllama's cross-attention mask: which image tiles each text token sees, from the prompt's
//! `<|image|>` positions and each image's tile count (the processor's rule), and its form
//! for the cross-attention kernel (per-token tile rows, and the MLP row mask).
//! Reference: transformers' `processing_mllama.py` (`get_cross_attention_token_mask`,
//! `convert_sparse_cross_attention_mask_to_dense`) and `_prepare_cross_attention_mask` in
//! `modeling_mllama.py`.

/// The dense mask `[tokens][images][max_tiles]` (1 = visible) the processor builds: image k
/// is seen from its `<|image|>` token up to the next image token, or to the end for the last
/// image; the images of a run of adjacent `<|image|>` tokens all reach as far as the run's
/// last one does; only an image's first `num_tiles[k]` tiles are visible. Images beyond the
/// prompt's image tokens (or tokens beyond `num_tiles`) are ignored, as by the processor.
pub fn processor_mask(ids: &[u32], image_token: u32, num_tiles: &[u32], max_tiles: u32) -> Vec<u32> {
    let starts: Vec<usize> = ids.iter().enumerate().filter(|(_, &t)| t == image_token).map(|(i, _)| i).collect();
    let n_img = num_tiles.len();
    let mut spans: Vec<(usize, usize)> =
        starts.iter().enumerate().map(|(k, &s)| (s, starts.get(k + 1).copied().unwrap_or(ids.len()))).collect();
    // A run of adjacent image tokens: each reaches as far as the next image's span does.
    let mut last_end = ids.len();
    for span in spans.iter_mut().rev() {
        if span.0 + 1 == span.1 {
            span.1 = last_end;
        }
        last_end = span.1;
    }
    let mt = max_tiles as usize;
    let mut mask = vec![0u32; ids.len() * n_img * mt];
    for (k, &(start, end)) in spans.iter().enumerate().take(n_img) {
        let tiles = (num_tiles[k] as usize).min(mt);
        for t in start..end {
            mask[(t * n_img + k) * mt..][..tiles].fill(1);
        }
    }
    mask
}

/// The kernel's form of a dense mask `[tokens][tiles]` (tiles of every image one after
/// another): a token that sees no tile at all (text before the first image) sees every tile
/// (transformers' all-zero additive mask row), and its MLP output is dropped: `row_mask` is
/// 0 for it, 1 for the others.
pub fn kernel_mask(dense: &[u32], n_tiles: usize) -> (Vec<u32>, Vec<f32>) {
    let mut rows = dense.to_vec();
    let mut row_mask = Vec::with_capacity(dense.len() / n_tiles.max(1));
    for row in rows.chunks_mut(n_tiles.max(1)) {
        let seen = row.iter().any(|&v| v != 0);
        if !seen {
            row.fill(1);
        }
        row_mask.push(if seen { 1.0 } else { 0.0 });
    }
    (rows, row_mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_runs_and_tiles() {
        // Tokens: a <img0> b <img1><img2> c d; tiles 1, 2, 4 (max 4).
        let ids = [5, 9, 5, 9, 9, 5, 5];
        let m = processor_mask(&ids, 9, &[1, 2, 4], 4);
        let row = |t: usize| &m[t * 12..][..12];
        assert_eq!(row(0), [0; 12]);
        assert_eq!(row(1), [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(row(2), [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // The run img1 img2: both reach the end.
        assert_eq!(row(3), [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(row(6), [0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1]);
        let (rows, row_mask) = kernel_mask(&m, 12);
        assert_eq!(&rows[..12], [1; 12]);
        assert_eq!(row_mask, [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    }
}
