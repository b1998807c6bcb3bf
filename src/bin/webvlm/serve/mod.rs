//! `webvlm serve`: an OpenAI-compatible HTTP server over one loaded engine. The engine runs
//! on a thread of its own ([`worker`]); the sockets on a current-thread tokio runtime
//! (axum on hyper, HTTP/1.1). Routes: `/v1/chat/completions` ([`chat`]), `/v1/responses`
//! ([`responses`]), `/v1/models`, `/health` ([`routes`]), `/metrics` ([`metrics`]), the Files and
//! Batch APIs ([`files`], [`batches`]).

mod batch_input;
mod batches;
mod chat;
mod checks;
mod errors;
mod files;
mod metrics;
mod parallel;
mod responses;
mod routes;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use clap::Args;
use serde_json::Value;

use webvlm::api::responses::ResponseStore;
use webvlm::engine::{EngineError, DEFAULT_KV_PAGE};

use crate::args::EngineArgs;
use crate::CliResult;
use errors::HttpError;
use worker::{EngineHandle, ModelInfo};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed on stdout)
    #[arg(long, value_name = "N", default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health (and CORS preflights):
    /// 401 without it
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Allow cross-origin requests from ORIGIN (`*`: any) [default: none]
    #[arg(long, value_name = "ORIGIN|*")]
    cors: Option<String>,
    /// Largest request body (chat requests with their images, uploaded files): 413 beyond
    #[arg(long, value_name = "N", default_value_t = 32 << 20)]
    max_body_bytes: usize,
    /// Largest image in a request, decoded from its data: URL: 400 beyond
    #[arg(long, value_name = "N", default_value_t = 20 << 20)]
    max_image_bytes: usize,
    /// Requests that may wait for the engine besides the one it runs: 429 beyond, with
    /// `Retry-After` (the recent mean run time times the requests ahead, 1 to 60 s)
    #[arg(long, value_name = "N", default_value_t = 16)]
    queue: usize,
    /// Requests run at once, decoding together in batched steps (continuous batching); each
    /// takes a context of its own (`--ctx` tokens of KV cache), which the memory plan counts
    /// (refusing an N that does not fit the budget, naming the most that do) and keeps the
    /// sequence it last ran: a request takes the free slot sharing the longest prefix with
    /// its prompt. 1 runs requests one at a time [default: on the CPU backend as many as the
    /// memory plan fits, up to 4; on a GPU 1, whose batched steps pick tokens on the host]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    parallel: Option<u32>,
    /// With --parallel > 1: KV cache positions all sequences share, instead of `--ctx` each.
    /// A sequence's cache grows by pages as it runs; when the pool is full the newest
    /// sequence is preempted and recomputed later (never failed), so more requests of mixed
    /// lengths run in the same memory; the memory plan counts the pool. At least --ctx
    /// [default: --parallel times --ctx: no preemption]
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u64).range(1..))]
    kv_pool: Option<u64>,
    /// Most files kept (uploads and batch results; expired ones are dropped): an upload past
    /// it is refused (400), and so is a batch
    #[arg(long, value_name = "N", default_value_t = 1000)]
    max_files: usize,
    /// Most bytes of files kept, all together (in memory): an upload past it is refused
    /// (400), and so is a batch while the files fill it
    #[arg(long, value_name = "N", default_value_t = 256 << 20)]
    max_files_bytes: usize,
    /// Most batches kept: a new one evicts the oldest finished batch (its files stay), and is
    /// refused (400) while all are running
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    max_batches: u64,
    /// The model id of /v1/models and requests' `model` [default: the model's name, else
    /// its file name]
    #[arg(long, value_name = "NAME")]
    served_model_name: Option<String>,
    /// Tests: lose the GPU device on purpose after N requests have run
    #[arg(long, value_name = "N", hide = true)]
    lose_device_after: Option<u64>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// The request limits.
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_image_bytes: usize,
}

/// What every handler shares.
pub struct App {
    pub engine: EngineHandle,
    pub model: ModelInfo,
    pub api_key: Option<String>,
    pub limits: Limits,
    pub files: files::FileStore,
    pub batches: batches::BatchStore,
    /// Stored responses, for `previous_response_id`.
    pub responses: Mutex<ResponseStore>,
}

pub fn run(args: ServeArgs) -> CliResult {
    let ServeArgs {
        host,
        port,
        api_key,
        cors,
        max_body_bytes,
        max_image_bytes,
        queue,
        parallel,
        kv_pool,
        max_files,
        max_files_bytes,
        max_batches,
        served_model_name,
        lose_device_after,
        engine,
    } = args;
    if let Some(rows) = kv_pool.filter(|&rows| rows < engine.ctx as u64) {
        let least = engine.ctx;
        return Err(format!("--kv-pool: {}", EngineError::KvPoolTooSmall { rows, page: DEFAULT_KV_PAGE, least }).into());
    }
    let (engine, model) = EngineHandle::start(engine, served_model_name, (queue, parallel, kv_pool), lose_device_after)?;
    let app = Arc::new(App {
        engine,
        model,
        api_key: api_key.filter(|key| !key.is_empty()),
        limits: Limits { max_body_bytes, max_image_bytes },
        files: files::FileStore::new(files::FileLimits { max_files, max_bytes: max_files_bytes }),
        batches: batches::BatchStore::new(usize::try_from(max_batches).unwrap_or(usize::MAX)),
        responses: Mutex::new(ResponseStore::default()),
    });
    let router = routes::router(app.clone(), cors.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await.map_err(|e| format!("{host}:{port}: {e}"))?;
        let address = listener.local_addr()?;
        crate::stdout::outln!("webvlm serve: {} on http://{address}/v1", app.model.id);
        match app.engine.parallel {
            1 => eprintln!("webvlm serve: one request at a time"),
            n => eprintln!("webvlm serve: {n} requests at once (--parallel)"),
        }
        let stopped = app.engine.stopped.clone();
        axum::serve(listener, router).with_graceful_shutdown(async move { stopped.notified().await }).await?;
        // The engine thread stops only when it cannot go on: exit non-zero for a supervisor.
        match app.engine.stats.unhealthy() {
            Some(reason) => Err(reason.into()),
            None => Ok(()),
        }
    })
}

/// Unix seconds now.
pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A fresh id `prefix` + 24 hex digits: the time in nanoseconds mixed with a counter.
pub fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{nanos:016x}{:08x}", count as u32)
}

/// A JSON request body: 413 past the body limit, 400 (`invalid_json`) when not JSON.
pub fn body_json(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Value, HttpError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::too_large(limit)
        } else {
            let message = format!("the request body cannot be read: {}", e.body_text());
            webvlm::api::ApiError::bad_request(None, "invalid_body", message).into()
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        let message = format!("the request is not valid JSON: {e}");
        webvlm::api::ApiError::bad_request(None, "invalid_json", message).into()
    })
}
