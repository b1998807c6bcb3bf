"""Shared by the Python half of the SDK conformance suite: the servers under test (from
`SDK_TARGETS`, set by run.py), a test run once per target (`target` fixture), an official
`openai.OpenAI` client for it, and small helpers. A test calls `needs(target, feature)` to
skip a target that does not offer what it tests."""

import base64
import json
import os
import time
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "tests" / "fixtures" / "tiny_mistral3_tekken" / "img_84x56.png"


def load_targets():
    raw = os.environ.get("SDK_TARGETS")
    if not raw:
        raise pytest.UsageError("SDK_TARGETS is not set: run the suite with python3 tests/sdk/run.py")
    return json.loads(raw)


def pytest_generate_tests(metafunc):
    if "target" in metafunc.fixturenames:
        targets = load_targets()
        metafunc.parametrize("target", targets, ids=[t["name"] for t in targets])


def needs(target, *features):
    missing = [f for f in features if f not in target["features"]]
    if missing:
        pytest.skip(f"{target['name']} does not offer {', '.join(missing)}")


def make_client(target, **options):
    """The official client, changed only in `base_url` (and the key). No retries: a 429 or
    a 5xx must show, not be hidden behind a retry."""
    options = {"max_retries": 0, "timeout": 120.0, **options}
    return openai.OpenAI(base_url=target["base_url"], api_key=target["api_key"], **options)


@pytest.fixture
def client(target):
    with make_client(target) as client:
        yield client


# The prompts most tests send: few, so that a slow target prefills each once and its prompt
# cache answers the rest (SmolLM2 on a software GPU takes seconds for a new prompt). The npm
# tests (targets.mjs) send the same ones.
SHORT = "Name three colors."
GREETING = "Say hello."
LONG = "Count from 1 to 1000, one number a line."


def user(text):
    return [{"role": "user", "content": text}]


def image_message(text):
    """A user message with the tiny VLM fixture's PNG as a data URL."""
    url = "data:image/png;base64," + base64.b64encode(IMAGE.read_bytes()).decode()
    return [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}]


def streamed(client, **request):
    """A streamed request's chunks, read to the end."""
    with client.chat.completions.create(stream=True, **request) as stream:
        return list(stream)


def delta_text(chunks):
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def poll(what, done, seconds=180):
    """Calls `what()` until `done(result)`; returns that result."""
    deadline = time.monotonic() + seconds
    while True:
        result = what()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after {seconds} s: {result}")
        time.sleep(0.05)
