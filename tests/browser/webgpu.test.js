// Headless Chromium: the wasm package (www/pkg/webvlm.js, loaded by the test page
// tests/browser/pages/webgpu.html) opens a WebGPU device on SwiftShader. Plus what later
// tests rely on: the page's Range fetches reach the server and its log (no HTTP cache in
// between), and Cache Storage survives a reload.
//
// Needs `./build.sh wasm` (www/pkg/) and Chromium at /usr/bin/chromium (.ci/run installs both).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { startServer, DEFAULT_MOUNTS } from "./server.js";
import { launchBrowser, webgpuAdapter, requireWasmPackage } from "./harness.js";

const SIZE = 3 * 65536 + 5;
let dir, server, browser;

before(async () => {
  requireWasmPackage();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "webvlm-webgpu-test-"));
  const data = Buffer.alloc(SIZE);
  for (let i = 0; i < SIZE; i++) data[i] = i % 251;
  fs.writeFileSync(path.join(dir, "weights.bin"), data);
  server = await startServer({ mounts: { ...DEFAULT_MOUNTS, "/data/": dir } });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test("the wasm package opens WebGPU on SwiftShader with no page errors", async (t) => {
  const page = await browser.newPage();
  await page.goto(`${server.url}/test/webgpu.html`);
  const status = page.locator("#status");
  await page.waitForFunction(() => document.body.dataset.result, null, { timeout: 60_000 });
  const text = (await status.textContent()).trim();
  const adapter = await webgpuAdapter(page);
  t.diagnostic(`page status: ${text}`);
  t.diagnostic(`adapter limits: ${JSON.stringify(adapter?.limits)}`);
  console.log(`# wasm adapterInfo(): ${text}`);
  console.log(`# WebGPU adapter: vendor=${adapter?.vendor} architecture=${adapter?.architecture} ` +
    `maxBufferSize=${adapter?.limits.maxBufferSize} features=${adapter?.features.join(",")}`);

  const shot = await browser.screenshot(page, "webgpu-check");
  browser.saveLog("webgpu-check");
  t.diagnostic(`screenshot: ${shot}`);

  assert.ok(adapter, "navigator.gpu.requestAdapter() gave no adapter");
  assert.equal(adapter.architecture, "swiftshader");
  assert.equal(await page.evaluate(() => document.body.dataset.result), "ok", `status line: ${text}`);
  assert.match(text, /^webvlm \d+\.\d+\.\d+\S* — GPU: /, `status line: ${text}`);
  browser.assertNoErrors();
  // The page fetched its module and wasm from our server.
  const paths = server.log.map((e) => e.path);
  assert.ok(paths.includes("/pkg/webvlm.js"), paths.join(" "));
  assert.ok(paths.includes("/pkg/webvlm_bg.wasm"), paths.join(" "));
});

test("Range fetches from the page reach the server every time and are logged", async () => {
  const page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
  server.clearLog();
  const got = await page.evaluate(async () => {
    const out = [];
    for (const range of ["bytes=0-65535", "bytes=65536-", "bytes=0-65535"]) {
      const r = await fetch("/data/weights.bin", { headers: { Range: range } });
      const b = new Uint8Array(await r.arrayBuffer());
      out.push({ status: r.status, contentRange: r.headers.get("content-range"), length: b.length, first: b[0], last: b[b.length - 1] });
    }
    return out;
  });
  assert.deepEqual(got, [
    { status: 206, contentRange: `bytes 0-65535/${SIZE}`, length: 65536, first: 0, last: 65535 % 251 },
    { status: 206, contentRange: `bytes 65536-${SIZE - 1}/${SIZE}`, length: SIZE - 65536, first: 65536 % 251, last: (SIZE - 1) % 251 },
    { status: 206, contentRange: `bytes 0-65535/${SIZE}`, length: 65536, first: 0, last: 65535 % 251 },
  ]);
  // The repeated range went to the server again: no HTTP cache hides requests from the log.
  assert.deepEqual(
    server.requests("/data/").map((e) => [e.method, e.range, e.status, e.bytes]),
    [
      ["GET", "bytes=0-65535", 206, 65536],
      ["GET", "bytes=65536-", 206, SIZE - 65536],
      ["GET", "bytes=0-65535", 206, 65536],
    ],
  );
  await page.close();
});

test("Cache Storage persists across a reload, and a cached read makes no request", async () => {
  const page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
  await page.evaluate(async () => {
    const cache = await caches.open("webvlm-harness-check");
    await cache.put("/data/weights.bin?chunk=0", await fetch("/data/weights.bin", { headers: { Range: "bytes=0-1023" } }).then(
      (r) => new Response(r.body, { headers: { "Content-Type": "application/octet-stream" } }),
    ));
  });
  server.clearLog();
  await page.reload();
  const len = await page.evaluate(async () => {
    const cache = await caches.open("webvlm-harness-check");
    const r = await cache.match("/data/weights.bin?chunk=0");
    return r ? (await r.arrayBuffer()).byteLength : -1;
  });
  assert.equal(len, 1024);
  assert.deepEqual(server.requests("/data/"), [], "the cached chunk was read without a request");
  browser.assertNoErrors();
  await page.close();
});
