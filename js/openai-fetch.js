// `engine.fetch`: a `fetch`-compatible function that answers OpenAI's HTTP routes from an
// engine in the page, with no network, so that an OpenAI client library can drive it:
//
//   const client = new OpenAI({ baseURL: "http://webvlm.local/v1", apiKey: "unused",
//                               fetch: engine.fetch, dangerouslyAllowBrowser: true });
//
// Routes (under any base URL: only the end of the path is matched):
//   POST …/chat/completions   a request as `engine.chat.completions.create` takes it; the
//                             completion as JSON, or with `stream: true` a text/event-stream of
//                             `data: {chunk}` events ending with `data: [DONE]`
//   POST …/responses          a request as `engine.responses.create` takes it; the response
//                             object, or with `stream: true` its typed events (`event: TYPE` /
//                             `data: {...}`, `response.completed` last, no `[DONE]`)
//   GET  …/responses/{id}     a stored response, or 404
//   GET  …/models             `{object: "list", data: [model]}`: the one loaded model, with its
//                             context (`context_length`, and vLLM's `max_model_len`)
//   GET  …/models/{id}        that model, or 404 for another id
// Anything else is a 404. Errors are OpenAI's JSON, `{error: {message, type, param, code}}`,
// with the HTTP status of their class (`statusOf`). An aborted signal rejects the call (or
// errors the streamed body) with an AbortError, as `fetch` does, and stops the generation.

import { sseData, SSE_DONE } from "./sse.js";

/** HTTP status and OpenAI `code` of the package's error classes (by `name`). */
const STATUS = {
  BadRequestError: [400, null],
  AuthenticationError: [401, "invalid_api_key"],
  ModelNotSupportedError: [404, "model_not_found"],
  EngineUnloadedError: [503, "engine_unloaded"],
  DeviceLostError: [503, "device_lost"],
  NetworkError: [502, "upstream_unreachable"],
};

/** The HTTP status an error answers with: a remote server's own (`status`), else its class's. */
export function statusOf(error) {
  if (Number.isInteger(error?.status) && error.status >= 400 && error.status <= 599) return error.status;
  return STATUS[error?.name]?.[0] ?? 500;
}

/** OpenAI's error body for `error`, with the status it goes with. */
export function errorBody(error, status = statusOf(error)) {
  return {
    error: {
      message: String(error?.message ?? error),
      type: error?.type ?? (status >= 500 ? "server_error" : status === 401 ? "authentication_error" : "invalid_request_error"),
      param: error?.param ?? null,
      code: error?.code ?? STATUS[error?.name]?.[1] ?? null,
    },
  };
}

const json = (value, status = 200, headers = {}) =>
  new Response(JSON.stringify(value), { status, headers: { "content-type": "application/json", ...headers } });

/** The error answer for `error`. The engine's own failures (no `status`: an unloaded engine,
 * a lost device) say `x-should-retry: false`, which OpenAI's SDKs obey instead of retrying a
 * 5xx; a remote server's 429 or 5xx is left to the client's retry policy. */
function errorResponse(error) {
  const status = statusOf(error);
  return json(errorBody(error, status), status, error?.status ? {} : { "x-should-retry": "false" });
}

const aborted = () => new DOMException("the request was aborted", "AbortError");

/** The model id the engine answers to: its name, as completions report it ("webvlm" when the
 * model has none; a remote engine's model). */
function modelId(engine) {
  return engine.info?.remote ? engine.info.model : engine.info?.name ?? "webvlm";
}

/**
 * A `fetch` for OpenAI clients that serves `engine` (anything with `chat.completions.create`
 * and `info`: a local or a remote engine).
 * @param {{chat: {completions: {create: Function}}, info: object}} engine
 * @returns {(input: RequestInfo | URL, init?: RequestInit) => Promise<Response>}
 */
