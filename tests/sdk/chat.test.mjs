// The npm SDK's chat completions against each target: a plain completion, the same request
// streamed (its text and finish reason equal to the plain one's at temperature 0; with
// `stream_options.include_usage`, a last chunk with its usage), the streaming helper's final completion, images as data URLs, and
// `models.list` / `models.retrieve`.

import assert from "node:assert/strict";

import { deltaText, forEachTarget, imageMessage, SHORT, streamed, user } from "./targets.mjs";

const MAX_TOKENS = 12;

const request = (target, messages = user(SHORT)) => ({
  model: target.model, messages, max_tokens: MAX_TOKENS, temperature: 0,
});

function checkCompletion(completion, target) {
  assert.equal(completion.object, "chat.completion");
  assert.equal(completion.model, target.model);
  assert.equal(completion.choices.length, 1);
  const [choice] = completion.choices;
  assert.equal(choice.index, 0);
  assert.equal(choice.message.role, "assistant");
  assert.ok(typeof choice.message.content === "string" && choice.message.content.length > 0);
  assert.ok(["stop", "length"].includes(choice.finish_reason), choice.finish_reason);
  const { usage } = completion;
  assert.ok(usage.prompt_tokens > 0 && usage.completion_tokens > 0 && usage.completion_tokens <= MAX_TOKENS);
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
  if (choice.finish_reason === "length") assert.equal(usage.completion_tokens, MAX_TOKENS);
}

/** A stream read to its end tells what the plain completion does. */
function checkStreamEquals(chunks, completion) {
  assert.ok(chunks.length > 0);
  for (const chunk of chunks) {
    assert.equal(chunk.object, "chat.completion.chunk");
    assert.equal(chunk.id, chunks[0].id);
  }
  assert.equal(chunks[0].choices[0].delta.role, "assistant");
  assert.equal(deltaText(chunks), completion.choices[0].message.content);
  const finishes = chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean);
  assert.deepEqual(finishes, [completion.choices[0].finish_reason]);
}

forEachTarget("plain and streamed completions agree", [], async (target, openai) => {
  const plain = await openai.chat.completions.create(request(target));
  checkCompletion(plain, target);

  const chunks = await streamed(openai, request(target));
  checkStreamEquals(chunks, plain);
  assert.ok(chunks.every((c) => c.usage == null));
});

forEachTarget("streams end with the usage when asked", ["stream_usage"], async (target, openai) => {
  const plain = await openai.chat.completions.create(request(target));
  const chunks = await streamed(openai, { ...request(target), stream_options: { include_usage: true } });
  checkStreamEquals(chunks, plain);
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, [], "the usage chunk comes last, without choices");
  assert.equal(last.usage.prompt_tokens, plain.usage.prompt_tokens);
  assert.equal(last.usage.completion_tokens, plain.usage.completion_tokens);
  assert.ok(chunks.slice(0, -1).every((c) => c.usage == null));
});

forEachTarget("the stream helper accumulates the same completion", [], async (target, openai) => {
  const plain = await openai.chat.completions.create(request(target));
  const stream = openai.chat.completions.stream(request(target));
  let deltas = "";
  stream.on("content.delta", ({ delta }) => { deltas += delta; });
  const final = await stream.finalChatCompletion();
  assert.equal(final.choices[0].message.content, plain.choices[0].message.content);
  assert.equal(final.choices[0].finish_reason, plain.choices[0].finish_reason);
  assert.equal(deltas, plain.choices[0].message.content);
});

forEachTarget("images as data URLs", ["vision"], async (target, openai) => {
  const textOnly = await openai.chat.completions.create(request(target, user("What is this?")));
  const withImage = request(target, imageMessage("What is this?"));
  const plain = await openai.chat.completions.create(withImage);
  checkCompletion(plain, target);
  assert.ok(plain.usage.prompt_tokens > textOnly.usage.prompt_tokens, "the image's tokens count in the prompt");
  checkStreamEquals(await streamed(openai, withImage), plain);
});

forEachTarget("models.list and models.retrieve", [], async (target, openai) => {
  const models = [];
  for await (const model of openai.models.list()) models.push(model);
  assert.ok(models.some((m) => m.id === target.model), JSON.stringify(models));
  for (const m of models) {
    assert.equal(m.object, "model");
    assert.ok(m.owned_by);
    if (target.features.includes("model_created")) assert.ok(Number.isInteger(m.created), JSON.stringify(m));
  }
  if (target.features.includes("model_retrieve")) {
    assert.equal((await openai.models.retrieve(target.model)).id, target.model);
  }
});
