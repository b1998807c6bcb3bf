// A tiny static file server for the browser tests (Node built-ins only).
//
//   const server = await startServer();  // www/ at /, tests/fixtures/ at /fixtures/,
//                                        // tests/browser/pages/ at /test/
//   await page.goto(server.url + "/index.html");
//   server.log          // every request: { method, path, query, range, referer, status, bytes,
//                       //   start, end, time; body, bodyBytes for methods other than GET/HEAD }
//   server.requests(p)  // the log entries whose path matches p (string prefix or RegExp)
//   server.clearLog();
//   server.intercept = (req, res, entry) => true;   // handle a request yourself (faults, slow
//                                                   // responses, dropped connections); falsy: default
//   await server.close();
//
// Single byte ranges (`bytes=a-b`, `bytes=a-`, `bytes=-n`) get 206 with Content-Range; an
// unsatisfiable one gets 416; anything else (several ranges, other units) gets the whole file
// with 200, as RFC 9110 allows. Every response carries `Cache-Control: no-store`, so the
// browser's HTTP cache never answers for us: what the page fetched is exactly what the log
// shows, and a test that finds no weight request on reload proves the page's own cache did
// the work. CORS is open so that a second server can play a cross-origin weight host.
//
// `csp: true` (or `{ connectSrc: [origins] }`) sends the demo's Content-Security-Policy
// (`demoCsp()`, with `Referrer-Policy: no-referrer`, `X-Content-Type-Options: nosniff` and
// cross-origin isolation, COOP and COEP: the CPU backend's threads need it) on every response: the page's documents, and the scripts whose response sets the policy of the
// workers they start (the engine's module worker, the service worker). Off by default: test
// pages with inline scripts and pages that fetch from a second origin run without it.
//
// Also usable by hand: `node tests/browser/server.js [--port 8080] [--root www]
// [--connect-src ORIGIN]... [--no-csp]`; by hand the policy is on (what `./build.sh serve` uses).

import http from "node:http";
import fs from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
/** Where scripts/fetch_smollm2.sh puts real models (`models/`): $WEBVLM_CACHE (./build.sh sets
 *  it; relative: to the repository), by default `${XDG_CACHE_HOME:-~/.cache}/webvlm`. */
export const cacheDir = process.env.WEBVLM_CACHE
  ? path.resolve(repoRoot, process.env.WEBVLM_CACHE)
  : path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache"), "webvlm");

const MIME = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".map": "application/json; charset=utf-8",
  ".txt": "text/plain; charset=utf-8",
  ".md": "text/markdown; charset=utf-8",
  ".ts": "text/plain; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".gif": "image/gif",
  ".webp": "image/webp",
  ".ico": "image/x-icon",
  ".wasm": "application/wasm",
  ".wgsl": "text/plain; charset=utf-8",
};

/** Hosts a Hugging Face download touches: the resolve URL, then its redirect to a CDN
 * (cdn-lfs*.huggingface.co, cdn-lfs*.hf.co, cas-bridge.xethub.hf.co). */
export const HF_ORIGINS = ["https://huggingface.co", "https://*.huggingface.co", "https://*.hf.co"];

/**
 * The demo's Content-Security-Policy. Scripts, styles, workers and images come from the page's
 * own origin only (no inline script or style, no eval; `'wasm-unsafe-eval'` lets the engine
 * compile its wasm); images may also be blob: (attachments) and data: (the icon); nothing may
 * frame the page, change its base URL, submit a form or embed a plugin. The page may connect to
 * itself and to Hugging Face (the preset models); a remote server (Settings → Remote server)
 * must be named in `connectSrc` by whoever serves the page, or the browser refuses to connect
 * to it (the demo then says so).
 */
export function demoCsp({ connectSrc = [] } = {}) {
  return [
    "default-src 'self'",
    "script-src 'self' 'wasm-unsafe-eval'",
    "worker-src 'self'",
    `connect-src ${["'self'", ...HF_ORIGINS, ...connectSrc].join(" ")}`,
    "img-src 'self' blob: data:",
    "style-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "frame-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join("; ");
}

/** The headers `csp` adds (see startServer): the demo's policy, and cross-origin isolation
 * (COOP and COEP), without which a page has no shared memory for the CPU backend's threads. */
export function demoSecurityHeaders(options) {
  return {
    "Content-Security-Policy": demoCsp(options),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    ...ISOLATION_HEADERS,
  };
}

/** Cross-origin isolation: what a page needs for SharedArrayBuffer (the threaded wasm build). */
export const ISOLATION_HEADERS = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
};

export const DEFAULT_MOUNTS = { "/": "www", "/fixtures/": "tests/fixtures", "/test/": "tests/browser/pages" };

/** Parses a Range header against a file size: {start, end} (inclusive), "unsatisfiable", or null (serve whole). */
export function parseRange(header, size) {
  if (!header) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === "" && m[2] === "")) return null; // several ranges or another unit
  let start, end;
  if (m[1] === "") {
    const n = Number(m[2]); // suffix: the last n bytes
    if (n === 0) return "unsatisfiable";
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (m[2] !== "" && Number(m[2]) < start) return null; // invalid: ignore the header
  }
  if (start >= size || size === 0) return "unsatisfiable";
  return { start, end };
}

/**
 * Starts the server on 127.0.0.1 (port 0: any free port).
 * `mounts` maps URL prefixes to directories (relative to the repo root or absolute); the
 * longest matching prefix wins.
 */
