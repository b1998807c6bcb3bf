// Llama 3.2 Vision (Mllama) in the browser through the npm package: the tiny random model of
// tests/fixtures/tiny_mllama_b (six F16 safetensors shards, the vision encoder beside the
// text model) served as a Hugging Face repository and loaded at Q8_0; its greedy answer about
// an image equals the native CLI's on the same folder; a reload loads the converted model
// from Cache Storage with no shard request.
//
// Needs `./build.sh wasm` (pkg/ and www/pkg/) and the native CLI (built here with cargo).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { startServer, repoRoot } from "./server.js";
import { inPage, launchBrowser, requireWasmPackage } from "./harness.js";

const FOLDER = "tests/fixtures/tiny_mllama_b";
const REPO = "/fixtures/tiny_mllama_b";
const IMAGE = "img_50x24.png";
const QUESTION = "What is in this image?";
const MAX_TOKENS = 8;

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

const shardRequests = (since) => server.log.slice(since).filter((e) => e.path.endsWith(".safetensors"));

/** Loads the repository in the page and asks QUESTION about IMAGE greedily. */
function loadAndAsk() {
  return inPage(page, async (api, [repo, image, question, maxTokens], s) => {
    s.engine?.unload();
    s.engine = await api.createEngine({ backend: "webgpu", model: { repo, quant: "q8_0" }, chunkBytes: 64 << 10, cacheName: "mllama-test" });
    const reply = await s.engine.chat.completions.create({
      messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: `${repo}/${image}` } }, { type: "text", text: question }] }],
      max_tokens: maxTokens, temperature: 0,
    });
    return { info: s.engine.info, text: reply.choices[0].message.content, usage: reply.usage };
  }, [REPO, IMAGE, QUESTION, MAX_TOKENS]);
}

let native;

test("a Llama 3.2 Vision repository answers about an image as the native CLI does", async (t) => {
  const since = server.log.length;
  const r = await loadAndAsk();
  t.diagnostic(`loaded: ${JSON.stringify(r.info)} usage: ${JSON.stringify(r.usage)}`);
  assert.equal(r.info.architecture, "mllama");
  assert.equal(shardRequests(since).length > 6, true, "six shards, in Range chunks");
  assert.equal(r.info.converted.state, "stored");
  // The browser's SwiftShader has no shader-f16: the CLI runs without f16 matmuls too.
  native = execFileSync("cargo", ["run", "--quiet", "--bin", "webvlm", "--", "generate", "--backend", "gpu", "--model", path.join(repoRoot, FOLDER),
    "--quant", "q8_0", "--image", path.join(repoRoot, FOLDER, IMAGE), "--prompt", QUESTION, "--chat",
    "--max-tokens", `${MAX_TOKENS}`, "--temperature", "0", "--ctx", "4096", "--no-f16"],
  { cwd: repoRoot, encoding: "utf8" }).replace(/\n$/, "");
  t.diagnostic(`browser: ${JSON.stringify(r.text)} native: ${JSON.stringify(native)}`);
  assert.ok(r.text.length > 0);
  assert.equal(r.text, native);
  browser.assertNoErrors();
});

test("a reload loads the converted Llama 3.2 Vision from Cache Storage with no shard request", async () => {
  assert.ok(native !== undefined, "the first test ran");
  await page.reload();
  const since = server.log.length;
  const r = await loadAndAsk();
  assert.deepEqual(shardRequests(since), [], "shard requests after the reload");
  assert.equal(r.info.converted.state, "reused");
  assert.equal(r.info.networkBytes, 0);
  assert.equal(r.text, native);
});
