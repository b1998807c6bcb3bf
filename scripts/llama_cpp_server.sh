#!/usr/bin/env bash
# llama.cpp's OpenAI-compatible server, from `llama-cpp-python[server]` on PyPI, for the
# conformance suites (tests/sdk/, tests/browser/remote_serve.test.js): an independent server
# our clients are checked against. PyPI has only the source distribution, so this builds
# llama.cpp (CPU only, no multimodal library: ~4 minutes of two cores) into a virtualenv under
# $WEBVLM_CACHE/llama-cpp-venv-VERSION once, and prints its python. WEBVLM_CACHE defaults, here
# and in ./build.sh, to ${XDG_CACHE_HOME:-~/.cache}/webvlm: outside the clone, so a fresh clone
# reuses the build, and a new VERSION builds beside the old one. Idempotent; runs sharing the
# cache take turns (flock).
#   bash scripts/llama_cpp_server.sh      # then: PYTHON -m llama_cpp.server --model M.gguf ...
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="0.3.36"
CACHE="${WEBVLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/webvlm}"
# The python it prints is absolute (a relative WEBVLM_CACHE is the repository's).
case "$CACHE" in /*) ;; *) CACHE="$PWD/$CACHE" ;; esac
VENV="$CACHE/llama-cpp-venv-$VERSION"
PY="$VENV/bin/python"

mkdir -p "$CACHE"
exec 9>"$VENV.lock"
if command -v flock >/dev/null; then flock 9; fi

if [ -x "$PY" ] && "$PY" -c "import llama_cpp, llama_cpp.server, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
  echo "$PY"
  exit 0
fi
rm -rf "$VENV"
python3 -m venv "$VENV" >&2
# GGML_NATIVE=OFF: a portable build (CI machines differ); the multimodal (llava/mtmd) library,
# tests and examples are not needed by the server for text models.
CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
  "$PY" -m pip install --quiet --no-cache-dir "llama-cpp-python[server]==$VERSION" >&2
echo "$PY"
