//! A persistent thread pool for CPU ops: `threads - 1` workers started once, plus the calling
//! thread, share each op's tasks. A token of a small model is hundreds of ops, so waking the
//! workers must cost microseconds: as in llama.cpp's ggml-cpu threadpool (`ggml_graph_compute`
//! with its hybrid polling), an op is published by bumping a generation counter that idle
//! workers spin on for a while ([`SPIN`]) before they sleep on a condition variable; tasks are
//! claimed from an atomic counter, so uneven tasks balance themselves.
//!
//! Workers are optional helpers: one joins an op only while the op is open, and the caller,
//! once no task is left to claim, closes it and waits only for the workers that joined. A
//! worker that wakes late (or is not scheduled, on a busy machine) costs nothing.
//!
//! One thread spawns nothing. In browsers (wasm32-unknown-unknown) `std::thread` cannot spawn:
//! the threaded wasm builds (shared memory, `target_feature = "atomics"`) ask JS for a Web
//! Worker per worker thread (`wasm_workers`), which instantiates the same module on the same
//! memory and enters [`Shared::worker`]. A Web Worker starts asynchronously, so ops run on
//! fewer threads until it has; the single-thread wasm builds refuse more than one thread.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

// `std::time::Instant` panics on wasm32; `web_time` reads `performance.now()` there.
use web_time::Instant;

/// How long an idle worker (or a caller waiting for its workers) spins before it sleeps: long
/// enough to span the gap between two ops of a decode step, short enough not to hold a core
/// between requests.
pub const SPIN: Duration = Duration::from_micros(100);
const SPIN_ONLY: Duration = Duration::from_micros(10);

/// `Shared::state`: the op's generation in the high 32 bits, [`CLOSED`], and the count of
/// workers inside the op in the low bits.
const GENERATION: u64 = 1 << 32;
const CLOSED: u64 = 1 << 31;
const ACTIVE: u64 = CLOSED - 1;

/// Why a pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("a thread pool needs at least one thread")]
    NoThreads,
    #[error("could not start a worker thread: {0}")]
    Spawn(String),
    #[error("this build has no threads (the threaded wasm build runs more than one)")]
    Unsupported,
}

/// [`ThreadPool::activity`].
#[derive(Clone, Copy, Debug)]
pub struct PoolActivity {
    pub started: usize,
    pub joins: u64,
}

/// One op: a task function (its lifetime erased, see [`ThreadPool::run`]) and its task count.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    n_tasks: usize,
}

struct Shared {
    state: AtomicU64,
    /// The current op: written by the caller only while no worker is inside an op (closed,
    /// none active), read by workers once they joined.
    job: UnsafeCell<Job>,
    /// The next task index to claim.
    next: AtomicUsize,
    /// A task panicked: stop claiming; the first payload is re-raised by the caller.
    panicked: AtomicBool,
    payload: Mutex<Option<Box<dyn Any + Send>>>,
    stop: AtomicBool,
    /// Sleeping: workers wait on `wake_workers`, the caller on `wake_caller`, both under `lock`.
    lock: Mutex<()>,
    wake_workers: Condvar,
    wake_caller: Condvar,
    sleepers: AtomicUsize,
    caller_asleep: AtomicBool,
    /// Workers that have started (a Web Worker starts some time after it was asked for), and
    /// ops that a worker joined: how much the pool's threads helped ([`ThreadPool::activity`]).
    started: AtomicUsize,
    joins: AtomicU64,
}

// SAFETY: `job` is the only field that is not Send/Sync by itself (an UnsafeCell holding a raw
// pointer). Its writes and reads never overlap (see the field), the state word orders them,
// and the pointed-to function is Sync and outlives every use (see `run`).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A fixed set of threads that run ops' tasks; see the module docs.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<Worker>,
    /// Serializes `run` calls from different threads (one op at a time).
    serial: Mutex<()>,
}

fn noop(_: usize) {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Spins until `done()` or [`SPIN`] has passed; returns whether `done()` held. After the first
/// [`SPIN_ONLY`] it also yields, so that on a CPU with more busy threads than cores the thread
/// being waited for can run.
fn spin_until(done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        match start.elapsed() {
            t if t > SPIN => return false,
            t if t > SPIN_ONLY => std::thread::yield_now(),
            _ => {}
        }
    }
}

