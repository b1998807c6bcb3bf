#!/usr/bin/env bash
# webvlm's CPU engine in headless Chromium beside wllama (llama.cpp in wasm, npm
# @wllama/wllama) and webvlm's WebGPU engine on SwiftShader, in one run on the same GGUF files
# (tests/browser/bench_cpu.mjs): prefill and decode tokens/s on SmolLM2-135M Q4_1 and on the
# ≥ 1B Q4_K_M model of random weights that scripts/bench_cpu_vs_llama_cpp.sh makes (SmolLM2-1.7B's
# shapes; left out until that script has run once), and native llama.cpp's llama-bench on the
# same files where that script has built it. Let nothing else run meanwhile.
#
#   bash scripts/bench_browser_cpu.sh            # THREADS="1 2" PROMPT=256 DECODE=64
#
# Installs wllama once under $WEBVLM_CACHE/bench-npm; builds the wasm package if pkg/ has none.
set -euo pipefail
cd "$(dirname "$0")/.."

WLLAMA_VERSION="3.13.0"
CACHE="${WEBVLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/webvlm}"
case "$CACHE" in /*) ;; *) CACHE="$PWD/$CACHE" ;; esac
export WEBVLM_CACHE="$CACHE"
NPM="$CACHE/bench-npm"
WLLAMA="$NPM/node_modules/@wllama/wllama"
if [ "$(node -p "require('$WLLAMA/package.json').version" 2>/dev/null)" != "$WLLAMA_VERSION" ]; then
  mkdir -p "$NPM"
  npm install --prefix "$NPM" --no-audit --no-fund --loglevel=error "@wllama/wllama@$WLLAMA_VERSION" >&2
fi
[ -f pkg/webvlm_relaxed_bg.wasm ] || ./build.sh wasm >&2
(cd tests/browser && [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error)

models=("$(bash scripts/fetch_smollm2.sh | tail -1)")
BIG="$CACHE/bench-cpu/smollm2-1.7b-shape-Q4_K_M.gguf"
if [ -f "$BIG" ]; then models+=("$BIG"); else echo "$BIG missing: run scripts/bench_cpu_vs_llama_cpp.sh once" >&2; fi

native=()
LLAMA_BENCH="$CACHE/bench-cpu/llama-native-noamx-0.3.36/bin/llama-bench"
if [ -x "$LLAMA_BENCH" ]; then native=(--llama-bench "$LLAMA_BENCH"); else echo "$LLAMA_BENCH missing: native llama.cpp left out" >&2; fi

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(/usr/bin/chromium --version)" >&2
node tests/browser/bench_cpu.mjs --wllama "$WLLAMA/esm" --threads "${THREADS:-1 2}" \
  --prompt "${PROMPT:-256}" --decode "${DECODE:-64}" "${native[@]}" "${models[@]}"
