//! The engine thread: the one [`Engine`] lives on a thread of its own (it holds `Rc`s and the
//! wgpu device) and runs jobs in the order they arrive (FIFO) from a channel. Handlers
//! reserve a place first ([`EngineHandle::admit`]: at most `--queue` requests wait besides the
//! one running; beyond that, 429), then send a [`Job`] and read its [`Event`]s.
//!
//! A job whose client is gone (its cancel flag set by the handler's drop guard, or its event
//! channel closed) is skipped if it has not started and aborted at the next generated token
//! if it has (the engine's abort flag). Non-streaming requests run as streams whose chunks
//! are dropped, so that every token is a point where a disconnect is seen.
//!
//! The time a job waited, from its admission to the engine taking it up, is added to the
//! usage timings of its answer as `usage.timings.queue_seconds` (next to
//! `time_to_first_token`, which starts where the wait ends).
//!
//! A refused request is told when to come back (`Retry-After`): the mean run time of the last
//! [`RECENT_JOBS`] jobs that ran to their end (1 s before any has), times the requests ahead of
//! it (waiting and running), rounded up and kept within [`RETRY_AFTER_RANGE`].
//!
//! A lost GPU device (a driver reset, a GPU process crash) fails the job that was running when
//! it went; the engine thread then loads the model again on a new device before it takes the
//! next job (`/health` counts the reloads). If that load fails, the server is unhealthy: the
//! waiting jobs and every later request fail with 503, `/health` answers 503 for
//! [`DRAIN_SECONDS`] (time for a load balancer to take the instance out), and then the server
//! stops and exits non-zero, for a supervisor to restart it.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use webvlm::api::{self, ApiError, ChatRequest};
use webvlm::engine::{Engine, EngineError, Parallel, PromptCacheStats, SlotState};
use webvlm::error::{Classify, ErrorClass};

use super::errors::HttpError;
use crate::args::EngineArgs;

/// How many of the last jobs' run times the `Retry-After` estimate averages.
const RECENT_JOBS: usize = 16;
/// The run time assumed for a job before any has ended, in seconds.
const FIRST_JOB_SECONDS: f64 = 1.0;
/// The seconds `Retry-After` may say.
const RETRY_AFTER_RANGE: RangeInclusive<u64> = 1..=60;
/// How long an unhealthy server keeps answering (503) before it stops.
pub const DRAIN_SECONDS: u64 = 5;

/// What a job sends back, in order: chunks (streaming requests only), then `Done` with the
/// `chat.completion` object or `Failed`.
#[derive(Debug)]
pub enum Event {
    Chunk(Value),
    Done(Value),
    Failed(ApiError),
}

/// One chat-completions request for the engine.
pub struct Job {
    /// The request body, already checked by [`super::checks::check_request`].
    pub body: Value,
    pub events: UnboundedSender<Event>,
    /// Set when the client is gone: the job is skipped or its generation aborted.
    pub cancel: Arc<AtomicBool>,
    /// The job's place in the queue, given back when it ends (batch lines hold none).
    pub slot: Option<OwnedSemaphorePermit>,
    /// When the job was made, just after its admission: its queue wait starts here.
    pub queued_at: Instant,
}

impl Job {
    /// A job for `body` and the receiver of its events.
    pub fn new(body: Value, cancel: Arc<AtomicBool>, slot: Option<OwnedSemaphorePermit>) -> (Job, UnboundedReceiver<Event>) {
        let (events, receiver) = unbounded_channel();
        (Job { body, events, cancel, slot, queued_at: Instant::now() }, receiver)
    }
}

/// What the server knows of the loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The id requests name in `model` and `/v1/models` lists.
    pub id: String,
    /// Unix seconds when the model was loaded.
    pub created: u64,
    /// The vocabulary size (bounds `logit_bias` ids and `tokens`).
    pub vocab: usize,
    /// Tokens a request's prompt and reply may take together: the engine's context.
    pub context_length: u32,
    /// Where the engine runs: the backend (`cpu`, or wgpu's `Vulkan`, `Metal`, ...) and the
    /// device (the GPU adapter, or the CPU's SIMD level, threads and mode).
    pub backend: String,
    pub device: String,
    /// Why that backend: `--backend`, or what `auto` found.
    pub backend_reason: String,
}

