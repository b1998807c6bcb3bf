// The npm package in headless Chromium (WebGPU on SwiftShader), through its public API
// (`createEngine` in a module worker): a tiny Mistral 3 VLM fixture loads from the local
// server with progress events, its logits with an image match transformers' (the native
// tolerance), greedy text equals the native CLI's, a reload makes no weight request, an
// interrupted download resumes without refetching stored chunks, stop ends a stream at once,
// the model split into parts (`webvlm split`) loads to bit-identical logits.
//
// Needs `./build.sh wasm` (pkg/ and www/pkg/) and the native CLI (built here with cargo).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { startServer, repoRoot, DEFAULT_MOUNTS } from "./server.js";
import { inPage, launchBrowser, requireWasmPackage } from "./harness.js";

const TINY = "/fixtures/tiny_mistral3_tekken";
const MODEL = { text: `${TINY}/model.gguf`, mmproj: `${TINY}/mmproj.gguf` };
/** Relative L2 error allowed per logits position (as tests/model_vision.rs). */
const TOL_LOGITS = 1e-3;

let server, browser, page;
/** The tiny model cut into three parts by the native CLI, served at /split/. */
const splitDir = fs.mkdtempSync(path.join(os.tmpdir(), "webvlm-split-"));

before(async () => {
  requireWasmPackage();
  execFileSync("cargo", ["run", "--quiet", "--bin", "webvlm", "--", "split", "--model",
    path.join(repoRoot, "tests/fixtures/tiny_mistral3_tekken/model.gguf"), "--parts", "3", "--out", path.join(splitDir, "tiny")],
  { cwd: repoRoot });
  server = await startServer({ mounts: { ...DEFAULT_MOUNTS, "/split/": splitDir } });
  browser = await launchBrowser();
  page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
});

after(async () => {
  await browser?.close();
  await server?.close();
  fs.rmSync(splitDir, { recursive: true, force: true });
});

function weightRequests(since = 0) {
  return server.log.slice(since).filter((e) => e.path.endsWith(".gguf"));
}

test("the tiny VLM loads with progress, its logits match transformers, greedy text equals the native CLI", async (t) => {
  const loaded = await inPage(page, async (api, model, s) => {
    const progress = [];
    s.engine = await api.createEngine({
      backend: "webgpu", model, engine: { kvF16: false }, chunkBytes: 1 << 20, cacheName: "engine-test",
      onProgress: (p) => progress.push(p),
    });
    return { info: s.engine.info, progress };
  }, MODEL);
  t.diagnostic(`loaded: ${JSON.stringify(loaded.info)}`);
  const { info, progress } = loaded;
  assert.equal(info.vision, true);
  assert.ok(progress.length >= 5, `${progress.length} progress events`);
  const last = progress.at(-1);
  assert.equal(last.phase, "ready");
  assert.equal(last.loadedBytes, last.totalBytes);
  assert.ok(progress.every((p, i) => i === 0 || p.loadedBytes >= progress[i - 1].loadedBytes), "progress is monotonic");
  assert.ok(info.wasmMemoryBytes < 256 * 2 ** 20, `wasm heap ${info.wasmMemoryBytes} bytes`);

  // Logits of the fixture's image case, compared in the page with the .npy reference.
  const cmp = await inPage(page, async (api, dir, s) => {
    const cases = await (await fetch(`${dir}/cases.json`)).json();
    const c = cases.image_cases[0];
    const got = await s.engine.logits(c.tokens, c.images.map((f) => `${dir}/${f}`));
    const npy = new Uint8Array(await (await fetch(`${dir}/${c.logits}`)).arrayBuffer());
    const headerLen = npy[8] | (npy[9] << 8);
    const want = new Float32Array(npy.slice(10 + headerLen).buffer);
    const vocab = want.length / c.tokens.length;
    const rows = [];
    for (let r = 0; r < c.tokens.length; r++) {
      let num = 0, den = 0, ag = 0, aw = 0;
      for (let i = r * vocab; i < (r + 1) * vocab; i++) {
        num += (got[i] - want[i]) ** 2;
        den += want[i] ** 2;
        if (got[i] > got[r * vocab + ag]) ag = i - r * vocab;
        if (want[i] > want[r * vocab + aw]) aw = i - r * vocab;
      }
      rows.push({ rel: Math.sqrt(num / den), argmaxGot: ag, argmaxWant: aw });
    }
    return { n: got.length, expected: want.length, rows };
  }, TINY);
  assert.equal(cmp.n, cmp.expected, "logits length");
  for (const [i, r] of cmp.rows.entries()) {
    assert.ok(r.rel <= TOL_LOGITS, `position ${i}: rel L2 ${r.rel}`);
    assert.equal(r.argmaxGot, r.argmaxWant, `position ${i}: argmax`);
  }
  t.diagnostic(`browser logits vs transformers: worst rel L2 ${Math.max(...cmp.rows.map((r) => r.rel)).toExponential(2)}`);

  // Greedy text with an image, against `webvlm generate` on the native adapter.
  const prompt = "Describe the image.";
  const image = "img_84x56.png";
  const reply = await inPage(page, async (api, [dir, image, prompt], s) => {
    const r = await s.engine.chat.completions.create({
      messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: `${dir}/${image}` } }, { type: "text", text: prompt }] }],
      max_tokens: 6, temperature: 0,
    });
    return r;
  }, [TINY, image, prompt]);
  assert.equal(reply.object, "chat.completion");
  assert.ok(["stop", "length"].includes(reply.choices[0].finish_reason));
  const native = execFileSync("cargo", ["run", "--quiet", "--bin", "webvlm", "--", "generate", "--backend", "gpu",
    "--model", path.join(repoRoot, `tests/fixtures/tiny_mistral3_tekken/model.gguf`),
    "--mmproj", path.join(repoRoot, `tests/fixtures/tiny_mistral3_tekken/mmproj.gguf`),
    "--image", path.join(repoRoot, `tests/fixtures/tiny_mistral3_tekken/${image}`),
    "--prompt", prompt, "--chat", "--max-tokens", "6", "--ctx", "4096"], { cwd: repoRoot, encoding: "utf8" });
  t.diagnostic(`browser: ${JSON.stringify(reply.choices[0].message.content)} native: ${JSON.stringify(native)}`);
  assert.equal(reply.choices[0].message.content, native.replace(/\n$/, ""));
  browser.assertNoErrors();
});

