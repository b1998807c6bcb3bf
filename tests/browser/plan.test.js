// The memory plan in the browser refuses a model too large for the GPU budget (or, on the CPU
// backend, for wasm32's 4 GiB) before the download starts: a synthetic Mistral Small 3.1 24B
// (its exact shapes, Q4_K/Q6_K matrices of zeros left as holes in a sparse ~14 GB file, the
// real Tekken vocabulary) with its Pixtral mmproj, loaded through the npm package with the
// default `gpuMemory` of 4 GiB (on the CPU backend: the wasm memory the module can still
// address), fails with an AdapterTooSmallError naming what the model needs, and only the
// files' headers were read.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { startServer, repoRoot, DEFAULT_MOUNTS } from "./server.js";
import { inPage, launchBrowser, requireWasmPackage } from "./harness.js";

let dir, server, browser, page;

before(async () => {
  requireWasmPackage();
  const parent = path.join(repoRoot, "target");
  fs.mkdirSync(parent, { recursive: true });
  dir = fs.mkdtempSync(path.join(parent, "webvlm-24b-"));
  const args = ["run", "--quiet", "--bin", "webvlm", "--", "synthetic", "--shape", "mistral-small-24b", "--zeros",
    "--out", path.join(dir, "model.gguf"), "--mmproj-out", path.join(dir, "mmproj.gguf"),
    "--vocab-from", path.join(repoRoot, "tests/fixtures/tiny_mistral3_tekken/model.gguf")];
  const run = spawnSync("cargo", args, { cwd: repoRoot, encoding: "utf8" });
  if (run.status !== 0) throw new Error(`webvlm synthetic failed (status ${run.status}):\n${run.stderr}`);
  server = await startServer({ mounts: { ...DEFAULT_MOUNTS, "/m24b/": dir } });
  browser = await launchBrowser();
  page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
});

after(async () => {
  await browser?.close();
  await server?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

for (const backend of ["webgpu", "cpu"]) test(`${backend}: a 24B model is refused on a 4 GiB budget after reading its headers only`, async (t) => {
  const size = fs.statSync(path.join(dir, "model.gguf")).size;
  assert.ok(size > 10e9, `the synthetic file has the model's size (${size} bytes)`);
  const since = server.log.length;
  const error = await inPage(page, async (api, backend) => {
    try {
      await api.createEngine({ backend, model: { text: "/m24b/model.gguf", mmproj: "/m24b/mmproj.gguf" }, cacheName: null });
      return null;
    } catch (e) {
      return { name: e.name, message: e.message };
    }
  }, backend);
  t.diagnostic(JSON.stringify(error));
  assert.equal(error?.name, "AdapterTooSmallError");
  assert.match(error.message, /MiB/);
  const requests = server.log.slice(since).filter((e) => e.path.startsWith("/m24b/"));
  assert.ok(requests.some((e) => e.path.endsWith("model.gguf")), "the text model's header was read");
  // Header windows start at 0 and grow fourfold from 64 KiB (source.js readHead).
  const windows = [0, 64 << 10, 5 * (64 << 10), 21 * (64 << 10), 85 * (64 << 10)];
  for (const e of requests) {
    const start = Number(e.range?.replace("bytes=", "").split("-")[0]);
    assert.ok(windows.includes(start), `only header reads: ${e.path} ${e.range}`);
  }
  browser.assertNoErrors();
});
