#!/usr/bin/env bash
# One command for a machine with a real GPU: builds webvlm (release), runs `webvlm bench` at
# Ministral 3 3B shapes in the GPU kernel geometry (the roofline kernels, matvec GB/s per
# weight type, the synthetic 3B model's prefill/decode tokens/s with the launch geometry of a
# decode step and a prefill chunk, and the vision encoder on 512x512 and 1024x1024 images with
# its launch geometry), and writes a Markdown report.
#
#   scripts/gpu_bench.sh [OUT_DIR]      (default: gpu-bench-<date>/)
#
# Writes OUT_DIR/bench.jsonl (the raw JSON Lines), OUT_DIR/bench.log (the readable summary)
# and OUT_DIR/report.md (the tables). $BENCH_FLAGS replaces the run's size flags (e.g.
# "--quick" for a smoke run); $WEBVLM_BIN uses a built binary instead of a release build.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-gpu-bench-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
bin="${WEBVLM_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --bin webvlm
  bin=target/release/webvlm
fi

# shellcheck disable=SC2086
"$bin" bench --geometry gpu --synthetic --no-model ${BENCH_FLAGS:---vision --reps 5 --prompt-tokens 512 --decode-tokens 64} \
  >"$out/bench.jsonl" 2>"$out/bench.log"

python3 - "$out/bench.jsonl" >"$out/report.md" <<'PY'
import json, sys

lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def of(kind):
    return [l for l in lines if l.get("kind") == kind]
def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print()
def f(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"

a = of("adapter")[0]
print(f"# webvlm on {a['adapter']} [{a['backend']}]\n")
print(f"shader-f16: {a['f16']}, subgroups: {a['subgroups']}, kernel geometry: {a.get('geometry', '?')}\n")

print("## Roofline\n")
rows = [[k, f(l.get("gbps")), f(l.get("gflops")), f(l.get("us_per_dispatch"))]
        for k in ("copy", "read", "fma", "dispatch_overhead") for l in of(k)]
table(["kernel", "GB/s", "GFLOP/s", "us/dispatch"], rows)

print("## Matvec (3B shapes)\n")
rows = [[l["type"], l["shape"], f(l["gbps"]), f(100 * l["fraction_of_copy"], 0) + "%", f(l.get("cached_gbps"))]
        for l in of("matvec")]
table(["type", "shape", "GB/s", "of copy", "in-cache GB/s"], rows)

print("## Model (synthetic Ministral 3 3B)\n")
rows = [[l["model"], f(l["prefill_tokens_per_s"], 1), f(l["decode_tokens_per_s"], 1), f(l["decode_weight_gbps"]),
         f(100 * l["decode_fraction_of_copy"], 0) + "%", l["dispatches_per_token"], l.get("dispatches_per_layer"),
         l["submits_per_token"], l.get("host_waits_per_token")] for l in of("model")]
table(["model", "prefill tok/s", "decode tok/s", "decode GB/s", "of copy", "dispatches/token", "per layer",
       "submits/token", "host waits/token"], rows)

for l in of("launch"):
    print(f"## Launch geometry of a decode step ({l['model']}, {l['geometry']} shape)\n")
    print(f"Weights fetched per token: {l['weight_bytes_fetched_per_token'] / 2**20:.1f} MiB of "
          f"{l['model_weight_bytes'] / 2**20:.1f} MiB; activations re-read: {l['activation_bytes_per_token'] / 2**20:.2f} MiB\n")
    rows = [[x["family"], x["dispatches"], x["workgroups_per_dispatch"], x["invocations_per_workgroup"] or "-",
             x["weight_bytes_per_workgroup"] or "-"] for x in l["families"]]
    table(["family", "dispatches", "workgroups each", "invocations", "weight bytes per workgroup"], rows)

for kind, what in (("prefill_launch", "a prefill chunk"), ("vision_launch", "an image")):
    for l in of(kind):
        print(f"## Launch geometry of {what} ({l['rows']} rows, {l['geometry']} shape)\n")
        print(f"{l['dispatches']} dispatches; weights fetched {l['weight_bytes_fetched'] / 2**20:.1f} MiB "
              f"({l['weight_bytes_fetched'] / 2**20 / l['rows']:.2f} MiB per row)\n")
        rows = [[x["family"], x["dispatches"], x["workgroups_per_dispatch"], x["invocations_per_workgroup"] or "-"]
                for x in l["families"]]
        table(["family", "dispatches", "workgroups each", "invocations"], rows)

print("## Vision encoder (3B shapes)\n")
rows = [[l["image"], l["image_tokens"], f(l["ms"], 1), f(l["gflops"], 1), f(100 * l["fraction_of_fma"], 0) + "%"]
        for l in of("vision")]
table(["image", "image tokens", "ms", "GFLOP/s", "of FMA"], rows)
PY
echo "wrote $out/report.md"
