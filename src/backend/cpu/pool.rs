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
//! One thread spawns nothing (wasm32 has no threads: `std::thread` fails to spawn there).

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
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
    Spawn(#[from] std::io::Error),
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
}

// SAFETY: `job` is the only field that is not Send/Sync by itself (an UnsafeCell holding a raw
// pointer). Its writes and reads never overlap (see the field), the state word orders them,
// and the pointed-to function is Sync and outlives every use (see `run`).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A fixed set of threads that run ops' tasks; see the module docs.
pub struct ThreadPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
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
    fn worker(&self) {
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
        });
        let mut pool = ThreadPool { shared, handles: Vec::with_capacity(threads - 1), serial: Mutex::new(()) };
        for i in 1..threads {
            let shared = Arc::clone(&pool.shared);
            // On failure, dropping `pool` stops the workers already started.
            let handle = std::thread::Builder::new().name(format!("webvlm-cpu-{i}")).spawn(move || shared.worker())?;
            pool.handles.push(handle);
        }
        Ok(pool)
    }

    /// Threads in all, the caller included.
    pub fn threads(&self) -> usize {
        self.handles.len() + 1
    }

    /// Runs `f(i)` for every `i < n_tasks`, each exactly once, on the calling thread and the
    /// workers that join in time; returns when all have finished. A panicking task stops the
    /// claiming of new tasks, and its panic is re-raised here once every thread is done.
    /// Tasks must not call `run` on the same pool (it would wait for itself).
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.handles.is_empty() || n_tasks <= 1 {
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
        for handle in self.handles.drain(..) {
            // A worker cannot panic (tasks' panics are caught); nothing to report if one did.
            let _ = handle.join();
        }
    }
}
