// The remote engine: `createEngine({remote: {baseURL, apiKey, model}})` gives the engine's
// interface (`chat.completions.create`, `batch`, `fetch`, `stop`, `unload`, `info`) over HTTP
// to any OpenAI-compatible server (vLLM, llama.cpp's server, OpenAI itself, `webvlm serve`):
//
//   POST {baseURL}/chat/completions   plain, or streamed as server-sent events (sse.js)
//   GET  {baseURL}/models             once, when the engine is created (`info`)
//
// Unlike the in-page engine, requests are not queued: each is its own HTTP request and the
// server schedules them (vLLM batches concurrent ones). A server's error answers become the
// package's named errors (`remoteError`), each with the HTTP `status`.

import { AuthenticationError, BadRequestError, EngineUnloadedError, ModelNotSupportedError, NetworkError, RemoteServerError } from "./errors.js";
import { sseEvents, SSE_DONE } from "./sse.js";
import { runBatch } from "./batch.js";
import { openAIFetch } from "./openai-fetch.js";

const abortError = () => new DOMException("the request was aborted", "AbortError");

/**
 * The named error for a server's error answer: 400/413/422 BadRequestError, 401/403
 * AuthenticationError, 404 naming the model ModelNotSupportedError, anything else
 * RemoteServerError. OpenAI's `{error: {message, type, param, code}}` body is read (and
 * vLLM's older top-level `{message, type, code}`); `status` is the HTTP status.
 * @param {number} status
 * @param {unknown} body the parsed JSON body, or its text
 * @param {string} where the method and URL, for the message
 */
export function remoteError(status, body, where) {
  let detail = body && typeof body === "object" ? body.error ?? body : null;
  if (typeof detail === "string") detail = { message: detail };
  const text = typeof body === "string" ? body.trim().slice(0, 300) : "";
  // FastAPI (vLLM's routes) answers `{detail}` for what it does not route.
  const said = detail?.message ?? detail?.detail;
  const message = typeof said === "string" ? said : text || `HTTP ${status}`;
  const aboutModel = detail?.code === "model_not_found" || detail?.param === "model" || /\bmodel\b/i.test(message);
  const Class = [400, 413, 422].includes(status) ? BadRequestError
    : status === 401 || status === 403 ? AuthenticationError
      : status === 404 && aboutModel ? ModelNotSupportedError
        : RemoteServerError;
  const error = new Class(`${message} (HTTP ${status} from ${where})`);
  error.status = status;
  if (typeof detail?.type === "string") error.type = detail.type;
  // OpenAI's code is a string; vLLM puts the status number there.
  if (typeof detail?.code === "string") error.code = detail.code;
  if (typeof detail?.param === "string") error.param = detail.param;
  if (Class === BadRequestError) {
    error.type ??= "invalid_request_error";
    error.code ??= null;
    error.param ??= null;
  }
  return error;
}

/**
 * Connects to an OpenAI-compatible server: reads `GET {baseURL}/models` (which also checks the
 * API key) and picks `model` (default: the first the server lists).
 * @param {{baseURL: string | URL, apiKey?: string, model?: string, headers?: Record<string, string>, fetch?: typeof fetch}} remote
 * @param {{signal?: AbortSignal, fallback?: {reason: string, message: string} | null}} [options]
 * @returns {Promise<RemoteEngine>}
 */
export async function createRemoteEngine(remote, { signal, fallback = null } = {}) {
  const engine = new RemoteEngine(remote);
  await engine._connect(signal, fallback);
  return engine;
}

export class RemoteEngine {
  #base;
  #headers;
  #fetch;
  #model;
  #closed = false;
  /** AbortControllers of the requests in flight (`stop`, `unload`). */
  #running = new Set();

  constructor({ baseURL, apiKey, model, headers = {}, fetch: fetchImpl } = {}) {
    let url;
    try {
      url = new URL(String(baseURL ?? ""), globalThis.location?.href);
    } catch {
      throw new BadRequestError(`remote.baseURL is not a URL: ${baseURL}`);
    }
    if (!/^https?:$/.test(url.protocol)) throw new BadRequestError(`remote.baseURL must be http(s): ${baseURL}`);
    if (model !== undefined && (typeof model !== "string" || !model)) throw new BadRequestError("remote.model must be a model id (a string)");
    this.#base = url.href.replace(/\/+$/, "");
    this.#headers = { ...headers, ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) };
    this.#fetch = fetchImpl ?? ((...args) => globalThis.fetch(...args));
    this.#model = model;
    this.info = null;
    this.chat = { completions: { create: (request) => this.#create(request) } };
    this.responses = {
      create: (request) => this.#create(request, "/responses"),
      retrieve: async (id) => {
        const response = await this.#request("GET", `/responses/${encodeURIComponent(id)}`).catch((e) => {
          if (e?.status === 404) return null;
          throw e;
        });
        return response && response.json();
      },
    };
    /** OpenAI's routes served from this engine (openai-fetch.js), as for a local engine. */
    this.fetch = openAIFetch(this);
  }

