// Batches in the shape of OpenAI's Batch API: requests given as [{custom_id, body}] or as a
// JSONL string of such lines run one after another, or (a local engine's) all sent together;
// each gives a result line {id, custom_id, response: {status_code, body} | null,
// error: {code, message, param} | null}. A failing request is reported on its own line and
// the batch goes on. `webvlm batch` (the native CLI) reads and writes the same lines.

import { BadRequestError } from "./errors.js";

/** `input` (array or JSONL) as [{custom_id, body}] or [{custom_id, error}] per line. */
export function batchLines(input) {
  const items = typeof input === "string"
    ? input.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => {
      try { return JSON.parse(l); } catch { return { error: "the line is not valid JSON" }; }
    })
    : input;
  if (!Array.isArray(items)) throw new BadRequestError("a batch is an array of {custom_id, body} or a JSONL string");
  return items.map((item) => {
    if (item?.error) return { custom_id: null, error: item.error };
    if (typeof item?.custom_id !== "string") return { custom_id: null, error: "each line needs a string custom_id" };
    if (!item.body || typeof item.body !== "object") return { custom_id: item.custom_id, error: "each line needs a request object in body" };
    if (item.body.stream) return { custom_id: item.custom_id, error: "batch requests cannot stream" };
    return { custom_id: item.custom_id, body: item.body };
  });
}

/** Runs `lines` through `create` (chat.completions.create): one after another, or with
 * `together` all sent at once (a local engine decodes them together, `parallel` at a time);
 * `onProgress({completed, total, failed, result, index})` after each ends (`index`: its
 * line). A stopped batch
 * (`signal`) reports the rest as aborted. Results are in input order. */
export async function runBatch(create, input, { onProgress, signal, together = false } = {}) {
  const lines = batchLines(input);
  let [completed, failed] = [0, 0];
  const run = async (line, i) => {
    let response = null;
    let error = null;
    try {
      if (line.error) throw new BadRequestError(line.error);
      if (signal?.aborted) throw new DOMException("the batch was aborted", "AbortError");
      response = { status_code: 200, body: await create({ ...line.body, signal }) };
    } catch (e) {
      // OpenAI's code for refused requests; else the error's name (a DOMException's numeric
      // `code` is not one).
      error = { code: typeof e?.code === "string" ? e.code : e?.name ?? "error", message: String(e?.message ?? e), param: e?.param ?? null };
      failed++;
    }
    const result = { id: `batch_req_${i}`, custom_id: line.custom_id, response, error };
    onProgress?.({ completed: ++completed, total: lines.length, failed, result, index: i });
    return result;
  };
  if (together) return Promise.all(lines.map(run));
  const results = [];
  for (const [i, line] of lines.entries()) results.push(await run(line, i));
  return results;
}

/** Result lines as JSONL. */
export function toJSONL(results) {
  return results.map((r) => JSON.stringify(r)).join("\n") + "\n";
}

/** Result lines as CSV: custom_id, status, finish_reason, content, tokens, error. */
export function toCSV(results) {
  const cell = (v) => {
    const s = v == null ? "" : String(v);
    return /[",\n\r]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
  };
  const rows = [["custom_id", "status", "finish_reason", "content", "prompt_tokens", "completion_tokens", "error"]];
  for (const r of results) {
    const body = r.response?.body;
    rows.push([r.custom_id, r.error ? "error" : "ok", body?.choices?.[0]?.finish_reason, body?.choices?.[0]?.message?.content,
      body?.usage?.prompt_tokens, body?.usage?.completion_tokens, r.error?.message]);
  }
  return rows.map((row) => row.map(cell).join(",")).join("\r\n") + "\r\n";
}
