// webvlm demo page: picks a model, loads it with a progress bar, and chats about images with
// tokens streamed into the transcript, or describes a folder of images one request per image
// (Batch mode, engine.batch) with per-image progress and JSONL / CSV export. All model work
// happens in the package's module worker; the page only moves DOM nodes and messages around
// (no heavy work on the page's thread). This entry module wires the modules of js/ together.
//
// The page's contract for tests (URL parameters, data-state, window.webvlmDemo, ids): tests/browser/DEMO_CONTRACT.md

import { params } from "./js/state.js";
import { bindErrors, pageError, showError } from "./js/errors.js";
import { bindModeTabs, setMode, setState } from "./js/status.js";
import { bindSettings, renderSettings } from "./js/settings.js";
import { bindModel, getApi, load, reloadModel, setupModelSelect } from "./js/model.js";
import { bindChat, renderEmptyState } from "./js/chat.js";
import { bindBatch } from "./js/batch.js";
import { renderBatchSummary } from "./js/batch-view.js";
import { bindStorage, refreshCache } from "./js/storage.js";
import { setupDragAndDrop } from "./js/drop.js";

async function main() {
  setupModelSelect();
  renderSettings();
  bindSettings();
  bindModel();
  bindChat();
  bindErrors({ reloadModel });
  bindStorage();
  bindModeTabs();
  bindBatch();
  setupDragAndDrop();
  setMode(params.get("mode") === "batch" ? "batch" : "chat");
  renderBatchSummary();
  setState("idle");
  renderEmptyState();

  if (!navigator.gpu) {
    showError(pageError("NoWebGPUError", "This browser has no WebGPU (navigator.gpu is missing)."));
    setState("error");
  }
  const mod = await getApi();
  if (!mod) {
    setState("error");
    return;
  }
  refreshCache();
  if (params.get("autoload") === "1" || params.get("autoload") === "true") load();
}

main();
