// OpenAI's chat-completions API in headless Chromium (WebGPU on SwiftShader), through the
// npm package's public surface in its default worker mode: `engine.chat.completions.create`
// (streamed or not, with `signal`), `engine.batch`, `toJSONL` / `toCSV`, on the tiny Mistral 3
// VLM fixture (random weights, Tekken vocabulary). What tests/api.rs shows natively, shown in
// the page: bad requests are BadRequestErrors naming the field before any work (their image
// URLs are never fetched), seeded sampling reproduces (and equals the native CLI's), stop
// strings split across tokens are trimmed, logprobs equal the log-softmax of `engine.logits`,
// JSON-schema output validates (ajv, in node), a second chat turn reuses the prompt cache,
// aborts leave the engine as a clean run finds it, a stream nobody reads stops decoding after
// STREAM_WINDOW chunks, concurrent requests decode together (continuous batching) and give the
// tokens they give one after another, one of them stopped without the others, a batch with
// broken images reports them in order.
//
// SwiftShader is slow (a CPU runs every workgroup), so the whole file shares one engine,
// keeps max_tokens at what each check needs and counts its steps. Prompts are ids
// (`tokens`, webvlm's field) where the chat template is not the point: GREEDY's greedy
// reply repeats one multi-character token (stop strings split across two of them), SEEDED
// goes through the chat template.
//
// Needs `./build.sh wasm` (www/pkg/) and the native CLI (built here with cargo).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import Ajv from "ajv";
import { startServer, repoRoot } from "./server.js";
import { inPage, launchBrowser, parseCSV, requireWasmPackage } from "./harness.js";

const TINY = "/fixtures/tiny_mistral3_tekken";
const TINY_DIR = path.join(repoRoot, "tests/fixtures/tiny_mistral3_tekken");
const MODEL = { text: `${TINY}/model.gguf`, mmproj: `${TINY}/mmproj.gguf` };
/** An f32 KV cache, as the native CLI's default: seeded samples then match it exactly. */
const ENGINE = { kvF16: false };
/** Prompt ids (`<s>[INST] x [/INST]`) whose greedy reply is a multi-character token repeated. */
const GREEDY = [1, 3, 60375, 4];
/** Tolerance of logprobs against the log-softmax of `engine.logits` (tests/api.rs's). */
const TOL_LOGPROB = 1e-3;
/** Unread chunks the worker keeps ahead of a stream's reader (js/host.js). */
const STREAM_WINDOW = Number(/export const STREAM_WINDOW = (\d+)/.exec(fs.readFileSync(path.join(repoRoot, "www/pkg/host.js"), "utf8"))?.[1]);
const user = (text) => [{ role: "user", content: text }];
/** Seeded requests through the chat template; the first also runs in the native CLI. */
const SEEDED = [11, 12, 13].map((seed) => ({ messages: user("Tell me a story"), max_tokens: 1, temperature: 1, seed }));
/** The request run after each abort: its reply must equal the clean one (`clean`). */
const NEXT = { tokens: GREEDY, max_tokens: 1, temperature: 0, logprobs: true, top_logprobs: 5 };

let server, browser, page;
/** The native CLI's reply to SEEDED[0] (started in `before`, beside the browser's work). */
let native;
/** NEXT's reply on the engine before any abort (set by the logprobs test, which checks it). */
let clean;
const started = Date.now();

before(async () => {
  requireWasmPackage();
  assert.ok(STREAM_WINDOW > 0, "STREAM_WINDOW not found in www/pkg/host.js");
  native = nativeChat(SEEDED[0]);
  native.catch(() => {}); // awaited (and reported) by its test
  server = await startServer();
  browser = await launchBrowser();
  page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
  await inPage(page, async (api, [model, engine], s) => {
    // Counts the stream chunks the engine's worker posts to the page (a listener beside the
    // package's own; it changes nothing): the flow-control test watches them arrive.
    const NativeWorker = globalThis.Worker;
    s.chunkArrivals = [];
    globalThis.Worker = class extends NativeWorker {
      constructor(...args) {
        super(...args);
        this.addEventListener("message", (e) => {
          if (e.data?.type === "chunk") s.chunkArrivals.push(performance.now());
        });
      }
    };
    s.collect = async (stream) => {
      const chunks = [];
      for await (const c of stream) chunks.push(c);
      return chunks;
    };
    s.sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    s.engine = await api.createEngine({ backend: "webgpu", model, engine, cacheName: "api-test" });
  }, [MODEL, ENGINE]);
});

