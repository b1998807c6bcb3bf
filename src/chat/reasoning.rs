//! Splits a reply into reasoning (`<think>…</think>`, or `[THINK]…[/THINK]` in Mistral's
//! reasoning models: [`ThinkTags`]) and answer, as vLLM's reasoning parsers (`deepseek_r1`,
//! `qwen3`, `mistral`) return `reasoning_content` apart from `content`.
//!
//! A reply is in a think block from its start when the prompt left one open (Qwen3.5 with
//! thinking on ends the prompt with `<think>\n`; a `<think>` the model writes again first is
//! dropped) or when the reply itself starts with `<think>`; the text up to `</think>` is
//! reasoning, the rest (leading newlines dropped, as the templates write `</think>\n\n`)
//! is content. A reply that never opened a block is all content. [`ReasoningSplitter`] does
//! the same on streamed deltas cut anywhere, tags included: a delta that could be the start
//! of a tag is held back until it can be told.

/// The tags a family's think block is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThinkTags {
    pub open: &'static str,
    pub close: &'static str,
}

impl ThinkTags {
    /// Qwen3, Qwen3.5, DeepSeek-R1.
    pub const ANGLE: ThinkTags = ThinkTags { open: "<think>", close: "</think>" };
    /// Mistral's reasoning models (Magistral, Ministral 3 Reasoning): special tokens.
    pub const MISTRAL: ThinkTags = ThinkTags { open: "[THINK]", close: "[/THINK]" };

    /// The tags a chat template writes (only then is a reply split).
    pub fn detect(template_source: &str) -> Option<ThinkTags> {
        [Self::ANGLE, Self::MISTRAL].into_iter().find(|t| template_source.contains(t.close))
    }

    /// Whether `prompt` ends inside a think block: its last open tag has no close after it.
    pub fn prompt_opens(self, prompt: &str) -> bool {
        match (prompt.rfind(self.open), prompt.rfind(self.close)) {
            (Some(open), Some(close)) => open > close,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// `(reasoning, content)` of a whole reply; reasoning is `None` when there was no block.
pub fn split_reasoning(reply: &str, tags: ThinkTags, prompt_opened: bool) -> (Option<String>, String) {
    let mut splitter = ReasoningSplitter::new(tags, prompt_opened);
    let (mut reasoning, mut content) = splitter.push(reply);
    let (r, c) = splitter.finish();
    reasoning.push_str(&r);
    content.push_str(&c);
    (splitter.saw_reasoning().then_some(reasoning), content)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing seen yet: the reply may still start with `<think>`.
    Start,
    /// The prompt opened the block and nothing is seen yet: a `<think>` the model writes
    /// again at the start is dropped (vLLM's parsers do the same).
    OpenedStart,
    /// Inside the think block.
    Thinking,
    /// After `</think>`, before the first content character (newlines are dropped here).
    AfterThink,
    /// Plain content.
    Content,
}

/// Streaming [`split_reasoning`]: feed deltas with [`push`](Self::push), end with
/// [`finish`](Self::finish); the concatenated outputs equal the whole-reply split.
#[derive(Debug, Clone)]
pub struct ReasoningSplitter {
    tags: ThinkTags,
    state: State,
    held: String,
    saw_reasoning: bool,
}

impl ReasoningSplitter {
    /// A splitter for a reply whose prompt left a think block open (`prompt_opened`) or not.
    pub fn new(tags: ThinkTags, prompt_opened: bool) -> Self {
        let state = if prompt_opened { State::OpenedStart } else { State::Start };
        Self { tags, state, held: String::new(), saw_reasoning: prompt_opened }
    }

    /// Whether the reply had a think block (reasoning, possibly empty).
    pub fn saw_reasoning(&self) -> bool {
        self.saw_reasoning
    }

    /// Feeds `delta`; returns the `(reasoning, content)` text it settles.
    pub fn push(&mut self, delta: &str) -> (String, String) {
        let mut reasoning = String::new();
        let mut content = String::new();
        self.held.push_str(delta);
        let ThinkTags { open, close } = self.tags;
        loop {
            match self.state {
                State::Start => {
                    let text = self.held.trim_start_matches(['\n', ' ']);
                    if let Some(rest) = text.strip_prefix(open) {
                        self.held = rest.to_string();
                        self.state = State::Thinking;
                        self.saw_reasoning = true;
                    } else if open.starts_with(text) {
                        return (reasoning, content); // maybe a tag still coming
                    } else {
                        self.state = State::Content;
                    }
                }
                State::OpenedStart => {
                    if let Some(rest) = self.held.strip_prefix(open) {
                        self.held = rest.to_string();
                    } else if open.starts_with(self.held.as_str()) {
                        return (reasoning, content); // maybe a repeated tag still coming
                    }
                    self.state = State::Thinking;
                }
                State::Thinking => {
                    if let Some(at) = self.held.find(close) {
                        reasoning.push_str(&self.held[..at]);
                        self.held.drain(..at + close.len());
                        self.state = State::AfterThink;
                    } else {
                        let keep = partial_suffix(&self.held, close);
                        let cut = self.held.len() - keep;
                        reasoning.push_str(&self.held[..cut]);
                        self.held.drain(..cut);
                        return (reasoning, content);
                    }
                }
                State::AfterThink => {
                    let trimmed = self.held.trim_start_matches('\n');
                    if trimmed.is_empty() {
                        self.held.clear();
                        return (reasoning, content);
                    }
                    self.held = trimmed.to_string();
                    self.state = State::Content;
                }
                State::Content => {
                    content.push_str(&self.held);
                    self.held.clear();
                    return (reasoning, content);
                }
            }
        }
    }

    /// Ends the reply: releases what was held back.
    pub fn finish(&mut self) -> (String, String) {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Thinking | State::OpenedStart => (held, String::new()),
            State::Start | State::Content => {
                self.state = State::Content;
                (String::new(), held)
            }
            State::AfterThink => (String::new(), String::new()),
        }
    }
}

/// Length of the longest proper prefix of `tag` that `text` ends with.
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len()).rev().find(|&n| text.ends_with(&tag[..n])).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way of cutting `reply` into three deltas gives the whole-reply split.
    fn check_all_cuts(reply: &str, opened: bool, reasoning: Option<&str>, content: &str) {
        check_cuts_with(ThinkTags::ANGLE, reply, opened, reasoning, content);
    }

