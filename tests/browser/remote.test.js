// The remote engine in headless Chromium: `createEngine({remote})` against a small
// OpenAI-compatible server (openai-mock.js) on another origin (CORS, an API key). A plain and
// a streamed answer with usage; the official `openai` package over the remote engine's own
// `fetch`; a stream aborted by its signal, left by `break` or ended by `engine.stop()` closes
// the HTTP connection (the server sees it close before its endless answer ends) and ends with
// finish_reason "abort", with no chunk after the abort even when many came in one read; a batch gives the in-page engine's result lines; every server error is
// its named error with `status` (and `param` / `code`). `fallback: "remote"` takes the server
// when the page has no WebGPU (an init script deletes `navigator.gpu`, or makes
// `requestAdapter` find none) and when the model does
// not fit `gpuMemory` (AdapterTooSmallError from the headers), and loads the tiny VLM in the
// page when it fits.
//
// Needs `./build.sh wasm` (www/pkg/) and `npm ci` here (the openai package).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, DEFAULT_MOUNTS } from "./server.js";
import { inPage, launchBrowser, requireWasmPackage } from "./harness.js";
import { REPLY_PREFIX, startMockOpenAI } from "./openai-mock.js";

const TINY = "/fixtures/tiny_mistral3_tekken";
const MODEL = { text: `${TINY}/model.gguf`, mmproj: `${TINY}/mmproj.gguf` };
const KEY = "sk-test-123";
const MIN = 60_000;
const user = (content) => [{ role: "user", content }];

let server, mock, noCors, browser, page;

before(async () => {
  requireWasmPackage();
  server = await startServer({ mounts: { ...DEFAULT_MOUNTS, "/openai/": "tests/browser/node_modules/openai" } });
  mock = await startMockOpenAI({ apiKey: KEY, models: ["mock-vlm", "mock-other"] });
  noCors = await startMockOpenAI({ cors: false });
  browser = await launchBrowser();
  page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
  await inPage(page, async (api, [baseURL, key], s) => {
    s.remote = { baseURL, apiKey: key };
    s.engine = await api.createEngine({ remote: s.remote });
    s.text = (chunks) => chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
    s.describe = (e) => ({
      name: e?.name, message: String(e?.message ?? e), status: e?.status, param: e?.param, code: e?.code,
      named: typeof api[e?.name] === "function" && e instanceof api[e.name], webvlm: e instanceof api.WebvlmError,
    });
    s.settle = (p) => p.then((value) => ({ value }), (e) => ({ error: s.describe(e) }));
  }, [mock.url, KEY]);
});

after(async () => {
  await browser?.close();
  await server?.close();
  await mock?.close();
  await noCors?.close();
});

test("a remote engine answers plain and streamed requests from a server on another origin, with the API key; the openai SDK works over its fetch", { timeout: 5 * MIN }, async (t) => {
  const image = { type: "image_url", image_url: { url: "data:image/png;base64,iVBORw0KGgo=" } };
  const r = await inPage(page, async (api, [image, origin], s) => {
    const messages = [{ role: "user", content: [image, { type: "text", text: "what is this" }] }];
    const plain = await s.engine.chat.completions.create({ messages, max_tokens: 8 });
    const chunks = [];
    for await (const c of await s.engine.chat.completions.create({ messages, stream: true, stream_options: { include_usage: true } })) chunks.push(c);
    const { default: OpenAI } = await import("/openai/index.mjs");
    const client = new OpenAI({ baseURL: "http://webvlm.local/v1", apiKey: "unused", fetch: s.engine.fetch, dangerouslyAllowBrowser: true, maxRetries: 0 });
    let sdkText = "";
    for await (const c of await client.chat.completions.create({ model: "mock-other", messages, stream: true })) sdkText += c.choices[0]?.delta?.content ?? "";
    let rateLimited;
    try {
      await client.chat.completions.create({ model: "mock-vlm", messages: [{ role: "user", content: "[status 429]" }] });
    } catch (e) {
      rateLimited = { cls: e.constructor.name, isRateLimit: e instanceof OpenAI.RateLimitError, status: e.status };
    }
    return { info: s.engine.info, plain, chunks, streamed: s.text(chunks), sdkText, rateLimited, origin: location.origin !== origin };
  }, [image, new URL(mock.url).origin]);
  t.diagnostic(`info ${JSON.stringify(r.info)}; plain ${JSON.stringify(r.plain.choices[0].message.content)}; streamed ${JSON.stringify(r.streamed)}; SDK ${JSON.stringify(r.sdkText)}`);
  assert.ok(r.origin, "the mock must be cross-origin");
  assert.deepEqual(r.info, {
    remote: true, baseURL: mock.url, model: "mock-vlm", name: "mock-vlm", models: ["mock-vlm", "mock-other"],
    ownedBy: "mock", maxContext: 8192, vision: null, fallback: null,
  });
  const want = `${REPLY_PREFIX} what is this`;
  assert.equal(r.plain.choices[0].message.content, want);
  assert.equal(r.streamed, want);
  assert.equal(r.chunks[0].choices[0].delta.role, "assistant");
  assert.deepEqual(r.chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean), ["stop"]);
  assert.equal(r.chunks.at(-1).usage?.completion_tokens, want.split(" ").length);
  assert.equal(r.sdkText, want);
  assert.deepEqual(r.rateLimited, { cls: "RateLimitError", isRateLimit: true, status: 429 });
  const chats = mock.chats();
  assert.ok(mock.log.every((e) => e.method === "OPTIONS" || e.auth === `Bearer ${KEY}`), "a request without the key");
  assert.deepEqual(chats.slice(0, 3).map((e) => [e.body.model, !!e.body.stream]), [["mock-vlm", false], ["mock-vlm", true], ["mock-other", true]]);
  assert.deepEqual(chats[0].body, { messages: user([image, { type: "text", text: "what is this" }]), max_tokens: 8, model: "mock-vlm" }, "the request reached the server changed");
});

