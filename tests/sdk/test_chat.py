"""The Python SDK's chat completions against each target: a plain completion, the same request
streamed (its text and finish reason equal to the plain one's at temperature 0; with
`stream_options.include_usage`, a last chunk with its usage), the streaming helper's final completion, images as data URLs, and
`models.list` / `models.retrieve`."""

import openai
import pytest

from conftest import SHORT, delta_text, image_message, needs, streamed, user

MAX_TOKENS = 12


def request(target, messages=None):
    return {"model": target["model"], "messages": messages or user(SHORT),
            "max_tokens": MAX_TOKENS, "temperature": 0}


def check_completion(completion, target):
    assert completion.object == "chat.completion"
    assert completion.model == target["model"]
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == MAX_TOKENS


def check_stream_equals(chunks, completion):
    """A stream read to its end tells what the plain completion does."""
    assert chunks and all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert delta_text(chunks) == completion.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [completion.choices[0].finish_reason]


def test_plain_and_streamed_completions_agree(client, target):
    plain = client.chat.completions.create(**request(target))
    check_completion(plain, target)

    without_usage = streamed(client, **request(target))
    check_stream_equals(without_usage, plain)
    assert all(c.usage is None for c in without_usage)


def test_streams_end_with_usage_when_asked(client, target):
    needs(target, "stream_usage")
    plain = client.chat.completions.create(**request(target))
    chunks = streamed(client, **request(target), stream_options={"include_usage": True})
    check_stream_equals(chunks, plain)
    last = chunks[-1]
    assert last.choices == [], "the usage chunk comes last, without choices"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (plain.usage.prompt_tokens,
                                                                        plain.usage.completion_tokens)
    assert all(c.usage is None for c in chunks[:-1])


def test_the_stream_helper_accumulates_the_same_completion(client, target):
    plain = client.chat.completions.create(**request(target))
    with client.chat.completions.stream(**request(target)) as stream:
        deltas = "".join(event.delta for event in stream if event.type == "content.delta")
        if plain.choices[0].finish_reason == "length":
            # The helper refuses a cut-off answer, and carries it in the error.
            with pytest.raises(openai.LengthFinishReasonError) as raised:
                stream.get_final_completion()
            final = raised.value.completion
        else:
            final = stream.get_final_completion()
    assert deltas == plain.choices[0].message.content
    assert final.choices[0].message.content == plain.choices[0].message.content
    assert final.choices[0].finish_reason == plain.choices[0].finish_reason


def test_images_as_data_urls(client, target):
    needs(target, "vision")
    text_only = client.chat.completions.create(**request(target, user("What is this?")))
    with_image = request(target, image_message("What is this?"))
    plain = client.chat.completions.create(**with_image)
    check_completion(plain, target)
    assert plain.usage.prompt_tokens > text_only.usage.prompt_tokens, "the image's tokens count in the prompt"
    check_stream_equals(streamed(client, **with_image), plain)


def test_models_list_and_retrieve(client, target):
    models = client.models.list()
    assert target["model"] in [m.id for m in models.data]
    assert all(m.object == "model" and m.owned_by for m in models.data)
    if "model_created" in target["features"]:
        assert all(isinstance(m.created, int) for m in models.data)
    if "model_retrieve" in target["features"]:
        assert client.models.retrieve(target["model"]).id == target["model"]