    fn check_cuts_with(tags: ThinkTags, reply: &str, opened: bool, reasoning: Option<&str>, content: &str) {
        assert_eq!(split_reasoning(reply, tags, opened), (reasoning.map(str::to_string), content.to_string()), "{reply:?}");
        let bounds: Vec<usize> = (0..=reply.len()).filter(|&i| reply.is_char_boundary(i)).collect();
        for &a in &bounds {
            for &b in bounds.iter().filter(|&&b| b >= a) {
                let mut s = ReasoningSplitter::new(tags, opened);
                let (mut r, mut c) = (String::new(), String::new());
                for piece in [&reply[..a], &reply[a..b], &reply[b..]] {
                    let (dr, dc) = s.push(piece);
                    r += &dr;
                    c += &dc;
                }
                let (dr, dc) = s.finish();
                r += &dr;
                c += &dc;
                assert_eq!((s.saw_reasoning().then_some(r.as_str()), c.as_str()), (reasoning, content), "{reply:?} cut {a}, {b}");
            }
        }
    }

    #[test]
    fn prompt_opened_block() {
        check_all_cuts("Let me see.\n</think>\n\nParis.", true, Some("Let me see.\n"), "Paris.");
        check_all_cuts("no end tag yet", true, Some("no end tag yet"), "");
        check_all_cuts("</think>\n\nx < y", true, Some(""), "x < y");
        check_all_cuts("a </thin b</think>c", true, Some("a </thin b"), "c");
        check_all_cuts("<think>\nagain</think>x", true, Some("\nagain"), "x");
        check_all_cuts("<thin", true, Some("<thin"), "");
    }

    #[test]
    fn reply_opens_block() {
        check_all_cuts("<think>hmm</think>Answer <think> stays", false, Some("hmm"), "Answer <think> stays");
        check_all_cuts("\n<think>\nx\n</think>\n\ny", false, Some("\nx\n"), "y");
    }

    #[test]
    fn no_block_is_all_content() {
        check_all_cuts("Plain </think> answer", false, None, "Plain </think> answer");
        check_all_cuts("<thi", false, None, "<thi");
        check_all_cuts("", false, None, "");
    }

    #[test]
    fn mistral_tags() {
        let m = ThinkTags::MISTRAL;
        check_cuts_with(m, "[THINK]Paris is the capital.[/THINK]Paris.", false, Some("Paris is the capital."), "Paris.");
        check_cuts_with(m, "[THINK]look up[/THINK][TOOL_CALLS]f[ARGS]{}", false, Some("look up"), "[TOOL_CALLS]f[ARGS]{}");
        check_cuts_with(m, "no block <think>", false, None, "no block <think>");
    }

    #[test]
    fn prompt_state() {
        let angle = ThinkTags::ANGLE;
        assert!(angle.prompt_opens("<|im_start|>assistant\n<think>\n"));
        assert!(!angle.prompt_opens("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
        assert!(!angle.prompt_opens("<|im_start|>assistant\n"));
        assert_eq!(ThinkTags::detect("{{ '<think>\\n\\n</think>' }}"), Some(angle));
        assert_eq!(ThinkTags::detect("{{ '[THINK]' + t + '[/THINK]' }}"), Some(ThinkTags::MISTRAL));
        assert_eq!(ThinkTags::detect("{{ messages }}"), None);
    }
}
