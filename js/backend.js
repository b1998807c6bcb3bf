// Where the model runs, decided in the engine's realm (its worker, or the page with
// `worker: false`) before the wasm module starts:
// - the backend: WebGPU on a hardware adapter; the CPU backend where the browser has no
//   WebGPU, gives no adapter, or gives only a software one (SwiftShader, WARP, llvmpipe),
//   which runs kernels at a few percent of the CPU's own speed;
// - the CPU backend's threads: `threads`, else half the logical cores (at most 8) where a pool
//   can run (a cross-origin-isolated Worker), else 1;
// - the wasm build: `webvlm_relaxed_bg.wasm` (SIMD128 and relaxed SIMD: integer dot products,
//   relaxed FMA) where the engine validates a relaxed-SIMD instruction, else `webvlm_bg.wasm`
//   (SIMD128, which every current browser has); for more than one thread the same pair with
//   shared memory, `webvlm_threads_relaxed_bg.wasm` and `webvlm_threads_bg.wasm` (the pool's
//   workers are Web Workers on that memory). The builds of a pair export the same functions,
//   so one wasm-bindgen glue loads either: webvlm.js, and webvlm_threads.js for the threaded.

import { BadRequestError } from "./errors.js";

export const BACKENDS = ["auto", "webgpu", "cpu"];

/** Checks `backend` and `threads` as `createEngine` takes them; throws BadRequestError. */
export function checkBackendOptions(backend, threads) {
  if (!BACKENDS.includes(backend)) {
    throw new BadRequestError(`backend must be one of ${BACKENDS.map((b) => `"${b}"`).join(", ")}, not ${JSON.stringify(backend)}`);
  }
  if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1)) {
    throw new BadRequestError(`threads must be a positive integer, not ${JSON.stringify(threads)}`);
  }
}

/** Adapter names of software rasterizers: WebGPU works there, on the CPU, slowly. */
const SOFTWARE = /swiftshader|llvmpipe|lavapipe|softpipe|warp|basic render|software/i;

/** Whether a GPUAdapter is a software one (its `info`, or the older `isFallbackAdapter`). */
export function isSoftwareAdapter(adapter) {
  const info = adapter.info ?? {};
  if (info.isFallbackAdapter || adapter.isFallbackAdapter) return true;
  return SOFTWARE.test([info.vendor, info.architecture, info.device, info.description].join(" "));
}

/** The adapter's name as GPUAdapterInfo gives it (wgpu sees none in browsers). */
export function adapterLabel(adapter) {
  const info = adapter?.info;
  return [info?.vendor, info?.architecture, info?.device, info?.description].filter(Boolean).join(" ");
}

/**
 * `{name: "webgpu" | "cpu", reason, label}` for `backend` ("auto", "webgpu", "cpu"); `label`, the
 * adapter's name, where the choice asked for the adapter.
 */
export async function chooseBackend(backend = "auto") {
  if (backend === "cpu") return { name: "cpu", reason: 'asked for (backend: "cpu")' };
  if (backend === "webgpu") return { name: "webgpu", reason: 'asked for (backend: "webgpu")' };
  if (!globalThis.navigator?.gpu) return { name: "cpu", reason: "this browser has no WebGPU (navigator.gpu is missing)" };
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch { /* no adapter either */ }
  if (!adapter) return { name: "cpu", reason: "WebGPU gives no adapter" };
  const label = adapterLabel(adapter);
  if (isSoftwareAdapter(adapter)) return { name: "cpu", reason: `the only WebGPU adapter is a software one (${label || "unnamed"})`, label };
  return { name: "webgpu", reason: `a hardware WebGPU adapter (${label || "unnamed"})`, label };
}

// (module (func (result v128) i32.const 0 i8x16.splat i32.const 0 i8x16.splat
//   i8x16.relaxed_swizzle)): valid only where the engine has relaxed SIMD.
const RELAXED_SIMD_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
  0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // types: () -> v128
  0x03, 0x02, 0x01, 0x00, // functions: one of type 0
  0x0a, 0x0f, 0x01, 0x0d, 0x00, 0x41, 0x00, 0xfd, 0x0f, 0x41, 0x00, 0xfd, 0x0f, 0xfd, 0x80, 0x02, 0x0b, // its code
]);

/** Whether this engine has wasm relaxed SIMD. */
export function hasRelaxedSimd() {
  try {
    return WebAssembly.validate(RELAXED_SIMD_PROBE);
  } catch {
    return false;
  }
}

/** Why this realm cannot run a pool of threads, or null where it can: shared memory needs a
 * cross-origin-isolated page, and a pool's waits (Atomics.wait) a Worker. */
export function threadsUnavailable() {
  if (!globalThis.crossOriginIsolated) {
    return "the page is not cross-origin isolated (serve it with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp)";
  }
  if (typeof WorkerGlobalScope === "undefined") return "the engine runs on the page's thread (worker: false), which cannot wait for other threads";
  return null;
}

/** The CPU backend's threads when `createEngine` names none: half the logical cores (one
 * thread per physical core on most CPUs), at most 8, where a pool can run; else 1. */
export function defaultThreads() {
  if (threadsUnavailable()) return 1;
  return Math.max(1, Math.min(8, Math.floor((navigator.hardwareConcurrency ?? 1) / 2)));
}

/** The wasm build this engine runs for `threads` CPU threads: `{simd: "relaxed" | "simd128",
 * threads: boolean, url, glue}`; `force` ("simd128") takes a plain SIMD128 build where relaxed
 * SIMD exists too (tests compare the two). Throws BadRequestError for more than one thread
 * where no pool can run. */
export function wasmBuild(force, threads = 1) {
  const why = threads > 1 && threadsUnavailable();
  if (why) throw new BadRequestError(`threads: ${threads} needs the threaded wasm build, but ${why}`);
  const relaxed = force !== "simd128" && hasRelaxedSimd();
  const name = `webvlm${threads > 1 ? "_threads" : ""}${relaxed ? "_relaxed" : ""}_bg.wasm`;
  return {
    simd: relaxed ? "relaxed" : "simd128", threads: threads > 1,
    url: new URL(`./${name}`, import.meta.url), glue: threads > 1 ? "./webvlm_threads.js" : "./webvlm.js",
  };
}
