// Streams and loads that the page lets go of must not hold the engine (issue 29 item 2): a
// stream nobody reads is cut after `streamStallMs` (its reader gets StreamStalledError, the
// next request runs); leaving a stream before its first read, while a read waits, or by
// cancelling engine.fetch's response body stops the generation at once; the worker's set of
// stopped requests holds only requests still queued; `worker: false` cancels a load with its
// signal (the downloads stop, what the load built is freed) as the worker engine does, and a
// load that fails there frees what it built.
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
/** Prompt ids (`<s>[INST] x [/INST]`) whose greedy reply goes on (api.test.js's GREEDY). */
const GREEDY = [1, 3, 60375, 4];
/** Unread chunks the worker keeps ahead of a stream's reader (js/host.js). */
const STREAM_WINDOW = Number(/export const STREAM_WINDOW = (\d+)/.exec(fs.readFileSync(path.join(repoRoot, "www/pkg/host.js"), "utf8"))?.[1]);
/** The short stall bound of the first engine. */
const STALL_MS = 1500;
/** How long a request may wait before the test calls it a hang: well under the default
 * streamStallMs (30 s), so that a stream left running until its stall fails the test. */
const BOUND_MS = 20_000;

let server, browser, page;

before(async () => {
  requireWasmPackage();
  assert.ok(STREAM_WINDOW > 0, "STREAM_WINDOW not found in www/pkg/host.js");
  server = await startServer();
  browser = await launchBrowser();
  page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
  await page.evaluate(() => {
    globalThis.settle = (p) => p.then((value) => ({ value }), (e) => ({ error: { name: e?.name, message: String(e?.message ?? e) } }));
    globalThis.bounded = (p, ms) => Promise.race([settle(p), new Promise((r) => setTimeout(() => r({ hang: true }), ms))]);
  });
});

after(async () => {
  await browser?.close();
  await server?.close();
});

const content = (reply) => reply.choices[0].message.content;

test("a stream nobody reads is cut after streamStallMs: the next request runs, and reading the stream then ends with StreamStalledError", { timeout: 10 * 60_000 }, async (t) => {
  const r = await inPage(page, async (api, [model, prompt, stallMs, boundMs], s) => {
    s.stalling = await api.createEngine({ backend: "webgpu", model, cacheName: "stream-stall-test", streamStallMs: stallMs });
    const create = (req) => s.stalling.chat.completions.create(req);
    const small = { tokens: prompt, max_tokens: 2, temperature: 0 };
    const warm = await create(small); // compiles the kernels
    const stream = await create({ tokens: prompt, max_tokens: 200, temperature: 0, stream: true });
    const t0 = performance.now();
    const next = await bounded(create(small), stallMs + boundMs);
    const nextMs = performance.now() - t0;
    const chunks = [];
    let error = null;
    const read = await bounded((async () => {
      try {
        for await (const c of stream) chunks.push(c);
      } catch (e) {
        error = { name: e.name, message: e.message, typed: e instanceof api.StreamStalledError };
      }
    })(), boundMs);
    await bounded(s.stalling.unload(), boundMs);
    return { warm, next, nextMs, read, chunks: chunks.length, error };
  }, [MODEL, GREEDY, STALL_MS, BOUND_MS]);
  t.diagnostic(`next request after ${(r.nextMs / 1000).toFixed(1)} s; the abandoned stream: ${r.chunks} chunks, then ${JSON.stringify(r.error)}`);
  assert.ok(!r.next.hang, "the next request waited behind the unread stream");
  assert.ok(!r.read.hang, "reading the abandoned stream hung");
  assert.equal(content(r.next.value), content(r.warm), "the next request's answer");
  assert.ok(r.nextMs >= STALL_MS, `the stream was cut after ${r.nextMs} ms, before streamStallMs`);
  assert.equal(r.error?.name, "StreamStalledError", JSON.stringify(r.error));
  assert.ok(r.error.typed, "an instance of StreamStalledError");
  assert.match(r.error.message, /streamStallMs/);
  assert.ok(r.chunks >= 1 && r.chunks <= STREAM_WINDOW, `${r.chunks} chunks were waiting`);
});

