// The npm SDK's Batch API round trip: `files.create({purpose: "batch"})` with `toFile`,
// `batches.create`, `batches.retrieve` polled to the end, `files.content` of the output and
// error files (one line per `custom_id`, each answer equal to the same request sent alone,
// with its usage; a bad line's error naming its field), and `batches.cancel` of a batch whose
// first request is running.

import assert from "node:assert/strict";

import { forEachTarget, LONG, OpenAI, poll, SHORT, toFile, user } from "./targets.mjs";

const ENDPOINT = "/v1/chat/completions";
const TERMINAL = ["completed", "failed", "cancelled", "expired"];

const jsonl = (lines) =>
  lines.map(([custom_id, body]) => JSON.stringify({ custom_id, method: "POST", url: ENDPOINT, body }) + "\n").join("");

async function startBatch(openai, content, options = {}) {
  const file = await openai.files.create({ file: await toFile(Buffer.from(content), "requests.jsonl"), purpose: "batch" });
  assert.deepEqual([file.object, file.purpose, file.bytes], ["file", "batch", Buffer.byteLength(content)]);
  assert.equal(await (await openai.files.content(file.id)).text(), content);
  const files = [];
  for await (const f of openai.files.list()) files.push(f.id);
  assert.ok(files.includes(file.id));
  const batch = await openai.batches.create({ input_file_id: file.id, endpoint: ENDPOINT, completion_window: "24h",
    metadata: { suite: "sdk" }, ...options });
  assert.deepEqual([batch.object, batch.input_file_id, batch.endpoint], ["batch", file.id, ENDPOINT]);
  assert.deepEqual(batch.metadata, { suite: "sdk" });
  return batch;
}

const finished = (openai, id) => poll(() => openai.batches.retrieve(id), (b) => TERMINAL.includes(b.status));

/** A result file's lines by custom_id (each once). */
async function resultLines(openai, fileId) {
  if (fileId == null) return {};
  assert.equal((await openai.files.retrieve(fileId)).purpose, "batch_output");
  const text = await (await openai.files.content(fileId)).text();
  const lines = text.split("\n").filter(Boolean).map((line) => JSON.parse(line));
  const byId = Object.fromEntries(lines.map((line) => [line.custom_id, line]));
  assert.equal(Object.keys(byId).length, lines.length, "each custom_id once");
  return byId;
}

forEachTarget("a batch round trip", ["batch"], async (target, openai) => {
  const bodies = {
    // One prompt (prefilled once): the answers differ in length.
    six: { model: target.model, messages: user(SHORT), max_tokens: 6, temperature: 0 },
    three: { model: target.model, messages: user(SHORT), max_tokens: 3, temperature: 0 },
    bad: { model: target.model, messages: user("hi"), temperature: -1 },
  };
  const batch = await startBatch(openai, jsonl(Object.entries(bodies)),
    { output_expires_after: { anchor: "created_at", seconds: 3600 } });
  const done = await finished(openai, batch.id);
  assert.equal(done.status, "completed", JSON.stringify(done));
  assert.deepEqual(done.request_counts, { total: 3, completed: 2, failed: 1 });
  assert.ok(done.completed_at >= done.created_at);

  const outputs = await resultLines(openai, done.output_file_id);
  assert.deepEqual(Object.keys(outputs).sort(), ["six", "three"]);
  for (const [customId, line] of Object.entries(outputs)) {
    assert.equal(line.error, null);
    assert.equal(line.response.status_code, 200);
    const { usage, choices } = line.response.body;
    assert.ok(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
    assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
    const alone = await openai.chat.completions.create(bodies[customId]);
    assert.equal(choices[0].message.content, alone.choices[0].message.content, customId);
    assert.equal(usage.completion_tokens, alone.usage.completion_tokens);
  }

  const errors = await resultLines(openai, done.error_file_id);
  assert.deepEqual(Object.keys(errors), ["bad"]);
  assert.equal(errors.bad.response.status_code, 400);
  if (target.features.includes("errors_param")) assert.equal(errors.bad.response.body.error.param, "temperature");

  const listed = [];
  for await (const b of openai.batches.list()) listed.push(b.id);
  assert.ok(listed.includes(done.id));
  assert.equal((await openai.files.delete(done.input_file_id)).deleted, true);
  await assert.rejects(openai.files.retrieve(done.input_file_id), OpenAI.NotFoundError);
});

forEachTarget("a batch cancelled while its first request runs", ["batch"], async (target, openai) => {
  const long = { model: target.model, messages: user(LONG), max_tokens: 400, temperature: 0 };
  const batch = await startBatch(openai, jsonl(["x", "y", "z"].map((id) => [id, long])));
  await poll(() => openai.batches.retrieve(batch.id), (b) => b.status === "in_progress");
  const cancelling = await openai.batches.cancel(batch.id);
  assert.ok(["cancelling", "cancelled"].includes(cancelling.status), cancelling.status);
  const cancelled = await finished(openai, batch.id);
  assert.equal(cancelled.status, "cancelled");
  assert.ok(cancelled.cancelled_at != null);
  const outputs = await resultLines(openai, cancelled.output_file_id);
  const errors = await resultLines(openai, cancelled.error_file_id);
  assert.deepEqual([...Object.keys(outputs), ...Object.keys(errors)].sort(), ["x", "y", "z"], "every request once");
  assert.equal(errors.z.error.code, "batch_cancelled", "the last request never ran");
});
