#!/usr/bin/env bash
# llama.cpp's OpenAI-compatible server, from `llama-cpp-python[server]` on PyPI, for the
# conformance suites (tests/sdk/, tests/browser/remote_serve.test.js): an independent server
# our clients are checked against. PyPI has only the source distribution, so this builds
# llama.cpp (CPU only, no multimodal library: ~4 minutes of two cores) into a virtualenv under
# ${WEBVLM_CACHE:-.cache}/llama-cpp-venv once, and prints its python. Idempotent.
#   bash scripts/llama_cpp_server.sh      # then: PYTHON -m llama_cpp.server --model M.gguf ...
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="0.3.36"
VENV="${WEBVLM_CACHE:-.cache}/llama-cpp-venv"
PY="$VENV/bin/python"

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
