// The engine side of the message protocol: owns the wasm `WebEngine`, streams the model's
// bytes into it, resolves image URLs and runs generations. It runs in the module worker
// (worker.js) or, with `createEngine({worker: false})`, on the page's own thread; either way
// it only talks through `post(message)` and `handle(message)`.
//
// Chat and Responses requests queued together run together (`generateGroup`, up to the
// engine option `parallel` decoding in batched steps), and those sent while they run join
// them (on the CPU backend a lone one runs as a group too, so that later ones join it; the
// engine keeps the group's slots, and what they hold, for the next); everything else runs
// one at a time, in order.
//
// Page → host:  {id, type: "load", model: {text: [source] | repo: URL, quant?, mmproj: [source]?}, options, cacheName, streamStallMs?}
//               {id, type: "generate", request}   {id, type: "respond", request}   (chat / Responses)
//               {id, type: "retrieve", responseId}   (a stored response)
//               {type: "stop", target?}   {id, type: "unload"}
//               {id, type: "reload"}   (the last load again, on a new GPU device: after a loss)
//               {type: "ack", target}   (a streamed chunk was read: flow control)
//               {id, type: "logits", tokens, images: [url]}   (teacher-forced logits, for tests)
//               {id, type: "stats", gc}   (GPU buffers, wasm heap, caches: between requests)
// Host → page:  {id, type: "progress", progress}  {id, type: "chunk", chunk}  (streams)
//               {id, type: "result", value}       {id, type: "error", error: {name, message}}

import { adapterLabel, chooseBackend, defaultThreads, threadsUnavailable, wasmBuild } from "./backend.js";
import { CacheWriter, deleteCached, expandSplitParts, isCached, markVerified, normalizeSource, readHead, readSources } from "./source.js";
import { convertedName, DEFAULT_REPO_QUANT, REPO_QUANTS, repoBase, repoFiles, repoQuant } from "./repo.js";
import { BadRequestError, DeviceLostError, DownloadError, EngineUnloadedError, ModelNotSupportedError, StreamStalledError, toWire } from "./errors.js";

/** Streamed chunks the page may leave unread before decoding pauses. */
export const STREAM_WINDOW = 4;
/** How long a paused stream (STREAM_WINDOW chunks unread) may wait for its reader before the
 * generation is cut and the engine goes on with the next request (`streamStallMs`). */
export const STREAM_STALL_MS = 30_000;
/** Chat requests decoding together by default (the engine option `parallel`). */
export const DEFAULT_PARALLEL = 4;
/** Most chat requests taken up together: the queued ones behind them wait for the next group. */
const MAX_GROUP = 16;
/** The requests that run in groups: chat requests and Responses requests. */
const GROUPED = new Set(["generate", "respond"]);

export class Host {
  constructor(post) {
    this.post = post;
    this.engine = null;
    this.queue = Promise.resolve();
    this.running = null; // id of the request in progress
    this.runningStopped = false; // a stop for it arrived (seen before the wasm engine starts)
    this.stopped = new Set(); // ids stopped before they started
    this.lost = null; // the DeviceLostError that ended the engine's GPU device
    this.loaded = null; // the last successful load message, for "reload"
    this.flow = null; // the running stream's flow control: {unread, resume}
    this.queued = new Map(); // the requests waiting to run, by id
    this.slots = DEFAULT_PARALLEL; // chat requests decoding together (`parallel`)
    // A lone chat request runs as a group of one, which later ones join: on the CPU backend,
    // whose batched step of one sequence is as fast as its one-sequence loop (a GPU's loop
    // samples on the device and runs faster alone).
    this.groupAlone = false;
    this.group = null; // the chat requests running together, by id: {index, flow}
    this.taken = new Set(); // ids of queued requests that run in the group ahead of them
    this.loading = null; // the wasm engine a load is filling, freed if the load fails
    this.stallMs = STREAM_STALL_MS;
    this.closed = false;
    this.lifetime = new AbortController(); // aborted by close(): ends a load's downloads
  }

