// Batch mode's view: the list of images with their states, replies and timings (thumbnails
// are object URLs of the files, decoded lazily by the browser), the summary, the progress
// line, and which batch controls are enabled.

import { $, el, fmtBytes, fmtDuration, ICON_IMAGE, openImage, plural, progressHtml } from "./helpers.js";
import { batchRunning, engine, lacksVision, remoteServer, state } from "./state.js";

const IMAGE_EXT = /\.(png|jpe?g|jfif|webp|gif|bmp|avif|tiff?|ico)$/i;
const isImageFile = (f) => (f.type ? f.type.startsWith("image/") : IMAGE_EXT.test(f.name));
const BATCH_LABEL = { queued: "Queued", running: "Describing…", done: "Done", failed: "Failed", stopped: "Stopped" };

let batchItemId = 0;
/** Item id -> its li. */
export const batchNodes = new Map();

/** Moves the batch to status `s` (#batch-panel[data-state]). */
export function setBatchStatus(s) {
  state.batch.status = s;
  $("batch-panel").dataset.state = s;
  updateBatchControls();
}

/** Files from a picker or a drop as [{file, path}] (path: inside a picked or dropped folder). */
export function addBatchFiles(entries) {
  const images = [];
  let skipped = 0;
  for (const entry of entries) {
    const { file } = entry;
    if (isImageFile(file)) images.push({ file, path: entry.path || file.webkitRelativePath || file.name || "image" });
    else skipped++;
  }
  images.sort((a, b) => a.path.localeCompare(b.path, undefined, { numeric: true, sensitivity: "base" }));
  const known = new Map(state.batch.items.map((i) => [i.name, i]));
  const fragment = document.createDocumentFragment();
  let duplicates = 0;
  for (const { file, path } of images) {
    let name = path;
    const same = known.get(name);
    if (same) {
      if (same.file.size === file.size && same.file.lastModified === file.lastModified) { duplicates++; continue; }
      let n = 2;
      while (known.has(`${path} (${n})`)) n++;
      name = `${path} (${n})`; // custom_ids stay unique
    }
    const item = { id: ++batchItemId, name, file, url: URL.createObjectURL(file), state: "queued", result: null, text: "", error: null, startedAt: 0, ms: null };
    known.set(name, item);
    state.batch.items.push(item);
    fragment.append(renderBatchItem(item));
  }
  $("batch-list").append(fragment);
  const notes = [];
  if (skipped) notes.push(`${skipped} file${skipped === 1 ? " that is not an image was" : "s that are not images were"} skipped`);
  if (duplicates) notes.push(`${duplicates} already in the list`);
  state.batch.addNote = notes.join(" · ");
  if (state.batch.status === "empty" || state.batch.status === "done" || state.batch.status === "stopped") {
    if (state.batch.items.length && images.length - duplicates > 0) setBatchStatus("ready");
  }
  renderBatchSummary();
  updateBatchProgress();
  updateBatchControls();
}

function renderBatchItem(item) {
  const img = el("img", { src: item.url, alt: item.name, loading: "lazy", decoding: "async" });
  const thumb = el("button", {
    type: "button", class: "batch-thumb", title: `View ${item.name}`, "aria-label": `View ${item.name}`,
    onclick: () => { if (!thumb.classList.contains("no-preview")) openImage(item.url, item.name); },
  }, img);
  img.addEventListener("error", () => {
    thumb.classList.add("no-preview");
    thumb.insertAdjacentHTML("beforeend", ICON_IMAGE);
    thumb.title = "No preview: the browser cannot show this file";
  }, { once: true });
  const node = el("li", { class: "batch-item", dataset: { state: item.state, name: item.name, id: item.id } },
    thumb,
    el("div", { class: "batch-body" },
      el("div", { class: "batch-item-head" },
        // A path shows its file name whole; the folders give way first.
        el("span", { class: "batch-name", title: item.name },
          item.name.includes("/") ? el("span", { class: "batch-dir" }, item.name.slice(0, item.name.lastIndexOf("/") + 1)) : null,
          el("span", { class: "batch-file" }, item.name.slice(item.name.lastIndexOf("/") + 1))),
        el("span", { class: "badge batch-status" }, BATCH_LABEL[item.state])),
      el("p", { class: "batch-text" }),
      el("p", { class: "batch-meta" }, fmtBytes(item.file.size))));
  batchNodes.set(item.id, node);
  return node;
}

/** Moves an image to state `s` ("queued", "running", "done", "failed", "stopped") and shows
 * its reply, error or timing. */
export function setItemState(item, s) {
  item.state = s;
  if (s === "running") item.startedAt = performance.now();
  const node = batchNodes.get(item.id);
  if (!node) return;
  node.dataset.state = s;
  node.querySelector(".batch-status").textContent = BATCH_LABEL[s];
  const text = node.querySelector(".batch-text");
  const meta = node.querySelector(".batch-meta");
  if (s === "queued" || s === "running") {
    text.textContent = "";
    meta.textContent = s === "queued" ? fmtBytes(item.file.size) : "0 s";
  } else {
    text.textContent = item.error ? item.error.message : item.text || (s === "stopped" ? "Stopped before a reply." : "(empty reply)");
    meta.textContent = item.metaText ?? "";
  }
  if (s === "running" && matchMedia("(min-width: 861px)").matches) {
    // Keep the running image in view inside the list (not the page) when it scrolls.
    const list = $("batch-list"); // position: relative, so offsetTop is within the list
    const top = node.offsetTop;
    if (top < list.scrollTop || top + node.offsetHeight > list.scrollTop + list.clientHeight) {
      list.scrollTo({ top: Math.max(0, top - 8), behavior: "smooth" });
    }
  }
}

