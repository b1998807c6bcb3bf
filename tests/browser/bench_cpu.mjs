// Prefill and decode tokens/s in headless Chromium, one run on the same GGUF files: webvlm's
// CPU engine (the relaxed-SIMD build and the plain SIMD128 one), wllama (llama.cpp compiled to
// wasm: npm @wllama/wllama, its CPU path with `n_gpu_layers: 0`) at each thread count, and
// webvlm's WebGPU engine on SwiftShader (SmolLM2 only: larger models take minutes a token
// there). Each engine runs the same chat request greedily with the end-of-turn tokens
// banned (`logit_bias`), so that every run decodes `--decode` tokens, and reports its own
// timings: webvlm's `usage.timings`, llama-server's `timings` in wllama. The page is
// cross-origin isolated (COOP/COEP), which wllama's threads need. With `--llama-bench`, native
// llama.cpp (its `llama-bench`: `-p PROMPT`, and `-n DECODE` after `-d PROMPT` tokens in the
// cache, 3 repetitions) on the same files at the same thread counts, after the browser runs.
//
//   node tests/browser/bench_cpu.mjs --wllama DIR [--prompt 256] [--decode 64] [--threads "1 2"]
//        [--gpu-model NAME] [--llama-bench BIN] MODEL.gguf...
// DIR: wllama's `esm/` folder (scripts/bench_browser_cpu.sh installs it). Prints one JSON line
// per run, a Markdown table of the runs and one of webvlm's ratios to wllama (and native
// llama.cpp) at each thread count.

import { execFileSync } from "node:child_process";
import path from "node:path";
import { parseArgs } from "node:util";
import { ISOLATION_HEADERS, startServer } from "./server.js";
import { launchBrowser } from "./harness.js";

const { values: o, positionals: models } = parseArgs({
  allowPositionals: true,
  options: {
    wllama: { type: "string" },
    prompt: { type: "string", default: "256" },
    decode: { type: "string", default: "64" },
    threads: { type: "string", default: "1 2" },
    "gpu-model": { type: "string", default: "SmolLM2-135M-Instruct.Q4_1.gguf" },
    "llama-bench": { type: "string" },
  },
});
if (!o.wllama || models.length === 0) throw new Error("usage: bench_cpu.mjs --wllama DIR MODEL.gguf...");
const threads = o.threads.split(/\s+/).filter(Boolean).map(Number);
const [promptTokens, decodeTokens] = [Number(o.prompt), Number(o.decode)];

// About `promptTokens` tokens of English in SmolLM2's tokenizer (~1.2 tokens per word).
const words = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge its form".split(" ");
const prompt = Array.from({ length: Math.round(promptTokens / 1.25) }, (_, i) => words[i % words.length]).join(" ");
const request = {
  messages: [{ role: "user", content: prompt }], max_tokens: decodeTokens, temperature: 0,
  // SmolLM2's <|endoftext|> and <|im_end|>: every run decodes max_tokens.
  logit_bias: { 0: -100, 2: -100 },
};

/**
 * The warm-up request before each measured one: its own short message, so that the measured
 * prompt shares only the chat template's opening with it (the prompt caches of both engines
 * would reuse a longer shared prefix). Prompt tokens are those each engine processed.
 */
const WARM_UP = { messages: [{ role: "user", content: "Hello" }], max_tokens: 2 };

const dirs = [...new Set(models.map((m) => path.dirname(path.resolve(m))))];
const mounts = { "/npm/": "pkg", "/wllama/": o.wllama, "/test/": "tests/browser/pages" };
dirs.forEach((d, i) => { mounts[`/m${i}/`] = d; });
const url = (m) => `/m${dirs.indexOf(path.dirname(path.resolve(m)))}/${path.basename(m)}`;
const server = await startServer({
  mounts, headers: ISOLATION_HEADERS,
});
const browser = await launchBrowser();
const rows = [];

async function run(label, model, fn, arg) {
  const page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
  try {
    const r = await page.evaluate(fn, [...arg, WARM_UP]); // the page function's last argument
    const row = { engine: label, model: path.basename(model), ...r };
    console.log(JSON.stringify(row));
    rows.push(row);
  } catch (e) {
    console.log(JSON.stringify({ engine: label, model: path.basename(model), error: String(e.message ?? e).slice(0, 300) }));
  } finally {
    await page.close();
  }
}

