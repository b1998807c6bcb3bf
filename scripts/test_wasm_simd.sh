#!/usr/bin/env bash
# The CPU backend's wasm32 SIMD128 and relaxed-SIMD kernels (src/backend/cpu/quant/*wasm.rs) on
# this machine: the CPU kernel tests built for wasm32-wasip1-threads with
# `-C target-feature=+simd128,+relaxed-simd` and run under Node (the V8 of Chromium) by
# scripts/wasi_run.mjs, so that `Simd::available()` holds `Simd::Simd128` and `Simd::Relaxed`
# and every test compares them with the scalar level.
#
#   bash scripts/test_wasm_simd.sh [ARGS...]    ARGS go to the test binaries (e.g. a test name filter)
#
# WEBVLM_WASM_FEATURES=+simd128 builds without relaxed SIMD instead (the other build the page
# may load; the tests then expect `simd128` as the best level). Needs Node 20 or later (relaxed
# SIMD through `--experimental-wasm-relaxed-simd` where the flag exists: Node 20's V8 does not
# enable it by default) and installs the Rust target when missing (rustup). The runner and
# flags are set here through Cargo's environment variables, not a .cargo/config, so that
# nothing else changes. Cargo's target dir is the usual one (`${CARGO_TARGET_DIR:-target}`):
# the build lives under its wasm32-wasip1-threads/.
#
# Why wasip1-threads: the tests run their ops on pools of one to four threads; wasm32-wasip1's
# std cannot spawn one. The runner implements wasi-threads' `thread-spawn` with Node workers on
# the module's shared memory (scripts/wasi_run.mjs). The browser build (wasm32-unknown-unknown)
# runs the same kernels: their code depends on the target features, not on the OS.
#
# The tests: tests/cpu_levels.rs (the wasm levels beside scalar on extreme codes, and that the
# levels run at all: WEBVLM_EXPECT_SIMD), tests/cpu_matvec.rs (every format, both modes, every
# level, against the reference and the scalar level), tests/cpu_matmul.rs (the prefill matmul's
# tiles against the matvec, bit for bit in the fast mode), tests/cpu_kernels.rs (norms, RoPE,
# attention), tests/cpu_vision.rs (the vision ops, through the matvec and matmul),
# tests/cpu_delta_net.rs (the gated delta rule), and the library's own CPU tests (the tiles
# against the row dots, the wasm f16 conversion). wasm32's only panic strategy is abort: a
# failing test aborts its binary (which then fails: nothing passes silently) before libtest
# prints what it captured, so the tests run with `--nocapture`. Two pool tests are skipped:
# `pool_propagates_a_panicking_task` catches a panic; the last part of
# `pool_survives_many_runs_idle_gaps_and_concurrent_callers` runs two callers in a
# `std::thread::scope`, whose end never comes under this runner (nor does a blocking
# `mpsc::Receiver::recv`: a wake-up of the main thread by a finishing thread is lost somewhere
# between wasi-libc, std and Node's workers; parking, `join`, mutexes and condition variables,
# all the pool uses, work). The pool runs in every other test.
#
# On a shared 2-core x86-64 machine a cold run (empty target dir, crates downloaded) took 4.4 min:
# 2.9 of build, 1.5 of tests (with another build beside it, up to twice that); a warm one
# 1.5-2 min.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

command -v node >/dev/null 2>&1 || { echo "test_wasm_simd: node (20 or later) is needed" >&2; exit 1; }
node_flags=(--no-warnings)
if node --v8-options | grep -q -- '--experimental-wasm-relaxed-simd'; then
  node_flags+=(--experimental-wasm-relaxed-simd)
fi
target=wasm32-wasip1-threads
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

features="${WEBVLM_WASM_FEATURES:-+simd128,+relaxed-simd}"
export CARGO_TARGET_WASM32_WASIP1_THREADS_RUNNER="node ${node_flags[*]} $PWD/scripts/wasi_run.mjs"
export CARGO_TARGET_WASM32_WASIP1_THREADS_RUSTFLAGS="-C target-feature=$features"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
# tests/cpu_levels.rs fails unless the build's best level runs (a build without the features
# would leave every test on the scalar level only, passing without testing anything new).
case "$features" in
  *relaxed-simd*) export WEBVLM_EXPECT_SIMD=relaxed ;;
  *) export WEBVLM_EXPECT_SIMD=simd128 ;;
esac

# The dependencies unoptimised (the dev profile gives them opt-level 2, Cargo.toml): a shorter
# build for tests that spend their time in webvlm's own code, which keeps the dev profile's
# opt-level.
args=(--target "$target" --no-default-features --config 'profile.dev.package."*".opt-level=0')
status=0
# The modules of the `cpu` test binary (tests/cpu.rs) it runs; a filter in ARGS runs what it
# matches in the binary instead.
modules=(cpu_levels:: cpu_matvec:: cpu_matmul:: cpu_kernels:: cpu_vision:: cpu_delta_net::)
[ $# -eq 0 ] || modules=()
# Both test binaries built by one cargo: the library's test build and its plain one (which the
# kernel tests link) compile side by side rather than one after the other.
cargo test "${args[@]}" --no-run --lib --test cpu || status=$?
cargo test "${args[@]}" --no-fail-fast --test cpu -- "${modules[@]}" \
  --nocapture --skip pool_propagates_a_panicking_task --skip pool_survives_many_runs_idle_gaps_and_concurrent_callers \
  "$@" || status=$?
# The library's CPU backend tests, from the same build; a filter in ARGS adds to
# `backend::cpu::` (libtest runs what any one matches).
cargo test "${args[@]}" --lib -- --nocapture backend::cpu:: "$@" || status=$?
# V8 compiles a function first with its baseline compiler (Liftoff), then hot ones again with
# the optimizing one (TurboFan): the tests above run each kernel in one or both. The row
# tests again under each compiler alone (Node 20's Liftoff summed a chained accumulating
# relaxed dot wrongly, which only this caught).
for tier in --liftoff-only --no-liftoff; do
  CARGO_TARGET_WASM32_WASIP1_THREADS_RUNNER="node ${node_flags[*]} $tier $PWD/scripts/wasi_run.mjs" \
    cargo test "${args[@]}" --test cpu -- "${modules[@]:0:2}" --nocapture --skip pool_ "$@" || status=$?
done
echo "== test_wasm_simd ($features): $((SECONDS - start)) s ($([ "$status" -eq 0 ] && echo ok || echo FAILED))" >&2
exit "$status"
