// webvlm demo page: picks a model, loads it with a progress bar, and chats about images with
// tokens streamed into the transcript, or describes a folder of images one request per image
// (Batch mode, engine.batch) with per-image progress and JSONL / CSV export. All model work
// happens in the package's module worker; this file only moves DOM nodes and messages around
// (no heavy work on the page's thread).
//
// The page's contract for tests (URL parameters, data-state, window.webvlmDemo, ids): tests/browser/DEMO_CONTRACT.md

const $ = (id) => document.getElementById(id);

const HF = "https://huggingface.co/mistralai/Ministral-3-3B-Instruct-2512-GGUF/resolve/main/";
const PRESETS = {
  "ministral-3b": {
    label: "Ministral 3 3B Instruct (Q4_K_M + vision)",
    name: "Ministral 3 3B Instruct",
    text: HF + "Ministral-3-3B-Instruct-2512-Q4_K_M.gguf",
    mmproj: HF + "mmproj-Ministral-3-3B-Instruct-2512-F16.gguf",
    note: "mistralai/Ministral-3-3B-Instruct-2512-GGUF on Hugging Face · Q4_K_M text model + F16 vision projector · about 3 GB, downloaded once and kept on this device",
  },
};

const DEFAULT_SETTINGS = {
  temperature: 0.15,
  top_p: 0.95,
  max_tokens: 512,
  image_max_edge: 1540,
  system: "",
  context: 4096,
  f16: false,
};
const SETTINGS_KEY = "webvlm-demo-settings-v1";

const params = new URLSearchParams(location.search);

/** Everything the page knows; exposed as window.webvlmDemo.state. */
const state = {
  status: "idle",
  mode: "chat",
  info: null,
  progress: null,
  progressLog: [],
  messages: [],
  attachments: [],
  settings: loadSettings(),
  localFiles: { text: [], mmproj: null }, // text: one file, or split parts in name order
  loadedSource: null,
  lastReply: null,
  lastError: null,
  batch: { status: "empty", items: [], run: null },
};

let api = null; // the package module
let engine = null;
let stopRequested = false;
let stopGrace = null; // resolves the running reply's stop race (see send)
const STOPPED = Symbol("stopped");
const STOP_GRACE_MS = 250;
let attachmentId = 0;

window.webvlmDemo = {
  get engine() { return engine; },
  get api() { return api; },
  state,
};

// ---------------------------------------------------------------------------------- helpers

