// Real OpenAI-compatible servers for the browser tests, started as child processes on a free
// port of 127.0.0.1 (remote_serve.test.js points the remote engine at them):
//
//   const s = await startWebvlmServe({ apiKey: "sk-x" });   // the tiny VLM, --cors '*'
//   s.url        // http://127.0.0.1:PORT/v1 (the baseURL)
//   s.apiKey, s.model, s.kind, s.features, s.output()   // what it logged (stdout + stderr)
//   await s.post("/chat/completions", body)            // from node, with the key: parsed JSON
//   await s.health()                                   // webvlm serve's GET /health, or null
//   await s.close();                                   // ends its whole process group
//
// `serverTargets()` lists the kinds this machine can start, each `{kind, start(opts)}` with
// its kind's facts; `start` gives the object above, with them too. The facts (`KINDS`) are
// the one place where the kinds differ, so that a test skips or adapts only where a kind
// lacks something. `features`:
//   vision        takes image_url parts (`image` is a data: URL it reads)
//   health        GET /health with webvlm serve's counters (queue.running, requests.aborted)
//   queueLimit    start({queue: 0}) refuses a second request with 429 while one runs
//   errorFields   a request failing validation is a 400 with OpenAI's `param` and `code`
//   modelNotFound a request naming a model it does not serve is a 404 (else it is answered)
//   streamUsage   stream_options.include_usage adds a last chunk with `usage`
// and besides them:
//   invalid       how it refuses a request failing validation (`temperature: "hot"`): the
//                 HTTP `status` and the named error (`error`) the remote engine makes of it
//   aborted       a RegExp (flag g) matching what it logs when a client leaves a stream
//                 and the generation stops before its end
//   long          request fields that keep the model from stopping early (for abort and queue
//                 tests; the tiny models end quickly otherwise)
//
// webvlm serve: the debug binary `${CARGO_TARGET_DIR:-target}/debug/webvlm` (WEBVLM_BIN
// overrides; build.sh builds it before the browser tests) with the tiny Mistral 3 VLM
// fixture; it prints `webvlm serve: MODEL on http://ADDR/v1` as its first stdout line.
//
// llama.cpp's server (`python -m llama_cpp.server` from `llama-cpp-python[server]`) with the
// text-only SmolLM2-135M-Instruct: listed when LLAMA_CPP_PYTHON names a python (one without
// the package fails to start, with its output), SmolLM2's GGUF at SMOLLM2_GGUF (default: where
// scripts/fetch_smollm2.sh puts it). Checked with llama-cpp-python 0.3.36: it has no image
// input, no /health, no queue limit (it runs one request at a time, the others wait); a
// field of the wrong type is a 500 whose message is pydantic's (param and code null); it
// answers a request for any model name (echoing it) and takes max_tokens 0 for "no limit";
// its streams never carry usage (stream_options or not); it lists the --model_alias in
// /v1/models, refuses a wrong or missing key with 401, and its CORS lets the page's
// Authorization through. Started with `--interrupt_requests False`: by default a new request
// ends the stream running, which would let an abort test pass without the server noticing
// the disconnect. And on one thread: SmolLM2 needs no more (about 60 tokens/s), and with
// llama.cpp's default two prompt threads on a busy 2-core machine a 10-token prompt took 4 to
// 12 s (its workers spin-wait for each other), against 0.1 to 0.2 s.

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { repoRoot, cacheDir } from "./server.js";

export const TINY_VLM = path.join(repoRoot, "tests/fixtures/tiny_mistral3_tekken");

/** The webvlm binary the tests run. */
export function webvlmBin() {
  return process.env.WEBVLM_BIN
    || path.join(process.env.CARGO_TARGET_DIR ? path.resolve(process.env.CARGO_TARGET_DIR) : path.join(repoRoot, "target"), "debug/webvlm");
}

/** The tiny VLM's end-of-sequence id (tokenizer.ggml.eos_token_id of its model.gguf). */
const TINY_VLM_EOS = 2;

/** What each kind of server does, the one place where they differ (see the header). */
export const KINDS = {
  "webvlm serve": {
    features: { vision: true, health: true, queueLimit: true, errorFields: true, modelNotFound: true, streamUsage: true },
    invalid: { status: 400, error: "BadRequestError" },
    // On stderr, once the generation stopped.
    aborted: /aborted after (\d+) tokens/g,
    long: { logit_bias: { [TINY_VLM_EOS]: -100 } },
  },
  "llama.cpp server": {
    features: { vision: false, health: false, queueLimit: false, errorFields: false, modelNotFound: false, streamUsage: false },
    // Pydantic's message, `param` and `code` null.
    invalid: { status: 500, error: "RemoteServerError" },
    // Printed only when its stream loop is cancelled before the end, which ends the
    // generation: the tokens are drawn from a generator as the loop sends them.
    aborted: /Disconnected from client/g,
    // SmolLM2's <|im_end|> (2) and <|endoftext|> (0).
    long: { logit_bias: { 0: -100, 2: -100 } },
  },
};

