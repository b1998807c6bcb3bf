//! Several chat requests through one parallel run (`Engine::parallel`): each admitted in
//! order when slots are free for its `n` choices, prefilled and decoded in batched steps with
//! the others, its stream chunks and its end reported by index as they come. A request whose
//! `abort` flag is set ends before the next step (finish reason `abort`). The Batch API's
//! lines (`batch.rs`, `webvlm batch --parallel`), the package's concurrent requests (`web`)
//! and a request of `n` > 1 choices ([`super::run`]) run this way; `webvlm serve --parallel`
//! runs its own loop, as its requests arrive while others run, on the same
//! [`RunningRequests`].

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::Value;

use super::{prepare, ApiError, ChatRequest, Choices, Prepared};
use crate::engine::{Engine, EngineError, Parallel, ParallelEvent, SeqId, StepOutput, Wait};

/// One request of a [`run_many`] call: the parsed request (or why it cannot run) and the
/// flag that ends it early.
pub struct ManyRequest {
    pub request: Result<ChatRequest, ApiError>,
    pub abort: Option<Rc<Cell<bool>>>,
}

/// Where the requests of a [`run_many`] call come from. Any iterator of them is one (all
/// known at the start); a source that has none now and more later lets requests join the run.
pub trait ManySource {
    /// The next request, when one is ready: asked before each step unless one already
    /// waits for free slots.
    fn next_request(&mut self) -> Option<ManyRequest>;

    /// What the next step waits for first, so that requests sent meanwhile can arrive (the
    /// browser's host yields to its message queue); nothing by default.
    fn before_step(&mut self) -> Option<Wait> {
        None
    }
}

impl<I: Iterator<Item = ManyRequest>> ManySource for I {
    fn next_request(&mut self) -> Option<ManyRequest> {
        self.next()
    }
}

/// What [`run_many`] reports of request `i`.
#[derive(Debug)]
pub enum ManyEvent {
    /// A `chat.completion.chunk` of a streaming request.
    Chunk(Value),
    /// Its `chat.completion`, or its error; nothing of it follows.
    Done(Result<Value, ApiError>),
}

/// Runs `requests` on up to `slots` sequences at a time (see the module docs), numbered in
/// the order they come; `sink(i, event)` gets request `i`'s chunks and end, and when it
/// returns a [`Wait`] the next step waits for it (a reader slower than the tokens). The run
/// ends when nothing runs and `requests` has nothing more; it is returned for
/// [`Engine::keep_parallel`] (`None` when it could not be made).
pub async fn run_many(
    engine: &mut Engine,
    mut requests: impl ManySource,
    load_url: &mut dyn FnMut(&str) -> Result<Vec<u8>, EngineError>,
    slots: u32,
    mut sink: impl FnMut(usize, ManyEvent) -> Option<Wait>,
) -> Option<Parallel> {
    let mut run = match engine.parallel(slots) {
        Ok(run) => run,
        Err(e) => {
            let error = ApiError::from(e);
            let mut index = 0;
            while requests.next_request().is_some() {
                drop(sink(index, ManyEvent::Done(Err(error.clone()))));
                index += 1;
            }
            return None;
        }
    };
    let mut deliver = |d: Delivery<'_, Request>| match d {
        Delivery::Chunk(r, chunk) => sink(r.index, ManyEvent::Chunk(chunk)),
        Delivery::End(r, end) => sink(r.index, ManyEvent::Done(end)),
    };
    let mut running = RunningRequests::new();
    let mut waits = Vec::new();
    let mut next: Option<(Request, Prepared)> = None;
    let mut count = 0;
    loop {
        // Admits in order while the next request's choices find free slots.
        loop {
            if next.is_none() {
                let Some(ManyRequest { request, abort }) = requests.next_request() else { break };
                let index = count;
                count += 1;
                let prepared = request.and_then(|req| prepare(engine, &req, load_url, abort.clone()));
                match prepared {
                    Ok(prepared) => next = Some((Request { index, abort }, prepared)),
                    Err(e) => waits.extend(deliver(Delivery::End(Request { index, abort }, Err(e)))),
                }
                continue;
            }
            let Some((request, prepared)) = next.take_if(|(_, p)| fits(&run, &p.choices)) else { break };
            waits.extend(running.admit(engine, &mut run, prepared, request, &mut deliver).await);
        }
        waits.extend(requests.before_step());
        for wait in waits.drain(..) {
            wait.await;
        }
        waits.extend(running.cancel_ended(&mut run, Request::aborted, &mut deliver).await);
        if run.running() == 0 {
            // Admission asked `requests` for more and had none.
            if next.is_none() {
                break;
            }
            continue;
        }
        match run.step(engine).await {
            Ok(events) => waits.extend(running.dispatch(events, &mut deliver)),
            Err(e) => waits.extend(running.fail_all(&ApiError::from(e), &mut deliver)),
        }
    }
    for wait in waits {
        wait.await;
    }
    Some(run)
}

/// Whether a request of `choices` can be admitted to `run` now: its choices find free slots
/// (or never could: admission then refuses it).
pub fn fits(run: &Parallel, choices: &Choices) -> bool {
    choices.n() > run.max_seqs() || choices.n() as usize <= run.free_slots()
}

/// A request of [`run_many`]: its place in the list and its abort flag.
struct Request {
    index: usize,
    abort: Option<Rc<Cell<bool>>>,
}

impl Request {
    fn aborted(&self) -> bool {
        self.abort.as_ref().is_some_and(|a| a.get())
    }
}

