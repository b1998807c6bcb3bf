// The demo page is private and works offline, as its tagline says, and runs under its strict
// Content-Security-Policy. With the tiny fixture VLM, served as `./build.sh serve` serves the
// page (tests/browser/server.js with `csp: true`):
//   1. the page loads the model and answers about an image with no CSP violation (the
//      `securitypolicyviolation` events of the page, the console of the page and its worker),
//      and no request, to any origin, carries the user's text or image: every request the
//      server saw and every request the browser made (page, worker, service worker) is a GET
//      without a body whose URL holds neither; during the chat itself there is no request at all;
//   2. offline: with the model in Cache Storage and the page's service worker installed, the
//      server is shut down and the browser set offline (nothing can answer any request), a new
//      tab opens the same URL: the page comes from the service worker's cache, the model from
//      Cache Storage (no byte from the network), and it answers about an image.
// DEMO_CONTRACT.md says what the page keeps stable for this.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import vm from "node:vm";
import { startServer, repoRoot, demoCsp } from "./server.js";
import { launchBrowser, requireWasmPackage } from "./harness.js";

const MIN = 60_000;
const DIR = "/fixtures/tiny_mistral3_tekken";
const IMAGE = path.join(repoRoot, "tests/fixtures/tiny_mistral3_tekken/img_84x56.png");
// What the user sends: a marker no file or URL of the app contains, and the image's bytes.
const SECRET = "zebra-q7x3-private-question";
const imageBase64 = fs.readFileSync(IMAGE).toString("base64");
const imageProbes = [imageBase64.slice(40, 80), imageBase64.slice(-60, -20), encodeURIComponent(imageBase64.slice(40, 80))];

let server, browser;
const requests = []; // every HTTP request the browser made: { url, method, body, fromServiceWorker }
before(async () => {
  requireWasmPackage();
  server = await startServer({ csp: true });
  browser = await launchBrowser();
  browser.context.on("request", (r) => {
    if (!/^https?:/.test(r.url())) return; // blob: and data: URLs are the page's own memory
    requests.push({ url: r.url(), method: r.method(), body: r.postDataBuffer()?.toString("latin1") ?? null, fromServiceWorker: !!r.serviceWorker() });
  });
  // Before any of the page's scripts: every CSP violation the page's document reports.
  await browser.context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener("securitypolicyviolation", (e) => {
      window.__cspViolations.push({ directive: e.effectiveDirective, blocked: e.blockedURI, source: e.sourceFile, line: e.lineNumber });
    });
  });
});
after(async () => {
  await browser?.close();
  await server?.close();
});

const demoUrl = () => `${server.url}/index.html?model=${DIR}/model.gguf&mmproj=${DIR}/mmproj.gguf&autoload=1&max_tokens=6&temperature=0`;

/** Attaches the image, asks `text`, and waits for the reply to finish; returns its text. */
async function askAboutImage(page, text) {
  await page.locator("#attach").setInputFiles(IMAGE);
  await page.waitForSelector("#attachments img");
  await page.fill("#prompt", text);
  await page.click("#send");
  await page.waitForFunction(() => ["done", "stopped", "error"].includes(document.querySelector(".msg.assistant:last-of-type")?.dataset.state),
    null, { timeout: 5 * MIN, polling: 250 });
  const reply = await page.evaluate(() => ({ state: document.querySelector(".msg.assistant:last-of-type").dataset.state, last: window.webvlmDemo.state.lastReply }));
  assert.equal(reply.state, "done", `the reply failed: ${JSON.stringify(reply.last?.error)}`);
  return reply.last;
}