impl Shared {
    /// Claims and runs tasks until none is left, catching panics.
    fn work(&self, job: Job) {
        // SAFETY: `run` keeps the function alive while the op is open or has active workers.
        let f = unsafe { &*job.f };
        while !self.panicked.load(Relaxed) {
            let i = self.next.fetch_add(1, Relaxed);
            if i >= job.n_tasks {
                break;
            }
            if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| f(i))) {
                self.panicked.store(true, Relaxed);
                lock(&self.payload).get_or_insert(p);
            }
        }
    }

    /// A worker's life: wait for a new generation, join its op if still open, leave.
    #[cfg_attr(all(target_arch = "wasm32", target_os = "unknown", not(target_feature = "atomics")), allow(dead_code))]
    fn worker(&self) {
        self.started.fetch_add(1, Relaxed);
        let mut seen = 0;
        loop {
            let generation = |s: u64| s / GENERATION;
            if !spin_until(|| generation(self.state.load(Acquire)) != seen) {
                let mut guard = lock(&self.lock);
                self.sleepers.fetch_add(1, SeqCst);
                while generation(self.state.load(SeqCst)) == seen {
                    guard = self.wake_workers.wait(guard).unwrap_or_else(PoisonError::into_inner);
                }
                self.sleepers.fetch_sub(1, SeqCst);
            }
            let mut s = self.state.load(SeqCst);
            seen = generation(s);
            // Set before the generation it just read, when that ends the pool.
            if self.stop.load(SeqCst) {
                return;
            }
            // Join: one more active worker, unless the op closed (or a newer one began).
            while generation(s) == seen && s & CLOSED == 0 {
                match self.state.compare_exchange_weak(s, s + 1, AcqRel, Acquire) {
                    Ok(_) => {
                        self.joins.fetch_add(1, Relaxed);
                        // SAFETY: joined, so the caller neither rewrites `job` nor returns
                        // before this worker leaves.
                        self.work(unsafe { *self.job.get() });
                        let left = self.state.fetch_sub(1, SeqCst) - 1;
                        if left & ACTIVE == 0 && left & CLOSED != 0 && self.caller_asleep.load(SeqCst) {
                            let _guard = lock(&self.lock);
                            self.wake_caller.notify_one();
                        }
                        break;
                    }
                    Err(now) => s = now,
                }
            }
        }
    }

    /// Opens a new op (no worker is inside one), waking sleeping workers.
    fn open(&self, job: Job) {
        // SAFETY: the previous op is closed with no active worker: nobody reads `job`.
        unsafe { *self.job.get() = job };
        self.next.store(0, Relaxed);
        self.panicked.store(false, Relaxed);
        let s = self.state.load(Relaxed);
        self.state.store((s & !(GENERATION - 1)).wrapping_add(GENERATION), SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            let _guard = lock(&self.lock);
            self.wake_workers.notify_all();
        }
    }

    /// Closes the op to late workers and waits for those inside it to leave.
    fn close(&self) {
        if self.state.fetch_or(CLOSED, SeqCst) & ACTIVE == 0 {
            return;
        }
        if spin_until(|| self.state.load(Acquire) & ACTIVE == 0) {
            return;
        }
        let mut guard = lock(&self.lock);
        self.caller_asleep.store(true, SeqCst);
        while self.state.load(SeqCst) & ACTIVE != 0 {
            guard = self.wake_caller.wait(guard).unwrap_or_else(PoisonError::into_inner);
        }
        self.caller_asleep.store(false, SeqCst);
    }
}

impl ThreadPool {
    /// A pool of `threads` threads in all: the caller and `threads - 1` workers.
    pub fn new(threads: usize) -> Result<ThreadPool, PoolError> {
        if threads == 0 {
            return Err(PoolError::NoThreads);
        }
        let shared = Arc::new(Shared {
            state: AtomicU64::new(CLOSED),
            job: UnsafeCell::new(Job { f: &noop, n_tasks: 0 }),
            next: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            payload: Mutex::new(None),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake_workers: Condvar::new(),
            wake_caller: Condvar::new(),
            sleepers: AtomicUsize::new(0),
            caller_asleep: AtomicBool::new(false),
            started: AtomicUsize::new(0),
            joins: AtomicU64::new(0),
        });
        let mut pool = ThreadPool { shared, workers: Vec::with_capacity(threads - 1), serial: Mutex::new(()) };
        for i in 1..threads {
            // On failure, dropping `pool` stops the workers already started.
            pool.workers.push(spawn(i, Arc::clone(&pool.shared))?);
        }
        Ok(pool)
    }

    /// Threads in all, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// How many workers have started, and how many times one joined an op.
    pub fn activity(&self) -> PoolActivity {
        PoolActivity { started: self.shared.started.load(Relaxed), joins: self.shared.joins.load(Relaxed) }
    }