test("aborting a remote stream (its signal, leaving the loop, engine.stop()) closes the connection: the server sees it close; chunks already received are not given after the abort; an aborted plain request rejects with AbortError", { timeout: 5 * MIN }, async (t) => {
  const since = mock.log.length;
  const r = await inPage(page, async (api, _, s) => {
    const out = {};
    // burst: the chunks come 10 to a network read; those after the abort are not given.
    for (const how of ["signal", "break", "stop", "burst"]) {
      const ac = new AbortController();
      const content = how === "burst" ? "[endless] [burst] burst" : `[endless] ${how}`;
      const stream = await s.engine.chat.completions.create({ messages: [{ role: "user", content }], stream: true, signal: ac.signal });
      const chunks = [];
      for await (const c of stream) {
        chunks.push(c);
        if (chunks.length === 3) {
          if (how === "signal" || how === "burst") ac.abort();
          if (how === "stop") s.engine.stop();
          if (how === "break") break;
        }
      }
      out[how] = { n: chunks.length, finish: chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean) };
    }
    const ac = new AbortController();
    const held = s.settle(s.engine.chat.completions.create({ messages: [{ role: "user", content: "[hold]" }], signal: ac.signal }));
    ac.abort();
    out.plain = await held;
    out.preAborted = await s.settle(s.engine.chat.completions.create({ messages: [{ role: "user", content: "hi" }], signal: AbortSignal.abort() }));
    return out;
  });
  t.diagnostic(JSON.stringify(r));
  for (const how of ["signal", "stop", "burst"]) {
    assert.deepEqual(r[how].finish, ["abort"], `${how}: the stream did not end with finish_reason abort`);
    assert.equal(r[how].n, 4, `${how}: chunks after the abort`);
  }
  assert.deepEqual(r.break, { n: 3, finish: [] });
  assert.equal(r.plain.error?.name, "AbortError");
  assert.equal(r.preAborted.error?.name, "AbortError");
  // The server's side: each endless answer ended because the client closed the connection.
  const endless = mock.log.slice(since).filter((e) => e.body?.messages?.[0]?.content?.startsWith("[endless]"));
  assert.equal(endless.length, 4);
  await Promise.all(endless.map((e) => e.done));
  for (const e of endless) {
    assert.ok(e.closedEarly, `${e.body.messages[0].content}: the server finished its endless answer`);
    t.diagnostic(`${e.body.messages[0].content}: the server wrote ${e.chunks} events before the connection closed`);
  }
});

