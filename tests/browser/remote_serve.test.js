// The remote engine in headless Chromium against real OpenAI-compatible servers
// (openai-servers.js: `webvlm serve` with the tiny VLM always; llama.cpp's server with the
// text-only SmolLM2 when LLAMA_CPP_PYTHON is set), each on another origin with an API key, as
// remote.test.js does against the mock:
//   - the demo page set to the remote server streams a reply about an image (a text question
//     for a text model) into the chat: the text shown is what the server answers the same
//     request with (from node, temperature 0), with its token counts where the server streams
//     usage, and the page downloaded no model weights; the official openai package in the page
//     streams from the server directly;
//   - a stream aborted by its AbortSignal ends with finish_reason "abort" and the server sees
//     the disconnect: it logs that the generation stopped early (webvlm serve's /health also
//     counts the request aborted, nothing running), and the next request is answered;
//   - `engine.batch` (each line its own request: no Batch API needed on the server) gives the
//     individual requests' answers, and a bad line the request's error;
//   - server errors are the package's named errors: a bad parameter the named error of the
//     server's status with its message (a 400 BadRequestError with `param` and `code` where
//     the server names them), an unknown model ModelNotSupportedError where the server checks,
//     a wrong key AuthenticationError; a full queue (a second server with --queue 0, held busy
//     from node) the rate-limit error with status 429;
//   - `fallback: "remote"` is taken when the page hides WebGPU, and the answer is the server's.
// What a kind of server lacks or does otherwise is in its facts (`features`, `invalid`,
// `aborted`: openai-servers.js); the tests skip or adapt only that.
//
// Needs `./build.sh wasm` (www/pkg/), `cargo build --bin webvlm` (build.sh's browser part does
// both) and `npm ci` here (the openai package).

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { startServer, DEFAULT_MOUNTS } from "./server.js";
import { inPage, launchBrowser, requireWasmPackage } from "./harness.js";
import { serverTargets, TINY_VLM } from "./openai-servers.js";

const MODEL = { text: "/fixtures/tiny_mistral3_tekken/model.gguf", mmproj: "/fixtures/tiny_mistral3_tekken/mmproj.gguf" };
const IMAGE_FILE = path.join(TINY_VLM, "img_84x56.png");
const IMAGE_URL = `data:image/png;base64,${fs.readFileSync(IMAGE_FILE).toString("base64")}`;
const KEY = "sk-remote-serve-test";
const MIN = 60_000;
const user = (content) => [{ role: "user", content }];
const withImage = (text) => user([{ type: "image_url", image_url: { url: IMAGE_URL } }, { type: "text", text }]);

/** What must match between two answers to one request (ids and timings differ). */
const answer = (c) => ({
  choices: c.choices.map((x) => ({ content: x.message.content, finish_reason: x.finish_reason })),
  prompt_tokens: c.usage?.prompt_tokens, completion_tokens: c.usage?.completion_tokens,
});