  /** Handles one message; requests run in arrival order, one at a time but for chat
   * requests queued together, which run as a group (`generateGroup`). A stop names its
   * request (`target`); without one it stops whatever runs. */
  handle(msg) {
    const member = this.group?.get(msg.target);
    if (msg.type === "stop" && member) {
      if (member.index >= 0) this.engine?.stopRequest(member.index);
      member.flow.resume(true);
      return;
    }
    if (msg.type === "ack" && member) {
      if (--member.flow.unread < STREAM_WINDOW) member.flow.resume();
      return;
    }
    if (msg.type === "stop") {
      if (msg.target === undefined || msg.target === this.running) {
        this.runningStopped = true;
        this.downloads?.abort(); // a request still fetching its images stops at once
        this.engine?.stop();
        this.flow?.resume(true); // a paused stream must wake up to see the stop
        for (const m of this.group?.values() ?? []) m.flow.resume(true);
      } else if (this.queued.has(msg.target)) {
        // Only a request still waiting is remembered (an id that ended or never came is not:
        // the set stays within the queue).
        this.stopped.add(msg.target);
      }
      return;
    }
    if (msg.type === "ack") {
      if (msg.target === this.running && this.flow) {
        this.flow.unread--;
        if (this.flow.unread < STREAM_WINDOW) this.flow.resume();
      }
      return;
    }
    this.queued.set(msg.id, msg);
    this.queue = this.queue.then(() => this.run(msg));
  }

  /** The page let go of this host (`createEngine({worker: false})`: a cancelled load, an
   * unloaded engine): the running request stops (a load's downloads end), later ones fail,
   * and the wasm engine and its GPU memory are freed once nothing runs. A worker's host
   * needs none of this: its worker is terminated. */
  close() {
    if (this.closed) return;
    this.closed = true;
    this.lifetime.abort();
    this.handle({ type: "stop" });
    if (this.running === null) this.release();
  }

  /** Frees the loaded engine and its GPU memory now (`freeEngine`). */
  release() {
    if (this.engine) freeEngine(this.engine);
    this.engine = null;
  }

  async run(msg) {
    const { id } = msg;
    if (this.taken.delete(id)) return; // it ran (and was answered) with the group ahead of it
    this.running = id;
    this.runningStopped = false;
    this.downloads = new AbortController();
    this.queued.delete(id);
    try {
      if (this.closed) throw new EngineUnloadedError("the engine was unloaded");
      if (this.stopped.delete(id)) {
        this.post({ id, type: "result", value: aborted() });
        return;
      }
      // A lost device fails every later request at once (the wasm engine would fail too).
      if (this.lost && msg.type !== "unload" && msg.type !== "reload") {
        throw new DeviceLostError(`${this.lost.message}: reload the model (engine.reload()) or create the engine again`);
      }
      const onProgress = (progress) => this.post({ id, type: "progress", progress });
      let value, group;
      if (msg.type === "load") value = await this.load(msg, onProgress);
      else if (msg.type === "reload") value = await this.reload(onProgress);
      else if (GROUPED.has(msg.type) && ((group = this.groupOf(msg)).length > 1 || (this.groupAlone && this.slots > 1))) {
        await this.generateGroup(group); // answers each request itself
        return;
      } else if (msg.type === "generate" || msg.type === "respond") {
        value = await this.generate(msg.request, (chunk) => this.post({ id, type: "chunk", chunk }), msg.type);
      } else if (msg.type === "retrieve") value = this.retrieve(msg.responseId);
      else if (msg.type === "unload") value = this.unload();
      else if (msg.type === "logits") value = await this.logits(msg);
      else if (msg.type === "stats") value = await this.stats(msg);
      else throw new BadRequestError(`unknown message type ${msg.type}`);
      this.post({ id, type: "result", value });
    } catch (e) {
      if (e?.name === "DeviceLostError") this.lost ??= e;
      this.post({ id, type: "error", error: toWire(e) });
    } finally {
      this.running = null;
      // A load that failed (or was abandoned) frees what it had built.
      if (this.loading) freeEngine(this.loading);
      this.loading = null;
      if (this.closed) this.release();
    }
  }

