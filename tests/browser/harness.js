// Launches the system Chromium with WebGPU (SwiftShader) through playwright-core, and collects
// what a test needs to assert on: console messages, page errors, crashed pages, screenshots.
//
//   const b = await launchBrowser();                 // fresh profile, persistent within the test
//   const page = await b.newPage();
//   await page.goto(server.url + "/index.html");
//   await b.screenshot(page, "demo-desktop");        // -> target/browser-test-output/demo-desktop.png
//   b.assertNoErrors();                              // no page error, no console error, no crash
//   await b.close();
//
// Cache Storage, IndexedDB and the rest of the profile live in a fresh user-data-dir that
// survives reloads and new pages within one launch (launchPersistentContext) and is deleted on
// close (keep it with WEBVLM_KEEP_PROFILE=1). Chromium's own HTTP cache is disabled with the
// server's `Cache-Control: no-store`, not here.
//
// Environment:
//   CHROMIUM                  the browser binary (default /usr/bin/chromium)
//   BROWSER_TEST_OUTPUT       screenshots and logs (default <repo>/target/browser-test-output)
//   WEBVLM_HEADED=1           show the window (needs a display)

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { repoRoot } from "./server.js";

export const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
export const outputDir = path.resolve(
  process.env.BROWSER_TEST_OUTPUT || path.join(process.env.CARGO_TARGET_DIR || path.join(repoRoot, "target"), "browser-test-output"),
);

/**
 * The flags. Only `--enable-unsafe-webgpu` is needed for WebGPU: headless Chromium (the new
 * headless mode, which playwright's `--headless` selects) then finds no hardware GPU and falls
 * back to SwiftShader's Vulkan for Dawn. Dawn's zero-initialisation of workgroup memory is
 * off (`disable_workgroup_init`): on SwiftShader its stores and barrier at the start of every
 * workgroup made SmolLM2's decode 4.4x slower (0.15 against 0.65 tokens/s), most of this
 * suite's time. Our kernels write their workgroup memory before reading it; one that read it
 * first would get leftovers here, not zeros, and fail rather than pass. The rest keep a
 * closed network quiet and the start deterministic.
 */
export const chromiumArgs = [
  "--enable-unsafe-webgpu",
  "--enable-dawn-features=disable_workgroup_init",
  "--no-sandbox", // we run as root in CI
  "--disable-quic",
  "--no-first-run",
  "--no-default-browser-check",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-default-apps",
  "--disable-domain-reliability",
  "--metrics-recording-only",
];

/** Console errors that say nothing about the page under test. */
const IGNORED_CONSOLE = [
  (m) => /\/favicon\.ico$/.test(m.url ?? ""),
];

