//! How an encoder's images sit in a prompt. The chat template writes one placeholder token
//! per image; the engine replaces it by the image's token layout, whose `fill` positions take
//! the image's feature rows in order ([`super::PromptImages`]). Each encoder defines its own.

/// The image tokens of one encoder's layout, looked up by name in the vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptLayout {
    /// Pixtral (transformers' `PixtralProcessor`): `([IMG] × cols + [IMG_BREAK]) × rows`,
    /// the last token replaced by `[IMG_END]`; the template's placeholder is `[IMG]`.
    Pixtral { img: u32, brk: u32, end: u32 },
    /// Qwen2-VL family (Qwen3-VL, Qwen3.5; transformers' `Qwen3VLProcessor`): the chat
    /// template writes `<|vision_start|><|image_pad|><|vision_end|>` per image and the
    /// processor repeats `<|image_pad|>` once per merged patch, so an image is
    /// `<|vision_start|>` + `<|image_pad|>` × (rows · cols) + `<|vision_end|>` in the prompt,
    /// of which [`Self::image`] gives the pads (the placeholder they replace sits between
    /// the template's start and end tokens).
    QwenVl { vision_start: u32, image_pad: u32, vision_end: u32 },
}

impl PromptLayout {
    /// Pixtral's layout, if the vocabulary has `[IMG]`, `[IMG_BREAK]` and `[IMG_END]`.
    pub fn pixtral(lookup: &dyn Fn(&str) -> Option<u32>) -> Option<PromptLayout> {
        Some(PromptLayout::Pixtral { img: lookup("[IMG]")?, brk: lookup("[IMG_BREAK]")?, end: lookup("[IMG_END]")? })
    }

    /// The Qwen2-VL family's layout, if the vocabulary has `<|vision_start|>`,
    /// `<|image_pad|>` and `<|vision_end|>`.
    pub fn qwen_vl(lookup: &dyn Fn(&str) -> Option<u32>) -> Option<PromptLayout> {
        Some(PromptLayout::QwenVl {
            vision_start: lookup("<|vision_start|>")?,
            image_pad: lookup("<|image_pad|>")?,
            vision_end: lookup("<|vision_end|>")?,
        })
    }

    /// The token the chat template writes for each image.
    pub fn placeholder(&self) -> u32 {
        match *self {
            PromptLayout::Pixtral { img, .. } => img,
            PromptLayout::QwenVl { image_pad, .. } => image_pad,
        }
    }

    /// The token whose positions take the image's feature rows.
    pub fn fill(&self) -> u32 {
        match *self {
            PromptLayout::Pixtral { img, .. } => img,
            PromptLayout::QwenVl { image_pad, .. } => image_pad,
        }
    }

    /// What a chat template writes for each image (Pixtral's `[IMG]`; Qwen's
    /// `<|vision_start|><|image_pad|><|vision_end|>`), holding [`Self::placeholder`].
    pub fn template_tokens(&self) -> Vec<u32> {
        match *self {
            PromptLayout::Pixtral { img, .. } => vec![img],
            PromptLayout::QwenVl { vision_start, image_pad, vision_end } => vec![vision_start, image_pad, vision_end],
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
            PromptLayout::QwenVl { image_pad, .. } => vec![image_pad; rows as usize * cols as usize],
        }
    }

    /// The length of [`Self::image`].
    pub fn image_len(&self, rows: u32, cols: u32) -> usize {
        match self {
            PromptLayout::Pixtral { .. } => rows as usize * (cols as usize + 1),
            PromptLayout::QwenVl { .. } => rows as usize * cols as usize,
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

    #[test]
    fn qwen_images_are_pads_between_the_templates_start_and_end() {
        let layout = PromptLayout::QwenVl { vision_start: 521, image_pad: 524, vision_end: 522 };
        assert_eq!(layout.image(1, 3), [524, 524, 524]);
        assert_eq!(layout.image_len(2, 3), 6);
        assert_eq!((layout.placeholder(), layout.fill()), (524, 524));
        let names = |s: &str| {
            [("<|vision_start|>", 521), ("<|image_pad|>", 524), ("<|vision_end|>", 522)].iter().find(|n| n.0 == s).map(|n| n.1)
        };
        assert_eq!(PromptLayout::qwen_vl(&names), Some(layout));
        assert_eq!(PromptLayout::qwen_vl(&|s: &str| (s == "<|image_pad|>").then_some(524)), None);
    }
}
