// The CPU backend in headless Chromium, through the npm package: `backend: "auto"` takes it
// where WebGPU's only adapter is SwiftShader (a software one) or where the page has no WebGPU,
// and its greedy replies equal the native CLI's CPU backend (`webvlm generate --backend cpu
// --threads 1`) on the tiny Mistral 3 VLM with an image, the tiny Qwen3.5 VLM and the real
// SmolLM2-135M, in the three wasm builds (relaxed SIMD, plain SIMD128, and the threaded one on
// a cross-origin-isolated page, its pool's workers being Web Workers).
//
// Needs `./build.sh wasm` (pkg/ and www/pkg/), the native CLI (built here with cargo) and
// SmolLM2 (scripts/fetch_smollm2.sh).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { startServer, repoRoot, cacheDir, DEFAULT_MOUNTS, ISOLATION_HEADERS } from "./server.js";
import { inPage, launchBrowser, requireWasmPackage } from "./harness.js";

const MIN = 60_000;
const SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf";
const models = path.join(cacheDir, "models");

let server, isolatedServer, browser, page, isolatedPage;

before(async () => {
  requireWasmPackage();
  assert.ok(fs.existsSync(path.join(models, SMOLLM2)), `${SMOLLM2} missing: run scripts/fetch_smollm2.sh`);
  const mounts = { ...DEFAULT_MOUNTS, "/models/": models };
  server = await startServer({ mounts });
  isolatedServer = await startServer({ mounts, headers: ISOLATION_HEADERS });
  browser = await launchBrowser();
  page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
  isolatedPage = await browser.newPage();
  await isolatedPage.goto(`${isolatedServer.url}/test/blank.html`);
});

after(async () => {
  await browser?.close();
  await server?.close();
  await isolatedServer?.close();
});

const nativeReplies = new Map();
/** `webvlm generate` on the native CPU backend, one thread, in `mode`, with `args`; its text
 * (run once per arguments). */
function nativeCpu(args, mode = "fast") {
  const key = JSON.stringify([args, mode]);
  if (!nativeReplies.has(key)) {
    const out = execFileSync("cargo", ["run", "--quiet", "--bin", "webvlm", "--", "generate", "--backend", "cpu", "--threads", "1",
      "--cpu-mode", mode, "--chat", "--ctx", "4096", ...args], { cwd: repoRoot, encoding: "utf8" });
    nativeReplies.set(key, out.replace(/\n$/, ""));
  }
  return nativeReplies.get(key);
}

/** Loads `model` in `on` (the plain page by default) with `options`, runs `request` greedily,
 * unloads; the reply, the engine's info and its stats after the reply. */
function runInPage(model, options, request, on = page) {
  return inPage(on, async (api, [model, options, request]) => {
    const engine = await api.createEngine({ model, cacheName: null, ...options });
    try {
      const reply = await engine.chat.completions.create({ temperature: 0, ...request });
      return { info: engine.info, content: reply.choices[0].message.content, usage: reply.usage, stats: await engine.stats() };
    } finally {
      await engine.unload();
    }
  }, [model, options, request]);
}

const imageRequest = (url, prompt, more = {}) => ({
  messages: [{ role: "user", content: [{ type: "image_url", image_url: { url } }, { type: "text", text: prompt }] }], ...more,
});

/** The three models, each with its page request and the native CLI's arguments for the same. */
const mistral = (() => {
  const dir = "tests/fixtures/tiny_mistral3_tekken";
  return {
    model: { text: `/fixtures/tiny_mistral3_tekken/model.gguf`, mmproj: `/fixtures/tiny_mistral3_tekken/mmproj.gguf` },
    request: imageRequest("/fixtures/tiny_mistral3_tekken/img_84x56.png", "Describe the image.", { max_tokens: 6 }),
    native: () => nativeCpu(["--model", path.join(dir, "model.gguf"), "--mmproj", path.join(dir, "mmproj.gguf"),
      "--image", path.join(dir, "img_84x56.png"), "--prompt", "Describe the image.", "--max-tokens", "6"]),
  };
})();

