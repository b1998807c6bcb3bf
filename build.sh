#!/usr/bin/env bash
# webvlm build driver.
#   ./build.sh serve   build the wasm package and serve the demo on http://127.0.0.1:8080
#   ./build.sh test    run the whole test suite (native GPU tests on the system adapter,
#                      wasm32 build check); CI runs exactly this
#   ./build.sh wasm    build the wasm package only
set -euo pipefail
cd "$(dirname "$0")"

cmd="${1:-serve}"
port="${PORT:-8080}"

# The wasm-bindgen CLI must match the crate's resolved wasm-bindgen version exactly.
wasm_bindgen_version() {
  cargo metadata --format-version 1 --filter-platform wasm32-unknown-unknown 2>/dev/null |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="wasm-bindgen"))'
}

build_wasm() {
  rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
  cargo build --lib --release --target wasm32-unknown-unknown
  local want
  want="$(wasm_bindgen_version)"
  if ! wasm-bindgen --version 2>/dev/null | grep -q " $want\$"; then
    cargo install wasm-bindgen-cli --version "$want"
  fi
  rm -rf www/pkg
  wasm-bindgen --target web --out-dir www/pkg target/wasm32-unknown-unknown/release/webvlm.wasm
}

case "$cmd" in
  wasm)
    build_wasm
    ;;
  serve)
    build_wasm
    echo "serving www/ on http://127.0.0.1:$port"
    exec python3 -m http.server "$port" --bind 127.0.0.1 --directory www
    ;;
  test)
    # Mesa's Vulkan loader complains without a runtime dir; give it a private one.
    export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
    bash scripts/fetch_smollm2.sh
    cargo check --lib --target wasm32-unknown-unknown
    cargo test --no-fail-fast
    ;;
  *)
    echo "usage: $0 [serve|test|wasm]" >&2
    exit 2
    ;;
esac
