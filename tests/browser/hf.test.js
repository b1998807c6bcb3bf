// A Hugging Face repository in the browser through the npm package (`model: {repo, quant}`):
// the tiny Llama 3 of tests/fixtures/tiny_llama_hf (three BF16 safetensors shards) served as
// a repository folder, loaded at Q8_0; its greedy reply equals the native CLI's on the same
// folder; the converted model is kept in Cache Storage as one GGUF in place of the shards, so
// a reload loads it with no shard request and no conversion; an interrupted shard download
// resumes without refetching stored chunks; a malformed config.json is a
// ModelNotSupportedError; Hugging Face repository URLs resolve to their `resolve/main/` folder.
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

const FIXTURE = path.join(repoRoot, "tests/fixtures/tiny_llama_hf");
const REPO = "/fixtures/tiny_llama_hf";
const PROMPT = "Hello, how are you?";
const MAX_TOKENS = 8;
/** Small chunks, so that each shard (50-75 KB) is downloaded in several Range requests. */
const CHUNK = 16 << 10;

let server, browser, page;
/** The fixture with a config.json that is not JSON, served at /bad/. */
const badDir = fs.mkdtempSync(path.join(os.tmpdir(), "webvlm-badrepo-"));

before(async () => {
  requireWasmPackage();
  fs.cpSync(FIXTURE, badDir, { recursive: true });
  fs.writeFileSync(path.join(badDir, "config.json"), '{"architectures": ["LlamaForCausalLM"], "hidden_size": ');
  server = await startServer({ mounts: { ...DEFAULT_MOUNTS, "/bad/": badDir } });
  browser = await launchBrowser();
  page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
});

after(async () => {
  await browser?.close();
  await server?.close();
  fs.rmSync(badDir, { recursive: true, force: true });
});

const shardRequests = (since) => server.log.slice(since).filter((e) => e.path.endsWith(".safetensors"));

/** Loads the repository in the page and answers PROMPT greedily. */
function loadAndAsk(options) {
  return inPage(page, async (api, [o, prompt, maxTokens], s) => {
    s.engine?.unload();
    s.engine = await api.createEngine({ backend: "webgpu", model: { repo: o.repo, quant: "q8_0" }, chunkBytes: o.chunk, cacheName: o.cacheName });
    const reply = await s.engine.chat.completions.create({
      // Greedy, with the folder's other defaults (repetition_penalty 1.1), as `webvlm generate
      // --temperature 0` runs it.
      messages: [{ role: "user", content: prompt }], max_tokens: maxTokens, temperature: 0,
    });
    return { info: s.engine.info, text: reply.choices[0].message.content };
  }, [options, PROMPT, MAX_TOKENS]);
}

let native;