test("a remote batch runs each line as its own request, with the in-page engine's result lines", { timeout: 5 * MIN }, async () => {
  const since = mock.chats().length;
  const jsonl = [
    JSON.stringify({ custom_id: "a", body: { messages: user("first one"), max_tokens: 4 } }),
    JSON.stringify({ custom_id: "hot", body: { messages: user("x"), temperature: 9 } }),
    "{not json",
    JSON.stringify({ custom_id: "b", body: { messages: user("second one") } }),
  ].join("\n");
  const r = await inPage(page, async (api, jsonl, s) => {
    const progress = [];
    const results = await s.engine.batch(jsonl, { onProgress: (p) => progress.push([p.completed, p.total, p.failed]) });
    return { results, progress, csv: api.toCSV(results) };
  }, jsonl);
  assert.deepEqual(r.results.map((l) => [l.id, l.custom_id, l.response?.status_code ?? null, l.response?.body.choices[0].message.content ?? null]), [
    ["batch_req_0", "a", 200, `${REPLY_PREFIX} first one`],
    ["batch_req_1", "hot", null, null],
    ["batch_req_2", null, null, null],
    ["batch_req_3", "b", 200, `${REPLY_PREFIX} second one`],
  ]);
  const hot = r.results[1].error;
  assert.deepEqual([hot.code, hot.param], ["invalid_value", "temperature"], JSON.stringify(hot));
  assert.match(hot.message, /temperature/);
  assert.match(r.results[2].error.message, /JSON/);
  assert.equal(r.results[0].error, null);
  assert.deepEqual(r.progress, [[1, 4, 0], [2, 4, 1], [3, 4, 2], [4, 4, 2]]);
  // The bad JSON line never left the page; the others went one by one. (The previous test's
  // "[hold]" request, aborted as it was sent, may reach the server late: it is not this test's.)
  const sent = mock.chats().slice(since).map((e) => e.body.messages[0].content).filter((c) => c !== "[hold]");
  assert.deepEqual(sent, ["first one", "x", "second one"]);
  assert.equal(r.csv.split("\r\n").filter(Boolean).length, 5);
});

test("server errors surface as the package's named errors with status, param and code", { timeout: 5 * MIN }, async (t) => {
  const closed = await startMockOpenAI();
  const unreachable = closed.url;
  await closed.close();
  const r = await inPage(page, async (api, [mockURL, key, noCors, unreachable], s) => {
    const ask = (content, extra = {}) => s.settle(s.engine.chat.completions.create({ messages: [{ role: "user", content }], ...extra }));
    const stream = (content) => s.settle((async () => {
      const chunks = [];
      for await (const c of await s.engine.chat.completions.create({ messages: [{ role: "user", content }], stream: true })) chunks.push(c);
      return chunks;
    })());
    const connect = (remote) => s.settle(api.createEngine({ remote }));
    const out = {
      badKey: await connect({ baseURL: mockURL, apiKey: "sk-wrong" }),
      noKey: await connect({ baseURL: mockURL }),
      unknownModel: await connect({ baseURL: mockURL, apiKey: key, model: "nope" }),
      wrongBase: await connect({ baseURL: mockURL.replace(/\/v1$/, "/api"), apiKey: key }),
      unreachable: await connect({ baseURL: unreachable }),
      noCors: await connect({ baseURL: noCors }),
      temperature: await ask("hi", { temperature: 9 }),
      temperatureStreamed: await s.settle(s.engine.chat.completions.create({ messages: [{ role: "user", content: "hi" }], temperature: 9, stream: true })),
      model: await ask("hi", { model: "nope" }),
      forbidden: await ask("[status 403]"),
      rateLimited: await ask("[status 429]"),
      unavailable: await stream("[status 503]"),
      midStream: await stream("[fail mid-stream]"),
      logits: await s.settle(s.engine.logits([1, 2])),
    };
    await s.engine.unload();
    out.unloaded = await ask("hi");
    out.unloadedFetch = await (await s.engine.fetch("http://x/v1/chat/completions", { method: "POST", body: JSON.stringify({ messages: [] }) })).json();
    return out;
  }, [mock.url, KEY, noCors.url, unreachable]);
  const want = {
    badKey: ["AuthenticationError", 401], noKey: ["AuthenticationError", 401],
    unknownModel: ["ModelNotSupportedError", undefined], wrongBase: ["RemoteServerError", 404],
    unreachable: ["NetworkError", undefined], noCors: ["NetworkError", undefined],
    temperature: ["BadRequestError", 400], temperatureStreamed: ["BadRequestError", 400],
    model: ["ModelNotSupportedError", 404], forbidden: ["AuthenticationError", 403],
    rateLimited: ["RemoteServerError", 429], unavailable: ["RemoteServerError", 503], midStream: ["RemoteServerError", 500],
    logits: ["BadRequestError", undefined], unloaded: ["EngineUnloadedError", undefined],
  };
  for (const [k, [name, status]] of Object.entries(want)) {
    const e = r[k].error;
    t.diagnostic(`${k}: ${JSON.stringify(e)}`);
    assert.ok(e, `${k}: resolved ${JSON.stringify(r[k]).slice(0, 200)}`);
    assert.equal(e.name, name, `${k}: ${e.message}`);
    assert.ok(e.named && e.webvlm, `${k}: not an instance of the exported ${name}`);
    assert.equal(e.status, status, `${k}: status`);
  }
  assert.deepEqual([r.temperature.error.param, r.temperature.error.code], ["temperature", "invalid_value"]);
  assert.equal(r.temperatureStreamed.error.param, "temperature");
  assert.equal(r.badKey.error.code, "invalid_api_key");
  assert.match(r.unknownModel.error.message, /mock-vlm.*mock-other.*nope|nope/);
  assert.match(r.noCors.error.message, /CORS/);
  assert.deepEqual(r.unloadedFetch, { error: { message: "the engine was unloaded", type: "server_error", param: null, code: "engine_unloaded" } });
});

