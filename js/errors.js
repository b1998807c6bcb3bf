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
 * running request and every later one fail; create the engine again to go on. */
export class DeviceLostError extends WebvlmError {}
/** A request the engine refuses (bad parameters, bad image, prompt too long). */
export class BadRequestError extends WebvlmError {}
/** The engine was unloaded. */
export class EngineUnloadedError extends WebvlmError {}

const CLASSES = {
  WebvlmError, NoWebGPUError, AdapterTooSmallError, ModelNotSupportedError, DownloadError,
  QuotaExceededError, DeviceLostError, BadRequestError, EngineUnloadedError,
};

/** A plain object that survives structured cloning. A refused request keeps OpenAI's error
 * fields: `type`, `code` (e.g. "invalid_value", "context_length_exceeded") and `param` (the
 * request field at fault). */
export function toWire(e) {
  const name = e?.name in CLASSES ? e.name : "WebvlmError";
  const wire = { name, message: String(e?.message ?? e) };
  for (const k of ["type", "code", "param"]) if (e?.[k] !== undefined) wire[k] = e[k];
  return wire;
}

export function fromWire(w) {
  const e = new (CLASSES[w.name] ?? WebvlmError)(w.message);
  for (const k of ["type", "code", "param"]) if (w[k] !== undefined) e[k] = w[k];
  return e;
}