const qwen35 = (() => {
  const dir = "tests/fixtures/tiny_qwen35_a";
  const area = { min: 1024, max: 65536 }; // the fixture processor's bounds (cases.json)
  return {
    model: { text: "/fixtures/tiny_qwen35_a/model.gguf", mmproj: "/fixtures/tiny_qwen35_a/mmproj.gguf" },
    options: { engine: { imageMinArea: area.min, imageMaxArea: area.max } },
    request: imageRequest("/fixtures/tiny_qwen35_a/img_100x44.png", "Describe this image.",
      { max_tokens: 8, chat_template_kwargs: { enable_thinking: false } }),
    native: () => nativeCpu(["--model", path.join(dir, "model.gguf"), "--mmproj", path.join(dir, "mmproj.gguf"),
      "--image", path.join(dir, "img_100x44.png"), "--image-min-area", `${area.min}`, "--image-max-area", `${area.max}`,
      "--prompt", "Describe this image.", "--no-think", "--max-tokens", "8"]),
  };
})();

// In the exact mode: the fast one's 8-bit activations turn the last-bit differences of the
// other ops between SIMD levels (natively too: AVX2 and scalar) into other greedy replies on a
// real model after a few tokens; the tiny fixtures have no such near ties.
const smollm2 = (() => {
  const prompt = "What is the capital of France?";
  return {
    model: { text: `/models/${SMOLLM2}` },
    options: { engine: { cpuMode: "exact" } },
    request: { messages: [{ role: "user", content: prompt }], max_tokens: 16 },
    native: () => nativeCpu(["--model", path.join(models, SMOLLM2), "--prompt", prompt, "--max-tokens", "16"], "exact"),
  };
})();

test("auto takes the CPU backend on SwiftShader; the tiny Mistral 3 VLM answers about an image as the native CPU backend does, in both single-thread wasm builds", { timeout: 10 * MIN }, async (t) => {
  const { model, request } = mistral;
  const relaxed = await runInPage(model, {}, request);
  t.diagnostic(`auto: ${JSON.stringify(relaxed.info.backend)}; adapter ${relaxed.info.adapter}`);
  assert.equal(relaxed.info.backend.name, "cpu");
  assert.match(relaxed.info.backend.reason, /software/);
  assert.equal(relaxed.info.backend.threads, 1);
  assert.equal(relaxed.info.backend.build, "relaxed", "Chromium has relaxed SIMD: the relaxed build loads");
  const plain = await runInPage(model, { backend: "cpu", wasmBuild: "simd128" }, request);
  // Another worker, so another realm: the SIMD128 build.
  assert.equal(plain.info.backend.build, "simd128");
  const native = mistral.native();
  t.diagnostic(`relaxed: ${JSON.stringify(relaxed.content)} simd128: ${JSON.stringify(plain.content)} native: ${JSON.stringify(native)}`);
  assert.ok(relaxed.usage.completion_tokens > 0);
  assert.equal(relaxed.content, native);
  assert.equal(plain.content, native);
  browser.assertNoErrors();
});

test("the tiny Qwen3.5 VLM (Gated DeltaNet) answers about an image on the CPU backend as natively", { timeout: 10 * MIN }, async (t) => {
  const r = await runInPage(qwen35.model, { backend: "cpu", ...qwen35.options }, qwen35.request);
  const native = qwen35.native();
  t.diagnostic(`browser: ${JSON.stringify(r.content)} native: ${JSON.stringify(native)}; ${JSON.stringify(r.info.backend)}`);
  assert.equal(r.info.backend.name, "cpu");
  assert.ok(r.usage.prompt_tokens > 30, `${r.usage.prompt_tokens} prompt tokens (the image's included)`);
  assert.equal(r.content, native);
  browser.assertNoErrors();
});

test("SmolLM2-135M on the CPU backend (exact mode) answers as natively, where the page has no WebGPU at all", { timeout: 10 * MIN }, async (t) => {
  const bare = await browser.context.newPage();
  await bare.addInitScript(() => { delete Navigator.prototype.gpu; });
  await bare.goto(`${server.url}/test/blank.html`);
  // On the page's thread (worker: false): its navigator is the one without WebGPU.
  const r = await runInPage(smollm2.model, { ...smollm2.options, worker: false }, smollm2.request, bare);
  r.gpu = await bare.evaluate(() => "gpu" in navigator);
  await bare.close();
  const native = smollm2.native();
  t.diagnostic(`browser: ${JSON.stringify(r.content)} native: ${JSON.stringify(native)}; ${JSON.stringify(r.info.backend)}; usage ${JSON.stringify(r.usage)}`);
  assert.equal(r.gpu, false, "the init script did not hide WebGPU");
  assert.equal(r.info.backend.name, "cpu");
  assert.equal(r.info.backend.mode, "exact");
  assert.match(r.info.backend.reason, /no WebGPU/);
  assert.match(r.content, /Paris/);
  assert.equal(r.content, native);
  browser.assertNoErrors();
});