test("under its Content-Security-Policy the demo answers about an image with no violation, and no request carries the user's text or image", { timeout: 10 * MIN }, async (t) => {
  // The policy is on every response, the worker's script included (it sets the worker's policy).
  for (const file of ["/index.html", "/pkg/worker.js", "/sw.js"]) {
    const r = await fetch(server.url + file);
    assert.equal(r.headers.get("content-security-policy"), demoCsp(), file);
    assert.equal(r.headers.get("referrer-policy"), "no-referrer", file);
  }
  t.diagnostic(`Content-Security-Policy: ${demoCsp()}`);

  const page = await browser.newPage();
  await page.goto(demoUrl());
  await page.waitForFunction(() => document.body.dataset.state === "ready", null, { timeout: 3 * MIN });
  // The service worker has precached the shell (install waits for it) and controls the page.
  await page.evaluate(() => navigator.serviceWorker.ready);
  await page.waitForFunction(() => navigator.serviceWorker.controller !== null, null, { timeout: 30_000 });

  const sinceServer = server.log.length;
  const sinceBrowser = requests.length;
  const last = await askAboutImage(page, `${SECRET}: what is in this picture?`);
  t.diagnostic(`reply: ${JSON.stringify(last.text)} (${last.deltas} deltas, ${last.renders} renders)`);
  assert.ok(last.deltas > 0, "the model answered");
  // The chat goes to the engine in the page's worker: no request at all while it runs, but
  // for the browser's service-worker update check (the worker's script and the file list it
  // imports), which the browser makes when it likes; it carries nothing of the user's (every
  // request is checked for that below).
  const updateCheck = (method, url) => {
    const u = new URL(url, server.url);
    return method === "GET" && u.origin === new URL(server.url).origin && ["/sw.js", "/offline-files.js"].includes(u.pathname);
  };
  const serverSaw = server.log.slice(sinceServer).filter((e) => !updateCheck(e.method, e.path));
  const browserMade = requests.slice(sinceBrowser).filter((r) => !updateCheck(r.method, r.url));
  assert.deepEqual(serverSaw.map((e) => `${e.method} ${e.path}`), [], "requests the server saw during the chat");
  assert.deepEqual(browserMade.map((r) => `${r.method} ${r.url}`), [], "requests the browser made during the chat");

  // Over the whole visit (page, model load, service worker install, chat): nothing but GETs of
  // the server's own files, none carrying the question or the image.
  const origin = new URL(server.url).origin;
  const carries = (s) => s != null && (s.includes(SECRET) || imageProbes.some((p) => s.includes(p)) || s.includes(path.basename(IMAGE)));
  for (const e of server.log) {
    assert.ok(e.method === "GET" || e.method === "HEAD", `${e.method} ${e.path}`);
    assert.ok(!carries(e.path + e.query) && !carries(e.body) && !carries(e.referer), `${e.method} ${e.path}${e.query} carries the user's data`);
  }
  for (const r of requests) {
    assert.equal(new URL(r.url).origin, origin, `a request to another origin: ${r.url}`);
    assert.ok(!carries(r.url) && !carries(r.body), `${r.method} ${r.url} carries the user's data`);
  }
  t.diagnostic(`${server.log.length} requests to the server, ${requests.length} seen by the browser (${requests.filter((r) => r.fromServiceWorker).length} by the service worker), all GETs of the app and the model`);

  assert.deepEqual(await page.evaluate(() => window.__cspViolations), [], "CSP violations");
  await browser.screenshot(page, "offline-online-chat");
  await page.close();
  browser.assertNoErrors();
});

test("offline: with the model cached, the page opens from its service worker and answers about an image with the server gone and the browser offline", { timeout: 10 * MIN }, async (t) => {
  // Every file the service worker is meant to keep is in its cache.
  const manifest = {};
  vm.runInNewContext(fs.readFileSync(path.join(repoRoot, "www/offline-files.js"), "utf8"), { self: manifest });
  const { version, files } = manifest.WEBVLM_OFFLINE;
  const probe = await browser.newPage();
  await probe.goto(`${server.url}/index.html`);
  await probe.evaluate(() => navigator.serviceWorker.ready);
  const cached = await probe.evaluate(async (name) => (await (await caches.open(name)).keys()).map((r) => new URL(r.url).pathname.slice(1)), `webvlm-app-${version}`);
  assert.deepEqual([...cached].sort(), [...files].sort(), "the shell's files in the service worker's cache");
  assert.ok(files.includes("pkg/webvlm_bg.wasm") && files.includes("vendor/marked.js") && files.includes("index.html"));
  const url = demoUrl();
  await probe.close();

  // The network is gone: nothing listens on the server's port, and the browser is offline.
  await server.close();
  await browser.context.setOffline(true);
  t.after(() => browser.context.setOffline(false));
  const before = requests.length;

  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForFunction(() => document.body.dataset.state === "ready" || document.body.dataset.state === "error", null, { timeout: 3 * MIN });
  const { status, info, error, progress } = await page.evaluate(() => ({
    status: document.body.dataset.state, info: window.webvlmDemo.state.info, error: window.webvlmDemo.state.lastError,
    progress: document.getElementById("progress-text").textContent,
  }));
  assert.equal(status, "ready", `offline load failed: ${JSON.stringify(error)}`);
  assert.equal(info.networkBytes, 0, "bytes from the network");
  t.diagnostic(`offline: ${progress}`);
  assert.match(progress, /from this device's cache/);

  const last = await askAboutImage(page, "What is in this picture?");
  t.diagnostic(`offline reply: ${JSON.stringify(last.text)}`);
  assert.ok(last.deltas > 0, "the model answered offline");
  // The page's requests were all answered by its service worker (none reached a network).
  const made = requests.slice(before);
  t.diagnostic(`${made.length} requests while offline, every one answered from the service worker's cache`);
  assert.deepEqual(await page.evaluate(() => window.__cspViolations), [], "CSP violations");
  await browser.screenshot(page, "offline-chat");
  await page.close();
  // The service worker's own failed network attempts are its console's, not the page's.
  browser.assertNoErrors();
});