after(async () => {
  await browser?.close();
  await server?.close();
  console.log(`# api.test.js: ${((Date.now() - started) / 1000).toFixed(1)} s in all`);
});

/** `webvlm chat` on the tiny model (a fresh engine on the native adapter): the reply. */
async function nativeChat(request) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "webvlm-api-"));
  try {
    const file = path.join(dir, "request.json");
    fs.writeFileSync(file, JSON.stringify(request));
    const { stdout } = await promisify(execFile)("cargo", ["run", "--quiet", "--bin", "webvlm", "--", "chat",
      "--model", path.join(TINY_DIR, "model.gguf"), "--mmproj", path.join(TINY_DIR, "mmproj.gguf"),
      "--request", file, "--ctx", "4096"], { cwd: repoRoot, encoding: "utf8", maxBuffer: 1 << 26 });
    return JSON.parse(stdout);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}


/** A test that prints how long it took. */
function timedTest(name, options, fn) {
  test(name, options, async (t) => {
    const t0 = Date.now();
    try {
      await fn(t);
    } finally {
      t.diagnostic(`took ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }
  });
}

const content = (reply) => reply.choices[0].message.content;
const streamedText = (chunks) => chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
const finishOf = (chunks) => chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean);
const MIN = 60_000;

/** Asserts that a logprobs entry equals `want`'s: the same token and alternatives, the values
 * within TOL_LOGPROB (a prompt reused from the prompt cache may round differently). */
function assertSameEntry(got, want, what) {
  const strip = (e) => [e.token, e.top_logprobs.map((a) => a.token)];
  assert.deepEqual(strip(got), strip(want), `${what}: other tokens`);
  for (const [a, b] of [[got, want], ...got.top_logprobs.map((a, j) => [a, want.top_logprobs[j]])]) {
    assert.ok(Math.abs(a.logprob - b.logprob) <= TOL_LOGPROB, `${what}: logprob ${a.logprob} vs ${b.logprob}`);
  }
}

/** Asserts that NEXT's reply after an abort equals the clean run's. */
function assertClean(reply, what) {
  assert.ok(clean, "no clean reply: the logprobs test did not run");
  assert.equal(content(reply), content(clean), `${what}: the next request's text differs from a clean run's`);
  assert.deepEqual(reply.usage.completion_tokens, 1, what);
  assertSameEntry(reply.choices[0].logprobs.content[0], clean.choices[0].logprobs.content[0], what);
}

timedTest("invalid requests reject with a BadRequestError naming the field, before any work: a refused request's image URLs are never fetched", { timeout: 10 * MIN }, async (t) => {
  const image = (tag) => ({ type: "image_url", image_url: { url: `${TINY}/img_84x56.png?refused-${tag}` } });
  const badSchema = { type: "json_schema", json_schema: { name: "x", schema: { type: "nosuchtype" }, strict: true } };
  const cases = [
    { request: { temprature: 0.5 }, param: "temprature", code: "unknown_parameter", mention: /temprature/ },
    { request: { temperature: 3 }, param: "temperature", code: "invalid_value", mention: /temperature/ },
    { request: { top_logprobs: 3 }, param: "top_logprobs", code: "invalid_value", mention: /top_logprobs/ },
    { request: { response_format: { type: "xml" } }, param: "response_format.type", code: "invalid_value", mention: /response[ _]format/ },
    { request: { response_format: badSchema }, param: "response_format", code: "invalid_json_schema", mention: /schema/i },
    { request: { temperature: 3, stream: true }, param: "temperature", code: "invalid_value", mention: /temperature/ },
    { request: { tokens: Array(5000).fill(1000) }, param: "messages", code: "context_length_exceeded", mention: /5000 tokens/ },
    // With an image URL: refused by the worker's check before the image downloads.
    { request: { messages: [{ role: "user", content: [image("hot"), { type: "text", text: "hi" }] }], temperature: 3 }, param: "temperature", code: "invalid_value", mention: /temperature/ },
    { request: { messages: [{ role: "user", content: [image("schema"), { type: "text", text: "hi" }] }], response_format: badSchema }, param: "response_format", code: "invalid_json_schema", mention: /schema/i },
    { request: { messages: [{ role: "user", content: [image("long"), { type: "text", text: "hi ".repeat(6000) }] }] }, param: "messages", code: "context_length_exceeded", mention: /context/ },
    { request: { messages: [{ role: "user", content: [image("stream"), { type: "text", text: "hi" }] }], temperature: 3, stream: true }, param: "temperature", code: "invalid_value", mention: /temperature/ },
  ];
  const out = await inPage(page, async (api, requests, s) => {
    const out = [];
    for (const extra of requests) {
      const t0 = performance.now();
      let at = "create";
      let chunks = 0;
      try {
        const reply = await s.engine.chat.completions.create({ messages: [{ role: "user", content: "hi" }], max_tokens: 2, ...extra });
        if (extra.stream) {
          at = "iteration";
          for await (const _ of reply) chunks++;
        }
        out.push({ resolved: true, chunks });
      } catch (e) {
        out.push({
          name: e.name, message: e.message, code: e.code, param: e.param, type: e.type, at, chunks,
          isBadRequest: e instanceof api.BadRequestError, isWebvlm: e instanceof api.WebvlmError,
          ms: performance.now() - t0,
        });
      }
    }
    return out;
  }, cases.map((c) => c.request));
  for (const [i, c] of cases.entries()) {
    const e = out[i];
    const what = JSON.stringify(c.request).slice(0, 160);
    assert.ok(!e.resolved, `${what} was accepted`);
    t.diagnostic(`${what} -> ${e.name} {code: ${e.code}, param: ${e.param}} after ${e.ms.toFixed(0)} ms (at ${e.at}): ${e.message.slice(0, 160)}`);
    assert.equal(e.name, "BadRequestError", `${what}: ${e.name}: ${e.message}`);
    assert.ok(e.isBadRequest && e.isWebvlm, `${what}: not an instance of the exported BadRequestError`);
    assert.match(e.message, c.mention, `${what}: the message does not name the field`);
    assert.equal(e.chunks, 0, `${what}: chunks before the error`);
    assert.equal(e.param, c.param, `${what}: param`);
    assert.equal(e.code, c.code, `${what}: code`);
    assert.equal(e.type, "invalid_request_error", `${what}: type`);
  }
  const fetched = server.log.filter((e) => e.query.includes("refused")).map((e) => e.path + e.query);
  assert.deepEqual(fetched, [], "images of refused requests were fetched");
});

timedTest("seeded sampling reproduces exactly and equals the native CLI's, alone and in requests sent together, which decode together", { timeout: 20 * MIN }, async (t) => {
  // Each request alone, then all three at once as streams (the engine serves the next
  // request after the refusals above).
  const r = await inPage(page, async (api, requests, s) => {
    const alone = [];
    for (const q of requests) alone.push((await s.engine.chat.completions.create(q)).choices[0].message.content);
    let seq = 0;
    const streams = requests.map((q) => s.engine.chat.completions.create({ ...q, stream: true }));
    const together = await Promise.all(streams.map(async (p) => {
      const marks = [];
      let text = "";
      for await (const c of await p) {
        marks.push(seq++);
        text += c.choices[0]?.delta?.content ?? "";
      }
      return { marks, text };
    }));
    return { alone, together };
  }, SEEDED);
  const reply = await native;
  t.diagnostic(`seeds ${SEEDED.map((q) => q.seed)}: ${JSON.stringify(r.alone)} alone, ${JSON.stringify(r.together.map((x) => x.text))} together; `
    + `native CLI (seed ${SEEDED[0].seed}): ${JSON.stringify(content(reply))}; chunk order ${JSON.stringify(r.together.map((y) => y.marks))}`);
  for (const [i, x] of r.together.entries()) assert.ok(x.marks.length >= 3, `stream ${i}: ${x.marks.length} chunks`);
  // Each stream's first chunk (the role) comes before any stream ends: they ran together.
  const firstEnd = Math.min(...r.together.map((x) => x.marks.at(-1)));
  assert.ok(r.together.every((x) => x.marks[0] < firstEnd), `the streams ran one after another: ${JSON.stringify(r.together.map((y) => y.marks))}`);
  assert.deepEqual(r.together.map((x) => x.text), r.alone, "the same seeds gave other samples (streams together against requests alone)");
  assert.equal(new Set(r.alone).size, 3, "other seeds gave the same sample (random weights, temperature 1)");
  assert.equal(r.alone[0], content(reply), "the browser's seeded sample differs from the native CLI's");
});

timedTest("4 create calls made together decode together: the tokens of the same calls one after another, sooner (times printed); a stopped stream leaves the others", { timeout: 20 * MIN }, async (t) => {
  const requests = [
    { tokens: GREEDY, max_tokens: 12, temperature: 0 },
    { messages: user("Tell me a story"), max_tokens: 10, temperature: 0 },
    { messages: user("Describe the sea."), max_tokens: 12, temperature: 0.8, seed: 5 },
    { messages: user("Hi"), max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 2 },
  ];
  const r = await inPage(page, async (api, requests, s) => {
    const reply = (x) => ({ text: x.choices[0].message.content, finish: x.choices[0].finish_reason, tokens: x.usage.completion_tokens,
      logprobs: x.choices[0].logprobs?.content?.map((e) => [e.token, e.logprob]) ?? null });
    let t0 = performance.now();
    const alone = [];
    for (const q of requests) alone.push(reply(await s.engine.chat.completions.create(q)));
    const aloneMs = performance.now() - t0;
    const before = (await s.engine.stats()).concurrent;
    t0 = performance.now();
    const together = (await Promise.all(requests.map((q) => s.engine.chat.completions.create(q)))).map(reply);
    const togetherMs = performance.now() - t0;
    const after = (await s.engine.stats()).concurrent;
    // A stream stopped after its first content chunk, beside two that run to their end.
    const [stopped, ...others] = await Promise.all([
      (async () => {
        let chunks = 0;
        for await (const c of await s.engine.chat.completions.create({ ...requests[0], max_tokens: 40, stream: true })) {
          if (c.choices[0]?.delta?.content && ++chunks === 1) break;
        }
        return chunks;
      })(),
      ...requests.slice(1, 3).map(async (q) => reply(await s.engine.chat.completions.create(q))),
    ]);
    const next = reply(await s.engine.chat.completions.create(requests[0]));
    return { alone, together, aloneMs, togetherMs, before, after, stopped, others, next };
  }, requests);
  t.diagnostic(`4 requests (${r.alone.map((x) => x.tokens).join("+")} tokens, WebGPU on SwiftShader): one after another ${r.aloneMs.toFixed(0)} ms, `
    + `together ${r.togetherMs.toFixed(0)} ms (${(r.aloneMs / r.togetherMs).toFixed(2)}x); widest group ${r.after.widest}`);
  assert.deepEqual(r.together, r.alone, "requests together gave other replies than one after another");
  assert.equal(r.after.requests - r.before.requests, 4, "the 4 requests did not run as one group");
  assert.equal(r.stopped, 1);
  assert.deepEqual(r.others, r.alone.slice(1, 3), "a stopped stream changed the replies beside it");
  assert.deepEqual(r.next, r.alone[0], "the engine after a stop in a group");
});

timedTest("logprobs, streamed or not, are the log-softmax of engine.logits; stop strings split across tokens are trimmed, streamed text too", { timeout: 20 * MIN }, async (t) => {
  const n = 2;
  const request = { ...NEXT, max_tokens: n };
  const r = await inPage(page, async (api, [request, n], s) => {
    const reply = await s.engine.chat.completions.create(request);
    // Teacher-forced: the greedy ids are the argmax of each row, one prefix at a time.
    const vocab = s.engine.info.vocab;
    const ids = [...request.tokens];
    const want = [];
    for (let k = 0; k < n; k++) {
      const logits = await s.engine.logits(ids);
      const row = logits.subarray((ids.length - 1) * vocab, ids.length * vocab);
      let max = -Infinity, arg = 0;
      for (let i = 0; i < vocab; i++) if (row[i] > max) { max = row[i]; arg = i; }
      let sum = 0;
      for (let i = 0; i < vocab; i++) sum += Math.exp(row[i] - max);
      const lse = max + Math.log(sum);
      const top = Array.from(row).map((l) => l - lse).sort((a, b) => b - a).slice(0, 5);
      want.push({ id: arg, logprob: row[arg] - lse, top });
      ids.push(arg);
    }
    return { reply, want };
  }, [request, n]);
  const entries = r.reply.choices[0].logprobs.content;
  assert.equal(entries.length, n, "one entry per token");
  assert.equal(entries.map((e) => e.token).join(""), content(r.reply));
  let worst = 0;
  for (const [k, e] of entries.entries()) {
    const w = r.want[k];
    assert.deepEqual(e.bytes, [...Buffer.from(e.token)], `token ${k}: bytes`);
    assert.equal(e.top_logprobs.length, 5);
    assert.equal(e.top_logprobs[0].logprob, e.logprob, `token ${k}: greedy picks the most likely token`);
    worst = Math.max(worst, Math.abs(e.logprob - w.logprob));
    for (const [j, alt] of e.top_logprobs.entries()) {
      worst = Math.max(worst, Math.abs(alt.logprob - w.top[j]));
      if (j > 0) assert.ok(alt.logprob <= e.top_logprobs[j - 1].logprob, `token ${k}: top_logprobs out of order`);
    }
  }
  t.diagnostic(`logprobs vs log-softmax of engine.logits: worst abs difference ${worst.toExponential(2)}`);
  assert.ok(worst <= TOL_LOGPROB, `worst abs difference ${worst}`);
  clean = { ...r.reply, choices: [{ ...r.reply.choices[0], message: { ...r.reply.choices[0].message, content: entries[0].token }, logprobs: { content: entries.slice(0, 1) } }] };

  // The end of the first token's text and the start of the second's.
  const pieces = entries.map((e) => e.token);
  assert.ok(pieces.every((p) => [...p].length >= 2), `not two multi-character tokens: ${JSON.stringify(pieces)}`);
  const stop = [...pieces[0]].slice(-2).join("") + [...pieces[1]][0];
  assert.ok(!pieces.some((p) => p.includes(stop)), `${JSON.stringify(stop)} lies within one token`);
  const text = content(r.reply);
  const at = text.indexOf(stop);
  assert.ok(at >= 0 && at < pieces[0].length);
  t.diagnostic(`tokens ${JSON.stringify(pieces)}: stop ${JSON.stringify(stop)} -> ${JSON.stringify(text.slice(0, at))}`);
  const stopped = { ...request, max_tokens: n + 2, stop: ["never-there", stop] };
  const s = await inPage(page, async (api, request, s) => ({
    reply: await s.engine.chat.completions.create(request),
    chunks: await s.collect(await s.engine.chat.completions.create({ ...request, stream: true })),
  }), stopped);
  assert.equal(content(s.reply), text.slice(0, at));
  assert.equal(s.reply.choices[0].finish_reason, "stop");
  assert.equal(s.reply.usage.completion_tokens, n, "decoding went on after the stop string");
  assert.equal(streamedText(s.chunks), text.slice(0, at), "the streamed text holds (part of) the stop string");
  assert.deepEqual(finishOf(s.chunks), ["stop"]);
  // The streamed logprobs: those of the tokens the stream got to, the same as the completion's.
  const streamed = s.chunks.flatMap((c) => c.choices[0]?.logprobs?.content ?? []);
  t.diagnostic(`streamed logprobs: ${streamed.length} entries`);
  assert.ok(streamed.length >= 1 && streamed.length <= n, `${streamed.length} streamed logprobs entries`);
  for (const [k, e] of streamed.entries()) assertSameEntry(e, entries[k], `streamed token ${k}`);
});

timedTest("response_format: a json_schema completion parses and validates (ajv); json_object gives an object", { timeout: 20 * MIN }, async (t) => {
  // A bounded schema; the seed gives a short document on this random model (checked natively).
  const schema = { type: "array", items: { type: "integer", minimum: 1, maximum: 9 }, minItems: 1, maxItems: 2 };
  const requests = [
    { tokens: GREEDY, max_tokens: 8, temperature: 1, seed: 8, response_format: { type: "json_schema", json_schema: { name: "digits", schema, strict: true } } },
    { tokens: GREEDY, max_tokens: 8, temperature: 0, response_format: { type: "json_object" } },
  ];
  const replies = await inPage(page, async (api, requests, s) => {
    const out = [];
    for (const r of requests) out.push(await s.engine.chat.completions.create(r));
    return out;
  }, requests);
  const ajv = new Ajv({ strict: true });
  const validate = ajv.compile(schema);
  for (const [i, reply] of replies.entries()) {
    const text = content(reply);
    const label = i === 0 ? "json_schema" : "json_object";
    t.diagnostic(`${label}: ${JSON.stringify(text)} (${reply.usage.completion_tokens} tokens, masks ${(reply.usage.timings.mask_seconds * 1e3).toFixed(0)} ms)`);
    assert.equal(reply.choices[0].finish_reason, "stop", `${label}: ${JSON.stringify(text)}`);
    let value;
    assert.doesNotThrow(() => { value = JSON.parse(text); }, `${label}: ${JSON.stringify(text)} is not JSON`);
    if (i === 0) assert.ok(validate(value), `${label}: ${text} does not validate: ${ajv.errorsText(validate.errors)}`);
    else assert.ok(value !== null && typeof value === "object" && !Array.isArray(value), `${label}: ${text} is not an object`);
  }
});

timedTest("a second chat turn reuses the first turn's prompt cache", { timeout: 10 * MIN }, async (t) => {
  const r = await inPage(page, async (api, tiny, s) => {
    const first = [{ role: "user", content: [
      { type: "image_url", image_url: { url: `${tiny}/img_84x56.png` } },
      { type: "text", text: "Describe the image in detail." },
    ] }];
    const one = await s.engine.chat.completions.create({ messages: first, max_tokens: 1, temperature: 0 });
    const second = [...first, { role: "assistant", content: one.choices[0].message.content }, { role: "user", content: "And the colours?" }];
    const two = await s.engine.chat.completions.create({ messages: second, max_tokens: 1, temperature: 0 });
    return { one: one.usage, two: two.usage };
  }, TINY);
  const cached = r.two.prompt_tokens_details.cached_tokens;
  t.diagnostic(`turn 1: ${r.one.prompt_tokens} prompt tokens (${r.one.prompt_tokens_details.cached_tokens} cached), TTFT ${r.one.timings.time_to_first_token.toFixed(2)} s; `
    + `turn 2: ${r.two.prompt_tokens} prompt tokens, ${cached} cached, TTFT ${r.two.timings.time_to_first_token.toFixed(2)} s`);
  assert.ok(r.two.prompt_tokens > r.one.prompt_tokens);
  assert.ok(cached >= r.one.prompt_tokens, `cached ${cached} < the first turn's ${r.one.prompt_tokens} prompt tokens`);
});

timedTest("a stream nobody reads stops decoding after STREAM_WINDOW unread chunks; its AbortSignal ends it, and the next request is a clean one", { timeout: 20 * MIN }, async (t) => {
  const r = await inPage(page, async (api, [prompt, window, next], s) => {
    const ac = new AbortController();
    const since = s.chunkArrivals.length;
    const arrived = () => s.chunkArrivals.length - since;
    const t0 = performance.now();
    const stream = await s.engine.chat.completions.create({
      tokens: prompt, max_tokens: 200, temperature: 0, stream: true, stream_options: { include_usage: true }, signal: ac.signal,
    });
    const it = stream[Symbol.asyncIterator]();
    const first = await it.next(); // one chunk read, then none for a while
    // The window fills: the worker decodes freely until `window` chunks wait unread.
    while (arrived() < 1 + window && performance.now() - t0 < 10 * 60_000) await s.sleep(20);
    const filled = arrived();
    const filledMs = performance.now() - t0;
    const times = s.chunkArrivals.slice(since);
    const gaps = times.slice(2).map((x, i) => x - times[i + 1]).sort((a, b) => a - b); // between token chunks
    const stepMs = gaps[Math.floor(gaps.length / 2)];
    // Unread for long enough to decode 3 more tokens at that pace.
    const holdMs = Math.max(3000, 3 * stepMs);
    await s.sleep(holdMs);
    const duringHold = arrived() - filled;
    ac.abort();
    const rest = [];
    for (;;) {
      const x = await it.next();
      if (x.done) break;
      rest.push(x.value);
    }
    return {
      first: first.value, filled, filledMs, stepMs, holdMs, duringHold,
      restDeltas: rest.filter((c) => c.choices[0]?.delta?.content).length,
      finish: rest.map((c) => c.choices[0]?.finish_reason).filter(Boolean),
      usage: rest.find((c) => c.usage)?.usage,
      next: await s.engine.chat.completions.create(next),
    };
  }, [GREEDY, STREAM_WINDOW, NEXT]);
  // Tokens a stream without flow control would have decoded by the abort: those before the
  // window filled, and one per step of the hold.
  const unthrottled = STREAM_WINDOW + Math.floor(r.holdMs / r.stepMs);
  t.diagnostic(`window ${STREAM_WINDOW}: ${r.filled} chunks arrived in ${(r.filledMs / 1000).toFixed(1)} s (a token every ${(r.stepMs / 1000).toFixed(2)} s), `
    + `${r.duringHold} more in the next ${(r.holdMs / 1000).toFixed(1)} s unread; ${r.usage?.completion_tokens} tokens generated in all `
    + `(~${unthrottled} at the free pace); ${r.restDeltas} deltas read after resuming; next: ${JSON.stringify(content(r.next))}`);
  assert.equal(r.first.choices[0].delta.role, "assistant");
  assert.equal(r.filled, 1 + STREAM_WINDOW, "the window did not fill");
  assert.ok(r.duringHold <= 1, `${r.duringHold} chunks arrived while ${1 + STREAM_WINDOW} waited unread`);
  assert.ok(r.usage.completion_tokens <= STREAM_WINDOW + 1, `${r.usage.completion_tokens} tokens decoded while the reader paused`);
  assert.ok(unthrottled >= STREAM_WINDOW + 1 + 2, "the pause was too short to tell");
  assert.ok(r.restDeltas <= STREAM_WINDOW + 1, `${r.restDeltas} deltas were waiting`);
  assert.deepEqual(r.finish, ["abort"], "the AbortSignal did not end the stream with finish_reason abort");
  assertClean(r.next, "after the AbortSignal");
});

timedTest("aborting (leaving the loop, a non-stream request's signal, a stop while the image downloads) leaves the engine clean", { timeout: 20 * MIN }, async (t) => {
  const png = fs.readFileSync(path.join(TINY_DIR, "img_84x56.png"));
  // The server holds the image HOLD_MS; the stop comes after 1 s and must not wait for it.
  const HOLD_MS = 30_000;
  const held = [];
  server.intercept = (req, res) => {
    if (!req.url.includes("?stalled")) return false;
    held.push(setTimeout(() => {
      res.writeHead(200, { "Content-Type": "image/png", "Cache-Control": "no-store" });
      res.end(png);
    }, HOLD_MS));
    return true;
  };
  let r;
  try {
    r = await inPage(page, async (api, [prompt, next, tiny], s) => {
      const create = (r) => s.engine.chat.completions.create(r);
      const long = { tokens: prompt, max_tokens: 64, temperature: 0 };
      const after = [];
      // Leaving the for-await loop: the next request is queued at once behind the stopping one.
      const b = { deltas: 0, t0: performance.now(), firstDeltaMs: null };
      for await (const c of await create({ ...long, stream: true })) {
        if (c.choices[0]?.delta?.content) {
          b.firstDeltaMs ??= performance.now() - b.t0;
          b.deltas++;
          break;
        }
      }
      after.push(await create(next));
      // A non-stream request whose signal fires while it generates.
      const ac = new AbortController();
      const pending = create({ ...long, signal: ac.signal });
      const delay = Math.max(200, b.firstDeltaMs * 0.5);
      setTimeout(() => ac.abort(), delay);
      const c = await pending;
      // Stopped while its image downloads (the server holds it): nothing is generated.
      const ac2 = new AbortController();
      const t0 = performance.now();
      const stalled = create({
        messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: `${tiny}/img_84x56.png?stalled` } }, { type: "text", text: "Describe." }] }],
        max_tokens: 3, temperature: 0, signal: ac2.signal,
      });
      setTimeout(() => ac2.abort(), 1000);
      const d = await stalled;
      const dMs = performance.now() - t0;
      after.push(await create(next));
      return {
        b, c: { finish: c.choices[0].finish_reason, usage: c.usage, delay },
        d: { finish: d.choices[0].finish_reason, usage: d.usage, ms: dMs }, after,
      };
    }, [GREEDY, NEXT, TINY]);
  } finally {
    server.intercept = null;
    held.forEach(clearTimeout);
  }
  t.diagnostic(`loop left after ${(r.b.firstDeltaMs / 1000).toFixed(1)} s; non-stream aborted after ${(r.c.delay / 1000).toFixed(1)} s: `
    + `${r.c.usage.completion_tokens} tokens, finish ${r.c.finish}; stopped while its image downloaded: ${r.d.usage.completion_tokens} tokens, `
    + `finish ${r.d.finish} after ${(r.d.ms / 1000).toFixed(1)} s; next: ${JSON.stringify(r.after.map(content))}`);
  assert.equal(r.b.deltas, 1);
  assert.equal(r.c.finish, "abort");
  assert.ok(r.c.usage.completion_tokens < 64, JSON.stringify(r.c.usage));
  assert.equal(r.d.finish, "abort", "the stop sent while the image downloaded was lost");
  assert.equal(r.d.usage.completion_tokens, 0);
  assert.ok(r.d.ms < HOLD_MS / 2, `the stop waited ${r.d.ms.toFixed(0)} ms for the image download`);
  assertClean(r.after[0], "after leaving the loop");
  assertClean(r.after[1], "after the non-stream abort and the stalled image");
});


