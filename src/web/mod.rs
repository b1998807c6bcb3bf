//! The wasm-bindgen surface: the only place `JsValue` appears. [`WebEngine`] is what the
//! package's Web Worker drives (`js/worker.js`): open WebGPU or the CPU backend (`js/backend.js`
//! chooses), stream the GGUF bytes of the text model and its mmproj in file order (the model is
//! built when a header is complete, the weights are written to GPU buffers, or to wasm memory
//! on the CPU, as they arrive), then generate with streamed text deltas. Requests and results
//! cross as JSON strings (the worker speaks OpenAI's shapes). A Hugging Face repository loads
//! the same way after [`WebEngine::open_repository`]: its safetensors shards take the place of
//! the GGUF parts ([`RepoLoad`]).

pub mod error;
mod many;
mod plan;
mod request;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use wasm_bindgen::prelude::*;

use crate::api::many::{run_many, ManyEvent};
use crate::api::responses::{self, ResponseStore};
use crate::api::{request_json, ChatRequest};
use crate::backend::gpu::{BufferRegistry, Gpu, GpuOptions};
use crate::backend::{cpu, Device};
use crate::engine::{Engine, Prompt, RepoLoad, Vision, Wait, DEFAULT_PROMPT_CACHE_BYTES};
use crate::error::Classify;
use crate::model::{ContextOptions, MemoryBudget, Precision};
use crate::source::{GgufParts, GgufStream, LoadQuant};
use error::WebError;

/// The crate version, for the page footer.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Opens the WebGPU device and describes the adapter, or fails with a readable error.
#[wasm_bindgen(js_name = adapterInfo)]
pub async fn adapter_info() -> Result<String, JsError> {
    let gpu = Gpu::new(GpuOptions::default()).await.map_err(js)?;
    Ok(describe(&Device::Gpu(gpu)))
}

fn describe(dev: &Device) -> String {
    let c = dev.caps();
    format!("{} [{}] f16={} max storage binding={} MiB", c.adapter, c.backend, c.f16, c.max_storage_binding >> 20)
}

/// Which backend runs, as JSON: `{"name": "webgpu"}`, or `{"name": "cpu", "simd", "threads",
/// "mode"}` with the SIMD level the CPU kernels run at (`scalar`, `simd128`, `relaxed`: the
/// wasm build's).
fn backend_info(dev: &Device) -> serde_json::Value {
    match dev {
        Device::Gpu(_) => serde_json::json!({ "name": "webgpu" }),
        Device::Cpu(c) => serde_json::json!({
            "name": "cpu",
            "simd": cpu::simd::process_level().to_string(),
            "threads": c.pool.threads(),
            "mode": format!("{:?}", c.mode).to_lowercase(),
        }),
    }
}

/// A JS `Error` named after the error's class (`AdapterTooSmallError`, ...: [`error`]).
fn js<E: Classify + std::fmt::Display + 'static>(e: E) -> JsError {
    error::to_js(&e)
}

/// Sends each streamed value to `f` as JSON; when `f` returns a Promise, the next step waits
/// for it (the page reads slower than tokens decode).
fn js_sink(f: &js_sys::Function) -> impl FnMut(serde_json::Value) -> Option<Wait> + '_ {
    move |value| {
        let ret = f.call1(&JsValue::NULL, &JsValue::from_str(&value.to_string())).ok()?;
        let promise = ret.dyn_into::<js_sys::Promise>().ok()?;
        Some(Box::pin(async move {
            let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
        }))
    }
}

/// Loading state: the device until the text header is in, then the engine.
enum State {
    Device(Box<Device>),
    Ready(Box<Engine>),
    Poisoned,
}

struct Inner {
    state: State,
    text: GgufParts,
    /// A Hugging Face repository, whose shards replace the text GGUF parts.
    repo: Option<RepoLoad>,
    /// The repository's load-time quantization is the memory plan's choice.
    repo_quant_auto: bool,
    /// GPU memory the model may use (`gpuMemory`; 4 GiB by default).
    budget: MemoryBudget,
    vision: Option<GgufStream>,
    /// The mmproj's published SHA-256, applied when its stream starts.
    vision_sha256: Option<[u8; 32]>,
    context: ContextOptions,
    vision_quant: LoadQuant,
    prompt_cache_bytes: u64,
    /// `(min, max)` resized image area, applied when the engine is built.
    image_area: (Option<u64>, Option<u64>),
}