  async load({ model, options = {}, cacheName, chunkBytes, streamStallMs }, onProgress) {
    const started = performance.now();
    if (streamStallMs !== undefined) this.stallMs = streamStallMs;
    const backend = await chooseBackend(options.backend);
    this.groupAlone = backend.name === "cpu";
    const threads = backend.name === "cpu" ? options.threads ?? defaultThreads() : 1;
    const { build, WebEngine } = await loadModule(wasmBuild(options.wasmBuild, threads));
    let repo = model.repo ? { base: repoBase(model.repo), quant: repoQuant(model.quant) } : null;
    let text = repo ? [] : [model.text].flat().flatMap(expandSplitParts).map(normalizeSource);
    const mmproj = model.mmproj ? [model.mmproj].flat().map(normalizeSource) : [];
    if (mmproj.length > 1) throw new ModelNotSupportedError("the mmproj must be one file");
    const signal = this.downloads.signal;
    let converted = null; // the repository converted at a quantization, kept as one GGUF
    if (repo) {
      // Converted on an earlier visit (at the quantization asked for, or at any): load that
      // file as a GGUF, with no shard and no conversion.
      for (const quant of repo.quant ? [repo.quant] : REPO_QUANTS) {
        const url = repo.base + convertedName(quant);
        if (await isCached(url, cacheName)) {
          converted = { url, quant, state: "reused" };
          text = [{ url }];
          repo = null;
          break;
        }
      }
    }
    const { wasmBuild: _, parallel = DEFAULT_PARALLEL, ...engineOptions } = options;
    if (!(Number.isInteger(parallel) && parallel >= 1 && parallel <= 64)) throw new BadRequestError(`parallel: ${parallel} is not an integer from 1 to 64`);
    this.slots = parallel;
    const engine = this.loading = await WebEngine.create(JSON.stringify({
      ...engineOptions, backend: backend.name, threads, textParts: Math.max(1, text.length),
    }));
    const open = () => {
      if (this.closed) throw new DownloadError("the model load was cancelled");
    };
    open();
    const store = cacheName !== null && typeof caches !== "undefined";
    if (repo) {
      // A Hugging Face repository: its safetensors shards stand for the text model's parts.
      const files = await repoFiles(repo.base, { cacheName, signal });
      text = engine.openRepository(files, repo.quant ?? undefined, store).map((name) => ({ url: repo.base + name }));
    }
    // Headers first, with small Range requests: the memory plan refuses a model that cannot
    // fit before the download starts.
    onProgress({ phase: "headers", loadedBytes: 0, totalBytes: 0, networkBytes: 0, fraction: 0,
      bytesPerSecond: 0, etaSeconds: null, text: "reading the model's headers" });
    for (let i = 0; i < text.length; i++) await readHead(text[i], { cacheName, chunkBytes, signal, push: (b) => engine.pushHeader(i, b) });
    if (mmproj.length) await readHead(mmproj[0], { cacheName, chunkBytes, signal, push: (b) => engine.pushMmprojHeader(b) });
    const { plan, reason: planReason } = JSON.parse(engine.planMemory());
    // Requests decoding together each take a context: as many as the budget holds.
    this.slots = Math.max(1, Math.min(parallel, plan?.largestParallel ?? parallel));
    let writer = null;
    if (repo) {
      const quant = plan?.quant ?? repo.quant ?? DEFAULT_REPO_QUANT;
      converted = { url: repo.base + convertedName(quant), quant, state: "not stored" };
      if (store) writer = new CacheWriter(await caches.open(cacheName), converted.url, chunkBytes);
    }
    const sources = [...text, ...mmproj];
    let total = 0;
    let loaded = 0;
    let network = 0;
    const report = (phase, text) => {
      const seconds = (performance.now() - started) / 1000;
      const bytesPerSecond = seconds > 0 ? loaded / seconds : 0;
      onProgress({
        phase, loadedBytes: loaded, totalBytes: total, networkBytes: network,
        fraction: total ? loaded / total : 0, bytesPerSecond,
        etaSeconds: bytesPerSecond > 0 ? (total - loaded) / bytesPerSecond : null, text,
      });
    };
    const hashed = []; // URL sources checked against a published SHA-256 in this load
    open();
    await readSources(sources, {
      cacheName,
      chunkBytes,
      signal: this.lifetime.signal,
      onDescribed: (i, d) => {
        if (!d.sha256 || d.verified) return;
        engine.expectSha256(i < text.length ? "text" : "mmproj", i, d.sha256);
        if (sources[i].url) hashed.push(sources[i].url);
      },
      onStart: (t) => { total = t; report("download", "starting"); },
      onBytes: (n, fromNetwork) => {
        loaded += n;
        if (fromNetwork) network += n;
        report(fromNetwork ? "download" : "cache", `${(loaded / 2 ** 20).toFixed(0)} / ${(total / 2 ** 20).toFixed(0)} MiB`);
      },
      sink: async (i, bytes) => {
        i < text.length ? engine.pushModel(i, bytes) : engine.pushMmproj(bytes);
        await writer?.write(engine.takeGguf());
      },
    });
    let info;
    try {
      info = JSON.parse(engine.finishLoad());
    } catch (e) {
      if (!/sha256 mismatch/.test(e.message)) throw e;
      // A corrupt download: drop its chunks so the next load fetches it again.
      for (const url of hashed) await deleteCached(url, cacheName);
      throw new DownloadError(`the downloaded model is corrupt (${e.message}); its cached chunks were deleted`);
    }
    for (const url of hashed) await markVerified(url, cacheName);
    if (writer) {
      await writer.write(engine.takeGguf());
      if (await writer.finish()) {
        // The converted file replaces the shards: later visits load it instead.
        for (const s of text) await deleteCached(s.url, cacheName);
        converted.state = "stored";
      } else {
        converted.state = `not stored: ${writer.failed?.message}`;
      }
    }
    if (converted) info.converted = converted;
    info.memoryPlan = plan ?? { unplanned: planReason };
    info.parallel = this.slots;
    // wgpu sees no adapter name in browsers; the page can read GPUAdapterInfo (`auto` already did).
    const label = backend.name === "webgpu" ? backend.label ?? adapterLabel(await navigator.gpu?.requestAdapter()) : "";
    if (label) info.adapter = `${label} — ${info.adapter.replace(/^\(\) /, "")}`;
    info.backend = { ...info.backend, reason: backend.reason, build: build.simd + (build.threads ? "-threads" : "") };
    if (backend.name === "cpu") {
      info.backend.threadsReason = options.threads !== undefined ? `asked for (threads: ${options.threads})`
        : threadsUnavailable() ?? `half of the ${navigator.hardwareConcurrency} logical cores, at most 8`;
    }
    open();
    this.engine = engine;
    this.loading = null;
    this.loaded = { model, options, cacheName, chunkBytes };
    report("ready", "model ready");
    return { ...info, loadSeconds: (performance.now() - started) / 1000, networkBytes: network, wasmMemoryBytes: wasmMemoryBytes() };
  }

