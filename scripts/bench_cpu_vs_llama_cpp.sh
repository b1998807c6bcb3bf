#!/usr/bin/env bash
# webvlm's CPU backend beside llama.cpp's CPU backend built for this CPU (GGML_NATIVE=ON), in
# one run on the same GGUF files and thread counts: prefill of 256 tokens and decode tokens/s
# after them (llama-bench's pp256, and tg64 at depth 256, against `webvlm bench --backend
# cpu`), on SmolLM2-135M Q4_1
# and on a ≥ 1B model of random weights (SmolLM2-1.7B's shapes, quantized to Q4_K_M by
# llama.cpp's own llama-quantize: scripts/make_bench_model.py); then the fast mode's logits
# error beside llama.cpp's on SmolLM2 (scripts/fast_mode_error.py, with the native library).
# Let nothing else run meanwhile: the figures are compared as ratios within this run.
#
# Builds, once, under $WEBVLM_CACHE/bench-cpu (~6 GB with the models): llama.cpp from the
# llama-cpp-python sdist whose portable build CI's conformance server uses (scripts/
# llama_cpp_server.sh: its venv supplies numpy and llama_cpp). Needs gcc, g++ and PyPI.
#   bash scripts/bench_cpu_vs_llama_cpp.sh            # THREADS="1 2" PROMPT=256 DECODE=64
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="0.3.36"
CACHE="${WEBVLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/webvlm}"
case "$CACHE" in /*) ;; *) CACHE="$PWD/$CACHE" ;; esac
WORK="$CACHE/bench-cpu"
THREADS="${THREADS:-1 2}"
PROMPT="${PROMPT:-256}"
DECODE="${DECODE:-64}"
mkdir -p "$WORK"

PY="$(bash scripts/llama_cpp_server.sh)"
SMOL="$(bash scripts/fetch_smollm2.sh | tail -1)"
cargo build --release --bin webvlm >&2
WEBVLM="$PWD/target/release/webvlm"

# llama.cpp for this CPU: llama-bench and llama-quantize, and the shared libraries
# llama-cpp-python loads through LLAMA_CPP_LIB_PATH.
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
# AMX tiles left out: -march=native enables them on CPUs that have them, but a kernel (or a VM)
# that does not grant their state kills llama-bench with SIGILL.
BUILD="$WORK/llama-native-noamx-$VERSION"
if [ ! -x "$BUILD/bin/llama-bench" ] || [ ! -x "$BUILD/bin/llama-quantize" ]; then
  if [ ! -d "$SRC" ]; then
    "$PY" -m pip download --quiet --no-deps --no-binary llama-cpp-python -d "$WORK" "llama-cpp-python==$VERSION" >&2
    tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
  fi
  "$PY" -m pip install --quiet cmake ninja >&2
  CMAKE="$(dirname "$PY")/cmake"
  PATH="$(dirname "$PY"):$PATH" "$CMAKE" -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON >&2
  PATH="$(dirname "$PY"):$PATH" "$CMAKE" --build "$BUILD" --target llama-bench llama-quantize -j"$(nproc)" >&2
fi

BIG="$WORK/smollm2-1.7b-shape-Q4_K_M.gguf"
if [ ! -f "$BIG" ]; then
  PYTHONPATH="$SRC/gguf-py" "$PY" scripts/make_bench_model.py "$SMOL" "$WORK/smollm2-1.7b-shape-F16.gguf"
  "$BUILD/bin/llama-quantize" "$WORK/smollm2-1.7b-shape-F16.gguf" "$BIG" Q4_K_M >&2
  rm -f "$WORK/smollm2-1.7b-shape-F16.gguf"
fi

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
for model in "$SMOL" "$BIG"; do
  for t in $THREADS; do
    # Decode after the prompt, as webvlm's bench decodes: -d puts the prompt's tokens in the
    # cache first (llama-bench's tg alone starts from an empty one).
    for test in "-p $PROMPT -n 0" "-p 0 -n $DECODE -d $PROMPT"; do
      # shellcheck disable=SC2086
      "$BUILD/bin/llama-bench" -m "$model" -t "$t" $test -r 3 -o jsonl \
        | sed "s/^{/{\"engine\": \"llama.cpp\", \"path\": \"${model//\//\\/}\", /" >>"$RESULTS"
    done
    "$WEBVLM" bench --backend cpu --threads "$t" --model "$model" --no-kernels --no-vision --no-breakdown \
      --prompt-tokens "$PROMPT" --decode-tokens "$DECODE" --json-only \
      | sed "s/^{/{\"engine\": \"webvlm\", \"path\": \"${model//\//\\/}\", \"threads\": $t, /" >>"$RESULTS"
  done
done

"$PY" - "$RESULTS" "$PROMPT" <<'EOF'
import json, sys
from pathlib import Path
rows = [json.loads(line) for line in open(sys.argv[1])]
prompt = sys.argv[2]
fig, machine = {}, {}
for r in rows:
    name, t = Path(r["path"]).name, r.get("threads", r.get("n_threads"))
    if r["engine"] == "llama.cpp":
        fig[name, t, "llama.cpp", "prefill" if r["n_prompt"] > 0 else "decode"] = r["avg_ts"]
    elif r["kind"] == "model":
        fig[name, t, "webvlm", "prefill"] = r["prefill_tokens_per_s"]
        fig[name, t, "webvlm", "decode"] = r["decode_tokens_per_s"]
        fig[name, t, "webvlm", "of read"] = r["decode_fraction_of_read"]
    elif r["kind"] in ("read", "fma", "dispatch_overhead"):
        machine[t, r["kind"]] = r.get("gbps") or r.get("gflops") or r.get("us_per_dispatch")
models = list(dict.fromkeys(k[0] for k in fig))
threads = sorted({k[1] for k in fig})
print(f"{'model':<36} threads | prefill {prompt}: webvlm  llama.cpp  ratio | decode: webvlm  llama.cpp  ratio | decode/read")
for name in models:
    for t in threads:
        f = lambda engine, kind: fig.get((name, t, engine, kind), float("nan"))
        p, lp, d, ld = f("webvlm", "prefill"), f("llama.cpp", "prefill"), f("webvlm", "decode"), f("llama.cpp", "decode")
        print(f"{name:<36} {t:>7} | {p:>17.1f} {lp:>10.1f} {p / lp:>5.2f}x | {d:>14.2f} {ld:>10.2f} {d / ld:>5.2f}x |"
              f" {f('webvlm', 'of read'):>10.0%}")
for t in threads:
    print(f"{t} threads: read {machine.get((t, 'read'), 0):.1f} GB/s, FMA peak {machine.get((t, 'fma'), 0):.0f} GFLOP/s,"
          f" empty op {machine.get((t, 'dispatch_overhead'), 0):.2f} us")
EOF

echo "fast mode's error against the f32 reference, webvlm beside llama.cpp (native build), 2 threads:"
LLAMA_CPP_LIB_PATH="$BUILD/bin" "$PY" scripts/fast_mode_error.py "$WEBVLM" "$SMOL" 2
