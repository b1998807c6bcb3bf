// `engine.fetch` in headless Chromium (WebGPU on SwiftShader): the official `openai` npm
// package (its ESM build served from node_modules, imported with no bundler) talks to the
// in-page engine through `fetch: engine.fetch`, with no network. On the tiny Mistral 3 VLM
// fixture: a streamed answer about an image equals the engine's own
// `chat.completions.create` answer (and the SDK's plain one), with the usage chunk; refused
// requests become the SDK's exception classes with `status`, `param` and `code`; unknown routes
// and bad bodies get OpenAI's error JSON; an aborted SDK stream ends and leaves the engine
// serving the next request as before; an unloaded engine answers 503 without the SDK
// retrying. On the CPU backend: an agent loop (a required call, its result, an answer) through
// chat completions and through the Responses API (`client.responses.stream`, then
// `previous_response_id`).
//
// Needs `./build.sh wasm` (www/pkg/) and `npm ci` here (the openai package).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, DEFAULT_MOUNTS } from "./server.js";
import { inPage, launchBrowser, requireWasmPackage } from "./harness.js";

const TINY = "/fixtures/tiny_mistral3_tekken";
const MODEL = { text: `${TINY}/model.gguf`, mmproj: `${TINY}/mmproj.gguf` };
const BASE = "http://webvlm.local/v1";
/** A greedy question about an image, a few tokens long. */
const ASK = {
  messages: [{ role: "user", content: [
    { type: "image_url", image_url: { url: `${TINY}/img_84x56.png` } },
    { type: "text", text: "What is in this picture?" },
  ] }],
  max_tokens: 4,
  temperature: 0,
};
const MIN = 60_000;

let server, browser, page;