function batchCounts() {
  const c = { queued: 0, running: 0, done: 0, failed: 0, stopped: 0 };
  for (const i of state.batch.items) c[i.state]++;
  return c;
}

export function renderBatchSummary() {
  const items = state.batch.items;
  const bytes = items.reduce((a, i) => a + i.file.size, 0);
  $("batch-summary").textContent = items.length
    ? [plural(items.length, "image"), fmtBytes(bytes), state.batch.addNote].filter(Boolean).join(" · ")
    : state.batch.addNote
      ? `No images added: ${state.batch.addNote}.`
      : "Drop images or a folder here, or choose them. Each image gets its own reply.";
}

/** The progress bar and line of the current run, and the count on the Batch tab. */
export function updateBatchProgress() {
  const items = state.batch.items;
  const run = state.batch.run;
  const c = batchCounts();
  const box = $("batch-progress-box");
  box.hidden = !run;
  $("mode-batch-count").hidden = !batchRunning();
  if (!run) return;
  const finished = c.done + c.failed + c.stopped;
  $("batch-progress").value = items.length ? finished / items.length : 0;
  box.classList.toggle("failed", c.failed > 0 && c.done === 0 && state.batch.status !== "running");
  const now = run.endedAt ?? performance.now();
  const minutes = (now - run.startedAt) / 60000;
  const rate = run.completed > 0 && minutes > 0 ? run.completed / minutes : null;
  const status = state.batch.status;
  const current = Math.min(items.length, finished + 1);
  const ofAll = `${finished} of ${items.length}`;
  const title = status === "running" ? `Describing ${current} of ${items.length}`
    : status === "stopping" ? "Stopping…"
      : status === "stopped" ? "Stopped"
        : finished === items.length ? "Finished" : ofAll;
  const left = run.total - run.completed;
  $("batch-progress-text").innerHTML = progressHtml(title, [
    status === "stopped" && ofAll,
    `${c.done} done`,
    `<span class="${c.failed ? "count-failed" : ""}">${c.failed} failed</span>`,
    c.stopped && `${c.stopped} stopped`,
    rate != null && `${rate >= 10 ? rate.toFixed(0) : rate.toFixed(1)} images/min`,
    status === "running" && rate != null && left > 0 && `about ${fmtDuration((left / rate) * 60)} left`,
    !batchRunning() && run.endedAt && `${fmtDuration((run.endedAt - run.startedAt) / 1000)} in all`,
  ]);
  $("mode-batch-count").textContent = `${finished}/${items.length}`;
  if (state.status === "batch") $("status-text").textContent = status === "stopping" ? "Stopping…" : `Describing image ${current} of ${items.length}`;
}

/** The items a Start would run: those not done; all of them when every one is done. */
export function batchTodo() {
  const items = state.batch.items;
  const todo = items.filter((i) => i.state !== "done");
  return todo.length ? todo : items.slice();
}

/** Enables Start, Stop, Clear and the exports for the batch's and the page's status. */
export function updateBatchControls() {
  const s = state.status;
  const b = state.batch;
  const running = batchRunning();
  const items = b.items;
  const noVision = !!engine && lacksVision();
  const canStart = s === "ready" && !!engine && !noVision && items.length > 0 && !running;
  $("batch-start").disabled = !canStart;
  $("batch-start").hidden = running;
  $("batch-stop").hidden = !running;
  $("batch-stop").disabled = b.status === "stopping";
  const pending = items.filter((i) => i.state !== "done");
  const failed = pending.filter((i) => i.state === "failed").length;
  $("batch-start-label").textContent = !items.some((i) => i.result) ? "Start"
    : pending.length === 0 ? "Run again"
      : failed === pending.length ? `Retry failed (${failed})`
        : `Continue (${pending.length} left)`;
  const hasResults = items.some((i) => i.result);
  $("batch-export-jsonl").disabled = !hasResults;
  $("batch-export-csv").disabled = !hasResults;
  $("batch-clear").disabled = running || items.length === 0;
  $("batch-empty").hidden = items.length > 0;
  $("batch-files").disabled = false;
  $("batch-folder").disabled = false;
  let hint;
  if (running) hint = "The chat is paused while the batch runs. Stop ends it after the current image; Start again continues where it stopped.";
  else if (s === "generating") hint = "Wait for the chat reply to finish (or stop it) to start the batch.";
  else if (s === "loading") hint = "Wait for the model to load.";
  else if (!engine) hint = "Load a model with a vision projector to start.";
  else if (noVision) hint = "This model was loaded without a vision projector (mmproj), so it cannot describe images.";
  else if (!items.length) hint = remoteServer() ? `Add images to start. They are sent to ${remoteServer()}.` : "Add images to start. They stay on this device.";
  else {
    const n = batchTodo().length;
    hint = `${plural(n, "image")} to describe · up to ${state.settings.max_tokens} tokens each · images scaled to at most ${state.settings.image_max_edge} px (Settings).`;
  }
  $("batch-hint").textContent = hint;
}