/** The servers this machine can start, webvlm serve first: `{kind, start, ...KINDS[kind]}`. */
export function serverTargets() {
  const targets = [{ kind: "webvlm serve", start: startWebvlmServe }];
  if (process.env.LLAMA_CPP_PYTHON) targets.push({ kind: "llama.cpp server", start: startLlamaCppServer });
  return targets.map((t) => ({ ...KINDS[t.kind], ...t }));
}

/**
 * `webvlm serve` with the tiny VLM (model + mmproj), `--cors '*'`, `--port 0`.
 * @param {{apiKey?: string, queue?: number, ctx?: number, args?: string[]}} [opts]
 */
export async function startWebvlmServe({ apiKey = "sk-webvlm-test", queue, ctx = 1024, args = [] } = {}) {
  const bin = webvlmBin();
  if (!fs.existsSync(bin)) throw new Error(`${bin} is missing: run cargo build --bin webvlm first`);
  const argv = [
    "serve", "--port", "0", "--cors", "*",
    "--model", path.join(TINY_VLM, "model.gguf"), "--mmproj", path.join(TINY_VLM, "mmproj.gguf"),
    "--ctx", String(ctx), "--chunk", "16",
    ...(apiKey ? ["--api-key", apiKey] : []),
    ...(queue !== undefined ? ["--queue", String(queue)] : []),
    ...args,
  ];
  const child = spawnLogged(bin, argv);
  const line = await child.firstLine(60_000);
  const m = /^webvlm serve: (.+) on (http:\/\/\S+\/v1)\s*$/.exec(line ?? "");
  if (!m) {
    await child.kill();
    throw new Error(`webvlm serve did not start (first line ${JSON.stringify(line)}):\n${child.output()}`);
  }
  return handle(child, { kind: "webvlm serve", url: m[2], apiKey, model: m[1] });
}

/**
 * llama.cpp's server from llama-cpp-python with SmolLM2 (text only); the header says what it
 * was checked to do. It cannot take port 0: a free port is picked first, and should another
 * process take it meanwhile the server is started again on another.
 * @param {{apiKey?: string}} [opts]
 */
export async function startLlamaCppServer({ apiKey = "sk-llama-test" } = {}) {
  const python = process.env.LLAMA_CPP_PYTHON;
  const model = process.env.SMOLLM2_GGUF
    || path.join(cacheDir, "models/SmolLM2-135M-Instruct.Q4_1.gguf");
  if (!fs.existsSync(model)) throw new Error(`${model} is missing: run scripts/fetch_smollm2.sh (or set SMOLLM2_GGUF)`);
  const alias = "smollm2";
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}/v1`;
    const child = spawnLogged(python, [
      "-m", "llama_cpp.server", "--model", model, "--model_alias", alias, "--host", "127.0.0.1",
      "--port", String(port), "--n_ctx", "1024", "--api_key", apiKey, "--interrupt_requests", "False",
      "--n_threads", "1", "--n_threads_batch", "1",
    ], { PYTHONUNBUFFERED: "1" });
    const notReady = await waitForModel(child, url, apiKey, alias, 120_000);
    if (!notReady) return handle(child, { kind: "llama.cpp server", url, apiKey, model: alias });
    await child.kill();
    if (attempt < 3 && /address already in use/i.test(child.output())) continue;
    throw new Error(`llama.cpp's server ${notReady}:\n${child.output()}`);
  }
}

/** Polls `GET {url}/models` until it lists `id`: null then, else why not (it exited, or
 * `ms` passed). */
async function waitForModel(child, url, apiKey, id, ms) {
  const deadline = Date.now() + ms;
  while (!child.exited) {
    const list = await fetch(`${url}/models`, { headers: { authorization: `Bearer ${apiKey}` }, signal: AbortSignal.timeout(5000) })
      .then((r) => (r.ok ? r.json() : null)).catch(() => null);
    if (Array.isArray(list?.data) && list.data.some((m) => m?.id === id)) return null;
    if (Date.now() > deadline) return `did not list "${id}" at ${url}/models within ${ms / 1000} s`;
    await new Promise((r) => setTimeout(r, 250));
  }
  return "exited before it served";
}

