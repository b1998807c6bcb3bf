// The page's shared mutable state: `state`, the engine, the package module (`api`), the URL's
// parameters and the saved settings; exposed to tests as window.webvlmDemo.

export const params = new URLSearchParams(location.search);

/** The package's `backend` choices (createEngine). */
export const BACKENDS = ["auto", "webgpu", "cpu"];

export const DEFAULT_SETTINGS = {
  temperature: 0.15,
  top_p: 0.95,
  max_tokens: 512,
  image_max_edge: 1540,
  system: "",
  context: 4096,
  f16: true,
  /** Where the model runs: "auto" (WebGPU on a hardware adapter, else the CPU), "webgpu", "cpu". */
  backend: "auto",
  /** The CPU backend's threads; 0: the package's default (half the logical cores where the
   * page is cross-origin isolated, else 1). */
  threads: 0,
  remote_url: "",
  remote_model: "",
  /** Offer the page's tools (calculator, current time) to models that can call them. */
  tools: true,
  /** The first request's `tool_choice` in each turn (`?tool_choice=required` for a visit). */
  tool_choice: "auto",
};
const SETTINGS_KEY = "webvlm-demo-settings-v1";

/** The saved settings, overridden for this visit by the URL's parameters. */
function loadSettings() {
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? "{}") ?? {}; } catch { /* private mode */ }
  const s = { ...DEFAULT_SETTINGS, ...saved };
  const num = (k, p = k) => { if (params.has(p) && Number.isFinite(Number(params.get(p)))) s[k] = Number(params.get(p)); };
  num("temperature"); num("top_p"); num("max_tokens"); num("image_max_edge"); num("context"); num("threads");
  if (params.has("f16")) s.f16 = params.get("f16") === "1" || params.get("f16") === "true";
  if (params.has("backend")) s.backend = params.get("backend");
  if (params.has("tools")) s.tools = params.get("tools") === "1" || params.get("tools") === "true";
  if (["auto", "required", "none"].includes(params.get("tool_choice"))) s.tool_choice = params.get("tool_choice");
  if (!BACKENDS.includes(s.backend)) s.backend = DEFAULT_SETTINGS.backend;
  return s;
}

export function saveSettings() {
  try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(state.settings)); } catch { /* private mode */ }
}

/** Everything the page knows; exposed as window.webvlmDemo.state. */
export const state = {
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

/** The package module (pkg/index.js) once imported (package.js: getApi). */
export let api = null;
/** The loaded Engine, or null. */
export let engine = null;

/** An engine whose GPU device was lost (DeviceLostError), kept so that the error banner's
 * Reload model action can load the same model again on a new device (`engine.reload()`). */
export let lostEngine = null;

export const setApi = (m) => { api = m; };
export const setEngine = (e) => { engine = e; };
export const setLostEngine = (e) => { lostEngine = e; };

window.webvlmDemo = {
  get engine() { return engine; },
  get lostEngine() { return lostEngine; },
  get api() { return api; },
  state,
};

/** A load, a chat reply or a batch is under way (Load, Unload and model files wait). */
export const isBusy = () => state.status === "loading" || state.status === "generating" || state.status === "batch";

/** The loaded model has no vision projector (it cannot take images); a remote server's model
 * may (its `vision` is null: unknown). */
export const lacksVision = () => state.info?.vision === false;

/** A batch is running or stopping. */
export const batchRunning = () => state.batch.status === "running" || state.batch.status === "stopping";

/** The base URL of the remote server the loaded engine sends requests to; null for an engine
 * in this page (or none). What the page promises about privacy follows it. */
export const remoteServer = () => (state.info?.remote ? state.info.baseURL : null);
