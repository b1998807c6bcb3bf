// The tiny Qwen3.5 VLM (hybrid Gated DeltaNet decoder + Qwen vision encoder) in headless
// Chromium through the npm package: its logits for the image prompts (one image, two, and one
// whose text runs behind its rows: a non-zero rope delta) match transformers' (the native
// tolerance), and a greedy answer about an image, with thinking switched off through
// `chat_template_kwargs`, equals the native CLI's.
//
// Needs `./build.sh wasm` (pkg/ and www/pkg/) and the native CLI (built here with cargo).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { startServer, repoRoot } from "./server.js";
import { inPage, launchBrowser, requireWasmPackage } from "./harness.js";

const TINY = "/fixtures/tiny_qwen35_a";
const MODEL = { text: `${TINY}/model.gguf`, mmproj: `${TINY}/mmproj.gguf` };
/** Relative L2 error allowed per logits position (as tests/model_qwen35_vision.rs). */
const TOL_LOGITS = 1e-3;
/** The fixture processor's area bounds (its `image_processor` in cases.json). */
const AREA = { min: 1024, max: 65536 };

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

test("the tiny Qwen3.5 VLM matches transformers with images and answers as the native CLI does", async (t) => {
  const info = await inPage(page, async (api, [model, area], s) => {
    const engine = { kvF16: false, imageMinArea: area.min, imageMaxArea: area.max };
    s.engine = await api.createEngine({ backend: "webgpu", model, engine, cacheName: "qwen35-test" });
    return s.engine.info;
  }, [MODEL, AREA]);
  t.diagnostic(`loaded: ${JSON.stringify(info)}`);
  assert.equal(info.vision, true);

  // Logits of every image case, compared in the page with the .npy reference.
  const cases = await inPage(page, async (api, dir, s) => {
    const all = (await (await fetch(`${dir}/cases.json`)).json()).image_cases;
    const out = [];
    for (const c of all) {
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
        rows.push({ rel: Math.sqrt(num / den), same: ag === aw });
      }
      out.push({ name: c.name, n: got.length, expected: want.length, rows });
    }
    return out;
  }, TINY);
  assert.equal(cases.length, 3);
  for (const c of cases) {
    assert.equal(c.n, c.expected, `${c.name}: logits length`);
    for (const [i, r] of c.rows.entries()) {
      assert.ok(r.rel <= TOL_LOGITS, `${c.name} position ${i}: rel L2 ${r.rel}`);
      assert.ok(r.same, `${c.name} position ${i}: argmax`);
    }
    t.diagnostic(`${c.name}: worst rel L2 ${Math.max(...c.rows.map((r) => r.rel)).toExponential(2)}`);
  }

  // A greedy answer about an image, against `webvlm generate` on the native adapter.
  const prompt = "Describe this image.";
  const image = "img_100x44.png";
  const reply = await inPage(page, async (api, [dir, image, prompt], s) => s.engine.chat.completions.create({
    messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: `${dir}/${image}` } }, { type: "text", text: prompt }] }],
    max_tokens: 8, temperature: 0, chat_template_kwargs: { enable_thinking: false },
  }), [TINY, image, prompt]);
  assert.equal(reply.object, "chat.completion");
  const fixture = (f) => path.join(repoRoot, "tests/fixtures/tiny_qwen35_a", f);
  const native = execFileSync("cargo", ["run", "--quiet", "--bin", "webvlm", "--", "generate", "--backend", "gpu",
    "--model", fixture("model.gguf"), "--mmproj", fixture("mmproj.gguf"), "--image", fixture(image),
    "--image-min-area", `${AREA.min}`, "--image-max-area", `${AREA.max}`,
    "--prompt", prompt, "--chat", "--no-think", "--max-tokens", "8", "--ctx", "4096"], { cwd: repoRoot, encoding: "utf8" });
  t.diagnostic(`browser: ${JSON.stringify(reply.choices[0].message.content)} native: ${JSON.stringify(native)}`);
  assert.ok(reply.usage.prompt_tokens > 30, `${reply.usage.prompt_tokens} prompt tokens (the image's included)`);
  assert.equal(reply.choices[0].message.content, native.replace(/\n$/, ""));
  browser.assertNoErrors();
});
