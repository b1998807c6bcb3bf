// Assistant replies as Markdown: marked (GFM: code blocks, lists, tables, inline code, links)
// turns the text into HTML and DOMPurify keeps only what Markdown makes, so a reply can never
// run script or change the page, whatever the model (or a remote server) sends.
//
// - Raw HTML in a reply is shown as text, not interpreted (marked's `html` renderer escapes it);
//   DOMPurify then sanitizes marked's own output with an allow-list of Markdown's elements and
//   attributes (no style, no event handlers, no iframes, forms, SVG or MathML).
// - Links keep http(s) and mailto URLs only (javascript:, data:, relative: the link's text
//   stays, its href goes) and open in a new tab with rel="noopener noreferrer nofollow".
// - Images are not loaded (a reply could carry what the user said in an image URL to any
//   server): `![alt](url)` shows as a link to the image.
// - While a reply streams, `markdownView` re-renders the whole text at most every 50 ms and
//   never more often than one eighth of the time (a render that took 10 ms waits 80 ms), so a
//   long reply costs O(n) renders of O(n) work bounded by time, not O(n²); only the top-level
//   blocks that changed are replaced, so earlier paragraphs keep their nodes (no flicker, a
//   selection there survives).
//
// The libraries are vendored into www/vendor/ by `./build.sh wasm` from the pinned npm packages
// (tests/browser/package.json). They are imported on the side (not a top-level await, which
// would hold up the page's start); until they are there, and without them, replies show as
// plain text.

let marked = null;
let purify = null;
/** Resolves once the libraries are loaded (or failed to: replies stay plain text). */
export const markdownReady = Promise.all([import("../vendor/marked.js"), import("../vendor/dompurify.js")]).then(
  ([m, p]) => {
    marked = configureMarked(m.Marked);
    purify = configurePurify(p.default);
  },
  (e) => console.warn(`Markdown rendering is off (www/vendor/ missing: run ./build.sh wasm): ${e.message ?? e}`),
);

/** Whether replies are rendered as Markdown (the vendored libraries loaded). */
export const markdownEnabled = () => marked !== null && purify !== null;

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ESCAPES[c]);

function configureMarked(Marked) {
  return new Marked({
    gfm: true,
    breaks: true, // a model's single line breaks are meant as line breaks
    renderer: {
      // Raw HTML (a block or an inline tag) is text.
      html({ text, block }) {
        const escaped = escapeHtml(text);
        return block ? `<p>${escaped.replace(/\n+$/, "").replaceAll("\n", "<br>")}</p>\n` : escaped;
      },
      // An image is a link to it, never loaded.
      image({ href, text }) {
        const label = text ? `image: ${text}` : "image";
        return `<a href="${escapeHtml(href ?? "")}">[${escapeHtml(label)}]</a>`;
      },
    },
  });
}

const ALLOWED_TAGS = [
  "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "input",
  "li", "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
];
const ALLOWED_ATTR = ["href", "title", "align", "start", "type", "checked", "disabled", "class"];

function configurePurify(DOMPurify) {
  if (!DOMPurify?.isSupported) throw new Error("DOMPurify is not supported in this browser");
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.nodeName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
    // Task-list checkboxes only, never editable.
    if (node.nodeName === "INPUT") {
      if (node.getAttribute("type") !== "checkbox") node.remove();
      else node.setAttribute("disabled", "");
    }
  });
  return DOMPurify;
}

const PURIFY_CONFIG = {
  ALLOWED_TAGS,
  ALLOWED_ATTR,
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  // Every attribute not "URI-safe" is checked against ALLOWED_URI_REGEXP: the few values
  // Markdown gives that are not URLs are named here, and only hrefs are held to the regexp.
  ADD_URI_SAFE_ATTR: ["align", "start", "type"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
  RETURN_DOM_FRAGMENT: true,
};

/** `text` as a sanitized DocumentFragment (plain text when Markdown is off). */
export function renderMarkdown(text) {
  if (!markdownEnabled()) {
    const f = document.createDocumentFragment();
    if (text) f.append(text);
    return f;
  }
  // Trimmed: no stray line break after the last block in the text.
  return purify.sanitize(marked.parse(text, { async: false }).trim(), PURIFY_CONFIG);
}

/** Replaces `container`'s children by `fragment`'s, keeping the leading nodes that are equal. */
function patch(container, fragment) {
  const next = [...fragment.childNodes];
  const prev = [...container.childNodes];
  let i = 0;
  while (i < prev.length && i < next.length && prev[i].isEqualNode(next[i])) i++;
  for (const n of prev.slice(i)) n.remove();
  container.append(...next.slice(i));
}

const MIN_INTERVAL_MS = 50;
const MAX_RENDER_SHARE = 8; // wait at least this many times the last render's cost

/** A streaming Markdown view of `container`: `set(text)` as tokens arrive (throttled), `flush()`
 * at the end (renders now); `renders` and `renderMs` say what it cost. The container has the
 * class `md` while it shows Markdown (plain text without it). */
export function markdownView(container) {
  let text = "";
  let timer = 0;
  let lastAt = -Infinity;
  let cost = 0;
  const view = {
    renders: 0,
    renderMs: 0,
    set(value) {
      text = value;
      if (timer) return;
      const wait = Math.max(MIN_INTERVAL_MS, cost * MAX_RENDER_SHARE) - (performance.now() - lastAt);
      if (wait <= 0) render();
      else timer = setTimeout(render, wait);
    },
    flush() {
      clearTimeout(timer);
      render();
    },
    /** Stops rendering (the caller writes the container itself from now on). */
    cancel() {
      clearTimeout(timer);
      timer = 0;
    },
  };
  function render() {
    timer = 0;
    const t0 = performance.now();
    container.classList.toggle("md", markdownEnabled());
    patch(container, renderMarkdown(text));
    lastAt = performance.now();
    cost = lastAt - t0;
    view.renders++;
    view.renderMs += cost;
  }
  return view;
}