/// Counters for `/health`.
#[derive(Default, Debug)]
pub struct Stats {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub aborted: AtomicU64,
    /// The engine's prompt cache after the last job (its saved prefixes take GPU memory up to
    /// a budget: what a memory figure under load must be read against).
    prompt_cache: Mutex<PromptCacheStats>,
    /// The run times in seconds of the last [`RECENT_JOBS`] jobs that completed or failed
    /// (not those aborted by a disconnect: cut short, they say little of the next one's).
    recent_seconds: Mutex<VecDeque<f64>>,
    /// Times the model was loaded again after a lost device.
    pub reloads: AtomicU64,
    /// Tokens and latencies for `/metrics`.
    pub metrics: super::metrics::Metrics,
    /// Why the engine cannot take requests any more (a lost device and a failed reload).
    unhealthy: Mutex<Option<String>>,
    /// With `--parallel` > 1, the run's slots after its last step.
    slots: Mutex<Option<Slots>>,
}

/// The slots of a parallel run, for `/health` and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Slots {
    pub total: u32,
    /// KV cache positions one sequence may reach (`--ctx`).
    pub rows_per_slot: u32,
    /// KV rows of the run's pool (`--kv-pool`), and those its contexts hold now.
    pub kv_pool_rows: u64,
    pub kv_rows_held: u64,
    /// Sequences preempted (and recomputed) so far.
    pub preemptions: u64,
    /// Batched steps failed on a device that was not lost (their sequences recomputed).
    pub failed_steps: u64,
    /// The running sequences, in the order admitted.
    pub sequences: Vec<SlotState>,
}

impl Slots {
    /// Where `run`'s slots stand.
    pub fn of(run: &Parallel) -> Slots {
        Slots {
            total: run.max_seqs(),
            rows_per_slot: run.slot_rows(),
            kv_pool_rows: run.kv_pool().rows,
            kv_rows_held: run.kv_rows_held(),
            preemptions: run.preemptions(),
            failed_steps: run.failed_steps(),
            sequences: run.slots(),
        }
    }
}

impl Stats {
    /// Counts a request leaving the queue's waiting ones for the running ones.
    pub(super) fn start_one(&self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        self.running.fetch_add(1, Ordering::SeqCst);
    }

    /// The parallel run's slots (`None` with one request at a time).
    pub fn slots(&self) -> Option<Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_slots(&self, slots: Slots) {
        *self.slots.lock().unwrap_or_else(|e| e.into_inner()) = Some(slots);
    }

    fn add_run_time(&self, seconds: f64) {
        let mut recent = self.recent_seconds.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_JOBS {
            recent.pop_front();
        }
        recent.push_back(seconds);
    }

    /// The mean run time of the recent jobs ([`FIRST_JOB_SECONDS`] before any).
    pub fn mean_run_seconds(&self) -> f64 {
        let recent = self.recent_seconds.lock().unwrap_or_else(|e| e.into_inner());
        if recent.is_empty() {
            FIRST_JOB_SECONDS
        } else {
            recent.iter().sum::<f64>() / recent.len() as f64
        }
    }

    /// `Retry-After` for a request refused now: the mean run time times the requests ahead.
    pub fn retry_after(&self) -> u64 {
        let ahead = self.waiting.load(Ordering::SeqCst) + self.running.load(Ordering::SeqCst);
        let seconds = (self.mean_run_seconds() * ahead as f64).ceil();
        // `as` saturates (and maps NaN to 0): the clamp does the rest.
        (seconds as u64).clamp(*RETRY_AFTER_RANGE.start(), *RETRY_AFTER_RANGE.end())
    }

    fn set_prompt_cache(&self, engine: &Engine) {
        self.set_prompt_cache_stats(engine.prompt_cache_stats());
    }

