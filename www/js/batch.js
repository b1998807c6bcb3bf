// Batch mode's runs ("Describe a folder of images"): every image becomes one request of
// engine.batch (the prompt and a data: URL in a user message). Images are read into data: URLs
// a few at a time, the next few while the engine works on the current ones, so a folder of
// gigabytes never sits in memory at once. Stop, Clear, and the JSONL / CSV exports.

import { $, downloadBlob, fmtSeconds, readDataUrl, STOPPED, whenStopped } from "./helpers.js";
import { api, engine, batchRunning, lacksVision, state } from "./state.js";
import { hideError, isEngineLost, noVisionError, pageError, showError } from "./errors.js";
import { requestFailed, setState } from "./status.js";
import { requestOptions, systemMessages } from "./settings.js";
import {
  addBatchFiles, batchNodes, batchTodo, renderBatchSummary, setBatchStatus, setItemState, updateBatchProgress,
} from "./batch-view.js";

const DEFAULT_BATCH_PROMPT = "Describe this image in one sentence.";
const BATCH_CHUNK = 4; // images per engine.batch call (read into data: URLs together)

/** Records a result line of engine.batch (or one made on the page) for `item`. */
function finishItem(item, result, run) {
  const err = result.error;
  const ms = item.startedAt ? performance.now() - item.startedAt : null;
  if (err && run.abort.signal.aborted && (err.code === 20 || err.code === "AbortError" || /abort/i.test(err.message))) {
    // Not run: Stop came first. It stays in line for the next Start.
    item.result = null;
    item.error = null;
    setItemState(item, "queued");
    return;
  }
  const index = state.batch.items.indexOf(item);
  item.result = { ...result, id: `batch_req_${index}`, custom_id: item.name };
  item.ms = ms;
  run.completed++;
  if (err) {
    run.failed++;
    item.error = { name: String(err.code ?? "Error"), message: err.message };
    item.text = "";
    item.metaText = [String(err.code ?? "Error"), ms != null ? fmtSeconds(ms) : null].filter(Boolean).join(" · ");
    setItemState(item, "failed");
  } else {
    const body = result.response.body;
    const choice = body.choices?.[0];
    item.error = null;
    item.text = String(choice?.message?.content ?? "").trim();
    const finish = choice?.finish_reason;
    item.metaText = [
      body.usage ? `${body.usage.completion_tokens} tokens` : null,
      ms != null ? fmtSeconds(ms) : null,
      finish === "length" ? "max tokens reached" : null,
    ].filter(Boolean).join(" · ");
    setItemState(item, finish === "abort" ? "stopped" : "done");
  }
}

