"""The Python SDK's function calling, an agent loop as its quick-start writes it: a request
with `tools` and `tool_choice="required"` ends in `tool_calls` (the named function, arguments
that parse and hold the required parameter), the streamed deltas put together are the same
calls, and the assistant's calls with the tool's result sent back (the SDK's own message
object, `content` None) get an answer in `content` with `tool_choice="none"`."""

import json

from conftest import needs, streamed, user

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}


def streamed_calls(chunks):
    """The calls of a stream's `delta.tool_calls`, argument fragments joined per index."""
    calls = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": delta.id, "name": delta.function.name, "arguments": ""})
            call["arguments"] += delta.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


def test_agent_loop_with_a_required_call(client, target):
    needs(target, "tools")
    messages = user("What's the weather in Paris?")
    request = {"model": target["model"], "messages": messages, "tools": [WEATHER], "tool_choice": "required",
               "temperature": 1.0, "seed": 7, "max_tokens": 120}
    completion = client.chat.completions.create(**request)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls and all(c.type == "function" and c.function.name == "get_weather" and c.id for c in calls)
    for call in calls:
        arguments = json.loads(call.function.arguments)
        assert isinstance(arguments["city"], str) and len(arguments["city"]) <= 8
        assert arguments["unit"] in ("c", "f")

    chunks = streamed(client, **request)
    assert [(c["name"], c["arguments"]) for c in streamed_calls(chunks)] == [
        (c.function.name, c.function.arguments) for c in calls
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    messages.append(choice.message)
    messages += [{"role": "tool", "tool_call_id": c.id, "content": json.dumps({"temperature": 18})} for c in calls]
    answer = client.chat.completions.create(model=target["model"], messages=messages, tools=[WEATHER], tool_choice="none",
                                            temperature=0, max_tokens=8)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.tool_calls is None
    assert isinstance(answer.choices[0].message.content, str)


def test_a_tool_message_must_answer_a_call(client, target):
    needs(target, "tools", "errors_param")
    import openai
    import pytest

    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=target["model"], max_tokens=4, messages=[
            {"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "nope", "content": "18 C"}])
    assert err.value.body["param"] == "messages[1].tool_call_id"
