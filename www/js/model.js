// Model choice and loading: the model list (the preset, ?model= / ?mmproj=, local files), Load
// with its progress bar, the model info, and Unload.

import { $, basename, el, fmtBytes, fmtDuration, isMmproj, progressHtml } from "./helpers.js";
import { engine, isBusy, lostEngine, params, saveSettings, setEngine, setLostEngine, state } from "./state.js";
import { hideError, pageError, showError } from "./errors.js";
import { forgetEngine, loseEngine, setState } from "./status.js";
import { renderEmptyState } from "./chat.js";
import { refreshCache } from "./storage.js";
import { getApi } from "./package.js";
import { remoteKey, renderSettings } from "./settings.js";

const HF = "https://huggingface.co/mistralai/Ministral-3-3B-Instruct-2512-GGUF/resolve/main/";
const PRESETS = {
  "ministral-3b": {
    label: "Ministral 3 3B Instruct (Q4_K_M + vision)",
    name: "Ministral 3 3B Instruct",
    text: HF + "Ministral-3-3B-Instruct-2512-Q4_K_M.gguf",
    mmproj: HF + "mmproj-Ministral-3-3B-Instruct-2512-F16.gguf",
    note: "mistralai/Ministral-3-3B-Instruct-2512-GGUF on Hugging Face · Q4_K_M text model + F16 vision projector · about 3 GB, downloaded once and kept on this device",
  },
  ...qwen35Preset("0.8B"),
  ...qwen35Preset("2B"),
  ...qwen35Preset("4B"),
  // Large models, for GPUs with the memory: the package plans them from their headers and
  // refuses before the download when `gpuMemory` is too small.
  "llama-3.2-11b-vision": {
    label: "Llama 3.2 11B Vision Instruct (Q4_K, large GPUs)",
    name: "Llama 3.2 11B Vision Instruct",
    repo: "https://huggingface.co/unsloth/Llama-3.2-11B-Vision-Instruct",
    quant: "q4_k",
    gpuMemory: "12G",
    note: "unsloth/Llama-3.2-11B-Vision-Instruct on Hugging Face (an ungated copy of Meta's weights) · BF16 safetensors (~21 GB) quantized to Q4_K while they download; the converted model (~7 GB) is kept on this device · for GPUs with 12 GB or more",
  },
  "mistral-small-3.1-24b": {
    label: "Mistral Small 3.1 24B Instruct (Q4_K_M + vision, large GPUs)",
    name: "Mistral Small 3.1 24B Instruct",
    text: "https://huggingface.co/unsloth/Mistral-Small-3.1-24B-Instruct-2503-GGUF/resolve/main/Mistral-Small-3.1-24B-Instruct-2503-Q4_K_M.gguf",
    mmproj: "https://huggingface.co/unsloth/Mistral-Small-3.1-24B-Instruct-2503-GGUF/resolve/main/mmproj-F16.gguf",
    gpuMemory: "20G",
    note: "unsloth/Mistral-Small-3.1-24B-Instruct-2503-GGUF on Hugging Face · Q4_K_M text model + F16 vision projector · about 15 GB, downloaded once and kept on this device · for GPUs with 20 GB or more",
  },
};

/** A Qwen3.5 preset: unsloth's GGUF conversion of Qwen/Qwen3.5-SIZE (Q4_K_M + F16 mmproj). */
function qwen35Preset(size) {
  const repo = `unsloth/Qwen3.5-${size}-GGUF`;
  const base = `https://huggingface.co/${repo}/resolve/main/`;
  return {
    [`qwen3.5-${size.toLowerCase()}`]: {
      label: `Qwen3.5 ${size} (Q4_K_M + vision)`,
      name: `Qwen3.5 ${size}`,
      text: `${base}Qwen3.5-${size}-Q4_K_M.gguf`,
      mmproj: `${base}mmproj-F16.gguf`,
      note: `${repo} on Hugging Face · Q4_K_M text model + F16 vision projector · downloaded once and kept on this device`,
    },
  };
}

// ------------------------------------------------------------------------------- model source

