//! How an encoder's images sit in a prompt. The chat template writes one placeholder token
//! per image; the engine replaces it by the image's token layout, whose `fill` positions take
//! the image's feature rows in order ([`super::PromptImages`]). Each encoder defines its own.

/// The image tokens of one encoder's layout, looked up by name in the vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptLayout {
    /// Pixtral (transformers' `PixtralProcessor`): `([IMG] × cols + [IMG_BREAK]) × rows`,
    /// the last token replaced by `[IMG_END]`; the template's placeholder is `[IMG]`.
    Pixtral { img: u32, brk: u32, end: u32 },
}

impl PromptLayout {
    /// Pixtral's layout, if the vocabulary has `[IMG]`, `[IMG_BREAK]` and `[IMG_END]`.
    pub fn pixtral(lookup: &dyn Fn(&str) -> Option<u32>) -> Option<PromptLayout> {
        Some(PromptLayout::Pixtral { img: lookup("[IMG]")?, brk: lookup("[IMG_BREAK]")?, end: lookup("[IMG_END]")? })
    }

    /// The token the chat template writes for each image.
    pub fn placeholder(&self) -> u32 {
        match *self {
            PromptLayout::Pixtral { img, .. } => img,
        }
    }

    /// The token whose positions take the image's feature rows.
    pub fn fill(&self) -> u32 {
        match *self {
            PromptLayout::Pixtral { img, .. } => img,
        }
    }

    /// The tokens of an image of `rows x cols` feature rows.
    pub fn image(&self, rows: u32, cols: u32) -> Vec<u32> {
        match *self {
            PromptLayout::Pixtral { img, brk, end } => {
                let mut ids = Vec::with_capacity(self.image_len(rows, cols));
                for _ in 0..rows {
                    ids.extend(std::iter::repeat_n(img, cols as usize));
                    ids.push(brk);
                }
                if let Some(last) = ids.last_mut() {
                    *last = end;
                }
                ids
            }
        }
    }

    /// The length of [`Self::image`].
    pub fn image_len(&self, rows: u32, cols: u32) -> usize {
        match self {
            PromptLayout::Pixtral { .. } => rows as usize * (cols as usize + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixtral_rows_end_with_breaks_and_the_image_with_its_end_token() {
        let layout = PromptLayout::Pixtral { img: 10, brk: 12, end: 13 };
        assert_eq!(layout.image(2, 3), [10, 10, 10, 12, 10, 10, 10, 13]);
        assert_eq!(layout.image_len(2, 3), 8);
        let names = |s: &str| [("[IMG]", 10), ("[IMG_BREAK]", 12), ("[IMG_END]", 13)].iter().find(|n| n.0 == s).map(|n| n.1);
        assert_eq!(PromptLayout::pixtral(&names), Some(layout));
        assert_eq!(PromptLayout::pixtral(&|s: &str| (s == "[IMG]").then_some(10)), None);
    }
}
