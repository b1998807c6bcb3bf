// The CPU backend in headless Chromium, through the npm package: `backend: "auto"` takes it
// where WebGPU's only adapter is SwiftShader (a software one) or where the page has no WebGPU,
// and its greedy replies equal the native CLI's CPU backend (`webvlm generate --backend cpu
// --threads 1`) on the tiny Mistral 3 VLM with an image, the tiny Qwen3.5 VLM and the real
// SmolLM2-135M, in both wasm builds (relaxed SIMD and plain SIMD128).
//
// Needs `./build.sh wasm` (pkg/ and www/pkg/), the native CLI (built here with cargo) and
// SmolLM2 (scripts/fetch_smollm2.sh).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { startServer, repoRoot, cacheDir, DEFAULT_MOUNTS } from "./server.js";
import { inPage, launchBrowser, requireWasmPackage } from "./harness.js";

const MIN = 60_000;
const SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf";
const models = path.join(cacheDir, "models");

let server, browser, page;

before(async () => {
  requireWasmPackage();
  assert.ok(fs.existsSync(path.join(models, SMOLLM2)), `${SMOLLM2} missing: run scripts/fetch_smollm2.sh`);
  server = await startServer({ mounts: { ...DEFAULT_MOUNTS, "/models/": models } });
  browser = await launchBrowser();
  page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

/** `webvlm generate` on the native CPU backend, one thread, in `mode`, with `args`; its text. */
function nativeCpu(args, mode = "fast") {
  const out = execFileSync("cargo", ["run", "--quiet", "--bin", "webvlm", "--", "generate", "--backend", "cpu", "--threads", "1",
    "--cpu-mode", mode, "--chat", "--ctx", "4096", ...args], { cwd: repoRoot, encoding: "utf8" });
  return out.replace(/\n$/, "");
}

/** Loads `model` in the page with `options`, runs `request` greedily, unloads; the reply and
 * the engine's info. */
function runInPage(model, options, request) {
  return inPage(page, async (api, [model, options, request]) => {
    const engine = await api.createEngine({ model, cacheName: null, ...options });
    try {
      const reply = await engine.chat.completions.create({ temperature: 0, ...request });
      return { info: engine.info, content: reply.choices[0].message.content, usage: reply.usage };
    } finally {
      await engine.unload();
    }
  }, [model, options, request]);
}

const imageRequest = (url, prompt, more = {}) => ({
  messages: [{ role: "user", content: [{ type: "image_url", image_url: { url } }, { type: "text", text: prompt }] }], ...more,
});

test("auto takes the CPU backend on SwiftShader; the tiny Mistral 3 VLM answers about an image as the native CPU backend does, in both wasm builds", { timeout: 10 * MIN }, async (t) => {
  const dir = "tests/fixtures/tiny_mistral3_tekken";
  const model = { text: `/fixtures/tiny_mistral3_tekken/model.gguf`, mmproj: `/fixtures/tiny_mistral3_tekken/mmproj.gguf` };
  const request = imageRequest("/fixtures/tiny_mistral3_tekken/img_84x56.png", "Describe the image.", { max_tokens: 6 });
  const relaxed = await runInPage(model, {}, request);
  t.diagnostic(`auto: ${JSON.stringify(relaxed.info.backend)}; adapter ${relaxed.info.adapter}`);
  assert.equal(relaxed.info.backend.name, "cpu");
  assert.match(relaxed.info.backend.reason, /software/);
  assert.equal(relaxed.info.backend.threads, 1);
  assert.equal(relaxed.info.backend.build, "relaxed", "Chromium has relaxed SIMD: the relaxed build loads");
  const plain = await runInPage(model, { backend: "cpu", wasmBuild: "simd128" }, request);
  // Another worker, so another realm: the SIMD128 build.
  assert.equal(plain.info.backend.build, "simd128");
  const native = nativeCpu(["--model", path.join(dir, "model.gguf"), "--mmproj", path.join(dir, "mmproj.gguf"),
    "--image", path.join(dir, "img_84x56.png"), "--prompt", "Describe the image.", "--max-tokens", "6"]);
  t.diagnostic(`relaxed: ${JSON.stringify(relaxed.content)} simd128: ${JSON.stringify(plain.content)} native: ${JSON.stringify(native)}`);
  assert.ok(relaxed.usage.completion_tokens > 0);
  assert.equal(relaxed.content, native);
  assert.equal(plain.content, native);
  browser.assertNoErrors();
});

test("the tiny Qwen3.5 VLM (Gated DeltaNet) answers about an image on the CPU backend as natively", { timeout: 10 * MIN }, async (t) => {
  const dir = "tests/fixtures/tiny_qwen35_a";
  const model = { text: "/fixtures/tiny_qwen35_a/model.gguf", mmproj: "/fixtures/tiny_qwen35_a/mmproj.gguf" };
  const area = { min: 1024, max: 65536 }; // the fixture processor's bounds (cases.json)
  const r = await runInPage(model, { backend: "cpu", engine: { imageMinArea: area.min, imageMaxArea: area.max } },
    imageRequest("/fixtures/tiny_qwen35_a/img_100x44.png", "Describe this image.",
      { max_tokens: 8, chat_template_kwargs: { enable_thinking: false } }));
  const native = nativeCpu(["--model", path.join(dir, "model.gguf"), "--mmproj", path.join(dir, "mmproj.gguf"),
    "--image", path.join(dir, "img_100x44.png"), "--image-min-area", `${area.min}`, "--image-max-area", `${area.max}`,
    "--prompt", "Describe this image.", "--no-think", "--max-tokens", "8"]);
  t.diagnostic(`browser: ${JSON.stringify(r.content)} native: ${JSON.stringify(native)}; ${JSON.stringify(r.info.backend)}`);
  assert.equal(r.info.backend.name, "cpu");
  assert.ok(r.usage.prompt_tokens > 30, `${r.usage.prompt_tokens} prompt tokens (the image's included)`);
  assert.equal(r.content, native);
  browser.assertNoErrors();
});

// In the exact mode: the fast one's 8-bit activations turn the last-bit differences of the
// other ops between SIMD levels (natively too: AVX2 and scalar) into other greedy replies on a
// real model after a few tokens; the tiny fixtures above have no such near ties.
test("SmolLM2-135M on the CPU backend (exact mode) answers as natively, where the page has no WebGPU at all", { timeout: 10 * MIN }, async (t) => {
  const bare = await browser.context.newPage();
  await bare.addInitScript(() => { delete Navigator.prototype.gpu; });
  await bare.goto(`${server.url}/test/blank.html`);
  const prompt = "What is the capital of France?";
  const r = await inPage(bare, async (api, [url, prompt]) => {
    // On the page's thread: its navigator is the one without WebGPU.
    const engine = await api.createEngine({ model: { text: url }, worker: false, cacheName: null, engine: { cpuMode: "exact" } });
    const reply = await engine.chat.completions.create({ messages: [{ role: "user", content: prompt }], max_tokens: 16, temperature: 0 });
    await engine.unload();
    return { gpu: "gpu" in navigator, info: engine.info, content: reply.choices[0].message.content, usage: reply.usage };
  }, [`/models/${SMOLLM2}`, prompt]);
  await bare.close();
  const native = nativeCpu(["--model", path.join(models, SMOLLM2), "--prompt", prompt, "--max-tokens", "16"], "exact");
  t.diagnostic(`browser: ${JSON.stringify(r.content)} native: ${JSON.stringify(native)}; ${JSON.stringify(r.info.backend)}; usage ${JSON.stringify(r.usage)}`);
  assert.equal(r.gpu, false, "the init script did not hide WebGPU");
  assert.equal(r.info.backend.name, "cpu");
  assert.equal(r.info.backend.mode, "exact");
  assert.match(r.info.backend.reason, /no WebGPU/);
  assert.match(r.content, /Paris/);
  assert.equal(r.content, native);
  browser.assertNoErrors();
});

test("backend and threads are checked before anything loads", async () => {
  const r = await inPage(page, async (api) => {
    const fail = (o) => api.createEngine({ model: { text: "/none.gguf" }, ...o }).then(() => null, (e) => `${e.name}: ${e.message}`);
    return { backend: await fail({ backend: "gpu" }), threads: await fail({ backend: "cpu", threads: 0 }) };
  });
  assert.match(r.backend, /^BadRequestError: backend must be one of "auto", "webgpu", "cpu"/);
  assert.match(r.threads, /^BadRequestError: threads must be a positive integer/);
});
