// Named errors of the npm package in headless Chromium, caused for real on the page
// `pages/gpu-faults.html`: an adapter whose limits cannot hold the model rejects createEngine
// with AdapterTooSmallError; a GPUDevice destroyed mid-generation or between requests fails
// the running, queued and later requests with DeviceLostError within a bounded time (no
// hang); a file that is not a GGUF and a malformed request keep their own names across the
// worker. The names come from the Rust error types (src/web/error.rs), not from messages.
//
// Needs `./build.sh wasm` (www/pkg/).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer } from "./server.js";
import { launchBrowser, requireWasmPackage } from "./harness.js";

/** A text-only tiny Mistral 3 (transformers-made, 0.5 MB) and a prompt of its ids. */
const MODEL = { text: "/fixtures/tiny_mistral3_c/model.gguf" };
const TOKENS = [1, 482, 480, 662, 307, 706, 427, 705];
/** How long a request may take to fail once the device is lost before the test calls it a
 * hang (SwiftShader on shared cores can be slow; a hang is forever). */
const BOUND_MS = 20_000;

let server, browser, page;

before(async () => {
  requireWasmPackage();
  server = await startServer();
  browser = await launchBrowser();
  page = await browser.newPage();
});

after(async () => {
  await browser?.close();
  await server?.close();
});

/** Opens the fault page with adapter limit overrides (`{maxBufferSize: n, ...}`). */
async function open(limits = {}) {
  const q = new URLSearchParams(Object.entries(limits).map(([k, v]) => [k, String(v)]));
  await page.goto(`${server.url}/test/gpu-faults.html${q.size ? `?${q}` : ""}`);
}

/** Runs `fn(api, arg)` in the page with the package imported as `api`. There `settle(p)`
 * resolves to `{ value }` or `{ error: {name, message, ...} }`, `bounded(p)` also to
 * `{ hang: true }` after BOUND_MS, and `load(api, model)` creates an engine on the page
 * thread (where the GPUDevice is in reach). */
function inPage(fn, arg) {
  return page.evaluate(
    async ([src, arg, boundMs]) => {
      const api = await import("/pkg/index.js");
      const describe = (e) => ({
        name: e?.name, message: String(e?.message ?? e), named: Object.values(api).some((c) => c?.prototype instanceof Error && c.name === e?.name && e instanceof c),
        webvlm: e instanceof api.WebvlmError, devicelost: e instanceof api.DeviceLostError, toosmall: e instanceof api.AdapterTooSmallError,
      });
      // createEngine on the page thread, where the test can reach the GPUDevice.
      globalThis.load = (api, model) =>
        api.createEngine({ backend: "webgpu", model, worker: false, engine: { maxContext: 256 }, cacheName: "errors-test" });
      globalThis.settle = (p) => p.then((value) => ({ value }), (e) => ({ error: describe(e) }));
      globalThis.bounded = (p) => Promise.race([settle(p), new Promise((r) => setTimeout(() => r({ hang: true }), boundMs))]);
      return (0, eval)(`(${src})`)(api, arg);
    },
    [fn.toString(), arg, BOUND_MS],
  );
}

for (const [what, limits] of [
  ["a 128-byte maxStorageBufferBindingSize", { maxStorageBufferBindingSize: 128 }],
  ["a 64 KiB maxBufferSize", { maxBufferSize: 64 << 10 }],
]) {
  test(`an adapter with ${what} rejects createEngine with AdapterTooSmallError`, async (t) => {
    await open(limits);
    const r = await inPage(async (api, [model, limits]) => {
      const adapter = await navigator.gpu.requestAdapter();
      const seen = Object.fromEntries(Object.keys(limits).map((k) => [k, adapter.limits[k]]));
      return { seen, load: await bounded(load(api, model)) };
    }, [MODEL, limits]);
    assert.deepEqual(r.seen, limits, "the page's adapter reports the small limits");
    assert.ok(r.load.error, `createEngine must fail: ${JSON.stringify(r.load)}`);
    const e = r.load.error;
    t.diagnostic(`${e.name}: ${e.message}`);
    assert.equal(e.name, "AdapterTooSmallError", e.message);
    assert.ok(e.toosmall && e.webvlm && e.named, "an instance of the exported class");
    assert.match(e.message, /limits or free memory are too small for the model: .* exceeds the (device|part) limit/, "the message says why");
  });
}