/// An engine loading or running in the browser.
#[wasm_bindgen]
pub struct WebEngine {
    inner: Rc<RefCell<Inner>>,
    abort: Rc<Cell<bool>>,
    /// Every GPU buffer the engine's device created ([`WebEngine::release`]); none on the CPU.
    buffers: Option<BufferRegistry>,
    /// Stored responses of the Responses API, for `previous_response_id`.
    responses: RefCell<ResponseStore>,
    /// The stop flags of the requests [`WebEngine::generate_many`] runs, by index.
    many_aborts: RefCell<Vec<Rc<Cell<bool>>>>,
    /// Requests run by [`WebEngine::generate_many`] and the most in one call, for `stats`.
    many_counts: Cell<(u64, usize)>,
}

#[wasm_bindgen]
impl WebEngine {
    /// Opens WebGPU, or the CPU backend with `"backend": "cpu"`. `options`: JSON `{"backend",
    /// "threads", "cpuMode", "maxContext", "maxChunk", "f16", "kvF16", "visionQuant",
    /// "textParts", "promptCacheBytes", "imageMinArea", "imageMaxArea", "gpuMemory"}`, all
    /// optional: WebGPU, a 4096-token f16 KV cache by default (a 1540-pixel image alone can take
    /// ~3000 tokens; f16 halves the cache on any adapter), a text model of one file, 256 MiB
    /// for saved prompt prefixes.
    pub async fn create(options: String) -> Result<WebEngine, JsError> {
        let o: request::EngineOptions = serde_json::from_str(&options).map_err(js)?;
        let device = match o.backend.as_deref().unwrap_or("webgpu") {
            "webgpu" => Device::Gpu(Gpu::new(GpuOptions::default()).await.map_err(js)?),
            "cpu" => Device::Cpu(cpu_device(o.threads, o.cpu_mode.as_deref())?),
            other => return Err(js(WebError::BadOption(format!("backend: {other:?} is neither \"webgpu\" nor \"cpu\"")))),
        };
        let caps = device.caps();
        let defaults = ContextOptions::for_adapter(caps);
        let precision = Precision {
            kv_f16: o.kv_f16.unwrap_or(defaults.precision.kv_f16),
            compute_f16: o.f16.unwrap_or(defaults.precision.compute_f16) && caps.f16,
        };
        let context = ContextOptions {
            max_ctx: o.max_context.unwrap_or(4096),
            max_chunk: o.max_chunk.unwrap_or(defaults.max_chunk),
            precision,
        };
        let vision_quant = o
            .vision_quant
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| js(WebError::BadOption(e)))?
            .unwrap_or_default();
        let text = GgufParts::new(o.text_parts.unwrap_or(1)).map_err(js)?;
        let prompt_cache_bytes = o.prompt_cache_bytes.unwrap_or(DEFAULT_PROMPT_CACHE_BYTES);
        let asked = match o.gpu_memory.as_deref() {
            Some(b) => Some(b.parse().map_err(|e: String| js(WebError::BadOption(format!("gpuMemory: {e}"))))?),
            None => None,
        };
        let budget = match &device {
            Device::Gpu(_) => asked.unwrap_or_else(MemoryBudget::default_for_target),
            Device::Cpu(_) => plan::wasm_memory_budget(asked, prompt_cache_bytes),
        };
        let buffers = device.gpu().ok().map(Gpu::buffers);
        let inner = Inner {
            state: State::Device(Box::new(device)),
            text,
            repo: None,
            repo_quant_auto: false,
            budget,
            vision: None,
            vision_sha256: None,
            context,
            vision_quant,
            prompt_cache_bytes,
            image_area: (o.image_min_area, o.image_max_area),
        };
        Ok(WebEngine {
            inner: Rc::new(RefCell::new(inner)),
            abort: Rc::new(Cell::new(false)),
            buffers,
            responses: RefCell::new(ResponseStore::default()),
            many_aborts: RefCell::default(),
            many_counts: Cell::default(),
        })
    }

    /// The adapter's name, backend and limits.
    #[wasm_bindgen(js_name = adapterInfo)]
    pub fn adapter(&self) -> Result<String, JsError> {
        let inner = self.inner.try_borrow().map_err(|_| js(WebError::Busy))?;
        match &inner.state {
            State::Device(gpu) => Ok(describe(gpu)),
            State::Ready(e) => Ok(describe(e.device())),
            State::Poisoned => Err(js(WebError::LoadFailed)),
        }
    }

    /// Verifies a whole file (`"text"` with its part index, or `"mmproj"`) against its
    /// published SHA-256 (64 hex digits) when loading finishes; call before its first bytes
    /// are pushed.
    #[wasm_bindgen(js_name = expectSha256)]
    pub fn expect_sha256(&self, file: &str, part: usize, hex: &str) -> Result<(), JsError> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        let bad = || js(WebError::BadSha256(hex.to_string()));
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        for (i, d) in digest.iter_mut().enumerate() {
            *d = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        match file {
            "text" if inner.repo.is_some() => inner.repo.as_mut().map_or(Ok(()), |r| r.expect_sha256(part, digest)).map_err(js),
            "text" => inner.text.part(part).and_then(|p| p.expect_sha256(digest)).map_err(js),
            "mmproj" => match &mut inner.vision {
                Some(stream) => stream.expect_sha256(digest).map_err(js),
                None => {
                    inner.vision_sha256 = Some(digest);
                    Ok(())
                }
            },
            _ => Err(js(WebError::UnknownFile(file.to_string()))),
        }
    }

    /// Makes the text model a Hugging Face repository instead of GGUF parts (before any
    /// push): `files` maps the names fetched (`config.json`, `tokenizer.json`,
    /// `tokenizer_config.json`, `chat_template.jinja`, `generation_config.json`,
    /// `processor_config.json`, `preprocessor_config.json`, `model.safetensors.index.json`;
    /// absent ones left out) to their bytes, `quant` is the load-time quantization of its
    /// float matrices (`keep`, `q8_0`, `q4_k`, `q4_0`, `q4_1`;
    /// `undefined`: the memory plan's choice, [`Self::plan_memory`]).
    /// With `write_gguf` the converted model also comes out as one GGUF file while it loads
    /// ([`Self::take_gguf`]): the package keeps it in Cache Storage in place of the shards.
    /// Returns the safetensors shards to stream, in order: their headers first
    /// ([`Self::push_header`]), then their bytes ([`Self::push_model`]) as for GGUF parts.
    #[wasm_bindgen(js_name = openRepository)]
    pub fn open_repository(&self, files: js_sys::Map, quant: Option<String>, write_gguf: bool) -> Result<Vec<String>, JsError> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        if !matches!(inner.state, State::Device(_)) || inner.repo.is_some() {
            return Err(js(WebError::RepoLate));
        }
        inner.repo_quant_auto = quant.is_none();
        let quant = quant.as_deref().unwrap_or("q8_0").parse().map_err(|e: String| js(WebError::BadOption(e)))?;
        let read = |name: &str| {
            let v = files.get(&JsValue::from_str(name));
            (!v.is_undefined() && !v.is_null()).then(|| js_sys::Uint8Array::new(&v).to_vec())
        };
        let mut repo = RepoLoad::new(read, quant).map_err(js)?;
        if write_gguf {
            repo.write_gguf().map_err(js)?;
        }
        let shards = repo.shard_names();
        inner.repo = Some(repo);
        Ok(shards)
    }

    /// The converted repository's GGUF bytes produced since the last call, in file order
    /// (after [`Self::open_repository`] with `write_gguf`; empty otherwise). The file is
    /// complete once [`Self::finish_load`] succeeded and this was called after it.
    #[wasm_bindgen(js_name = takeGguf)]
    pub fn take_gguf(&self) -> Result<Vec<u8>, JsError> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        Ok(inner.repo.as_mut().map(RepoLoad::take_gguf).unwrap_or_default())
    }

    /// First pass over a split text model or a repository's shards: the first bytes of
    /// `part`, until the call returns true (its header is complete). Every part's header must
    /// be in before the parts' bytes are pushed with [`Self::push_model`]; an unsplit GGUF
    /// needs no first pass.
    #[wasm_bindgen(js_name = pushHeader)]
    pub fn push_header(&self, part: usize, chunk: &[u8]) -> Result<bool, JsError> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        match &mut inner.repo {
            Some(repo) => repo.push_header(part, chunk).map_err(js),
            None => inner.text.push_header(part, chunk).map_err(js),
        }
    }

    /// Feeds the next bytes of the text model's `part` (each part in file order, from byte 0).
    /// The model is built as soon as every part's header is complete.
    #[wasm_bindgen(js_name = pushModel)]
    pub fn push_model(&self, part: usize, chunk: &[u8]) -> Result<(), JsError> {
        let mut guard = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        let inner = &mut *guard;
        if inner.repo.is_some() {
            return push_shard(inner, part, chunk);
        }
        match std::mem::replace(&mut inner.state, State::Poisoned) {
            State::Device(gpu) => {
                inner.text.push(&gpu, part, chunk).map_err(js)?;
                if !inner.text.headers_complete().map_err(js)? {
                    inner.state = State::Device(gpu);
                    return Ok(());
                }
                let mut engine = Engine::builder(*gpu).context(inner.context).load(&mut inner.text).map_err(js)?;
                configure(&mut engine, inner)?;
                inner.text.seal(engine.device()).map_err(js)?;
                inner.state = State::Ready(Box::new(engine));
            }
            State::Ready(engine) => {
                let r = inner.text.push(engine.device(), part, chunk);
                inner.state = State::Ready(engine);
                r.map_err(js)?;
            }
            State::Poisoned => return Err(js(WebError::LoadFailed)),
        }
        Ok(())
    }

    /// First pass over the mmproj, for the memory plan: its first bytes until the call
    /// returns true (its header is complete); [`Self::push_mmproj`] then streams it from byte 0.
    #[wasm_bindgen(js_name = pushMmprojHeader)]
    pub fn push_mmproj_header(&self, chunk: &[u8]) -> Result<bool, JsError> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        let inner = &mut *inner;
        if inner.vision.is_none() {
            inner.vision = Some(vision_stream(inner.vision_sha256)?);
        }
        inner.vision.as_mut().map_or(Ok(false), |v| v.push_header(chunk)).map_err(js)
    }

    /// The GPU memory the model needs, planned from the headers pushed so far (every text
    /// part's or shard's and the mmproj's, before any weight bytes), as JSON `{plan: {quant,
    /// totalBytes, largestContext, ...}}` (`plan: null` with a `reason` for models the plan
    /// does not read); a model that cannot fit the adapter's limits or the `gpuMemory` budget
    /// fails with `AdapterTooSmallError`. A repository opened without a quantization gets the
    /// plan's (`plan.quant`).
    #[wasm_bindgen(js_name = planMemory)]
    pub fn plan_memory(&self) -> Result<String, JsError> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        plan::plan(&mut inner).map(|v| v.to_string()).map_err(js)
    }

    /// Feeds the next bytes of the vision projector (mmproj), after the text model's header.
    #[wasm_bindgen(js_name = pushMmproj)]
    pub fn push_mmproj(&self, chunk: &[u8]) -> Result<(), JsError> {
        let mut guard = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        let inner = &mut *guard;
        let State::Ready(engine) = &mut inner.state else {
            return Err(js(WebError::MmprojFirst));
        };
        let stream = match inner.vision.take() {
            Some(stream) => stream,
            None => vision_stream(inner.vision_sha256)?,
        };
        let stream = inner.vision.insert(stream);
        let loaded = engine.vision().and_then(Vision::placed).is_some();
        stream.push(engine.device(), chunk).map_err(js)?;
        if !loaded && stream.header().is_some() {
            engine.add_vision(stream, inner.vision_quant).map_err(js)?;
            stream.seal(engine.device()).map_err(js)?;
        }
        Ok(())
    }

    /// Checks that every weight arrived; returns a JSON summary of the model.
    #[wasm_bindgen(js_name = finishLoad)]
    pub fn finish_load(&self) -> Result<String, JsError> {
        let mut guard = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        let inner = &mut *guard;
        match &mut inner.repo {
            Some(repo) => repo.finish().map_err(js)?,
            None => inner.text.finish().map_err(js)?,
        }
        if let Some(v) = &mut inner.vision {
            v.finish().map_err(js)?;
        }
        let State::Ready(e) = &inner.state else { return Err(js(WebError::NeverLoaded)) };
        let c = &e.decoder().cfg;
        let summary = serde_json::json!({
            "architecture": c.arch,
            "name": c.name,
            "layers": c.n_layer,
            "hidden": c.n_embd,
            "vocab": c.vocab,
            "vision": e.has_vision(),
            "tools": e.template().tool_syntax().is_some(),
            "weightBytes": e.decoder().weight_bytes() + e.vision().map_or(0, Vision::weight_bytes),
            "maxContext": e.max_context(),
            "maxImageEdge": e.vision().map(Vision::max_image_edge),
            "promptCacheBytes": e.prompt_cache_stats().budget_bytes,
            "adapter": describe(e.device()),
            "backend": backend_info(e.device()),
        });
        Ok(summary.to_string())
    }

    /// What the engine's caches hold, as JSON: `{promptCache: {liveTokens, savedTokens,
    /// savedBytes, budgetBytes, evicted}, concurrent: {requests, widest}}` (the soak test
    /// reads it between requests; `concurrent`: requests run by [`Self::generate_many`], and
    /// the most in one call).
    pub fn stats(&self) -> Result<String, JsError> {
        let guard = self.inner.try_borrow().map_err(|_| js(WebError::Busy))?;
        let State::Ready(e) = &guard.state else { return Err(js(WebError::NotLoaded)) };
        let p = e.prompt_cache_stats();
        let mut stats = serde_json::json!({ "promptCache": {
            "liveTokens": p.live_tokens, "savedTokens": p.saved_tokens, "savedBytes": p.saved_bytes,
            "budgetBytes": p.budget_bytes, "evicted": p.evicted,
        } });
        let (requests, widest) = self.many_counts.get();
        stats["concurrent"] = serde_json::json!({ "requests": requests, "widest": widest });
        if let Device::Cpu(c) = e.device() {
            let a = c.pool.activity();
            stats["cpuPool"] =
                serde_json::json!({ "threads": c.pool.threads(), "workersStarted": a.started, "workerJoins": a.joins });
        }
        Ok(stats.to_string())
    }

    /// Runs an OpenAI chat-completions request (JSON, checked before any work) and returns
    /// the `chat.completion` object as JSON. `images` maps image URLs that are not `data:`
    /// URLs to their bytes (the worker fetched them). With `stream: true`, each
    /// `chat.completion.chunk` goes to `on_chunk(json)` as it is made; when that returns a
    /// Promise, the next step waits for it (the page reads slower than tokens decode).
    // The borrow is held across the awaits on purpose: it marks the engine busy, so a call
    // that comes meanwhile fails with `WebError::Busy` (`try_borrow_mut`) instead of running.
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn generate(&self, request: String, images: js_sys::Map, on_chunk: js_sys::Function) -> Result<String, JsError> {
        let mut guard = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        let State::Ready(engine) = &mut guard.state else { return Err(js(WebError::NotLoaded)) };
        let req = ChatRequest::parse(&request, engine.decoder().cfg.vocab as usize).map_err(js)?;
        self.abort.set(false);
        let mut load = |url: &str| request::image_bytes(&images, url);
        let value = crate::api::run(engine, &req, &mut load, Some(self.abort.clone()), js_sink(&on_chunk)).await.map_err(js)?;
        Ok(value.to_string())
    }

    /// Runs several requests at once — chat requests (`kinds[i]` `"generate"`, checked as
    /// [`Self::generate`] checks one) and Responses requests (`"respond"`, run as
    /// [`Self::respond`] runs one) — up to `slots` decoding together in batched steps and the
    /// rest joining as slots free (continuous batching, `api::many`); each gives the tokens it
    /// gives alone; the run's slots are kept for the next call (their sequences' prefixes
    /// reused, as a lone request reuses the engine's). `more()`, called before each step unless a request waits for slots,
    /// returns a `[JSON, kind]` request to join them (its images in `images` already), or a
    /// Promise the next step waits for (the worker handles the messages that came meanwhile):
    /// requests sent while these decode join the run ([`many::PageRequests`]). Indices go on
    /// from `requests` to `more`'s. `on_event(index, kind, value)` gets request `index`'s
    /// stream chunks (`"chunk"`: JSON, a Responses request's events) and its end
    /// (`"result"`, the `chat.completion` or `response` JSON; `"error"`, the Error its own
    /// call would throw); when it returns a Promise, the next step waits for it.
    /// [`Self::stop_request`] ends one request, [`Self::stop`] all of them.
    #[wasm_bindgen(js_name = generateMany)]
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn generate_many(
        &self,
        requests: Vec<String>,
        kinds: Vec<String>,
        images: js_sys::Map,
        slots: u32,
        on_event: js_sys::Function,
        more: Option<js_sys::Function>,
    ) -> Result<(), JsError> {
        let mut guard = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        let State::Ready(engine) = &mut guard.state else { return Err(js(WebError::NotLoaded)) };
        self.many_aborts.take();
        let runs = RefCell::default();
        let shared = many::Shared {
            aborts: &self.many_aborts,
            runs: &runs,
            store: &self.responses,
            vocab: engine.decoder().cfg.vocab as usize,
        };
        let given = requests.into_iter().zip(kinds).collect();
        let mut load = |url: &str| request::image_bytes(&images, url);
        let sink = |i: usize, event: ManyEvent| many::deliver(&on_event, &shared, i, event);
        let run = run_many(engine, many::PageRequests::new(given, more, &shared), &mut load, slots.max(1), sink).await;
        // Its slots keep their sequences for the next call's requests (a chat's next turn).
        if let Some(run) = run {
            engine.keep_parallel(run);
        }
        let (count, widest) = self.many_counts.get();
        let ran = self.many_aborts.take().len();
        self.many_counts.set((count + ran as u64, widest.max(ran)));
        Ok(())
    }

    /// Ends request `index` of the running [`Self::generate_many`] call before its next step.
    #[wasm_bindgen(js_name = stopRequest)]
    pub fn stop_request(&self, index: usize) {
        if let Some(abort) = self.many_aborts.borrow().get(index) {
            abort.set(true);
        }
    }

    /// Runs an OpenAI Responses request (JSON) as [`Self::generate`] runs a chat request, and
    /// returns the `response` object as JSON; with `stream: true`, each event goes to
    /// `on_event(json)`. Responses are stored (`store`, the default) for a later request's
    /// `previous_response_id` and for [`Self::stored_response`].
    #[wasm_bindgen(js_name = respond)]
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn respond(&self, request: String, images: js_sys::Map, on_event: js_sys::Function) -> Result<String, JsError> {
        let mut guard = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        let State::Ready(engine) = &mut guard.state else { return Err(js(WebError::NotLoaded)) };
        let mut store = self.responses.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        let body = request_json(&request).map_err(js)?;
        self.abort.set(false);
        let mut load = |url: &str| request::image_bytes(&images, url);
        let abort = Some(self.abort.clone());
        let value = responses::run(engine, &mut store, body, &mut load, abort, js_sink(&on_event)).await.map_err(js)?;
        Ok(value.to_string())
    }

    /// A stored `response` object as JSON, `undefined` when none has this id.
    #[wasm_bindgen(js_name = storedResponse)]
    pub fn stored_response(&self, id: String) -> Result<Option<String>, JsError> {
        let store = self.responses.try_borrow().map_err(|_| js(WebError::Busy))?;
        Ok(store.get(&id).map(|v| v.to_string()))
    }

    /// Refuses a request [`Self::generate`] would refuse before its images are needed, with
    /// the same `BadRequestError` ([`crate::api::check`]).
    pub fn check(&self, request: String) -> Result<(), JsError> {
        let mut guard = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        let State::Ready(engine) = &mut guard.state else { return Err(js(WebError::NotLoaded)) };
        let req = ChatRequest::parse(&request, engine.decoder().cfg.vocab as usize).map_err(js)?;
        crate::api::check(engine, &req).map_err(js)
    }

    /// Ends the running generation (every request of a [`Self::generate_many`] call) after
    /// the current step.
    pub fn stop(&self) {
        self.abort.set(true);
        self.many_aborts.borrow().iter().for_each(|abort| abort.set(true));
    }

    /// Frees the engine's GPU memory now, loaded or not (a load that failed half-way too):
    /// drops the model and destroys every buffer its device created (`GPUBuffer.destroy()`,
    /// which wgpu's web backend leaves to garbage collection); returns how many. The engine
    /// is unusable afterwards (`LoadFailed`): call before `free()`, when unloading, reloading
    /// after a lost device or abandoning a load. Fails with `Busy` while a call runs.
    pub fn release(&self) -> Result<usize, JsError> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        inner.state = State::Poisoned;
        inner.repo = None;
        inner.vision = None;
        drop(inner);
        Ok(self.buffers.as_ref().map_or(0, BufferRegistry::destroy_all))
    }

    /// Teacher-forced logits `[tokens.length][vocab]` of ids that hold expanded image
    /// layouts, `images` (encoded files) filling the `[IMG]` positions in order (tests).
    // The borrow is held across the awaits on purpose: it marks the engine busy, so a call
    // that comes meanwhile fails with `WebError::Busy` (`try_borrow_mut`) instead of running.
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn logits(&self, tokens: Vec<u32>, images: js_sys::Array) -> Result<Vec<f32>, JsError> {
        let mut guard = self.inner.try_borrow_mut().map_err(|_| js(WebError::Busy))?;
        let State::Ready(engine) = &mut guard.state else { return Err(js(WebError::NotLoaded)) };
        let images = images
            .iter()
            .map(|v| engine.image_features(&js_sys::Uint8Array::new(&v).to_vec(), None))
            .collect::<Result<Vec<_>, _>>()
            .map_err(js)?;
        engine.logits(&Prompt { tokens, images }).await.map_err(js)
    }
}

