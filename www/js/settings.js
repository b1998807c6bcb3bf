// The Settings panel: sampling, image size limit, system prompt, context length, where the model
// runs (WebGPU or the CPU, on how many threads) and precision,
// saved on this device; the remote server (its URL and model saved, its API key kept in
// sessionStorage only, never localStorage); and the parts of a request that come from them.

import { $, el } from "./helpers.js";
import { DEFAULT_SETTINGS, saveSettings, state } from "./state.js";

const SETTING_FIELDS = [
  ["temperature", "settings-temperature", Number],
  ["top_p", "settings-top-p", Number],
  ["max_tokens", "settings-max-tokens", (v) => Math.round(Number(v))],
  ["image_max_edge", "settings-image-max-edge", (v) => Math.round(Number(v))],
  ["system", "settings-system", String],
  ["context", "settings-context", Number],
  ["backend", "settings-backend", String],
  ["threads", "settings-threads", Number],
];
/** Text settings that may be empty (the fields above put back the saved value when cleared). */
const REMOTE_FIELDS = [["remote_url", "settings-remote-url"], ["remote_model", "settings-remote-model"]];

/** The remote server's API key: this tab's session only. */
const REMOTE_KEY = "webvlm-demo-remote-key";

export function remoteKey() {
  try { return sessionStorage.getItem(REMOTE_KEY) ?? ""; } catch { return ""; }
}

export function renderSettings() {
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
  $("settings-tools").checked = !!state.settings.tools;
  for (const [key, id] of REMOTE_FIELDS) $(id).value = state.settings[key];
  $("settings-remote-key").value = remoteKey();
}

export function bindSettings() {
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
  $("settings-tools").addEventListener("change", (e) => { state.settings.tools = e.target.checked; saveSettings(); });
  for (const [key, id] of REMOTE_FIELDS) {
    $(id).addEventListener("input", (e) => { state.settings[key] = e.target.value.trim(); saveSettings(); });
  }
  $("settings-remote-key").addEventListener("input", (e) => {
    try {
      if (e.target.value) sessionStorage.setItem(REMOTE_KEY, e.target.value);
      else sessionStorage.removeItem(REMOTE_KEY);
    } catch { /* storage off: the key lives in the field until the page closes */ }
  });
  $("settings-reset").addEventListener("click", () => {
    state.settings = { ...DEFAULT_SETTINGS };
    saveSettings();
    renderSettings();
  });
}

/** The system message from Settings, as the start of a request's messages (none when empty). */
export function systemMessages() {
  const system = state.settings.system.trim();
  return system ? [{ role: "system", content: system }] : [];
}

/** The sampling and image options of a request, from Settings (`s`). */
export function requestOptions(s = state.settings) {
  const options = { temperature: s.temperature, top_p: s.top_p, max_tokens: s.max_tokens };
  // image_max_edge is webvlm's own field: a remote server gets OpenAI's fields only.
  if (state.info?.remote) return options;
  // The engine refuses an edge above the model's own image size (state.info.maxImageEdge).
  return { ...options, image_max_edge: Math.min(s.image_max_edge, state.info?.maxImageEdge ?? Infinity) };
}