  /** Loads the last loaded model again on a new GPU device (the lost one's engine is freed
   * first): its weights come from Cache Storage where the first load stored them, local
   * Files and Blobs are read again. Clears the lost state once the model is back. */
  async reload(onProgress) {
    if (!this.loaded) throw new EngineUnloadedError("no model was loaded: nothing to reload");
    this.release(); // the lost device's buffers too, before the new device allocates its own
    this.lost = null;
    return this.load(this.loaded, onProgress);
  }

  /** Runs one chat (`kind` "generate") or Responses ("respond") request; with `stream`,
   * chunks (events) go to `onChunk` and decoding waits while STREAM_WINDOW of them are unread
   * (the page acknowledges each one it reads). A wait longer than `stallMs` (a reader that
   * stopped reading, a stream never read) cuts the generation: the request ends with
   * StreamStalledError and the engine is free for the next one. */
  async generate(request, onChunk, kind = "generate") {
    if (!this.engine) throw new EngineUnloadedError("no model is loaded");
    const urls = imageUrls(request, kind);
    // A chat request the engine will refuse is refused before its images download (throws
    // the BadRequestError the generation would).
    if (urls.size && kind === "generate") this.engine.check(JSON.stringify(request));
    const images = new Map();
    try {
      for (const url of urls) images.set(url, await fetchImage(url, this.downloads.signal));
    } catch (e) {
      if (!this.runningStopped) throw e;
    }
    // A stop that came while the images downloaded (the download ends with it): the wasm
    // engine clears its stop flag when a generation starts, so it would be lost there.
    if (this.runningStopped) return aborted();
    const flow = streamFlow();
    this.flow = flow;
    const engine = this.engine;
    const stallMs = this.stallMs;
    const stall = () => {
      flow.stalled = true;
      engine.stop();
      flow.resume(true);
    };
    try {
      const run = kind === "respond" ? engine.respond.bind(engine) : engine.generate.bind(engine);
      const out = await run(JSON.stringify(request), images, (json) => {
        if (flow.stalled) return undefined; // nobody reads: the last chunks are not sent
        onChunk(JSON.parse(json));
        return flow.sent(stallMs, stall);
      });
      if (flow.stalled) throw stalled(stallMs);
      const value = JSON.parse(out);
      if (value.usage) value.usage.wasm_memory_bytes = wasmMemoryBytes();
      return value;
    } finally {
      clearTimeout(flow.timer);
      this.flow = null;
    }
  }

