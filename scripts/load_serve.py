#!/usr/bin/env python3
"""Load on `webvlm serve`: many concurrent streaming clients against one server.

Starts `webvlm serve --port 0` on a model (SmolLM2 by default), then N clients (32) share
R streamed chat requests (300): short varied prompts, a few tokens each, with
`stream_options.include_usage`. A client answered 429 waits the `Retry-After` it was given
and sends the same request again (`--on-429 drop`: gives that request up instead). Every
~0.5 s the server's resident memory (VmRSS of /proc/PID/status) and its queue (`GET /health`)
are sampled.

It prints what the run shows: requests completed, 429 answers, anything else (an error: any
other status, a stream without `[DONE]` or with an error event, a dropped connection, a
request over `--request-timeout`); tokens generated and throughput; p50/p95/p99 of the time
to first token (request sent to first content delta, as the client sees it), of the
inter-token latency (each request's mean gap between its content deltas), of the queue wait
(the server's `usage.timings.queue_seconds`: admission to the engine taking the job up), and
of the whole request; the queue depth seen; the server's RSS at start (model loaded), after
warm-up (the first sample once `--warmup` requests, default one per client, have completed),
at its highest and at the end, and the drift from warm-up to the end. The engine's prompt cache
keeps saved prompt prefixes in GPU memory up to a budget (`/health`'s `prompt_cache`); on a
CPU adapter such as lavapipe that memory is part of the RSS, so the drift is also given net of
the growth of the saved prefixes ("unexplained"): that is the figure a leak would show in.

With `webvlm serve --parallel`, the KV pool's rows and the sequences it preempted
(`/health`'s `slots`) are printed too.

`--cancel-every N` makes every Nth request hang up after its first token (a client that goes
away): those count as cancelled, and with `webvlm serve --parallel` the run fails when any
slot is still busy once every client has ended (`/health`'s `slots`). `--llama-server PATH`
runs llama.cpp's `llama-server` on the same model instead (the arguments after `--` go to it,
e.g. `--parallel 8 --threads 2 --ctx-size 16384`), the same clients and figures.

A readable summary goes to stderr, one JSON line (`"kind": "serve_load"`) to stdout. The exit
status is 1 when any request ended otherwise than completed or refused with 429, when the
server counted a failed request, or when the unexplained RSS drift after warm-up is over
`--max-drift-pct`.

Run from the repository root (Python 3.11, standard library only; Linux, for /proc):

    cargo build --release --bin webvlm
    bash scripts/fetch_smollm2.sh
    python3 scripts/load_serve.py
    python3 scripts/load_serve.py -- --queue 4          # after --: serve's own flags
    # lavapipe (BENCHMARKS.md): one-token prefill steps and a few tokens per request
    python3 scripts/load_serve.py --min-tokens 4 --max-tokens 8 -- --chunk 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_binary() -> Path:
    """The release `webvlm` of the cargo target folder, else the debug one."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    if not target.is_absolute():
        target = REPO / target
    release = target / "release" / "webvlm"
    return release if release.exists() else target / "debug" / "webvlm"


