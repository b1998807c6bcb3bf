// webvlm: a vision-language model on the user's GPU, in the page.
//
//   import { createEngine } from "webvlm";
//   const engine = await createEngine({ model: { text: url, mmproj: url }, onProgress });
//   const reply = await engine.chat.completions.create({ messages, max_tokens: 64 });
//   for await (const chunk of await engine.chat.completions.create({ messages, stream: true })) ...
//   await engine.unload();
//
// The engine runs in a module worker (worker.js) unless `worker: false`; the object is the
// same either way. Requests are queued and run in order; chat and Responses requests made
// together (in one task: concurrent `create` calls, a batch) decode together in batched steps, up
// to the engine option `parallel` (4) at a time, each giving the tokens it gives alone, and those
// sent while they decode join them. `createEngine({remote})` gives
// the same interface over HTTP to an OpenAI-compatible server (remote.js), and `engine.fetch`
// serves OpenAI's HTTP routes from an engine for OpenAI's SDKs (openai-fetch.js).

import { AdapterTooSmallError, BadRequestError, DownloadError, EngineUnloadedError, NoWebGPUError, fromWire } from "./errors.js";
import { cacheContents, deleteCached, DEFAULT_CACHE } from "./source.js";
import { runBatch, toCSV, toJSONL } from "./batch.js";
import { openAIFetch } from "./openai-fetch.js";
import { createRemoteEngine } from "./remote.js";
import { checkBackendOptions } from "./backend.js";

export * from "./errors.js";
export { cacheContents, deleteCached, DEFAULT_CACHE, toCSV, toJSONL };

/**
 * Creates an engine: in the page (`model`), over HTTP to an OpenAI-compatible server
 * (`remote`, see remote.js), or in the page with the server as a fallback (both, with
 * `fallback: "remote"`): the remote engine is used when the model does not fit
 * (AdapterTooSmallError, raised from the headers before any weight is downloaded) or, with
 * `backend: "webgpu"`, when this browser has no WebGPU (NoWebGPUError: `navigator.gpu`
 * missing or no adapter; `backend: "auto"` runs on the CPU there); its `info.fallback` says
 * why. Other load failures reject as they would without a fallback.
 * @param {object} o `model` and its options (`createLocalEngine`), `remote`
 *   ({baseURL, apiKey, model, headers, fetch}), `fallback` ("remote"), `signal`
 */
export async function createEngine(o = {}) {
  const { model, remote, fallback, signal } = o;
  if (fallback !== undefined && fallback !== "remote") throw new BadRequestError(`fallback must be "remote", not ${JSON.stringify(fallback)}`);
  if (fallback && !(model && remote)) throw new BadRequestError('fallback: "remote" needs both model and remote');
  if (remote && !model) return createRemoteEngine(remote, { signal });
  if (remote && !fallback) throw new BadRequestError('createEngine takes model or remote; give both with fallback: "remote"');
  if (!remote) return createLocalEngine(o);
  try {
    return await createLocalEngine(o);
  } catch (e) {
    if (!(e instanceof NoWebGPUError || e instanceof AdapterTooSmallError)) throw e;
    return createRemoteEngine(remote, { signal, fallback: { reason: e.name, message: e.message } });
  }
}

/**
 * Creates an engine in the page and loads a model.
 * @param {object} o
 * @param {{text?: any, repo?: string|URL, quant?: string, mmproj?: any}} o.model URLs, Files or
 *   Blobs (the text GGUF and its mmproj), or a Hugging Face repository's folder URL with the
 *   load-time quantization of its float matrices (`q8_0` default, `q4_0`, `q4_1`, `keep`)
 * @param {(p: object) => void} [o.onProgress] {phase, loadedBytes, totalBytes, fraction, bytesPerSecond, etaSeconds, text}
 * @param {boolean} [o.worker=true] run the engine in a module worker
 * @param {object} [o.engine] {maxContext, maxChunk, f16, kvF16, visionQuant, promptCacheBytes, imageMinArea, imageMaxArea}
 * @param {string|null} [o.cacheName] Cache Storage name for weight chunks; `null` streams the
 *   weights without storing them (every load downloads them again)
 * @param {number} [o.chunkBytes] download chunk size (default 32 MiB)
 * @param {number} [o.streamStallMs=30000] how long a stream may wait with its unread chunks
 *   (STREAM_WINDOW of them) before the generation is cut and the engine goes on with the next
 *   request; reading that stream on then ends with StreamStalledError (`Infinity`: never)
 * @param {AbortSignal} [o.signal] cancels the load (rejects with DownloadError)
 * @param {"auto"|"webgpu"|"cpu"} [o.backend="auto"] where the model runs: `auto` takes WebGPU
 *   on a hardware adapter and the CPU backend where there is no WebGPU or only a software
 *   adapter (backend.js); `engine.info.backend` says which runs, on which build, and why
 * @param {number} [o.threads] threads of the CPU backend (default: half the logical cores, at
 *   most 8, in a worker on a cross-origin-isolated page; else 1)
 * @param {"simd128"} [o.wasmBuild] load the SIMD128 build where relaxed SIMD exists too (tests)
 */