test("a repository loads at Q8_0 and answers as the native CLI does", async (t) => {
  const since = server.log.length;
  const r = await loadAndAsk({ repo: REPO, chunk: CHUNK, cacheName: "hf-test" });
  t.diagnostic(`loaded: ${JSON.stringify(r.info)}`);
  assert.equal(r.info.architecture, "llama");
  const shards = new Set(shardRequests(since).map((e) => e.path));
  assert.deepEqual([...shards].sort(), [1, 2, 3].map((i) => `${REPO}/model-0000${i}-of-00003.safetensors`));
  assert.ok(shardRequests(since).every((e) => e.range), "every shard request is a Range request");
  native = execFileSync("cargo", ["run", "--quiet", "--bin", "webvlm", "--", "generate", "--backend", "gpu", "--model", FIXTURE,
    "--quant", "q8_0", "--prompt", PROMPT, "--chat", "--max-tokens", `${MAX_TOKENS}`, "--temperature", "0", "--ctx", "4096"],
  { cwd: repoRoot, encoding: "utf8" }).replace(/\n$/, "");
  t.diagnostic(`browser: ${JSON.stringify(r.text)} native: ${JSON.stringify(native)}`);
  assert.equal(r.text, native);
  assert.equal(r.info.converted.state, "stored");
  const cached = await page.evaluate(async () => (await import("/pkg/source.js")).cacheContents("hf-test"));
  const urls = cached.entries.filter((e) => e.chunks > 0).map((e) => e.url.replace(/^.*\//, ""));
  assert.deepEqual(urls, ["webvlm-converted-q8_0.gguf"], "the converted GGUF replaced the shards");
  browser.assertNoErrors();
});

test("a reload loads the converted repository from Cache Storage with no shard request", async () => {
  assert.ok(native !== undefined, "the first test ran");
  await page.reload();
  const since = server.log.length;
  const r = await loadAndAsk({ repo: REPO, chunk: CHUNK, cacheName: "hf-test" });
  assert.deepEqual(shardRequests(since), [], "shard requests after the reload");
  assert.equal(r.info.networkBytes, 0);
  assert.equal(r.info.converted.state, "reused");
  assert.equal(r.text, native);
});

test("an interrupted shard download resumes without refetching stored chunks", async () => {
  const shard = "model-00002-of-00003.safetensors";
  const cut = 2 * CHUNK; // fail the third chunk of shard 2, once
  let failed = false;
  server.intercept = (req, res) => {
    if (!failed && req.url.endsWith(shard) && req.headers.range === `bytes=${cut}-${cut + CHUNK - 1}`) {
      failed = true;
      res.writeHead(503);
      res.end();
      return true;
    }
    return false;
  };
  const first = await inPage(page, async (api, [repo, chunk]) => {
    try {
      await api.createEngine({ backend: "webgpu", model: { repo }, chunkBytes: chunk, cacheName: "hf-resume-test" });
      return "loaded";
    } catch (e) {
      return e.name;
    }
  }, [REPO, CHUNK]);
  server.intercept = null;
  assert.equal(first, "DownloadError");
  const since = server.log.length;
  const r = await loadAndAsk({ repo: REPO, chunk: CHUNK, cacheName: "hf-resume-test" });
  assert.equal(r.text, native);
  // `bytes=0-0` asks for the size of a shard with no completed download, `bytes=0-65535` reads
  // its header for the memory plan (source.js); the rest are chunks.
  const starts = shardRequests(since).filter((e) => e.path.endsWith(shard) && !["bytes=0-0", "bytes=0-65535"].includes(e.range))
    .map((e) => Number(e.range.replace("bytes=", "").split("-")[0]));
  assert.ok(starts.includes(cut), `the failed chunk is fetched again: ${JSON.stringify(starts)}`);
  assert.ok(!starts.includes(0) && !starts.includes(CHUNK), `chunks stored before the failure are not fetched again: ${JSON.stringify(starts)}`);
  const other = shardRequests(since).filter((e) => e.path.endsWith("model-00001-of-00003.safetensors") && e.range !== "bytes=0-65535");
  assert.deepEqual(other, [], "a shard stored whole is not fetched again (its header only, for the plan)");
});

test("the memory plan picks the quantization and refuses a model that cannot fit, before the download", async () => {
  const load = (engine) => inPage(page, async (api, [repo, engine]) => {
    try {
      const e = await api.createEngine({ backend: "webgpu", model: { repo }, engine, cacheName: null });
      const info = e.info;
      await e.unload();
      return { info };
    } catch (e) {
      return { error: `${e.name}: ${e.message}` };
    }
  }, [REPO, engine]);
  const fits = await load({});
  assert.equal(fits.info.memoryPlan.quant, "q8_0", JSON.stringify(fits));
  const q8 = fits.info.memoryPlan.totalBytes;
  assert.ok(q8 > 0 && fits.info.weightBytes <= q8);
  // One byte short of the Q8_0 plan: the plan takes 4 bits.
  const smaller = await load({ gpuMemory: String(q8 - 1) });
  assert.equal(smaller.info?.memoryPlan.quant, "q4_0", JSON.stringify(smaller));
  assert.ok(smaller.info.memoryPlan.totalBytes <= q8 - 1);
  const since = server.log.length;
  const refused = await load({ gpuMemory: "64K" });
  assert.match(refused.error ?? "", /^AdapterTooSmallError: .*(context)/, JSON.stringify(refused));
  const shards = shardRequests(since);
  assert.equal(shards.length, 3, "one header request per shard");
  assert.ok(shards.every((e) => e.range === "bytes=0-65535"), `only the headers were read: ${JSON.stringify(shards.map((e) => e.range))}`);
});

test("a malformed config.json is a ModelNotSupportedError, a bad quant a BadRequestError", async () => {
  const names = await inPage(page, async (api) => {
    const load = async (model) => {
      try {
        await api.createEngine({ backend: "webgpu", model, cacheName: null });
        return "loaded";
      } catch (e) {
        return `${e.name}: ${e.message}`;
      }
    };
    return [await load({ repo: "/bad/" }), await load({ repo: "/fixtures/tiny_llama_hf", quant: "q2_k" })];
  });
  assert.match(names[0], /^ModelNotSupportedError: .*config\.json/);
  assert.match(names[1], /^BadRequestError: model\.quant/);
});

test("Hugging Face repository URLs resolve to their resolve/main/ folder", async () => {
  const bases = await page.evaluate(async () => {
    const { repoBase } = await import("/pkg/repo.js");
    return [
      repoBase("https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"),
      repoBase("https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/resolve/main/"),
      repoBase("https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/resolve/abc123"),
      repoBase("/fixtures/tiny_llama_hf"),
    ];
  });
  assert.deepEqual(bases, [
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/resolve/main/",
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/resolve/main/",
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/resolve/abc123/",
    `${server.url}/fixtures/tiny_llama_hf/`,
  ]);
});