export function setupModelSelect() {
  const select = $("model-select");
  const local = select.firstElementChild;
  for (const [value, p] of Object.entries(PRESETS)) select.insertBefore(el("option", { value }, p.label), local);
  select.value = "ministral-3b";
  if (params.has("model")) {
    const text = params.get("model");
    const mmproj = params.get("mmproj");
    PRESETS.custom = {
      label: `Custom: ${basename(text)}${mmproj ? " + " + basename(mmproj) : ""}`,
      name: basename(text).replace(/\.gguf$/i, ""),
      text,
      mmproj,
      note: `${new URL(text, location.href).href}${mmproj ? ` with ${new URL(mmproj, location.href).href}` : " (no vision projector)"}`,
    };
    select.insertBefore(el("option", { value: "custom" }, PRESETS.custom.label), select.firstChild);
    select.value = "custom";
  }
  select.addEventListener("change", renderModelSource);
  renderModelSource();
}

function renderModelSource() {
  const v = $("model-select").value;
  $("local-files").hidden = v !== "local";
  const { remote_url: url, remote_model: model } = state.settings;
  $("remote-notice").hidden = v !== "remote";
  $("remote-notice").textContent = url
    ? `Your messages and images are sent to ${url}: they leave this device.`
    : "Your messages and images would be sent to a server: they leave this device.";
  $("model-source").textContent = v === "local"
    ? "Load a GGUF model from this device. Nothing is uploaded."
    : v === "remote"
      ? (url ? `An OpenAI-compatible server · ${model || "its first model"} · set under Settings → Remote server` : "Set the server's base URL under Settings → Remote server.")
      : PRESETS[v]?.note ?? "";
  const parts = state.localFiles.text;
  const size = parts.reduce((a, f) => a + f.size, 0);
  $("model-file-name").textContent = !parts.length ? "none"
    : parts.length === 1 ? `${parts[0].name} · ${fmtBytes(size)}` : `${parts[0].name} + ${parts.length - 1} more parts · ${fmtBytes(size)}`;
  $("model-file-name").classList.toggle("has-file", parts.length > 0);
  $("mmproj-file-name").textContent = state.localFiles.mmproj ? `${state.localFiles.mmproj.name} · ${fmtBytes(state.localFiles.mmproj.size)}` : "none";
  $("mmproj-file-name").classList.toggle("has-file", !!state.localFiles.mmproj);
}

/** The selected model as {name, text, mmproj, kind} or null when local files are missing. */
function selectedSource() {
  const v = $("model-select").value;
  if (v === "remote") {
    const { remote_url: baseURL, remote_model: model } = state.settings;
    if (!baseURL) return null;
    return { kind: "remote", name: model || baseURL, remote: { baseURL, apiKey: remoteKey() || undefined, model: model || undefined } };
  }
  if (v === "local") {
    const { text, mmproj } = state.localFiles;
    if (!text.length) return null;
    const name = text[0].name.replace(/(-\d{5}-of-\d{5})?\.gguf$/i, "");
    return { kind: "local", name, text: text.length === 1 ? text[0] : text, mmproj };
  }
  const p = PRESETS[v];
  if (p.repo) return { kind: "repo", name: p.name, repo: p.repo, quant: p.quant, gpuMemory: p.gpuMemory };
  return { kind: "url", name: p.name, text: new URL(p.text, location.href).href, mmproj: p.mmproj ? new URL(p.mmproj, location.href).href : null, gpuMemory: p.gpuMemory };
}

/** Sorts dropped or picked .gguf files into the vision projector (named *mmproj*) and the
 * text model: one file, or split parts (`name-00001-of-00003.gguf`, …) in name order. */
function setLocalFiles(files) {
  const text = files.filter((f) => !isMmproj(f));
  const mmproj = files.find(isMmproj);
  if (mmproj) state.localFiles.mmproj = mmproj;
  if (text.length) state.localFiles.text = text.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  $("model-select").value = "local";
  renderModelSource();
}

/** .gguf files dropped on the page become the local model, unless something is under way. */
export function openModelFiles(files) {
  if (!files.length) return;
  if (isBusy()) {
    showError(pageError("NoModelFile", "Wait for the current load, reply or batch to finish before opening another model."));
  } else {
    setLocalFiles(files);
  }
}

// ---------------------------------------------------------------------------------- loading