/// The mmproj's stream, checked against its published SHA-256 when one was given.
fn vision_stream(sha256: Option<[u8; 32]>) -> Result<GgufStream, JsError> {
    let mut stream = GgufStream::new();
    if let Some(digest) = sha256 {
        stream.expect_sha256(digest).map_err(js)?;
    }
    Ok(stream)
}

/// The CPU backend on `threads` threads (default 1) in `mode` (default fast: 8-bit activations,
/// as llama.cpp's CPU backend and the native CLI's default). Only the threaded build (shared
/// memory, a pool of Web Workers) runs more than one thread.
fn cpu_device(threads: Option<usize>, mode: Option<&str>) -> Result<cpu::Device, JsError> {
    let threads = threads.unwrap_or(1);
    let mode = match mode.unwrap_or("fast") {
        "fast" => cpu::Mode::Fast,
        "exact" => cpu::Mode::Exact,
        other => return Err(js(WebError::BadOption(format!("cpuMode: {other:?} is neither \"fast\" nor \"exact\"")))),
    };
    cpu::Device::new(threads, mode).map_err(|e| js(WebError::BadOption(format!("threads: {threads}; {e}"))))
}

/// The engine options that apply once the model is built.
fn configure(engine: &mut Engine, inner: &Inner) -> Result<(), JsError> {
    engine.set_prompt_cache_bytes(inner.prompt_cache_bytes);
    engine.set_image_area(inner.image_area.0, inner.image_area.1).map_err(js)
}

