// The npm SDK's `logprobs`/`top_logprobs` (one entry per completion token, their bytes spelling
// the text, the greedy choice the most likely; the same entries streamed) and structured output:
// `response_format` `json_object` (the text is a JSON object) and with a JSON schema through
// `chat.completions.create` (the text validates with ajv) and `chat.completions.parse` (the SDK's
// parsed object validates and equals the text).

import assert from "node:assert/strict";

// ajv, like openai, is pinned and installed by tests/browser (see targets.mjs).
import Ajv from "../browser/node_modules/ajv/dist/ajv.js";

import { deltaText, forEachTarget, GREETING, streamed, user } from "./targets.mjs";

const TOP = 3;

forEachTarget("logprobs and top_logprobs", ["logprobs"], async (target, openai) => {
  const request = { model: target.model, messages: user(GREETING), max_tokens: 8, temperature: 0,
    logprobs: true, top_logprobs: TOP };
  const completion = await openai.chat.completions.create(request);
  const [choice] = completion.choices;
  const entries = choice.logprobs.content;
  assert.equal(entries.length, completion.usage.completion_tokens);
  if (target.features.includes("logprobs_bytes")) {
    assert.equal(Buffer.from(entries.flatMap((e) => e.bytes)).toString("utf8"), choice.message.content);
  } else {
    assert.equal(entries.map((e) => e.token).join(""), choice.message.content);
  }
  for (const entry of entries) {
    assert.ok(entry.logprob <= 0);
    assert.equal(entry.top_logprobs.length, TOP);
    const tops = entry.top_logprobs.map((t) => t.logprob);
    assert.deepEqual(tops, [...tops].sort((a, b) => b - a));
    assert.equal(entry.top_logprobs[0].token, entry.token, "temperature 0 picks the most likely token");
    assert.ok(Math.abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-4);
  }

  const chunks = await streamed(openai, request);
  const streamedEntries = chunks.flatMap((c) => c.choices[0]?.logprobs?.content ?? []);
  assert.deepEqual(streamedEntries.map((e) => e.token), entries.map((e) => e.token));
  assert.equal(deltaText(chunks), choice.message.content);
});

const PERSON = {
  type: "object",
  properties: { name: { type: "string", maxLength: 12 }, age: { type: "integer", minimum: 0, maximum: 120 } },
  required: ["name", "age"],
  additionalProperties: false,
};

const PET = {
  type: "object",
  properties: { species: { type: "string", enum: ["cat", "dog", "fish"] }, legs: { type: "integer", minimum: 0, maximum: 8 },
    indoor: { type: "boolean" } },
  required: ["species", "legs", "indoor"],
  additionalProperties: false,
};

const jsonSchema = (name, schema) => ({ type: "json_schema", json_schema: { name, schema, strict: true } });

function assertValid(schema, value) {
  const validate = new Ajv({ strict: true }).compile(schema);
  assert.ok(validate(value), `${JSON.stringify(value)}: ${JSON.stringify(validate.errors)}`);
}

forEachTarget("response_format json_object", ["json_object"], async (target, openai) => {
  const completion = await openai.chat.completions.create({ model: target.model,
    messages: user("Give a JSON object with a name and an age."), max_tokens: 120, temperature: 0,
    response_format: { type: "json_object" } });
  assert.equal(completion.choices[0].finish_reason, "stop");
  const value = JSON.parse(completion.choices[0].message.content);
  assert.ok(value !== null && typeof value === "object" && !Array.isArray(value), JSON.stringify(value));
});

forEachTarget("response_format with a JSON schema", ["json_schema"], async (target, openai) => {
  const completion = await openai.chat.completions.create({ model: target.model, messages: user("Describe a person as JSON."),
    max_tokens: 120, temperature: 0, response_format: jsonSchema("person", PERSON) });
  assert.equal(completion.choices[0].finish_reason, "stop");
  assertValid(PERSON, JSON.parse(completion.choices[0].message.content));
});

forEachTarget("chat.completions.parse with a JSON schema", ["json_schema"], async (target, openai) => {
  const completion = await openai.chat.completions.parse({ model: target.model, messages: user("Describe a pet."),
    max_tokens: 120, temperature: 0, response_format: jsonSchema("pet", PET) });
  const { message, finish_reason } = completion.choices[0];
  assert.equal(finish_reason, "stop");
  assert.equal(message.refusal ?? null, null);
  assertValid(PET, message.parsed);
  assert.deepEqual(message.parsed, JSON.parse(message.content));
});
