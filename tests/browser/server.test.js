// The test server itself: Range requests, the request log, HEAD, 404s, no path escapes.
// Runs in Node alone (no browser).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import net from "node:net";
import { startServer, parseRange } from "./server.js";

const SIZE = 100_003;
const data = Buffer.alloc(SIZE);
for (let i = 0; i < SIZE; i++) data[i] = (i * 131 + (i >> 8)) & 0xff;

let dir, server;
before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "webvlm-server-test-"));
  fs.writeFileSync(path.join(dir, "blob.bin"), data);
  fs.mkdirSync(path.join(dir, "sub"));
  fs.writeFileSync(path.join(dir, "sub", "index.html"), "<p>sub</p>");
  fs.writeFileSync(path.join(dir, "empty.gguf"), "");
  server = await startServer({ mounts: { "/": "www", "/data/": dir } });
});
after(async () => {
  await server?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function get(p, headers = {}, method = "GET") {
  const r = await fetch(server.url + p, { headers, method, redirect: "manual" });
  return { r, body: Buffer.from(await r.arrayBuffer()) };
}

test("parseRange", () => {
  assert.deepEqual(parseRange("bytes=0-9", 100), { start: 0, end: 9 });
  assert.deepEqual(parseRange("bytes=90-", 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange("bytes=90-1000", 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange("bytes=-10", 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange("bytes=-1000", 100), { start: 0, end: 99 });
  assert.equal(parseRange("bytes=100-", 100), "unsatisfiable");
  assert.equal(parseRange("bytes=-0", 100), "unsatisfiable");
  assert.equal(parseRange("bytes=0-1,5-6", 100), null);
  assert.equal(parseRange("items=0-1", 100), null);
  assert.equal(parseRange("bytes=9-3", 100), null);
  assert.equal(parseRange(undefined, 100), null);
});

test("whole file: 200 with length, type and Accept-Ranges, never cacheable", async () => {
  server.clearLog();
  const { r, body } = await get("/data/blob.bin");
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("content-length"), String(SIZE));
  assert.equal(r.headers.get("accept-ranges"), "bytes");
  assert.equal(r.headers.get("cache-control"), "no-store");
  assert.ok(body.equals(data));
  const [e] = server.log;
  assert.equal(e.path, "/data/blob.bin");
  assert.equal(e.status, 200);
  assert.equal(e.range, null);
  assert.equal(e.bytes, SIZE);
});

test("Range requests: 206 with exactly the bytes asked for, each logged", async () => {
  server.clearLog();
  const cases = [
    ["bytes=0-0", 0, 0],
    ["bytes=10-65545", 10, 65545],
    ["bytes=99990-", 99990, SIZE - 1],
    ["bytes=-7", SIZE - 7, SIZE - 1],
    ["bytes=50000-999999", 50000, SIZE - 1],
  ];
  for (const [range, start, end] of cases) {
    const { r, body } = await get("/data/blob.bin", { Range: range });
    assert.equal(r.status, 206, range);
    assert.equal(r.headers.get("content-range"), `bytes ${start}-${end}/${SIZE}`, range);
    assert.equal(r.headers.get("content-length"), String(end - start + 1), range);
    assert.ok(body.equals(data.subarray(start, end + 1)), range);
  }
  assert.deepEqual(
    server.requests("/data/").map((e) => [e.range, e.status, e.start, e.end, e.bytes]),
    cases.map(([range, s, e]) => [range, 206, s, e, e - s + 1]),
  );
});

test("unsatisfiable range: 416 with the size; several ranges: the whole file", async () => {
  let { r } = await get("/data/blob.bin", { Range: `bytes=${SIZE}-` });
  assert.equal(r.status, 416);
  assert.equal(r.headers.get("content-range"), `bytes */${SIZE}`);
  ({ r } = await get("/data/empty.gguf", { Range: "bytes=0-" }));
  assert.equal(r.status, 416);
  const res = await get("/data/blob.bin", { Range: "bytes=0-1,4-5" });
  assert.equal(res.r.status, 200);
  assert.equal(res.body.length, SIZE);
});

test("HEAD, 404, directory index and redirect, no escape from a mount", async () => {
  let { r, body } = await get("/data/blob.bin", {}, "HEAD");
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("content-length"), String(SIZE));
  assert.equal(body.length, 0);
  ({ r } = await get("/data/missing.bin"));
  assert.equal(r.status, 404);
  ({ r, body } = await get("/data/sub/"));
  assert.equal(r.status, 200);
  assert.equal(body.toString(), "<p>sub</p>");
  ({ r } = await get("/data/sub"));
  assert.equal(r.status, 301);
  assert.equal(r.headers.get("location"), "/data/sub/");
  // fetch() normalizes "..", so send the raw request line.
  for (const raw of ["/data/../server.test.js", "/data/%2e%2e/%2e%2e/README.md", "/../README.md"]) {
    const status = await rawStatus(raw);
    assert.equal(status, 404, raw);
  }
  assert.equal(await rawStatus("/data/%E0%A4%A"), 400);
});

test("the demo page and the wasm are served with the right types", async () => {
  const { r } = await get("/", {}, "HEAD");
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type"), /^text\/html/);
  if (fs.existsSync(new URL("../../www/pkg/webvlm_bg.wasm", import.meta.url))) {
    const w = await get("/pkg/webvlm_bg.wasm", {}, "HEAD");
    assert.equal(w.r.headers.get("content-type"), "application/wasm");
    const j = await get("/pkg/webvlm.js", {}, "HEAD");
    assert.match(j.r.headers.get("content-type"), /^text\/javascript/);
  }
});

test("intercept: a test can take over a request (e.g. cut a download short)", async () => {
  server.intercept = (req, res, entry) => {
    if (!entry.path.endsWith("/blob.bin")) return false;
    res.writeHead(200, { "Content-Length": SIZE });
    res.write(data.subarray(0, 1000));
    setTimeout(() => res.destroy(), 10);
    return true;
  };
  try {
    await assert.rejects(get("/data/blob.bin"));
    const { r } = await get("/data/sub/");
    assert.equal(r.status, 200);
  } finally {
    server.intercept = null;
  }
});

function rawStatus(target) {
  return new Promise((resolve, reject) => {
    const s = net.connect(server.port, "127.0.0.1", () => {
      s.write(`GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
    });
    let buf = "";
    s.on("data", (d) => (buf += d));
    s.on("end", () => resolve(Number(/^HTTP\/1\.1 (\d+)/.exec(buf)?.[1])));
    s.on("error", reject);
  });
}