export function openAIFetch(engine) {
  const created = Math.floor(Date.now() / 1000);
  // The context a request may take, as `webvlm serve` reports it (vLLM's name too).
  const model = () => {
    const context = engine.info?.maxContext ?? null;
    return { id: modelId(engine), object: "model", created, owned_by: "webvlm", context_length: context, max_model_len: context };
  };
  return async function fetch(input, init) {
    const request = new Request(input, init);
    const { signal, method } = request;
    if (signal.aborted) throw aborted();
    const path = new URL(request.url).pathname.replace(/\/+$/, "");
    const route = /\/chat\/completions$/.test(path) ? "chat" : /\/responses$/.test(path) ? "responses"
      : /\/responses\/[^/]+$/.test(path) ? "response" : /\/models$/.test(path) ? "models"
      : /\/models\/[^/]+$/.test(path) ? "model" : null;
    const wants = { chat: "POST", responses: "POST", response: "GET", models: "GET", model: "GET" }[route];
    if (!route || method !== wants) {
      const status = route ? 405 : 404;
      return json(errorBody({ message: `Invalid URL (${method} ${path})`, code: route ? "method_not_allowed" : "unknown_url" }, status), status);
    }
    if (route === "models") return json({ object: "list", data: [model()] });
    if (route === "response") {
      const id = decodeURIComponent(path.slice(path.lastIndexOf("/") + 1));
      const stored = await engine.responses?.retrieve(id).catch(() => null);
      if (stored) return json(stored);
      return json(errorBody({ message: `No response found with id '${id}'`, code: "not_found" }, 404), 404);
    }
    if (route === "model") {
      const id = decodeURIComponent(path.slice(path.lastIndexOf("/") + 1));
      if (id === modelId(engine)) return json(model());
      return json(errorBody({ message: `The model '${id}' does not exist`, param: "model", code: "model_not_found" }, 404), 404);
    }
    let body;
    try {
      body = JSON.parse(await request.text());
    } catch {
      return json(errorBody({ message: "the request body is not valid JSON", code: "invalid_json" }, 400), 400);
    }
    if (!body || typeof body !== "object" || Array.isArray(body)) {
      return json(errorBody({ message: "the request body must be a JSON object", code: "invalid_json" }, 400), 400);
    }
    try {
      return await complete(engine, body, signal, route);
    } catch (e) {
      if (signal.aborted || e?.name === "AbortError") throw aborted();
      return errorResponse(e);
    }
  };
}

/** Runs one chat-completions or Responses request: a JSON response, or an event stream. A
 * stream's first chunk is awaited before answering, so that a refused request gets its error
 * status. */
async function complete(engine, body, signal, route) {
  const responses = route === "responses";
  const create = responses ? engine.responses.create : engine.chat.completions.create;
  const result = await create({ ...body, signal });
  if (!body.stream) {
    if (signal.aborted) throw aborted();
    return json(result);
  }
  const chunks = result[Symbol.asyncIterator]();
  const first = await chunks.next();
  if (signal.aborted) throw aborted();
  let pending = first;
  let done = false;
  const stream = new ReadableStream({
    start(controller) {
      // The request's signal ends the body as an aborted fetch's would; the engine saw the
      // same signal and stops generating.
      signal.addEventListener("abort", () => {
        if (done) return;
        done = true;
        controller.error(aborted());
      }, { once: true });
    },
    // One chunk per read: the engine's flow control sees the reader's pace.
    async pull(controller) {
      if (done) return;
      try {
        const { value, done: end } = pending ?? await chunks.next();
        pending = null;
        if (done) return;
        if (end) {
          done = true;
          if (!responses) controller.enqueue(sseData(SSE_DONE));
          controller.close();
        } else {
          controller.enqueue(sseData(value, responses ? value.type : undefined));
        }
      } catch (e) {
        if (done) return;
        // A failure mid-stream (a lost device): OpenAI's error object as the last event.
        done = true;
        controller.enqueue(responses ? sseData({ type: "error", ...errorBody(e).error }, "error") : sseData(errorBody(e)));
        controller.close();
      }
    },
    // The reader let go (an SDK stream's `controller.abort()`, a break): stop generating.
    async cancel() {
      done = true;
      await chunks.return?.();
    },
  }, { highWaterMark: 0 });
  return new Response(stream, {
    status: 200,
    headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache" },
  });
}