test("split GGUF parts, given by the first part's URL, load to the single file's logits", async () => {
  const since = server.log.length;
  const same = await inPage(page, async (api, [dir, mmproj], s) => {
    const phases = new Set();
    const split = await api.createEngine({
      backend: "webgpu", model: { text: "/split/tiny-00001-of-00003.gguf", mmproj }, engine: { kvF16: false }, chunkBytes: 1 << 20,
      cacheName: "split-test", onProgress: (p) => phases.add(p.phase),
    });
    const c = (await (await fetch(`${dir}/cases.json`)).json()).image_cases[0];
    const images = c.images.map((f) => `${dir}/${f}`);
    const [a, b] = [await split.logits(c.tokens, images), await s.engine.logits(c.tokens, images)];
    await split.unload();
    return { phases: [...phases], n: a.length, identical: a.length === b.length && a.every((v, i) => v === b[i]) };
  }, [TINY, MODEL.mmproj]);
  assert.ok(same.n > 0 && same.identical, `split logits differ from the single file's (${same.n} values)`);
  assert.equal(same.phases[0], "headers", JSON.stringify(same.phases));
  assert.equal(same.phases.at(-1), "ready", JSON.stringify(same.phases));
  const parts = new Set(weightRequests(since).map((e) => e.path).filter((p) => p.startsWith("/split/")));
  assert.deepEqual([...parts].sort(), [1, 2, 3].map((i) => `/split/tiny-0000${i}-of-00003.gguf`));
});

test("a reload loads from Cache Storage with no weight request", async () => {
  await page.reload();
  const since = server.log.length;
  const info = await inPage(page, async (api, model, s) => {
    s.engine = await api.createEngine({ backend: "webgpu", model, chunkBytes: 1 << 20, cacheName: "engine-test" });
    return s.engine.info;
  }, MODEL);
  assert.deepEqual(weightRequests(since), [], "weight requests after the reload");
  assert.equal(info.networkBytes, 0);
  const cached = await inPage(page, (api) => api.cacheContents("engine-test"));
  assert.equal(cached.entries.length, 2);
  assert.ok(cached.entries.every((e) => e.complete && e.bytes === e.size), JSON.stringify(cached.entries));
});

test("an interrupted download resumes without refetching stored chunks", async () => {
  const cut = 5 << 20; // fail the chunk starting at 5 MiB, once
  let failed = false;
  server.intercept = (req, res) => {
    if (!failed && req.url.endsWith("model.gguf") && req.headers.range === `bytes=${cut}-${cut + (1 << 20) - 1}`) {
      failed = true;
      res.writeHead(503);
      res.end();
      return true;
    }
    return false;
  };
  const first = await inPage(page, async (api, model) => {
    try {
      await api.createEngine({ backend: "webgpu", model, chunkBytes: 1 << 20, cacheName: "resume-test" });
      return "loaded";
    } catch (e) {
      return e.name;
    }
  }, MODEL);
  server.intercept = null;
  assert.equal(first, "DownloadError");
  const since = server.log.length;
  await inPage(page, async (api, model, s) => {
    s.engine = await api.createEngine({ backend: "webgpu", model, chunkBytes: 1 << 20, cacheName: "resume-test" });
  }, MODEL);
  const again = weightRequests(since).filter((e) => e.path.endsWith("model.gguf") && e.range);
  const starts = again.map((e) => Number(e.range.replace("bytes=", "").split("-")[0]));
  assert.ok(starts.length > 0 && starts.every((s) => s === 0 || s >= cut - 2 * (1 << 20)), `refetched ${JSON.stringify(starts)}`);
  assert.ok(starts.includes(cut), "the failed chunk is fetched again");
  assert.ok(!starts.includes(1 << 20), "a chunk stored before the failure is not fetched again");
});

