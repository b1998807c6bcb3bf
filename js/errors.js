// Named errors of the webvlm package: every failure a page can meet has its own class, so
// `catch (e) { if (e instanceof QuotaExceededError) ... }` works. Errors raised in the
// worker cross postMessage as {name, message} and are rebuilt here by `fromWire`.
//
// The engine (wasm) names its errors itself: src/web/error.rs sets each JS Error's `name` to
// one of these class names from the Rust error's type and variant (a buffer over the
// adapter's limits is an AdapterTooSmallError, a lost GPUDevice a DeviceLostError, ...), so
// nothing here depends on message wording. Errors of other origins keep their DOM name
// (QuotaExceededError) or become a WebvlmError.

export class WebvlmError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The browser has no WebGPU (`navigator.gpu` missing or no adapter). */
export class NoWebGPUError extends WebvlmError {}
/** The adapter's limits are too small for the model (buffer sizes, memory). */
export class AdapterTooSmallError extends WebvlmError {}
/** The files are not a model webvlm can run (architecture, tensor types, malformed GGUF). */
export class ModelNotSupportedError extends WebvlmError {}
/** A weight download failed (network, HTTP status, a server without Range support). */
export class DownloadError extends WebvlmError {}
/** Cache Storage is full or the download cannot fit (`navigator.storage.estimate()`). */
export class QuotaExceededError extends WebvlmError {}
/** The GPU device was lost (driver reset, GPU process crash, a mobile tab put away): the
 * running request and every later one fail until `engine.reload()` loads the model again on
 * a new device (from Cache Storage, no download). */
export class DeviceLostError extends WebvlmError {}
/** A request the engine refuses (bad parameters, bad image, prompt too long). */
export class BadRequestError extends WebvlmError {}
/** The engine was unloaded. */
export class EngineUnloadedError extends WebvlmError {}
/** A stream's reader stopped reading: its unread chunks waited `streamStallMs`, so the
 * generation was stopped and the engine went on with the next request. Reading the stream on
 * gives the chunks it had received, then this. */
export class StreamStalledError extends WebvlmError {}

// A remote engine (`createEngine({remote})`, remote.js) names a server's refusals with the
// classes above where one fits (400 BadRequestError, 404 for the model
// ModelNotSupportedError) and with these otherwise. Every error from a server's answer
// carries its HTTP `status`, and OpenAI's `type`, `code` and `param` when the server sent them.

/** The server refused the API key (HTTP 401 or 403). */
export class AuthenticationError extends WebvlmError {}
/** The server answered with another error status: 429 (rate limited), 5xx (its own
 * failure), or a 404 that does not name the model (a wrong `baseURL`). */
export class RemoteServerError extends WebvlmError {}
/** The server could not be reached: no connection, DNS, TLS, or a response the browser hid
 * because the server sent no CORS headers for this page's origin. */
export class NetworkError extends WebvlmError {}

const CLASSES = {
  WebvlmError, NoWebGPUError, AdapterTooSmallError, ModelNotSupportedError, DownloadError,
  QuotaExceededError, DeviceLostError, BadRequestError, EngineUnloadedError, StreamStalledError,
  AuthenticationError, RemoteServerError, NetworkError,
};

/** OpenAI's error fields an error may carry (and `status`, a remote server's HTTP status). */
const FIELDS = ["type", "code", "param", "status"];

/** A plain object that survives structured cloning. A refused request keeps OpenAI's error
 * fields: `type`, `code` (e.g. "invalid_value", "context_length_exceeded") and `param` (the
 * request field at fault). */
export function toWire(e) {
  const name = e?.name in CLASSES ? e.name : "WebvlmError";
  const wire = { name, message: String(e?.message ?? e) };
  for (const k of FIELDS) if (e?.[k] !== undefined) wire[k] = e[k];
  return wire;
}

export function fromWire(w) {
  const e = new (CLASSES[w.name] ?? WebvlmError)(w.message);
  for (const k of FIELDS) if (w[k] !== undefined) e[k] = w[k];
  return e;
}
