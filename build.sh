#!/usr/bin/env bash
# webvlm build driver.
#   ./build.sh serve     build the wasm package and serve the demo on http://127.0.0.1:8080
#   ./build.sh test      run the whole test suite: native GPU tests on the system adapter, the
#                        wasm package build, browser tests in headless Chromium; CI runs this.
#                        Every part runs even when an earlier one failed; each prints
#                        `== phase NAME: 123 s (ok|FAILED)`, and a table of them all with the
#                        total closes the run, before the list of what FAILED
#   ./build.sh wasm      build the npm package only (pkg/, copied to www/pkg/ for the demo; the
#                        demo's vendored libraries in www/vendor/ and its offline list)
#   ./build.sh browser   build the wasm package and run the browser tests only
#                        (node --test; extra arguments go to node, e.g. a test file)
#   ./build.sh lint      rustfmt check, scripts/import_cycles.py, and clippy with warnings as
#                        errors, native and wasm32
#   ./build.sh sdk       the official-SDK conformance suite (tests/sdk/): the Python and npm
#                        `openai` packages against `webvlm serve`, and llama.cpp's server when
#                        LLAMA_CPP_PYTHON is set (extra arguments go to tests/sdk/run.py, e.g.
#                        --only python)
#   ./build.sh wasm-test Rust tests in the browser (tests/wasm_browser.rs: wasm-bindgen-test
#                        in headless Chromium through chromedriver; extra arguments go to
#                        the test binary, e.g. a test name filter)
# Environment: WASM_OPT=0 skips wasm-opt; WASM_OPT_FLAGS (default -O1); PORT for serve;
# CONNECT_SRC for serve: origins the page may also connect to under its Content-Security-Policy
# (a remote server for the demo's "Remote server" model, e.g. CONNECT_SRC=https://vlm.example.com).
# WEBVLM_CACHE: what a later run or another clone reuses, kept outside the clone: the real models
# and tokenizers the tests read (scripts/fetch_smollm2.sh, scripts/fetch_qwen_tokenizer.sh),
# llama.cpp's server (scripts/llama_cpp_server.sh: llama-cpp-venv-VERSION), wasm-bindgen-cli
# (wasm-bindgen-cli-VERSION-lean), the SDK suite's virtualenv (sdk-venv-HASH) and wasm-opt's
# output (wasm-opt/). Default ${XDG_CACHE_HOME:-~/.cache}/webvlm; exported, absolute, to every
# command build.sh runs. The Rust tests run by hand look there too (tests/common/cache.rs).
set -euo pipefail
cd "$(dirname "$0")"

