// The error banner: a title and a hint for each error name (the engine's named errors and the
// page's own), showError / hideError, and the names that mean the engine is gone.

import { $ } from "./helpers.js";
import { lostEngine, state } from "./state.js";

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
    hint: "The graphics driver was reset or the tab ran out of GPU memory. Reload the model to go on: "
      + "it loads again from this device's cache, with no download, and the conversation is kept.",
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
  AuthenticationError: {
    title: "The server refused the API key",
    hint: "Check the API key under Settings → Remote server (it is kept for this browser session only).",
  },
  NetworkError: {
    title: "The server could not be reached",
    hint: "Check the base URL under Settings → Remote server, and that the server answers this page's origin with CORS headers.",
  },
  RemoteServerError: {
    title: "The server could not answer",
    hint: "It may be busy (429) or failing (5xx): try again in a moment. A 404 means the base URL is not the API's (it usually ends in /v1).",
  },
  ContentSecurityPolicyError: {
    title: "This page may not connect to that server",
    hint: "The page is served with a Content-Security-Policy that names the servers it may connect to (connect-src). "
      + "Whoever serves it must add the server's origin: with ./build.sh serve, set CONNECT_SRC=https://your-server.example.",
  },
  NoRemoteURL: {
    title: "Set the remote server first",
    hint: "Enter the server's base URL (and its API key, if it needs one) under Settings → Remote server.",
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
export function showError(err, { name } = {}) {
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
  // The lost engine can load its model again (engine.reload); without one, reload the page.
  $("error-reload").textContent = lostEngine ? "Reload model" : "Reload page";
  box.hidden = false;
  console.warn(`[webvlm demo] ${errName}: ${message}`);
}

export function hideError() {
  $("error").hidden = true;
  delete $("error").dataset.errorName;
}

/** A plain error object with a name, for failures that happen on the page (not in the engine). */
export const pageError = (name, message) => Object.assign(new Error(message), { name });

/** The loaded model has no vision projector, so it cannot take images. */
export const noVisionError = () => pageError("NoVision", "The loaded model has no vision projector (mmproj).");

/** Error names after which the engine cannot be used again: its GPU device was lost, or its
 * worker stopped. */
export const isEngineLost = (name) => name === "DeviceLostError" || name === "EngineUnloadedError";

/** `reloadModel`: the Reload model action (model.js), taken while a lost engine is kept. */
export function bindErrors({ reloadModel } = {}) {
  $("error-dismiss").addEventListener("click", hideError);
  $("error-reload").addEventListener("click", () => (lostEngine && reloadModel ? reloadModel() : location.reload()));
  // Unhandled failures still reach the user (never a silent failure).
  window.addEventListener("unhandledrejection", (e) => {
    showError(e.reason);
    e.preventDefault();
  });
}