export async function load() {
  if (isBusy()) return;
  const source = selectedSource();
  if (!source) {
    showError($("model-select").value === "remote"
      ? pageError("NoRemoteURL", "No remote server is set.")
      : pageError("NoModelFile", "No text model file is selected."));
    return;
  }
  hideError();
  const mod = await getApi();
  if (!mod) { setState("error"); return; }

  if (engine) await unload({ quiet: true });
  discardLostEngine();
  startProgress(source.remote ? `Connecting to ${source.remote.baseURL}…` : "Starting the engine…");

  try {
    const model = source.repo ? { repo: source.repo, quant: source.quant } : { text: source.text };
    if (source.mmproj) model.mmproj = source.mmproj;
    const e = source.remote ? await mod.createEngine({ remote: source.remote }) : await mod.createEngine({
      model,
      onProgress,
      backend: state.settings.backend,
      ...(state.settings.threads ? { threads: state.settings.threads } : {}),
      // f16 checked: the engine's choice for the adapter; unchecked: f32 matmuls.
      engine: {
        maxContext: state.settings.context,
        ...(state.settings.f16 ? {} : { f16: false }),
        ...(source.gpuMemory ? { gpuMemory: source.gpuMemory } : {}),
      },
    });
    setEngine(e);
    state.info = e.info;
    state.loadedSource = source;
    setState("ready");
    $("progress").value = 1;
    const from = e.info.remote ? "" : e.info.networkBytes > 0 ? `${fmtBytes(e.info.networkBytes)} downloaded` : source.kind === "local" ? "from local files" : "from this device's cache";
    $("progress-text").textContent = e.info.remote
      ? `Ready · ${e.info.model} at ${e.info.baseURL} · requests leave this device`
      : `Ready · loaded in ${e.info.loadSeconds.toFixed(1)} s · ${from}`;
    renderInfo();
    renderEmptyState();
    refreshCache();
    if (matchMedia("(max-width: 860px)").matches) $("messages").scrollIntoView({ behavior: "smooth", block: "start" });
    $("prompt").focus({ preventScroll: true });
  } catch (err) {
    loadFailed((source.remote && await blockedByPolicy(source.remote.baseURL)) || err);
  }
}

/** The error banner's Reload model action after a DeviceLostError: the lost engine loads
 * the same model again on a new GPU device (`engine.reload()`: from Cache Storage, no
 * download); the conversation stays. */
export async function reloadModel() {
  const e = lostEngine;
  if (!e || isBusy()) return;
  setLostEngine(null);
  hideError();
  startProgress("Starting WebGPU again…");
  try {
    await e.reload({ onProgress });
    setEngine(e);
    state.info = e.info;
    setState("ready");
    $("progress").value = 1;
    const from = e.info.networkBytes > 0 ? `${fmtBytes(e.info.networkBytes)} downloaded` : state.loadedSource?.kind === "local" ? "from local files" : "from this device's cache";
    $("progress-text").textContent = `Ready · reloaded in ${e.info.loadSeconds.toFixed(1)} s · ${from}`;
    renderInfo();
    renderEmptyState();
    $("prompt").focus({ preventScroll: true });
  } catch (err) {
    setEngine(e); // loseEngine keeps it for another try when the device was lost again
    loadFailed(err);
  }
}

/** Shows the progress box, empty, for a load starting. */
function startProgress(text) {
  setState("loading");
  state.progress = null;
  state.progressLog = [];
  $("model-info").hidden = true;
  $("progress-box").hidden = false;
  $("progress-box").classList.remove("failed");
  $("progress").value = 0;
  $("progress").removeAttribute("value"); // indeterminate until the first event
  $("progress-text").textContent = text;
}

/** A load or reload failed with `err`. */
function loadFailed(err) {
  loseEngine(err);
  $("progress-box").classList.add("failed");
  $("progress-text").textContent = `Loading failed: ${err?.name ?? "error"}. See the message above.`;
  refreshCache();
}

/** Ends the engine kept after a lost device (its worker), when another load replaces it. */
function discardLostEngine() {
  const e = lostEngine;
  setLostEngine(null);
  e?.unload().catch(() => {});
}

// The page's Content-Security-Policy (tests/browser/server.js: demoCsp) lists the origins it may
// connect to; a remote server's origin must be among them. The browser refuses others before any
// request and reports a violation: the load then fails as a NetworkError, which is put right here.
const violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  violations.push({ directive: e.effectiveDirective, blocked: e.blockedURI });
  if (violations.length > 20) violations.shift();
});

/** A ContentSecurityPolicyError when connecting to `url` was refused by the page's policy. */
async function blockedByPolicy(url) {
  await new Promise((resolve) => setTimeout(resolve, 50)); // the violation event is a task of its own
  let origin;
  try { origin = new URL(url, location.href).origin; } catch { return null; }
  const hit = violations.some((v) => {
    if (v.directive !== "connect-src") return false;
    try { return new URL(v.blocked).origin === origin; } catch { return false; }
  });
  return hit ? pageError("ContentSecurityPolicyError", `This page's Content-Security-Policy does not allow connections to ${origin} (connect-src).`) : null;
}