async function webvlm([model, options, request, warmUp]) {
  const { createEngine } = await import("/npm/index.js");
  const engine = await createEngine({ model: { text: model }, cacheName: null, engine: { maxContext: 2048 }, ...options });
  await engine.chat.completions.create({ ...request, ...warmUp }); // compiles, allocates
  const r = await engine.chat.completions.create(request);
  await engine.unload();
  const t = r.usage.timings;
  return {
    isolated: crossOriginIsolated, backend: `${engine.info.backend.name} ${engine.info.backend.build}`,
    promptTokens: r.usage.prompt_tokens - (r.usage.prompt_tokens_details?.cached_tokens ?? 0), decodeTokens: r.usage.completion_tokens,
    prefill: t.prefill_tokens_per_second, decode: t.decode_tokens_per_second,
  };
}

async function wllama([model, threads, request, warmUp]) {
  const { Wllama } = await import("/wllama/index.js");
  const w = new Wllama({ default: "/wllama/wasm/wllama.wasm" }, { suppressNativeLog: true });
  await w.loadModelFromUrl(model, { n_threads: threads, n_ctx: 2048, n_gpu_layers: 0, useCache: false });
  await w.createChatCompletion({ ...request, ...warmUp });
  const r = await w.createChatCompletion(request);
  await w.exit();
  const t = r.timings;
  return {
    isolated: crossOriginIsolated, promptTokens: t.prompt_n, decodeTokens: t.predicted_n,
    prefill: t.prompt_per_second, decode: t.predicted_per_second,
  };
}

for (const model of models) {
  for (const n of threads) {
    if (n === 1) {
      await run("webvlm cpu (relaxed)", model, webvlm, [url(model), { backend: "cpu" }, request]);
      await run("webvlm cpu (simd128)", model, webvlm, [url(model), { backend: "cpu", wasmBuild: "simd128" }, request]);
    } else {
      await run(`webvlm cpu ${n} threads`, model, webvlm, [url(model), { backend: "cpu", threads: n }, request]);
    }
    await run(`wllama ${n} thread${n > 1 ? "s" : ""}`, model, wllama, [url(model), n, request]);
  }
  if (path.basename(model) === o["gpu-model"]) {
    await run("webvlm webgpu (SwiftShader)", model, webvlm, [url(model), { backend: "webgpu" }, { ...request, max_tokens: 8 }]);
  }
}

await browser.close();
await server.close();

/** Native llama.cpp's mean tokens/s for `llama-bench` arguments `args` (one test). */
function llamaBench(model, n, args) {
  const out = execFileSync(o["llama-bench"], ["-m", model, "-t", String(n), ...args, "-r", "3", "-o", "jsonl"], {
    encoding: "utf8", stdio: ["ignore", "pipe", "ignore"],
  });
  return JSON.parse(out.trim().split("\n").at(-1)).avg_ts;
}
if (o["llama-bench"]) {
  for (const model of models) {
    for (const n of threads) {
      const row = {
        engine: `llama.cpp native ${n} thread${n > 1 ? "s" : ""}`, model: path.basename(model), promptTokens: promptTokens,
        prefill: llamaBench(model, n, ["-p", String(promptTokens), "-n", "0"]),
        decode: llamaBench(model, n, ["-p", "0", "-n", String(decodeTokens), "-d", String(promptTokens)]),
      };
      console.log(JSON.stringify(row));
      rows.push(row);
    }
  }
}

const fmt = (v) => (typeof v === "number" ? v.toFixed(1) : "—");
console.log(`\n| Model | Engine | Prompt tokens processed | Prefill tok/s | Decode tok/s |\n|---|---|---|---|---|`);
for (const r of rows) console.log(`| ${r.model} | ${r.engine} | ${r.promptTokens} | ${fmt(r.prefill)} | ${fmt(r.decode)} |`);

// webvlm's best build at each thread count against the peers at that count.
const find = (model, engine) => rows.find((r) => r.model === model && r.engine === engine);
const ratio = (a, b, k) => (a && b && a[k] && b[k] ? `${(a[k] / b[k]).toFixed(2)}×` : "—");
console.log(`\n| Model | Threads | Prefill / wllama | Decode / wllama | Prefill / llama.cpp native | Decode / llama.cpp native |\n|---|---|---|---|---|---|`);
for (const model of models.map((m) => path.basename(m))) {
  for (const n of threads) {
    const s = n > 1 ? "s" : "";
    const ours = find(model, n === 1 ? "webvlm cpu (relaxed)" : `webvlm cpu ${n} threads`);
    const [wl, native] = [find(model, `wllama ${n} thread${s}`), find(model, `llama.cpp native ${n} thread${s}`)];
    const cells = [ratio(ours, wl, "prefill"), ratio(ours, wl, "decode"), ratio(ours, native, "prefill"), ratio(ours, native, "decode")];
    console.log(`| ${model} | ${n} | ${cells.join(" | ")} |`);
  }
}
