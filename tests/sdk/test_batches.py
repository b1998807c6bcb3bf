"""The Python SDK's Batch API round trip: `files.create(purpose="batch")`, `batches.create`,
`batches.retrieve` polled to the end, `files.content` of the output and error files (one line
per `custom_id`, each answer equal to the same request sent alone, with its usage; a bad line's
error naming its field), and `batches.cancel` of a batch whose first request is running."""

import json

import openai
import pytest

from conftest import LONG, SHORT, needs, poll, user

ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "cancelled", "expired")


def jsonl(lines):
    return "".join(json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}) + "\n"
                   for custom_id, body in lines).encode()


def start_batch(client, content, **options):
    file = client.files.create(file=("requests.jsonl", content), purpose="batch")
    assert (file.object, file.purpose, file.bytes) == ("file", "batch", len(content))
    assert client.files.content(file.id).content == content
    assert file.id in [f.id for f in client.files.list()]
    batch = client.batches.create(input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h",
                                  metadata={"suite": "sdk"}, **options)
    assert (batch.object, batch.input_file_id, batch.endpoint) == ("batch", file.id, ENDPOINT)
    assert batch.metadata == {"suite": "sdk"}
    return batch


def result_lines(client, file_id):
    """A result file's lines by custom_id (each once)."""
    if file_id is None:
        return {}
    assert client.files.retrieve(file_id).purpose == "batch_output"
    lines = [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
    by_id = {line["custom_id"]: line for line in lines}
    assert len(by_id) == len(lines), "each custom_id once"
    return by_id


def test_batch_round_trip(client, target):
    needs(target, "batch")
    model = target["model"]
    bodies = {
        # One prompt (prefilled once): the answers differ in length.
        "six": {"model": model, "messages": user(SHORT), "max_tokens": 6, "temperature": 0},
        "three": {"model": model, "messages": user(SHORT), "max_tokens": 3, "temperature": 0},
        "bad": {"model": model, "messages": user("hi"), "temperature": -1},
    }
    batch = start_batch(client, jsonl(bodies.items()), output_expires_after={"anchor": "created_at", "seconds": 3600})
    done = poll(lambda: client.batches.retrieve(batch.id), lambda b: b.status in TERMINAL)
    assert done.status == "completed", done
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (3, 2, 1)
    assert done.completed_at >= done.created_at

    outputs = result_lines(client, done.output_file_id)
    assert set(outputs) == {"six", "three"}
    for custom_id, line in outputs.items():
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        usage = body["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        alone = client.chat.completions.create(**bodies[custom_id])
        assert body["choices"][0]["message"]["content"] == alone.choices[0].message.content, custom_id
        assert usage["completion_tokens"] == alone.usage.completion_tokens

    errors = result_lines(client, done.error_file_id)
    assert set(errors) == {"bad"}
    assert errors["bad"]["response"]["status_code"] == 400
    if "errors_param" in target["features"]:
        assert errors["bad"]["response"]["body"]["error"]["param"] == "temperature"

    assert done.id in [b.id for b in client.batches.list()]
    assert client.files.delete(done.input_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(done.input_file_id)


def test_batch_cancel(client, target):
    needs(target, "batch")
    long = {"model": target["model"], "messages": user(LONG), "max_tokens": 400, "temperature": 0}
    batch = start_batch(client, jsonl((custom_id, long) for custom_id in ("x", "y", "z")))
    poll(lambda: client.batches.retrieve(batch.id), lambda b: b.status == "in_progress")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    cancelled = poll(lambda: client.batches.retrieve(batch.id), lambda b: b.status in TERMINAL)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    outputs = result_lines(client, cancelled.output_file_id)
    errors = result_lines(client, cancelled.error_file_id)
    assert sorted([*outputs, *errors]) == ["x", "y", "z"], "every request is accounted for once"
    assert errors["z"]["error"]["code"] == "batch_cancelled", "the last request never ran"
