"""The Python SDK's Responses API (`client.responses`) against `webvlm serve`: a text response,
the same streamed (typed events, sequence numbers, the deltas put together equal to the final
object), kept and retrieved and deleted; an agent loop through the SDK's own stream helper
(`client.responses.stream`, which checks the events' items as it accumulates them) with
`tool_choice="required"`, the tool's results sent back by `previous_response_id` (the prompt
cache reusing the stored conversation) and again as the whole conversation of items; refused
requests naming the Responses field."""

import json

import pytest

from test_tools import WEATHER
from conftest import needs

# Responses' tools are flat: the function's fields beside `type`.
TOOL = {"type": "function", **WEATHER["function"]}


def test_a_text_response_streamed_stored_and_deleted(client, target):
    needs(target, "responses")
    import openai

    request = {"model": target["model"], "instructions": "Be brief.", "input": "Say hello.", "max_output_tokens": 8,
               "temperature": 0}
    response = client.responses.create(**request)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete")
    assert response.output_text
    assert response.usage.input_tokens > 0 and 0 < response.usage.output_tokens <= 8

    events = list(client.responses.create(stream=True, **request))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert events[-1].type in ("response.completed", "response.incomplete")
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == response.output_text

    stored = client.responses.retrieve(response.id)
    assert stored.id == response.id and stored.output_text == response.output_text
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_an_agent_loop_through_responses(client, target):
    needs(target, "responses", "tools")
    ask = [{"role": "user", "content": "What's the weather in Paris?"}]
    # `seed` is webvlm's (and vLLM's) extra: not among the SDK's Responses parameters.
    request = {"model": target["model"], "input": ask, "tools": [TOOL], "tool_choice": "required", "temperature": 1.0,
               "extra_body": {"seed": 7}, "max_output_tokens": 120}
    with client.responses.stream(**request) as stream:
        for _ in stream:
            pass
        streamed = stream.get_final_response()
    calls = [item for item in streamed.output if item.type == "function_call"]
    assert calls, streamed
    for call in calls:
        arguments = json.loads(call.arguments)
        assert call.name == "get_weather" and call.call_id
        assert isinstance(arguments["city"], str) and len(arguments["city"]) <= 8 and arguments["unit"] in ("c", "f")

    plain = client.responses.create(**request)
    plain_calls = [item for item in plain.output if item.type == "function_call"]
    assert [(c.name, c.arguments) for c in plain_calls] == [(c.name, c.arguments) for c in calls]

    results = [{"type": "function_call_output", "call_id": c.call_id, "output": json.dumps({"temperature": 18})}
               for c in plain_calls]
    follow = {"model": target["model"], "tools": [TOOL], "tool_choice": "none", "temperature": 0, "max_output_tokens": 8}
    answer = client.responses.create(previous_response_id=plain.id, input=results, **follow)
    assert answer.previous_response_id == plain.id
    assert answer.output and all(item.type == "message" for item in answer.output)
    assert answer.usage.input_tokens_details.cached_tokens >= plain.usage.input_tokens

    # The whole conversation as items (the SDK's own output objects sent back) is the same prompt.
    again = client.responses.create(input=ask + plain.output + results, **follow)
    assert again.usage.input_tokens == answer.usage.input_tokens
    assert again.output_text == answer.output_text


def test_refused_responses_requests_name_the_field(client, target):
    needs(target, "responses", "errors_param")
    import openai

    cases = [
        ({"input": "hi", "previous_response_id": "resp_missing"}, "previous_response_id"),
        ({"input": [{"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "nope", "output": "1"}]},
         "input[1].call_id"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "reasoning": {"effort": "high"}}, "reasoning"),
    ]
    for request, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(model=target["model"], **request)
        assert err.value.body["param"] == param, (request, err.value.body)
