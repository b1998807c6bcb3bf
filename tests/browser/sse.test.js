// The package's event-stream parser and writer (js/sse.js) in node, without a browser: every
// event survives being cut at any byte (inside a line ending, inside a multi-byte character);
// CRLF, CR and LF line endings, comments, multi-line data and named events parse as the HTML
// standard says; what sseData writes parses back to the same values.

import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { repoRoot } from "./server.js";

const { sseEvents, sseData, SSE_DONE } = await import(pathToFileURL(path.join(repoRoot, "js/sse.js")).href);

/** A ReadableStream of `bytes` cut at `cuts` (byte offsets). */
function streamOf(bytes, cuts = []) {
  const pieces = [];
  let at = 0;
  for (const c of [...cuts, bytes.length]) { pieces.push(bytes.subarray(at, c)); at = c; }
  return new ReadableStream({ start(controller) { for (const p of pieces) controller.enqueue(p); controller.close(); } });
}

async function parse(bytes, cuts) {
  const out = [];
  for await (const e of sseEvents(streamOf(bytes, cuts))) out.push(e);
  return out;
}

const STREAM = ": a comment\r\n"
  + "data: {\"a\":\"é—😀\"}\r\n\r\n"
  + "data: x\r\ndata: y\r\n\r\n"
  + "event: error\rdata: first\rdata:second\r\r"
  + "id: 7\ndata:  two spaces\n\n"
  + "data\n\n"
  + "retry: 10\nunknown: x\n\n"
  + "data: [DONE]\n\n"
  + "data: not ended";
const WANT = [
  { event: "message", data: "{\"a\":\"é—😀\"}", id: null },
  { event: "message", data: "x\ny", id: null },
  { event: "error", data: "first\nsecond", id: null },
  { event: "message", data: " two spaces", id: "7" },
  { event: "message", data: "", id: "7" },
  { event: "message", data: "[DONE]", id: "7" },
];

test("events parse as the standard says, whole or cut at every byte", async () => {
  const bytes = new TextEncoder().encode(STREAM);
  assert.deepEqual(await parse(bytes), WANT);
  for (let i = 1; i < bytes.length; i++) {
    assert.deepEqual(await parse(bytes, [i]), WANT, `cut at byte ${i}`);
  }
  // Every byte its own piece.
  assert.deepEqual(await parse(bytes, Array.from({ length: bytes.length - 1 }, (_, i) => i + 1)), WANT, "one byte at a time");
});

test("what sseData writes parses back to the same values", async () => {
  const values = [{ text: "line\nbreak\r\n", emoji: "😀" }, { choices: [] }, SSE_DONE, "two\nlines"];
  const parts = values.map((v) => sseData(v));
  const bytes = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  parts.reduce((at, p) => { bytes.set(p, at); return at + p.length; }, 0);
  const events = await parse(bytes);
  assert.deepEqual(events.map((e) => e.data), [JSON.stringify(values[0]), JSON.stringify(values[1]), "[DONE]", "two\nlines"]);
  assert.deepEqual(JSON.parse(events[0].data), values[0]);
});

test("leaving the loop early cancels the stream", async () => {
  let cancelled = false;
  const body = new ReadableStream({
    pull(controller) { controller.enqueue(new TextEncoder().encode("data: x\n\n")); },
    cancel() { cancelled = true; },
  });
  for await (const e of sseEvents(body)) {
    assert.equal(e.data, "x");
    break;
  }
  assert.ok(cancelled);
});
