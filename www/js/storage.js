// The Storage panel: the models kept in Cache Storage on this device, with their sizes, Delete
// for one and Clear for all, and the browser's storage estimate.

import { $, basename, el, fmtBytes, ICON_TRASH, plural } from "./helpers.js";
import { engine, state } from "./state.js";
import { showError } from "./errors.js";
import { updateControls } from "./status.js";
import { getApi } from "./package.js";

/** Lists what the package's cache holds. */
export async function refreshCache() {
  const list = $("cache-list");
  const note = (text) => list.replaceChildren(el("li", { class: "cache-empty" }, text));
  if (typeof caches === "undefined") {
    note("Cache Storage is not available here (it needs https or localhost).");
    $("cache-total").textContent = "—";
    return;
  }
  const mod = await getApi({ quiet: true });
  if (!mod) {
    note("Unavailable until the engine package loads.");
    return;
  }
  let contents;
  try {
    contents = await mod.cacheContents();
  } catch (e) {
    note(`Could not read the cache: ${e.message ?? e}`);
    return;
  }
  const inUse = new Set([state.loadedSource?.text, state.loadedSource?.mmproj].filter((u) => typeof u === "string"));
  if (contents.entries.length === 0) {
    note("Nothing stored yet.");
  } else {
    list.replaceChildren(...contents.entries.map((entry) => {
      const del = el("button", {
        type: "button", class: "icon-btn cache-delete", "aria-label": `Delete ${basename(entry.url)} from this device`, title: "Delete",
        onclick: () => deleteCached(entry.url),
      });
      del.innerHTML = ICON_TRASH;
      let host = "";
      try { host = new URL(entry.url).host; } catch { /* keep empty */ }
      return el("li", { dataset: { url: entry.url }, title: entry.url },
        el("span", { class: "cache-name" }, basename(entry.url)),
        el("span", { class: "cache-meta" }, [fmtBytes(entry.bytes), plural(entry.chunks, "chunk"), host, inUse.has(entry.url) && engine ? "in use" : null].filter(Boolean).join(" · ")),
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

/** Deletes one model file (`url`) from the cache, or everything (no url). */
async function deleteCached(url) {
  try {
    await (await getApi())?.deleteCached(url);
  } catch (e) {
    showError(e);
  }
  refreshCache();
}

export function bindStorage() {
  $("cache-panel").addEventListener("toggle", () => { if ($("cache-panel").open) refreshCache(); });
  $("cache-refresh").addEventListener("click", refreshCache);
  $("cache-clear").addEventListener("click", () => deleteCached());
}
