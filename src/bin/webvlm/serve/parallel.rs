//! `--parallel N` (N > 1): the engine thread runs up to N requests at once in one
//! [`Parallel`] run (continuous batching): each request gets a slot of its own when it is
//! taken from the queue (first come, first served), is prefilled a chunk per step beside
//! the running decodes, then decodes in batched steps with the others; a request that ends
//! frees its slot for the next one at the next step.
//! A client that goes away has its sequence cancelled before the next step. A failed step
//! (a lost device) fails the requests running; the model is loaded again as in the
//! one-at-a-time loop. The run lasts as long as the server, so its slots keep what they
//! last ran: a request takes the free slot sharing the longest prefix with its prompt.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;
use webvlm::api::{self, ApiError, Prepared, Reply};
use webvlm::engine::{Engine, Generation, Parallel, ParallelEvent, SeqId, StepOutput};

use super::worker::{add_queue_time, chat_request, refuse_url, Event, Job, ModelInfo, Outcome, Slots, Worker};
use crate::args::EngineArgs;

/// A request running in the batch: where its output goes, and its reply.
struct Running {
    sink: Sink,
    reply: Reply,
    started: Instant,
}

/// A job's way back to its client.
struct Sink {
    job: Job,
    /// Whether its chunks go to the client (it asked for a stream).
    forward_chunks: bool,
    /// Set when the client is gone: the engine ends the sequence at its next token.
    abort: Rc<Cell<bool>>,
    queue_seconds: f64,
}

impl Sink {
    /// Sends a chunk when the client streams; marks the request aborted when it is gone.
    fn send(&self, mut chunk: Value) {
        add_queue_time(&mut chunk, self.queue_seconds);
        let gone = self.gone() || (self.forward_chunks && self.job.events.send(Event::Chunk(chunk)).is_err());
        if gone {
            self.abort.set(true);
        }
    }

    fn gone(&self) -> bool {
        self.job.cancel.load(Ordering::SeqCst) || self.job.events.is_closed()
    }
}

impl Worker {
    /// The engine thread's loop with `slots` sequences at once: takes jobs while slots are
    /// free (waiting for one only when nothing runs), then runs one batched step.
    pub(super) fn work_parallel(
        &self,
        engine: &mut Engine,
        args: &EngineArgs,
        info: &ModelInfo,
        mut jobs: UnboundedReceiver<Job>,
        slots: u32,
    ) {
        let mut run = match engine.parallel(slots) {
            Ok(run) => run,
            Err(e) => return self.stop(&mut jobs, format!("cannot make {slots} sequence slots: {e}")),
        };
        self.stats.set_slots(Slots { total: slots, rows_per_slot: run.slot_rows(), sequences: Vec::new() });
        let mut running: HashMap<SeqId, Running> = HashMap::new();
        loop {
            while run.has_room() {
                let job = match running.is_empty() {
                    true => jobs.blocking_recv(),
                    false => jobs.try_recv().ok(),
                };
                let Some(job) = job else { break };
                self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
                self.stats.running.fetch_add(1, Ordering::SeqCst);
                self.admit(engine, info, &mut run, &mut running, job);
            }
            if running.is_empty() {
                if jobs.is_closed() && jobs.is_empty() {
                    return;
                }
                continue;
            }
            let gone: Vec<SeqId> = running.iter().filter(|(_, r)| r.sink.gone()).map(|(&id, _)| id).collect();
            for id in gone {
                if let Ok(Some(generation)) = pollster::block_on(run.cancel(id)) {
                    self.done(engine, &mut running, id, generation);
                }
            }
            let stepped = pollster::block_on(run.step(engine));
            let sequences = run.slots();
            self.stats.set_slots(Slots { total: slots, rows_per_slot: run.slot_rows(), sequences });
            match stepped {
                Ok(events) => self.dispatch(engine, &mut running, events),
                Err(e) => {
                    let error = ApiError::from(e);
                    for (_, r) in running.drain() {
                        self.end_job(engine, r.sink.job, Outcome::Failed, Some(Event::Failed(error.clone())), r.started);
                    }
                    if let Some(lost) = engine.device().lost() {
                        if let Err(reason) = self.reload(engine, args, &lost.to_string()) {
                            return self.stop(&mut jobs, reason);
                        }
                    }
                    run = match engine.parallel(slots) {
                        Ok(run) => run,
                        Err(e) => return self.stop(&mut jobs, format!("cannot make {slots} sequence slots: {e}")),
                    };
                }
            }
        }
    }