async function createLocalEngine({ model, onProgress, worker = true, engine: options = {}, cacheName = DEFAULT_CACHE, chunkBytes,
  streamStallMs, signal, backend = "auto", threads, wasmBuild } = {}) {
  if (!model?.text && !model?.repo) throw new BadRequestError("createEngine needs model.text (a URL, File or Blob) or model.repo (a URL)");
  checkBackendOptions(backend, threads);
  if (wasmBuild !== undefined && wasmBuild !== "simd128") throw new BadRequestError(`wasmBuild must be "simd128", not ${JSON.stringify(wasmBuild)}`);
  if (streamStallMs !== undefined && !(typeof streamStallMs === "number" && streamStallMs > 0)) {
    throw new BadRequestError(`streamStallMs must be a positive number of milliseconds, not ${JSON.stringify(streamStallMs)}`);
  }
  if (backend === "webgpu" && !globalThis.navigator?.gpu) throw new NoWebGPUError("this browser has no WebGPU (navigator.gpu is missing)");
  signal?.throwIfAborted();
  const port = worker ? workerPort() : await inlinePort();
  const e = new Engine(port);
  // Cancelling ends the worker (downloads, GPU device and all; on the page's thread the host
  // stops its downloads and frees what it built); chunks already stored stay in the cache
  // for the next attempt.
  const onAbort = () => {
    port.close();
    e._failAll(new DownloadError("the model load was cancelled"));
  };
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const load = { type: "load", model, options: { ...options, backend, threads, wasmBuild }, cacheName, chunkBytes, streamStallMs };
    e.info = { ...await e._call(load, { onProgress }), remote: false };
  } catch (err) {
    port.close(); // a failed load leaves no worker or GPU device behind
    throw err;
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
  return e;
}

function workerPort() {
  const w = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  // The messages sent in one task go as one (worker.js): requests made together, such as
  // concurrent `create` calls, reach the engine together and can decode together.
  let outbox = [];
  const flush = () => {
    w.postMessage(outbox);
    outbox = [];
  };
  return {
    send: (m) => {
      if (outbox.push(m) === 1) queueMicrotask(flush);
    },
    listen: (f) => { w.onmessage = (e) => f(e.data); w.onerror = (e) => f({ type: "fatal", message: e.message }); },
    close: () => w.terminate(),
  };
}

async function inlinePort() {
  const { Host } = await import("./host.js");
  let listener = () => {};
  const host = new Host((m) => queueMicrotask(() => listener(m)));
  return { send: (m) => host.handle(m), listen: (f) => { listener = f; }, close: () => host.close() };
}

let nextId = 1;

class Engine {
  #port;
  #pending = new Map();
  #closed = false;

  constructor(port) {
    this.#port = port;
    port.listen((m) => this.#receive(m));
    this.chat = { completions: { create: (request) => this.#create(request) } };
    /** OpenAI's Responses API: `create` as `chat.completions.create` (streams yield typed
     * events); `retrieve(id)` a stored response, or null. */
    this.responses = {
      create: (request) => this.#create(request, "respond"),
      retrieve: (id) => this._call({ type: "retrieve", responseId: id }),
    };
    /** OpenAI's HTTP routes served from this engine, with no network (openai-fetch.js). */
    this.fetch = openAIFetch(this);
  }

  /** Rejects every pending call with `error` (the worker is gone). */
  _failAll(error) {
    for (const p of this.#pending.values()) p.reject(error);
    this.#pending.clear();
    this.#closed = true;
  }

  #receive(m) {
    if (m.type === "fatal") {
      this._failAll(new EngineUnloadedError(`the engine worker failed: ${m.message}`));
      return;
    }
    const p = this.#pending.get(m.id);
    if (!p) return;
    if (m.type === "progress") p.onProgress?.(m.progress);
    else if (m.type === "chunk") p.onChunk?.(m.chunk);
    else {
      this.#pending.delete(m.id);
      if (m.type === "result") p.resolve(m.value);
      else p.reject(fromWire(m.error));
    }
  }

  _call(msg, handlers = {}, id = nextId++) {
    if (this.#closed) return Promise.reject(new EngineUnloadedError("the engine was unloaded"));
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, ...handlers });
      this.#port.send({ ...msg, id });
    });
  }