/// [`WebEngine::push_model`] for a repository's shard: the engine is built on the first push
/// (every shard's header must be in by then).
fn push_shard(inner: &mut Inner, shard: usize, chunk: &[u8]) -> Result<(), JsError> {
    let Some(mut repo) = inner.repo.take() else { return Err(js(WebError::LoadFailed)) };
    let r = push_shard_to(inner, &mut repo, shard, chunk);
    inner.repo = Some(repo);
    r
}

fn push_shard_to(inner: &mut Inner, repo: &mut RepoLoad, shard: usize, chunk: &[u8]) -> Result<(), JsError> {
    match std::mem::replace(&mut inner.state, State::Poisoned) {
        State::Device(gpu) => {
            if !repo.headers_complete().map_err(js)? {
                return Err(js(WebError::HeadersFirst));
            }
            let mut engine = repo.build(*gpu, inner.context).map_err(js)?;
            configure(&mut engine, inner)?;
            inner.state = State::Ready(Box::new(engine));
        }
        ready @ State::Ready(_) => inner.state = ready,
        State::Poisoned => return Err(js(WebError::LoadFailed)),
    }
    let State::Ready(engine) = &inner.state else { return Err(js(WebError::LoadFailed)) };
    repo.push(engine.device(), shard, chunk).map_err(js)
}
