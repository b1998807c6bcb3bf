// Server-sent events as OpenAI-compatible servers use them for streamed chat completions: one
// `data: {chunk}` event per chunk, then `data: [DONE]`. The one parser and the one writer of
// the package: `remote.js` parses a server's stream with `sseEvents`, `openai-fetch.js`
// writes the engine's chunks with `sseData`.
//
// The parser follows the HTML standard's event-stream rules (UTF-8; lines end with CRLF, LF or
// CR; `data:` lines of one event are joined with LF; a blank line ends an event; lines starting
// with `:` are comments; one optional space after the colon is dropped), which is what vLLM,
// OpenAI and llama.cpp's server send.

/** The marker OpenAI-compatible servers send as the last event of a stream. */
export const SSE_DONE = "[DONE]";

/**
 * The events of an event stream, as `{event, data, id}` (`event` is "message" unless the
 * server named it). Ends when the stream ends; an event not ended by a blank line is dropped,
 * as the standard says. Leaving the loop early cancels the stream.
 * @param {ReadableStream<Uint8Array>} body
 * @returns {AsyncGenerator<{event: string, data: string, id: string | null}>}
 */
export async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  let event = "";
  let id = null;
  let finished = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) { finished = true; return; }
      buffer += value;
      // A CR at the very end may be the first half of a CRLF: wait for the next piece.
      let at;
      while ((at = buffer.search(/\r\n|\r(?!$)|\n/)) >= 0) {
        const line = buffer.slice(0, at);
        buffer = buffer.slice(at + (buffer.startsWith("\r\n", at) ? 2 : 1));
        if (line === "") {
          if (data.length) yield { event: event || "message", data: data.join("\n"), id };
          data = [];
          event = "";
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? "" : line.slice(colon + 1);
        if (v.startsWith(" ")) v = v.slice(1);
        if (field === "data") data.push(v);
        else if (field === "event") event = v;
        else if (field === "id" && !v.includes("\0")) id = v;
      }
    }
  } finally {
    // Leaving early (break, an error in the loop's body): the body is not read any further.
    if (!finished) await reader.cancel().catch(() => {});
  }
}

const encoder = new TextEncoder();

/** One `data:` event holding `value` (JSON, or a string such as SSE_DONE as it is), named
 * `event` when given (the Responses API names each event by its type). */
export function sseData(value, event) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  // JSON.stringify escapes line breaks inside strings, so a JSON value is always one line;
  // a string with line breaks is split into data lines.
  const name = event ? `event: ${event}\n` : "";
  return encoder.encode(name + text.split(/\r\n|\r|\n/).map((l) => `data: ${l}\n`).join("") + "\n");
}
