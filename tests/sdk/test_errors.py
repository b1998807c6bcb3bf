"""Errors as the Python SDK's own exception types: a bad request as the type of the server's
status (`BadRequestError`, or llama.cpp's `InternalServerError`), naming the field at fault
(`.param`) where the server does, `AuthenticationError` for a wrong key, `NotFoundError` for an
unknown model, batch or file, and `RateLimitError` (with `Retry-After`) when the queue is full."""

import json
import urllib.request

import openai
import pytest

from conftest import LONG, make_client, needs, poll, user


BAD_FIELDS = [("temperature", -1), ("max_tokens", 0), ("max_tokens", "many"), ("max_completion_tokens", 0),
              ("top_logprobs", 50)]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("field, value", BAD_FIELDS)
def test_bad_requests_name_their_field(client, target, field, value, stream):
    needs(target, "errors_param")
    request = {"model": target["model"], "messages": user("hi"), "max_tokens": 2, "logprobs": True, field: value}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(stream=stream, **request)
    error = raised.value
    assert error.status_code == 400 and error.message
    assert (error.param, error.type) == (field, "invalid_request_error")


# The SDK's exception for each status a target refuses a bad request with (`invalid_status`).
STATUS_ERRORS = {400: openai.BadRequestError, 500: openai.InternalServerError}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_bad_request_is_the_error_of_its_status(client, target, stream):
    """A field of the wrong type, refused by every target: the SDK raises the exception of the
    status the target answers with (without `errors_param`, what the caller has to go by)."""
    status = target["invalid_status"]
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(stream=stream, model=target["model"], messages=user("hi"), max_tokens=2,
                                       temperature="hot")
    error = raised.value
    assert type(error) is STATUS_ERRORS[status] and error.status_code == status
    assert "temperature" in error.message


def test_a_wrong_key_is_an_authentication_error(target):
    needs(target, "auth")
    with make_client({**target, "api_key": "not-the-key"}) as wrong:
        with pytest.raises(openai.AuthenticationError) as raised:
            wrong.chat.completions.create(model=target["model"], messages=user("hi"), max_tokens=1)
        assert raised.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()


def test_an_unknown_model_is_not_found(client, target):
    needs(target, "model_not_found")
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-model", messages=user("hi"), max_tokens=1)
    if "errors_param" in target["features"]:
        assert raised.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_unknown_batches_and_files_are_not_found(client, target):
    needs(target, "batch")
    calls = [(client.batches.retrieve, "batch_nope"), (client.batches.cancel, "batch_nope"),
             (client.files.retrieve, "file-nope"), (client.files.content, "file-nope")]
    for call, unknown_id in calls:
        with pytest.raises(openai.NotFoundError):
            call(unknown_id)


def health(target):
    """webvlm serve's `/health`: its queue and counters."""
    with urllib.request.urlopen(target["base_url"].removesuffix("/v1") + "/health") as response:
        return json.load(response)


def test_a_full_queue_is_a_rate_limit_error(client, target):
    """While one generation runs, the next request is a 429 (webvlm serve with `--queue 0`)."""
    needs(target, "rate_limit")
    long = {"model": target["model"], "messages": user(LONG), "max_tokens": 400, "temperature": 0}
    with client.chat.completions.create(stream=True, **long) as running:
        next(iter(running))
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(model=target["model"], messages=user("hi"), max_tokens=1)
        assert raised.value.status_code == 429
        assert int(raised.value.response.headers["retry-after"]) >= 1
    # Closing the stream aborts the generation; the queue is free again.
    poll(lambda: health(target)["queue"], lambda q: q["running"] == 0 and q["waiting"] == 0)
    assert client.chat.completions.create(**{**long, "max_tokens": 1}).choices