  async _connect(signal, fallback) {
    const list = await (await this.#request("GET", "/models", { signal })).json().catch(() => null);
    const models = Array.isArray(list?.data) ? list.data.filter((m) => typeof m?.id === "string") : [];
    const ids = models.map((m) => m.id);
    const id = this.#model ?? ids[0];
    if (!id) throw new ModelNotSupportedError(`${this.#base}/models lists no model`);
    if (!ids.includes(id)) {
      throw new ModelNotSupportedError(`the server at ${this.#base} serves ${ids.map((x) => `"${x}"`).join(", ")}, not "${id}"`);
    }
    const entry = models.find((m) => m.id === id);
    this.info = {
      remote: true,
      baseURL: this.#base,
      model: id,
      name: id,
      models: ids,
      ownedBy: typeof entry.owned_by === "string" ? entry.owned_by : null,
      // vLLM reports the context it serves.
      maxContext: Number.isInteger(entry.max_model_len) ? entry.max_model_len : null,
      // Whether the model takes images is not part of OpenAI's model object.
      vision: null,
      fallback,
    };
  }

  /** One HTTP request; a failed one rejects with a named error (an AbortError when `signal`
   * ended it). */
  async #request(method, path, { body, signal } = {}) {
    const url = this.#base + path;
    const headers = { ...this.#headers, ...(body ? { "content-type": "application/json" } : {}) };
    let response;
    try {
      response = await this.#fetch(url, { method, headers, body: body && JSON.stringify(body), signal });
    } catch (e) {
      if (signal?.aborted) throw abortError();
      throw new NetworkError(`${method} ${url}: ${e?.message ?? e} (the server is unreachable, or sends no CORS headers for this page's origin)`, { cause: e });
    }
    if (!response.ok) {
      const text = await response.text().catch(() => "");
      let parsed = text;
      try { parsed = JSON.parse(text); } catch { /* not JSON: the text */ }
      throw remoteError(response.status, parsed, `${method} ${url}`);
    }
    return response;
  }

  /** A request in flight: its `signal` aborts when `stop()`, `unload()` or the caller's own
   * `signal` does; `done()` when it ended. */
  #track(signal) {
    const ac = new AbortController();
    const onAbort = () => ac.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    this.#running.add(ac);
    return {
      signal: ac.signal,
      abort: () => ac.abort(),
      done: () => { signal?.removeEventListener("abort", onAbort); this.#running.delete(ac); },
    };
  }

  /** OpenAI's `chat.completions.create` (or, at `path` "/responses", `responses.create`)
   * against the server; `model` defaults to the engine's. An aborted plain request rejects
   * with an AbortError (the server's partial answer never arrives); an aborted chat stream ends
   * with a chunk whose finish_reason is "abort", as the in-page engine's does. Leaving a
   * stream's loop early closes the connection. */
  async #create(request, path = "/chat/completions") {
    if (this.#closed) throw new EngineUnloadedError("the engine was unloaded");
    const { signal, ...body } = request ?? {};
    if (signal?.aborted) throw abortError();
    body.model ??= this.info.model;
    const flight = this.#track(signal);
    let response;
    try {
      response = await this.#request("POST", path, { body, signal: flight.signal });
      if (!body.stream) return await response.json();
    } catch (e) {
      if (flight.signal.aborted) throw abortError();
      throw e;
    } finally {
      if (!body.stream || !response) flight.done();
    }
    return { [Symbol.asyncIterator]: () => streamChunks(response, flight, path === "/chat/completions" && body.model) };
  }

  /** Runs requests one after another, each its own HTTP request, with the in-page engine's
   * result lines (batch.js). */
  batch(input, options) {
    return runBatch((request) => this.#create(request), input, options);
  }

  /** Teacher-forced logits need the model's weights: not available remotely. */
  async logits() {
    throw new BadRequestError("logits are not available from a remote engine");
  }

  /** Aborts every request in flight (a remote engine runs them side by side). */
  stop() {
    for (const ac of this.#running) ac.abort();
  }

  /** Aborts what is in flight; later requests reject with EngineUnloadedError. */
  async unload() {
    this.#closed = true;
    this.stop();
  }
}

/** The chunks (Responses events) of a streamed answer. Once the request is aborted no further
 * chunk is given, even one the connection had already delivered (a fast server sends many per
 * network read): a chat stream (`model` given) ends with the abort chunk, as the in-page
 * engine's does. */
async function* streamChunks(response, flight, model) {
  let last = null;
  let finished = false;
  try {
    try {
      for await (const { event, data } of sseEvents(response.body)) {
        if (flight.signal.aborted) break;
        if (data === SSE_DONE) break;
        let value;
        try {
          value = JSON.parse(data);
        } catch {
          throw new RemoteServerError(`the server's stream holds an event that is not JSON: ${data.slice(0, 200)}`);
        }
        // An error after the stream began: OpenAI's error object as an event.
        if (value?.error || event === "error") {
          const detail = value?.error ?? value;
          throw remoteError(Number.isInteger(detail?.code) ? detail.code : 500, value, `${response.url} (mid-stream)`);
        }
        last = value;
        yield value;
      }
    } catch (e) {
      if (!flight.signal.aborted) {
        if (e instanceof TypeError) throw new NetworkError(`the stream from ${response.url} broke off: ${e.message}`, { cause: e });
        throw e;
      }
    }
    finished = true;
    if (flight.signal.aborted && model) {
      // Stopped: the last chunk says so, as the in-page engine's does.
      yield {
        id: last?.id ?? "chatcmpl-aborted", object: "chat.completion.chunk",
        created: last?.created ?? Math.floor(Date.now() / 1000), model: last?.model ?? model,
        choices: [{ index: 0, delta: {}, finish_reason: "abort", logprobs: null }],
      };
    }
  } finally {
    // Left early (break, a throw in the loop's body): close the connection.
    if (!finished) flight.abort();
    flight.done();
  }
}