test("the threaded build on a cross-origin-isolated page: 2 threads answer as the native CPU backend on the three models, its Web Workers at work", { timeout: 10 * MIN }, async (t) => {
  assert.equal(await isolatedPage.evaluate(() => crossOriginIsolated), true, "the isolated server's page is not cross-origin isolated");
  for (const [name, c] of Object.entries({ mistral, qwen35, smollm2 })) {
    const r = await runInPage(c.model, { backend: "cpu", threads: 2, ...c.options }, c.request, isolatedPage);
    const native = c.native();
    t.diagnostic(`${name}: browser ${JSON.stringify(r.content)} native ${JSON.stringify(native)}; ${JSON.stringify(r.info.backend)}; pool ${JSON.stringify(r.stats.cpuPool)}`);
    assert.equal(r.info.backend.build, "relaxed-threads", "Chromium has relaxed SIMD: the threaded relaxed build loads");
    assert.equal(r.info.backend.threads, 2);
    assert.equal(r.stats.cpuPool.workersStarted, 1, "the pool's Web Worker did not start");
    assert.ok(r.stats.cpuPool.workerJoins > 0, "the pool's Web Worker never ran a task");
    assert.equal(r.content, native);
  }
  browser.assertNoErrors();
});

test("4 create calls made together on SmolLM2 decode together on the CPU backend: the replies of the same calls one after another, sooner (times printed)", { timeout: 10 * MIN }, async (t) => {
  const requests = ["What is the capital of France?", "Name three colors.", "Write a short poem about rain.", "Why is the sky blue?"]
    .map((q, i) => ({ messages: [{ role: "user", content: q }], max_tokens: 24, temperature: i === 2 ? 0.8 : 0, seed: i }));
  const r = await inPage(page, async (api, [model, requests]) => {
    const engine = await api.createEngine({ model, cacheName: null, backend: "cpu" });
    try {
      const reply = (x) => [x.choices[0].message.content, x.usage.completion_tokens];
      await engine.chat.completions.create({ ...requests[0], max_tokens: 2 }); // warm-up
      let t0 = performance.now();
      const alone = [];
      for (const q of requests) alone.push(reply(await engine.chat.completions.create(q)));
      const aloneMs = performance.now() - t0;
      t0 = performance.now();
      const together = (await Promise.all(requests.map((q) => engine.chat.completions.create(q)))).map(reply);
      return { alone, together, aloneMs, togetherMs: performance.now() - t0, info: engine.info, stats: await engine.stats() };
    } finally {
      await engine.unload();
    }
  }, [smollm2.model, requests]);
  const tokens = r.alone.reduce((n, [, k]) => n + k, 0);
  t.diagnostic(`SmolLM2 on the CPU backend (${r.info.backend.build}, ${r.info.backend.threads} thread, ${r.info.backend.mode}): 4 requests, ${tokens} tokens: `
    + `one after another ${r.aloneMs.toFixed(0)} ms (${(tokens / r.aloneMs * 1000).toFixed(1)} tokens/s), together ${r.togetherMs.toFixed(0)} ms `
    + `(${(tokens / r.togetherMs * 1000).toFixed(1)} tokens/s, ${(r.aloneMs / r.togetherMs).toFixed(2)}x); parallel ${r.info.parallel}`);
  assert.deepEqual(r.together, r.alone, "requests together gave other replies than one after another");
  assert.equal(r.stats.concurrent.widest, 4, "the 4 requests ran as one group");
  browser.assertNoErrors();
});