function setState(s) {
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

function modelName() {
  return state.info?.name || state.loadedSource?.name || "model";
}

function updateControls() {
  const s = state.status;
  const busy = s === "loading" || s === "generating" || s === "batch";
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
  updateBatchControls();
}

const fmtBytes = (n) => {
  if (!Number.isFinite(n)) return "—";
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(n >= 1e8 ? 0 : 1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(0)} kB`;
  return `${n} B`;
};

const fmtDuration = (s) => {
  if (s == null || !Number.isFinite(s)) return "";
  if (s < 1) return "< 1 s";
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
};

const basename = (url) => {
  try {
    const path = new URL(url, location.href).pathname;
    return decodeURIComponent(path.slice(path.lastIndexOf("/") + 1)) || url;
  } catch {
    return String(url);
  }
};

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, "");
    else if (v !== false && v != null) node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

const ICON_X = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M6 6l12 12M18 6 6 18" stroke="currentColor" stroke-width="2.5" stroke-linecap="round"/></svg>';
const ICON_TRASH = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 7h16M10 11v6M14 11v6M6 7l1 12a2 2 0 0 0 2 2h6a2 2 0 0 0 2-2l1-12M9 7V4h6v3" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"/></svg>';

// ----------------------------------------------------------------------------------- errors

const ERROR_TEXT = {
  NoWebGPUError: {
    title: "WebGPU is not available in this browser",
    hint: "Use a recent Chrome or Edge (version 113 or later) on Windows, macOS or ChromeOS, or Chrome 121+ on Android. "
      + "On Linux, enable chrome://flags/#enable-unsafe-webgpu (and #enable-vulkan). Firefox Nightly and Safari Technology "
      + "Preview need WebGPU switched on in their settings. Also check that hardware acceleration is enabled.",
  },
  AdapterTooSmallError: {
    title: "Your GPU cannot hold this model",
    hint: "The graphics adapter's memory or buffer limits are too small. Try a smaller model, a shorter context length in Settings, "
      + "half precision, or a device with a more capable GPU.",
  },
  ModelNotSupportedError: {
    title: "This model is not supported",
    hint: "webvlm runs llama-architecture GGUF models (Ministral 3, Llama, SmolLM2, …) with their Pixtral vision projector (mmproj). "
      + "Check that you picked the text model as the model and the mmproj file as the vision projector.",
  },
  DownloadError: {
    title: "The download failed",
    hint: "Check your connection and press Load again. Parts already downloaded are kept, so the download resumes where it stopped.",
  },
  QuotaExceededError: {
    title: "Not enough storage space",
    hint: "Delete models you no longer need in the Storage panel, or free space for this site in the browser's settings, then load again.",
  },
  DeviceLostError: {
    title: "The GPU was lost",
    hint: "The graphics driver was reset or the tab ran out of GPU memory. Reload the page to start again.",
    reload: true,
  },
  BadRequestError: {
    title: "The model could not answer this request",
    hint: "Try a smaller image size limit in Settings, fewer or smaller images, a shorter message, or start a new chat.",
  },
  EngineUnloadedError: {
    title: "The engine stopped",
    hint: "Load the model again to continue. If this keeps happening, reload the page.",
  },
  PackageMissing: {
    title: "The webvlm package could not be loaded",
    hint: "The page expects the built package in www/pkg/. Build it with ./build.sh (or serve the demo with ./build.sh serve).",
  },
  NoModelFile: {
    title: "Choose a model file first",
    hint: "Pick the text model (.gguf) and, for images, its vision projector (mmproj .gguf), or drop them onto the page.",
  },
  ImageError: {
    title: "That image could not be attached",
    hint: "Attach PNG, JPEG, WebP or GIF images.",
  },
  NoVision: {
    title: "This model cannot see images",
    hint: "It was loaded without a vision projector. Load an mmproj file with it to ask about images, or remove the attachments.",
  },
};

/** Shows the error banner for any thrown value; never throws. */
function showError(err, { name } = {}) {
  const errName = name || err?.name || "Error";
  const message = String(err?.message ?? err ?? "Unknown error");
  const text = ERROR_TEXT[errName] ?? {
    title: "Something went wrong",
    hint: "Try again. If the problem persists, reload the page.",
  };
  state.lastError = { name: errName, message };
  const box = $("error");
  box.dataset.errorName = errName;
  $("error-title").textContent = text.title;
  $("error-message").textContent = message;
  $("error-hint").textContent = text.hint;
  $("error-reload").hidden = !text.reload;
  box.hidden = false;
  console.warn(`[webvlm demo] ${errName}: ${message}`);
}

function hideError() {
  $("error").hidden = true;
  delete $("error").dataset.errorName;
}

/** A plain error object with a name, for failures that happen on the page (not in the engine). */
const pageError = (name, message) => Object.assign(new Error(message), { name });

// ---------------------------------------------------------------------------------- settings

function loadSettings() {
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? "{}") ?? {}; } catch { /* private mode */ }
  const s = { ...DEFAULT_SETTINGS, ...saved };
  const num = (k, p = k) => { if (params.has(p) && Number.isFinite(Number(params.get(p)))) s[k] = Number(params.get(p)); };
  num("temperature"); num("top_p"); num("max_tokens"); num("image_max_edge"); num("context");
  if (params.has("f16")) s.f16 = params.get("f16") === "1" || params.get("f16") === "true";
  return s;
}

function saveSettings() {
  try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(state.settings)); } catch { /* private mode */ }
}

const SETTING_FIELDS = [
  ["temperature", "settings-temperature", Number],
  ["top_p", "settings-top-p", Number],
  ["max_tokens", "settings-max-tokens", (v) => Math.round(Number(v))],
  ["image_max_edge", "settings-image-max-edge", (v) => Math.round(Number(v))],
  ["system", "settings-system", String],
  ["context", "settings-context", Number],
];

function renderSettings() {
  for (const [key, id] of SETTING_FIELDS) {
    $(id).value = state.settings[key];
    const range = $(`${id}-range`);
    if (range) range.value = state.settings[key];
  }
  // A context from the query string that is not in the list still shows.
  const ctx = $("settings-context");
  if (![...ctx.options].some((o) => Number(o.value) === state.settings.context)) {
    ctx.append(el("option", { value: state.settings.context }, state.settings.context.toLocaleString("en-US")));
    ctx.value = state.settings.context;
  }
  $("settings-f16").checked = !!state.settings.f16;
}

function bindSettings() {
  for (const [key, id, parse] of SETTING_FIELDS) {
    const input = $(id);
    const range = $(`${id}-range`);
    const commit = (raw) => {
      const v = parse(raw);
      if (typeof v === "number" && !Number.isFinite(v)) return;
      const min = input.min !== "" ? Number(input.min) : -Infinity;
      const max = input.max !== "" ? Number(input.max) : Infinity;
      state.settings[key] = typeof v === "number" ? Math.min(max, Math.max(min, v)) : v;
      saveSettings();
    };
    input.addEventListener("input", () => {
      if (range) range.value = input.value;
      if (input.value !== "") commit(input.value);
    });
    input.addEventListener("change", () => {
      if (input.value === "") input.value = state.settings[key];
      commit(input.value);
      input.value = state.settings[key];
      if (range) range.value = state.settings[key];
    });
    range?.addEventListener("input", () => {
      input.value = range.value;
      commit(range.value);
    });
  }
  $("settings-f16").addEventListener("change", (e) => { state.settings.f16 = e.target.checked; saveSettings(); });
  $("settings-reset").addEventListener("click", () => {
    state.settings = { ...DEFAULT_SETTINGS };
    saveSettings();
    renderSettings();
  });
}

// ------------------------------------------------------------------------------- model source

function setupModelSelect() {
  const select = $("model-select");
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
  $("model-source").textContent = v === "local"
    ? "Load a GGUF model from this device. Nothing is uploaded."
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
  if (v === "local") {
    const { text, mmproj } = state.localFiles;
    if (!text.length) return null;
    const name = text[0].name.replace(/(-\d{5}-of-\d{5})?\.gguf$/i, "");
    return { kind: "local", name, text: text.length === 1 ? text[0] : text, mmproj };
  }
  const p = PRESETS[v];
  return { kind: "url", name: p.name, text: new URL(p.text, location.href).href, mmproj: p.mmproj ? new URL(p.mmproj, location.href).href : null };
}

/** Sorts dropped or picked .gguf files into the vision projector (named *mmproj*) and the
 * text model: one file, or split parts (`name-00001-of-00003.gguf`, …) in name order. */
function setLocalFiles(files) {
  const text = files.filter((f) => !/mmproj/i.test(f.name));
  const mmproj = files.find((f) => /mmproj/i.test(f.name));
  if (mmproj) state.localFiles.mmproj = mmproj;
  if (text.length) state.localFiles.text = text.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  $("model-select").value = "local";
  renderModelSource();
}

// ---------------------------------------------------------------------------------- loading

async function getApi() {
  if (api) return api;
  try {
    api = await import("./pkg/index.js");
    return api;
  } catch (e) {
    showError(pageError("PackageMissing", `./pkg/index.js: ${e.message ?? e}`));
    return null;
  }
}

async function load() {
  if (state.status === "loading" || state.status === "generating" || state.status === "batch") return;
  const source = selectedSource();
  if (!source) {
    showError(pageError("NoModelFile", "No text model file is selected."));
    return;
  }
  hideError();
  const mod = await getApi();
  if (!mod) { setState("error"); return; }

  if (engine) await unload({ quiet: true });
  setState("loading");
  state.progress = null;
  state.progressLog = [];
  $("model-info").hidden = true;
  $("progress-box").hidden = false;
  $("progress-box").classList.remove("failed");
  $("progress").value = 0;
  $("progress").removeAttribute("value"); // indeterminate until the first event
  $("progress-text").textContent = "Starting WebGPU…";

  try {
    const model = { text: source.text };
    if (source.mmproj) model.mmproj = source.mmproj;
    const e = await mod.createEngine({
      model,
      onProgress,
      engine: { maxContext: state.settings.context, f16: !!state.settings.f16 },
    });
    engine = e;
    state.info = e.info;
    state.loadedSource = source;
    setState("ready");
    $("progress").value = 1;
    const from = e.info.networkBytes > 0 ? `${fmtBytes(e.info.networkBytes)} downloaded` : source.kind === "local" ? "from local files" : "from this device's cache";
    $("progress-text").textContent = `Ready · loaded in ${e.info.loadSeconds.toFixed(1)} s · ${from}`;
    renderInfo();
    renderEmptyState();
    refreshCache();
    if (matchMedia("(max-width: 860px)").matches) $("messages").scrollIntoView({ behavior: "smooth", block: "start" });
    $("prompt").focus({ preventScroll: true });
  } catch (err) {
    engine = null;
    state.info = null;
    setState("error");
    $("progress-box").classList.add("failed");
    $("progress-text").textContent = `Loading failed: ${err?.name ?? "error"}. See the message above.`;
    showError(err);
    refreshCache();
  }
}

function onProgress(p) {
  state.progress = p;
  if (state.progressLog.length < 2000) state.progressLog.push(p);
  const bar = $("progress");
  bar.value = Math.min(1, p.fraction || 0);
  const pct = Math.floor((p.fraction || 0) * 100);
  let phase;
  if (p.phase === "ready") phase = "Ready";
  else if (p.fraction >= 1) phase = "Preparing the model on the GPU…";
  else if (p.phase === "cache") phase = "Loading from this device";
  else phase = "Downloading";
  const parts = [`<strong>${phase}</strong>`];
  if (p.totalBytes > 0 && p.phase !== "ready") {
    parts.push(`${pct}%`);
    parts.push(`${fmtBytes(p.loadedBytes)} of ${fmtBytes(p.totalBytes)}`);
    if (p.bytesPerSecond > 0 && p.fraction < 1) parts.push(`${(p.bytesPerSecond / 1e6).toFixed(1)} MB/s`);
    if (p.etaSeconds != null && p.fraction < 1) parts.push(`${fmtDuration(p.etaSeconds)} left`);
  }
  $("progress-text").innerHTML = parts.join(" · ");
  $("status-text").textContent = p.phase === "ready" ? "Finishing…" : `Loading ${pct}%`;
}

function renderInfo() {
  const i = state.info;
  const dl = $("model-info");
  dl.replaceChildren();
  const row = (k, v) => dl.append(el("dt", {}, k), el("dd", {}, v));
  row("Model", i.name || state.loadedSource?.name || "—");
  row("Architecture", `${i.architecture} · ${i.layers} layers · ${i.hidden} wide`);
  row("Size on GPU", fmtBytes(i.weightBytes));
  row("Vision", i.vision ? "Yes (images supported)" : "No (text only)");
  row("Context", `${i.maxContext.toLocaleString("en-US")} tokens`);
  row("Adapter", i.adapter || "—");
  dl.hidden = false;
  $("chat-title").textContent = i.name || state.loadedSource?.name || "Chat";
}

async function unload({ quiet = false } = {}) {
  const e = engine;
  engine = null;
  state.info = null;
  try { await e?.unload(); } catch (err) { if (!quiet) showError(err); }
  if (!quiet) {
    $("model-info").hidden = true;
    $("progress-box").hidden = true;
    $("chat-title").textContent = "Chat";
    setState("idle");
    renderEmptyState();
  }
}

// ----------------------------------------------------------------------------- attachments

function addAttachments(files) {
  const images = [...files].filter((f) => f.type.startsWith("image/"));
  const rejected = [...files].filter((f) => !f.type.startsWith("image/"));
  if (rejected.length) showError(pageError("ImageError", `${rejected.map((f) => f.name || "file").join(", ")}: not an image`));
  for (const file of images) {
    const a = { id: ++attachmentId, file, name: file.name || "pasted image", url: URL.createObjectURL(file) };
    a.dataUrl = readDataUrl(file);
    a.dataUrl.catch(() => {});
    state.attachments.push(a);
  }
  renderAttachments();
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error ?? new Error("could not read the file"));
    r.readAsDataURL(file);
  });
}

function removeAttachment(id) {
  const i = state.attachments.findIndex((a) => a.id === id);
  if (i < 0) return;
  URL.revokeObjectURL(state.attachments[i].url);
  state.attachments.splice(i, 1);
  renderAttachments();
  $("prompt").focus();
}

function renderAttachments() {
  const list = $("attachments");
  list.replaceChildren(...state.attachments.map((a) => {
    const remove = el("button", {
      type: "button", class: "attachment-remove", "aria-label": `Remove ${a.name}`, title: "Remove",
      onclick: () => removeAttachment(a.id),
    });
    remove.innerHTML = ICON_X;
    return el("li", { dataset: { id: a.id } }, el("img", { src: a.url, alt: a.name }), remove);
  }));
  list.hidden = state.attachments.length === 0;
  updateControls();
}

// ------------------------------------------------------------------------------------- chat

function renderEmptyState() {
  const empty = $("empty");
  empty.hidden = $("messages").querySelector(".msg") !== null;
  if (engine && state.info) {
    $("empty-title").textContent = state.info.vision ? "Ask about an image" : "Start a conversation";
    $("empty-text").textContent = state.info.vision
      ? "Attach an image (paperclip, paste or drop it here) and ask a question. Everything runs on your GPU."
      : "This model was loaded without a vision projector, so it answers text only.";
  } else {
    $("empty-title").textContent = "Ask about an image";
    $("empty-text").textContent = "Load the model to start. The first download is about 3 GB; after that it is stored on this device.";
  }
  for (const c of document.querySelectorAll("#suggestions .chip")) c.disabled = false;
}

function scrollToEnd(force = false) {
  const m = $("messages");
  if (force || m.scrollHeight - m.scrollTop - m.clientHeight < 120) m.scrollTop = m.scrollHeight;
}

function renderUserMessage(text, attachments) {
  const node = el("div", { class: "msg user" }, el("div", { class: "msg-role" }, "You"));
  if (attachments.length) {
    node.append(el("div", { class: "msg-images" }, ...attachments.map((a) =>
      el("img", { src: a.url, alt: a.name, tabindex: "0", title: a.name, onclick: () => openImage(a.url, a.name),
        onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openImage(a.url, a.name); } } }))));
  }
  if (text) node.append(el("div", { class: "bubble" }, text));
  $("messages").append(node);
  return node;
}

function renderAssistantMessage() {
  const content = el("span", { class: "content" });
  const typing = el("span", { class: "typing", "aria-label": "The model is thinking" }, el("span"), el("span"), el("span"));
  const bubble = el("div", { class: "bubble" }, typing, content);
  const meta = el("div", { class: "msg-meta" });
  const node = el("div", { class: "msg assistant", dataset: { state: "streaming" } },
    el("div", { class: "msg-role" }, modelName()), bubble, meta);
  $("messages").append(node);
  let text = "";
  return {
    node,
    append(delta) {
      if (typing.isConnected) typing.remove();
      // The reply's leading whitespace (tokens often start with a space) is not shown.
      const shown = text.trim() === "" ? delta.trimStart() : delta;
      text += delta;
      if (shown) content.append(shown); // a text node per delta: cheap, no re-layout of earlier text
    },
    finish({ finishReason, usage, error, stopped, deltas = 0, firstTokenMs = null }) {
      typing.remove();
      if (error) {
        node.dataset.state = "error";
        if (!text.trim()) content.textContent = "No reply: " + (error.message ?? error);
        meta.append(el("span", { class: "badge failed" }, error.name || "Error"));
      } else if (stopped || finishReason === "abort") {
        node.dataset.state = "stopped";
        if (!text.trim()) content.textContent = "(stopped before the first token)";
        meta.append(el("span", { class: "badge stopped" }, "Stopped"));
      } else {
        node.dataset.state = "done";
        if (!text.trim()) content.textContent = "(empty reply)";
        if (finishReason === "length") meta.append(el("span", { class: "badge", title: "Raise Max tokens in Settings for longer replies" }, "Max tokens reached"));
      }
      if (usage?.timings) {
        const t = usage.timings;
        const stats = [
          `${t.time_to_first_token.toFixed(2)} s to first token`,
          `${t.decode_tokens_per_second.toFixed(1)} tokens/s`,
          `${usage.completion_tokens} tokens`,
        ].join(" · ");
        const cached = usage.prompt_tokens_details?.cached_tokens ?? 0;
        meta.append(el("span", {
          class: "msg-stats",
          title: `Prompt: ${usage.prompt_tokens} tokens (${cached} reused from the prompt cache), the rest at ${t.prefill_tokens_per_second.toFixed(0)} tokens/s`,
        }, stats));
      } else if (!error && firstTokenMs != null) {
        // Stopped before the engine reported its timings: what the page measured.
        meta.append(el("span", { class: "msg-stats", title: "Measured on the page" },
          `${(firstTokenMs / 1000).toFixed(2)} s to first token · ${deltas} token${deltas === 1 ? "" : "s"}`));
      }
    },
    get text() { return text; },
  };
}

async function send() {
  if (state.status !== "ready" || !engine) return;
  const text = $("prompt").value.trim();
  const attachments = state.attachments.slice();
  if (!text && attachments.length === 0) return;
  if (attachments.length && state.info && !state.info.vision) {
    showError(pageError("NoVision", "The loaded model has no vision projector (mmproj)."));
    return;
  }
  let urls;
  try {
    urls = await Promise.all(attachments.map((a) => a.dataUrl));
  } catch (e) {
    showError(pageError("ImageError", e.message ?? String(e)));
    return;
  }
  if (state.status !== "ready" || !engine) return;
  hideError();

  const content = attachments.length
    ? [...urls.map((url) => ({ type: "image_url", image_url: { url } })), ...(text ? [{ type: "text", text }] : [])]
    : text;
  const userMessage = { role: "user", content };

  // Clear the composer; the transcript keeps the object URLs for its thumbnails.
  $("prompt").value = "";
  autosize();
  state.attachments = [];
  renderAttachments();
  $("empty").hidden = true;
  renderUserMessage(text, attachments);
  state.messages.push(userMessage);
  const reply = renderAssistantMessage();
  scrollToEnd(true);

  stopRequested = false;
  $("stop").disabled = false;
  setState("generating");
  const s = state.settings;
  const messages = s.system.trim() ? [{ role: "system", content: s.system.trim() }, ...state.messages] : [...state.messages];
  const last = { text: "", deltas: 0, finishReason: null, usage: null, stopped: false, error: null, firstTokenMs: null };
  state.lastReply = last;
  const sentAt = performance.now();
  const stopped = new Promise((resolve) => { stopGrace = resolve; });

  try {
    const stream = await engine.chat.completions.create({
      messages,
      stream: true,
      stream_options: { include_usage: true },
      temperature: s.temperature,
      top_p: s.top_p,
      max_tokens: s.max_tokens,
      image_max_edge: s.image_max_edge,
    });
    // Read the stream by hand so that Stop can end the reply on the page at once: the engine
    // stops after its current token, and a slow GPU may take a while to get there.
    const it = stream[Symbol.asyncIterator]();
    for (;;) {
      const next = it.next();
      next.catch(() => {}); // a step that loses the race below must not count as unhandled
      const step = await Promise.race([next, stopped]);
      // Let go of the iterator without return(): its cleanup would send another stop, which
      // could reach the worker after the next request has started.
      if (step === STOPPED) break;
      if (step.done) break;
      const chunk = step.value;
      const choice = chunk.choices?.[0];
      const delta = choice?.delta?.content;
      if (delta) {
        if (last.deltas === 0) last.firstTokenMs = performance.now() - sentAt;
        reply.append(delta);
        last.text += delta;
        last.deltas++;
        scrollToEnd();
      }
      if (choice?.finish_reason) last.finishReason = choice.finish_reason;
      if (chunk.usage) last.usage = chunk.usage;
    }
  } catch (err) {
    stopGrace = null;
    last.error = { name: err?.name ?? "Error", message: String(err?.message ?? err) };
    reply.finish({ error: err });
    state.messages.pop(); // the conversation sent next must not hold the failed turn
    const lost = err?.name === "DeviceLostError" || err?.name === "EngineUnloadedError";
    if (lost) {
      engine = null;
      state.info = null;
      $("model-info").hidden = true;
      setState("error");
    } else {
      setState("ready");
    }
    showError(err);
    scrollToEnd();
    return;
  }
  last.stopped = stopRequested || last.finishReason === "abort";
  stopGrace = null;
  reply.finish({ finishReason: last.finishReason, usage: last.usage, stopped: last.stopped, deltas: last.deltas, firstTokenMs: last.firstTokenMs });
  state.messages.push({ role: "assistant", content: last.text });
  setState("ready");
  scrollToEnd();
  if (!matchMedia("(pointer: coarse)").matches) $("prompt").focus({ preventScroll: true });
}

function stop() {
  if (state.status !== "generating" || !engine || stopRequested) return;
  stopRequested = true;
  engine.stop();
  $("stop").disabled = true;
  $("status-text").textContent = "Stopping…";
  // Give the engine a moment to finish its token (the reply then keeps its timings); after
  // that the page lets go of the stream and shows the reply as stopped right away.
  const release = stopGrace;
  setTimeout(() => release?.(STOPPED), STOP_GRACE_MS);
}

function newChat() {
  if (state.status === "generating") return;
  for (const img of $("messages").querySelectorAll(".msg-images img")) URL.revokeObjectURL(img.src);
  for (const m of $("messages").querySelectorAll(".msg")) m.remove();
  state.messages = [];
  state.lastReply = null;
  renderEmptyState();
  updateControls();
  $("prompt").focus();
}

function openImage(src, alt) {
  const dialog = el("dialog", { class: "lightbox", "aria-label": alt },
    el("img", { src, alt }));
  dialog.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}

function autosize() {
  const t = $("prompt");
  t.style.height = "auto";
  t.style.height = `${Math.min(t.scrollHeight, 200)}px`;
}

// ------------------------------------------------------------------------------------ cache

async function refreshCache() {
  const list = $("cache-list");
  if (typeof caches === "undefined") {
    list.replaceChildren(el("li", { class: "cache-empty" }, "Cache Storage is not available here (it needs https or localhost)."));
    $("cache-total").textContent = "—";
    return;
  }
  const mod = api ?? (await getApiQuiet());
  if (!mod) {
    list.replaceChildren(el("li", { class: "cache-empty" }, "Unavailable until the engine package loads."));
    return;
  }
  let contents;
  try {
    contents = await mod.cacheContents();
  } catch (e) {
    list.replaceChildren(el("li", { class: "cache-empty" }, `Could not read the cache: ${e.message ?? e}`));
    return;
  }
  const inUse = new Set([state.loadedSource?.text, state.loadedSource?.mmproj].filter((u) => typeof u === "string"));
  if (contents.entries.length === 0) {
    list.replaceChildren(el("li", { class: "cache-empty" }, "Nothing stored yet."));
  } else {
    list.replaceChildren(...contents.entries.map((entry) => {
      const del = el("button", {
        type: "button", class: "icon-btn cache-delete", "aria-label": `Delete ${basename(entry.url)} from this device`, title: "Delete",
        onclick: () => deleteEntry(entry.url),
      });
      del.innerHTML = ICON_TRASH;
      let host = "";
      try { host = new URL(entry.url).host; } catch { /* keep empty */ }
      return el("li", { dataset: { url: entry.url }, title: entry.url },
        el("span", { class: "cache-name" }, basename(entry.url)),
        el("span", { class: "cache-meta" }, [fmtBytes(entry.bytes), `${entry.chunks} chunk${entry.chunks === 1 ? "" : "s"}`, host, inUse.has(entry.url) && engine ? "in use" : null].filter(Boolean).join(" · ")),
        del);
    }));
  }
  $("cache-total").textContent = fmtBytes(contents.bytes);
  $("cache-clear").disabled = contents.entries.length === 0 || state.status === "loading";
  updateControls();
  try {
    const est = await navigator.storage?.estimate?.();
    if (est?.quota) $("storage-estimate").textContent = `This site uses ${fmtBytes(est.usage ?? 0)} of ${fmtBytes(est.quota)} available.`;
  } catch { /* not essential */ }
}

async function getApiQuiet() {
  try { api = await import("./pkg/index.js"); return api; } catch { return null; }
}

async function deleteEntry(url) {
  try {
    await (api ?? (await getApi()))?.deleteCached(url);
  } catch (e) {
    showError(e);
  }
  refreshCache();
}

async function clearCache() {
  try {
    await (api ?? (await getApi()))?.deleteCached();
  } catch (e) {
    showError(e);
  }
  refreshCache();
}

// ------------------------------------------------------------------------------------ batch
//
// "Describe a folder of images": every image becomes one request of engine.batch (a data: URL
// and the prompt in a user message). Images are read into data: URLs a few at a time, the next
// few while the engine works on the current ones, so a folder of gigabytes never sits in
// memory at once; thumbnails are object URLs of the files (decoded lazily by the browser).

const DEFAULT_BATCH_PROMPT = "Describe this image in one sentence.";
const BATCH_CHUNK = 4; // images per engine.batch call (read into data: URLs together)
const IMAGE_EXT = /\.(png|jpe?g|jfif|webp|gif|bmp|avif|tiff?|ico)$/i;
const isImageFile = (f) => (f.type ? f.type.startsWith("image/") : IMAGE_EXT.test(f.name));
const BATCH_LABEL = { queued: "Queued", running: "Describing…", done: "Done", failed: "Failed", stopped: "Stopped" };
const ICON_IMAGE = '<svg viewBox="0 0 24 24" aria-hidden="true"><rect x="3" y="4" width="18" height="16" rx="3" fill="none" stroke="currentColor" stroke-width="1.8"/><circle cx="9" cy="10" r="2" fill="currentColor"/><path d="m4 18 5-5 4 4 3-3 4 4" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linejoin="round"/></svg>';

let batchItemId = 0;
let batchAbort = null; // the running batch's AbortController
const batchNodes = new Map(); // item id -> its li

function setMode(mode) {
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

function setBatchStatus(s) {
  state.batch.status = s;
  $("batch-panel").dataset.state = s;
  updateBatchControls();
}

/** Files from a picker or a drop as [{file, path}] (path: inside a picked or dropped folder). */
function addBatchFiles(entries) {
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

function setItemState(item, s) {
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
    item.metaText = [String(err.code ?? "Error"), ms != null ? `${(ms / 1000).toFixed(1)} s` : null].filter(Boolean).join(" · ");
    setItemState(item, "failed");
  } else {
    const body = result.response.body;
    const choice = body.choices?.[0];
    item.error = null;
    item.text = String(choice?.message?.content ?? "").trim();
    const finish = choice?.finish_reason;
    item.metaText = [
      body.usage ? `${body.usage.completion_tokens} tokens` : null,
      ms != null ? `${(ms / 1000).toFixed(1)} s` : null,
      finish === "length" ? "max tokens reached" : null,
    ].filter(Boolean).join(" · ");
    setItemState(item, finish === "abort" ? "stopped" : "done");
  }
}

function batchCounts() {
  const c = { queued: 0, running: 0, done: 0, failed: 0, stopped: 0 };
  for (const i of state.batch.items) c[i.state]++;
  return c;
}

function renderBatchSummary() {
  const items = state.batch.items;
  const bytes = items.reduce((a, i) => a + i.file.size, 0);
  $("batch-summary").textContent = items.length
    ? [`${items.length} image${items.length === 1 ? "" : "s"}`, fmtBytes(bytes), state.batch.addNote].filter(Boolean).join(" · ")
    : state.batch.addNote
      ? `No images added: ${state.batch.addNote}.`
      : "Drop images or a folder here, or choose them. Each image gets its own reply.";
}

function updateBatchProgress() {
  const items = state.batch.items;
  const run = state.batch.run;
  const c = batchCounts();
  const box = $("batch-progress-box");
  box.hidden = !run;
  $("mode-batch-count").hidden = state.batch.status !== "running" && state.batch.status !== "stopping";
  if (!run) return;
  const finished = c.done + c.failed + c.stopped;
  $("batch-progress").value = items.length ? finished / items.length : 0;
  box.classList.toggle("failed", c.failed > 0 && c.done === 0 && state.batch.status !== "running");
  const now = run.endedAt ?? performance.now();
  const minutes = (now - run.startedAt) / 60000;
  const rate = run.completed > 0 && minutes > 0 ? run.completed / minutes : null;
  const parts = [];
  const status = state.batch.status;
  if (status === "running") parts.push(`<strong>Describing ${Math.min(items.length, finished + 1)} of ${items.length}</strong>`);
  else if (status === "stopping") parts.push("<strong>Stopping…</strong>");
  else if (status === "stopped") parts.push(`<strong>Stopped</strong> · ${finished} of ${items.length}`);
  else parts.push(`<strong>${finished === items.length ? "Finished" : `${finished} of ${items.length}`}</strong>`);
  parts.push(`${c.done} done`);
  parts.push(`<span class="${c.failed ? "count-failed" : ""}">${c.failed} failed</span>`);
  if (c.stopped) parts.push(`${c.stopped} stopped`);
  if (rate != null) parts.push(`${rate >= 10 ? rate.toFixed(0) : rate.toFixed(1)} images/min`);
  const left = run.total - run.completed;
  if (status === "running" && rate != null && left > 0) parts.push(`about ${fmtDuration((left / rate) * 60)} left`);
  if (status !== "running" && status !== "stopping" && run.endedAt) parts.push(`${fmtDuration((run.endedAt - run.startedAt) / 1000)} in all`);
  $("batch-progress-text").innerHTML = parts.join(" · ");
  $("mode-batch-count").textContent = `${finished}/${items.length}`;
  if (state.status === "batch") $("status-text").textContent = status === "stopping" ? "Stopping…" : `Describing image ${Math.min(items.length, finished + 1)} of ${items.length}`;
}

/** The items a Start would run: those not done; all of them when every one is done. */
function batchTodo() {
  const items = state.batch.items;
  const todo = items.filter((i) => i.state !== "done");
  return todo.length ? todo : items.slice();
}

function updateBatchControls() {
  const s = state.status;
  const b = state.batch;
  const running = b.status === "running" || b.status === "stopping";
  const items = b.items;
  const noVision = !!(engine && state.info && !state.info.vision);
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
  else if (!items.length) hint = "Add images to start. They stay on this device.";
  else {
    const n = batchTodo().length;
    hint = `${n} image${n === 1 ? "" : "s"} to describe · up to ${state.settings.max_tokens} tokens each · images scaled to at most ${state.settings.image_max_edge} px (Settings).`;
  }
  $("batch-hint").textContent = hint;
}

async function startBatch() {
  if (state.status !== "ready" || !engine || state.batch.status === "running" || state.batch.status === "stopping") return;
  if (state.info && !state.info.vision) {
    showError(pageError("NoVision", "The loaded model has no vision projector (mmproj)."));
    return;
  }
  const todo = batchTodo();
  if (!todo.length) return;
  hideError();
  const prompt = $("batch-prompt").value.trim() || DEFAULT_BATCH_PROMPT;
  const s = state.settings;
  const system = s.system.trim() ? [{ role: "system", content: s.system.trim() }] : [];
  // The prompt comes before the image: every request then starts with the same tokens, which
  // the engine keeps from the previous request (only the image and what follows are new).
  const body = (url) => ({
    messages: [...system, { role: "user", content: [{ type: "text", text: prompt }, { type: "image_url", image_url: { url } }] }],
    temperature: s.temperature,
    top_p: s.top_p,
    max_tokens: s.max_tokens,
    image_max_edge: s.image_max_edge,
  });
  for (const item of todo) {
    item.result = null;
    item.error = null;
    item.text = "";
    item.metaText = "";
    setItemState(item, "queued");
  }
  const abort = new AbortController();
  batchAbort = abort;
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
  const STOP = Symbol("stop");
  const stopped = new Promise((resolve) => abort.signal.addEventListener("abort", () => setTimeout(() => resolve(STOP), STOP_GRACE_MS), { once: true }));
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
      if (ready === STOP) break;
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
      setItemState(sent[0], "running");
      const done = engine.batch(lines, {
        signal: abort.signal,
        onProgress: ({ completed, result }) => {
          if (closed) return;
          finishItem(sent[completed - 1], result, run);
          const code = result.error?.code;
          if (code === "DeviceLostError" || code === "EngineUnloadedError") {
            fatal ??= Object.assign(new Error(result.error.message), { name: code });
            abort.abort();
          } else if (completed < sent.length && !abort.signal.aborted) {
            setItemState(sent[completed], "running");
          }
          updateBatchProgress();
        },
      });
      done.catch(() => {});
      if ((await Promise.race([done, stopped])) === STOP) break;
    }
  } catch (err) {
    fatal = err; // engine.batch refused the whole batch (it reports request failures per line)
  }
  closed = true;
  clearInterval(tick);
  batchAbort = null;
  run.endedAt = performance.now();
  for (const item of todo) {
    if (item.state === "running") {
      item.metaText = item.startedAt ? `stopped after ${((run.endedAt - item.startedAt) / 1000).toFixed(1)} s` : "";
      setItemState(item, "stopped");
    }
  }
  setBatchStatus(abort.signal.aborted && !fatal ? "stopped" : "done");
  if (fatal && (fatal.name === "DeviceLostError" || fatal.name === "EngineUnloadedError")) {
    engine = null;
    state.info = null;
    $("model-info").hidden = true;
    setState("error");
    showError(fatal);
  } else {
    setState("ready");
    if (fatal) showError(fatal);
  }
  updateBatchProgress();
}

function stopBatch() {
  if (!batchAbort || state.batch.status !== "running") return;
  setBatchStatus("stopping");
  batchAbort.abort();
  updateBatchProgress();
}

function clearBatch() {
  if (state.batch.status === "running" || state.batch.status === "stopping") return;
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
  const url = URL.createObjectURL(new Blob([text], { type }));
  const d = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  const stamp = `${d.getFullYear()}${pad(d.getMonth() + 1)}${pad(d.getDate())}-${pad(d.getHours())}${pad(d.getMinutes())}${pad(d.getSeconds())}`;
  const a = el("a", { href: url, download: `webvlm-batch-${stamp}.${kind}`, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** Dropped files as [{file, path}], walking dropped folders (their entries must be taken
 * from the DataTransfer before the drop handler returns). */
function droppedEntries(dataTransfer) {
  const entries = [...(dataTransfer.items ?? [])]
    .filter((i) => i.kind === "file")
    .map((i) => i.webkitGetAsEntry?.())
    .filter(Boolean);
  const files = [...dataTransfer.files];
  if (!entries.some((e) => e.isDirectory)) return Promise.resolve(files.map((file) => ({ file, path: file.name })));
  const out = [];
  const walk = async (entry) => {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file, path: entry.fullPath.replace(/^\//, "") });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const some = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!some.length) break;
        for (const e of some) await walk(e);
      }
    }
  };
  return (async () => {
    for (const e of entries) await walk(e);
    return out;
  })();
}

async function dropIntoBatch(dataTransfer) {
  let entries;
  try {
    entries = await droppedEntries(dataTransfer);
  } catch (e) {
    showError(pageError("ImageError", `Could not read the dropped files: ${e?.message ?? e}`));
    return;
  }
  const ggufs = entries.filter((e) => /\.gguf$/i.test(e.file.name));
  if (ggufs.length) handleFiles(ggufs.map((e) => e.file));
  addBatchFiles(entries.filter((e) => !/\.gguf$/i.test(e.file.name)));
}

function bindBatch() {
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
}

// ------------------------------------------------------------------------------ drag & drop

function setupDragAndDrop() {
  const overlay = $("drop-overlay");
  let depth = 0;
  const hasFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes("Files");
  document.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth++;
    overlay.hidden = false;
  });
  document.addEventListener("dragover", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("dragleave", (e) => {
    if (!hasFiles(e)) return;
    depth = Math.max(0, depth - 1);
    if (depth === 0) overlay.hidden = true;
  });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    overlay.hidden = true;
    if (state.mode === "batch") dropIntoBatch(e.dataTransfer);
    else handleFiles([...e.dataTransfer.files]);
  });
}

function handleFiles(files) {
  const ggufs = files.filter((f) => /\.gguf$/i.test(f.name));
  const rest = files.filter((f) => !/\.gguf$/i.test(f.name));
  if (ggufs.length) {
    if (state.status === "loading" || state.status === "generating" || state.status === "batch") {
      showError(pageError("NoModelFile", "Wait for the current load, reply or batch to finish before opening another model."));
    } else {
      setLocalFiles(ggufs);
    }
  }
  if (rest.length) addAttachments(rest);
}

// ------------------------------------------------------------------------------------ wiring

function bind() {
  $("load").addEventListener("click", load);
  $("unload").addEventListener("click", () => unload());
  $("model-file").addEventListener("change", (e) => {
    if (e.target.files?.length) setLocalFiles([...e.target.files].filter((f) => !/mmproj/i.test(f.name)));
  });
  $("mmproj-file").addEventListener("change", (e) => {
    const f = e.target.files?.[0];
    state.localFiles.mmproj = f ?? null;
    renderModelSource();
  });

  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      send();
    }
  });
  $("prompt").addEventListener("input", () => { autosize(); updateControls(); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.status === "generating") stop();
    if (e.key === "Escape" && state.status === "batch") stopBatch();
  });
  $("stop").addEventListener("click", stop);
  $("attach-button").addEventListener("click", () => $("attach").click());
  $("attach").addEventListener("change", (e) => {
    addAttachments(e.target.files ?? []);
    e.target.value = ""; // the same file can be attached again
  });
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.files ?? [])].filter((f) => f.type.startsWith("image/"));
    if (files.length) {
      e.preventDefault();
      if (state.mode === "batch") addBatchFiles(files.map((file) => ({ file, path: file.name || "pasted image" })));
      else addAttachments(files);
    }
  });
  $("new-chat").addEventListener("click", newChat);
  for (const chip of document.querySelectorAll("#suggestions .chip")) {
    chip.addEventListener("click", () => {
      $("prompt").value = chip.dataset.prompt;
      autosize();
      updateControls();
      if (state.status === "ready" && state.attachments.length) send();
      else $("prompt").focus();
    });
  }

  $("error-dismiss").addEventListener("click", hideError);
  $("error-reload").addEventListener("click", () => location.reload());

  $("cache-panel").addEventListener("toggle", () => { if ($("cache-panel").open) refreshCache(); });
  $("cache-refresh").addEventListener("click", refreshCache);
  $("cache-clear").addEventListener("click", clearCache);

  // Unhandled failures still reach the user (never a silent failure).
  window.addEventListener("unhandledrejection", (e) => {
    showError(e.reason);
    e.preventDefault();
  });
}

async function main() {
  setupModelSelect();
  renderSettings();
  bindSettings();
  bind();
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