/** A free TCP port on 127.0.0.1 (for servers that cannot take port 0). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** The process groups of the servers running: killed should this process exit (or be
 * interrupted) before closing them, since a group of its own does not get the terminal's ^C. */
const liveGroups = new Set();
const killGroup = (pid, signal) => {
  try { process.kill(-pid, signal); } catch { /* already gone */ }
};
const killLiveGroups = () => { for (const pid of liveGroups) killGroup(pid, "SIGKILL"); };
const EXIT_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"];
function onExitSignal(signal) {
  killLiveGroups();
  untrackGroups();
  // Die of the signal as without this listener, unless someone else handles it.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}
function trackGroup(pid) {
  if (liveGroups.size === 0) {
    process.on("exit", killLiveGroups);
    for (const s of EXIT_SIGNALS) process.on(s, onExitSignal);
  }
  liveGroups.add(pid);
}
function untrackGroups(pid) {
  if (pid !== undefined) liveGroups.delete(pid);
  if (pid === undefined || liveGroups.size === 0) {
    process.off("exit", killLiveGroups);
    for (const s of EXIT_SIGNALS) process.off(s, onExitSignal);
  }
}

/** A child process, the leader of a process group of its own (`kill()` ends the whole group:
 * a wrapper script's python too), whose stdout and stderr are kept; `firstLine()` is stdout's
 * first line. */
function spawnLogged(cmd, argv, env = {}) {
  const proc = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env }, detached: true });
  let out = "";
  let stdout = "";
  const waiters = [];
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  const c = {
    proc,
    exited: false,
    killed: false,
    output: () => out,
    firstLine(timeoutMs) {
      return new Promise((resolve) => {
        const timer = setTimeout(() => resolve(null), timeoutMs);
        const check = () => {
          const nl = stdout.indexOf("\n");
          if (nl >= 0 || c.exited) {
            clearTimeout(timer);
            resolve(nl >= 0 ? stdout.slice(0, nl) : null);
            return true;
          }
          return false;
        };
        if (!check()) waiters.push(check);
      });
    },
    /** SIGTERM to the group, SIGKILL after 5 s if the leader is still there; then SIGKILL to
     * whatever of the group outlived it. Resolves when the leader exited. */
    async kill() {
      if (proc.pid === undefined) return;
      c.killed = true;
      if (!c.exited) {
        killGroup(proc.pid, "SIGTERM");
        const timer = setTimeout(() => killGroup(proc.pid, "SIGKILL"), 5000);
        await exited;
        clearTimeout(timer);
      }
      killGroup(proc.pid, "SIGKILL");
      untrackGroups(proc.pid);
    },
  };
  if (proc.pid !== undefined) trackGroup(proc.pid);
  const wake = () => { for (let i = waiters.length - 1; i >= 0; i--) if (waiters[i]()) waiters.splice(i, 1); };
  proc.stdout.on("data", (d) => { stdout += d; out += d; wake(); });
  proc.stderr.on("data", (d) => { out += d; });
  proc.on("exit", (code, signal) => {
    c.exited = true;
    if (!c.killed) out += `\n(${path.basename(cmd)} exited: ${signal ?? `status ${code}`})\n`;
    wake();
  });
  proc.on("error", (e) => { out += `\n${cmd}: ${e.message}\n`; c.exited = true; wake(); });
  return c;
}

/** The object a `start` gives: the server's facts (with its kind's) plus node-side helpers. */
function handle(child, facts) {
  facts = { ...KINDS[facts.kind], ...facts };
  const origin = new URL(facts.url).origin;
  const auth = facts.apiKey ? { authorization: `Bearer ${facts.apiKey}` } : {};
  return {
    ...facts,
    pid: child.proc.pid,
    output: child.output,
    /** POST a JSON body to `{url}{route}` from node: `{status, body}` (body parsed when JSON). */
    async post(route, body, { signal } = {}) {
      const r = await fetch(facts.url + route, {
        method: "POST", headers: { ...auth, "content-type": "application/json" }, body: JSON.stringify(body), signal,
      });
      const text = await r.text();
      let parsed = text;
      try { parsed = JSON.parse(text); } catch { /* the text */ }
      return { status: r.status, body: parsed };
    },
    /** A streamed POST from node: the Response, its body unread. */
    stream(route, body, { signal } = {}) {
      return fetch(facts.url + route, {
        method: "POST", headers: { ...auth, "content-type": "application/json" }, body: JSON.stringify({ ...body, stream: true }), signal,
      });
    },
    /** webvlm serve's GET /health (no key needed); null for a server without it. */
    async health() {
      if (!facts.features.health) return null;
      return (await fetch(`${origin}/health`)).json();
    },
    close: () => child.kill(),
  };
}
