// The chat: the composer (prompt and image attachments), Send with the reply streamed into the
// transcript (the user's turns with their thumbnails, the assistant's with stats and badges,
// the page's tool calls as cards with their results, fed back for the answer: tools.js),
// Stop, and New chat. Replies are rendered as sanitized Markdown (markdown.js) while they stream.

import { $, el, fmtSeconds, ICON_X, openImage, plural, readDataUrl, STOPPED, whenStopped } from "./helpers.js";
import { engine, lacksVision, state } from "./state.js";
import { hideError, noVisionError, pageError, showError } from "./errors.js";
import { modelName, requestFailed, setState, updateControls } from "./status.js";
import { requestOptions, systemMessages } from "./settings.js";
import { markdownView } from "./markdown.js";
import { MAX_TOOL_ROUNDS, runTool, toolCard, toolOptions } from "./tools.js";

let stopRequested = false;
let stopController = null; // aborted by Stop: ends the running reply's stream race (see send)
let attachmentId = 0;

// ----------------------------------------------------------------------------- attachments

export function addAttachments(files) {
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

// ------------------------------------------------------------------------------- transcript

export function renderEmptyState() {
  const empty = $("empty");
  empty.hidden = $("messages").querySelector(".msg") !== null;
  if (engine && state.info?.remote) {
    $("empty-title").textContent = "Ask the server";
    $("empty-text").textContent = `Messages and images go to ${state.info.baseURL} (${state.info.model}): they leave this device.`;
  } else if (engine && state.info) {
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
  const content = el("div", { class: "content" });
  const view = markdownView(content);
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
      text += delta;
      // The reply's leading whitespace (tokens often start with a space) is not shown.
      view.set(text.trimStart());
    },
    finish({ finishReason, usage, error, stopped, deltas = 0, firstTokenMs = null }) {
      typing.remove();
      if (text.trim()) view.flush();
      else view.cancel();
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
        if (!text.trim()) content.textContent = finishReason === "tool_calls" ? "(calls a tool)" : "(empty reply)";
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
          `${fmtSeconds(firstTokenMs, 2)} to first token · ${plural(deltas, "token")}`));
      }
    },
    get text() { return text; },
    view,
  };
}

// ------------------------------------------------------------------------------------- send

async function send() {
  if (state.status !== "ready" || !engine) return;
  const text = $("prompt").value.trim();
  const attachments = state.attachments.slice();
  if (!text && attachments.length === 0) return;
  if (attachments.length && lacksVision()) {
    showError(noVisionError());
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

  stopRequested = false;
  $("stop").disabled = false;
  setState("generating");
  const last = { text: "", deltas: 0, finishReason: null, usage: null, stopped: false, error: null, firstTokenMs: null, renders: 0, renderMs: 0, toolCalls: [] };
  state.lastReply = last;
  const turnStart = state.messages.length - 1; // the user's message: a failed turn is taken back to it
  stopController = new AbortController();
  const stopped = whenStopped(stopController.signal);
  let reply = renderAssistantMessage();
  scrollToEnd(true);

  try {
    // A reply that calls the page's tools gets their results and a follow-up request.
    for (let round = 0; ; round++) {
      const out = await streamReply([...systemMessages(), ...state.messages], reply, { ...requestOptions(), ...toolOptions(round) }, stopped, last);
      last.stopped = stopRequested || out.finishReason === "abort";
      reply.finish({ finishReason: out.finishReason, usage: out.usage, stopped: last.stopped, deltas: last.deltas, firstTokenMs: last.firstTokenMs });
      Object.assign(last, { renders: reply.view.renders, renderMs: reply.view.renderMs, finishReason: out.finishReason, usage: out.usage });
      if (out.finishReason !== "tool_calls" || last.stopped || round + 1 >= MAX_TOOL_ROUNDS) {
        state.messages.push({ role: "assistant", content: out.text });
        break;
      }
      state.messages.push({ role: "assistant", content: out.text || null, tool_calls: out.calls });
      for (const call of out.calls) {
        const result = runTool(call);
        last.toolCalls.push({ id: call.id, name: call.function.name, arguments: call.function.arguments, result });
        $("messages").append(toolCard(call, result));
        state.messages.push({ role: "tool", tool_call_id: call.id, content: JSON.stringify(result) });
      }
      reply = renderAssistantMessage();
      scrollToEnd();
    }
  } catch (err) {
    stopController = null;
    last.error = { name: err?.name ?? "Error", message: String(err?.message ?? err) };
    reply.finish({ error: err });
    Object.assign(last, { renders: reply.view.renders, renderMs: reply.view.renderMs });
    state.messages.length = turnStart; // the conversation sent next must not hold the failed turn
    requestFailed(err);
    scrollToEnd();
    return;
  }
  stopController = null;
  setState("ready");
  scrollToEnd();
  if (!matchMedia("(pointer: coarse)").matches) $("prompt").focus({ preventScroll: true });
}

/** Streams one request's reply into `reply`: its text, finish reason, usage and tool calls
 * (`delta.tool_calls` put together by index). Stop ends it on the page at once (`stopped`). */
async function streamReply(messages, reply, options, stopped, last) {
  const out = { text: "", finishReason: null, usage: null, calls: [] };
  const sentAt = performance.now();
  const stream = await engine.chat.completions.create({ messages, stream: true, stream_options: { include_usage: true }, ...options });
  // Read the stream by hand so that Stop can end the reply on the page at once: the engine
  // stops after its current token, and a slow GPU may take a while to get there.
  const it = stream[Symbol.asyncIterator]();
  for (;;) {
    const next = it.next();
    next.catch(() => {}); // a step that loses the race below must not count as unhandled
    const step = await Promise.race([next, stopped]);
    // Let go of the iterator without return(): its cleanup would send another stop, which
    // could reach the worker after the next request has started.
    if (step === STOPPED || step.done) break;
    const chunk = step.value;
    const choice = chunk.choices?.[0];
    const delta = choice?.delta?.content;
    if (delta) {
      if (last.deltas === 0) last.firstTokenMs = performance.now() - sentAt;
      reply.append(delta);
      out.text += delta;
      last.text += delta;
      last.deltas++;
      scrollToEnd();
    }
    for (const c of choice?.delta?.tool_calls ?? []) {
      out.calls[c.index] ??= { id: c.id, type: "function", function: { name: c.function?.name ?? "", arguments: "" } };
      out.calls[c.index].function.arguments += c.function?.arguments ?? "";
    }
    if (choice?.finish_reason) out.finishReason = choice.finish_reason;
    if (chunk.usage) out.usage = chunk.usage;
  }
  return out;
}

function stop() {
  if (state.status !== "generating" || !engine || stopRequested) return;
  stopRequested = true;
  engine.stop();
  $("stop").disabled = true;
  $("status-text").textContent = "Stopping…";
  // Give the engine a moment to finish its token (the reply then keeps its timings); after
  // that the page lets go of the stream and shows the reply as stopped right away.
  stopController?.abort();
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

function autosize() {
  const t = $("prompt");
  t.style.height = "auto";
  t.style.height = `${Math.min(t.scrollHeight, 200)}px`;
}

export function bindChat() {
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
}