export async function startServer({
  port = 0,
  mounts = DEFAULT_MOUNTS,
  headers = {},
  csp = false,
  quiet = true,
} = {}) {
  if (csp) headers = { ...demoSecurityHeaders(csp === true ? {} : csp), ...headers };
  const table = Object.entries(mounts)
    .map(([prefix, dir]) => [prefix.endsWith("/") ? prefix : prefix + "/", path.resolve(repoRoot, dir)])
    .sort((a, b) => b[0].length - a[0].length);

  const log = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    let pathname = null;
    try { pathname = decodeURIComponent(url.pathname); } catch { /* bad %-escape: 400 below */ }
    const entry = {
      method: req.method,
      path: pathname ?? url.pathname,
      query: url.search,
      range: req.headers.range ?? null,
      referer: req.headers.referer ?? null,
      status: 0,
      bytes: 0,
      start: null,
      end: null,
      time: Date.now(),
    };
    log.push(entry);
    res.on("finish", () => {
      entry.status = res.statusCode;
      if (!quiet) console.log(`${entry.method} ${entry.path}${entry.range ? ` [${entry.range}]` : ""} -> ${entry.status} ${entry.bytes}`);
    });
    res.on("close", () => { entry.status ||= res.statusCode; entry.aborted = !res.writableFinished; });
    res.setHeader("Access-Control-Allow-Origin", "*");
    res.setHeader("Access-Control-Expose-Headers", "Content-Range, Content-Length, Accept-Ranges, ETag, X-Linked-ETag");
    res.setHeader("Cache-Control", "no-store");
    for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
    if (pathname === null || pathname.includes("\0")) { res.writeHead(400); return res.end(); }
    if (srv.intercept && srv.intercept(req, res, entry)) return;
    serveFile(req, res, entry).catch((e) => {
      if (!res.headersSent) { res.statusCode = 500; res.end(String(e)); } else res.destroy();
    });
  });

  async function serveFile(req, res, entry) {
    if (req.method === "OPTIONS") {
      res.writeHead(204, {
        "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
        "Access-Control-Allow-Headers": req.headers["access-control-request-headers"] ?? "*",
        "Access-Control-Max-Age": "600",
      });
      return res.end();
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      // Nothing here takes a body; it is kept in the log (first 1 MB) for tests that check what
      // the page sent.
      const parts = [];
      let n = 0;
      for await (const piece of req) { if (n < 1 << 20) parts.push(piece); n += piece.length; }
      entry.body = Buffer.concat(parts).toString("latin1");
      entry.bodyBytes = n;
      res.writeHead(405, { Allow: "GET, HEAD, OPTIONS" });
      return res.end();
    }
    const mount = table.find(([prefix]) => (entry.path + "/").startsWith(prefix));
    if (!mount) return notFound(res);
    const [prefix, dir] = mount;
    let file = path.join(dir, entry.path.slice(prefix.length - 1));
    if (file !== dir && !file.startsWith(dir + path.sep)) return notFound(res); // ../ escape
    let st = await fsp.stat(file).catch(() => null);
    if (st?.isDirectory()) {
      if (!entry.path.endsWith("/")) {
        res.writeHead(301, { Location: entry.path + "/" + entry.query });
        return res.end();
      }
      file = path.join(file, "index.html");
      st = await fsp.stat(file).catch(() => null);
    }
    if (!st?.isFile()) return notFound(res);

    const size = st.size;
    const range = parseRange(req.headers.range, size);
    res.setHeader("Content-Type", MIME[path.extname(file).toLowerCase()] ?? "application/octet-stream");
    res.setHeader("Accept-Ranges", "bytes");
    res.setHeader("Last-Modified", st.mtime.toUTCString());
    res.setHeader("ETag", `"${size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`);
    if (range === "unsatisfiable") {
      res.writeHead(416, { "Content-Range": `bytes */${size}` });
      return res.end();
    }
    const { start, end } = range ?? { start: 0, end: size - 1 };
    entry.start = start;
    entry.end = end;
    const length = size === 0 ? 0 : end - start + 1;
    if (range) res.setHeader("Content-Range", `bytes ${start}-${end}/${size}`);
    res.writeHead(range ? 206 : 200, { "Content-Length": length });
    if (req.method === "HEAD" || length === 0) return res.end();
    const stream = fs.createReadStream(file, { start, end });
    stream.on("data", (chunk) => { entry.bytes += chunk.length; });
    stream.on("error", () => res.destroy());
    stream.pipe(res);
  }

  function notFound(res) {
    res.writeHead(404, { "Content-Type": "text/plain; charset=utf-8" });
    res.end("not found\n");
  }

  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });
  const sockets = new Set();
  server.on("connection", (s) => { sockets.add(s); s.on("close", () => sockets.delete(s)); });

  const srv = {
    port: server.address().port,
    get url() { return `http://127.0.0.1:${this.port}`; },
    log,
    intercept: null,
    /** Log entries whose path starts with `p` (string) or matches it (RegExp). */
    requests(p = "/") {
      return log.filter((e) => (p instanceof RegExp ? p.test(e.path) : e.path.startsWith(p)));
    },
    clearLog() { log.length = 0; },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  return srv;
}

// CLI: serve by hand, with the request log on stdout.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const arg = (name, dflt) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : dflt;
  };
  const root = arg("--root", "www");
  const connectSrc = process.argv.flatMap((a, i) => (a === "--connect-src" ? process.argv[i + 1].split(/\s+/).filter(Boolean) : []));
  const csp = process.argv.includes("--no-csp") ? false : { connectSrc };
  const srv = await startServer({
    port: Number(arg("--port", "8080")),
    mounts: { ...DEFAULT_MOUNTS, "/": root },
    csp,
    quiet: false,
  });
  console.log(`serving ${root}/ on ${srv.url}/`);
  console.log(csp ? `Content-Security-Policy: ${demoCsp(csp)}` : "no Content-Security-Policy (--no-csp)");
}
