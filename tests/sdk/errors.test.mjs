// Errors as the npm SDK's own classes: a bad request as the class of the server's status
// (`BadRequestError`, or llama.cpp's `InternalServerError`), naming the field at fault (`.param`)
// where the server does, `AuthenticationError` for a wrong key, `NotFoundError` for an unknown
// model, batch or file, and `RateLimitError` (with `Retry-After`) when the queue is full.

import assert from "node:assert/strict";

import { client, forEachTarget, LONG, OpenAI, poll, user } from "./targets.mjs";

const BAD_FIELDS = [["temperature", -1], ["max_tokens", 0], ["max_tokens", "many"], ["max_completion_tokens", 0],
  ["top_logprobs", 50]];

for (const [field, value] of BAD_FIELDS) {
  const name = `${field}: ${JSON.stringify(value)} is a BadRequestError naming the field, streamed or not`;
  forEachTarget(name, ["errors_param"], async (target, openai) => {
    for (const stream of [false, true]) {
      const request = { model: target.model, messages: user("hi"), max_tokens: 2, logprobs: true, stream, [field]: value };
      await assert.rejects(openai.chat.completions.create(request), (error) => {
        assert.ok(error instanceof OpenAI.BadRequestError, String(error));
        assert.equal(error.status, 400);
        assert.equal(error.param, field);
        assert.equal(error.type, "invalid_request_error");
        return true;
      });
    }
  });
}

// The SDK's class for each status a target refuses a bad request with (`invalid_status`).
const STATUS_ERRORS = { 400: OpenAI.BadRequestError, 500: OpenAI.InternalServerError };

// A field of the wrong type, refused by every target: the SDK throws the class of the status the
// target answers with (without `errors_param`, what the caller has to go by).
forEachTarget("a bad request is the error of its status, streamed or not", [], async (target, openai) => {
  const status = target.invalid_status;
  for (const stream of [false, true]) {
    const request = { model: target.model, messages: user("hi"), max_tokens: 2, temperature: "hot", stream };
    await assert.rejects(openai.chat.completions.create(request), (error) => {
      assert.equal(error.constructor, STATUS_ERRORS[status], String(error));
      assert.equal(error.status, status);
      assert.match(error.message, /temperature/);
      return true;
    });
  }
});

forEachTarget("a wrong key is an AuthenticationError", ["auth"], async (target) => {
  const wrong = client({ ...target, api_key: "not-the-key" });
  const isAuthError = (error) => error instanceof OpenAI.AuthenticationError && error.status === 401;
  const request = { model: target.model, messages: user("hi"), max_tokens: 1 };
  await assert.rejects(wrong.chat.completions.create(request), isAuthError);
  await assert.rejects(wrong.models.list(), isAuthError);
});

const notFound = (error) => error instanceof OpenAI.NotFoundError && error.status === 404;

forEachTarget("an unknown model is a NotFoundError", ["model_not_found"], async (target, openai) => {
  await assert.rejects(openai.chat.completions.create({ model: "no-such-model", messages: user("hi"), max_tokens: 1 }),
    (error) => notFound(error) && (!target.features.includes("errors_param") || error.param === "model"));
  await assert.rejects(openai.models.retrieve("no-such-model"), notFound);
});

forEachTarget("unknown batches and files are NotFoundErrors", ["batch"], async (target, openai) => {
  await assert.rejects(openai.batches.retrieve("batch_nope"), notFound);
  await assert.rejects(openai.batches.cancel("batch_nope"), notFound);
  await assert.rejects(openai.files.retrieve("file-nope"), notFound);
  await assert.rejects(openai.files.content("file-nope"), notFound);
});

const health = async (target) => (await fetch(new URL("/health", target.base_url))).json();

// While one generation runs, the next request is a 429 (webvlm serve with `--queue 0`); webvlm
// serve's `/health` tells when the aborted one is gone.
forEachTarget("a full queue is a RateLimitError", ["rate_limit"], async (target, openai) => {
  const long = { model: target.model, messages: user(LONG), max_tokens: 400, temperature: 0, stream: true };
  const running = await openai.chat.completions.create(long);
  const iterator = running[Symbol.asyncIterator]();
  await iterator.next();
  await assert.rejects(openai.chat.completions.create({ model: target.model, messages: user("hi"), max_tokens: 1 }), (error) => {
    assert.ok(error instanceof OpenAI.RateLimitError, String(error));
    assert.equal(error.status, 429);
    assert.ok(Number(error.headers.get("retry-after")) >= 1);
    return true;
  });
  // Closing the stream aborts the generation; the queue is free again.
  running.controller.abort();
  await poll(() => health(target), (h) => h.queue.running === 0 && h.queue.waiting === 0);
  const after = await openai.chat.completions.create({ ...long, stream: false, max_tokens: 1 });
  assert.equal(after.choices.length, 1);
});