    /// Prepares `job`'s request and admits it to the run; a request refused there ends here.
    fn admit(&self, engine: &mut Engine, info: &ModelInfo, run: &mut Parallel, running: &mut HashMap<SeqId, Running>, job: Job) {
        let (queue_seconds, started) = (job.queued_at.elapsed().as_secs_f64(), Instant::now());
        if job.cancel.load(Ordering::SeqCst) || job.events.is_closed() {
            eprintln!("webvlm serve: a request was dropped before it started (client disconnected)");
            return self.end_job(engine, job, Outcome::Aborted, None, started);
        }
        let abort = Rc::new(Cell::new(false));
        let prepared = chat_request(info, &job).and_then(|(request, forward_chunks)| {
            let prepared = api::prepare(engine, &request, &mut refuse_url, Some(abort.clone()))?;
            Ok((prepared, forward_chunks))
        });
        let (Prepared { prompt, opts, reply }, forward_chunks) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => return self.end_job(engine, job, Outcome::Failed, Some(Event::Failed(e)), started),
        };
        match pollster::block_on(run.admit(engine, &prompt, &opts)) {
            Ok((id, events)) => {
                let sink = Sink { job, forward_chunks, abort, queue_seconds };
                if let Some(chunk) = reply.start() {
                    sink.send(chunk);
                }
                running.insert(id, Running { sink, reply, started });
                self.dispatch(engine, running, events);
            }
            Err(e) => {
                let error = ApiError::from(e);
                self.end_job(engine, job, Outcome::Failed, Some(Event::Failed(error)), started)
            }
        }
    }

    /// Turns the run's events into each request's chunks and answers.
    fn dispatch(&self, engine: &Engine, running: &mut HashMap<SeqId, Running>, events: Vec<ParallelEvent>) {
        for event in events {
            match event {
                ParallelEvent::Text { id, text, logprob } => {
                    let Some(r) = running.get_mut(&id) else { continue };
                    if let Some(chunk) = r.reply.step(&StepOutput { text: &text, logprob: logprob.as_ref() }) {
                        r.sink.send(chunk);
                    }
                }
                ParallelEvent::Done { id, generation } => self.done(engine, running, id, generation),
                ParallelEvent::Failed { id, error } => {
                    if let Some(r) = running.remove(&id) {
                        let event = Event::Failed(ApiError::from(error));
                        self.end_job(engine, r.sink.job, Outcome::Failed, Some(event), r.started);
                    }
                }
            }
        }
    }

    /// A request's generation ended: its last chunks, then its answer.
    fn done(&self, engine: &Engine, running: &mut HashMap<SeqId, Running>, id: SeqId, generation: Generation) {
        let Some(Running { sink, reply, started }) = running.remove(&id) else { return };
        let (chunks, mut completion) = reply.finish(&generation);
        chunks.into_iter().for_each(|chunk| sink.send(chunk));
        let aborted = sink.abort.get() || sink.gone();
        let outcome = match aborted {
            true => {
                let tokens = generation.tokens.len();
                eprintln!(
                    "webvlm serve: {} aborted after {tokens} tokens (client disconnected)",
                    completion["id"].as_str().unwrap_or("?")
                );
                Outcome::Aborted
            }
            false => {
                add_queue_time(&mut completion, sink.queue_seconds);
                Outcome::Completed
            }
        };
        self.end_job(engine, sink.job, outcome, Some(Event::Done(completion)), started);
    }
}
