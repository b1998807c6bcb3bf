// Small shared helpers: DOM lookup and creation, number and name formatting, file kinds,
// icons, reading files, the image lightbox and file downloads.

export const $ = (id) => document.getElementById(id);

/** A new element: `class`, `dataset`, `on<event>` handlers and attributes from props. */
export function el(tag, props = {}, ...children) {
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

export const fmtBytes = (n) => {
  if (!Number.isFinite(n)) return "—";
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(n >= 1e8 ? 0 : 1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(0)} kB`;
  return `${n} B`;
};

/** Seconds as "< 1 s", "42 s", "3 min 5 s", "1 h 20 min" ("" when unknown). */
export const fmtDuration = (s) => {
  if (s == null || !Number.isFinite(s)) return "";
  if (s < 1) return "< 1 s";
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
};

/** Milliseconds as seconds with `digits` decimals: "1.2 s". */
export const fmtSeconds = (ms, digits = 1) => `${(ms / 1000).toFixed(digits)} s`;

/** A progress line's HTML: the title in bold, then the parts that are not empty, with " · ". */
export const progressHtml = (title, parts) => [`<strong>${title}</strong>`, ...parts.filter(Boolean)].join(" · ");

/** "1 image", "3 images". */
export const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** The last path segment of a URL, decoded. */
export const basename = (url) => {
  try {
    const path = new URL(url, location.href).pathname;
    return decodeURIComponent(path.slice(path.lastIndexOf("/") + 1)) || url;
  } catch {
    return String(url);
  }
};

/** A model file (.gguf); one named *mmproj* is a vision projector. */
export const isGguf = (f) => /\.gguf$/i.test(f.name);
export const isMmproj = (f) => /mmproj/i.test(f.name);

export const ICON_X = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M6 6l12 12M18 6 6 18" stroke="currentColor" stroke-width="2.5" stroke-linecap="round"/></svg>';
export const ICON_TRASH = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 7h16M10 11v6M14 11v6M6 7l1 12a2 2 0 0 0 2 2h6a2 2 0 0 0 2-2l1-12M9 7V4h6v3" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"/></svg>';
export const ICON_IMAGE = '<svg viewBox="0 0 24 24" aria-hidden="true"><rect x="3" y="4" width="18" height="16" rx="3" fill="none" stroke="currentColor" stroke-width="1.8"/><circle cx="9" cy="10" r="2" fill="currentColor"/><path d="m4 18 5-5 4 4 3-3 4 4" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linejoin="round"/></svg>';

/** What whenStopped resolves to. */
export const STOPPED = Symbol("stopped");
/** How long Stop waits for the engine to finish its step before the page lets go of it. */
const STOP_GRACE_MS = 250;

/** Resolves to STOPPED a moment (STOP_GRACE_MS) after `signal` aborts. Stop ends a reply or a
 * batch on the page at once: it races what it waits for against this; the engine finishes
 * its current step in the background. */
export const whenStopped = (signal) => new Promise((resolve) =>
  signal.addEventListener("abort", () => setTimeout(() => resolve(STOPPED), STOP_GRACE_MS), { once: true }));

/** A file's contents as a data: URL. */
export function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error ?? new Error("could not read the file"));
    r.readAsDataURL(file);
  });
}

/** Shows an image full size in a modal dialog; a click closes it. */
export function openImage(src, alt) {
  const dialog = el("dialog", { class: "lightbox", "aria-label": alt },
    el("img", { src, alt }));
  dialog.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}

/** Saves `blob` as a download named `name`. */
export function downloadBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
