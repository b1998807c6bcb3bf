// A lost GPU device and its recovery, in the engine's module worker (the package's default):
// the GPUDevice is destroyed in the worker while a streamed request runs (the worker is served
// with pages/gpu-faults-worker.js imported first, which destroys its device on a message from
// the page). The request ends with DeviceLostError, later ones fail fast with it,
// `engine.reload()` loads the same model again on a new device from Cache Storage (the server
// sees no weight request), the worker's GPU buffer counter right after it is what it was right
// after the first load (the lost device's buffers are gone) and the next greedy answer equals
// the one before the loss. Then the demo page: a loss mid-reply shows the error banner, whose
// Reload model action brings the model back (no download) and the chat goes on.
//
// Needs `./build.sh wasm` (www/pkg/).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { startServer, repoRoot } from "./server.js";
import { inPage, launchBrowser, requireWasmPackage } from "./harness.js";

const TINY = "/fixtures/tiny_mistral3_tekken";
const MODEL = { text: `${TINY}/model.gguf`, mmproj: `${TINY}/mmproj.gguf` };
/** How long a request may take to fail once the device is lost before the test calls it a
 * hang (SwiftShader on shared cores can be slow; a hang is forever). */
const BOUND_MS = 30_000;

let server, browser, page;

before(async () => {
  requireWasmPackage();
  server = await startServer();
  // The package's worker with the test's GPU fault hooks imported first (never in the package).
  const worker = path.join(repoRoot, "www/pkg/worker.js");
  server.intercept = (req, res, entry) => {
    if (entry.path !== "/pkg/worker.js") return false;
    const body = `import "/test/gpu-faults-worker.js";\n${fs.readFileSync(worker, "utf8")}`;
    res.writeHead(200, { "Content-Type": "text/javascript; charset=utf-8" });
    entry.bytes = Buffer.byteLength(body);
    res.end(body);
    return true;
  };
  browser = await launchBrowser();
  page = await browser.newPage();
});

after(async () => {
  await browser?.close();
  await server?.close();
});

/** Requests for weights (GGUF files) in the server's log since entry `since`. */
function weightRequests(since) {
  return server.log.slice(since).filter((e) => e.path.endsWith(".gguf"));
}

/** In the page: `destroyWorkerDevice()` destroys the engine worker's newest GPUDevice and
 * resolves with how many devices the worker created; `settle(p)` resolves to `{ value }` or
 * `{ error: {name, message, devicelost} }`, `bounded(p)` also to `{ hang: true }` after
 * BOUND_MS. */
async function installHelpers() {
  await page.evaluate(async (boundMs) => {
    const api = await import("/pkg/index.js");
    globalThis.destroyWorkerDevice = () => new Promise((resolve) => {
      const channel = new BroadcastChannel("webvlm-gpu-faults");
      channel.onmessage = (e) => {
        if (e.data?.type !== "destroyed") return;
        channel.close();
        resolve(e.data.devices);
      };
      channel.postMessage({ type: "destroy" });
    });
    globalThis.settle = (p) => p.then((value) => ({ value }), (e) => ({
      error: { name: e?.name, message: String(e?.message ?? e), devicelost: e instanceof api.DeviceLostError },
    }));
    globalThis.bounded = (p) => Promise.race([settle(p), new Promise((r) => setTimeout(() => r({ hang: true }), boundMs))]);
  }, BOUND_MS);
}