def default_model() -> Path:
    """Where scripts/fetch_smollm2.sh puts SmolLM2: $WEBVLM_CACHE (relative: to the repository),
    by default ${XDG_CACHE_HOME:-~/.cache}/webvlm."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "webvlm"
    cache = os.environ.get("WEBVLM_CACHE") or user
    return REPO / cache / "models" / SMOLLM2


# ---------------------------------------------------------------------------------------
# Requests

SUBJECTS = [
    "the moon", "rivers", "bread", "volcanoes", "bees", "chess", "rain", "glass", "trains",
    "music", "the ocean", "maps", "winter", "bicycles", "clocks", "owls", "salt", "bridges",
]
TEMPLATES = [
    "Tell me one fact about {s}.",
    "Describe {s} in one sentence.",
    "Write a two-line poem about {s}.",
    "Why do people like {s}?",
    "Give a title for a story about {s}.",
    "Name {n} words related to {s}.",
    "Explain {s} to a child.",
    "What is the opposite of {s}?",
    "Is {s} older than {t}? Answer briefly.",
]
SYSTEMS = [None, None, "You answer in as few words as possible.", "You are a cheerful teacher."]


def make_request(index: int, seed: int, min_tokens: int, max_tokens: int) -> dict:
    """Request `index` of the run: a short varied chat, streamed with its usage."""
    rng = random.Random(seed * 1_000_003 + index)
    subject, other = rng.sample(SUBJECTS, 2)
    text = rng.choice(TEMPLATES).format(s=subject, t=other, n=rng.randint(2, 5))
    messages = [{"role": "user", "content": text}]
    system = rng.choice(SYSTEMS)
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return {
        "messages": messages,
        "max_tokens": rng.randint(min_tokens, max_tokens),
        "temperature": rng.choice([0, 0.7, 1.0]),
        "seed": index,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# ---------------------------------------------------------------------------------------
# HTTP/1.1 over asyncio streams (one connection per request, `Connection: close`)


class ProtocolError(Exception):
    """A response this client cannot read: the server broke HTTP or SSE."""


async def send(host: str, port: int, method: str, path: str, body: bytes = b""):
    """Sends a request on a new connection; returns (reader, writer, status, headers)."""
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    status_line = await reader.readline()
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        writer.close()
        raise ProtocolError(f"status line {status_line!r}")
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return reader, writer, int(parts[1]), headers


async def body_chunks(reader: asyncio.StreamReader, headers: dict):
    """The response body as it comes: chunked, by Content-Length, or to the end."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise ProtocolError("the connection closed inside a chunked body")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        yield await reader.read()


async def read_body(reader: asyncio.StreamReader, headers: dict) -> bytes:
    return b"".join([chunk async for chunk in body_chunks(reader, headers)])


