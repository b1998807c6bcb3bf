// Files from outside the page: drag and drop (the overlay; dropped folders are walked) and
// paste. Model files (.gguf) open as the local model; images go to the chat's attachments, or
// to the batch in Batch mode.

import { $, isGguf } from "./helpers.js";
import { state } from "./state.js";
import { pageError, showError } from "./errors.js";
import { openModelFiles } from "./model.js";
import { addAttachments } from "./chat.js";
import { addBatchFiles } from "./batch-view.js";

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

/** Files dropped in Chat mode: models open, the rest become attachments. */
function dropIntoChat(files) {
  openModelFiles(files.filter(isGguf));
  const rest = files.filter((f) => !isGguf(f));
  if (rest.length) addAttachments(rest);
}

async function dropIntoBatch(dataTransfer) {
  let entries;
  try {
    entries = await droppedEntries(dataTransfer);
  } catch (e) {
    showError(pageError("ImageError", `Could not read the dropped files: ${e?.message ?? e}`));
    return;
  }
  openModelFiles(entries.filter((e) => isGguf(e.file)).map((e) => e.file));
  addBatchFiles(entries.filter((e) => !isGguf(e.file)));
}

export function setupDragAndDrop() {
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
    else dropIntoChat([...e.dataTransfer.files]);
  });
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.files ?? [])].filter((f) => f.type.startsWith("image/"));
    if (files.length) {
      e.preventDefault();
      if (state.mode === "batch") addBatchFiles(files.map((file) => ({ file, path: file.name || "pasted image" })));
      else addAttachments(files);
    }
  });
}
