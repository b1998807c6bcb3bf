// GPU memory is given back when a model goes away, not when JS garbage collection gets to the
// buffers (issue 29 item 3; wgpu's web backend never calls GPUBuffer.destroy(), and phones
// kill tabs near 1.5 GB): on the page's thread (`worker: false`), where the page's own
// GPUBuffer counter (js/host.js) sees the engine's buffers, unloading a model brings the
// counter back to what it was before the load at once, with no collection in between, and
// switching models (load the next, unload the first) leaves only the second's buffers, and
// `engine.reload()` after a lost device (pages/gpu-faults.html destroys the page's GPUDevice)
// has destroyed the lost device's buffers before it reads the new load's first byte.
// device_lost.test.js checks the worker's counter after a reload too.
//
// Needs `./build.sh wasm` (www/pkg/).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer } from "./server.js";
import { inPage, launchBrowser, requireWasmPackage } from "./harness.js";

const TINY = "/fixtures/tiny_mistral3_tekken";
const VLM = { text: `${TINY}/model.gguf`, mmproj: `${TINY}/mmproj.gguf` };
const LLAMA = { text: "/fixtures/tiny_llama_spm/model.gguf" };

let server, browser, page;

before(async () => {
  requireWasmPackage();
  server = await startServer();
  browser = await launchBrowser();
  page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

test("worker: false: unload frees the model's GPU buffers at once; switching models leaves only the new one's", { timeout: 10 * 60_000 }, async (t) => {
  const r = await inPage(page, async (api, [vlm, llama]) => {
    const { Host } = await import("/pkg/host.js");
    // This page's GPUBuffer counter (no garbage collection asked for).
    const counter = async () => (await new Host(() => {}).stats()).gpuBuffers;
    const load = (model) => api.createEngine({ backend: "webgpu", model, worker: false, cacheName: "gpu-memory-test", engine: { maxContext: 512 } });
    // Prompt ids both vocabularies have (tiny_llama_spm's has 800 tokens).
    const ask = (engine) => engine.chat.completions.create({ tokens: [1, 611, 337, 455], max_tokens: 2, temperature: 0 });
    const out = { base: await counter() };
    // Load, answer (per-request buffers too), unload.
    let a = await load(vlm);
    await ask(a);
    out.vlm = await counter();
    await a.unload();
    out.unloaded = await counter();
    // Switch: the first model loaded, the second loaded beside it, then the first unloaded.
    a = await load(vlm);
    await ask(a);
    const b = await load(llama);
    await ask(b);
    out.both = await counter();
    out.weights = { vlm: a.info.weightBytes, llama: b.info.weightBytes };
    await a.unload();
    out.switched = await counter();
    await b.unload();
    out.none = await counter();
    return out;
  }, [VLM, LLAMA]);
  const mib = (c) => `${c.live} buffers, ${(c.bytes / 2 ** 20).toFixed(2)} MiB`;
  t.diagnostic(`before ${mib(r.base)}; VLM loaded ${mib(r.vlm)}, unloaded ${mib(r.unloaded)}; both ${mib(r.both)}, `
    + `the VLM unloaded ${mib(r.switched)}, none ${mib(r.none)}`);
  assert.ok(r.vlm.bytes > r.base.bytes + 2 ** 20 && r.vlm.live > r.base.live, "the load allocated GPU buffers");
  assert.deepEqual([r.unloaded.live, r.unloaded.bytes], [r.base.live, r.base.bytes], "unload left GPU buffers alive");
  // Unloading the first model gave back at least its weights at once, and the second kept its
  // own (buffers dropped earlier may or may not have been collected: no exact figure).
  assert.ok(r.both.bytes - r.switched.bytes >= r.weights.vlm, `switching models freed ${r.both.bytes - r.switched.bytes} bytes, `
    + `the first model's weights are ${r.weights.vlm}`);
  assert.ok(r.switched.bytes >= r.base.bytes + r.weights.llama, "the second model's buffers were freed too");
  assert.deepEqual([r.none.live, r.none.bytes], [r.base.live, r.base.bytes], "unloading both left GPU buffers");
  browser.assertNoErrors();
});

test("worker: false: engine.reload() after a lost device destroys the lost device's buffers before the new load starts", { timeout: 10 * 60_000 }, async (t) => {
  await page.goto(`${server.url}/test/gpu-faults.html`);
  const r = await inPage(page, async (api, vlm) => {
    const { Host } = await import("/pkg/host.js");
    const counter = async () => (await new Host(() => {}).stats()).gpuBuffers;
    const engine = await api.createEngine({ backend: "webgpu", model: vlm, worker: false, cacheName: "gpu-memory-test", engine: { maxContext: 512 } });
    const ask = () => engine.chat.completions.create({ tokens: [1, 611, 337, 455], max_tokens: 2, temperature: 0 });
    await ask();
    const loaded = await counter();
    window.gpuDevices.at(-1).destroy(); // a lost device
    const lost = await ask().then(() => null, (e) => e.name);
    let atStart = null; // the counter when the reload reports its first progress (before any weight)
    await engine.reload({ onProgress: () => { atStart ??= counter(); } });
    const reloaded = await counter();
    const answer = await ask();
    await engine.unload();
    return { loaded, lost, atStart: await atStart, reloaded, finish: answer.choices[0].finish_reason };
  }, VLM);
  t.diagnostic(`GPU buffers: loaded ${JSON.stringify(r.loaded)}, as the reload starts ${JSON.stringify(r.atStart)}, reloaded ${JSON.stringify(r.reloaded)}`);
  assert.equal(r.lost, "DeviceLostError");
  assert.ok(r.loaded.live > 0);
  assert.deepEqual([r.atStart.live, r.atStart.bytes], [0, 0], "the lost device's buffers were alive when the reload started");
  assert.ok(r.reloaded.live > 0 && r.reloaded.bytes <= r.loaded.bytes, JSON.stringify(r.reloaded));
  assert.ok(["length", "stop"].includes(r.finish));
  browser.assertNoErrors();
});