WEBVLM_CACHE="${WEBVLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/webvlm}"
case "$WEBVLM_CACHE" in /*) ;; *) WEBVLM_CACHE="$PWD/$WEBVLM_CACHE" ;; esac
export WEBVLM_CACHE

cmd="${1:-serve}"
port="${PORT:-8080}"
browser_dir=tests/browser

# The wasm-bindgen CLI must match the crate's resolved wasm-bindgen version exactly.
wasm_bindgen_version() {
  cargo metadata --format-version 1 --filter-platform wasm32-unknown-unknown 2>/dev/null |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="wasm-bindgen"))'
}

# npm packages for the browser tests and wasm-opt (binaryen), from the committed lockfile.
# Reinstalled only when the lockfile changed since the last install.
npm_deps() {
  if ! command -v npm >/dev/null; then
    echo "npm not found: install Node.js >= 20 (bash .ci/run does)" >&2
    return 1
  fi
  if [ ! -f "$browser_dir/node_modules/.package-lock.json" ] ||
     [ "$browser_dir/package-lock.json" -nt "$browser_dir/node_modules/.package-lock.json" ]; then
    (cd "$browser_dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

size_line() { # file -> "N bytes (gzip -9: M)"
  echo "$(stat -c %s "$1") bytes (gzip -9: $(gzip -9c "$1" | wc -c))"
}

# wasm-bindgen and wasm-bindgen-test-runner (both from wasm-bindgen-cli) at that version, on
# PATH: those built into $WEBVLM_CACHE/wasm-bindgen-cli-VERSION-lean (once per version, unless
# PATH already has that version). Lean: without its default TLS stack (rustls and ring; the
# test runner only talks to a local WebDriver over http) and unoptimised: 68 s to build on 2
# cores against 186 s for the default, while binding a 9 MB module takes 4.6 s against 1.0 s.
wasm_bindgen_cli() {
  local want root
  want="$(wasm_bindgen_version)"
  root="$WEBVLM_CACHE/wasm-bindgen-cli-$want-lean"
  [ ! -x "$root/bin/wasm-bindgen" ] || export PATH="$root/bin:$PATH"
  if ! wasm-bindgen --version 2>/dev/null | grep -q " $want\$" ||
     ! wasm-bindgen-test-runner --version 2>/dev/null | grep -q " $want\$"; then
    CARGO_PROFILE_RELEASE_OPT_LEVEL=0 cargo install --root "$root" wasm-bindgen-cli --version "$want" --no-default-features
    export PATH="$root/bin:$PATH"
  fi
}

# The wasm package holds four builds of the same code, which the engine's realm picks between
# (js/backend.js): webvlm_bg.wasm with SIMD128 (every current browser); webvlm_relaxed_bg.wasm
# with SIMD128 and relaxed SIMD (the CPU backend's integer dot products and relaxed FMA), where
# feature detection finds it; and the same two with shared memory, webvlm_threads_bg.wasm and
# webvlm_threads_relaxed_bg.wasm, for a CPU backend on more than one thread (its pool's
# workers are Web Workers on that memory).
# The builds of a pair export the same functions, so one wasm-bindgen glue loads either
# (webvlm.js; the threaded pair's webvlm_threads.js, whose memory is imported and shared); the
# build checks that. Only webvlm's own code uses relaxed SIMD, so the relaxed build of a pair
# passes the flag to webvlm alone (`cargo rustc`): both share the dependencies, compiled once
# with SIMD128, and the second recompiles webvlm and links (so each run compiles webvlm four
# times, even unchanged: the flags take turns in one target dir).
# The threaded builds' standard library must be rebuilt with atomics, which only a nightly
# toolchain does (`-Z build-std`): the pinned one below, for these artifacts alone, in their
# own target dir (`target/wasm-threads`), while the single-thread pair builds.
wasm_simd128_flags="-C target-feature=+simd128"
wasm_relaxed_flags="-C target-feature=+simd128,+relaxed-simd"
wasm_threads_toolchain=nightly-2026-05-20
wasm_threads_flags="-C target-feature=+atomics,+bulk-memory,+simd128 -C link-arg=--shared-memory
  -C link-arg=--import-memory -C link-arg=--max-memory=4294967296 -C link-arg=--export=__wasm_init_tls
  -C link-arg=--export=__tls_size -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base"
build_wasm() {
  rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
  rustup toolchain list | grep -q "^$wasm_threads_toolchain" ||
    rustup toolchain install "$wasm_threads_toolchain" --profile minimal --component rust-src
  local target_dir="${CARGO_TARGET_DIR:-target}" module relaxed_pkg threads_pkg
  module="$target_dir/wasm32-unknown-unknown/wasm/webvlm.wasm"
  relaxed_pkg="$target_dir/wasm-relaxed-pkg"
  threads_pkg="$target_dir/wasm-threads-pkg"
  wasm_bindgen_cli
  rm -rf pkg www/pkg "$relaxed_pkg" "$threads_pkg"
  mkdir -p "$target_dir"
  # The threaded pair builds in the background, beside the single-thread pair, in a target
  # dir of its own (cargo builds one thing at a time in a target dir; the nightly's artifacts
  # share nothing with stable's anyway): the fat-LTO links of one pair run on one core.
  build_threads "$target_dir/wasm-threads" "$threads_pkg" >"$target_dir/wasm-threads.log" 2>&1 &
  local threads_job=$!
  # Each module, once bound, is checked and handed to wasm-opt in the background.
  local opt=1 optimizing=()
  if [ "${WASM_OPT:-1}" = 0 ]; then
    opt=0
  elif ! command -v npm >/dev/null; then
    echo "npm not found: skipping wasm-opt" >&2
    opt=0
  else
    npm_deps
  fi
  bound() {
    echo "$1 (wasm-bindgen): $(size_line "$1")"
    wasm_imports_check "$1"
    if [ "$opt" = 1 ]; then
      wasm_opt "$1" &
      optimizing+=("$1:$!")
    fi
  }
  # The `wasm` profile (Cargo.toml): release, fat LTO, dependencies optimised for size.
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$wasm_simd128_flags" \
    cargo build --lib --profile wasm --target wasm32-unknown-unknown
  wasm-bindgen --target web --out-dir pkg "$module"
  bound pkg/webvlm_bg.wasm
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$wasm_simd128_flags" \
    cargo rustc --lib --profile wasm --target wasm32-unknown-unknown -- -C target-feature=+relaxed-simd
  wasm-bindgen --target web --out-dir "$relaxed_pkg" "$module"
  same_glue pkg/webvlm.js "$relaxed_pkg/webvlm.js"
  mv "$relaxed_pkg/webvlm_bg.wasm" pkg/webvlm_relaxed_bg.wasm
  bound pkg/webvlm_relaxed_bg.wasm
  local threads_ok=0
  wait "$threads_job" || threads_ok=$?
  cat "$target_dir/wasm-threads.log"
  if [ "$threads_ok" != 0 ]; then
    echo "the threaded wasm builds failed" >&2
    return 1
  fi
  mv "$threads_pkg"/webvlm_threads.js "$threads_pkg"/webvlm_threads_bg.wasm "$threads_pkg"/webvlm_threads_relaxed_bg.wasm \
    "$threads_pkg"/snippets pkg/
  bound pkg/webvlm_threads_bg.wasm
  bound pkg/webvlm_threads_relaxed_bg.wasm
  local job
  for job in "${optimizing[@]}"; do
    if ! wait "${job##*:}"; then
      echo "wasm-opt failed on ${job%:*}" >&2
      return 1
    fi
    echo "${job%:*} (wasm-opt $wasm_opt_flags): $(size_line "${job%:*}")"
  done
  # The npm package: the JS API (createEngine, worker, d.ts, package.json, README) around
  # the wasm-bindgen module; the demo page imports the same files from www/pkg/.
  cp -R js/. pkg/
  rm -f pkg/.gitignore
  cp -R pkg www/pkg
  vendor_www
  offline_list
}

# The threaded pair into $2 (webvlm_threads.js, snippets/, webvlm_threads_bg.wasm and
# webvlm_threads_relaxed_bg.wasm), built in the target dir $1 by the pinned nightly.
build_threads() {
  local module="$1/wasm32-unknown-unknown/wasm/webvlm.wasm"
  # shellcheck disable=SC2086
  local -x CARGO_TARGET_DIR="$1" CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$(echo $wasm_threads_flags)"
  cargo "+$wasm_threads_toolchain" build -Z build-std=panic_abort,std --lib --profile wasm --target wasm32-unknown-unknown
  wasm-bindgen --target web --out-dir "$2" --out-name webvlm_threads --no-typescript "$module"
  cargo "+$wasm_threads_toolchain" rustc -Z build-std=panic_abort,std --lib --profile wasm --target wasm32-unknown-unknown \
    -- -C target-feature=+relaxed-simd
  wasm-bindgen --target web --out-dir "$2/relaxed" --out-name webvlm_threads --no-typescript "$module"
  same_glue "$2/webvlm_threads.js" "$2/relaxed/webvlm_threads.js"
  mv "$2/relaxed/webvlm_threads_bg.wasm" "$2/webvlm_threads_relaxed_bg.wasm"
}

# Fails unless two builds' wasm-bindgen glue is the same code (its comments name closure shims
# by index, which differ): one glue then loads either module.
same_glue() {
  if ! diff -q <(grep -v "// Cast intrinsic for" "$1") <(grep -v "// Cast intrinsic for" "$2") >/dev/null; then
    echo "the relaxed-SIMD build's wasm-bindgen glue differs from the SIMD128 build's: $1, $2" >&2
    return 1
  fi
}

# The demo has no bundler: the Markdown renderer and sanitizer it imports (marked, DOMPurify, at
# the versions pinned in tests/browser/package-lock.json) are copied from node_modules into
# www/vendor/ (not committed) with their licenses. Without npm the page shows replies as text.
vendor_www() {
  rm -rf www/vendor
  if ! npm_deps; then
    echo "npm not found: www/vendor/ not made (the demo shows replies as plain text)" >&2
    return 0
  fi
  local nm="$browser_dir/node_modules"
  mkdir -p www/vendor
  sed '/^\/\/# sourceMappingURL=/d' "$nm/marked/lib/marked.esm.js" >www/vendor/marked.js
  cp "$nm/marked/LICENSE" www/vendor/marked.LICENSE.txt
  sed '/^\/\/# sourceMappingURL=/d' "$nm/dompurify/dist/purify.es.mjs" >www/vendor/dompurify.js
  cp "$nm/dompurify/LICENSE" www/vendor/dompurify.LICENSE.txt
}

# www/offline-files.js: the files the demo's service worker (www/sw.js) keeps for offline use
# (everything under www/ the page loads) and a hash of their contents, whose change on a rebuild
# makes browsers install the new shell.
offline_list() {
  python3 - <<'PY'
import hashlib, json, os
root = "www"
skip_names = {"sw.js", "offline-files.js", "package.json", "README.md"}
files = []
for d, _, names in os.walk(root):
    for n in names:
        rel = os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
        if n in skip_names or n.endswith((".map", ".d.ts", ".txt")):
            continue
        files.append(rel)
files.sort()
h = hashlib.sha256()
for f in files:
    h.update(f.encode() + b"\0")
    with open(os.path.join(root, f), "rb") as fh:
        h.update(hashlib.sha256(fh.read()).digest())
with open(os.path.join(root, "offline-files.js"), "w") as out:
    out.write("// Written by ./build.sh wasm: the files www/sw.js keeps for offline use.\n")
    out.write("self.WEBVLM_OFFLINE = " + json.dumps({"version": h.hexdigest()[:16], "files": files}, indent=1) + ";\n")
print(f"www/offline-files.js: {len(files)} files")
PY
}

# Fails when the module imports anything but its own JS glue (`./webvlm_bg.js`, the threaded
# build's `./webvlm_threads_bg.js`: its memory among them): a browser has
# no `env` module to satisfy, e.g., a dependency's `env.now` timer, and the page would not load.
wasm_imports_check() {
  if ! command -v node >/dev/null; then
    echo "node not found: the wasm module's imports are not checked" >&2
    return 0
  fi
  # Node 20 compiles relaxed SIMD only behind a flag (later versions have it by default).
  local flags=()
  if node --experimental-wasm-relaxed-simd -e 0 2>/dev/null; then flags=(--experimental-wasm-relaxed-simd); fi
  node "${flags[@]}" -e '
    const m = new WebAssembly.Module(require("fs").readFileSync(process.argv[1]));
    const glue = process.argv[1].includes("threads") ? "./webvlm_threads_bg.js" : "./webvlm_bg.js";
    const bad = WebAssembly.Module.imports(m).filter((i) => i.module !== glue);
    if (bad.length) {
      console.error("the wasm module imports what no browser provides: " + bad.map((i) => i.module + "." + i.name).join(", "));
      process.exit(1);
    }' "$1"
}

# wasm-opt from the npm `binaryen` package (itself compiled to wasm: ~25 s at -O1, ~2.5 min at
# -O3 on this 4.7 MB module on 2 shared cores; -O1 also gives the smallest gzip). The result
# is cached by input hash in $WEBVLM_CACHE/wasm-opt, so rebuilding unchanged Rust skips it, in
# this clone or another.
wasm_opt_flags="${WASM_OPT_FLAGS:--O1}"
wasm_opt() {
  local bin="$browser_dir/node_modules/.bin/wasm-opt" cache="$WEBVLM_CACHE/wasm-opt" key
  key="$( { sha256sum <"$1"; echo "$wasm_opt_flags"; "$bin" --version; } | sha256sum | cut -c1-32)"
  if [ ! -f "$cache/$key.wasm" ]; then
    mkdir -p "$cache"
    find "$cache" -name '*.wasm' -mtime +7 -delete 2>/dev/null || true
    # shellcheck disable=SC2086
    "$bin" $wasm_opt_flags "$1" -o "$cache/$key.$$.tmp"
    mv "$cache/$key.$$.tmp" "$cache/$key.wasm"
  fi
  cp "$cache/$key.wasm" "$1"
}

# The Rust tests of tests/wasm_browser.rs in headless Chromium with WebGPU (webdriver.json holds
# its flags). The CLI binary does not build for wasm32: --no-default-features leaves it out, and
# `synthetic` builds the random model the tests stream.
# Debug info off keeps the test module ~10x smaller (faster to bind, load and compile), and the
# dependencies unoptimised (the dev profile gives them opt-level 2) shorten the build, most of
# the phase: the tests themselves spend their time in the browser's WebGPU.
wasm_tests() {
  rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
  wasm_bindgen_cli
  CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}" \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-600}" \
  CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-false}" \
    cargo test --target wasm32-unknown-unknown --no-default-features --features synthetic --test wasm_browser \
    --config 'profile.dev.package."*".opt-level=0' -- "$@"
}

# Formatting and lints: `cargo fmt --check` (rustfmt.toml), scripts/import_cycles.py, clippy
# with warnings as errors for every native target and for wasm32. The first that fails fails the
# lint (set -e). One wasm32 clippy covers what every wasm32 build compiles: the relaxed-SIMD
# flags turn on all of the CPU kernels' wasm code (the SIMD128 build compiles a subset of it; no
# code is compiled only without a feature), and `synthetic` adds the browser tests' code to the
# package's. A check, so it shares no artifacts with the package's builds: it runs in the main
# target dir, whose host crates (build scripts, proc macros) the other phases reuse.
lint() {
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
  rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
  cargo fmt --check
  python3 scripts/import_cycles.py
  cargo clippy --all-targets -- -D warnings
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$wasm_relaxed_flags" \
    cargo clippy --target wasm32-unknown-unknown --no-default-features --features synthetic --lib --test wasm_browser -- -D warnings
}

browser_tests() {
  npm_deps
  # Several tests compare with the native CLI (`cargo run --bin webvlm`): build it here, outside
  # their per-file time limits (after `cargo test`, nothing to do: Cargo.toml keeps the
  # features alike).
  cargo build --quiet --bin webvlm
  # One process per test file; the spec reporter ends with node's summary (tests, pass, fail).
  node --test --test-reporter=spec --test-timeout=600000 "$@" "$browser_dir"/*.test.js
}

# The official-SDK suite: tests/sdk/run.py starts `webvlm serve` (the debug CLI) on SmolLM2 and
# the tiny VLM, and llama.cpp's server on SmolLM2 when LLAMA_CPP_PYTHON names a python with
# llama-cpp-python[server] (run.py reads it; scripts/llama_cpp_server.sh prints one; `test` sets
# it), and runs the Python `openai` package (in $WEBVLM_CACHE/sdk-venv-HASH, which run.py makes
# from tests/sdk/requirements.txt) and the npm one (tests/browser's node_modules) against them.
sdk_tests() {
  npm_deps
  bash scripts/fetch_smollm2.sh >/dev/null
  cargo build --quiet --bin webvlm
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
  python3 tests/sdk/run.py "$@"
}

# The parts of `test` and their times. `phase NAME CMD...` runs CMD, prints
# `== phase NAME: 123 s (ok|FAILED)` on stderr, keeps the row for phase_table and returns CMD's
# status. CMD runs in a condition (`phase ... || failed+=(...)`), where `set -e` does not hold:
# a part that is a shell function runs as `bash "$0" PART` to keep it.
phase_rows=()
phase_row() { # NAME SECONDS RESULT
  phase_rows+=("$1"$'\t'"$2"$'\t'"$3")
}
phase() {
  local name="$1" start=$SECONDS status=0 result=ok
  shift
  echo "== phase $name" >&2
  "$@" || status=$?
  [ "$status" -eq 0 ] || result=FAILED
  echo "== phase $name: $((SECONDS - start)) s ($result)" >&2
  phase_row "$name" "$((SECONDS - start))" "$result"
  return "$status"
}
# Every phase, .ci/run's first (its rows come in WEBVLM_PHASES: NAME<TAB>SECONDS<TAB>RESULT
# lines), and the total: this run's wall clock plus .ci/run's phases.
phase_table() {
  local earlier=() row name secs result total=$SECONDS
  [ -z "${WEBVLM_PHASES:-}" ] || mapfile -t earlier <<<"${WEBVLM_PHASES%$'\n'}"
  echo "== phases" >&2
  for row in "${earlier[@]}" "${phase_rows[@]}"; do
    IFS=$'\t' read -r name secs result <<<"$row"
    printf '   %-42s %6s s  %s\n' "$name" "$secs" "$result" >&2
  done
  for row in "${earlier[@]}"; do
    IFS=$'\t' read -r name secs result <<<"$row"
    [[ "$secs" =~ ^[0-9]+$ ]] && total=$((total + secs))
  done
  result=ok
  [ ${#failed[@]} -eq 0 ] || result="FAILED (${#failed[@]})"
  printf '   %-42s %6s s  %s\n' "total" "$total" "$result" >&2
}

case "$cmd" in
  wasm)
    build_wasm
    ;;
  browser)
    shift
    build_wasm
    browser_tests "$@"
    ;;
  serve)
    build_wasm
    if command -v node >/dev/null; then
      # Range requests, correct types, a request log; the same server the browser tests use.
      # The demo's Content-Security-Policy is on (tests/browser/server.js: demoCsp); CONNECT_SRC
      # adds origins it may connect to (a remote server).
      connect=()
      for origin in ${CONNECT_SRC:-}; do connect+=(--connect-src "$origin"); done
      exec node "$browser_dir/server.js" --port "$port" --root www "${connect[@]}"
    fi
    echo "serving www/ on http://127.0.0.1:$port"
    exec python3 -m http.server "$port" --bind 127.0.0.1 --directory www
    ;;
  test)
    # Mesa's Vulkan loader complains without a runtime dir; give it a private one.
    export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
    # Each part runs even when an earlier one failed; the run fails if any did. The table of
    # phases and the list of what failed print however the run ends (trap).
    failed=()
    trap 'phase_table; [ ${#failed[@]} -eq 0 ] || printf "FAILED: %s\n" "${failed[@]}" >&2' EXIT
    echo "cache (WEBVLM_CACHE): $WEBVLM_CACHE" >&2
    phase "fetch SmolLM2" bash scripts/fetch_smollm2.sh || failed+=("fetch SmolLM2 (scripts/fetch_smollm2.sh)")
    phase "fetch Qwen tokenizer" bash scripts/fetch_qwen_tokenizer.sh ||
      failed+=("fetch the Qwen tokenizer (scripts/fetch_qwen_tokenizer.sh)")
    # llama.cpp's server, the independent OpenAI-compatible server the remote-engine and SDK
    # suites also run against, builds from source (a few minutes of one core; once per
    # llama-cpp-python version: the build is kept in $WEBVLM_CACHE): in the background, beside
    # the Rust builds. LLAMA_CPP_PYTHON set by hand skips it.
    if [ -z "${LLAMA_CPP_PYTHON:-}" ]; then
      llama_log="${CARGO_TARGET_DIR:-target}/llama-cpp-install.log"
      mkdir -p "$(dirname "$llama_log")"
      rm -f "$llama_log.seconds"
      (
        start=$SECONDS status=0
        nice bash scripts/llama_cpp_server.sh || status=$?
        echo "$((SECONDS - start))" >"$llama_log.seconds"
        exit "$status"
      ) >"$llama_log" 2>&1 &
      llama_pid=$!
    fi
    # The parts that are this script's own commands run as child processes so that `set -e`
    # holds inside each of them.
    phase "lint" bash "$0" lint || failed+=("lint (cargo fmt --check, scripts/import_cycles.py, clippy -D warnings)")
    wasm_built=1
    phase "wasm build" bash "$0" wasm || { wasm_built=0; failed+=("wasm build"); }
    # Every test once, but the model tests (tests/model_*.rs, modules of the `integration` test
    # binary) in the phase after the next: they run on lavapipe once, in the GPU kernel geometry
    # (the CPU backend's tests in them run there too; the launch shapes do not touch it).
    model_tests=()
    for f in tests/model_*.rs; do model_tests+=("$(basename "$f" .rs)::"); done
    phase "native tests" cargo test --no-fail-fast --tests -- "${model_tests[@]/#/--skip=}" || failed+=("native tests")
    # The CLI the browser and SDK suites run is the one `cargo test` just built while the
    # features of Cargo.toml's unification lines hold; a rebuild here means they drifted apart.
    if cargo build --bin webvlm -v 2>&1 | grep -q "Compiling webvlm"; then
      echo "warning: cargo build --bin webvlm rebuilt webvlm after cargo test: a dev-dependency's features now differ (Cargo.toml)" >&2
    fi
    # The kernel tests again, the model tests of every family and the engine's parallel
    # requests on the GPU, with the GPU kernel geometry forced (a CPU adapter takes the CPU
    # shape by default): every kernel variant a real GPU takes runs here against the same
    # references and tolerances, and every family's model runs on lavapipe in the shapes real
    # GPUs take.
    # The kernel tests that open a device of each geometry themselves ran whole in the phase
    # before: they are left out here (one left off this list only runs twice).
    each_geometry=(
      kernels_matmul::matmul_matches_cpu_for_every_type kernels_matmul::matmul_f16_compute_matches_cpu_for_every_type
      kernels_matmul::row_split_weights_give_identical_results kernels_matmul::matvec_of_many_tokens_gives_each_token_its_bits_alone
      kernels_matmul::matvec_of_tokens_in_several_x_windows_gives_each_token_its_bits_alone
      kernels_matmul::matmul_row_window_reads_and_writes_only_its_rows kernels_matmul::matmul_into_a_column_window_stores_and_adds
      kernels_fused::matvec_epilogues_match_cpu_in_both_geometries
      kernels_attention::prefill_matches_cpu kernels_attention::decode_matches_cpu kernels_attention::decode_handles_several_new_tokens
      kernels_attention::decode_reads_an_f16_cache kernels_attention::decode_covers_group_sizes
      kernels_attention::decode_skips_and_ignores_inactive_splits kernels_attention::prefill_reads_an_f16_cache
      kernels_attention::recorded_prefill_then_decode_steps_match_cpu kernels_attention::sequences_in_one_kv_arena_get_their_bits_alone
    )
    phase "native tests, GPU geometry" env WEBVLM_GEOMETRY=gpu cargo test --no-fail-fast --test integration -- \
      kernels_matmul:: kernels_fused:: kernels_sample:: kernels_attention:: \
      kernels_vision:: kernels_mrope:: kernels_vision_mllama:: kernels_delta_net:: \
      engine_parallel::parallel_requests_generate_as_they_do_alone_on_the_gpu \
      "${model_tests[@]}" "${each_geometry[@]/#/--skip=}" ||
      failed+=("native tests in the GPU kernel geometry (kernels again, models)")
    # The CPU backend's aarch64 NEON kernels: its kernel tests built for aarch64 and run under
    # qemu-user (which installs itself where missing).
    phase "NEON kernels (aarch64, qemu)" bash scripts/test_neon.sh || failed+=("NEON kernels under qemu (scripts/test_neon.sh)")
    # Its wasm32 SIMD128 and relaxed-SIMD kernels: the same tests built for wasm32-wasip1-threads
    # and run under Node (V8, as in Chromium).
    phase "wasm SIMD kernels (Node)" bash scripts/test_wasm_simd.sh || failed+=("wasm SIMD kernels under Node (scripts/test_wasm_simd.sh)")
    phase "wasm tests in the browser" bash "$0" wasm-test || failed+=("wasm tests in the browser")
    if [ -n "${llama_pid:-}" ]; then
      # Its time here is what the run waited for it; the next row, what it took in all.
      if phase "llama.cpp install (waiting)" wait "$llama_pid"; then
        LLAMA_CPP_PYTHON="$(tail -n 1 "$llama_log")"
        export LLAMA_CPP_PYTHON
        result=ok
      else
        failed+=("llama.cpp server install (scripts/llama_cpp_server.sh; log: $llama_log)")
        result=FAILED
      fi
      phase_row "llama.cpp install (background)" "$(cat "$llama_log.seconds" 2>/dev/null || echo "?")" "$result"
    fi
    if [ "$wasm_built" = 1 ]; then
      phase "browser tests" bash "$0" browser-only || failed+=("browser tests")
    else
      failed+=("browser tests (not run: no wasm package)")
      phase_row "browser tests" 0 "not run"
    fi
    phase "SDK conformance" bash "$0" sdk || failed+=("SDK conformance (tests/sdk)")
    [ ${#failed[@]} -eq 0 ] || exit 1
    ;;
  browser-only)
    shift
    browser_tests "$@"
    ;;
  wasm-test)
    shift
    wasm_tests "$@"
    ;;
  lint)
    lint
    ;;
  sdk)
    shift
    sdk_tests "$@"
    ;;
  *)
    echo "usage: $0 [serve|test|wasm|browser|wasm-test|lint|sdk]" >&2
    exit 2
    ;;
esac