    /// Runs `f(i)` for every `i < n_tasks`, each exactly once, on the calling thread and the
    /// workers that join in time; returns when all have finished. A panicking task stops the
    /// claiming of new tasks, and its panic is re-raised here once every thread is done.
    /// Tasks must not call `run` on the same pool (it would wait for itself).
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() || n_tasks <= 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        let _serial = lock(&self.serial);
        // SAFETY: erases `f`'s lifetime so workers can hold it. They use it only while joined
        // to this op, and this function returns (or unwinds) only after `close` saw every
        // joined worker leave; the caller's own panics are caught until then.
        let f = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f) };
        let job = Job { f, n_tasks };
        self.shared.open(job);
        self.shared.work(job);
        self.shared.close();
        if let Some(p) = lock(&self.shared.payload).take() {
            panic::resume_unwind(p);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        // `&mut self`: no op is open. A new generation with `stop` set ends the workers.
        self.shared.stop.store(true, SeqCst);
        self.shared.open(Job { f: &noop, n_tasks: 0 });
        for worker in self.workers.drain(..) {
            join(worker);
        }
    }
}

/// A started worker thread.
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
type Worker = std::thread::JoinHandle<()>;

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
fn spawn(i: usize, shared: Arc<Shared>) -> Result<Worker, PoolError> {
    let thread = std::thread::Builder::new().name(format!("webvlm-cpu-{i}"));
    thread.spawn(move || shared.worker()).map_err(|e| PoolError::Spawn(e.to_string()))
}

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
fn join(worker: Worker) {
    // A worker cannot panic (tasks' panics are caught); nothing to report if one did.
    let _ = worker.join();
}

#[cfg(all(target_arch = "wasm32", target_os = "unknown", not(target_feature = "atomics")))]
type Worker = std::convert::Infallible;

#[cfg(all(target_arch = "wasm32", target_os = "unknown", not(target_feature = "atomics")))]
fn spawn(_: usize, _: Arc<Shared>) -> Result<Worker, PoolError> {
    Err(PoolError::Unsupported)
}

#[cfg(all(target_arch = "wasm32", target_os = "unknown", not(target_feature = "atomics")))]
fn join(worker: Worker) {
    match worker {}
}

#[cfg(all(target_arch = "wasm32", target_os = "unknown", target_feature = "atomics"))]
use wasm_workers::{join, spawn, Worker};

/// Worker threads as Web Workers (the threaded wasm build). The pool hands each one a
/// reference to its [`Shared`] as an address in the shared memory; the worker's JS
/// (`js/pool_worker.js`) instantiates this module on that memory and calls
/// [`run_pool_worker`], which returns when the pool stops. There is nothing to join: a
/// stopped worker drops its reference and ends its Web Worker itself.
#[cfg(all(target_arch = "wasm32", target_os = "unknown", target_feature = "atomics"))]
mod wasm_workers {
    use super::{PoolError, Shared};
    use std::sync::Arc;
    use wasm_bindgen::prelude::*;

    pub(super) type Worker = ();

    #[wasm_bindgen(inline_js = r#"
        export function startPoolWorker(module, memory, shared, name) {
            // This snippet lies in snippets/<crate>-<hash>/ beside the package's files.
            const url = new URL("../../pool_worker.js", import.meta.url);
            new Worker(url, { type: "module", name }).postMessage({ module, memory, shared });
        }
    "#)]
    extern "C" {
        #[wasm_bindgen(catch, js_name = startPoolWorker)]
        fn start_pool_worker(module: JsValue, memory: JsValue, shared: usize, name: &str) -> Result<(), JsValue>;
    }

    pub(super) fn spawn(i: usize, shared: Arc<Shared>) -> Result<Worker, PoolError> {
        let address = Arc::into_raw(shared) as usize;
        start_pool_worker(wasm_bindgen::module(), wasm_bindgen::memory(), address, &format!("webvlm-cpu-{i}")).map_err(|e| {
            // SAFETY: the reference was not handed over.
            drop(unsafe { Arc::from_raw(address as *const Shared) });
            PoolError::Spawn(format!("{e:?}"))
        })
    }

    pub(super) fn join(_: Worker) {}

    /// A pool worker's life, called by `js/pool_worker.js` in its own Web Worker.
    ///
    /// # Safety
    /// `shared` is an address [`spawn`] handed out, used once.
    #[wasm_bindgen(js_name = runPoolWorker)]
    pub unsafe fn run_pool_worker(shared: usize) {
        // SAFETY: see the function's contract.
        let shared = unsafe { Arc::from_raw(shared as *const Shared) };
        shared.worker();
    }
}
