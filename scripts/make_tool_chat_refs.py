"""Tool-calling chat-template reference renders from transformers, one template per call syntax.

Writes tests/fixtures/tokenizer/chat_tools.json: per template (the published templates of the
families webvlm reads calls from, as llama.cpp's `models/templates/` keeps them, and the
Ministral 3 template of the tiny tekken fixture's GGUF), the template source, its BOS/EOS
strings and cases: a conversation with tools, an assistant call, its result and a follow-up
question (and, where the template allows several calls in a turn, two calls and their two
results), rendered by transformers' `render_jinja_template` (what
`apply_chat_template(messages, tools=..., tokenize=False)` runs). The messages are stored
twice: as transformers gets them (a call's `arguments` a dict, as its documentation passes
them) and in OpenAI's wire shape (`arguments` a JSON string), which webvlm's test renders.

Run: /work/pyref-tools/bin/python scripts/make_tool_chat_refs.py
(a venv with `pip install transformers jinja2 gguf`; LLAMA_CPP_TEMPLATES overrides where the
llama.cpp templates are: by default the llama-cpp-python 0.3.36 sdist that
scripts/bench_cpu_vs_llama_cpp.sh unpacks under $WEBVLM_CACHE/bench-cpu.)
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, write_json  # noqa: E402

from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

CACHE = Path(os.environ.get("WEBVLM_CACHE", Path.home() / ".cache" / "webvlm"))
TEMPLATES = Path(
    os.environ.get(
        "LLAMA_CPP_TEMPLATES",
        CACHE / "bench-cpu" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp" / "models" / "templates",
    )
)
OUT = FIXTURES / "tokenizer" / "chat_tools.json"

# OpenAI's key order (not sorted): the templates' `tojson` keeps it.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "days": {"type": "integer", "description": "Days of forecast"},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a time zone",
            "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
        },
    },
]


def call(id_: str, name: str, arguments: dict) -> dict:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


ONE_CALL = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What's the weather in Zürich?"},
    {"role": "assistant", "content": "", "tool_calls": [call("a1b2c3d4e", "get_weather", {"city": "Zürich", "days": 2})]},
    {"role": "tool", "tool_call_id": "a1b2c3d4e", "content": '{"temperature": 18, "sky": "clear"}'},
    {"role": "assistant", "content": "It is 18 °C and clear in Zürich."},
    {"role": "user", "content": "And in Tokyo?"},
]
TWO_CALLS = [
    {"role": "user", "content": "Weather and time in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            call("f9e8d7c6b", "get_weather", {"city": "Paris"}),
            call("Z0y1X2w3V", "get_time", {"zone": "Europe/Paris"}),
        ],
    },
    {"role": "tool", "tool_call_id": "f9e8d7c6b", "content": "sunny, 21 C"},
    {"role": "tool", "tool_call_id": "Z0y1X2w3V", "content": "14:05"},
]

# (name, template file or "gguf:<fixture>", bos, eos, template variables, parallel calls allowed)
TEMPLATES_USED = [
    ("qwen35", "Qwen3.5-4B.jinja", "", "<|im_end|>", {}, True),
    ("hermes_qwen25", "Qwen-Qwen2.5-7B-Instruct.jinja", "", "<|im_end|>", {}, True),
    ("mistral_nemo_v3", "mistralai-Mistral-Nemo-Instruct-2407.jinja", "<s>", "</s>", {}, True),
    ("mistral_small_32_v11", "Mistral-Small-3.2-24B-Instruct-2506.jinja", "<s>", "</s>", {}, True),
    ("ministral3_v13", "gguf:tiny_mistral3_tekken", "<s>", "</s>", {}, True),
    ("llama32", "meta-llama-Llama-3.2-3B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>", {"date_string": "26 Nov 2026"}, False),
    ("llama32_vision", "json:tiny_mllama_a", "<|begin_of_text|>", "<|eot_id|>", {"date_string": "26 Nov 2026"}, False),
]


def template_source(where: str) -> str:
    if where.startswith("gguf:"):
        from gguf import GGUFReader

        reader = GGUFReader(FIXTURES / where[5:] / "model.gguf")
        field = reader.fields["tokenizer.chat_template"]
        return bytes(field.parts[field.data[0]]).decode()
    if where.startswith("json:"):
        return json.loads((FIXTURES / where[5:] / "tokenizer_config.json").read_text())["chat_template"]
    return (TEMPLATES / where).read_text()


def wire(messages: list[dict]) -> list[dict]:
    """OpenAI's shape of `messages`: each call's arguments as JSON text, and a turn of calls
    only with `content: null` (the templates get an empty string: Ministral 3's raises on
    None, as it would in transformers)."""
    out = copy.deepcopy(messages)
    for m in out:
        for c in m.get("tool_calls", []):
            c["function"]["arguments"] = json.dumps(c["function"]["arguments"], ensure_ascii=False)
        if m.get("tool_calls") and m["content"] == "":
            m["content"] = None
    return out


def main() -> None:
    families = []
    for name, where, bos, eos, kwargs, parallel in TEMPLATES_USED:
        template = template_source(where)
        cases = []
        for case, messages in [("one_call", ONE_CALL), ("two_calls", TWO_CALLS)][: 2 if parallel else 1]:
            rendered = render_jinja_template(
                conversations=[messages],
                tools=TOOLS,
                chat_template=template,
                add_generation_prompt=True,
                bos_token=bos,
                eos_token=eos,
                **kwargs,
            )
            text = rendered[0][0] if isinstance(rendered, tuple) else rendered[0]
            cases.append({"name": case, "messages": wire(messages), "text": text})
        families.append(
            {"name": name, "source": where, "bos": bos, "eos": eos, "kwargs": kwargs, "chat_template": template, "cases": cases}
        )
        print(f"{name}: {len(cases)} cases")
    write_json(OUT, {"tools": TOOLS, "templates": families})
    print(OUT)


if __name__ == "__main__":
    main()