export async function launchBrowser({ args = [], viewport = { width: 1280, height: 800 }, ...options } = {}) {
  fs.mkdirSync(outputDir, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "webvlm-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: process.env.WEBVLM_HEADED !== "1",
    args: [...chromiumArgs, ...args],
    viewport,
    ...options,
  });

  const console_ = []; // { type, text, url, page, time }
  const errors = []; // { message, stack, page }
  const crashes = [];
  const watch = (page) => {
    // Includes the console of the page's workers (the engine's module worker, later).
    page.on("console", (m) => {
      const loc = m.location();
      console_.push({ type: m.type(), text: m.text(), url: loc?.url, page: page.url(), worker: !!m.worker(), time: Date.now() });
    });
    page.on("pageerror", (e) => errors.push({ message: e.message, stack: e.stack, page: page.url() }));
    page.on("crash", () => crashes.push(page.url()));
  };
  context.pages().forEach(watch);
  context.on("page", watch);

  let firstPageHandedOut = false;
  const b = {
    context,
    profile,
    console: console_,
    errors,
    crashes,
    /** The first call reuses the persistent context's initial tab. */
    async newPage() {
      if (!firstPageHandedOut) {
        firstPageHandedOut = true;
        const existing = context.pages()[0];
        if (existing) return existing;
      }
      return context.newPage();
    },
    /** Console messages of a type ("error", "warning", "log", ...), minus known noise. */
    consoleOf(type) {
      return console_.filter((m) => m.type === type && !IGNORED_CONSOLE.some((f) => f(m)));
    },
    /** Fails with everything collected if the pages threw, logged an error, or crashed. */
    assertNoErrors({ allowConsoleErrors = [] } = {}) {
      const consoleErrors = b.consoleOf("error").filter((m) => !allowConsoleErrors.some((re) => re.test(m.text)));
      if (errors.length || consoleErrors.length || crashes.length) {
        const lines = [
          ...errors.map((e) => `page error: ${e.stack || e.message}`),
          ...consoleErrors.map((m) => `console.error: ${m.text}${m.url ? ` (${m.url})` : ""}`),
          ...crashes.map((u) => `crashed: ${u}`),
        ];
        throw new Error(`browser reported problems:\n  ${lines.join("\n  ")}`);
      }
    },
    /** Saves a full-page PNG under the test output folder; returns its path. */
    async screenshot(page, name) {
      const file = path.join(outputDir, `${name.replace(/[^\w.-]+/g, "_")}.png`);
      await page.screenshot({ path: file, fullPage: true });
      return file;
    },
    /** Writes the collected console messages and errors next to the screenshots. */
    saveLog(name) {
      const file = path.join(outputDir, `${name.replace(/[^\w.-]+/g, "_")}.console.txt`);
      const text = [
        ...console_.map((m) => `[${m.type}]${m.worker ? " (worker)" : ""} ${m.text}${m.url ? `  @ ${m.url}` : ""}`),
        ...errors.map((e) => `[pageerror] ${e.stack || e.message}`),
        ...crashes.map((u) => `[crash] ${u}`),
      ].join("\n");
      fs.writeFileSync(file, text + "\n");
      return file;
    },
    async close() {
      await context.close().catch(() => {});
      if (process.env.WEBVLM_KEEP_PROFILE !== "1") fs.rmSync(profile, { recursive: true, force: true });
    },
  };
  return b;
}

/** Reads WebGPU's adapter from the page: null when there is none. */
export async function webgpuAdapter(page) {
  return page.evaluate(async () => {
    if (!navigator.gpu) return null;
    const a = await navigator.gpu.requestAdapter();
    if (!a) return null;
    const info = a.info ?? {};
    return {
      vendor: info.vendor,
      architecture: info.architecture,
      device: info.device,
      description: info.description,
      features: [...a.features].sort(),
      limits: {
        maxBufferSize: a.limits.maxBufferSize,
        maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize,
        maxStorageBuffersPerShaderStage: a.limits.maxStorageBuffersPerShaderStage,
        maxComputeInvocationsPerWorkgroup: a.limits.maxComputeInvocationsPerWorkgroup,
        maxComputeWorkgroupStorageSize: a.limits.maxComputeWorkgroupStorageSize,
      },
    };
  });
}

/** Fails early, with the command to run, when the wasm package has not been built. */
export function requireWasmPackage() {
  // The package, the demo's vendored Markdown libraries and its offline list: all made by
  // `./build.sh wasm`.
  for (const file of ["www/pkg/webvlm.js", "www/vendor/marked.js", "www/vendor/dompurify.js", "www/offline-files.js"]) {
    if (!fs.existsSync(path.join(repoRoot, file))) throw new Error(`${file} is missing: run ./build.sh wasm first`);
  }
}

/** Runs `fn(api, arg, state)` in `page` with the package imported as `api`; `state` persists
 * across calls in that page. `fn` is sent as source, so it sees only its arguments. */
export function inPage(page, fn, arg) {
  return page.evaluate(
    async ([src, arg]) => {
      const api = await import("/pkg/index.js");
      globalThis.__t ??= {};
      return (0, eval)(`(${src})`)(api, arg, globalThis.__t);
    },
    [fn.toString(), arg],
  );
}

/** RFC 4180 CSV (quoted cells with "" escapes and line breaks) as rows of cells. */
export function parseCSV(text) {
  const rows = [];
  let row = [], cell = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') { cell += '"'; i++; }
      else if (ch === '"') quoted = false;
      else cell += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ",") { row.push(cell); cell = ""; }
    else if (ch === "\r" && text[i + 1] === "\n") { row.push(cell); rows.push(row); row = []; cell = ""; i++; }
    else if (ch === "\n") { row.push(cell); rows.push(row); row = []; cell = ""; }
    else cell += ch;
  }
  if (cell !== "" || row.length) { row.push(cell); rows.push(row); }
  return rows;
}
