"""Qwen3.5 chat-template reference renders from transformers.

Writes tests/fixtures/tokenizer/chat_qwen35.json: Qwen3.5's chat template (the tiny qwen35
fixtures carry no `tokenizer.chat_template`; this is llama.cpp's
`models/templates/Qwen3.5-4B.jinja`, the template of Qwen/Qwen3.5-4B) and, per case, the
messages, `add_generation_prompt`, the extra template variables (`chat_template_kwargs`:
`enable_thinking`, `tools`) and the text transformers' `render_jinja_template` (what
`apply_chat_template(..., tokenize=False)` runs) produces. Cases: thinking on (default) and
off, images, multi-turn with an earlier reply's think block, tools.

Run: QWEN35_TEMPLATE=path/to/Qwen3.5-4B.jinja /work/scratch/qwen/venv/bin/python scripts/make_qwen35_chat_refs.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, write_json  # noqa: E402

from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

TEMPLATE = Path(
    os.environ.get(
        "QWEN35_TEMPLATE",
        "/work/scratch/qwen/src/llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/Qwen3.5-4B.jinja",
    )
)
OUT = FIXTURES / "tokenizer" / "chat_qwen35.json"

# OpenAI's key order (not sorted): the template's `tojson` keeps it.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}

SYSTEM_USER = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
IMAGES = [
    {
        "role": "user",
        "content": [
            {"type": "image"},
            {"type": "text", "text": "Compare this image"},
            {"type": "image"},
            {"type": "text", "text": " with that one."},
        ],
    }
]
MULTI_TURN = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?"},
    {"role": "user", "content": "Count to 3."},
    {"role": "assistant", "content": "1, 2, 3."},
    {"role": "user", "content": "Again, backwards."},
]

CASES = [
    ("thinking_default", SYSTEM_USER, True, {}),
    ("thinking_on", SYSTEM_USER, True, {"enable_thinking": True}),
    ("thinking_off", SYSTEM_USER, True, {"enable_thinking": False}),
    ("images_thinking_off", IMAGES, True, {"enable_thinking": False}),
    ("images_thinking_on", IMAGES, True, {}),
    ("multi_turn", MULTI_TURN, True, {}),
    ("multi_turn_off", MULTI_TURN, True, {"enable_thinking": False}),
    ("no_generation_prompt", MULTI_TURN[:2], False, {}),
    ("tools", SYSTEM_USER, True, {"tools": [WEATHER_TOOL]}),
]


def main() -> None:
    template = TEMPLATE.read_text()
    cases = []
    for name, messages, agp, kwargs in CASES:
        extra = dict(kwargs)
        tools = extra.pop("tools", None)
        rendered = render_jinja_template(
            conversations=[messages], tools=tools, chat_template=template, add_generation_prompt=agp, **extra
        )
        text = rendered[0][0] if isinstance(rendered, tuple) else rendered[0]
        cases.append({"name": name, "messages": messages, "add_generation_prompt": agp, "kwargs": kwargs, "text": text})
    write_json(
        OUT,
        {
            "source": "llama.cpp models/templates/Qwen3.5-4B.jinja; texts from transformers render_jinja_template",
            "chat_template": template,
            "cases": cases,
        },
    )
    print(f"{OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