test("a create call sent while others decode on the CPU backend joins them, and each answers as alone", { timeout: 10 * MIN }, async (t) => {
  // The first two cannot end early (<|im_end|> and <|endoftext|> banned): the late one, 12
  // tokens, ends before them only if it decodes beside them.
  const long = (q) => ({ messages: [{ role: "user", content: q }], max_tokens: 48, temperature: 0, logit_bias: { 0: -100, 2: -100 } });
  const first = [long("Write a short poem about rain."), long("Tell a story about a cat.")];
  const late = { messages: [{ role: "user", content: "Why is the sky blue?" }], max_tokens: 12, temperature: 0 };
  const r = await inPage(page, async (api, [model, first, late]) => {
    const engine = await api.createEngine({ model, cacheName: null, backend: "cpu" });
    try {
      const content = (x) => x.choices[0].message.content;
      const alone = [];
      for (const q of [...first, late]) alone.push(content(await engine.chat.completions.create(q)));
      const t0 = performance.now();
      const streams = await Promise.all(first.map((q) => engine.chat.completions.create({ ...q, stream: true })));
      let lateCall;
      const read = async (stream) => {
        let text = "";
        for await (const chunk of stream) {
          text += chunk.choices[0]?.delta?.content ?? "";
          // Sent once the first two decode: after the first chunk of the first.
          lateCall ??= engine.chat.completions.create(late).then((x) => ({ text: content(x), ms: performance.now() - t0 }));
        }
        return { text, ms: performance.now() - t0 };
      };
      const together = await Promise.all(streams.map(read));
      return { alone, together, late: await lateCall, stats: (await engine.stats()).concurrent };
    } finally {
      await engine.unload();
    }
  }, [smollm2.model, first, late]);
  t.diagnostic(`the first two ended after ${r.together.map((x) => x.ms.toFixed(0)).join(" and ")} ms, the late one after ${r.late.ms.toFixed(0)} ms; `
    + `concurrent ${JSON.stringify(r.stats)}`);
  assert.deepEqual([...r.together.map((x) => x.text), r.late.text], r.alone, "the requests' replies differ from theirs alone");
  assert.equal(r.stats.widest, 3, "the late request ran in the first two's group");
  assert.ok(r.late.ms < Math.min(...r.together.map((x) => x.ms)), "the late request ended before the first two: it decoded beside them");
  browser.assertNoErrors();
});

test("a create call sent while one decodes alone on the CPU backend joins it, each answers as alone, and the next turn reuses the kept slot", { timeout: 10 * MIN }, async (t) => {
  // The lone request cannot end early (<|im_end|> and <|endoftext|> banned): the late one, 12
  // tokens, ends before it only if it decodes beside it.
  const ask = [{ role: "user", content: "Write a short poem about rain." }];
  const first = { messages: ask, max_tokens: 48, temperature: 0, logit_bias: { 0: -100, 2: -100 } };
  const late = { messages: [{ role: "user", content: "Why is the sky blue?" }], max_tokens: 12, temperature: 0 };
  const r = await inPage(page, async (api, [model, first, late]) => {
    const engine = await api.createEngine({ model, cacheName: null, backend: "cpu" });
    try {
      const content = (x) => x.choices[0].message.content;
      const alone = [];
      let firstPrompt;
      for (const q of [first, late]) {
        const reply = await engine.chat.completions.create(q);
        firstPrompt ??= reply.usage.prompt_tokens;
        alone.push(content(reply));
      }
      const before = (await engine.stats()).concurrent;
      const t0 = performance.now();
      let text = "";
      let lateCall;
      for await (const chunk of await engine.chat.completions.create({ ...first, stream: true })) {
        text += chunk.choices[0]?.delta?.content ?? "";
        // Sent once the lone request decodes: after its first chunk.
        lateCall ??= engine.chat.completions.create(late).then((x) => ({ text: content(x), ms: performance.now() - t0 }));
      }
      const lone = { text, ms: performance.now() - t0 };
      const after = (await engine.stats()).concurrent;
      const next = { ...first, messages: [...first.messages, { role: "assistant", content: text }, { role: "user", content: "And then?" }], max_tokens: 4 };
      const turn = await engine.chat.completions.create(next);
      return { alone, lone, late: await lateCall, before, after, firstPrompt, cached: turn.usage.prompt_tokens_details?.cached_tokens, prompt: turn.usage.prompt_tokens };
    } finally {
      await engine.unload();
    }
  }, [smollm2.model, first, late]);
  t.diagnostic(`the lone request ended after ${r.lone.ms.toFixed(0)} ms, the late one after ${r.late.ms.toFixed(0)} ms; `
    + `concurrent ${JSON.stringify(r.before)} -> ${JSON.stringify(r.after)}; the next turn: ${r.cached} of ${r.prompt} prompt tokens cached`);
  assert.deepEqual([r.lone.text, r.late.text], r.alone, "the requests' replies differ from theirs alone");
  assert.equal(r.after.widest, 2, "the late request ran in the lone one's group");
  assert.ok(r.late.ms < r.lone.ms, "the late request ended before the lone one: it decoded beside it");
  assert.ok(r.cached >= r.firstPrompt, `the next turn did not reuse the first turn's slot (${r.firstPrompt} tokens)`);
  browser.assertNoErrors();
});