test("a device lost mid-stream fails it with DeviceLostError; engine.reload() brings the model back from Cache Storage and answers as before", async (t) => {
  await page.goto(`${server.url}/test/blank.html`);
  await installHelpers();
  const loaded = await inPage(page, async (api, model, s) => {
    s.engine = await api.createEngine({ backend: "webgpu", model, chunkBytes: 1 << 20, cacheName: "device-lost-test" });
    return { ...s.engine.info, buffers: (await s.engine.stats()).gpuBuffers };
  }, MODEL);
  assert.ok(loaded.networkBytes > 0, "the first load downloads the weights");

  const request = {
    messages: [{ role: "user", content: [
      { type: "image_url", image_url: { url: `${TINY}/img_84x56.png` } },
      { type: "text", text: "What is in this picture?" },
    ] }],
    max_tokens: 6, temperature: 0,
  };
  const started = Date.now();
  const before = await inPage(page, (api, request, s) => s.engine.chat.completions.create(request), request);
  t.diagnostic(`before the loss (${((Date.now() - started) / 1000).toFixed(1)} s): ${JSON.stringify(before.choices[0].message.content)}`);

  const lost = await inPage(page, async (api, request, s) => {
    const stream = await s.engine.chat.completions.create({
      messages: [{ role: "user", content: "Tell me a long story." }], max_tokens: 200, temperature: 0, stream: true,
    });
    let deltas = 0, devices = 0, destroyedAt = 0, onDestroyed;
    const destroyedNow = new Promise((r) => { onDestroyed = r; });
    const reading = (async () => {
      for await (const chunk of stream) {
        if (chunk.choices[0]?.delta?.content && ++deltas === 1) {
          devices = await destroyWorkerDevice();
          destroyedAt = performance.now();
          onDestroyed();
        }
      }
    })();
    // Unbounded until the loss (the first step compiles the kernels); bounded from then on.
    const early = await Promise.race([settle(reading), destroyedNow.then(() => null)]);
    const running = early ?? await bounded(reading);
    const ms = performance.now() - destroyedAt;
    const started = performance.now();
    const later = await bounded(s.engine.chat.completions.create(request));
    return { running, ms, later, laterMs: performance.now() - started, deltas, devices };
  }, request);
  assert.ok(lost.deltas >= 1 && lost.devices >= 1, `the device was destroyed while tokens streamed: ${JSON.stringify(lost)}`);
  t.diagnostic(`the running request failed ${lost.ms.toFixed(0)} ms after the device was destroyed; a later one in ${lost.laterMs.toFixed(0)} ms`);
  for (const [which, out] of [["running", lost.running], ["later", lost.later]]) {
    assert.ok(!out.hang, `the ${which} request hung`);
    assert.equal(out.error?.name, "DeviceLostError", `${which}: ${JSON.stringify(out)}`);
    assert.ok(out.error.devicelost, `${which}: an instance of DeviceLostError`);
  }
  assert.match(lost.later.error.message, /engine\.reload\(\)/, "the error says how to recover");

  const since = server.log.length;
  const reloaded = await inPage(page, async (api, request, s) => {
    const phases = new Set();
    const info = await s.engine.reload({ onProgress: (p) => phases.add(p.phase) });
    const buffers = (await s.engine.stats()).gpuBuffers; // at once, as after the first load
    // Unbounded: the new device compiles every kernel again on its first request.
    const started = performance.now();
    const after = await settle(s.engine.chat.completions.create(request));
    const ms = performance.now() - started;
    return { info, same: s.engine.info === info, phases: [...phases], after, ms, buffers };
  }, request);
  t.diagnostic(`reloaded in ${reloaded.info.loadSeconds.toFixed(1)} s (phases ${reloaded.phases.join(" ")}); the next request took ${(reloaded.ms / 1000).toFixed(1)} s`);
  assert.deepEqual(weightRequests(since), [], "weight requests during the reload");
  assert.equal(reloaded.info.networkBytes, 0, "no weight byte from the network");
  assert.ok(reloaded.same, "engine.info is the reload's");
  assert.equal(reloaded.info.remote, false);
  assert.ok(reloaded.phases.includes("cache") && reloaded.phases.at(-1) === "ready", JSON.stringify(reloaded.phases));
  assert.ok(reloaded.after.value, `the next request works: ${JSON.stringify(reloaded.after)}`);
  assert.equal(reloaded.after.value.choices[0].message.content, before.choices[0].message.content, "the answer after the reload");
  assert.equal(reloaded.after.value.choices[0].finish_reason, before.choices[0].finish_reason);
  // The same model loaded on the new device: the same buffers, the lost device's gone.
  t.diagnostic(`GPU buffers after the first load ${JSON.stringify(loaded.buffers)}, after the reload ${JSON.stringify(reloaded.buffers)}`);
  assert.ok(loaded.buffers.live > 0 && loaded.buffers.bytes > 0, JSON.stringify(loaded.buffers));
  assert.deepEqual([reloaded.buffers.live, reloaded.buffers.bytes], [loaded.buffers.live, loaded.buffers.bytes],
    "the lost device's GPU buffers are still alive after the reload");
  await inPage(page, (api, _, s) => s.engine.unload());
  assert.deepEqual(browser.errors, [], "no uncaught exception");
});

