// webvlm demo page: picks a model, loads it with a progress bar, and chats about images with
// tokens streamed into the transcript. All model work happens in the package's module worker;
// this file only moves DOM nodes and messages around (no heavy work on the page's thread).
//
// ---------------------------------------------------------------------------------------------
// Contract for tests (stable; keep in sync with index.html)
//
// URL query parameters
//   ?model=<url>&mmproj=<url>   a custom text model (and optional vision projector); relative
//                               URLs resolve against the page, e.g. /fixtures/tiny/model.gguf
//   &autoload=1                 load it (or the default model) as soon as the page is ready
//   &temperature= &top_p= &max_tokens= &image_max_edge= &context= &f16=1
//                               override the settings for this visit (not saved)
//
// document.body.dataset.state   "idle" | "loading" | "ready" | "generating" | "error"
//   idle: no model loaded; error: the last load failed or the engine was lost (the page stays
//   usable: pick a model and press Load again). A failed *request* returns to "ready".
//
// window.webvlmDemo = { engine, state, api }
//   engine   the webvlm Engine once loaded (null before / after unload)
//   state    { status, info, progress, progressLog[], messages[] (OpenAI history sent with each
//              request), attachments[], settings, lastReply: { text, deltas, finishReason, usage,
//              stopped, error }, lastError: { name, message } | null }
//   api      the imported package module (./pkg/index.js) once imported
//
// Elements
//   #model-select          <select>: "ministral-3b" (default), "local" (Open local files…),
//                          "custom" (present when ?model= is given)
//   #model-source          text: where the selected model comes from
//   #local-files           the local-file box (shown for "local"); #model-file, #mmproj-file are
//                          <input type=file accept=.gguf>; #model-file-name, #mmproj-file-name
//   #load, #unload         buttons
//   #progress-box          wrapper; #progress is a <progress max=1> (value = fraction);
//   #progress-text         phase · MB loaded · MB/s · ETA
//   #model-info            <dl> with the loaded model's name, size, adapter, ... (dt/dd pairs)
//   #status                status pill (#status-text holds its text)
//   #messages              the transcript (role=log). Each turn appends
//                            .msg.user    (.msg-images img thumbnails, .bubble text)
//                            .msg.assistant[data-state="streaming"|"done"|"stopped"|"error"]
//                              .bubble .content   the streamed text
//                              .msg-meta .msg-stats  "0.42 s to first token · 23.1 tokens/s · …"
//                              .badge.stopped     when the Stop button ended it
//   #empty                 the empty-state panel (removed from view once a message is sent)
//   #prompt                <textarea>: Enter sends, Shift+Enter inserts a newline
//   #send                  submit button (enabled when ready and there is text or an image)
//   #stop                  visible while generating; calls engine.stop()
//   #attach                <input type=file accept=image/* multiple> (#attach-button opens it);
//                          images can also be dropped anywhere or pasted
//   #attachments           pending image previews; each li has img + button.attachment-remove
//   #new-chat              clears the conversation
//   #settings              <details> with #settings-temperature, #settings-top-p,
//                          #settings-max-tokens, #settings-image-max-edge, #settings-system,
//                          #settings-context, #settings-f16, #settings-reset
//   #cache-panel           <details>; #cache-list (li[data-url] with button.cache-delete),
//                          #cache-total, #storage-estimate, #cache-refresh, #cache-clear
//   #error                 error banner (role=alert), data-error-name = the error class name;
//                          #error-title, #error-message, #error-hint, #error-dismiss,
//                          #error-reload (shown for DeviceLostError)
//   #drop-overlay          shown while files are dragged over the page
// ---------------------------------------------------------------------------------------------

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
  info: null,
  progress: null,
  progressLog: [],
  messages: [],
  attachments: [],
  settings: loadSettings(),
  localFiles: { text: null, mmproj: null },
  loadedSource: null,
  lastReply: null,
  lastError: null,
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
  const busy = s === "loading" || s === "generating";
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
  $("model-file-name").textContent = state.localFiles.text ? `${state.localFiles.text.name} · ${fmtBytes(state.localFiles.text.size)}` : "none";
  $("model-file-name").classList.toggle("has-file", !!state.localFiles.text);
  $("mmproj-file-name").textContent = state.localFiles.mmproj ? `${state.localFiles.mmproj.name} · ${fmtBytes(state.localFiles.mmproj.size)}` : "none";
  $("mmproj-file-name").classList.toggle("has-file", !!state.localFiles.mmproj);
}

/** The selected model as {name, text, mmproj, kind} or null when local files are missing. */
function selectedSource() {
  const v = $("model-select").value;
  if (v === "local") {
    const { text, mmproj } = state.localFiles;
    if (!text) return null;
    return { kind: "local", name: text.name.replace(/\.gguf$/i, ""), text, mmproj };
  }
  const p = PRESETS[v];
  return { kind: "url", name: p.name, text: new URL(p.text, location.href).href, mmproj: p.mmproj ? new URL(p.mmproj, location.href).href : null };
}

function setLocalFiles(files) {
  for (const f of files) {
    if (/mmproj/i.test(f.name)) state.localFiles.mmproj = f;
    else state.localFiles.text = f;
  }
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
  if (state.status === "loading" || state.status === "generating") return;
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
          `${t.timeToFirstToken.toFixed(2)} s to first token`,
          `${t.decodeTokensPerSecond.toFixed(1)} tokens/s`,
          `${usage.completion_tokens} tokens`,
        ].join(" · ");
        meta.append(el("span", {
          class: "msg-stats",
          title: `Prompt: ${usage.prompt_tokens} tokens at ${t.prefillTokensPerSecond.toFixed(0)} tokens/s`,
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
    handleFiles([...e.dataTransfer.files]);
  });
}

function handleFiles(files) {
  const ggufs = files.filter((f) => /\.gguf$/i.test(f.name));
  const rest = files.filter((f) => !/\.gguf$/i.test(f.name));
  if (ggufs.length) {
    if (state.status === "loading" || state.status === "generating") {
      showError(pageError("NoModelFile", "Wait for the current load or reply to finish before opening another model."));
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
    const f = e.target.files?.[0];
    if (f) { state.localFiles.text = f; renderModelSource(); }
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
      addAttachments(files);
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
  setupDragAndDrop();
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