test("stop ends a streamed generation at once", async () => {
  const r = await inPage(page, async (api, [dir], s) => {
    const stream = await s.engine.chat.completions.create({
      messages: [{ role: "user", content: "Tell me a long story." }], max_tokens: 200, stream: true,
    });
    let deltas = 0, afterStop = 0, finish = null, stopped = false;
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta?.content) {
        deltas++;
        if (stopped) afterStop++;
      }
      if (!stopped && deltas >= 2) {
        s.engine.stop();
        stopped = true;
      }
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    return { deltas, afterStop, finish };
  }, [TINY]);
  assert.equal(r.finish, "abort");
  assert.ok(r.afterStop <= 1, `${r.afterStop} deltas after stop`);
});

test("a published SHA-256 is checked: a mismatch is a DownloadError and drops the cached chunks", async () => {
  const { createHash } = await import("node:crypto");
  const fs = await import("node:fs");
  const file = path.join(repoRoot, "tests/fixtures/tiny_mistral3_tekken/model.gguf");
  const sha256 = createHash("sha256").update(fs.readFileSync(file)).digest("hex");
  // A server whose files all claim a wrong hash, as Hugging Face publishes X-Linked-ETag.
  const lying = await startServer({ headers: { "X-Linked-ETag": `"${"0".repeat(64)}"` } });
  try {
    const r = await inPage(page, async (api, [base, sha256]) => {
      const url = `${base}/fixtures/tiny_mistral3_tekken/model.gguf`;
      const out = {};
      try {
        await api.createEngine({ backend: "webgpu", model: { text: url }, cacheName: "sha-test", chunkBytes: 4 << 20 });
        out.wrong = "loaded";
      } catch (e) {
        out.wrong = e.name;
        out.message = e.message;
      }
      out.cachedAfterWrong = (await api.cacheContents("sha-test")).entries.length;
      const e = await api.createEngine({ backend: "webgpu", model: { text: { url, sha256 } }, cacheName: "sha-test", chunkBytes: 4 << 20 });
      out.right = e.info.layers;
      await e.unload();
      out.cachedAfterRight = (await api.cacheContents("sha-test")).entries.map((c) => c.complete);
      return out;
    }, [lying.url, sha256]);
    assert.equal(r.wrong, "DownloadError", r.message);
    assert.match(r.message, /sha256 mismatch/);
    assert.equal(r.cachedAfterWrong, 0, "the corrupt download's chunks were deleted");
    assert.equal(r.right, 2);
    assert.deepEqual(r.cachedAfterRight, [true]);
  } finally {
    await lying.close();
  }
});

test("a load can be cancelled with an AbortSignal; stored chunks serve the next attempt", async () => {
  let served = 0;
  server.intercept = (req, res) => {
    // Stall every 1 MiB chunk after the fourth, so the load is still running when it is
    // cancelled (the header reads of the memory plan and the size probe pass).
    if (!req.url.endsWith("model.gguf") || !req.headers.range) return false;
    const [start, end] = req.headers.range.replace("bytes=", "").split("-").map(Number);
    if (end - start + 1 !== 1 << 20) return false;
    if (++served <= 4) return false;
    setTimeout(() => { res.writeHead(503); res.end(); }, 10_000);
    return true;
  };
  const r = await inPage(page, async (api, model) => {
    const ac = new AbortController();
    const started = performance.now();
    const p = api.createEngine({ backend: "webgpu", model, chunkBytes: 1 << 20, cacheName: "cancel-test", signal: ac.signal,
      onProgress: (q) => { if (q.loadedBytes >= 2 << 20) ac.abort(); } });
    try {
      await p;
      return { outcome: "loaded" };
    } catch (e) {
      return { outcome: e.name, ms: performance.now() - started, cached: (await api.cacheContents("cancel-test")).bytes };
    }
  }, MODEL);
  server.intercept = null;
  assert.equal(r.outcome, "DownloadError");
  assert.ok(r.ms < 8000, `cancelled after ${r.ms} ms`);
  assert.ok(r.cached >= 2 << 20, `${r.cached} bytes stay cached`);
});
