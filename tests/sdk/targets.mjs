// Shared by the npm half of the SDK conformance suite: the servers under test (from
// `SDK_TARGETS`, set by run.py), an official `openai` client for each, and small helpers.
// `forEachTarget(name, features, fn)` declares one test per target, skipped only for a target
// that does not list every feature in `features`.
//
// The `openai` package is the one tests/browser pins (package.json, package-lock.json) and
// installs; it is imported from there by path, so that the repository has one pin of it and
// one `npm ci` (a bare `import "openai"` would look in tests/sdk/node_modules).

import { readFileSync } from "node:fs";
import { test } from "node:test";

import OpenAI, { toFile } from "../browser/node_modules/openai/index.mjs";

export { OpenAI, toFile };

if (!process.env.SDK_TARGETS) {
  throw new Error("SDK_TARGETS is not set: run the suite with python3 tests/sdk/run.py");
}
export const targets = JSON.parse(process.env.SDK_TARGETS);

const IMAGE = new URL("../fixtures/tiny_mistral3_tekken/img_84x56.png", import.meta.url);

export function forEachTarget(name, features, fn) {
  for (const target of targets) {
    const missing = features.filter((f) => !target.features.includes(f));
    const skip = missing.length > 0 && `${target.name} does not offer ${missing.join(", ")}`;
    test(`${target.name}: ${name}`, { skip }, () => fn(target, client(target)));
  }
}

/** The official client, changed only in `baseURL` (and the key). No retries: a 429 or a 5xx
 *  must show, not be hidden behind a retry. */
export function client(target, options = {}) {
  return new OpenAI({ baseURL: target.base_url, apiKey: target.api_key, maxRetries: 0, timeout: 120_000, ...options });
}

// The prompts most tests send: few, so that a slow target prefills each once and its prompt
// cache answers the rest (SmolLM2 on a software GPU takes seconds for a new prompt). The Python
// tests (conftest.py) send the same ones.
export const SHORT = "Name three colors.";
export const GREETING = "Say hello.";
export const LONG = "Count from 1 to 1000, one number a line.";

export const user = (text) => [{ role: "user", content: text }];

/** A user message with the tiny VLM fixture's PNG as a data URL. */
export function imageMessage(text) {
  const url = `data:image/png;base64,${readFileSync(IMAGE).toString("base64")}`;
  return [{ role: "user", content: [{ type: "text", text }, { type: "image_url", image_url: { url } }] }];
}

/** A streamed request's chunks, read to the end. */
export async function streamed(openai, request) {
  const chunks = [];
  for await (const chunk of await openai.chat.completions.create({ ...request, stream: true })) chunks.push(chunk);
  return chunks;
}

export const deltaText = (chunks) => chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");

/** Calls `what()` until `done(result)`; returns that result. */
export async function poll(what, done, seconds = 180) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const result = await what();
    if (done(result)) return result;
    if (Date.now() > deadline) throw new Error(`not done after ${seconds} s: ${JSON.stringify(result)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