  /** `msg` (a chat or Responses request) and the chat and Responses requests queued right
   * behind it, up to MAX_GROUP (none past another kind of message or a stopped request), when
   * the engine runs several at once (`parallel` > 1). */
  groupOf(msg) {
    const group = [msg];
    if (this.slots <= 1) return group;
    for (const next of this.queued.values()) {
      if (group.length === MAX_GROUP || !GROUPED.has(next.type) || this.stopped.has(next.id)) break;
      group.push(next);
    }
    return group;
  }

  /** The chat or Responses request first in the queue when it can join the running group:
   * one with no image to download (a joiner's images cannot wait for `engine.check`, which
   * needs the busy engine, and a refused request's images are never fetched); it leaves the
   * queue. */
  takeJoiner() {
    const next = this.queued.values().next().value;
    if (!GROUPED.has(next?.type) || this.stopped.has(next.id)) return undefined;
    try {
      if (imageUrls(next.request, next.type).size) return undefined;
    } catch {
      return undefined; // its own turn answers with the error
    }
    this.queued.delete(next.id);
    this.taken.add(next.id);
    return next;
  }

  /** Runs chat and Responses requests together (`WebEngine.generateMany`: up to `slots`
   * decoding in batched steps, the rest joining as slots free), streaming and answering each
   * as `generate` would; each one's stop, acknowledgements and stall are its own. The requests
   * behind the first leave the queue (their turn in it then does nothing), and so do those
   * sent while the group decodes, which join it (`takeJoiner`). */
  async generateGroup(group) {
    for (const m of group.slice(1)) {
      this.queued.delete(m.id);
      this.taken.add(m.id);
    }
    const engine = this.engine;
    // Indices in the engine's call are set when it starts: a stop before marks the flow.
    this.group = new Map(group.map((m) => [m.id, { index: -1, flow: streamFlow() }]));
    const images = new Map();
    const fetched = [];
    for (const m of group) {
      try {
        if (!engine) throw new EngineUnloadedError("no model is loaded");
        const urls = imageUrls(m.request, m.type);
        if (urls.size && m.type === "generate") engine.check(JSON.stringify(m.request));
        for (const url of urls) images.set(url, await fetchImage(url, this.downloads.signal));
        fetched.push(m);
      } catch (e) {
        const error = this.group.get(m.id).flow.stopped ? null : toWire(e);
        this.post(error ? { id: m.id, type: "error", error } : { id: m.id, type: "result", value: aborted() });
      }
    }
    // Those stopped while the group's images downloaded end here.
    const runnable = fetched.filter((m) => !this.group.get(m.id).flow.stopped);
    for (const m of fetched.filter((m) => !runnable.includes(m))) this.post({ id: m.id, type: "result", value: aborted() });
    const stallMs = this.stallMs;
    const members = runnable.map((m, index) => Object.assign(this.group.get(m.id), { index, ended: false }));
    // Asked before each step unless a request waits for slots: a request to join, or a wait
    // for the messages sent meanwhile (the CPU backend's steps never yield to the worker's
    // message queue).
    const more = () => {
      const m = this.takeJoiner();
      if (!m) return nextTask();
      const member = { index: runnable.length, ended: false, flow: streamFlow() };
      this.group.set(m.id, member);
      runnable.push(m);
      members.push(member);
      return [JSON.stringify(m.request), m.type];
    };
    try {
      const requests = runnable.map((m) => JSON.stringify(m.request));
      await engine?.generateMany(requests, runnable.map((m) => m.type), images, this.slots, (i, kind, value) => {
        const { id } = runnable[i];
        const flow = members[i].flow;
        const stall = () => {
          flow.stalled = true;
          engine.stopRequest(i);
          flow.resume(true);
        };
        if (kind === "chunk") {
          if (flow.stalled) return undefined;
          this.post({ id, type: "chunk", chunk: JSON.parse(value) });
          return flow.sent(stallMs, stall);
        }
        clearTimeout(flow.timer);
        members[i].ended = true;
        if (kind === "error" || flow.stalled) {
          const error = kind === "error" ? value : stalled(stallMs);
          if (error?.name === "DeviceLostError") this.lost ??= error;
          this.post({ id, type: "error", error: toWire(error) });
          return undefined;
        }
        const result = JSON.parse(value);
        if (result.usage) result.usage.wasm_memory_bytes = wasmMemoryBytes();
        this.post({ id, type: "result", value: result });
        return undefined;
      }, more);
    } catch (e) {
      // The call itself failed (not one request): every request without an answer gets its error.
      if (e?.name === "DeviceLostError") this.lost ??= e;
      runnable.forEach((m, i) => members[i].ended || this.post({ id: m.id, type: "error", error: toWire(e) }));
    } finally {
      for (const m of members) clearTimeout(m.flow.timer);
      this.group = null;
    }
  }