test("leaving a stream before its first read, while a read waits, or by cancelling engine.fetch's body stops it at once", { timeout: 10 * 60_000 }, async (t) => {
  const r = await inPage(page, async (api, [model, prompt, boundMs], s) => {
    // The default streamStallMs (30 s): a stream left running would hold the engine past boundMs.
    const engine = await api.createEngine({ backend: "webgpu", model, cacheName: "stream-stall-test" });
    const create = (req) => engine.chat.completions.create(req);
    const small = { tokens: prompt, max_tokens: 2, temperature: 0 };
    const long = { tokens: prompt, max_tokens: 200, temperature: 0, stream: true };
    const warm = await create(small);
    const out = {};
    // return() before any read.
    let it = (await create(long))[Symbol.asyncIterator]();
    await it.return();
    let t0 = performance.now();
    out.unread = { next: await bounded(create(small), boundMs), ms: performance.now() - t0 };
    if (out.unread.next.hang) return { warm, ...out }; // the engine is held: the rest would hang
    // return() while a read waits for its chunk.
    it = (await create(long))[Symbol.asyncIterator]();
    await it.next();
    const waiting = it.next();
    await it.return();
    const pending = await bounded(waiting, boundMs);
    t0 = performance.now();
    out.waiting = { pending: pending.hang ? "hang" : "settled", next: await bounded(create(small), boundMs), ms: performance.now() - t0 };
    if (out.waiting.next.hang) return { warm, ...out };
    // engine.fetch's event stream, cancelled by its reader after one event.
    const response = await engine.fetch("http://webvlm.local/v1/chat/completions", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(long),
    });
    const reader = response.body.getReader();
    await reader.read();
    await reader.cancel();
    t0 = performance.now();
    out.fetch = { next: await bounded(create(small), boundMs), ms: performance.now() - t0 };
    await bounded(engine.unload(), boundMs);
    return { warm, ...out };
  }, [MODEL, GREEDY, BOUND_MS]);
  t.diagnostic(Object.entries(r).filter(([k]) => k !== "warm").map(([k, v]) => `${k}: next request in ${(v.ms / 1000).toFixed(1)} s`).join("; "));
  for (const how of ["unread", "waiting", "fetch"]) {
    assert.ok(r[how] && !r[how].next.hang, `${how}: the next request waited behind the stream`);
    assert.equal(content(r[how].next.value), content(r.warm), `${how}: the next request's answer`);
  }
  assert.equal(r.waiting.pending, "settled", "the read waiting when the stream was left never settled");
});

test("the worker's stopped-request set holds only requests still queued", async () => {
  const r = await inPage(page, async () => {
    const { Host } = await import("/pkg/host.js");
    const posted = [];
    const host = new Host((m) => posted.push(m));
    // Stops for requests that ended long ago (or never came): nothing to remember.
    for (let i = 0; i < 1000; i++) host.handle({ type: "stop", target: 1_000_000 + i });
    const unknown = host.stopped.size;
    // A queued request stopped before it runs ends with finish_reason "abort" and is forgotten.
    host.handle({ id: 7, type: "generate", request: { messages: [] } });
    host.handle({ type: "stop", target: 7 });
    const queued = host.stopped.size;
    await host.queue;
    return { unknown, queued, after: host.stopped.size, result: posted.find((m) => m.id === 7) };
  });
  assert.equal(r.unknown, 0, "stops of requests not queued were kept");
  assert.equal(r.queued, 1);
  assert.equal(r.after, 0);
  assert.equal(r.result?.type, "result", JSON.stringify(r.result));
  assert.equal(r.result.value.choices[0].finish_reason, "abort");
});

