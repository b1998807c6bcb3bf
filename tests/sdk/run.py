#!/usr/bin/env python3
"""The official-SDK conformance suite's launcher: starts the servers under test once, runs the
official Python `openai` package (pytest, tests/sdk/test_*.py) and the official npm `openai`
package (node's test runner, tests/sdk/*.test.mjs) against them, stops the servers, prints
each runner's summary and exits non-zero if anything failed.

The servers reach the clients as `SDK_TARGETS`, a JSON list of
`{name, base_url, api_key, model, features}`; `features` says what a server offers (see
tests/sdk/README.md), and a test skips a target only for a feature that target does not list.

    python3 tests/sdk/run.py [--webvlm PATH] [--llama-cpp PYTHON] [--only python|node]

`--webvlm` is the `webvlm` binary (default: the debug build under $CARGO_TARGET_DIR or
target/). `--llama-cpp PYTHON` adds llama.cpp's server (`PYTHON -m llama_cpp.server`, from
`llama-cpp-python[server]` installed for PYTHON: `bash scripts/llama_cpp_server.sh` prints one)
on SmolLM2 as another target; it defaults to $LLAMA_CPP_PYTHON, as in tests/browser (set it
empty to leave llama.cpp out). The Python
clients run in a virtual environment, $WEBVLM_CACHE/sdk-venv-HASH (HASH: of
tests/sdk/requirements.txt and the python's version), made when missing; the npm package comes
from tests/browser/node_modules (`npm ci` there, as ./build.sh does). WEBVLM_CACHE (relative:
to the repository) defaults, as in ./build.sh and scripts/fetch_smollm2.sh, to
${XDG_CACHE_HOME:-~/.cache}/webvlm.
"""

import argparse
import fcntl
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "sdk"
# What a later run reuses (the venv, the model): outside the clone, as ./build.sh has it.
CACHE = ROOT / (os.environ.get("WEBVLM_CACHE")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "webvlm")
REQUIREMENTS = HERE / "requirements.txt"
NODE_OPENAI = ROOT / "tests" / "browser" / "node_modules" / "openai"
LOGS = ROOT / "target" / "sdk-test-output"
# Where scripts/fetch_smollm2.sh puts the model.
SMOLLM2 = CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_VLM = ROOT / "tests" / "fixtures" / "tiny_mistral3_tekken"
API_KEY = "sdk-suite-key"
STARTUP_SECONDS = 300

# What every webvlm serve target offers (README.md says which tests each feature gates): all
# but "vision", which needs a vision model.
WEBVLM_FEATURES = ["stream_usage", "logprobs", "logprobs_bytes", "json_object", "json_schema", "batch", "auth",
                   "errors_param", "model_not_found", "model_created", "model_retrieve", "rate_limit", "responses"]
# llama.cpp's server (llama-cpp-python 0.3.36; tests/browser/openai-servers.js's KINDS says the
# same): logprobs but with `bytes` null; `response_format` json_object (a `schema` beside it is
# its own extension) but no `json_schema` type (a 500); a wrong key is a 401; models without
# `created` and no GET /v1/models/{id} (a 404); no images, Batch API, usage in streams, queue
# limit or 404 for unknown models (it answers any name); a field of the wrong type is a 500
# whose `param` is null.
LLAMA_CPP_FEATURES = ["logprobs", "json_object", "auth"]


class Exited(SystemExit):
    """A server exited before it answered."""


