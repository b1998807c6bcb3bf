"""The Python SDK's `logprobs`/`top_logprobs` (one entry per completion token, their bytes
spelling the text, the greedy choice the most likely; the same entries streamed) and structured
output: `response_format` `json_object` (the text is a JSON object) and with a JSON schema (the
text parses and validates), and `client.chat.completions.parse` with a Pydantic model (the
parsed object checked)."""

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from conftest import GREETING, delta_text, needs, streamed, user

TOP = 3


def test_logprobs_and_top_logprobs(client, target):
    needs(target, "logprobs")
    request = {"model": target["model"], "messages": user(GREETING), "max_tokens": 8, "temperature": 0,
               "logprobs": True, "top_logprobs": TOP}
    completion = client.chat.completions.create(**request)
    choice = completion.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == completion.usage.completion_tokens
    if "logprobs_bytes" in target["features"]:
        assert bytes(b for e in entries for b in e.bytes).decode() == choice.message.content
    else:
        assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == TOP
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert entry.top_logprobs[0].token == entry.token, "temperature 0 picks the most likely token"
        assert abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-4

    chunks = streamed(client, **request)
    streamed_entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed_entries] == [e.token for e in entries]
    assert delta_text(chunks) == choice.message.content


PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_response_format_json_object(client, target):
    needs(target, "json_object")
    completion = client.chat.completions.create(
        model=target["model"], messages=user("Give a JSON object with a name and an age."), max_tokens=120,
        temperature=0, response_format={"type": "json_object"})
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_response_format_json_schema(client, target):
    needs(target, "json_schema")
    completion = client.chat.completions.create(
        model=target["model"], messages=user("Describe a person as JSON."), max_tokens=120, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True}})
    assert completion.choices[0].finish_reason == "stop"
    person = json.loads(completion.choices[0].message.content)
    assert set(person) == {"name", "age"}
    assert isinstance(person["name"], str) and len(person["name"]) <= 12
    assert isinstance(person["age"], int) and 0 <= person["age"] <= 120


class Pet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    species: Literal["cat", "dog", "fish"]
    legs: int = Field(ge=0, le=8)
    indoor: bool


def test_parse_with_a_pydantic_model(client, target):
    needs(target, "json_schema")
    completion = client.chat.completions.parse(
        model=target["model"], messages=user("Describe a pet."), max_tokens=120, temperature=0, response_format=Pet)
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert message.refusal is None
    assert isinstance(message.parsed, Pet)
    assert message.parsed == Pet.model_validate_json(message.content)
    assert message.parsed.species in ("cat", "dog", "fish") and 0 <= message.parsed.legs <= 8