async def sse_data(reader: asyncio.StreamReader, headers: dict):
    """The `data` of each server-sent event, as it comes."""
    pending = ""
    async for chunk in body_chunks(reader, headers):
        pending += chunk.decode("utf-8").replace("\r\n", "\n")
        while "\n\n" in pending:
            event, pending = pending.split("\n\n", 1)
            lines = [line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")]
            if lines:
                yield "\n".join(lines)
    if pending.strip():
        raise ProtocolError(f"the stream ended inside an event: {pending[:200]!r}")


async def get_json(host: str, port: int, path: str) -> dict:
    reader, writer, status, headers = await send(host, port, "GET", path)
    try:
        body = await read_body(reader, headers)
    finally:
        writer.close()
    if status != 200:
        raise ProtocolError(f"GET {path}: {status} {body[:200]!r}")
    return json.loads(body)


# ---------------------------------------------------------------------------------------
# One request, the clients, the sampler


@dataclass
class Outcome:
    """How one of the run's requests ended, with its figures (seconds)."""

    index: int
    status: str  # "ok", "refused" (429, --on-429 drop), "cancelled" (--cancel-every) or "error"
    refusals: int = 0  # 429 answers it got before its end
    error: str | None = None
    ttft: float | None = None  # the admitted attempt sent -> its first content delta
    itl: float | None = None  # mean gap between its content deltas after the first
    latency: float | None = None  # the admitted attempt sent -> [DONE]
    latency_with_retries: float | None = None  # first attempt sent -> [DONE]
    queue_seconds: float | None = None  # the server's usage.timings.queue_seconds
    server_ttft: float | None = None  # the server's usage.timings.time_to_first_token
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the server's prompt cache reused
    finish_reason: str | None = None


class Refused(Exception):
    def __init__(self, retry_after: float):
        self.retry_after = retry_after


class Cancelled(Exception):
    """The client hung up on purpose (`--cancel-every`)."""


async def attempt(host: str, port: int, request: dict, outcome: Outcome, webvlm: bool, hang_up: bool) -> None:
    """Sends the request once and reads its stream into `outcome`; raises `Refused` on 429,
    `Cancelled` after the first content delta when `hang_up`. `webvlm`: the server must give
    usage.timings.queue_seconds (llama-server has no such field)."""
    sent = time.perf_counter()
    body = json.dumps(request).encode()
    reader, writer, status, headers = await send(host, port, "POST", "/v1/chat/completions", body)
    try:
        if status == 429:
            await read_body(reader, headers)
            raise Refused(float(headers.get("retry-after", "1")))
        if status != 200:
            body = await read_body(reader, headers)
            raise ProtocolError(f"status {status}: {body[:300].decode('utf-8', 'replace')}")
        if not headers.get("content-type", "").startswith("text/event-stream"):
            raise ProtocolError(f"a stream was asked for, got {headers.get('content-type')!r}")
        done = False
        deltas: list[float] = []  # arrival times of the content deltas
        async for data in sse_data(reader, headers):
            if done:
                raise ProtocolError(f"an event after [DONE]: {data[:200]!r}")
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                raise ProtocolError(f"an error event: {json.dumps(chunk['error'])[:300]}")
            for choice in chunk.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    deltas.append(time.perf_counter())
                    if outcome.ttft is None:
                        outcome.ttft = deltas[0] - sent
                    if hang_up:
                        raise Cancelled()
                if choice.get("finish_reason"):
                    outcome.finish_reason = choice["finish_reason"]
            if chunk.get("usage"):
                usage = chunk["usage"]
                outcome.completion_tokens = usage["completion_tokens"]
                outcome.prompt_tokens = usage["prompt_tokens"]
                outcome.cached_tokens = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
                timings = usage.get("timings", {})
                outcome.queue_seconds = timings.get("queue_seconds")
                outcome.server_ttft = timings.get("time_to_first_token")
        if not done:
            raise ProtocolError("the stream ended without [DONE]")
        if outcome.finish_reason is None:
            raise ProtocolError("no chunk gave a finish_reason")
        if outcome.queue_seconds is None and webvlm:
            raise ProtocolError("the usage chunk has no usage.timings.queue_seconds")
        if not outcome.completion_tokens:
            raise ProtocolError("no usage chunk (stream_options.include_usage)")
        outcome.latency = time.perf_counter() - sent
        if len(deltas) > 1:
            outcome.itl = (deltas[-1] - deltas[0]) / (len(deltas) - 1)
    finally:
        writer.close()


class Run:
    """The shared state of one load run."""

    def __init__(self, args, host: str, port: int, pid: int, command: list[str], log_name: str):
        self.args, self.host, self.port, self.pid = args, host, port, pid
        self.command, self.log_name = command, log_name
        self.next_index = 0
        self.outcomes: list[Outcome] = []
        self.completed = 0
        self.samples: list[dict] = []  # t, rss_kib, completed, waiting, running, cache_bytes
        self.health_errors = 0
        self.finished = asyncio.Event()
        self.started = time.perf_counter()
        self.load_average = [os.getloadavg()[0]]  # the machine's 1-minute load: start, end

    def take(self) -> int | None:
        if self.next_index >= self.args.requests:
            return None
        self.next_index += 1
        return self.next_index - 1

    async def request(self, index: int) -> Outcome:
        args = self.args
        request = make_request(index, args.seed, args.min_tokens, args.max_tokens)
        outcome = Outcome(index=index, status="error")
        first_sent = time.perf_counter()
        hang_up = args.cancel_every > 0 and index % args.cancel_every == args.cancel_every - 1
        webvlm = args.llama_server is None
        while True:
            try:
                await asyncio.wait_for(attempt(self.host, self.port, request, outcome, webvlm, hang_up), args.request_timeout)
            except Cancelled:
                outcome.status = "cancelled"
                return outcome
            except Refused as refused:
                outcome.refusals += 1
                await asyncio.sleep(refused.retry_after)
                if args.on_429 == "drop":
                    outcome.status = "refused"
                    return outcome
                outcome.ttft = outcome.finish_reason = None
                continue
            except TimeoutError:
                outcome.error = f"no end after {args.request_timeout} s"
            except (OSError, ProtocolError, ValueError, KeyError, asyncio.IncompleteReadError) as e:
                outcome.error = f"{type(e).__name__}: {e}"
            else:
                outcome.status = "ok"
                outcome.latency_with_retries = time.perf_counter() - first_sent
            return outcome

    async def client(self) -> None:
        while (index := self.take()) is not None:
            outcome = await self.request(index)
            self.outcomes.append(outcome)
            if outcome.status == "ok":
                self.completed += 1

    async def sample(self) -> dict:
        """Records the server's RSS, the requests completed, its queue and prompt cache; returns
        its `/health` ({} if it did not answer)."""
        sample = {
            "t": round(time.perf_counter() - self.started, 3),
            "rss_kib": rss_kib(self.pid),
            "completed": self.completed,
        }
        health = {}
        try:
            health = await asyncio.wait_for(get_json(self.host, self.port, "/health"), 5)
            if self.args.llama_server is not None:
                # llama-server: its slots (GET /slots), in /health's shape; no queue figures.
                slots = await asyncio.wait_for(get_json(self.host, self.port, "/slots"), 5)
                health["slots"] = {"total": len(slots), "busy": sum(bool(s.get("is_processing")) for s in slots)}
                self.samples.append(sample)
                return health
            queue = health["queue"]
            sample.update(waiting=queue["waiting"], running=queue["running"])
            sample.update(cache_bytes=health["prompt_cache"]["saved_bytes"])
        except (OSError, ProtocolError, ValueError, KeyError, TimeoutError):
            self.health_errors += 1
        self.samples.append(sample)
        return health

    async def sampler(self) -> None:
        """Samples every --sample-interval seconds until the run is finished."""
        while not self.finished.is_set():
            await self.sample()
            try:
                await asyncio.wait_for(self.finished.wait(), self.args.sample_interval)
            except TimeoutError:
                pass


def rss_kib(pid: int) -> int | None:
    """The resident memory of process `pid` in KiB; None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return None


# ---------------------------------------------------------------------------------------
# The server


async def start_server(args, log):
    """`webvlm serve --port 0` (or `--llama-server`) as a child process: (process, host, port)
    once it listens."""
    if args.llama_server is not None:
        return await start_llama_server(args, log)
    command = [str(args.binary), "serve", "--port", "0", "--model", str(args.model), *args.serve_args]
    pipe = asyncio.subprocess
    process = await asyncio.create_subprocess_exec(*command, stdin=pipe.DEVNULL, stdout=pipe.PIPE, stderr=log)
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), args.start_timeout)).decode()
    except TimeoutError:
        line = ""
    # "webvlm serve: MODEL on http://HOST:PORT/v1"
    address = line.partition("http://")[2].partition("/")[0]
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        await stop_server(process)
        log.flush()
        message = f"load_serve: the server did not start ({line.strip()!r}); {log.name}:\n{tail(log.name)}"
        raise SystemExit(message)
    return process, host.strip("[]"), int(port), command


async def start_llama_server(args, log):
    """llama.cpp's `llama-server` on a free port, once its /health answers 200."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(args.llama_server), "-m", str(args.model), "--host", "127.0.0.1", "--port", str(port), *args.serve_args]
    pipe = asyncio.subprocess
    process = await asyncio.create_subprocess_exec(*command, stdin=pipe.DEVNULL, stdout=log, stderr=log)
    deadline = time.perf_counter() + args.start_timeout
    while time.perf_counter() < deadline and process.returncode is None:
        try:
            await asyncio.wait_for(get_json("127.0.0.1", port, "/health"), 5)
            return process, "127.0.0.1", port, command
        except (OSError, ProtocolError, ValueError, TimeoutError):
            await asyncio.sleep(0.5)
    await stop_server(process)
    log.flush()
    raise SystemExit(f"load_serve: llama-server did not start; {log.name}:\n{tail(log.name)}")


async def stop_server(process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


def tail(path: str, lines: int = 20) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


# ---------------------------------------------------------------------------------------
# Figures


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile, interpolated between the closest ranks (numpy's default)."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    low = int(k)
    high = min(low + 1, len(xs) - 1)
    return xs[low] + (xs[high] - xs[low]) * (k - low)


def spread(values: list[float]) -> dict:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values, default=None),
        "n": len(values),
    }


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def growth_pct(kib: int | None, base: int | None, explained: int = 0) -> float | None:
    """How much `kib` is over `base` in percent of `base`, less `explained` KiB."""
    return None if kib is None or not base else round((kib - base - explained) / base * 100, 2)


def summarize(run: Run, wall: float, rss_start: int, rss_end: int | None, health: dict) -> dict:
    """The run's figures (the JSON line)."""
    args = run.args
    outcomes = sorted(run.outcomes, key=lambda o: o.index)
    ok = [o for o in outcomes if o.status == "ok"]
    errors = [o for o in outcomes if o.status == "error"]
    tokens = sum(o.completion_tokens for o in ok)
    rss = [r for r in [rss_start, *(s["rss_kib"] for s in run.samples)] if r is not None]
    warmup = min(args.warmup, run.completed)
    warm_samples = [s for s in run.samples if s["completed"] >= warmup]
    warm = warm_samples[0] if warm_samples else {}
    rss_warm, cache_warm = warm.get("rss_kib"), warm.get("cache_bytes", 0) // 1024
    after_warmup = [s["rss_kib"] for s in warm_samples]
    max_after_warmup = max((r for r in after_warmup if r is not None), default=None)
    cache = health.get("prompt_cache") or {}
    cache_end = cache.get("saved_bytes", 0) // 1024
    waiting = [s["waiting"] for s in run.samples if "waiting" in s]
    return {
        "kind": "serve_load",
        "command": " ".join(run.command),
        "clients": args.clients,
        "requests": args.requests,
        "max_tokens": [args.min_tokens, args.max_tokens],
        "on_429": args.on_429,
        "ok": len(ok),
        "refused": sum(o.status == "refused" for o in outcomes),
        "cancelled": sum(o.status == "cancelled" for o in outcomes),
        "slots_busy_at_end": (health.get("slots") or {}).get("busy"),
        "preemptions": (health.get("slots") or {}).get("preemptions"),
        "kv_pool_tokens": (health.get("slots") or {}).get("kv_pool_tokens"),
        "answers_429": sum(o.refusals for o in outcomes),
        "requests_refused_at_least_once": sum(o.refusals > 0 for o in outcomes),
        "errors": len(errors),
        "error_samples": [f"request {o.index}: {o.error}" for o in errors[:5]],
        "not_run": args.requests - len(outcomes),
        "tokens": tokens,
        "prompt_tokens": sum(o.prompt_tokens for o in ok),
        "cached_prompt_tokens": sum(o.cached_tokens for o in ok),
        "wall_seconds": round(wall, 2),
        "tokens_per_second": round(tokens / wall, 3),
        "requests_per_second": round(len(ok) / wall, 4),
        "ttft_seconds": spread([o.ttft for o in ok if o.ttft is not None]),
        "inter_token_seconds": spread([o.itl for o in ok if o.itl is not None]),
        "queue_seconds": spread([o.queue_seconds for o in ok if o.queue_seconds is not None]),
        "server_ttft_seconds": spread([o.server_ttft for o in ok if o.server_ttft is not None]),
        "latency_seconds": spread([o.latency for o in ok]),
        "latency_with_retries_seconds": spread([o.latency_with_retries for o in ok]),
        "queue_depth": {
            "capacity": (health.get("queue") or {}).get("capacity"),
            "max_waiting": max(waiting, default=None),
            "mean_waiting": round(sum(waiting) / len(waiting), 2) if waiting else None,
        },
        "rss_mib": {
            "start": mib(rss_start),
            "after_warmup": mib(rss_warm),
            "max": mib(max(rss)),
            "max_after_warmup": mib(max_after_warmup),
            "end": mib(rss_end),
            "drift_pct": growth_pct(rss_end, rss_warm),
            "max_drift_pct": growth_pct(max_after_warmup, rss_warm),
            "unexplained_drift_pct": growth_pct(rss_end, rss_warm, max(0, cache_end - cache_warm)),
        },
        "prompt_cache_mib": {
            "after_warmup": mib(cache_warm),
            "end": mib(cache_end),
            "budget": mib(cache.get("budget_bytes", 0) // 1024),
            "saved_prefixes_end": cache.get("saved_prefixes"),
        },
        "warmup_requests": warmup,
        "samples": len(run.samples),
        "health_errors": run.health_errors,
        "server_counters": health.get("requests"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_start": run.load_average[0],
            "load_average_end": run.load_average[-1],
        },
        "server_log": run.log_name,
    }


def report(s: dict) -> str:
    """The summary as text."""

    def seconds(name: str, title: str) -> str:
        f = s[name]
        if not f["n"]:
            return f"{title}: none"
        return f"{title}: p50 {f['p50']:.3f} s, p95 {f['p95']:.3f} s, p99 {f['p99']:.3f} s, max {f['max']:.3f} s"

    if s["on_429"] == "retry":
        after_429 = "each waited Retry-After and sent the same request again"
    else:
        after_429 = "each waited Retry-After and gave that request up"
    rss, cache, queue, machine = s["rss_mib"], s["prompt_cache_mib"], s["queue_depth"], s["machine"]
    low, high = s["max_tokens"]
    lines = [
        f"a server under load: {s['clients']} streaming clients, {s['requests']} requests, "
        f"max_tokens {low}-{high}",
        f"  server: {s['command']}",
        f"requests: {s['ok']} completed, {s['refused']} refused (429), {s['cancelled']} cancelled "
        f"(the client hung up), {s['errors']} other errors, {s['not_run']} not run; "
        f"slots busy at the end: {s['slots_busy_at_end']}",
        *([f"  KV pool: {s['kv_pool_tokens']} rows, {s['preemptions']} sequences preempted (and recomputed)"]
          if s["preemptions"] is not None else []),
        f"  429 answers: {s['answers_429']} to {s['requests_refused_at_least_once']} requests ({after_429})",
        *[f"  error: {e}" for e in s["error_samples"]],
        f"prompt tokens: {s['prompt_tokens']}, {s['cached_prompt_tokens']} of them from the prompt cache",
        f"tokens: {s['tokens']} generated in {s['wall_seconds']:.1f} s = "
        f"{s['tokens_per_second']:.2f} tokens/s, {s['requests_per_second']:.3f} requests/s",
        seconds("ttft_seconds", "time to first token (client)"),
        seconds("inter_token_seconds", "inter-token latency (client, each request's mean gap)"),
        seconds("queue_seconds", "queue wait (server, usage.timings.queue_seconds)"),
        seconds("server_ttft_seconds", "time to first token (server, after the wait)"),
        seconds("latency_seconds", "latency (admitted attempt)"),
        seconds("latency_with_retries_seconds", "latency (first attempt, 429 waits included)"),
        f"queue: capacity {queue['capacity']}, at most {queue['max_waiting']} waiting, "
        f"{queue['mean_waiting']} on average ({s['samples']} samples)",
        f"server RSS: start {rss['start']} MiB, "
        f"after {s['warmup_requests']} requests {rss['after_warmup']} MiB, max {rss['max']} MiB, "
        f"end {rss['end']} MiB: drift {rss['drift_pct']}% (highest after warm-up {rss['max_drift_pct']}%)",
        f"prompt cache: saved prefixes {cache['after_warmup']} MiB after warm-up, "
        f"{cache['end']} MiB at the end ({cache['saved_prefixes_end']} prefixes, "
        f"budget {cache['budget']} MiB): "
        f"RSS drift net of them {rss['unexplained_drift_pct']}%",
        f"server counters: {json.dumps(s['server_counters'])}; server log: {s['server_log']}",
        f"machine: {machine['cpus']} CPUs, load average {machine['load_average_start']:.1f} at the start, "
        f"{machine['load_average_end']:.1f} at the end",
    ]
    return "\n".join(lines)


def failures(s: dict, args) -> list[str]:
    """Why the run failed, if it did."""
    found = []
    if s["rss_mib"]["end"] is None:
        found.append("the server exited during the run")
    if s["errors"] or s["not_run"]:
        found.append(f"{s['errors']} requests ended in an error other than 429, {s['not_run']} did not run")
    failed = (s["server_counters"] or {}).get("failed")
    if failed:
        found.append(f"the server counted {failed} failed requests")
    if s["slots_busy_at_end"]:
        found.append(f"{s['slots_busy_at_end']} slots still busy after every client ended")
    drift = s["rss_mib"]["unexplained_drift_pct"]
    if drift is not None and drift > args.max_drift_pct:
        limit = args.max_drift_pct
        found.append(f"the server's RSS grew {drift}% after warm-up beyond the prompt cache (limit {limit}%)")
    return found


# ---------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Arguments after -- go to `webvlm serve`."
    )
    add = parser.add_argument
    add("--binary", type=Path, help="webvlm binary [$CARGO_TARGET_DIR/release/webvlm, else debug]")
    add("--model", type=Path, help=f"GGUF model [$WEBVLM_CACHE/models/{SMOLLM2}]")
    add("--clients", type=int, default=32, help="concurrent clients [32]")
    add("--requests", type=int, default=300, help="requests in all [300]")
    add("--min-tokens", type=int, default=16, help="smallest max_tokens of a request [16]")
    add("--max-tokens", type=int, default=32, help="largest max_tokens of a request [32]")
    add(
        "--on-429",
        choices=["retry", "drop"],
        default="retry",
        help="after waiting Retry-After: send the request again, or give it up [retry]",
    )
    add("--warmup", type=int, help="completed requests before the warm-up RSS [--clients]")
    add("--sample-interval", type=float, default=0.5, help="seconds between RSS and /health samples [0.5]")
    add("--request-timeout", type=float, default=600, help="seconds before an unfinished request fails [600]")
    add("--start-timeout", type=float, default=600, help="seconds for the server to load the model [600]")
    add("--max-drift-pct", type=float, default=10, help="unexplained RSS growth that fails the run [10]")
    add("--seed", type=int, default=0, help="seed of the prompts and their sampling [0]")
    add("--cancel-every", type=int, default=0, help="every Nth request hangs up after its first token [0: none]")
    add("--llama-server", type=Path, help="run llama.cpp's llama-server instead (args after -- go to it)")
    add("--samples-out", type=Path, help="write the summary, samples and per-request figures here (JSON)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.serve_args = argv[split + 1 :]
    args.binary = args.binary or default_binary()
    args.model = args.model or default_model()
    args.warmup = args.clients if args.warmup is None else args.warmup
    if not 1 <= args.min_tokens <= args.max_tokens:
        parser.error("need 1 <= --min-tokens <= --max-tokens")
    for path, make in [
        (args.binary if args.llama_server is None else args.llama_server, "cargo build --release --bin webvlm"),
        (args.model, "bash scripts/fetch_smollm2.sh"),
    ]:
        if not path.exists():
            parser.error(f"{path} does not exist (make it: {make})")
    return args


async def main() -> int:
    args = parse_args()
    log = tempfile.NamedTemporaryFile("w", prefix="webvlm-serve-load-", suffix=".log", delete=False)
    process, host, port, command = await start_server(args, log)
    try:
        run = Run(args, host, port, process.pid, command, log.name)
        rss_start = rss_kib(process.pid)
        sampler = asyncio.create_task(run.sampler())
        await asyncio.gather(*(run.client() for _ in range(args.clients)))
        wall = time.perf_counter() - run.started
        run.load_average.append(os.getloadavg()[0])
        run.finished.set()
        await sampler
        health = await run.sample()  # the end: also the warm-up point of a run shorter than it
        # A slot a client hung up on is freed at the server's next step: give it a moment.
        for _ in range(10):
            if not (health.get("slots") or {}).get("busy"):
                break
            await asyncio.sleep(0.5)
            health = await run.sample()
        rss_end = run.samples[-1]["rss_kib"]
    finally:
        await stop_server(process)
        log.close()
    summary = summarize(run, wall, rss_start, rss_end, health)
    if args.samples_out:
        requests = [asdict(o) for o in sorted(run.outcomes, key=lambda o: o.index)]
        details = {"summary": summary, "samples": run.samples, "requests": requests}
        args.samples_out.write_text(json.dumps(details, indent=1) + "\n")
    print(report(summary), file=sys.stderr)
    print(json.dumps(summary), flush=True)
    failed = failures(summary, args)
    for failure in failed:
        print(f"load_serve: FAILED: {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
