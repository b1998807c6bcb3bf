//! `--parallel N` (N > 1): the engine thread runs up to N requests at once in one
//! [`Parallel`] run (continuous batching): each request gets a slot of its own when it is
//! taken from the queue (first come, first served), is prefilled a chunk per step beside
//! the running decodes, then decodes in batched steps with the others; a request that ends
//! frees its slot for the next one at the next step.
//! A client that goes away has its sequence cancelled before the next step. A failed step
//! (a lost device) fails the requests running; the model is loaded again as in the
//! one-at-a-time loop. The run lasts as long as the server, so its slots keep what they
//! last ran: a request takes the free slot sharing the longest prefix with its prompt.
//! A request of `n` choices waits until `n` slots are free (the requests behind it wait too:
//! first come, first served).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;
use webvlm::api::many::{fits, Delivery, RunningRequests};
use webvlm::api::{self, ApiError, Prepared};
use webvlm::engine::{Engine, KvPool, Parallel, PromptCacheStats};

use super::worker::{add_queue_time, chat_request, refuse_url, Event, Job, ModelInfo, Outcome, Slots, Worker};
use crate::args::EngineArgs;

/// A request in the run: its way back to its client.
struct Running {
    job: Job,
    /// Whether its chunks go to the client (it asked for a stream).
    forward_chunks: bool,
    /// Set when the client is gone: the engine ends the sequences at their next token.
    abort: Rc<Cell<bool>>,
    queue_seconds: f64,
    started: Instant,
}

impl Running {
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
        let mut run = match self.new_run(engine, slots) {
            Ok(run) => run,
            Err(reason) => return self.stop(&mut jobs, reason),
        };
        self.stats.set_slots(Slots::of(&run));
        let mut running = RunningRequests::new();
        let mut deliver = |d: Delivery<'_, Running>| {
            self.deliver(d);
            None
        };
        // A request waiting for free slots for its choices.
        let mut next: Option<(Running, Prepared)> = None;
        loop {
            loop {
                if let Some((mut request, prepared)) = next.take_if(|(_, p)| fits(&run, &p.choices)) {
                    self.stats.start_one();
                    (request.queue_seconds, request.started) = (request.job.queued_at.elapsed().as_secs_f64(), Instant::now());
                    pollster::block_on(running.admit(engine, &mut run, prepared, request, &mut deliver));
                    continue;
                }
                if next.is_some() || !run.has_room() {
                    break;
                }
                let job = match running.is_empty() {
                    true => jobs.blocking_recv(),
                    false => jobs.try_recv().ok(),
                };
                let Some(job) = job else { break };
                // Counted as running once admitted: a request of `n` choices waits for `n`
                // free slots.
                next = self.prepare(engine, info, job);
            }
            if running.is_empty() && next.is_none() {
                if jobs.is_closed() && jobs.is_empty() {
                    return;
                }
                continue;
            }
            pollster::block_on(running.cancel_ended(&mut run, Running::gone, &mut deliver));
            let stepped = pollster::block_on(run.step(engine));
            self.stats.set_slots(Slots::of(&run));
            // The slots' sequences are what the engine's one live sequence is without them.
            let cache = PromptCacheStats { live_tokens: run.held_tokens(), ..engine.prompt_cache_stats() };
            self.stats.set_prompt_cache_stats(cache);
            match stepped {
                Ok(events) => drop(running.dispatch(events, &mut deliver)),
                Err(e) => {
                    running.fail_all(&ApiError::from(e), &mut deliver);
                    if let Some(lost) = engine.device().lost() {
                        if let Err(reason) = self.reload(engine, args, &lost.to_string()) {
                            return self.stop(&mut jobs, reason);
                        }
                    }
                    run = match self.new_run(engine, slots) {
                        Ok(run) => run,
                        Err(reason) => return self.stop(&mut jobs, reason),
                    };
                }
            }
        }
    }

    /// A run of `slots` sequences with the `--kv-pool` asked for.
    fn new_run(&self, engine: &mut Engine, slots: u32) -> Result<Parallel, String> {
        let mut run = engine.parallel(slots).map_err(|e| format!("cannot make {slots} sequence slots: {e}"))?;
        if let Some(rows) = self.kv_pool {
            run.set_kv_pool(KvPool { rows, ..run.kv_pool() }).map_err(|e| format!("--kv-pool: {e}"))?;
        }
        Ok(run)
    }

    /// Prepares `job`'s request for admission; a request refused there ends here.
    fn prepare(&self, engine: &mut Engine, info: &ModelInfo, job: Job) -> Option<(Running, Prepared)> {
        let (queue_seconds, started) = (job.queued_at.elapsed().as_secs_f64(), Instant::now());
        if job.cancel.load(Ordering::SeqCst) || job.events.is_closed() {
            eprintln!("webvlm serve: a request was dropped before it started (client disconnected)");
            self.stats.start_one();
            self.end_job(engine, job, Outcome::Aborted, None, started);
            return None;
        }
        let abort = Rc::new(Cell::new(false));
        let prepared = chat_request(info, &job).and_then(|(request, forward_chunks)| {
            let prepared = api::prepare(engine, &request, &mut refuse_url, Some(abort.clone()))?;
            Ok((prepared, forward_chunks))
        });
        match prepared {
            Ok((prepared, forward_chunks)) => Some((Running { job, forward_chunks, abort, queue_seconds, started }, prepared)),
            Err(e) => {
                self.stats.start_one();
                self.end_job(engine, job, Outcome::Failed, Some(Event::Failed(e)), started);
                None
            }
        }
    }

    /// Sends what the run delivers to its request's client; an answer ends the job.
    fn deliver(&self, delivery: Delivery<'_, Running>) {
        let (r, end) = match delivery {
            Delivery::Chunk(r, chunk) => return r.send(chunk),
            Delivery::End(r, end) => (r, end),
        };
        let (outcome, event) = match end {
            Err(error) => (Outcome::Failed, Event::Failed(error)),
            Ok(completion) if r.abort.get() || r.gone() => {
                let (id, tokens) = (&completion["id"], &completion["usage"]["completion_tokens"]);
                eprintln!("webvlm serve: {} aborted after {tokens} tokens (client disconnected)", id.as_str().unwrap_or("?"));
                (Outcome::Aborted, Event::Done(completion))
            }
            Ok(mut completion) => {
                add_queue_time(&mut completion, r.queue_seconds);
                (Outcome::Completed, Event::Done(completion))
            }
        };
        self.close_job(r.job, outcome, Some(event), r.started);
    }
}
