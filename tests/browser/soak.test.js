// The soak in Chromium (issue 15): the request mix of `webvlm soak` (text, images, streams
// completed and aborted at a random chunk, JSON schemas, bad requests that must fail with a
// given code, long system prompts that hit and overflow a small prompt cache) run against
// one engine in the page, sampling between requests the GPU memory of live buffers (counted
// by the package: createBuffer / destroy / garbage collection, `engine.stats()`), the wasm
// heap and the page's JS heap (CDP Performance.getMetrics' JSHeapUsedSize after CDP
// HeapProfiler.collectGarbage, V8's memory-pressure collection, which also clears caches a
// plain `gc()` keeps; the figure after `gc()` alone is reported too) and the private memory
// of the renderers and the GPU process (/proc). No request may fail other than as asked,
// GPU memory, the wasm heap, the JS heap and that process memory must be flat after the
// warm-up (within 5%; the plan opens with the requests that raise the high-water marks, the
// largest image and the first JSON schema), and greedy requests replayed on a fresh engine
// must give the same replies.
//
// The engine runs on the page's thread (`worker: false`), so that one CDP session sees its
// JS heap and `gc()` (`--js-flags=--expose-gc`) collects the buffers it dropped.
//
// SOAK_REQUESTS (default 40; the recorded run: 200) and SOAK_SEED (default 1) choose the mix;
// SOAK_SAMPLE_EVERY (default 10) how often memory is sampled.
// The figures are printed and written to target/browser-test-output/soak-browser.json.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { startServer, repoRoot } from "./server.js";
import { launchBrowser, requireWasmPackage, outputDir } from "./harness.js";

const REQUESTS = Number(process.env.SOAK_REQUESTS ?? 40);
const SEED = Number(process.env.SOAK_SEED ?? 1);
const SAMPLE_EVERY = Math.max(1, Number(process.env.SOAK_SAMPLE_EVERY ?? 10));
const WARMUP = Math.max(20, Math.floor(REQUESTS / 5));
const REPLAY = 6;
const TOLERANCE = 5;
let server, browser, settings, items;

before(async () => {
  requireWasmPackage();
  const args = ["run", "--quiet", "--bin", "webvlm", "--", "soak", "--plan", "--requests", String(REQUESTS),
    "--seed", String(SEED), "--max-tokens", "4", "--replay", String(REPLAY)];
  const run = spawnSync("cargo", args, { cwd: repoRoot, encoding: "utf8", maxBuffer: 1 << 28 });
  if (run.status !== 0) throw new Error(`webvlm soak --plan failed (status ${run.status}):\n${run.stderr}`);
  const lines = run.stdout.trim().split("\n").map((l) => JSON.parse(l));
  settings = lines[0].settings;
  items = lines.slice(1);
  server = await startServer();
  browser = await launchBrowser({ args: ["--js-flags=--expose-gc"] });
});

after(async () => {
  await browser?.close();
  await server?.close();
});

/** Memory of the Chromium processes that hold the engine: the renderers (the page's wasm heap,
 * JS heap and compiled code) and the GPU process (SwiftShader's buffers and shaders). Their
 * private dirty pages (what each process wrote of its own: heaps, not shared libraries, so
 * other Chromium instances on the machine do not move it), summed over this test process's
 * descendants in /proc; 0 where there is no /proc. The browser and utility processes are
 * left out: Chromium starts some of those on its own timers mid-run (an on-device model
 * service of ~50 MB). */
