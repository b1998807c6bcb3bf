// Runs a WASI (preview 1) program, such as a Rust test binary built for wasm32-wasip1 or
// wasm32-wasip1-threads, under Node's `node:wasi`: Cargo's runner for those targets in
// scripts/test_wasm_simd.sh (`CARGO_TARGET_WASM32_WASIP1_THREADS_RUNNER`).
//
//   node --experimental-wasm-relaxed-simd scripts/wasi_run.mjs PROGRAM.wasm [ARGS...]
//
// The program gets ARGS, this process's environment and the current directory (preopened under
// its absolute path), and its exit status becomes this process's. A trap (a Rust panic aborts:
// panic=abort is the only strategy of the wasm32 targets) exits with status 101, as a failing
// Rust test binary does; a trap on another thread ends the process by SIGTERM (the main thread
// may be blocked in a wait that nothing else would end).
//
// Threads (wasm32-wasip1-threads): the module imports a shared memory (`env.memory`) and
// `wasi.thread-spawn`, which this runner implements as the wasi-threads proposal says: a
// worker_threads Worker instantiates the same module on the same memory and calls its
// `wasi_thread_start(tid, arg)` export. Workers start on threads of their own, so the main
// thread may block in `memory.atomic.wait` (Node allows that) while they run. Workers may
// spawn too (thread ids come from a shared counter).
//
// Any other import (wasm-bindgen's `__wbindgen_placeholder__` functions, which a crate that
// depends on wasm-bindgen may link although nothing outside a browser calls them) is a
// function that throws when called.

import { readFileSync, writeSync } from "node:fs";
import { Worker, isMainThread, workerData } from "node:worker_threads";
import { WASI } from "node:wasi";
import process from "node:process";

/// The limits of the module's imported memory (`env.memory`), read from its import section:
/// the JS API does not report them, and a shared memory must be created with its maximum.
function importedMemoryLimits(bytes) {
  let at = 8; // magic and version
  const byte = () => bytes[at++];
  const leb = () => {
    let result = 0;
    let shift = 0;
    for (;;) {
      const b = byte();
      result += (b & 0x7f) * 2 ** shift;
      shift += 7;
      if (b < 0x80) return result;
    }
  };
  const name = () => {
    const len = leb();
    const s = Buffer.from(bytes.subarray(at, at + len)).toString("utf8");
    at += len;
    return s;
  };
  const limits = () => {
    const flags = byte();
    const initial = leb();
    const maximum = flags & 1 ? leb() : undefined;
    return { initial, maximum, shared: (flags & 2) !== 0 };
  };
  while (at < bytes.length) {
    const id = byte();
    const size = leb();
    const end = at + size;
    if (id === 2) {
      for (let n = leb(); n > 0; n--) {
        const [module, field, kind] = [name(), name(), byte()];
        if (kind === 0) leb(); // function: type index
        else if (kind === 1) (byte(), limits()); // table: element type, limits
        else if (kind === 3) (byte(), byte()); // global: value type, mutability
        else if (kind === 2) {
          const l = limits();
          if (module === "env" && field === "memory") return l;
        } else throw new Error(`import kind ${kind} of ${module}.${field} unknown`);
      }
      return null;
    }
    at = end;
  }
  return null;
}

function makeWasi(args) {
  const cwd = process.cwd();
  return new WASI({ version: "preview1", args, env: process.env, preopens: { [cwd]: cwd }, returnOnExit: true });
}

/// The imports of `module`: WASI, the memory, `wasi.thread-spawn`, throwing stubs for the rest.
function imports(module, wasi, memory, spawn) {
  const out = { wasi_snapshot_preview1: wasi.wasiImport };
  if (memory) out.env = { memory };
  for (const imp of WebAssembly.Module.imports(module)) {
    if (imp.module === "wasi_snapshot_preview1" || (imp.module === "env" && imp.name === "memory")) continue;
    const group = (out[imp.module] ??= {});
    if (imp.module === "wasi" && imp.name === "thread-spawn") group[imp.name] = spawn;
    else if (imp.kind === "function") {
      group[imp.name] = () => {
        throw new Error(`${imp.module}.${imp.name} is not available outside a browser`);
      };
    }
  }
  return out;
}

/// A trap (a Rust panic's abort, its message already written) or an error of this runner, with
/// the innermost frames of its stack.
function describe(e) {
  const kind = e instanceof WebAssembly.RuntimeError ? "trap" : "error";
  const stack = String(e?.stack ?? e).split("\n");
  return `${kind}: ${stack.slice(0, 6).join("\n")}${stack.length > 6 ? "\n    ..." : ""}`;
}

/// `wasi.thread-spawn`: a Worker running `wasi_thread_start(tid, arg)`; returns the new
/// thread's id (positive), or -1 when the worker could not start.
function spawner(shared) {
  return (arg) => {
    const tid = Atomics.add(shared.tids, 0, 1) + 1;
    try {
      new Worker(new URL(import.meta.url), { workerData: { ...shared, tid, arg } });
    } catch (e) {
      process.stderr.write(`wasi_run: thread-spawn: ${e}\n`);
      return -1;
    }
    return tid;
  };
}

/// A thread's entry: the module on the shared memory, `wasi_thread_start`, then the worker ends.
function thread() {
  const { module, memory, args, tid, arg } = workerData;
  const wasi = makeWasi(args);
  const instance = new WebAssembly.Instance(module, imports(module, wasi, memory, spawner(workerData)));
  // WASI needs the memory its calls read; `initialize` sets it (no `_start` is run here).
  wasi.initialize({ exports: { memory } });
  try {
    instance.exports.wasi_thread_start(tid, arg);
  } catch (e) {
    // A worker's process.stderr goes through the main thread, which may be blocked: write the
    // file descriptor itself.
    writeSync(2, `wasi_run: thread ${tid}: ${describe(e)}\n`);
    process.kill(process.pid, "SIGTERM");
  }
}

function main() {
  const [path, ...rest] = process.argv.slice(2);
  if (!path) {
    process.stderr.write("usage: node scripts/wasi_run.mjs PROGRAM.wasm [ARGS...]\n");
    process.exit(2);
  }
  const bytes = readFileSync(path);
  const module = new WebAssembly.Module(bytes);
  const args = [path, ...rest];
  const limits = importedMemoryLimits(bytes);
  const memory = limits && new WebAssembly.Memory(limits);
  const shared = { module, memory, args, tids: new Int32Array(new SharedArrayBuffer(4)) };
  const wasi = makeWasi(args);
  const instance = new WebAssembly.Instance(module, imports(module, wasi, memory, spawner(shared)));
  let status;
  try {
    // A module that imports its memory may not export it; WASI reads it from the exports.
    const exports = memory && !instance.exports.memory ? { ...instance.exports, memory } : instance.exports;
    status = wasi.start(exports === instance.exports ? instance : { exports });
  } catch (e) {
    writeSync(2, `wasi_run: ${describe(e)}\n`);
    status = 101;
  }
  // Workers still parked on the pool's condition variables would keep Node alive.
  process.exit(status);
}

if (isMainThread) main();
else thread();