test("fallback: \"remote\" is taken when the page has no WebGPU, before anything is downloaded", { timeout: 5 * MIN }, async () => {
  const bare = await browser.context.newPage();
  await bare.addInitScript(() => { delete Navigator.prototype.gpu; });
  await bare.goto(`${server.url}/test/blank.html`);
  const since = server.log.length;
  const r = await inPage(bare, async (api, [model, baseURL, key]) => {
    const engine = await api.createEngine({ backend: "webgpu", model, remote: { baseURL, apiKey: key }, fallback: "remote" });
    const reply = await engine.chat.completions.create({ messages: [{ role: "user", content: "no gpu here" }] });
    return { gpu: "gpu" in navigator, info: engine.info, content: reply.choices[0].message.content };
  }, [MODEL, mock.url, KEY]);
  await bare.close();
  assert.equal(r.gpu, false, "the init script did not hide WebGPU");
  assert.equal(r.info.remote, true);
  assert.equal(r.info.fallback?.reason, "NoWebGPUError", JSON.stringify(r.info));
  assert.equal(r.content, `${REPLY_PREFIX} no gpu here`);
  assert.deepEqual(server.log.slice(since).filter((e) => e.path.startsWith("/fixtures/")), [], "the model was requested");
});

test("fallback: \"remote\" is taken when WebGPU gives no adapter (the engine on the page's thread)", { timeout: 5 * MIN }, async () => {
  const bare = await browser.context.newPage();
  await bare.addInitScript(() => { GPU.prototype.requestAdapter = async () => null; });
  await bare.goto(`${server.url}/test/blank.html`);
  const r = await inPage(bare, async (api, [model, baseURL, key]) => {
    const engine = await api.createEngine({ backend: "webgpu", model, worker: false, remote: { baseURL, apiKey: key }, fallback: "remote", cacheName: null });
    return { adapter: await navigator.gpu.requestAdapter(), info: engine.info };
  }, [MODEL, mock.url, KEY]);
  await bare.close();
  assert.equal(r.adapter, null, "the init script did not take the adapter away");
  assert.equal(r.info.remote, true);
  assert.equal(r.info.fallback?.reason, "NoWebGPUError", JSON.stringify(r.info));
});

test("fallback: \"remote\" is taken on AdapterTooSmallError (the model's headers read, not its weights); a model that fits loads in the page", { timeout: 10 * MIN }, async (t) => {
  // The header reads' Range windows: from 0, growing fourfold from 64 KiB (source.js readHead).
  const windows = [0, 1, 2, 3, 4].map((k) => [(4 ** k - 1) / 3 * 65536, 4 ** k * 65536]).map(([a, n]) => `bytes=${a}-${a + n - 1}`);
  const reads = (since) => server.log.slice(since).filter((e) => e.path.startsWith("/fixtures/")).map((e) => e.range);
  let since = server.log.length;
  const small = await inPage(page, async (api, [model, baseURL, key]) => {
    const engine = await api.createEngine({ backend: "webgpu", model, remote: { baseURL, apiKey: key }, fallback: "remote", engine: { gpuMemory: "64K" }, cacheName: null });
    const reply = await engine.chat.completions.create({ messages: [{ role: "user", content: "too small" }] });
    return { info: engine.info, content: reply.choices[0].message.content };
  }, [MODEL, mock.url, KEY]);
  const smallRead = reads(since);
  since = server.log.length;
  const fits = await inPage(page, async (api, [model, baseURL, key]) => {
    const engine = await api.createEngine({ backend: "webgpu", model, remote: { baseURL, apiKey: key }, fallback: "remote", cacheName: null });
    const reply = await engine.chat.completions.create({ tokens: [1, 3, 60375, 4], max_tokens: 1, temperature: 0 });
    await engine.unload();
    return { remote: engine.info.remote, architecture: engine.info.architecture, tokens: reply.usage.completion_tokens };
  }, [MODEL, mock.url, KEY]);
  const fitsRead = reads(since);
  t.diagnostic(`refused: ${JSON.stringify(small.info.fallback)}; its reads ${JSON.stringify(smallRead)}; the load that fit: ${JSON.stringify(fitsRead)}`);
  assert.equal(small.info.remote, true);
  assert.equal(small.info.fallback?.reason, "AdapterTooSmallError", JSON.stringify(small.info));
  assert.equal(small.content, `${REPLY_PREFIX} too small`);
  assert.ok(smallRead.length > 0 && smallRead.every((r) => windows.includes(r)), `the refused load read more than headers: ${JSON.stringify(smallRead)}`);
  assert.deepEqual(fits, { remote: false, architecture: "mistral3", tokens: 1 });
  assert.ok(fitsRead.some((r) => !windows.includes(r)), "the load that fit downloaded no weights: the check above proves nothing");
});

