// The demo page (www/index.html) loads without errors; screenshots at desktop and phone
// widths go to the test output. A smoke test only: what the page does with a model is for
// the tests that load one.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { startServer, repoRoot } from "./server.js";
import { launchBrowser, requireWasmPackage } from "./harness.js";

let server, browser;
before(async () => {
  requireWasmPackage();
  server = await startServer();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.close();
});

test("the demo page loads with no page errors (desktop and phone screenshots)", async (t) => {
  const page = await browser.newPage();
  await page.goto(`${server.url}/index.html`, { waitUntil: "load" });
  await page.waitForLoadState("networkidle");
  const title = await page.title();
  t.diagnostic(`title: ${title}`);
  await browser.screenshot(page, "demo-desktop");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(200);
  await browser.screenshot(page, "demo-phone");
  browser.saveLog("demo");

  assert.match(title, /webvlm/i);
  const notFound = server.log.filter((e) => e.status === 404).map((e) => e.path);
  // The page's JS API module comes from the package build; until build.sh puts it in
  // www/pkg/, only uncaught errors count.
  if (fs.existsSync(path.join(repoRoot, "www/pkg/index.js"))) {
    assert.deepEqual(notFound, [], "requests that got 404");
    browser.assertNoErrors();
  } else {
    t.diagnostic(`www/pkg/index.js not built yet; 404s: ${notFound.join(" ")}`);
    assert.deepEqual(browser.errors, [], "uncaught page errors");
  }
});

test("the demo loads a tiny VLM with progress, streams a reply about an attached image, and stops at once", async (t) => {
  const dir = "/fixtures/tiny_mistral3_tekken";
  const page = await browser.newPage();
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.goto(`${server.url}/index.html?model=${dir}/model.gguf&mmproj=${dir}/mmproj.gguf&autoload=1&max_tokens=40`);
  await page.waitForFunction(() => document.body.dataset.state === "ready", null, { timeout: 120_000 });
  const progress = await page.evaluate(() => window.webvlmDemo.state.progressLog.length);
  assert.ok(progress >= 2, `${progress} progress events shown`);
  assert.match(await page.locator("#progress-text").textContent(), /\S/);

  // Long tasks (> 50 ms) on the page's thread from here on: the engine works in its worker.
  await page.evaluate(() => {
    window.__longTasks = [];
    new PerformanceObserver((list) => window.__longTasks.push(...list.getEntries().map((e) => e.duration)))
      .observe({ type: "longtask" });
  });
  await page.locator("#attach").setInputFiles(path.join(repoRoot, "tests/fixtures/tiny_mistral3_tekken/img_84x56.png"));
  await page.waitForSelector("#attachments img");
  await page.fill("#prompt", "What is in this picture?");
  await page.click("#send");
  await page.waitForSelector(".msg.user .msg-images img");
  // Tokens stream in: the assistant bubble grows over several updates before it is done.
  const content = page.locator(".msg.assistant .content").last();
  const seen = new Set();
  for (let i = 0; i < 600 && seen.size < 3; i++) {
    seen.add(await content.textContent());
    await page.waitForTimeout(100);
  }
  assert.ok(seen.size >= 3, `the reply grew in ${seen.size} steps`);
  assert.equal(await page.evaluate(() => document.body.dataset.state), "generating");
  await browser.screenshot(page, "demo-chat-streaming");

  const before = (await content.textContent()).length;
  const t0 = Date.now();
  await page.click("#stop");
  await page.waitForFunction(() => document.body.dataset.state === "ready", null, { timeout: 30_000 });
  const stopMs = Date.now() - t0;
  t.diagnostic(`stopped after ${stopMs} ms`);
  await page.waitForTimeout(1000);
  const after = (await content.textContent()).length;
  assert.ok(after <= before + 40, `text kept growing after stop (${before} -> ${after} characters)`);
  assert.equal(await page.locator(".msg.assistant").last().getAttribute("data-state"), "stopped");
  const longTasks = await page.evaluate(() => window.__longTasks);
  t.diagnostic(`long tasks on the main thread while generating: ${JSON.stringify(longTasks)}`);
  assert.deepEqual(longTasks, [], "the page's thread blocked for more than 50 ms");
  await browser.screenshot(page, "demo-chat-stopped");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(200);
  await browser.screenshot(page, "demo-chat-phone");
  browser.assertNoErrors();
});