test("worker: false: a load's signal stops its downloads and frees what it built", { timeout: 5 * 60_000 }, async (t) => {
  // Every 1 MiB chunk of the weights after the second is served 400 ms late: the load is
  // still downloading when it is cancelled.
  const file = fs.readFileSync(path.join(repoRoot, "tests/fixtures/tiny_mistral3_tekken/model.gguf"));
  const chunks = Math.ceil(file.length / (1 << 20));
  let served = 0;
  server.intercept = (req, res) => {
    if (!req.url.endsWith("model.gguf") || !req.headers.range) return false;
    const [start, end] = req.headers.range.replace("bytes=", "").split("-").map(Number);
    if (end - start + 1 !== 1 << 20 || ++served <= 2) return false;
    setTimeout(() => {
      const last = Math.min(end, file.length - 1);
      res.writeHead(206, { "Content-Range": `bytes ${start}-${last}/${file.length}`, "Content-Length": last - start + 1 });
      res.end(file.subarray(start, last + 1));
    }, 400);
    return true;
  };
  const since = server.log.length;
  let r;
  try {
    await page.goto(`${server.url}/test/blank.html`); // a fresh realm: its GPU buffers are this test's
    r = await inPage(page, async (api, model) => {
      const ac = new AbortController();
      let abortedAt = null;
      const outcome = await api.createEngine({
        backend: "webgpu", model, worker: false, chunkBytes: 1 << 20, cacheName: null, signal: ac.signal,
        onProgress: (q) => {
          if (q.loadedBytes >= 2 << 20 && abortedAt === null) {
            abortedAt = Date.now();
            ac.abort();
          }
        },
      }).then(() => "loaded", (e) => e.name);
      const ms = Date.now() - abortedAt;
      // Time for a load that went on to download the rest (the chunks are 400 ms late).
      await new Promise((res) => setTimeout(res, 4000));
      const { Host } = await import("/pkg/host.js");
      const { gpuBuffers } = await new Host(() => {}).stats(); // this page's buffer counter
      return { outcome, ms, abortedAt, gpuBuffers };
    }, MODEL);
  } finally {
    server.intercept = null;
  }
  // The 1 MiB chunk requests (not the header reads): those made before the abort (the two read
  // and those then in flight; more when a loaded machine has later chunks in before the
  // progress that aborts), none after it. A load that went on would ask for the rest, one
  // chunk per 400 ms.
  const chunkRequests = server.log.slice(since).filter((e) => e.path.endsWith("model.gguf") && /^bytes=\d+-\d+$/.test(e.range ?? "")
    && e.range.replace("bytes=", "").split("-").reduce((a, b) => b - a + 1) === 1 << 20);
  const requested = chunkRequests.length;
  const after = chunkRequests.filter((e) => e.time > r.abortedAt + 200).length;
  t.diagnostic(`rejected ${r.ms} ms after the abort; ${requested} of the ${chunks} weight chunks requested, ${after} of them after the abort; GPU buffers then: ${JSON.stringify(r.gpuBuffers)}`);
  assert.equal(r.outcome, "DownloadError");
  assert.ok(r.ms < 2000, `rejected ${r.ms} ms after the abort`);
  assert.equal(after, 0, `${after} weight chunks requested more than 200 ms after the abort: the load went on`);
  assert.ok(requested < chunks, `all ${chunks} weight chunks requested: the load went on after the abort`);
  assert.ok(r.gpuBuffers.created > 0, "the load created no GPU buffer before it was cancelled");
  assert.equal(r.gpuBuffers.live, 0, `the cancelled load left GPU buffers: ${JSON.stringify(r.gpuBuffers)}`);
  assert.equal(r.gpuBuffers.bytes, 0);
});

test("worker: false: a load that fails half-way frees what it built", { timeout: 5 * 60_000 }, async (t) => {
  // The third 1 MiB chunk of the weights fails: the engine was built and holds GPU buffers.
  let served = 0;
  server.intercept = (req, res) => {
    if (!req.url.endsWith("model.gguf") || !req.headers.range) return false;
    const [start, end] = req.headers.range.replace("bytes=", "").split("-").map(Number);
    if (end - start + 1 !== 1 << 20 || ++served !== 3) return false;
    res.writeHead(503);
    res.end();
    return true;
  };
  let r;
  try {
    await page.goto(`${server.url}/test/blank.html`);
    r = await inPage(page, async (api, model) => {
      const outcome = await api.createEngine({ backend: "webgpu", model, worker: false, chunkBytes: 1 << 20, cacheName: null })
        .then(() => "loaded", (e) => e.name);
      const { Host } = await import("/pkg/host.js");
      return { outcome, gpuBuffers: (await new Host(() => {}).stats()).gpuBuffers };
    }, MODEL);
  } finally {
    server.intercept = null;
  }
  t.diagnostic(`${r.outcome}; GPU buffers then: ${JSON.stringify(r.gpuBuffers)}`);
  assert.equal(r.outcome, "DownloadError");
  assert.ok(r.gpuBuffers.created > 0, "the load created no GPU buffer before it failed");
  assert.deepEqual([r.gpuBuffers.live, r.gpuBuffers.bytes], [0, 0], "the failed load left GPU buffers");
});

test("the page logged no errors", () => {
  // Chromium logs the 503 that the half-way failure test injects on purpose; nothing else.
  browser.assertNoErrors({ allowConsoleErrors: [/^Failed to load resource: the server responded with a status of 503 /] });
});