  /** A stored Responses `response` object, or null. */
  retrieve(id) {
    if (!this.engine) throw new EngineUnloadedError("no model is loaded");
    const json = this.engine.storedResponse(String(id));
    return json === undefined ? null : JSON.parse(json);
  }

  async logits({ tokens, images = [] }) {
    if (!this.engine) throw new EngineUnloadedError("no model is loaded");
    const bytes = [];
    for (const url of images) bytes.push(await fetchImage(url));
    return this.engine.logits(Uint32Array.from(tokens), bytes);
  }

  /** Memory figures between requests: GPU buffers alive (`gpuBuffers`), the wasm heap, the
   * prompt cache. With `gc` and a `gc()` exposed (Chromium's `--js-flags=--expose-gc`),
   * garbage is collected first, so that buffers the engine dropped are no longer counted. */
  async stats({ gc = false } = {}) {
    if (gc && typeof globalThis.gc === "function") {
      globalThis.gc();
      // FinalizationRegistry callbacks run in tasks after the collection.
      for (let i = 0; i < 3; i++) await new Promise((r) => setTimeout(r, 0));
    }
    const engine = this.engine ? JSON.parse(this.engine.stats()) : {};
    return { gpuBuffers: { ...bufferCount }, wasmMemoryBytes: wasmMemoryBytes(), ...engine };
  }

  unload() {
    this.release();
    this.loaded = null;
    return true;
  }
}

/** Frees a wasm engine and its GPU memory now: every GPU buffer its device created is
 * destroyed (wgpu's web backend leaves them to garbage collection, which may come long after),
 * then the engine is dropped. */
function freeEngine(engine) {
  try {
    engine.release();
  } catch { /* busy or already released: free() still drops it */ }
  try {
    engine.free();
  } catch { /* already freed */ }
}

/** Settles after the tasks queued now (the page's messages among them): a MessageChannel's
 * message is a task of its own, and unlike setTimeout it is not clamped when nested. */
function nextTask() {
  return new Promise((resolve) => {
    const { port1, port2 } = new MessageChannel();
    port1.onmessage = () => {
      port1.close();
      resolve();
    };
    port2.postMessage(null);
  });
}

/** The flow control of one stream: `sent` counts a chunk sent and, once STREAM_WINDOW are
 * unread, returns the Promise the engine waits on before its next step (woken by `resume`:
 * a chunk read, a stop; or by `stall` after `stallMs`). */
function streamFlow() {
  return {
    unread: 0, wake: null, stopped: false, stalled: false, timer: null,
    resume(stop = false) {
      this.stopped ||= stop;
      clearTimeout(this.timer);
      this.timer = null;
      this.wake?.();
      this.wake = null;
    },
    sent(stallMs, stall) {
      if (++this.unread < STREAM_WINDOW || this.stopped) return undefined;
      return new Promise((resolve) => {
        this.wake = resolve;
        if (Number.isFinite(stallMs)) this.timer = setTimeout(stall, stallMs);
      });
    },
  };
}

function stalled(stallMs) {
  return new StreamStalledError(`the stream's reader left ${STREAM_WINDOW} chunks unread for ${stallMs} ms: `
    + "the generation was stopped (streamStallMs)");
}