    pub(super) fn set_prompt_cache_stats(&self, stats: PromptCacheStats) {
        *self.prompt_cache.lock().unwrap_or_else(|e| e.into_inner()) = stats;
    }

    /// Why the engine cannot take requests, once it cannot.
    pub fn unhealthy(&self) -> Option<String> {
        self.unhealthy.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_unhealthy(&self, reason: String) {
        *self.unhealthy.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    /// What the prompt cache held after the last job.
    pub fn prompt_cache(&self) -> PromptCacheStats {
        self.prompt_cache.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The handlers' side of the engine thread.
pub struct EngineHandle {
    jobs: UnboundedSender<Job>,
    slots: Arc<Semaphore>,
    /// Requests that may wait besides those running.
    pub queue_capacity: usize,
    /// Requests the engine runs at once (`--parallel`).
    pub parallel: usize,
    pub stats: Arc<Stats>,
    /// Notified once the engine thread has stopped for good (unhealthy): the server stops.
    pub stopped: Arc<Notify>,
}

/// How one job ended.
pub(super) enum Outcome {
    Completed,
    Failed,
    Aborted,
}

impl EngineHandle {
    /// Opens the model on a new thread and starts taking jobs; returns once the model is
    /// loaded (or failed to load). `lose_device_after` (tests) loses the device on purpose
    /// after that many jobs.
    pub fn start(
        engine_args: EngineArgs,
        served_name: Option<String>,
        (queue_capacity, parallel, kv_pool): (usize, Option<u32>, Option<u64>),
        lose_device_after: Option<u64>,
    ) -> Result<(EngineHandle, ModelInfo), String> {
        let (jobs, receiver) = unbounded_channel::<Job>();
        let (loaded_tx, loaded_rx) = std::sync::mpsc::channel::<Result<(ModelInfo, u32), String>>();
        let stats = Arc::new(Stats::default());
        let stopped = Arc::new(Notify::new());
        let (worker_stats, worker_stopped) = (stats.clone(), stopped.clone());
        std::thread::Builder::new()
            .name("webvlm-engine".into())
            .spawn(move || {
                let (mut engine, parallel) = match crate::open_engine_for(&engine_args, parallel, kv_pool) {
                    Ok(opened) => opened,
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let (stats, stopped, seqs) = (worker_stats, worker_stopped, parallel);
                let worker = Worker { stats, stopped, lose_device_after, seqs, kv_pool };
                let info = model_info(&engine, &engine_args, served_name);
                let _ = loaded_tx.send(Ok((info.clone(), parallel)));
                match parallel {
                    1 => worker.work(&mut engine, &engine_args, &info, receiver),
                    n => worker.work_parallel(&mut engine, &engine_args, &info, receiver, n),
                }
            })
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
        let (info, parallel) = loaded_rx.recv().map_err(|_| "the engine thread stopped while loading".to_string())??;
        let slots = Arc::new(Semaphore::new(queue_capacity.saturating_add(parallel as usize)));
        Ok((EngineHandle { jobs, slots, queue_capacity, parallel: parallel as usize, stats, stopped }, info))
    }

    /// A place in the queue, or 429 when `queue_capacity` requests already wait.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, HttpError> {
        self.slots.clone().try_acquire_owned().map_err(|_| HttpError::queue_full(self.queue_capacity, self.stats.retry_after()))
    }

    /// Queues a job behind those already sent.
    pub fn submit(&self, job: Job) -> Result<(), HttpError> {
        self.stats.waiting.fetch_add(1, Ordering::SeqCst);
        self.jobs.send(job).map_err(|_| {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            let reason = self.stats.unhealthy().unwrap_or_else(|| "the engine thread has stopped".into());
            HttpError::unavailable(reason)
        })
    }
}

/// The model's id: `--served-model-name`, else the model's own name, else the file name.
fn model_info(engine: &Engine, args: &EngineArgs, served_name: Option<String>) -> ModelInfo {
    let file_name = || args.model.model.file_stem().map(|s| s.to_string_lossy().into_owned());
    let id = served_name.or_else(|| engine.decoder().cfg.name.clone()).or_else(file_name).unwrap_or_else(|| "webvlm".into());
    let caps = engine.device().caps();
    ModelInfo {
        id,
        created: super::unix_seconds(),
        vocab: crate::vocab_size(engine),
        context_length: engine.max_context(),
        backend: caps.backend.clone(),
        device: caps.adapter.clone(),
        backend_reason: args.device.why(engine.device()),
    }
}

/// The engine thread's side: the counters it moves and how it tells the server it stopped.
pub(super) struct Worker {
    pub(super) stats: Arc<Stats>,
    stopped: Arc<Notify>,
    lose_device_after: Option<u64>,
    /// Requests run at once (`--parallel`) and the KV rows they share (`--kv-pool`), which
    /// the memory plan of a reload counts.
    seqs: u32,
    pub(super) kv_pool: Option<u64>,
}

impl Worker {
    /// The engine thread's loop: one job at a time until every handle is gone, or until the
    /// device is lost and the model cannot be loaded again.
    fn work(&self, engine: &mut Engine, args: &EngineArgs, info: &ModelInfo, mut jobs: UnboundedReceiver<Job>) {
        let stats = &*self.stats;
        stats.set_prompt_cache(engine);
        let mut ran = 0u64;
        while let Some(job) = jobs.blocking_recv() {
            stats.start_one();
            let started = Instant::now();
            let (outcome, last_event) = run_job(engine, info, &job);
            self.end_job(engine, job, outcome, last_event, started);
            ran += 1;
            if let (Some(after), Ok(gpu)) = (self.lose_device_after, engine.device().gpu()) {
                if after == ran {
                    gpu.device_loss().lose();
                }
            }
            if let Some(lost) = engine.device().lost() {
                if let Err(reason) = self.reload(engine, args, &lost.to_string()) {
                    self.stop(&mut jobs, reason);
                    return;
                }
            }
        }
    }

    /// Counts a job that ran from `started` and ended as `outcome`, frees its queue place and
    /// sends its last event.
    pub(super) fn end_job(&self, engine: &Engine, job: Job, outcome: Outcome, last_event: Option<Event>, started: Instant) {
        self.stats.set_prompt_cache(engine);
        self.close_job(job, outcome, last_event, started);
    }

    /// [`Self::end_job`] without the prompt cache's figures (a parallel run's loop sets them
    /// after each step).
    pub(super) fn close_job(&self, job: Job, outcome: Outcome, last_event: Option<Event>, started: Instant) {
        let stats = &*self.stats;
        let counter = match outcome {
            Outcome::Completed => &stats.completed,
            Outcome::Failed => &stats.failed,
            Outcome::Aborted => &stats.aborted,
        };
        if !matches!(outcome, Outcome::Aborted) {
            stats.add_run_time(started.elapsed().as_secs_f64());
        }
        counter.fetch_add(1, Ordering::SeqCst);
        if let Some(Event::Done(completion)) = &last_event {
            stats.metrics.record(completion);
        }
        stats.running.fetch_sub(1, Ordering::SeqCst);
        // The last event goes out after the counters moved and the job's queue place is
        // given back, so a client that has its answer sees them (`/health`) and can send its
        // next request at once (with `--queue 0`, a place still held would refuse it).
        drop(job.slot);
        if let Some(event) = last_event {
            let _ = job.events.send(event);
        }
    }

    /// The model loaded again on a new device, in place of `engine`, whose device is lost.
    pub(super) fn reload(&self, engine: &mut Engine, args: &EngineArgs, lost: &str) -> Result<(), String> {
        eprintln!("webvlm serve: {lost}; loading the model again on a new device");
        match crate::open_engine_for(args, Some(self.seqs), self.kv_pool).map(|(engine, _)| engine) {
            Ok(fresh) => {
                *engine = fresh;
                self.stats.reloads.fetch_add(1, Ordering::SeqCst);
                self.stats.set_prompt_cache(engine);
                eprintln!("webvlm serve: the model is loaded again");
                Ok(())
            }
            Err(e) => Err(format!("{lost}, and the model could not be loaded again: {e}")),
        }
    }

    /// Marks the server unhealthy, fails the waiting jobs and, after [`DRAIN_SECONDS`], tells
    /// the server to stop.
    pub(super) fn stop(&self, jobs: &mut UnboundedReceiver<Job>, reason: String) {
        eprintln!("webvlm serve: unhealthy: {reason}");
        self.stats.set_unhealthy(reason.clone());
        jobs.close();
        while let Ok(job) = jobs.try_recv() {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            self.stats.failed.fetch_add(1, Ordering::SeqCst);
            let _ = job.events.send(Event::Failed(super::errors::unavailable(reason.clone())));
        }
        std::thread::sleep(std::time::Duration::from_secs(DRAIN_SECONDS));
        self.stopped.notify_one();
    }
}

/// Runs one job: how it ended and its last event (sent by the caller).
fn run_job(engine: &mut Engine, info: &ModelInfo, job: &Job) -> (Outcome, Option<Event>) {
    let queue_seconds = job.queued_at.elapsed().as_secs_f64();
    if job.cancel.load(Ordering::SeqCst) || job.events.is_closed() {
        eprintln!("webvlm serve: a request was dropped before it started (client disconnected)");
        return (Outcome::Aborted, None);
    }
    let (request, forward_chunks) = match chat_request(info, job) {
        Ok(request) => request,
        Err(e) => return (Outcome::Failed, Some(Event::Failed(e))),
    };
    let abort = Rc::new(Cell::new(false));
    let on_chunk = |mut chunk: Value| {
        add_queue_time(&mut chunk, queue_seconds);
        let gone = job.cancel.load(Ordering::SeqCst) || (forward_chunks && job.events.send(Event::Chunk(chunk)).is_err());
        if gone {
            abort.set(true);
        }
        None
    };
    let result = pollster::block_on(api::run(engine, &request, &mut refuse_url, Some(abort.clone()), on_chunk));
    match result {
        Ok(completion) if abort.get() => {
            let tokens = completion.pointer("/usage/completion_tokens").and_then(Value::as_u64).unwrap_or(0);
            let id = completion["id"].as_str().unwrap_or("?");
            eprintln!("webvlm serve: {id} aborted after {tokens} tokens (client disconnected)");
            (Outcome::Aborted, Some(Event::Done(completion)))
        }
        Ok(mut completion) => {
            add_queue_time(&mut completion, queue_seconds);
            (Outcome::Completed, Some(Event::Done(completion)))
        }
        Err(e) => {
            if e.class() != ErrorClass::BadRequest {
                eprintln!("webvlm serve: a request failed: {}", e.message);
            }
            (Outcome::Failed, Some(Event::Failed(e)))
        }
    }
}

/// The job's request, with the served model's id when it names none, made a stream (every
/// request runs as one: see the module header), and whether its chunks go to the client
/// (it asked for a stream).
pub(super) fn chat_request(info: &ModelInfo, job: &Job) -> Result<(ChatRequest, bool), ApiError> {
    let mut request = ChatRequest::from_value(job.body.clone(), info.vocab)?;
    request.model.get_or_insert_with(|| info.id.clone());
    let forward_chunks = request.stream;
    request.stream = true;
    Ok((request, forward_chunks))
}

/// Image URLs other than `data:` URLs are refused.
pub(super) fn refuse_url(url: &str) -> Result<Vec<u8>, EngineError> {
    Err(EngineError::BadImageUrl(format!("{url}: this server reads images from data: URLs only")))
}

/// Adds the job's queue wait to a chunk or completion that carries usage timings (the usage
/// chunk of a stream, the `chat.completion` object).
pub(super) fn add_queue_time(value: &mut Value, seconds: f64) {
    if let Some(timings) = value.pointer_mut("/usage/timings").and_then(Value::as_object_mut) {
        timings.insert("queue_seconds".into(), json!(seconds));
    }
}
