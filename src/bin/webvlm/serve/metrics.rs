//! `GET /metrics`: the server's counters in Prometheus' text format (version 0.0.4), as vLLM
//! and llama-server expose theirs: requests running and waiting, requests ended by outcome,
//! prompt, cached and generated tokens, and histograms of the time to first token and of the
//! time between generated tokens, plus the prompt cache and the model reloads; with
//! `--parallel` > 1, the slots by state, the KV cache positions the running sequences use,
//! the rows the slots hold of the KV pool and its size, and the sequences preempted when the
//! pool was full.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::Value;
use webvlm::engine::SlotState;

use super::App;

/// Bucket bounds of the time to first token, in seconds.
const TTFT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Bucket bounds of the time between generated tokens, in seconds.
const ITL_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Token counters and latency histograms, fed by each finished generation's `usage`.
#[derive(Debug)]
pub struct Metrics {
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    time_to_first_token: Mutex<Histogram>,
    inter_token_latency: Mutex<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            prompt_tokens: AtomicU64::default(),
            cached_tokens: AtomicU64::default(),
            generation_tokens: AtomicU64::default(),
            time_to_first_token: Mutex::new(Histogram::new(TTFT_BUCKETS)),
            inter_token_latency: Mutex::new(Histogram::new(ITL_BUCKETS)),
        }
    }
}

impl Metrics {
    /// Counts a `chat.completion`'s usage: its tokens, its time to first token, and its mean
    /// time between tokens once per token after the first.
    pub fn record(&self, completion: &Value) {
        let usage = &completion["usage"];
        let count = |field: &str| usage.pointer(field).and_then(Value::as_u64).unwrap_or(0);
        let generated = count("/completion_tokens");
        self.prompt_tokens.fetch_add(count("/prompt_tokens"), Ordering::Relaxed);
        self.cached_tokens.fetch_add(count("/prompt_tokens_details/cached_tokens"), Ordering::Relaxed);
        self.generation_tokens.fetch_add(generated, Ordering::Relaxed);
        let timings = &usage["timings"];
        if let Some(ttft) = timings["time_to_first_token"].as_f64().filter(|_| generated > 0) {
            lock(&self.time_to_first_token).observe(ttft, 1);
        }
        if let Some(rate) = timings["decode_tokens_per_second"].as_f64().filter(|&r| r > 0.0 && generated > 1) {
            lock(&self.inter_token_latency).observe(1.0 / rate, generated - 1);
        }
    }
}

fn lock(h: &Mutex<Histogram>) -> std::sync::MutexGuard<'_, Histogram> {
    h.lock().unwrap_or_else(|e| e.into_inner())
}

/// A Prometheus histogram: counts per bucket (not cumulative here), their sum and count.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    /// `n` observations of `value`.
    fn observe(&mut self, value: f64, n: u64) {
        let bucket = self.bounds.iter().position(|&b| value <= b).unwrap_or(self.bounds.len());
        self.counts[bucket] += n;
        self.sum += value * n as f64;
        self.count += n;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().map(|b| b.to_string()).chain(["+Inf".to_string()]).zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// One counter or gauge, with its help and type lines.
fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

pub async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let stats = &app.engine.stats;
    let m = &stats.metrics;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let gauge = |n: &AtomicUsize| n.load(Ordering::SeqCst) as u64;
    let mut out = String::new();
    metric(&mut out, "webvlm_requests_running", "gauge", "Requests the engine is running.", &[("", gauge(&stats.running))]);
    metric(&mut out, "webvlm_requests_waiting", "gauge", "Requests waiting for the engine.", &[("", gauge(&stats.waiting))]);
    let outcomes = [
        ("{outcome=\"completed\"}", get(&stats.completed)),
        ("{outcome=\"failed\"}", get(&stats.failed)),
        ("{outcome=\"aborted\"}", get(&stats.aborted)),
    ];
    metric(&mut out, "webvlm_requests_total", "counter", "Requests ended, by outcome.", &outcomes);
    metric(&mut out, "webvlm_prompt_tokens_total", "counter", "Prompt tokens of ended requests.", &[("", get(&m.prompt_tokens))]);
    let cached = [("", get(&m.cached_tokens))];
    metric(&mut out, "webvlm_prompt_cached_tokens_total", "counter", "Prompt tokens served by the prompt cache.", &cached);
    let generated = [("", get(&m.generation_tokens))];
    metric(&mut out, "webvlm_generation_tokens_total", "counter", "Tokens generated.", &generated);
    lock(&m.time_to_first_token).write(&mut out, "webvlm_time_to_first_token_seconds", "Time to first token (after the queue).");
    lock(&m.inter_token_latency).write(&mut out, "webvlm_inter_token_latency_seconds", "Time between generated tokens.");
    let cache = stats.prompt_cache();
    let saved = [("", cache.saved_bytes)];
    metric(&mut out, "webvlm_prompt_cache_saved_bytes", "gauge", "Bytes of saved prompt-cache prefixes.", &saved);
    metric(&mut out, "webvlm_model_reloads_total", "counter", "Model loads after a lost device.", &[("", get(&stats.reloads))]);
    if let Some(slots) = stats.slots() {
        let count = |state| slots.sequences.iter().filter(|s| slot_state(s) == state).count() as u64;
        let busy = slots.sequences.len() as u64;
        let states = [
            ("{state=\"prefilling\"}", count("prefilling")),
            ("{state=\"recomputing\"}", count("recomputing")),
            ("{state=\"decoding\"}", count("decoding")),
            ("{state=\"idle\"}", u64::from(slots.total) - busy),
        ];
        metric(&mut out, "webvlm_slots", "gauge", "Sequence slots of --parallel, by state.", &states);
        let used = slots.sequences.iter().map(|s| u64::from(s.cached)).sum();
        metric(&mut out, "webvlm_kv_cache_used_tokens", "gauge", "KV cache positions the running sequences hold.", &[("", used)]);
        let held = [("", slots.kv_rows_held)];
        metric(&mut out, "webvlm_kv_cache_held_tokens", "gauge", "KV pool rows the slots' contexts hold.", &held);
        let capacity = [("", slots.kv_pool_rows)];
        metric(&mut out, "webvlm_kv_cache_capacity_tokens", "gauge", "KV pool rows (--kv-pool).", &capacity);
        let preempted = [("", slots.preemptions)];
        metric(&mut out, "webvlm_preemptions_total", "counter", "Sequences preempted by a full KV pool.", &preempted);
        let failed = [("", slots.failed_steps)];
        let help = "Batched steps that failed on a device that was not lost (their sequences recomputed).";
        metric(&mut out, "webvlm_failed_steps_total", "counter", help, &failed);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}

/// A running sequence's state as `/metrics` and `/health` name it.
pub fn slot_state(s: &SlotState) -> &'static str {
    match (s.recomputing, s.prefilling) {
        (true, _) => "recomputing",
        (false, true) => "prefilling",
        (false, false) => "decoding",
    }
}