/** The image URLs of a request that are not `data:` URLs (the host fetches them): chat
 * messages' `image_url` parts (`kind` "generate"), Responses input items' `input_image` parts
 * ("respond"). */
function imageUrls(request, kind) {
  const urls = new Set();
  const items = kind === "respond" ? (Array.isArray(request?.input) ? request.input : []) : request?.messages ?? [];
  for (const m of Array.isArray(items) ? items : []) {
    for (const part of Array.isArray(m?.content) ? m.content : []) {
      const url = part?.image_url?.url ?? part?.image_url;
      if ((part?.type === "image_url" || part?.type === "input_image") && typeof url === "string" && !url.startsWith("data:")) urls.add(url);
    }
  }
  return urls;
}

/** The result of a request stopped before it ran. */
function aborted() {
  return {
    id: "chatcmpl-aborted", object: "chat.completion", created: Math.floor(Date.now() / 1000), model: "webvlm",
    choices: [{ index: 0, message: { role: "assistant", content: "" }, logprobs: null, finish_reason: "abort" }],
    usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, prompt_tokens_details: { cached_tokens: 0 } },
  };
}

async function fetchImage(url, signal) {
  try {
    const r = await fetch(url, { signal });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    return new Uint8Array(await r.arrayBuffer());
  } catch (e) {
    throw new BadRequestError(`image ${url}: ${e.message}`);
  }
}

/** The wasm module this realm runs, `{build, WebEngine}` (a promise): one per realm, the
 * build the first load asked for (`wasmBuild`). A later load that needs threads where the
 * realm runs a single-thread build is refused; one that needs none runs on the threaded
 * build's pool of one. */
let realm = null;
/** Its memory, once instantiated. */
let memory = null;

async function loadModule(wanted) {
  realm ??= (async () => {
    const glue = await import(wanted.glue);
    const wasm = await glue.default({ module_or_path: wanted.url });
    memory = wasm.memory;
    return { build: wanted, WebEngine: glue.WebEngine };
  })().catch((e) => {
    realm = null;
    throw e;
  });
  const loaded = await realm;
  if (wanted.threads && !loaded.build.threads) {
    throw new BadRequestError(`threads > 1 needs the threaded wasm build, but this realm runs the ${loaded.build.simd} one (one build per realm): create the engine in its own worker`);
  }
  return loaded;
}

// GPU memory held by buffers, counted here: wgpu's WebGPU backend has no memory counters, and
// it never calls GPUBuffer.destroy() (a buffer the engine drops is freed when its JS object is
// garbage-collected; unloading destroys them all at once: `freeEngine`). So every
// GPUDevice.createBuffer in this realm (the engine's worker, or the page with `worker: false`)
// adds its size, and destroy() or the object's collection (a FinalizationRegistry) takes it
// off: `bytes` is what live GPUBuffer objects hold.
const bufferCount = { live: 0, bytes: 0, created: 0 };
const bufferSizes = new WeakMap(); // GPUBuffer -> its size, until destroyed
const collected = new FinalizationRegistry((size) => release(size));
function release(size) {
  bufferCount.live--;
  bufferCount.bytes -= size;
}
if (typeof GPUDevice !== "undefined" && !GPUDevice.prototype.createBuffer.__webvlmCounted) {
  const create = GPUDevice.prototype.createBuffer;
  const counted = function (descriptor) {
    const buffer = create.call(this, descriptor);
    const size = Number(buffer.size);
    const token = {};
    bufferSizes.set(buffer, { size, token });
    collected.register(buffer, size, token);
    bufferCount.live++;
    bufferCount.created++;
    bufferCount.bytes += size;
    return buffer;
  };
  counted.__webvlmCounted = true;
  GPUDevice.prototype.createBuffer = counted;
  const destroy = GPUBuffer.prototype.destroy;
  GPUBuffer.prototype.destroy = function () {
    const entry = bufferSizes.get(this);
    if (entry) {
      bufferSizes.delete(this);
      collected.unregister(entry.token);
      release(entry.size);
    }
    return destroy.call(this);
  };
}

/** Bytes of the wasm heap (it only grows, so this is its peak; the weights never pass
 * through it as a whole). */
function wasmMemoryBytes() {
  return memory?.buffer.byteLength ?? null;
}