async function startBatch() {
  if (state.status !== "ready" || !engine || batchRunning()) return;
  if (lacksVision()) {
    showError(noVisionError());
    return;
  }
  const todo = batchTodo();
  if (!todo.length) return;
  hideError();
  const prompt = $("batch-prompt").value.trim() || DEFAULT_BATCH_PROMPT;
  const s = state.settings;
  const system = systemMessages();
  // The prompt comes before the image: every request then starts with the same tokens, which
  // the engine keeps from the previous request (only the image and what follows are new).
  const body = (url) => ({
    messages: [...system, { role: "user", content: [{ type: "text", text: prompt }, { type: "image_url", image_url: { url } }] }],
    ...requestOptions(s),
  });
  for (const item of todo) {
    item.result = null;
    item.error = null;
    item.text = "";
    item.metaText = "";
    setItemState(item, "queued");
  }
  const abort = new AbortController();
  const run = { total: todo.length, completed: 0, failed: 0, startedAt: performance.now(), endedAt: null, abort };
  state.batch.run = run;
  setBatchStatus("running");
  setState("batch");
  updateBatchProgress();
  // Once a second: the rate, the time left and the running image's seconds move on.
  const tick = setInterval(() => {
    updateBatchProgress();
    for (const item of todo) {
      if (item.state === "running") batchNodes.get(item.id).querySelector(".batch-meta").textContent = `${Math.round((performance.now() - item.startedAt) / 1000)} s`;
    }
  }, 1000);

  // Stop ends the run on the page at once, like the chat's Stop: the engine finishes its
  // current step in the background; late results of this run are ignored.
  const stopped = whenStopped(abort.signal);
  let closed = false;
  let fatal = null;
  const chunks = [];
  for (let i = 0; i < todo.length; i += BATCH_CHUNK) chunks.push(todo.slice(i, i + BATCH_CHUNK));
  const read = (chunk) => Promise.all(chunk.map((item) =>
    readDataUrl(item.file).then((url) => ({ item, url }), (error) => ({ item, error }))));
  let next = read(chunks[0]);
  try {
    for (let c = 0; c < chunks.length && !abort.signal.aborted && !fatal; c++) {
      const ready = await Promise.race([next, stopped]);
      if (ready === STOPPED) break;
      next = c + 1 < chunks.length ? read(chunks[c + 1]) : null;
      const lines = [];
      const sent = [];
      for (const r of ready) {
        if (r.error) {
          // A file the browser cannot read fails here; the batch goes on.
          r.item.startedAt = 0;
          finishItem(r.item, { id: "", custom_id: r.item.name, response: null, error: { code: "ImageError", message: `could not read the file: ${r.error?.message ?? r.error}`, param: null } }, run);
        } else {
          lines.push({ custom_id: r.item.name, body: body(r.url) });
          sent.push(r.item);
        }
      }
      updateBatchProgress();
      if (!sent.length) continue;
      // The engine decodes a chunk's images together (its `parallel` slots): all run at once.
      for (const item of sent) setItemState(item, "running");
      const done = engine.batch(lines, {
        signal: abort.signal,
        onProgress: ({ index, result }) => {
          if (closed) return;
          finishItem(sent[index], result, run);
          // A refused request carries OpenAI's code; a lost device's is "device_lost".
          const code = result.error?.code === "device_lost" ? "DeviceLostError" : result.error?.code;
          if (isEngineLost(code)) {
            fatal ??= pageError(code, result.error.message);
            abort.abort();
          }
          updateBatchProgress();
        },
      });
      done.catch(() => {});
      if ((await Promise.race([done, stopped])) === STOPPED) break;
    }
  } catch (err) {
    fatal = err; // engine.batch refused the whole batch (it reports request failures per line)
  }
  closed = true;
  clearInterval(tick);
  run.endedAt = performance.now();
  for (const item of todo) {
    if (item.state === "running") {
      item.metaText = item.startedAt ? `stopped after ${fmtSeconds(run.endedAt - item.startedAt)}` : "";
      setItemState(item, "stopped");
    }
  }
  setBatchStatus(abort.signal.aborted && !fatal ? "stopped" : "done");
  if (fatal) requestFailed(fatal);
  else setState("ready");
  updateBatchProgress();
}

function stopBatch() {
  const abort = state.batch.run?.abort;
  if (!abort || state.batch.status !== "running") return;
  setBatchStatus("stopping");
  abort.abort();
  updateBatchProgress();
}

function clearBatch() {
  if (batchRunning()) return;
  for (const item of state.batch.items) URL.revokeObjectURL(item.url);
  state.batch.items = [];
  state.batch.run = null;
  state.batch.addNote = "";
  batchNodes.clear();
  $("batch-list").replaceChildren();
  setBatchStatus("empty");
  renderBatchSummary();
  updateBatchProgress();
}

/** The results so far, in list order (OpenAI batch output lines). */
function batchResults() {
  return state.batch.items.filter((i) => i.result).map((i) => i.result);
}

function exportBatch(kind) {
  const results = batchResults();
  if (!results.length || !api) return;
  const text = kind === "csv" ? api.toCSV(results) : api.toJSONL(results);
  const type = kind === "csv" ? "text/csv;charset=utf-8" : "application/jsonl;charset=utf-8";
  const d = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  const stamp = `${d.getFullYear()}${pad(d.getMonth() + 1)}${pad(d.getDate())}-${pad(d.getHours())}${pad(d.getMinutes())}${pad(d.getSeconds())}`;
  downloadBlob(new Blob([text], { type }), `webvlm-batch-${stamp}.${kind}`);
}

export function bindBatch() {
  for (const id of ["batch-files", "batch-folder"]) {
    $(id).addEventListener("change", (e) => {
      addBatchFiles([...(e.target.files ?? [])].map((file) => ({ file, path: file.webkitRelativePath || file.name })));
      e.target.value = ""; // the same folder can be picked again
    });
  }
  $("batch-start").addEventListener("click", startBatch);
  $("batch-stop").addEventListener("click", stopBatch);
  $("batch-clear").addEventListener("click", clearBatch);
  $("batch-export-jsonl").addEventListener("click", () => exportBatch("jsonl"));
  $("batch-export-csv").addEventListener("click", () => exportBatch("csv"));
  $("batch-prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); startBatch(); }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.status === "batch") stopBatch();
  });
}