test("the demo: a device lost mid-reply shows the error banner; Reload model brings the model back from the cache and the chat goes on", async (t) => {
  await page.goto(`${server.url}/index.html?model=${TINY}/model.gguf&mmproj=${TINY}/mmproj.gguf&autoload=1&max_tokens=64&temperature=0&backend=webgpu`);
  await page.waitForFunction(() => document.body.dataset.state === "ready", null, { timeout: 120_000 });
  await installHelpers();

  await page.fill("#prompt", "Tell me a long story.");
  await page.click("#send");
  await page.waitForFunction(() => window.webvlmDemo.state.lastReply?.deltas > 0, null, { timeout: 120_000 });
  assert.equal(await page.evaluate(() => document.body.dataset.state), "generating");
  await page.evaluate(() => destroyWorkerDevice());
  await page.waitForFunction(() => document.body.dataset.state === "error", null, { timeout: BOUND_MS });
  assert.equal(await page.getAttribute("#error", "data-error-name"), "DeviceLostError");
  assert.equal(await page.locator(".msg.assistant").last().getAttribute("data-state"), "error");
  assert.ok(await page.isVisible("#error-reload"), "the banner offers to reload");
  assert.equal((await page.textContent("#error-reload")).trim(), "Reload model");
  assert.match(await page.textContent("#error-hint"), /Reload the model/);
  assert.deepEqual(await page.evaluate(() => ({ engine: window.webvlmDemo.engine, lost: !!window.webvlmDemo.lostEngine })), { engine: null, lost: true });
  await browser.screenshot(page, "demo-device-lost");

  const since = server.log.length;
  const url = page.url();
  await page.click("#error-reload");
  await page.waitForFunction(() => document.body.dataset.state === "ready", null, { timeout: 120_000 });
  assert.equal(page.url(), url, "the page itself was not reloaded");
  assert.deepEqual(weightRequests(since), [], "weight requests during the reload");
  const info = await page.evaluate(() => window.webvlmDemo.engine?.info);
  assert.equal(info?.networkBytes, 0);
  assert.equal(await page.evaluate(() => window.webvlmDemo.lostEngine), null);
  assert.ok(await page.isHidden("#error"), "the banner is gone");
  assert.match(await page.textContent("#progress-text"), /reloaded .* from this device's cache/);
  t.diagnostic(await page.textContent("#progress-text"));

  // The chat goes on with the reloaded model.
  await page.evaluate(() => { window.webvlmDemo.state.settings.max_tokens = 4; }); // for this visit
  await page.fill("#prompt", "And then?");
  await page.click("#send");
  await page.waitForFunction(() => document.body.dataset.state === "ready", null, { timeout: 120_000 });
  const reply = page.locator(".msg.assistant").last();
  assert.equal(await reply.getAttribute("data-state"), "done");
  assert.match(await reply.locator(".content").textContent(), /\S/);
  assert.equal(await page.evaluate(() => window.webvlmDemo.state.lastReply?.error ?? null), null);
  await browser.screenshot(page, "demo-device-lost-reloaded");
  assert.deepEqual(browser.errors, [], "no uncaught exception");
});