  /** Runs many requests (`[{custom_id, body}]` or a JSONL string of such lines), decoding
   * together up to the engine option `parallel` at a time; returns a result line per request
   * in input order, failures included (see batch.js). `onProgress({completed, total, failed,
   * result})` after each ends. */
  batch(input, options) {
    return runBatch((request) => this.#create(request), input, { ...options, together: true });
  }

  /** Teacher-forced logits (Float32Array `[tokens.length * vocab]`) of ids that hold expanded
   * image layouts, the images (URLs) filling the `[IMG]` positions in order. For tests. */
  logits(tokens, images = []) {
    return this._call({ type: "logits", tokens, images });
  }

  /** Memory figures, read between requests: `{gpuBuffers: {live, bytes, created}, wasmMemoryBytes,
   * promptCache: {liveTokens, savedTokens, savedBytes, budgetBytes, evicted}}`. GPU buffers are
   * counted by the engine's worker (createBuffer, destroy, garbage collection); with `gc: true`
   * and Chromium's `--js-flags=--expose-gc`, garbage is collected first. */
  stats({ gc = false } = {}) {
    return this._call({ type: "stats", gc });
  }

  /** Ends the running generation (or, given its id, one request) after the current token;
   * a queued request that is stopped ends at once with finish_reason "abort". */
  stop(requestId) {
    this.#port.send({ type: "stop", target: requestId });
  }

  /** Loads the model again on a new GPU device, after a DeviceLostError (every request then
   * fails until the model is back): the weights come from Cache Storage, where the first
   * load stored them (no download; with `cacheName: null` they are downloaded again), local
   * Files are read again. Queued after the requests already sent; the engine's `info` is the
   * new load's. Rejects as `createEngine` would (a DeviceLostError again if no new device
   * can be had).
   * @param {{onProgress?: (p: object) => void}} [o] */
  async reload({ onProgress } = {}) {
    const info = await this._call({ type: "reload" }, { onProgress });
    this.info = { ...info, remote: false };
    return this.info;
  }

  async unload() {
    if (this.#closed) return;
    await this._call({ type: "unload" });
    this.#closed = true;
    this.#port.close();
  }

  /** OpenAI's `chat.completions.create`: the request is checked by the engine before any
   * work (a BadRequestError naming the field otherwise). With `stream: true`, an async
   * iterable of chunks; decoding pauses while more than a few chunks wait unread, and leaving
   * the loop early (`break`, `iterator.return()`, even before the first read) stops the
   * generation at once. `signal` (an AbortSignal) stops it too. A stream left unread for
   * `streamStallMs` is cut, and reading it on ends with StreamStalledError. */
  #create(request, type = "generate") {
    const { signal, ...body } = request ?? {};
    const callId = nextId++;
    const onAbort = () => this.stop(callId);
    if (signal?.aborted) return Promise.reject(new DOMException("the request was aborted", "AbortError"));
    signal?.addEventListener("abort", onAbort, { once: true });
    const done = () => signal?.removeEventListener("abort", onAbort);
    if (!body.stream) {
      return this._call({ type, request: body }, {}, callId).finally(done);
    }
    // Streaming: chunks queue up until the reader asks for them; each one read is
    // acknowledged so the worker keeps at most STREAM_WINDOW unread chunks ahead.
    const queue = [];
    const waiters = [];
    let ended = false; // the engine sent the request's end (its result or error)
    let released = false; // the end was read, or the reader let go
    const push = (item) => {
      ended ||= !item.chunk;
      if (released) return;
      queue.push(item);
      for (const w of waiters.splice(0)) w();
    };
    this._call({ type, request: body }, { onChunk: (chunk) => push({ chunk }) }, callId)
      .then(() => push({ done: true }), (error) => push({ error }))
      .finally(done);
    const port = this.#port;
    // Letting go before the end stops the generation now, whether a read is pending or none
    // was ever made; pending reads end.
    const release = () => {
      if (released) return;
      released = true;
      queue.length = 0;
      if (!ended) this.stop(callId);
      for (const w of waiters.splice(0)) w();
    };
    const iterator = {
      async next() {
        while (queue.length === 0 && !released) await new Promise((r) => waiters.push(r));
        if (released) return { done: true, value: undefined };
        const item = queue.shift();
        if (item.done || item.error) {
          released = true;
          if (item.error) throw item.error;
          return { done: true, value: undefined };
        }
        port.send({ type: "ack", target: callId });
        return { done: false, value: item.chunk };
      },
      async return(value) {
        release();
        return { done: true, value };
      },
      [Symbol.asyncIterator]() { return this; },
    };
    return Promise.resolve({ [Symbol.asyncIterator]: () => iterator });
  }
}