before(async () => {
  requireWasmPackage();
  server = await startServer({ mounts: { ...DEFAULT_MOUNTS, "/openai/": "tests/browser/node_modules/openai" } });
  browser = await launchBrowser();
  page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
  await inPage(page, async (api, [model, base], s) => {
    const { default: OpenAI } = await import("/openai/index.mjs");
    s.OpenAI = OpenAI;
    s.engine = await api.createEngine({ backend: "webgpu", model, cacheName: "fetch-test" });
    s.calls = 0;
    // Counts what the SDK sends through engine.fetch (retries included).
    s.client = new OpenAI({
      baseURL: base, apiKey: "unused", dangerouslyAllowBrowser: true,
      fetch: (...args) => { s.calls++; return s.engine.fetch(...args); },
    });
    s.describe = (e) => ({
      sdkClass: Object.entries(OpenAI).find(([, c]) => typeof c === "function" && c.prototype instanceof Error && e.constructor === c)?.[0] ?? e.constructor.name,
      isApiError: e instanceof OpenAI.APIError, status: e.status, param: e.param, code: e.code, type: e.type, message: e.message,
    });
  }, [MODEL, BASE]);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

const content = (reply) => reply.choices[0].message.content;

test("the openai SDK with fetch: engine.fetch streams an answer about an image equal to the engine's own", { timeout: 20 * MIN }, async (t) => {
  const r = await inPage(page, async (api, ask, s) => {
    const own = await s.engine.chat.completions.create(ask);
    const models = await s.client.models.list();
    const model = models.data[0].id;
    const { data: stream, response } = await s.client.chat.completions
      .create({ ...ask, model, stream: true, stream_options: { include_usage: true } }).withResponse();
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    const plain = await s.client.chat.completions.create({ ...ask, model });
    return { own, models: models.data, model, contentType: response.headers.get("content-type"), chunks, plain };
  }, ASK);
  const streamed = r.chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
  const usage = r.chunks.find((c) => c.usage)?.usage;
  t.diagnostic(`engine: ${JSON.stringify(content(r.own))}; SDK stream (${r.chunks.length} chunks): ${JSON.stringify(streamed)}; SDK plain: ${JSON.stringify(content(r.plain))}; model ${r.model}`);
  assert.equal(r.own.usage.completion_tokens, ASK.max_tokens, "the engine's own answer is shorter than asked: nothing to compare");
  assert.ok(content(r.own).length > 0);
  assert.equal(r.models.length, 1);
  assert.equal(r.models[0].object, "model");
  assert.ok(r.models[0].context_length > 0 && r.models[0].max_model_len === r.models[0].context_length, JSON.stringify(r.models[0]));
  assert.equal(r.own.model, r.model, "GET /models names another model than completions report");
  assert.match(r.contentType, /^text\/event-stream/);
  assert.equal(streamed, content(r.own), "the SDK's streamed text differs from the engine's own answer");
  assert.equal(content(r.plain), content(r.own), "the SDK's plain answer differs from the engine's own");
  assert.equal(r.chunks[0].choices[0].delta.role, "assistant");
  assert.deepEqual(r.chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean), ["length"]);
  assert.ok(r.chunks.every((c) => c.object === "chat.completion.chunk" && c.model === r.model));
  assert.equal(usage?.completion_tokens, ASK.max_tokens, `usage chunk: ${JSON.stringify(usage)}`);
  assert.equal(usage.prompt_tokens, r.own.usage.prompt_tokens);
  assert.equal(r.plain.usage.completion_tokens, ASK.max_tokens);
});

test("refused requests become the SDK's exception classes with status, param and code; routes and bodies it cannot serve get OpenAI's error JSON", { timeout: 10 * MIN }, async (t) => {
  const r = await inPage(page, async (api, base, s) => {
    const attempt = async (f) => { try { await f(); return { resolved: true }; } catch (e) { return s.describe(e); } };
    const ask = { model: "any", messages: [{ role: "user", content: "hi" }], max_tokens: 1 };
    const calls0 = s.calls;
    const sdk = {
      temperature: await attempt(() => s.client.chat.completions.create({ ...ask, temperature: 3 })),
      streamed: await attempt(async () => { for await (const _ of await s.client.chat.completions.create({ ...ask, top_logprobs: 3, stream: true })); }),
      unknownField: await attempt(() => s.client.chat.completions.create({ ...ask, temprature: 0.5 })),
      route: await attempt(() => s.client.get("/embeddings")),
      model: await attempt(() => s.client.models.retrieve("no-such-model")),
    };
    const calls = s.calls - calls0;
    const raw = async (path, init) => {
      const res = await s.engine.fetch(base + path, init);
      return { status: res.status, type: res.headers.get("content-type"), body: await res.json() };
    };
    return {
      sdk, calls,
      badJson: await raw("/chat/completions", { method: "POST", body: "{not json" }),
      get: await raw("/chat/completions", { method: "GET" }),
      unknown: await raw("/completions", { method: "POST", body: "{}" }),
    };
  }, BASE);
  t.diagnostic(JSON.stringify(r));
  const { sdk } = r;
  assert.deepEqual([sdk.temperature.sdkClass, sdk.temperature.status, sdk.temperature.param, sdk.temperature.code, sdk.temperature.type],
    ["BadRequestError", 400, "temperature", "invalid_value", "invalid_request_error"]);
  assert.match(sdk.temperature.message, /temperature/);
  assert.deepEqual([sdk.streamed.sdkClass, sdk.streamed.status, sdk.streamed.param], ["BadRequestError", 400, "top_logprobs"], "a refused stream answers 400 before any event");
  assert.deepEqual([sdk.unknownField.sdkClass, sdk.unknownField.param, sdk.unknownField.code], ["BadRequestError", "temprature", "unknown_parameter"]);
  assert.deepEqual([sdk.route.sdkClass, sdk.route.status, sdk.route.code], ["NotFoundError", 404, "unknown_url"]);
  assert.deepEqual([sdk.model.sdkClass, sdk.model.status, sdk.model.code], ["NotFoundError", 404, "model_not_found"]);
  for (const e of Object.values(sdk)) assert.ok(e.isApiError, JSON.stringify(e));
  assert.equal(r.calls, 5, "the SDK retried a request it should not have");
  const shape = (x) => Object.keys(x.body.error).sort();
  for (const [what, x, status] of [["bad JSON", r.badJson, 400], ["GET on a POST route", r.get, 405], ["unknown route", r.unknown, 404]]) {
    assert.equal(x.status, status, what);
    assert.match(x.type, /^application\/json/, what);
    assert.deepEqual(shape(x), ["code", "message", "param", "type"], `${what}: ${JSON.stringify(x.body)}`);
  }
  assert.match(r.unknown.body.error.message, /POST \/v1\/completions/);
});

test("aborting an SDK request stops the generation (streamed: the stream ends; plain: the SDK's APIUserAbortError, the engine's finish_reason abort); the engine then answers as before", { timeout: 20 * MIN }, async (t) => {
  const r = await inPage(page, async (api, ask, s) => {
    const long = { ...ask, model: "any", max_tokens: 200 };
    // A stream aborted after its first delta. The engine pauses a stream nobody reads after a
    // few chunks: had engine.fetch not stopped it, the requests below would wait forever.
    const ac = new AbortController();
    const stream = await s.client.chat.completions.create({ ...long, stream: true }, { signal: ac.signal });
    let deltas = 0;
    let threw = null;
    try {
      for await (const c of stream) {
        if (c.choices[0]?.delta?.content) deltas++;
        if (deltas === 1) ac.abort();
      }
    } catch (e) {
      threw = s.describe(e);
    }
    // A plain request aborted once engine.fetch has it: the engine's own result is recorded.
    const create = s.engine.chat.completions.create;
    const seen = [];
    s.engine.chat.completions.create = async (request) => {
      const out = await create(request);
      seen.push({ finish: out.choices[0].finish_reason, tokens: out.usage.completion_tokens });
      return out;
    };
    const ac2 = new AbortController();
    const client = new s.OpenAI({
      baseURL: "http://webvlm.local/v1", apiKey: "unused", dangerouslyAllowBrowser: true, maxRetries: 0,
      fetch: (...args) => { const p = s.engine.fetch(...args); setTimeout(() => ac2.abort(), 0); return p; },
    });
    let plain = null;
    try {
      await client.chat.completions.create(long, { signal: ac2.signal });
    } catch (e) {
      plain = s.describe(e);
    }
    const after = await create(ask);
    s.engine.chat.completions.create = create;
    const again = await create(ask);
    return { deltas, threw, plain, seen, after, again };
  }, ASK);
  t.diagnostic(`deltas read before the stream ended: ${r.deltas} (${r.threw ? JSON.stringify(r.threw) : "it ended quietly"}); plain: ${JSON.stringify(r.plain)}, engine saw ${JSON.stringify(r.seen)}; `
    + `next answers ${JSON.stringify(content(r.after))} / ${JSON.stringify(content(r.again))}`);
  assert.equal(r.deltas, 1, "the stream went on after its signal aborted");
  assert.equal(r.plain?.sdkClass, "APIUserAbortError", JSON.stringify(r.plain));
  assert.equal(r.seen.length, 1);
  assert.equal(r.seen[0].finish, "abort", "the engine finished the aborted request");
  assert.ok(r.seen[0].tokens < 200, JSON.stringify(r.seen));
  assert.equal(r.after.choices[0].finish_reason, "length");
  assert.equal(content(r.after), content(r.again));
});

/** A tool whose arguments a random-weight model finishes quickly (bounded string, an enum). */
const WEATHER = {
  name: "get_weather",
  description: "Current weather in a city",
  parameters: { type: "object", properties: { city: { type: "string", maxLength: 8 }, unit: { type: "string", enum: ["c", "f"] } }, required: ["city", "unit"] },
};

test("the openai SDK over engine.fetch runs an agent loop (call, result, answer) through chat completions and through responses, streamed and not", { timeout: 20 * MIN }, async (t) => {
  const r = await inPage(page, async (api, [model, base, tool], s) => {
    // The CPU backend: a random-weight call takes tens of tokens, slow on SwiftShader.
    const engine = await api.createEngine({ backend: "cpu", model, cacheName: "fetch-test" });
    const client = new s.OpenAI({ baseURL: base, apiKey: "unused", dangerouslyAllowBrowser: true, fetch: engine.fetch });
    const id = (await client.models.list()).data[0].id;
    const ask = [{ role: "user", content: "What's the weather in Paris?" }];
    const result = JSON.stringify({ temperature: 18 });
    const chatTools = [{ type: "function", function: tool }];
    const call = { model: id, messages: ask, tools: chatTools, tool_choice: "required", temperature: 1, seed: 7, max_tokens: 120 };
    const chat = await client.chat.completions.create(call);
    const chunks = [];
    for await (const c of await client.chat.completions.create({ ...call, stream: true })) chunks.push(c);
    const message = chat.choices[0].message;
    const results = (message.tool_calls ?? []).map((c) => ({ role: "tool", tool_call_id: c.id, content: result }));
    const chatAnswer = await client.chat.completions.create({
      model: id, messages: [...ask, message, ...results], tools: chatTools, tool_choice: "none", temperature: 0, max_tokens: 8,
    });

    const tools = [{ type: "function", ...tool }];
    const respond = { model: id, input: ask, tools, tool_choice: "required", temperature: 1, seed: 7, max_output_tokens: 120 };
    const response = await client.responses.create(respond);
    const stream = client.responses.stream(respond);
    const events = [];
    for await (const e of stream) events.push(e.type);
    const streamed = await stream.finalResponse();
    const outputs = response.output.filter((i) => i.type === "function_call")
      .map((c) => ({ type: "function_call_output", call_id: c.call_id, output: result }));
    const answer = await client.responses.create({
      model: id, previous_response_id: response.id, input: outputs, tools, tool_choice: "none", temperature: 0, max_output_tokens: 8,
    });
    const retrieved = await client.responses.retrieve(answer.id);
    await engine.unload();
    return { chat, chunks, chatAnswer, response, events, streamed, answer, retrieved };
  }, [MODEL, BASE, WEATHER]);
  const calls = (list) => list.map((c) => [c.function?.name ?? c.name, c.function?.arguments ?? c.arguments]);
  const chatCalls = r.chat.choices[0].message.tool_calls ?? [];
  t.diagnostic(`chat calls ${JSON.stringify(calls(chatCalls))}; answer ${JSON.stringify(r.chatAnswer.choices[0].message.content)}; responses events ${r.events.length}`);
  assert.equal(r.chat.choices[0].finish_reason, "tool_calls");
  assert.ok(chatCalls.length > 0);
  for (const [name, args] of calls(chatCalls)) {
    assert.equal(name, "get_weather");
    assert.ok(["c", "f"].includes(JSON.parse(args).unit), args);
  }
  const streamedCalls = {};
  for (const c of r.chunks) {
    for (const d of c.choices[0]?.delta?.tool_calls ?? []) {
      streamedCalls[d.index] ??= { function: { name: d.function.name, arguments: "" } };
      streamedCalls[d.index].function.arguments += d.function.arguments ?? "";
    }
  }
  assert.deepEqual(calls(Object.values(streamedCalls)), calls(chatCalls), "the streamed calls differ from the plain ones");
  assert.equal(r.chatAnswer.choices[0].message.tool_calls, undefined);
  assert.equal(typeof r.chatAnswer.choices[0].message.content, "string");

  const responseCalls = r.response.output.filter((i) => i.type === "function_call");
  assert.ok(responseCalls.length > 0, JSON.stringify(r.response.output));
  assert.deepEqual(calls(r.streamed.output.filter((i) => i.type === "function_call")), calls(responseCalls));
  assert.deepEqual([r.events[0], r.events.at(-1)], ["response.created", "response.completed"]);
  assert.ok(r.events.includes("response.function_call_arguments.delta"));
  assert.equal(r.answer.previous_response_id, r.response.id);
  assert.ok(r.answer.output.every((i) => i.type === "message"));
  assert.ok(r.answer.usage.input_tokens_details.cached_tokens >= r.response.usage.input_tokens,
    `the stored conversation's prefix was not reused: ${JSON.stringify(r.answer.usage)}`);
  assert.deepEqual([r.retrieved.id, r.retrieved.output], [r.answer.id, r.answer.output]);
});

test("an unloaded engine answers 503 (code engine_unloaded) and the SDK does not retry it", { timeout: 5 * MIN }, async () => {
  const r = await inPage(page, async (api, _, s) => {
    await s.engine.unload();
    const calls0 = s.calls;
    try {
      await s.client.chat.completions.create({ model: "any", messages: [{ role: "user", content: "hi" }] });
      return { resolved: true };
    } catch (e) {
      return { ...s.describe(e), calls: s.calls - calls0 };
    }
  });
  assert.deepEqual([r.sdkClass, r.status, r.code, r.calls], ["InternalServerError", 503, "engine_unloaded", 1], JSON.stringify(r));
});

test("the page logged no errors", () => {
  browser.assertNoErrors();
});
