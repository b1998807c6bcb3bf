// A small OpenAI-compatible server for the remote-engine tests (Node built-ins only), standing
// in for vLLM or `webvlm serve` until the tests point at the native server:
//
//   const mock = await startMockOpenAI({ apiKey: "sk-test", models: ["mock-vlm"] });
//   mock.url            // http://127.0.0.1:PORT/v1 (the baseURL)
//   mock.log            // every request: { method, path, auth, body, status, chunks, closedEarly, done }
//   await mock.close();
//
// Routes: GET /v1/models; POST /v1/chat/completions. A reply is `REPLY_PREFIX` followed by the
// last user message's text, streamed word by word as `data: {chunk}` events ending with
// `data: [DONE]` (and a usage chunk with `stream_options.include_usage`). CORS is open, with
// the Authorization header allowed, as a deployment serving a page on another origin must.
//
// Faults, chosen by the request so that one server serves every test:
//   - a missing or wrong `Authorization: Bearer KEY`: 401 (OpenAI's invalid_api_key)
//   - an unknown model: 404 (model_not_found); a temperature outside [0, 2]: 400 naming it
//   - a user message containing `[status NNN]`: that status with OpenAI's error body (429, 503...)
//   - a user message containing `[endless]`: a stream that goes on (a chunk every 20 ms) until
//     the client closes the connection; `entry.done` resolves when the response ends, with
//     `entry.closedEarly` true when the client closed it; with `[burst]` too, 10 chunks in
//     each write (as a fast server's tokens arrive: several in one network read)
//   - a user message containing `[fail mid-stream]`: two chunks, then an error event
//   - a user message containing `[hold]`: no answer until the client closes the connection
//   - a user message containing `[pace N]`: its streamed words N ms apart (a model's pace; by
//     default they are written at once)
// `cors: false` leaves out the CORS headers (a deployment not set up for the page's origin).

import http from "node:http";

export const REPLY_PREFIX = "mock says:";

const CHUNK_MS = 20;
const ENDLESS_LIMIT = 100_000;
const BURST = 10;

export async function startMockOpenAI({ apiKey = null, models = ["mock-vlm"], cors = true } = {}) {
  const log = [];
  const sockets = new Set();
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    let ended;
    const entry = {
      method: req.method, path: url.pathname, auth: req.headers.authorization ?? null, body: null,
      status: 0, chunks: 0, closedEarly: false, done: new Promise((r) => { ended = r; }),
    };
    log.push(entry);
    res.on("close", () => {
      entry.status = res.statusCode;
      entry.closedEarly = !res.writableFinished;
      ended();
    });
    if (cors) res.setHeader("Access-Control-Allow-Origin", "*");
    if (req.method === "OPTIONS" && cors) {
      res.writeHead(204, {
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": req.headers["access-control-request-headers"] ?? "authorization, content-type",
        "Access-Control-Max-Age": "600",
      });
      return res.end();
    }
    const fail = (status, message, { type = "invalid_request_error", param = null, code = null } = {}) => {
      res.writeHead(status, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ error: { message, type, param, code } }));
    };
    if (apiKey && req.headers.authorization !== `Bearer ${apiKey}`) {
      return fail(401, "Incorrect API key provided.", { code: "invalid_api_key" });
    }
    if (req.method === "GET" && url.pathname === "/v1/models") {
      res.writeHead(200, { "Content-Type": "application/json" });
      return res.end(JSON.stringify({
        object: "list",
        data: models.map((id) => ({ id, object: "model", created: 1700000000, owned_by: "mock", max_model_len: 8192 })),
      }));
    }
    if (req.method !== "POST" || url.pathname !== "/v1/chat/completions") return fail(404, `Invalid URL (${req.method} ${url.pathname})`);
    let body;
    try {
      let text = "";
      for await (const piece of req) text += piece;
      body = JSON.parse(text);
    } catch {
      return fail(400, "We could not parse the JSON body of your request.");
    }
    entry.body = body;
    if (!models.includes(body.model)) {
      return fail(404, `The model \`${body.model}\` does not exist.`, { param: "model", code: "model_not_found" });
    }
    if (body.temperature !== undefined && !(body.temperature >= 0 && body.temperature <= 2)) {
      return fail(400, `temperature must be in [0, 2], got ${body.temperature}`, { param: "temperature", code: "invalid_value" });
    }
    const last = [...(body.messages ?? [])].reverse().find((m) => m.role === "user");
    const text = typeof last?.content === "string" ? last.content
      : (last?.content ?? []).filter((p) => p.type === "text").map((p) => p.text).join(" ");
    const status = /\[status (\d{3})\]/.exec(text);
    if (status) {
      const n = Number(status[1]);
      return fail(n, `the mock answers ${n}`, { type: n === 429 ? "rate_limit_error" : "server_error" });
    }
    if (text.includes("[hold]")) return; // answered by nothing: the client's abort closes it
    const words = `${REPLY_PREFIX} ${text}`.split(" ");
    const meta = { id: `chatcmpl-mock${log.length}`, created: 1700000000, model: body.model };
    const usage = { prompt_tokens: text.split(" ").length, completion_tokens: words.length, total_tokens: text.split(" ").length + words.length };
    if (!body.stream) {
      res.writeHead(200, { "Content-Type": "application/json" });
      return res.end(JSON.stringify({
        ...meta, object: "chat.completion",
        choices: [{ index: 0, message: { role: "assistant", content: words.join(" ") }, finish_reason: "stop", logprobs: null }],
        usage,
      }));
    }
    res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
    const send = (value) => { res.write(`data: ${typeof value === "string" ? value : JSON.stringify(value)}\n\n`); entry.chunks++; };
    const chunk = (delta, finish_reason = null) => ({ ...meta, object: "chat.completion.chunk", choices: [{ index: 0, delta, finish_reason, logprobs: null }] });
    const sleep = () => new Promise((r) => setTimeout(r, CHUNK_MS));
    send(chunk({ role: "assistant", content: "" }));
    if (text.includes("[endless]")) {
      // With [burst], BURST chunks in each write: the client's one network read holds several.
      const per = text.includes("[burst]") ? BURST : 1;
      for (let i = 0; i < ENDLESS_LIMIT && !res.destroyed; i += per) {
        const events = Array.from({ length: per }, (_, k) => `data: ${JSON.stringify(chunk({ content: ` word${i + k}` }))}\n\n`);
        res.write(events.join(""));
        entry.chunks += per;
        await sleep();
      }
      return res.end();
    }
    const pace = /\[pace (\d+)\]/.exec(text);
    for (const [i, w] of words.entries()) {
      if (pace && i) await new Promise((r) => setTimeout(r, Number(pace[1])));
      if (res.destroyed) return;
      send(chunk({ content: i ? ` ${w}` : w }));
      if (text.includes("[fail mid-stream]") && i === 1) {
        send({ error: { message: "the mock failed mid-stream", type: "server_error", param: null, code: null } });
        return res.end();
      }
    }
    send(chunk({}, "stop"));
    if (body.stream_options?.include_usage) send({ ...meta, object: "chat.completion.chunk", choices: [], usage });
    send("[DONE]");
    res.end();
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  server.on("connection", (s) => { sockets.add(s); s.on("close", () => sockets.delete(s)); });
  const port = server.address().port;
  return {
    port,
    url: `http://127.0.0.1:${port}/v1`,
    log,
    /** Log entries of chat requests. */
    chats() { return log.filter((e) => e.path === "/v1/chat/completions" && e.method === "POST"); },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