test("a device lost mid-generation fails it and the queued request with DeviceLostError", async (t) => {
  await open();
  const r = await inPage(async (api, [model, tokens]) => {
    const engine = await load(api, model);
    const device = gpuDevices.at(-1);
    const request = { messages: [{ role: "user", content: "x" }], tokens, max_tokens: 200, temperature: 0 };
    const stream = await engine.chat.completions.create({ ...request, stream: true });
    const queued = engine.chat.completions.create(request);
    queued.catch(() => {});
    let deltas = 0, destroyed = 0, onDestroyed;
    const destroyedNow = new Promise((r) => { onDestroyed = r; });
    const reading = (async () => {
      for await (const chunk of stream) {
        if (chunk.choices[0]?.delta?.content && ++deltas === 1) {
          device.destroy();
          destroyed = performance.now();
          onDestroyed();
        }
      }
    })();
    // Unbounded until the loss (prefill may compile for long); bounded from then on.
    const early = await Promise.race([settle(reading), destroyedNow.then(() => null)]);
    const running = early ?? await bounded(reading);
    const ms = performance.now() - destroyed;
    return { running, queued: await bounded(queued), deltas, ms, later: await bounded(engine.chat.completions.create(request)) };
  }, [MODEL, TOKENS]);
  assert.ok(r.deltas >= 1, `the device was destroyed while tokens were streaming: ${JSON.stringify(r)}`);
  t.diagnostic(`the running request failed ${r.ms.toFixed(0)} ms after the device was destroyed`);
  for (const [which, out] of [["running", r.running], ["queued", r.queued], ["later", r.later]]) {
    assert.ok(!out.hang, `the ${which} request hung`);
    assert.equal(out.error?.name, "DeviceLostError", `${which}: ${JSON.stringify(out)}`);
    assert.ok(out.error.devicelost && out.error.webvlm, `${which}: an instance of DeviceLostError`);
  }
  assert.match(r.later.error.message, /create the engine again/);
  assert.deepEqual(browser.errors, [], "no uncaught exception");
});

test("a device lost between requests fails the next request with DeviceLostError", async (t) => {
  await open();
  const r = await inPage(async (api, [model, tokens]) => {
    const engine = await load(api, model);
    const device = gpuDevices.at(-1);
    const request = { messages: [{ role: "user", content: "x" }], tokens, max_tokens: 3, temperature: 0 };
    const before = await settle(engine.chat.completions.create(request));
    device.destroy();
    const reason = (await device.lost).reason;
    const started = performance.now();
    const after = await bounded(engine.chat.completions.create(request));
    const ms = performance.now() - started;
    const unload = await bounded(engine.unload());
    return { before, reason, after, ms, unload };
  }, [MODEL, TOKENS]);
  assert.ok(r.before.value?.choices?.[0]?.message, `a request before the loss works: ${JSON.stringify(r.before)}`);
  assert.equal(r.reason, "destroyed");
  assert.ok(!r.after.hang, "the request after the loss hung");
  t.diagnostic(`the request after the loss failed in ${r.ms.toFixed(0)} ms`);
  assert.equal(r.after.error?.name, "DeviceLostError", JSON.stringify(r.after));
  assert.match(r.after.error.message, /device was lost/);
  assert.ok("value" in r.unload, "unload still works");
  assert.deepEqual(browser.errors, [], "no uncaught exception");
});

test("a file that is not a GGUF and a malformed request keep their names across the worker", async () => {
  await open();
  const r = await inPage(async (api, [model, tokens]) => {
    const notGguf = await bounded(api.createEngine({ backend: "webgpu", model: { text: "/fixtures/tiny_mistral3_c/cases.json" }, cacheName: "errors-test" }));
    const engine = await api.createEngine({ backend: "webgpu", model, engine: { maxContext: 256 }, cacheName: "errors-test" });
    const bad = await bounded(engine.chat.completions.create({ messages: [{ role: "user", content: "x" }], tokens, top_k: -1 }));
    await engine.unload();
    return { notGguf, bad };
  }, [MODEL, TOKENS]);
  assert.equal(r.notGguf.error?.name, "ModelNotSupportedError", JSON.stringify(r.notGguf));
  assert.ok(r.notGguf.error.named);
  assert.equal(r.bad.error?.name, "BadRequestError", JSON.stringify(r.bad));
  assert.ok(r.bad.error.named);
});