function onProgress(p) {
  state.progress = p;
  if (state.progressLog.length < 2000) state.progressLog.push(p);
  $("progress").value = Math.min(1, p.fraction || 0);
  const pct = Math.floor((p.fraction || 0) * 100);
  let phase;
  if (p.phase === "ready") phase = "Ready";
  else if (p.fraction >= 1) phase = "Preparing the model on the GPU…";
  else if (p.phase === "cache") phase = "Loading from this device";
  else phase = "Downloading";
  const moving = p.fraction < 1;
  $("progress-text").innerHTML = progressHtml(phase, p.totalBytes > 0 && p.phase !== "ready" ? [
    `${pct}%`,
    `${fmtBytes(p.loadedBytes)} of ${fmtBytes(p.totalBytes)}`,
    p.bytesPerSecond > 0 && moving && `${(p.bytesPerSecond / 1e6).toFixed(1)} MB/s`,
    p.etaSeconds != null && moving && `${fmtDuration(p.etaSeconds)} left`,
  ] : []);
  $("status-text").textContent = p.phase === "ready" ? "Finishing…" : `Loading ${pct}%`;
}

function renderInfo() {
  const i = state.info;
  const dl = $("model-info");
  dl.replaceChildren();
  const row = (k, v) => dl.append(el("dt", {}, k), el("dd", {}, v));
  if (i.remote) {
    row("Model", i.model);
    row("Server", i.baseURL);
    row("Context", i.maxContext ? `${i.maxContext.toLocaleString("en-US")} tokens` : "—");
    row("Runs on", "The server: requests leave this device");
    dl.hidden = false;
    $("chat-title").textContent = i.model;
    return;
  }
  row("Model", i.name || state.loadedSource?.name || "—");
  row("Architecture", `${i.architecture} · ${i.layers} layers · ${i.hidden} wide`);
  row(i.backend?.name === "cpu" ? "Size in memory" : "Size on GPU", fmtBytes(i.weightBytes));
  row("Vision", i.vision ? "Yes (images supported)" : "No (text only)");
  row("Context", `${i.maxContext.toLocaleString("en-US")} tokens`);
  row("Adapter", i.adapter || "—");
  row("Runs on", backendLine(i.backend));
  dl.hidden = false;
  $("chat-title").textContent = i.name || state.loadedSource?.name || "Chat";
}

/** Where the model runs and why, with a button that loads it again on the other backend. */
function backendLine(b) {
  if (!b) return "—";
  const other = b.name === "cpu" ? "webgpu" : "cpu";
  const what = b.name === "cpu"
    ? `The CPU (${b.simd === "relaxed" ? "relaxed SIMD" : b.simd.toUpperCase()}, ${b.threads} thread${b.threads === 1 ? "" : "s"}: ${b.threadsReason})`
    : "The GPU (WebGPU)";
  const button = el("button", {
    id: "switch-backend", type: "button", class: "secondary small",
    onclick: () => {
      state.settings.backend = other;
      saveSettings();
      renderSettings();
      load();
    },
  }, `Switch to ${other === "cpu" ? "the CPU" : "WebGPU"}`);
  return el("span", {}, `${what}: ${b.reason} `, button);
}

/** Unloads the engine; `quiet`: as the first step of another load (no error, no UI reset). */
async function unload({ quiet = false } = {}) {
  const e = engine;
  forgetEngine();
  try { await e?.unload(); } catch (err) { if (!quiet) showError(err); }
  if (!quiet) {
    $("model-info").hidden = true;
    $("progress-box").hidden = true;
    $("chat-title").textContent = "Chat";
    setState("idle");
    renderEmptyState();
  }
}

export function bindModel() {
  $("load").addEventListener("click", load);
  for (const id of ["settings-remote-url", "settings-remote-model"]) $(id).addEventListener("input", renderModelSource);
  $("unload").addEventListener("click", () => unload());
  $("model-file").addEventListener("change", (e) => {
    if (e.target.files?.length) setLocalFiles([...e.target.files].filter((f) => !isMmproj(f)));
  });
  $("mmproj-file").addEventListener("change", (e) => {
    const f = e.target.files?.[0];
    state.localFiles.mmproj = f ?? null;
    renderModelSource();
  });
}
