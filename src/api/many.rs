//! Several chat requests through one parallel run (`Engine::parallel`): each admitted in
//! order when a slot is free, prefilled and decoded in batched steps with the others, its
//! stream chunks and its end reported by index as they come. A request whose `abort` flag is
//! set ends before the next step (finish reason `abort`). The Batch API's lines (`batch.rs`,
//! `webvlm batch --parallel`) and the package's concurrent requests (`web`) run this way;
//! `webvlm serve --parallel` runs its own loop, as its requests arrive while others run.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::Value;

use super::{prepare, ApiError, ChatRequest, Prepared, Reply};
use crate::engine::{Engine, EngineError, Parallel, ParallelEvent, SeqId, StepOutput, Wait};

/// One request of a [`run_many`] call: the parsed request (or why it cannot run) and the
/// flag that ends it early.
pub struct ManyRequest {
    pub request: Result<ChatRequest, ApiError>,
    pub abort: Option<Rc<Cell<bool>>>,
}

/// What [`run_many`] reports of request `i`.
#[derive(Debug)]
pub enum ManyEvent {
    /// A `chat.completion.chunk` of a streaming request.
    Chunk(Value),
    /// Its `chat.completion`, or its error; nothing of it follows.
    Done(Result<Value, ApiError>),
}

/// Runs `requests` up to `slots` at a time (see the module docs); `sink(i, event)` gets
/// request `i`'s chunks and end, and when it returns a [`Wait`] the next step waits for it
/// (a reader slower than the tokens).
pub async fn run_many(
    engine: &mut Engine,
    requests: Vec<ManyRequest>,
    load_url: &mut dyn FnMut(&str) -> Result<Vec<u8>, EngineError>,
    slots: u32,
    mut sink: impl FnMut(usize, ManyEvent) -> Option<Wait>,
) {
    let mut run = match engine.parallel(slots) {
        Ok(run) => run,
        Err(e) => {
            let error = ApiError::from(e);
            (0..requests.len()).for_each(|i| drop(sink(i, ManyEvent::Done(Err(error.clone())))));
            return;
        }
    };
    let mut running = Running { replies: HashMap::new(), waits: Vec::new() };
    let mut requests = requests.into_iter().enumerate().peekable();
    while requests.peek().is_some() || run.running() > 0 {
        while run.has_room() {
            let Some((i, ManyRequest { request, abort })) = requests.next() else { break };
            match admit(engine, &mut run, request, abort, load_url).await {
                Ok((id, reply, abort, events)) => {
                    running.forward(i, reply.start(), &mut sink);
                    running.replies.insert(id, Request { index: i, reply, abort });
                    running.dispatch(events, &mut sink);
                }
                Err(e) => running.wait(sink(i, ManyEvent::Done(Err(e)))),
            }
        }
        for wait in running.waits.drain(..) {
            wait.await;
        }
        let aborted: Vec<SeqId> = running.replies.iter().filter(|(_, r)| r.aborted()).map(|(&id, _)| id).collect();
        for id in aborted {
            match run.cancel(id).await {
                Ok(Some(generation)) => running.dispatch(vec![ParallelEvent::Done { id, generation }], &mut sink),
                Ok(None) => {}
                Err(error) => running.dispatch(vec![ParallelEvent::Failed { id, error }], &mut sink),
            }
        }
        if run.running() == 0 {
            continue;
        }
        match run.step(engine).await {
            Ok(events) => running.dispatch(events, &mut sink),
            Err(e) => {
                let error = ApiError::from(e);
                for (_, r) in running.replies.drain() {
                    drop(sink(r.index, ManyEvent::Done(Err(error.clone()))));
                }
            }
        }
    }
    for wait in running.waits {
        wait.await;
    }
}

/// Prepares request `request` and admits it to `run`: its sequence, reply and abort flag,
/// and what admission reported.
async fn admit(
    engine: &mut Engine,
    run: &mut Parallel,
    request: Result<ChatRequest, ApiError>,
    abort: Option<Rc<Cell<bool>>>,
    load_url: &mut dyn FnMut(&str) -> Result<Vec<u8>, EngineError>,
) -> Result<(SeqId, Reply, Option<Rc<Cell<bool>>>, Vec<ParallelEvent>), ApiError> {
    let Prepared { prompt, opts, reply } = prepare(engine, &request?, load_url, abort.clone())?;
    let (id, events) = run.admit(engine, &prompt, &opts).await?;
    Ok((id, reply, abort, events))
}

/// A request in the run.
struct Request {
    index: usize,
    reply: Reply,
    abort: Option<Rc<Cell<bool>>>,
}

impl Request {
    fn aborted(&self) -> bool {
        self.abort.as_ref().is_some_and(|a| a.get())
    }
}

/// The requests in the run, and the sink's waits to honour before the next step.
struct Running {
    replies: HashMap<SeqId, Request>,
    waits: Vec<Wait>,
}

impl Running {
    fn wait(&mut self, wait: Option<Wait>) {
        self.waits.extend(wait);
    }

    fn forward(&mut self, i: usize, chunk: Option<Value>, sink: &mut impl FnMut(usize, ManyEvent) -> Option<Wait>) {
        if let Some(chunk) = chunk {
            self.wait(sink(i, ManyEvent::Chunk(chunk)));
        }
    }

    /// Turns the run's events into each request's chunks and end.
    fn dispatch(&mut self, events: Vec<ParallelEvent>, sink: &mut impl FnMut(usize, ManyEvent) -> Option<Wait>) {
        for event in events {
            match event {
                ParallelEvent::Text { id, text, logprob } => {
                    let Some(r) = self.replies.get_mut(&id) else { continue };
                    let (i, chunk) = (r.index, r.reply.step(&StepOutput { text: &text, logprob: logprob.as_ref() }));
                    self.forward(i, chunk, sink);
                }
                ParallelEvent::Done { id, generation } => {
                    let Some(r) = self.replies.remove(&id) else { continue };
                    let (chunks, completion) = r.reply.finish(&generation);
                    chunks.into_iter().for_each(|chunk| self.forward(r.index, Some(chunk), sink));
                    self.wait(sink(r.index, ManyEvent::Done(Ok(completion))));
                }
                ParallelEvent::Failed { id, error } => {
                    let Some(r) = self.replies.remove(&id) else { continue };
                    self.wait(sink(r.index, ManyEvent::Done(Err(error.into()))));
                }
            }
        }
    }
}