test("the demo's remote server: settings with the key in sessionStorage only, a notice that requests leave the device, a header that names the server, a streamed reply from the server", { timeout: 5 * MIN }, async (t) => {
  const demo = await browser.context.newPage();
  await demo.goto(`${server.url}/index.html`);
  await demo.locator("#settings summary").click();
  await demo.fill("#settings-remote-url", mock.url);
  await demo.fill("#settings-remote-model", "mock-other");
  await demo.fill("#settings-remote-key", KEY);
  await demo.selectOption("#model-select", "remote");
  const notice = demo.locator("#remote-notice");
  assert.ok(await notice.isVisible(), "no notice that requests leave the device");
  assert.match(await notice.textContent(), new RegExp(`${mock.url.replace(/[./]/g, "\\$&")}.*leave this device`));
  const since = mock.chats().length;
  await demo.click("#load");
  await demo.waitForFunction(() => document.body.dataset.state === "ready" || document.body.dataset.state === "error", null, { timeout: 60_000 });
  const loaded = await demo.evaluate(() => ({ state: document.body.dataset.state, info: window.webvlmDemo.state.info, error: window.webvlmDemo.state.lastError }));
  assert.equal(loaded.state, "ready", JSON.stringify(loaded.error));
  assert.deepEqual([loaded.info.remote, loaded.info.model, loaded.info.baseURL], [true, "mock-other", mock.url]);
  // The header's promise follows the engine in use: no "never leave this device" while a
  // remote server answers, and back to it once the remote engine is unloaded.
  const tagline = await demo.locator("#tagline").textContent();
  assert.doesNotMatch(tagline, /never leave/, `header while remote: ${tagline}`);
  assert.ok(tagline.includes(mock.url), `header while remote: ${tagline}`);
  await demo.fill("#prompt", "hello from the demo");
  await demo.click("#send");
  await demo.waitForFunction(() => document.querySelector(".msg.assistant")?.dataset.state === "done", null, { timeout: 60_000 });
  const reply = await demo.locator(".msg.assistant .content").last().textContent();
  await demo.click("#unload");
  await demo.waitForFunction(() => document.body.dataset.state === "idle", null, { timeout: 60_000 });
  assert.match(await demo.locator("#tagline").textContent(), /never leave this device/, "header after the remote engine's unload");
  const stored = await demo.evaluate(() => ({ local: JSON.stringify({ ...localStorage }), session: JSON.stringify({ ...sessionStorage }) }));
  await demo.reload();
  const afterReload = await demo.evaluate(() => ({ url: document.querySelector("#settings-remote-url").value, key: document.querySelector("#settings-remote-key").value }));
  await demo.close();
  t.diagnostic(`reply ${JSON.stringify(reply)}; after a reload: ${JSON.stringify(afterReload)}`);
  assert.equal(reply, `${REPLY_PREFIX} hello from the demo`);
  const sent = mock.chats().slice(since);
  assert.equal(sent.length, 1);
  assert.equal(sent[0].auth, `Bearer ${KEY}`);
  assert.equal(sent[0].body.model, "mock-other");
  assert.equal(sent[0].body.stream, true);
  assert.ok(!("image_max_edge" in sent[0].body), "webvlm's own image_max_edge went to the server");
  assert.ok(!stored.local.includes(KEY), "the API key is in localStorage");
  assert.ok(stored.local.includes(mock.url), "the base URL was not saved");
  assert.ok(stored.session.includes(KEY), "the API key is not in sessionStorage");
  // A reload keeps the session (and its key); a new session would not have it.
  assert.deepEqual(afterReload, { url: mock.url, key: KEY });
});

test("the pages logged no errors", () => {
  browser.assertNoErrors({ allowConsoleErrors: [/CORS|Failed to load resource|ERR_CONNECTION_REFUSED|ERR_FAILED/] });
});