class Server:
    """A server process; its stdout and stderr go to LOGS/<name>.log. Every server started is
    in `Server.started`, which main() stops at the end, whatever happened."""

    started = []

    def __init__(self, name, command, env=None):
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOGS / f"{name}.log"
        self.log_path.write_text("$ " + " ".join(map(str, command)) + "\n", encoding="utf-8")
        # Appending and line-buffered: the server's stderr and its copied stdout interleave.
        self.log = open(self.log_path, "a", encoding="utf-8", buffering=1)
        self.process = subprocess.Popen(
            [str(c) for c in command], cwd=ROOT, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1)
        self.copier = None
        Server.started.append(self)

    def first_line(self):
        """The first line the server prints on stdout; the rest goes on to the log."""
        line = self.process.stdout.readline()
        self.log.write(line)
        self.drain_stdout()
        return line

    def drain_stdout(self):
        """Copies what the server prints on stdout to the log from now on (a pipe nobody
        reads would block the server once full)."""
        def copy():
            for line in self.process.stdout:
                self.log.write(line)
        self.copier = threading.Thread(target=copy, daemon=True)
        self.copier.start()

    def wait_ready(self, url, api_key=None, ready=lambda body: True):
        """Polls `url` until it answers 200 with a body that `ready` accepts (bytes); fails if
        the process exits first (Exited, with the log's tail)."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Exited(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
                    if response.status == 200 and ready(response.read()):
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.25)
        raise SystemExit(f"{self.name} did not answer {url} in {STARTUP_SECONDS} s:\n{self.log_tail()}")

    def log_tail(self, lines=30):
        self.log.flush()
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.copier:
            self.copier.join(timeout=5)
        self.log.close()


def target(name, base, model, features, invalid_status, api_key=API_KEY):
    """A target as the clients read it from SDK_TARGETS; `invalid_status` is the HTTP status
    of its answer to a request field of the wrong type (OpenAI's is 400)."""
    return {"name": name, "base_url": f"{base}/v1", "api_key": api_key, "model": model, "features": features,
            "invalid_status": invalid_status}


def start_webvlm(binary, name, args, features):
    """`webvlm serve --port 0 ARGS` and its target: the address is the first line on stdout."""
    server = Server(name, [binary, "serve", "--port", "0", "--api-key", API_KEY, "--served-model-name", name, *args])
    line = server.first_line()
    match = re.search(r"http://(\S+?)/v1", line)
    if not match:
        raise SystemExit(f"{name} did not start: {line!r}\n{server.log_tail()}")
    base = f"http://{match.group(1)}"
    server.wait_ready(f"{base}/health")
    return target(name, base, name, WEBVLM_FEATURES + features, 400)


def webvlm_targets(binary):
    """SmolLM2 (a real small model) and the tiny VLM (images; tools: its Ministral 3 template
    takes them, SmolLM2's does not). Both with `--queue 0 --parallel 1`, so that
    one request in flight makes the next a 429 (the tests send one request at a time)."""
    common = ["--ctx", "512", "--queue", "0", "--parallel", "1"]
    smollm2 = start_webvlm(binary, "smollm2", ["--model", SMOLLM2, *common], [])
    tiny = start_webvlm(binary, "tiny-vlm",
                        ["--model", TINY_VLM / "model.gguf", "--mmproj", TINY_VLM / "mmproj.gguf", *common], ["vision", "tools"])
    return [smollm2, tiny]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lists_model(model):
    """Whether a `/v1/models` body lists `model`."""
    return lambda body: any(m.get("id") == model for m in json.loads(body).get("data", []))


def llama_cpp_server(python):
    """llama.cpp's server on SmolLM2, started with `python -m llama_cpp.server` (the python of
    scripts/llama_cpp_server.sh) with the flags of tests/browser/openai-servers.js: one thread
    each for prompts and generation (two spin-wait for seconds on a busy 2-core machine, and
    one keeps temperature 0 deterministic), and `--interrupt_requests False` (a new request
    does not end the one running; a closed connection is what aborts). It cannot take port 0:
    a free port is picked, and should another process take it first the server is started
    again on another. Ready once `/v1/models` lists the alias (it has no /health). Its target."""
    model = "smollm2"
    for attempt in range(1, 4):
        port = free_port()
        server = Server("llama-cpp", [
            python, "-m", "llama_cpp.server", "--model", SMOLLM2, "--model_alias", model, "--n_ctx", "512",
            "--host", "127.0.0.1", "--port", str(port), "--api_key", API_KEY, "--interrupt_requests", "False",
            "--n_threads", "1", "--n_threads_batch", "1"], env={"PYTHONUNBUFFERED": "1"})
        server.drain_stdout()
        base = f"http://127.0.0.1:{port}"
        try:
            server.wait_ready(f"{base}/v1/models", API_KEY, lists_model(model))
        except Exited:
            if attempt < 3 and "address already in use" in server.log_tail().lower():
                continue
            raise
        return target("llama-cpp", base, model, LLAMA_CPP_FEATURES, 500)


def venv_python():
    """The python of $WEBVLM_CACHE/sdk-venv-HASH, made from requirements.txt when missing: the
    directory is keyed by the requirements and the python's version, so a changed
    requirements.txt makes a new one and clones with different ones do not take turns
    reinstalling. Runs sharing the cache take turns making it (flock)."""
    key = REQUIREMENTS.read_bytes() + f"\npython {sys.version_info[0]}.{sys.version_info[1]}\n".encode()
    want = hashlib.sha256(key).hexdigest()
    venv = CACHE / f"sdk-venv-{want[:16]}"
    python = venv / "bin" / "python"
    stamp = venv / "requirements.sha256"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"sdk-venv-{want[:16]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
            return python
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", REQUIREMENTS],
                       check=True)
        stamp.write_text(want + "\n")
    return python


