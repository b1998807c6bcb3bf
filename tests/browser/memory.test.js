// Loading a model with Ministral 3 3B's exact shapes (Q4_K/Q6_K matrices written by
// `webvlm synthetic` with the real Tekken tokenizer, plus an F16 mmproj: 3.1 GB) streams the
// weights chunk by chunk into GPU buffers: the wasm heap (WebAssembly.Memory, which only
// grows) must stay within 256 MiB. The weights are zeros (`--zeros`) left as holes in sparse
// files, and the load skips Cache Storage: the run needs a few MB of disk, not 3.1 GB. The
// bytes still travel through HTTP, the loader and the GPU uploads like any others. On the CPU
// backend the same model's weights live in wasm memory: it loads and generates within wasm32's
// 4 GiB, and its peak wasm memory is printed.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { startServer, repoRoot, DEFAULT_MOUNTS } from "./server.js";
import { launchBrowser, requireWasmPackage } from "./harness.js";

const LIMIT = 256 * 2 ** 20;
let dir, server, browser;

before(async () => {
  requireWasmPackage();
  const parent = path.join(repoRoot, "target");
  fs.mkdirSync(parent, { recursive: true });
  dir = fs.mkdtempSync(path.join(parent, "webvlm-3b-"));
  const args = ["run", "--quiet", "--bin", "webvlm", "--", "synthetic", "--shape", "3b", "--zeros",
    "--out", path.join(dir, "model.gguf"), "--mmproj-out", path.join(dir, "mmproj.gguf"),
    "--vocab-from", path.join(repoRoot, "tests/fixtures/tiny_mistral3_tekken/model.gguf")];
  const run = spawnSync("cargo", args, { cwd: repoRoot, encoding: "utf8" });
  if (run.status !== 0) {
    const free = spawnSync("df", ["-h", parent], { encoding: "utf8" }).stdout;
    throw new Error(`webvlm synthetic failed (status ${run.status}, signal ${run.signal}):\n${run.stderr}\n${free}`);
  }
  server = await startServer({ mounts: { ...DEFAULT_MOUNTS, "/s3b/": dir } });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test("a 3B-shaped model streams into the GPU with the wasm heap under 256 MiB", async (t) => {
  const page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
  const info = await page.evaluate(async () => {
    const { createEngine } = await import("/pkg/index.js");
    const e = await createEngine({ backend: "webgpu", model: { text: "/s3b/model.gguf", mmproj: "/s3b/mmproj.gguf" }, cacheName: null });
    const info = e.info;
    await e.unload();
    return info;
  });
  t.diagnostic(`weights ${info.weightBytes} B on the GPU in ${info.loadSeconds.toFixed(1)} s; wasm heap ${info.wasmMemoryBytes} B`);
  console.log(`# 3B-shaped load: ${(info.weightBytes / 2 ** 30).toFixed(2)} GiB of weights, wasm heap peak ${(info.wasmMemoryBytes / 2 ** 20).toFixed(0)} MiB, ${info.loadSeconds.toFixed(1)} s`);
  assert.equal(info.layers, 26);
  assert.equal(info.vision, true);
  assert.ok(info.weightBytes > 2.5 * 2 ** 30, `${info.weightBytes} bytes of weights`);
  assert.ok(info.wasmMemoryBytes <= LIMIT, `wasm heap ${info.wasmMemoryBytes} bytes`);
  browser.assertNoErrors();
});

test("the 3B-shaped model loads and generates on the CPU backend within wasm32's 4 GiB", { timeout: 15 * 60_000 }, async (t) => {
  const page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
  const r = await page.evaluate(async () => {
    const { createEngine } = await import("/pkg/index.js");
    // The vision matrices at Q8_0, a 1024-token f16 KV cache, prefill chunks of 64 tokens and
    // no prompt cache: the text weights (2.2 GiB), the vision ones, the state and the scratch
    // within what wasm32 can address (the plan refuses the defaults).
    const e = await createEngine({
      backend: "cpu", model: { text: "/s3b/model.gguf", mmproj: "/s3b/mmproj.gguf" }, cacheName: null,
      engine: { maxContext: 1024, maxChunk: 64, visionQuant: "q8_0", promptCacheBytes: 0 },
    });
    // A system message of its own replaces the template's long default one: a short prompt.
    const messages = [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi" }];
    const reply = await e.chat.completions.create({ messages, max_tokens: 2, temperature: 0 });
    const stats = await e.stats();
    await e.unload();
    return { info: e.info, usage: reply.usage, wasmMemoryBytes: stats.wasmMemoryBytes };
  });
  const gib = (b) => (b / 2 ** 30).toFixed(2);
  t.diagnostic(`${JSON.stringify(r.info.backend)}; plan ${JSON.stringify(r.info.memoryPlan)}; usage ${JSON.stringify(r.usage)}`);
  console.log(`# 3B-shaped model on the CPU backend: ${gib(r.info.weightBytes)} GiB of weights in wasm memory, `
    + `wasm memory peak ${gib(r.wasmMemoryBytes)} GiB, loaded in ${r.info.loadSeconds.toFixed(1)} s`);
  assert.equal(r.info.backend.name, "cpu");
  assert.ok(r.info.weightBytes > 2 * 2 ** 30, `${r.info.weightBytes} bytes of weights`);
  assert.equal(r.usage.completion_tokens, 2);
  assert.ok(r.wasmMemoryBytes > r.info.weightBytes && r.wasmMemoryBytes <= 4 * 2 ** 30, `wasm memory ${r.wasmMemoryBytes} bytes`);
  browser.assertNoErrors();
});
