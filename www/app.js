// webvlm demo page: picks a model, loads it with a progress bar, and chats about images with
// tokens streamed into the transcript, or describes a folder of images one request per image
// (Batch mode, engine.batch) with per-image progress and JSONL / CSV export. All model work
// happens in the package's module worker; the page only moves DOM nodes and messages around
// (no heavy work on the page's thread). This entry module wires the modules of js/ together.
//
// Replies are rendered as sanitized Markdown (www/js/markdown.js); the page runs under a strict
// Content-Security-Policy when served by tests/browser/server.js (no inline script or style);
// sw.js keeps the page itself for offline use.
//
// The page's contract for tests (URL parameters, data-state, window.webvlmDemo, ids): tests/browser/DEMO_CONTRACT.md

import { params, state } from "./js/state.js";
import { bindErrors, pageError, showError } from "./js/errors.js";
import { bindModeTabs, setMode, setState } from "./js/status.js";
import { bindSettings, renderSettings } from "./js/settings.js";
import { bindModel, load, reloadModel, setupModelSelect } from "./js/model.js";
import { getApi } from "./js/package.js";
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

  registerServiceWorker();
  // Without WebGPU the model runs on the CPU, unless Settings ask for the GPU.
  if (!navigator.gpu && state.settings.backend === "webgpu") {
    showError(pageError("NoWebGPUError", "This browser has no WebGPU (navigator.gpu is missing): choose the CPU in Settings."));
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

/** The service worker (sw.js) keeps the page and the package in Cache Storage, so that the demo
 * opens and a cached model answers with no network. `?sw=0` unregisters it (and its cache). */
async function registerServiceWorker() {
  if (!("serviceWorker" in navigator) || !window.isSecureContext) return;
  try {
    if (params.get("sw") === "0") {
      for (const r of await navigator.serviceWorker.getRegistrations()) await r.unregister();
      for (const name of await caches.keys()) if (name.startsWith("webvlm-app-")) await caches.delete(name);
      return;
    }
    await navigator.serviceWorker.register("sw.js");
  } catch (e) {
    // No service worker (not built: offline-files.js missing, or storage off): the page works
    // online as before.
    console.warn(`the page will not open offline: ${e.message ?? e}`);
  }
}

main();