/// What [`RunningRequests`] hands its caller.
pub enum Delivery<'a, T> {
    /// A stream chunk of the request `T`.
    Chunk(&'a mut T, Value),
    /// The request's `chat.completion`, or its error: it left the run.
    End(T, Result<Value, ApiError>),
}

/// The requests of a parallel run, each with what its caller keeps (`T`) and the sequences
/// of its choices: the run's events turned into each request's chunks and end.
pub struct RunningRequests<T> {
    /// Each sequence's request and choice.
    seqs: HashMap<SeqId, (u64, usize)>,
    requests: HashMap<u64, (Choices, T)>,
    next_key: u64,
    /// Sequences of requests that another choice's failure ended: cancelled before the next
    /// step.
    orphans: Vec<SeqId>,
}

impl<T> Default for RunningRequests<T> {
    fn default() -> Self {
        RunningRequests { seqs: HashMap::new(), requests: HashMap::new(), next_key: 0, orphans: Vec::new() }
    }
}

impl<T> RunningRequests<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no request is running.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Admits a prepared request to `run` (its choices on as many sequences) and delivers
    /// its first chunks, or its end when admission refuses it.
    pub async fn admit(
        &mut self,
        engine: &mut Engine,
        run: &mut Parallel,
        Prepared { prompt, opts, choices }: Prepared,
        mut owner: T,
        deliver: &mut impl FnMut(Delivery<'_, T>) -> Option<Wait>,
    ) -> Vec<Wait> {
        let (ids, events) = match run.admit_choices(engine, &prompt, &opts, choices.n()).await {
            Ok(admitted) => admitted,
            Err(e) => return deliver(Delivery::End(owner, Err(e.into()))).into_iter().collect(),
        };
        let mut waits: Vec<Wait> = choices.start().into_iter().filter_map(|c| deliver(Delivery::Chunk(&mut owner, c))).collect();
        let key = self.next_key;
        self.next_key += 1;
        self.seqs.extend(ids.iter().enumerate().map(|(choice, &id)| (id, (key, choice))));
        self.requests.insert(key, (choices, owner));
        waits.extend(self.dispatch(events, deliver));
        waits
    }

    /// Cancels the sequences of the requests `ended` says are over (aborted, their client
    /// gone) and those a failed choice left; delivers what that ends.
    pub async fn cancel_ended(
        &mut self,
        run: &mut Parallel,
        ended: impl Fn(&T) -> bool,
        deliver: &mut impl FnMut(Delivery<'_, T>) -> Option<Wait>,
    ) -> Vec<Wait> {
        let mut ids = std::mem::take(&mut self.orphans);
        ids.extend(self.seqs.iter().filter(|(_, (key, _))| ended(&self.requests[key].1)).map(|(&id, _)| id));
        let mut waits = Vec::new();
        for id in ids {
            let event = match run.cancel(id).await {
                Ok(Some(generation)) => ParallelEvent::Done { id, generation },
                Ok(None) => continue,
                Err(error) => ParallelEvent::Failed { id, error },
            };
            waits.extend(self.dispatch(vec![event], deliver));
        }
        waits
    }

    /// Turns the run's `events` into chunks and ends (a request ends when its last choice
    /// does, or with the first that fails).
    pub fn dispatch(
        &mut self,
        events: Vec<ParallelEvent>,
        deliver: &mut impl FnMut(Delivery<'_, T>) -> Option<Wait>,
    ) -> Vec<Wait> {
        let mut waits = Vec::new();
        for event in events {
            match event {
                ParallelEvent::Text { id, text, logprob } => {
                    let Some(&(key, choice)) = self.seqs.get(&id) else { continue };
                    let (choices, owner) = self.requests.get_mut(&key).expect("a running sequence's request");
                    if let Some(chunk) = choices.step(choice, &StepOutput { text: &text, logprob: logprob.as_ref() }) {
                        waits.extend(deliver(Delivery::Chunk(owner, chunk)));
                    }
                }
                ParallelEvent::Done { id, generation } => {
                    let Some((key, choice)) = self.seqs.remove(&id) else { continue };
                    let (choices, owner) = self.requests.get_mut(&key).expect("a running sequence's request");
                    let (chunks, completion) = choices.finish(choice, &generation);
                    waits.extend(chunks.into_iter().filter_map(|chunk| deliver(Delivery::Chunk(owner, chunk))));
                    if let Some(completion) = completion {
                        let (_, owner) = self.requests.remove(&key).expect("checked above");
                        waits.extend(deliver(Delivery::End(owner, Ok(completion))));
                    }
                }
                ParallelEvent::Failed { id, error } => {
                    let Some((key, _)) = self.seqs.remove(&id) else { continue };
                    let (_, owner) = self.requests.remove(&key).expect("a running sequence's request");
                    let others: Vec<SeqId> = self.seqs.iter().filter(|(_, (k, _))| *k == key).map(|(&id, _)| id).collect();
                    self.seqs.retain(|_, (k, _)| *k != key);
                    self.orphans.extend(others);
                    waits.extend(deliver(Delivery::End(owner, Err(error.into()))));
                }
            }
        }
        waits
    }

    /// Ends every request with `error` (a failed step).
    pub fn fail_all(&mut self, error: &ApiError, deliver: &mut impl FnMut(Delivery<'_, T>) -> Option<Wait>) -> Vec<Wait> {
        self.seqs.clear();
        self.requests.drain().filter_map(|(_, (_, owner))| deliver(Delivery::End(owner, Err(error.clone())))).collect()
    }
}
