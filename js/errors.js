// Named errors of the webvlm package: every failure a page can meet has its own class, so
// `catch (e) { if (e instanceof QuotaExceededError) ... }` works. Errors raised in the
// worker cross postMessage as {name, message} and are rebuilt here by `fromWire`.

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
/** The GPU device was lost; the engine must be created again. */
export class DeviceLostError extends WebvlmError {}
/** A request the engine refuses (bad parameters, bad image, prompt too long). */
export class BadRequestError extends WebvlmError {}
/** The engine was unloaded. */
export class EngineUnloadedError extends WebvlmError {}

const CLASSES = {
  WebvlmError, NoWebGPUError, AdapterTooSmallError, ModelNotSupportedError, DownloadError,
  QuotaExceededError, DeviceLostError, BadRequestError, EngineUnloadedError,
};

/** A plain object that survives structured cloning. */
export function toWire(e) {
  const name = e?.name in CLASSES ? e.name : classify(e);
  return { name, message: String(e?.message ?? e) };
}

export function fromWire(w) {
  return new (CLASSES[w.name] ?? WebvlmError)(w.message);
}

/** Maps an engine (wasm) error message or a DOM exception to a class name. */
function classify(e) {
  const m = String(e?.message ?? e);
  if (e?.name === "QuotaExceededError" || /quota/i.test(m)) return "QuotaExceededError";
  if (/device (was )?lost|DeviceLost/i.test(m)) return "DeviceLostError";
  if (/no adapter|WebGPU/i.test(m) && /adapter|unavailable|not supported/i.test(m)) return "NoWebGPUError";
  if (/BufferTooLarge|exceeds the (device|part) limit|binding/i.test(m)) return "AdapterTooSmallError";
  if (/gguf|tensor|architecture|unsupported|vocabulary|not supported/i.test(m)) return "ModelNotSupportedError";
  if (/image|invalid parameter|context full|placeholder|messages/i.test(m)) return "BadRequestError";
  return "WebvlmError";
}