def run_clients(name, command, env, summary):
    """Runs one client suite, echoing its output; returns (ok, its summary lines)."""
    print(f"\n=== {name}: {' '.join(map(str, command))}", flush=True)
    lines = []
    with subprocess.Popen([str(c) for c in command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                lines.append(line.rstrip("\n"))
        except BaseException:
            process.kill()  # a TERM or ^C: the clients stop too, then the servers
            raise
    return process.returncode == 0, summary(lines)


def pytest_summary(lines):
    """pytest's last line: `N passed, M skipped in 12.3s`."""
    return [next((l.strip("= ") for l in reversed(lines) if re.search(r"\b(passed|failed|error|no tests ran)\b", l)),
                 "no pytest summary")]


NODE_COUNT = re.compile(r"^\S+ (tests|pass|fail|cancelled|skipped|todo) \d+$")


def node_summary(lines):
    """node's spec reporter's counts (`ℹ tests 9`, `ℹ pass 9`, ...) on one line."""
    return [", ".join(l.split(" ", 1)[1] for l in lines if NODE_COUNT.match(l)) or "no node summary"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    parser.add_argument("--webvlm", default=target_dir / "debug" / "webvlm", type=Path,
                        help="the webvlm binary (default: the debug build)")
    parser.add_argument("--llama-cpp", metavar="PYTHON", default=os.environ.get("LLAMA_CPP_PYTHON") or None,
                        help="also test llama.cpp's server, run by this python (default: $LLAMA_CPP_PYTHON)")
    parser.add_argument("--only", choices=["python", "node"], help="run one client's tests only")
    args = parser.parse_args()
    for path, how in [(args.webvlm, "cargo build --bin webvlm"), (SMOLLM2, "bash scripts/fetch_smollm2.sh"),
                      (NODE_OPENAI, "cd tests/browser && npm ci")]:
        if not Path(path).exists():
            raise SystemExit(f"{path} is missing: {how}")
    python = venv_python()
    # A TERM (a CI step cancelled, timeout(1)) stops the servers too, through the finally below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    try:
        started = time.monotonic()
        targets = webvlm_targets(args.webvlm.resolve())
        if args.llama_cpp:
            targets.append(llama_cpp_server(args.llama_cpp))
        print(f"servers up in {time.monotonic() - started:.1f} s: "
              + ", ".join(f"{t['name']} {t['base_url']}" for t in targets), flush=True)
        env = dict(os.environ, SDK_TARGETS=json.dumps(targets))
        results = []
        if args.only in (None, "python"):
            command = [python, "-m", "pytest", "-p", "no:cacheprovider", "-ra", HERE]
            results.append(("pytest", *run_clients("pytest", command, env, pytest_summary)))
        if args.only in (None, "node"):
            # One file at a time: the tests send one request at a time (the servers' queue is 0).
            command = ["node", "--test", "--test-reporter=spec", "--test-concurrency=1", *sorted(HERE.glob("*.test.mjs"))]
            results.append(("node", *run_clients("node", command, env, node_summary)))
    finally:
        for server in Server.started:
            server.stop()
    print()
    for name, ok, summary in results:
        print(f"{name}: {'; '.join(summary)}{'' if ok else '  (FAILED)'}")
    if not all(ok for _, ok, _ in results):
        print(f"server logs: {LOGS}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
