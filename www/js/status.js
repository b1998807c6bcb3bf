// The page's status and what follows from it: body[data-state], the status pill, which
// controls are enabled, the Chat / Batch tabs, and what happens when the engine is gone.

import { $ } from "./helpers.js";
import { engine, isBusy, remoteServer, setEngine, setLostEngine, state } from "./state.js";
import { isEngineLost, showError } from "./errors.js";
import { updateBatchControls } from "./batch-view.js";

/** Moves the page to status `s` ("idle", "loading", "ready", "generating", "batch", "error"). */
export function setState(s) {
  state.status = s;
  document.body.dataset.state = s;
  const text = {
    idle: "No model loaded",
    loading: "Loading…",
    ready: `Ready · ${modelName()}`,
    generating: "Generating…",
    batch: "Describing images…",
    error: engine ? "Error" : "Not loaded",
  }[s];
  $("status-text").textContent = text;
  updateControls();
}

export function modelName() {
  return state.info?.name || state.loadedSource?.name || "model";
}

/** Enables, disables, shows and hides the controls for the current status. */
export function updateControls() {
  const s = state.status;
  const busy = isBusy();
  $("load").disabled = busy;
  $("model-select").disabled = busy;
  $("model-file").disabled = busy;
  $("mmproj-file").disabled = busy;
  $("unload").hidden = !engine;
  $("unload").disabled = busy;
  $("load").textContent = s === "loading" ? "Loading…" : engine ? "Reload" : "Load model";
  const hasInput = $("prompt").value.trim() !== "" || state.attachments.length > 0;
  $("send").disabled = s !== "ready" || !hasInput;
  $("send").hidden = s === "generating";
  $("stop").hidden = s !== "generating";
  $("new-chat").disabled = s === "generating" || $("messages").querySelector(".msg") === null;
  $("cache-clear").disabled = s === "loading";
  for (const b of document.querySelectorAll("#cache-list .cache-delete")) b.disabled = s === "loading";
  // The header names the loaded model next to the Chat / Batch tabs.
  $("chat-title").hidden = !engine;
  $("prompt").placeholder = s === "batch" ? "Chat is paused while the batch runs…" : "Ask about an image…";
  $("tagline").textContent = remoteServer()
    ? `A vision-language model on ${remoteServer()}. Your messages and images are sent to that server.`
    : "A vision-language model on your own GPU. Your images never leave this device.";
  updateBatchControls();
}

/** Forgets the engine and its model info (after an unload, a failed load, a lost engine). */
export function forgetEngine() {
  setEngine(null);
  state.info = null;
}

/** The engine failed to load or is gone (its GPU device was lost or its worker stopped): the
 * page forgets it, goes to the "error" status and shows `err`. Load starts again; after a
 * DeviceLostError the engine is kept aside (`lostEngine`) for the banner's Reload model
 * action, which loads the same model again on a new device. */
export function loseEngine(err) {
  setLostEngine(err?.name === "DeviceLostError" && typeof engine?.reload === "function" ? engine : null);
  forgetEngine();
  $("model-info").hidden = true;
  setState("error");
  showError(err);
}

/** A chat reply or a whole batch failed with `err`: back to "ready" with the error shown, or
 * loseEngine when the error means the engine is gone. */
export function requestFailed(err) {
  if (isEngineLost(err?.name)) {
    loseEngine(err);
    return;
  }
  setState("ready");
  showError(err);
}

/** Shows the Chat or the Batch tab. */
export function setMode(mode) {
  if (mode !== "chat" && mode !== "batch") return;
  state.mode = mode;
  document.body.dataset.mode = mode;
  const batch = mode === "batch";
  $("mode-chat").setAttribute("aria-selected", String(!batch));
  $("mode-batch").setAttribute("aria-selected", String(batch));
  $("mode-chat").tabIndex = batch ? -1 : 0;
  $("mode-batch").tabIndex = batch ? 0 : -1;
  $("chat-panel").hidden = batch;
  $("batch-panel").hidden = !batch;
  $("new-chat").hidden = batch;
  $("batch-clear").hidden = !batch;
  $("drop-title").textContent = batch ? "Drop images or folders to add them to the batch" : "Drop to attach images";
  updateControls();
}

export function bindModeTabs() {
  const tabs = [$("mode-chat"), $("mode-batch")];
  $("mode-chat").addEventListener("click", () => setMode("chat"));
  $("mode-batch").addEventListener("click", () => setMode("batch"));
  $("mode-tabs").addEventListener("keydown", (e) => {
    if (e.key !== "ArrowLeft" && e.key !== "ArrowRight" && e.key !== "Home" && e.key !== "End") return;
    e.preventDefault();
    const mode = e.key === "Home" ? "chat" : e.key === "End" ? "batch" : state.mode === "chat" ? "batch" : "chat";
    setMode(mode);
    tabs[mode === "chat" ? 0 : 1].focus();
  });
}