/** Polls `get()` until `done(value)`, at most `ms`: the last value. */
async function until(get, done, ms = 20_000) {
  const end = Date.now() + ms;
  let value;
  while (!done(value = await get()) && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  return value;
}

let web, browser, page;

before(async () => {
  requireWasmPackage();
  web = await startServer({ mounts: { ...DEFAULT_MOUNTS, "/openai/": "tests/browser/node_modules/openai" } });
  browser = await launchBrowser();
  page = await browser.newPage();
  await page.goto(`${web.url}/test/blank.html`);
  await inPage(page, async (api, _, s) => {
    s.describe = (e) => ({
      name: e?.name, message: String(e?.message ?? e), status: e?.status, param: e?.param, code: e?.code,
      named: typeof api[e?.name] === "function" && e instanceof api[e.name], webvlm: e instanceof api.WebvlmError,
    });
    s.settle = (p) => p.then((value) => ({ value }), (e) => ({ error: s.describe(e) }));
  });
});

after(async () => {
  browser?.saveLog("remote-serve");
  await browser?.close();
  await web?.close();
});

for (const target of serverTargets()) {
  describe(target.kind, () => {
    let srv;
    before(async () => {
      srv = await target.start({ apiKey: KEY });
    });
    after(async () => {
      await srv?.close();
    });
    const remote = () => ({ baseURL: srv.url, apiKey: KEY });

    test("the demo page set to the server streams its answer about an image into the chat, with no weights downloaded; the openai SDK in the page streams from it too", { timeout: 5 * MIN }, async (t) => {
      const demo = await browser.context.newPage();
      const posted = [];
      demo.on("request", (r) => {
        if (r.method() === "POST" && r.url() === `${srv.url}/chat/completions`) posted.push({ body: r.postDataJSON(), headers: r.headers() });
      });
      const since = web.log.length;
      await demo.goto(`${web.url}/index.html?temperature=0&max_tokens=12`);
      await demo.locator("#settings summary").click();
      await demo.fill("#settings-remote-url", srv.url);
      await demo.fill("#settings-remote-model", srv.model);
      await demo.fill("#settings-remote-key", KEY);
      await demo.selectOption("#model-select", "remote");
      await demo.click("#load");
      await demo.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, { timeout: MIN });
      const loaded = await demo.evaluate(() => ({ state: document.body.dataset.state, info: window.webvlmDemo.state.info, error: window.webvlmDemo.state.lastError }));
      assert.equal(loaded.state, "ready", JSON.stringify(loaded.error));
      assert.deepEqual([loaded.info.remote, loaded.info.model, loaded.info.baseURL], [true, srv.model, srv.url]);
      if (srv.features.vision) await demo.setInputFiles("#attach", IMAGE_FILE);
      const question = srv.features.vision ? "What is in this image?" : "What is the capital of France?";
      await demo.fill("#prompt", question);
      await demo.click("#send");
      await demo.waitForFunction(() => ["done", "stopped", "error"].includes(document.querySelector(".msg.assistant")?.dataset.state), null, { timeout: 2 * MIN });
      const shown = await demo.evaluate(() => ({
        state: document.querySelector(".msg.assistant").dataset.state,
        text: document.querySelector(".msg.assistant .content").textContent,
        last: window.webvlmDemo.state.lastReply,
        images: document.querySelectorAll(".msg.user .msg-images img").length,
      }));
      await browser.screenshot(demo, `remote-serve-demo-${srv.kind}`);
      await demo.close();

      assert.equal(shown.state, "done", JSON.stringify(shown.last?.error));
      assert.equal(posted.length, 1, "the demo sent one request");
      const sent = posted[0];
      assert.equal(sent.headers.authorization, `Bearer ${KEY}`);
      assert.deepEqual([sent.body.model, sent.body.stream, sent.body.temperature, sent.body.max_tokens], [srv.model, true, 0, 12]);
      if (srv.features.vision) {
        assert.equal(shown.images, 1);
        assert.equal(sent.body.messages.at(-1).content[0].image_url.url, IMAGE_URL, "the image reached the server changed");
      }
      // The same request from node, not streamed: the server's own answer.
      const { stream: _s, stream_options: _o, ...plain } = sent.body;
      const direct = await srv.post("/chat/completions", plain);
      assert.equal(direct.status, 200, JSON.stringify(direct.body));
      const want = direct.body.choices[0].message.content;
      t.diagnostic(`shown ${JSON.stringify(shown.text)}; the server's answer ${JSON.stringify(want)} (${direct.body.usage.completion_tokens} tokens, ${shown.last.deltas} deltas streamed)`);
      assert.ok(want.trim(), "the server answered nothing: the comparison proves little");
      assert.equal(shown.last.text, want);
      assert.equal(shown.text, want.trimStart(), "the chat shows another text (it drops leading whitespace only)");
      assert.equal(shown.last.finishReason, direct.body.choices[0].finish_reason);
      assert.deepEqual(sent.body.stream_options, { include_usage: true });
      if (srv.features.streamUsage) {
        assert.deepEqual(
          [shown.last.usage?.prompt_tokens, shown.last.usage?.completion_tokens],
          [direct.body.usage.prompt_tokens, direct.body.usage.completion_tokens],
        );
      } else {
        assert.equal(shown.last.usage, null, "usage from a server that streams none");
      }
      if (srv.features.vision) {
        // The image was part of the prompt, not dropped on the way.
        const textOnly = await srv.post("/chat/completions", { ...plain, messages: user(question) });
        assert.ok(direct.body.usage.prompt_tokens > textOnly.body.usage.prompt_tokens, "the image added no prompt tokens");
      }
      const weights = web.log.slice(since).filter((e) => e.path.startsWith("/fixtures/") || e.path.endsWith(".gguf"));
      assert.deepEqual(weights, [], "the page downloaded model files");

      // The official SDK in the page, straight to the server: its own headers pass CORS.
      const sdk = await inPage(page, async (api, [baseURL, key, model, messages]) => {
        const { default: OpenAI } = await import("/openai/index.mjs");
        const client = new OpenAI({ baseURL, apiKey: key, dangerouslyAllowBrowser: true, maxRetries: 0 });
        let text = "";
        for await (const c of await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, stream: true })) {
          text += c.choices[0]?.delta?.content ?? "";
        }
        return text;
      }, [srv.url, KEY, srv.model, user("Name three colors.")]);
      const sdkWant = await srv.post("/chat/completions", { model: srv.model, messages: user("Name three colors."), max_tokens: 8, temperature: 0 });
      assert.equal(sdk, sdkWant.body.choices[0].message.content);
    });

    test("a remote stream aborted by its signal ends with finish_reason \"abort\" and the server sees the disconnect", { timeout: 5 * MIN }, async (t) => {
      const before = await srv.health();
      const abortsLogged = () => [...srv.output().matchAll(srv.aborted)];
      const loggedBefore = abortsLogged().length;
      const r = await inPage(page, async (api, [remote, long], s) => {
        const engine = await api.createEngine({ remote });
        const ac = new AbortController();
        const chunks = [];
        const stream = await engine.chat.completions.create({
          messages: [{ role: "user", content: "Tell a long story." }], max_tokens: 400, temperature: 0, ...long, stream: true, signal: ac.signal,
        });
        for await (const c of stream) {
          chunks.push(c);
          if (chunks.length === 4) ac.abort();
        }
        const sent = performance.now();
        const next = await s.settle(engine.chat.completions.create({ messages: [{ role: "user", content: "hi" }], max_tokens: 2, temperature: 0 }));
        return {
          n: chunks.length,
          finish: chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean),
          last: chunks.at(-1),
          nextMs: performance.now() - sent,
          next: next.error ?? next.value.choices[0].finish_reason,
        };
      }, [remote(), srv.long]);
      t.diagnostic(`${r.n} chunks, finish ${JSON.stringify(r.finish)}; the next request took ${r.nextMs.toFixed(0)} ms`);
      assert.deepEqual(r.finish, ["abort"], "the stream did not end with finish_reason abort");
      assert.equal(r.n, 5, "chunks after the abort");
      assert.equal(r.last.model, srv.model);
      assert.ok(typeof r.next === "string", `the next request failed: ${JSON.stringify(r.next)}`);
      const logged = await until(abortsLogged, (l) => l.length > loggedBefore);
      assert.equal(logged.length, loggedBefore + 1, `the server logged no disconnect, or more than one:\n${srv.output().slice(-3000)}`);
      if (srv.features.health) {
        const after = await until(() => srv.health(), (h) => h.requests.aborted > before.requests.aborted && h.queue.running === 0);
        t.diagnostic(`/health before ${JSON.stringify(before.requests)}, after ${JSON.stringify(after.requests)}`);
        assert.equal(after.requests.aborted, before.requests.aborted + 1, `the server did not count the request aborted: ${JSON.stringify(after)}`);
        assert.equal(after.requests.completed, before.requests.completed + 1, "the next request");
        assert.deepEqual([after.queue.running, after.queue.waiting], [0, 0]);
        const tokens = Number(logged.at(-1)[1]);
        assert.ok(tokens < 400, `the server generated all ${tokens} tokens`);
      }
    });

    test("a batch through the remote engine gives the individual requests' answers, and a bad line that request's error", { timeout: 5 * MIN }, async () => {
      const lines = [
        { custom_id: "colors", body: { messages: user("Name three colors."), max_tokens: 6, temperature: 0 } },
        srv.features.vision
          ? { custom_id: "image", body: { messages: withImage("Describe this image."), max_tokens: 6, temperature: 0 } }
          : { custom_id: "count", body: { messages: user("Count to five."), max_tokens: 6, temperature: 0 } },
        { custom_id: "bad", body: { messages: user("hi"), temperature: "hot" } },
        { custom_id: "sky", body: { messages: user("Why is the sky blue?"), max_tokens: 5, temperature: 0, stop: ["\n\n"] } },
      ];
      const r = await inPage(page, async (api, [remote, lines], s) => {
        const engine = await api.createEngine({ remote });
        const progress = [];
        const results = await engine.batch(lines.map((l) => JSON.stringify(l)).join("\n"), { onProgress: (p) => progress.push([p.completed, p.failed]) });
        const single = [];
        for (const l of lines) single.push(await s.settle(engine.chat.completions.create(l.body)));
        return { results, single, progress };
      }, [remote(), lines]);
      assert.deepEqual(r.results.map((l) => [l.id, l.custom_id, l.response?.status_code ?? null]), [
        ["batch_req_0", lines[0].custom_id, 200], ["batch_req_1", lines[1].custom_id, 200], ["batch_req_2", "bad", null], ["batch_req_3", "sky", 200],
      ]);
      assert.deepEqual(r.progress, [[1, 0], [2, 0], [3, 1], [4, 1]]);
      for (const i of [0, 1, 3]) {
        assert.equal(r.results[i].error, null);
        assert.ok(r.single[i].value, `${lines[i].custom_id}: ${JSON.stringify(r.single[i].error)}`);
        assert.deepEqual(answer(r.results[i].response.body), answer(r.single[i].value), lines[i].custom_id);
      }
      const bad = r.single[2].error;
      assert.deepEqual([bad?.name, bad?.status], [srv.invalid.error, srv.invalid.status], JSON.stringify(r.single[2]));
      assert.deepEqual(r.results[2].error, { code: bad.code ?? bad.name, message: bad.message, param: bad.param ?? null });
      if (srv.features.errorFields) assert.equal(r.results[2].error.param, "temperature");
    });

    test("server errors are the package's named errors: a bad parameter with the server's message (and param), an unknown model, a wrong key", { timeout: 5 * MIN }, async (t) => {
      const r = await inPage(page, async (api, [remote, features], s) => {
        const engine = await api.createEngine({ remote });
        const ask = (extra, messages = [{ role: "user", content: "hi" }]) => s.settle(engine.chat.completions.create({ messages, max_tokens: 2, ...extra }));
        const connect = (more) => s.settle(api.createEngine({ remote: { ...remote, ...more } }));
        return {
          badType: await ask({ temperature: "hot" }),
          // llama.cpp's server takes max_tokens 0 for "no limit".
          badValue: features.errorFields ? await ask({ max_tokens: 0 }) : null,
          badStreamed: await ask({ temperature: "hot", stream: true }),
          badImage: features.vision ? await ask({}, [{ role: "user", content: [{ type: "image_url", image_url: { url: "http://127.0.0.1:9/cat.png" } }] }]) : null,
          unknownModel: await ask({ model: "no-such-model" }),
          wrongKey: await connect({ apiKey: "sk-wrong" }),
          noKey: await connect({ apiKey: undefined }),
          notServed: await connect({ model: "no-such-model" }),
        };
      }, [remote(), srv.features]);
      for (const [k, v] of Object.entries(r)) if (v) t.diagnostic(`${k}: ${JSON.stringify(v.error ?? v.value)}`);
      const named = (k, name, status) => {
        const e = r[k].error;
        assert.ok(e, `${k}: resolved ${JSON.stringify(r[k]).slice(0, 300)}`);
        assert.equal(e.name, name, `${k}: ${e.message}`);
        assert.ok(e.named && e.webvlm, `${k}: not an instance of the exported ${name}`);
        assert.ok([status].flat().includes(e.status), `${k}: status ${e.status}, not ${status}`);
        return e;
      };
      named("wrongKey", "AuthenticationError", 401);
      named("noKey", "AuthenticationError", 401);
      named("notServed", "ModelNotSupportedError", undefined);
      // A field of the wrong type, plain and streamed: the server's refusal (its status, its
      // message) as the named error of that status.
      const refusal = await srv.post("/chat/completions", { model: srv.model, messages: user("hi"), max_tokens: 2, temperature: "hot" });
      assert.equal(refusal.status, srv.invalid.status, JSON.stringify(refusal.body));
      for (const k of ["badType", "badStreamed"]) {
        const e = named(k, srv.invalid.error, srv.invalid.status);
        assert.equal(e.message, `${refusal.body.error.message} (HTTP ${srv.invalid.status} from POST ${srv.url}/chat/completions)`, k);
      }
      if (srv.features.errorFields) {
        named("badValue", "BadRequestError", 400);
        assert.equal(r.wrongKey.error.code, "invalid_api_key");
        assert.deepEqual([r.badType.error.param, r.badType.error.code], ["temperature", "invalid_type"]);
        assert.deepEqual([r.badValue.error.param, r.badValue.error.code], ["max_tokens", "invalid_value"]);
        assert.equal(r.badStreamed.error.param, "temperature");
      }
      if (srv.features.modelNotFound) {
        assert.equal(named("unknownModel", "ModelNotSupportedError", 404).param, "model");
      } else {
        assert.ok(r.unknownModel.value?.choices?.length, `refused: give ${srv.kind} modelNotFound (${JSON.stringify(r.unknownModel.error)})`);
      }
      if (srv.features.vision && srv.features.errorFields) {
        assert.deepEqual([named("badImage", "BadRequestError", 400).param, r.badImage.error.code], ["messages[0].content[0].image_url.url", "invalid_image_url"]);
      }
    });

    const noQueue = !target.features.queueLimit && `${target.kind} has no queue limit to fill`;
    test("a full queue (a second server with --queue 0, held busy from node) is the rate-limit error with status 429", { timeout: 5 * MIN, skip: noQueue }, async (t) => {
      // webvlm serve on lavapipe: the CPU backend could finish the holding request first.
      const busy = await target.start({ apiKey: KEY, queue: 0, args: ["--backend", "gpu"] });
      try {
        // Held busy from node: a long generation, its first chunk read (it runs).
        const hold = new AbortController();
        const holder = await busy.stream("/chat/completions", { model: busy.model, messages: user("Tell a long story."), max_tokens: 900, temperature: 0, ...busy.long }, { signal: hold.signal });
        assert.equal(holder.status, 200);
        const reader = holder.body.getReader();
        await reader.read();
        const q = await inPage(page, async (api, remote, s) => {
          const engine = await api.createEngine({ remote });
          const refused = await s.settle(engine.chat.completions.create({ messages: [{ role: "user", content: "hi" }], max_tokens: 2 }));
          const streamed = await s.settle(engine.chat.completions.create({ messages: [{ role: "user", content: "hi" }], max_tokens: 2, stream: true }));
          // The page can read the server's Retry-After (CORS exposes it).
          const raw = await fetch(`${remote.baseURL}/chat/completions`, {
            method: "POST", headers: { authorization: `Bearer ${remote.apiKey}`, "content-type": "application/json" },
            body: JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 2 }),
          });
          return { refused, streamed, raw: { status: raw.status, retryAfter: raw.headers.get("retry-after") } };
        }, { baseURL: busy.url, apiKey: KEY });
        const health = await busy.health();
        hold.abort();
        await reader.cancel().catch(() => {});
        t.diagnostic(`full queue: ${JSON.stringify(q)}; /health while held ${JSON.stringify(health)}`);
        assert.equal(health.queue.running, 1, "the holding request was no longer running: the 429s prove nothing");
        for (const k of ["refused", "streamed"]) {
          const e = q[k].error;
          assert.ok(e, `${k}: resolved ${JSON.stringify(q[k]).slice(0, 300)}`);
          assert.deepEqual([e.name, e.status, e.code, e.named], ["RemoteServerError", 429, "rate_limit_exceeded", true], `${k}: ${JSON.stringify(e)}`);
        }
        assert.deepEqual(q.raw, { status: 429, retryAfter: "1" });
      } finally {
        await busy.close();
      }
    });

    test("fallback: \"remote\" is taken when the page hides WebGPU, and the answer is the server's", { timeout: 5 * MIN }, async () => {
      const bare = await browser.context.newPage();
      await bare.addInitScript(() => { delete Navigator.prototype.gpu; });
      await bare.goto(`${web.url}/test/blank.html`);
      const since = web.log.length;
      const request = { messages: srv.features.vision ? withImage("What is this?") : user("What is this?"), max_tokens: 8, temperature: 0 };
      const r = await inPage(bare, async (api, [model, remote, request]) => {
        const engine = await api.createEngine({ backend: "webgpu", model, remote, fallback: "remote" });
        const reply = await engine.chat.completions.create(request);
        return { gpu: "gpu" in navigator, info: engine.info, reply };
      }, [MODEL, remote(), request]);
      await bare.close();
      assert.equal(r.gpu, false, "the init script did not hide WebGPU");
      assert.deepEqual([r.info.remote, r.info.baseURL, r.info.model], [true, srv.url, srv.model]);
      assert.equal(r.info.fallback?.reason, "NoWebGPUError", JSON.stringify(r.info));
      const direct = await srv.post("/chat/completions", { ...request, model: srv.model });
      assert.equal(direct.status, 200, JSON.stringify(direct.body));
      assert.deepEqual(answer(r.reply), answer(direct.body));
      assert.deepEqual(web.log.slice(since).filter((e) => e.path.startsWith("/fixtures/")), [], "the model was requested");
    });
  });
}

test("the pages logged no errors", () => {
  // The refused requests (401, 404, 429...) are logged by Chromium as failed resources.
  browser.assertNoErrors({ allowConsoleErrors: [/Failed to load resource/] });
});
