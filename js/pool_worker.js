// A worker thread of the CPU backend's pool, in the threaded wasm build. The pool
// (src/backend/cpu/pool.rs) starts one such Web Worker per thread beyond the engine's own and
// sends it the wasm module, the shared memory and the pool's address: the worker instantiates
// the module on that memory and works for the pool until it stops.
import { initSync, runPoolWorker } from "./webvlm_threads.js";

self.onmessage = ({ data: { module, memory, shared } }) => {
  const wasm = initSync({ module, memory });
  runPoolWorker(shared);
  // The pool stopped: free this thread's stack and thread-locals in the shared memory.
  wasm.__wbindgen_thread_destroy();
  self.close();
};