test("Responses requests made together with a chat request decode with it on the CPU backend, each as alone; a grouped one is stored", { timeout: 10 * MIN }, async (t) => {
  const calls = [
    ["respond", { input: "Tell me a story about a cat.", max_output_tokens: 16, temperature: 0 }],
    ["respond", { instructions: "Be brief.", input: "Hello there", max_output_tokens: 8, temperature: 0.8, seed: 5, stream: true }],
    ["chat", { messages: [{ role: "user", content: "Name three colors." }], max_tokens: 12, temperature: 0 }],
  ];
  const r = await inPage(page, async (api, [model, calls]) => {
    const engine = await api.createEngine({ model, cacheName: null, backend: "cpu" });
    const textOf = (response) => response.output.filter((i) => i.type === "message").flatMap((i) => i.content).map((p) => p.text).join("");
    // A call's reply: the chat message, or the response's text (from its events when it streams).
    const answer = async ([kind, request]) => {
      if (kind === "chat") return { text: (await engine.chat.completions.create(request)).choices[0].message.content };
      const out = await engine.responses.create(request);
      if (!request.stream) return { text: textOf(out), id: out.id };
      let deltas = "", last;
      for await (const event of out) {
        if (event.type === "response.output_text.delta") deltas += event.delta;
        last = event;
      }
      return { text: textOf(last.response), deltas, type: last.type };
    };
    try {
      const alone = [];
      for (const call of calls) alone.push(await answer(call));
      const together = await Promise.all(calls.map(answer));
      const stored = await engine.responses.retrieve(together[0].id);
      return { alone, together, stored: stored && textOf(stored), stats: (await engine.stats()).concurrent };
    } finally {
      await engine.unload();
    }
  }, [smollm2.model, calls]);
  t.diagnostic(`together: ${JSON.stringify(r.together.map((x) => x.text))}; concurrent ${JSON.stringify(r.stats)}`);
  const texts = (list) => list.map((x) => x.text);
  assert.deepEqual(texts(r.together), texts(r.alone), "the replies made together differ from theirs alone");
  assert.equal(r.together[1].deltas, r.together[1].text, "the streamed response's deltas make its text");
  assert.equal(r.together[1].type, r.alone[1].type, "the stream's last event"); // incomplete: max_output_tokens
  assert.equal(r.stats.widest, 3, "the three ran as one group");
  assert.equal(r.stored, r.together[0].text, "the grouped response was stored");
  browser.assertNoErrors();
});

test("backend and threads are checked before anything loads; more than one thread needs cross-origin isolation", async () => {
  const fails = (on) => inPage(on, async (api) => {
    const fail = (o) => api.createEngine({ model: { text: "/none.gguf" }, cacheName: null, ...o }).then(() => null, (e) => `${e.name}: ${e.message}`);
    return {
      backend: await fail({ backend: "gpu" }),
      threads: await fail({ backend: "cpu", threads: 0 }),
      twoThreads: await fail({ backend: "cpu", threads: 2 }),
      onPageThread: await fail({ backend: "cpu", threads: 2, worker: false }),
    };
  });
  const r = await fails(page);
  assert.match(r.backend, /^BadRequestError: backend must be one of "auto", "webgpu", "cpu"/);
  assert.match(r.threads, /^BadRequestError: threads must be a positive integer/);
  assert.match(r.twoThreads, /^BadRequestError: threads: 2 needs the threaded wasm build, but the page is not cross-origin isolated/);
  const isolated = await fails(isolatedPage);
  assert.match(isolated.onPageThread, /^BadRequestError: threads: 2 needs the threaded wasm build, but the engine runs on the page's thread/);
});