timedTest("a batch of 20 image requests with 2 broken images: 18 results and 2 errors in order; JSONL input; CSV/JSONL exports", { timeout: 60 * MIN }, async (t) => {
  const dataUrl = (bytes) => `data:image/png;base64,${Buffer.from(bytes).toString("base64")}`;
  const good = ["img_84x56.png", "img_56x112.png"].map((f) => dataUrl(fs.readFileSync(path.join(TINY_DIR, f))));
  const broken = dataUrl(fs.readFileSync(path.join(TINY_DIR, "img_84x56.png")).subarray(0, 200));
  const BROKEN = [4, 13];
  const items = Array.from({ length: 20 }, (_, i) => ({
    custom_id: `photo-${i}`,
    body: {
      messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: BROKEN.includes(i) ? broken : good[i % 2] } }, { type: "text", text: "Describe." }] }],
      max_tokens: 1, temperature: 0,
    },
  }));
  const jsonl = [
    JSON.stringify({ custom_id: "text", method: "POST", url: "/v1/chat/completions", body: { tokens: GREEDY, max_tokens: 1, temperature: 0 } }),
    "{not json",
    JSON.stringify({ custom_id: "too-hot", body: { tokens: GREEDY, temperature: 3 } }),
  ].join("\n");
  const r = await inPage(page, async (api, [items, jsonl], s) => {
    const progress = [];
    const t0 = performance.now();
    const results = await s.engine.batch(items, {
      onProgress: (p) => progress.push({ completed: p.completed, total: p.total, failed: p.failed, custom_id: p.result.custom_id, ms: performance.now() - t0 }),
    });
    const ms = performance.now() - t0;
    const fromJsonl = await s.engine.batch(jsonl);
    return { results, progress, ms, fromJsonl, jsonlOut: api.toJSONL(results), csv: api.toCSV(results) };
  }, [items, jsonl]);
  t.diagnostic(`20 requests in ${(r.ms / 1000).toFixed(1)} s`);

  assert.equal(r.results.length, 20);
  for (const [i, line] of r.results.entries()) {
    assert.equal(line.custom_id, `photo-${i}`);
    assert.equal(line.id, `batch_req_${i}`);
    if (BROKEN.includes(i)) {
      assert.equal(line.response, null, `line ${i}: ${JSON.stringify(line)}`);
      assert.match(line.error.message, /image|png|decod/i, `line ${i}: ${line.error.message}`);
      assert.equal(line.error.code, "invalid_image", `line ${i}: ${JSON.stringify(line.error)}`);
      assert.equal(line.error.param, "messages", `line ${i}: ${JSON.stringify(line.error)}`);
    } else {
      assert.equal(line.error, null, `line ${i}: ${JSON.stringify(line.error)}`);
      assert.equal(line.response.status_code, 200);
      assert.equal(line.response.body.object, "chat.completion");
      assert.equal(line.response.body.usage.completion_tokens, 1);
    }
  }
  t.diagnostic(`broken image: ${JSON.stringify(r.results[BROKEN[0]].error)}`);
  // Progress after each request ends, in the order they end (they decode together): every
  // line once, the failures counted as they come.
  assert.deepEqual(r.progress.map((p) => [p.completed, p.total]), items.map((_, i) => [i + 1, 20]));
  assert.deepEqual(r.progress.map((p) => p.custom_id).sort(), items.map((x) => x.custom_id).sort());
  const brokenIds = new Set(BROKEN.map((i) => items[i].custom_id));
  assert.deepEqual(r.progress.map((p) => p.failed), r.progress.map((_, k) => r.progress.slice(0, k + 1).filter((p) => brokenIds.has(p.custom_id)).length));

  assert.deepEqual(r.fromJsonl.map((l) => [l.custom_id, !!l.response, !!l.error]), [["text", true, false], [null, false, true], ["too-hot", false, true]]);
  assert.equal(r.fromJsonl[0].response.body.usage.completion_tokens, 1);
  assert.match(r.fromJsonl[1].error.message, /JSON/);
  assert.equal(r.fromJsonl[2].error.param, "temperature", JSON.stringify(r.fromJsonl[2].error));
  assert.match(r.fromJsonl[2].error.message, /temperature/);

  const back = r.jsonlOut.trimEnd().split("\n").map((l) => JSON.parse(l));
  assert.deepEqual(back, r.results, "toJSONL does not parse back to the results");
  const rows = parseCSV(r.csv);
  assert.deepEqual(rows[0], ["custom_id", "status", "finish_reason", "content", "prompt_tokens", "completion_tokens", "error"]);
  assert.equal(rows.length, 21);
  for (const [i, line] of r.results.entries()) {
    const body = line.response?.body;
    assert.deepEqual(rows[i + 1], [line.custom_id, line.error ? "error" : "ok", body?.choices[0].finish_reason ?? "", body?.choices[0].message.content ?? "",
      body ? String(body.usage.prompt_tokens) : "", body ? String(body.usage.completion_tokens) : "", line.error?.message ?? ""], `CSV row ${i + 1}`);
  }
});

test("the page logged no errors", () => {
  browser.assertNoErrors();
});