function enginePrivateBytes() {
  if (!fs.existsSync("/proc/self/status")) return 0;
  const read = (pid, file) => fs.readFileSync(`/proc/${pid}/${file}`, "utf8");
  const parentOf = new Map();
  for (const pid of fs.readdirSync("/proc").filter((n) => /^\d+$/.test(n))) {
    try {
      // "pid (comm) state ppid ...", where comm may hold spaces and parentheses.
      const stat = read(pid, "stat");
      parentOf.set(Number(pid), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch { /* it ended meanwhile */ }
  }
  const descends = (pid) => {
    for (let p = parentOf.get(pid); p; p = parentOf.get(p)) if (p === process.pid) return true;
    return false;
  };
  let bytes = 0;
  for (const pid of [...parentOf.keys()].filter(descends)) {
    try {
      if (!/--type=(renderer|gpu-process)\b/.test(read(pid, "cmdline").replaceAll("\0", " "))) continue;
      bytes += Number(read(pid, "smaps_rollup").match(/^Private_Dirty:\s+(\d+) kB/m)?.[1] ?? 0) * 1024;
    } catch { /* it ended meanwhile */ }
  }
  return bytes;
}

/** Runs `batch` (planned items) in the page against `globalThis.soakEngine`; returns each
 * one's outcome: `{finish, text, cached}` or `{error: "code/param", name, message}`. */
function runInPage(page, batch) {
  return page.evaluate(async (batch) => {
    const engine = globalThis.soakEngine;
    const one = async (item) => {
      try {
        if (item.raw !== undefined) {
          // Not JSON: only a raw body can say so (through the engine's fetch).
          const r = await engine.fetch("http://webvlm.local/v1/chat/completions",
            { method: "POST", headers: { "content-type": "application/json" }, body: item.raw });
          const j = await r.json();
          if (!r.ok) return { error: `${j.error.code}/${j.error.param ?? "-"}`, message: j.error.message };
          return { finish: j.choices[0].finish_reason, text: j.choices[0].message.content, cached: 0 };
        }
        const body = item.body;
        if (!body.stream) {
          const r = await engine.chat.completions.create(body);
          return { finish: r.choices[0].finish_reason, text: r.choices[0].message.content,
            cached: r.usage?.prompt_tokens_details?.cached_tokens ?? 0 };
        }
        // Aborted streams: odd requests through an AbortSignal, even ones by leaving the loop.
        const ctl = new AbortController();
        const useSignal = item.abort_after !== undefined && item.i % 2 === 1;
        const stream = await engine.chat.completions.create({ ...body, signal: useSignal ? ctl.signal : undefined });
        let n = 0, text = "", finish = null, cached = 0;
        for await (const c of stream) {
          const d = c.choices[0]?.delta?.content;
          if (d) { text += d; n++; }
          finish = c.choices[0]?.finish_reason ?? finish;
          if (c.usage) cached = c.usage.prompt_tokens_details?.cached_tokens ?? 0;
          if (item.abort_after !== undefined && n >= item.abort_after && !ctl.signal.aborted) {
            if (useSignal) ctl.abort();
            else { finish = "abort"; break; }
          }
        }
        return { finish, text, cached };
      } catch (e) {
        if (e?.name === "AbortError") return { finish: "abort", text: "", cached: 0 };
        return { error: `${e.code ?? e.name}/${e.param ?? "-"}`, name: e.name, message: e.message };
      }
    };
    const out = [];
    for (const item of batch) out.push(await one(item));
    return out;
  }, batch);
}

test(`${REQUESTS} mixed requests against one engine in Chromium leave memory flat and replies unchanged`, async (t) => {
  const page = await browser.newPage();
  await page.goto(`${server.url}/test/blank.html`);
  const cdp = await browser.context.newCDPSession(page);
  await cdp.send("Performance.enable");
  const load = () => page.evaluate(async (s) => {
    const { createEngine } = await import("/pkg/index.js");
    globalThis.soakEngine = await createEngine({
      backend: "webgpu", model: { text: "/fixtures/tiny_mistral3_tekken/model.gguf", mmproj: "/fixtures/tiny_mistral3_tekken/mmproj.gguf" },
      worker: false, cacheName: null, engine: { maxContext: s.ctx, promptCacheBytes: s.prompt_cache_bytes },
    });
    return globalThis.soakEngine.info.adapter;
  }, settings);
  const adapter = await load();
  const jsHeapUsed = async () =>
    (await cdp.send("Performance.getMetrics")).metrics.find((m) => m.name === "JSHeapUsedSize")?.value ?? 0;
  const sample = async (requests) => {
    const stats = await page.evaluate(() => globalThis.soakEngine.stats({ gc: true }));
    const jsHeapAfterGc = await jsHeapUsed();
    await cdp.send("HeapProfiler.collectGarbage");
    const jsHeap = await jsHeapUsed();
    return { requests, liveBuffers: stats.gpuBuffers.live, gpuBytes: stats.gpuBuffers.bytes,
      buffersCreated: stats.gpuBuffers.created, wasmBytes: stats.wasmMemoryBytes, jsHeapBytes: jsHeap, jsHeapAfterGc,
      processBytes: enginePrivateBytes(),
      promptCacheBytes: stats.promptCache?.savedBytes ?? 0, evicted: stats.promptCache?.evicted ?? 0 };
  };

  const started = performance.now();
  const samples = [await sample(0)];
  const kinds = {}, finishes = {}, expected = {}, unexpected = [];
  let hits = 0;
  const inSoak = [];
  for (let at = 0; at < items.length; at += SAMPLE_EVERY) {
    const batch = items.slice(at, at + SAMPLE_EVERY);
    const outcomes = await runInPage(page, batch);
    batch.forEach((item, k) => {
      const o = outcomes[k];
      kinds[item.kind] = (kinds[item.kind] ?? 0) + 1;
      const want = item.expect && `${item.expect.code}/${item.expect.param ?? "-"}`;
      if (o.error !== undefined && o.error === want) expected[o.error] = (expected[o.error] ?? 0) + 1;
      else if (o.error !== undefined) unexpected.push({ request: item.i, kind: item.kind, error: `${o.error} (${o.name}): ${o.message}` });
      else if (want) unexpected.push({ request: item.i, kind: item.kind, error: `succeeded (${o.finish}) where ${want} was expected` });
      else {
        finishes[o.finish] = (finishes[o.finish] ?? 0) + 1;
        if (o.cached >= 64) hits++;
        if (item.replay) inSoak.push(o.text);
      }
    });
    samples.push(await sample(Math.min(at + SAMPLE_EVERY, items.length)));
    const s = samples.at(-1);
    console.log(`# [${s.requests}/${items.length}] GPU ${s.gpuBytes} B in ${s.liveBuffers} buffers, wasm ${s.wasmBytes} B, JS heap ${s.jsHeapBytes} B (after gc() only ${s.jsHeapAfterGc} B), renderers + GPU process private ${s.processBytes} B`);
  }
  const soakSeconds = (performance.now() - started) / 1000;

  const replayed = items.filter((it) => it.replay);
  const texts = (outcomes) => outcomes.map((o) => o.text ?? `<error ${o.error}: ${o.message}>`);
  const soaked = texts(await runInPage(page, replayed));
  await page.evaluate(() => globalThis.soakEngine.unload());
  await load();
  const fresh = texts(await runInPage(page, replayed));
  await page.evaluate(() => globalThis.soakEngine.unload());

  const start = samples[0];
  const warm = samples.find((s) => s.requests >= WARMUP) ?? start;
  const end = samples.at(-1);
  const afterWarm = samples.filter((s) => s.requests >= warm.requests);
  const pct = (a, b) => (a === 0 ? (b === 0 ? 0 : Infinity) : ((b - a) / a) * 100);
  const drift = {};
  for (const key of ["gpuBytes", "wasmBytes", "jsHeapBytes", "jsHeapAfterGc", "processBytes"]) {
    drift[`${key}EndPct`] = pct(warm[key], end[key]);
    drift[`${key}MaxPct`] = pct(warm[key], Math.max(...afterWarm.map((s) => s[key])));
  }
  const summary = {
    requests: items.length, seed: SEED, warmup: WARMUP, adapter, soakSeconds, kinds, finishReasons: finishes,
    errors: { expected, unexpected: unexpected.length, unexpectedList: unexpected },
    promptCache: { hitsOf64TokensOrMore: hits, evicted: end.evicted, budgetBytes: settings.prompt_cache_bytes },
    memory: { start, afterWarmup: warm, end, drift, tolerancePct: TOLERANCE, samples },
    replay: { requests: replayed.length, equalEnd: JSON.stringify(soaked) === JSON.stringify(fresh),
      equalInSoak: JSON.stringify(inSoak) === JSON.stringify(fresh), fresh, soaked, inSoak },
  };
  fs.mkdirSync(outputDir, { recursive: true });
  fs.writeFileSync(path.join(outputDir, "soak-browser.json"), JSON.stringify(summary, null, 2) + "\n");
  const mib = (b) => (b / 2 ** 20).toFixed(2);
  console.log(`# soak (Chromium): ${items.length} requests in ${soakSeconds.toFixed(1)} s on ${adapter}`);
  console.log(`#   kinds ${JSON.stringify(kinds)}; finish reasons ${JSON.stringify(finishes)}`);
  console.log(`#   expected errors ${JSON.stringify(expected)}; unexpected ${unexpected.length}`);
  for (const u of unexpected.slice(0, 10)) console.log(`#     ${JSON.stringify(u)}`);
  console.log(`#   prompt cache: ${hits} hits of 64+ tokens, ${end.evicted} evictions`);
  for (const [name, s] of [["start", start], ["after warm-up", warm], ["end", end]]) {
    console.log(`#   memory at ${name} (request ${s.requests}): GPU ${mib(s.gpuBytes)} MiB in ${s.liveBuffers} buffers, wasm heap ${mib(s.wasmBytes)} MiB, JS heap ${mib(s.jsHeapBytes)} MiB, renderers + GPU process ${mib(s.processBytes)} MiB private`);
  }
  console.log(`#   drift after warm-up (%): ${JSON.stringify(drift)}`);
  console.log(`#   replay of ${replayed.length} greedy requests on a fresh engine: equal to the soaked engine's ${summary.replay.equalEnd}, to the soak's own ${summary.replay.equalInSoak}`);
  t.diagnostic(JSON.stringify({ requests: items.length, soakSeconds, unexpected: unexpected.length, drift }));

  assert.deepEqual(unexpected, []);
  for (const kind of ["text", "stream", "abort", "image", "json", "bad", "cached"]) assert.ok(kinds[kind] > 0, `no ${kind} request`);
  assert.equal(Object.values(expected).reduce((a, b) => a + b, 0), kinds.bad);
  assert.ok(hits > 0 && end.evicted > 0, `prompt cache: ${hits} hits, ${end.evicted} evictions`);
  assert.ok(start.gpuBytes > 0, "no GPU buffer was counted");
  for (const key of ["gpuBytes", "wasmBytes", "jsHeapBytes", "processBytes"]) {
    for (const k of [`${key}EndPct`, `${key}MaxPct`]) assert.ok(Math.abs(drift[k]) <= TOLERANCE, `${k} = ${drift[k]}%`);
  }
  assert.deepEqual(soaked, fresh, "replies of the soaked engine and a fresh one");
  assert.deepEqual(inSoak, fresh, "replies during the soak and of a fresh engine");
  browser.assertNoErrors();
});
