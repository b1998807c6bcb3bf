//! A request's `n` choices (OpenAI's `n`): one [`Reply`] per choice, their stream chunks
//! numbered by choice (`choices[0].index`), and their `chat.completion` objects merged into
//! one when the last choice ends — the choices in order, the usage counting the prompt once
//! and every choice's tokens (timings and cached tokens are the first choice's: it prefilled
//! the prompt the others copied). A request of one choice is the same with `n` = 1.

use serde_json::{json, Value};

use super::response::{self, ResponseMeta};
use super::Reply;
use crate::engine::{Generation, StepOutput};

/// The replies of a request's choices (see the module docs).
pub struct Choices {
    meta: ResponseMeta,
    /// By choice: its reply while it runs.
    replies: Vec<Option<Reply>>,
    /// By choice: its `chat.completion` once it ended.
    completions: Vec<Option<Value>>,
    stream: bool,
    include_usage: bool,
}

impl Choices {
    pub(super) fn new(meta: ResponseMeta, replies: Vec<Reply>, stream: bool, include_usage: bool) -> Choices {
        let completions = vec![None; replies.len()];
        Choices { meta, replies: replies.into_iter().map(Some).collect(), completions, stream, include_usage }
    }

    /// Choices asked for.
    pub fn n(&self) -> u32 {
        self.replies.len() as u32
    }

    /// The stream's first chunks (each choice's role), when streaming.
    pub fn start(&self) -> Vec<Value> {
        let starts = self.replies.iter().enumerate().filter_map(|(i, r)| r.as_ref()?.start().map(|chunk| numbered(chunk, i)));
        starts.collect()
    }

    /// The chunk of a step of choice `choice`, when streaming and the step settles something.
    pub fn step(&mut self, choice: usize, step: &StepOutput<'_>) -> Option<Value> {
        let reply = self.replies.get_mut(choice)?.as_mut()?;
        reply.step(step).map(|chunk| numbered(chunk, choice))
    }

    /// Choice `choice` ended with `g`: its last chunks, and when it was the last to end the
    /// usage chunk (streaming with `include_usage`) and the request's `chat.completion`.
    pub fn finish(&mut self, choice: usize, g: &Generation) -> (Vec<Value>, Option<Value>) {
        let Some(reply) = self.replies.get_mut(choice).and_then(Option::take) else { return (Vec::new(), None) };
        let (chunks, completion) = reply.finish(g);
        let mut chunks: Vec<Value> = chunks.into_iter().map(|chunk| numbered(chunk, choice)).collect();
        self.completions[choice] = Some(completion);
        let Some(done) = self.completions.iter().map(Option::as_ref).collect::<Option<Vec<&Value>>>() else {
            return (chunks, None);
        };
        let completion = merged(&done);
        if self.stream && self.include_usage {
            chunks.push(response::usage_chunk(&self.meta, completion["usage"].clone()));
        }
        (chunks, Some(completion))
    }
}

/// `chunk` (of one choice's reply) as choice `index`'s.
fn numbered(mut chunk: Value, index: usize) -> Value {
    if let Some(choice) = chunk.pointer_mut("/choices/0") {
        choice["index"] = json!(index);
    }
    chunk
}

/// The `chat.completion` of every choice's (in order): their choices, numbered, and the usage
/// with the prompt counted once.
fn merged(completions: &[&Value]) -> Value {
    let mut out = completions[0].clone();
    let choices = completions.iter().enumerate().map(|(i, c)| {
        let mut choice = c["choices"][0].clone();
        choice["index"] = json!(i);
        choice
    });
    out["choices"] = choices.collect();
    let generated: u64 = completions.iter().filter_map(|c| c["usage"]["completion_tokens"].as_u64()).sum();
    let prompt = out["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    out["usage"]["completion_tokens"] = json!(generated);
    out["usage"]["total_tokens"] = json!(prompt + generated);
    out
}
