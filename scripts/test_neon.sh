#!/usr/bin/env bash
# The CPU backend's aarch64 NEON (+dotprod) kernels (src/backend/cpu/quant/*neon.rs) on an
# x86-64 machine: the CPU kernel tests built for aarch64-unknown-linux-gnu and run under
# qemu-user with `-cpu max` (which reports NEON and the dot-product extension, so that
# `Simd::available()` holds `Simd::Neon` and every test compares it with the scalar level).
#
#   bash scripts/test_neon.sh [ARGS...]    ARGS go to the test binaries (e.g. a test name filter)
#
# Installs what is missing, and only that: qemu-user, the aarch64 cross gcc (the linker; no
# dependency of these tests builds C) and its libc (apt, with sudo when not root, as .ci/run
# does), and the Rust target (rustup). The linker and runner are set here through Cargo's
# environment variables, not a .cargo/config, so that nothing else changes. Cargo's target dir
# is the usual one (`${CARGO_TARGET_DIR:-target}`, as build.sh takes it): the aarch64 build
# lives under its aarch64-unknown-linux-gnu/ next to the native one.
#
# The tests: tests/cpu_levels.rs (NEON beside scalar on extreme codes, and that the level runs at
# all: WEBVLM_EXPECT_SIMD=neon), tests/cpu_matvec.rs (every format, both modes, every level,
# against the reference and the scalar level), tests/cpu_matmul.rs (the prefill matmul's tiles
# against the matvec, bit for bit in the fast mode), tests/cpu_kernels.rs (norms, RoPE,
# attention), tests/cpu_vision.rs (the vision ops, through the matvec and matmul) and the
# library's own CPU tests (the tiles against the row dots). Speed under qemu means nothing; the
# deliverable is correctness. On a shared 2-core x86-64 machine a cold run (empty target dir,
# crates already downloaded) took 3.8 min: 2.9 min of build, 1 min of tests; a warm one 1 min.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need_apt=()
command -v qemu-aarch64 >/dev/null 2>&1 || need_apt+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need_apt+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/crt1.o ] || need_apt+=(libc6-dev-arm64-cross)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "apt-get install ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
target=aarch64-unknown-linux-gnu
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER:-aarch64-linux-gnu-gcc}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER:-qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max}"
# For any crate that compiles C for the target (the cc crate reads these).
export CC_aarch64_unknown_linux_gnu="${CC_aarch64_unknown_linux_gnu:-aarch64-linux-gnu-gcc}"
export AR_aarch64_unknown_linux_gnu="${AR_aarch64_unknown_linux_gnu:-aarch64-linux-gnu-ar}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
# tests/cpu_levels.rs fails unless the NEON level runs (a qemu without `dotprod` would leave
# every test on the scalar level only, passing without testing anything new).
export WEBVLM_EXPECT_SIMD=neon

# The dependencies unoptimised (the dev profile gives them opt-level 2, Cargo.toml): the cold
# build took 2.5 min here instead of 7.4, for about 45 s more of tests under qemu. webvlm itself
# keeps the dev profile's opt-level.
args=(--target "$target" --no-default-features --config 'profile.dev.package."*".opt-level=0')
status=0
# The modules of the `cpu` test binary (tests/cpu.rs) it runs; a filter in ARGS runs what it
# matches in the binary instead.
modules=(cpu_levels:: cpu_matvec:: cpu_matmul:: cpu_kernels:: cpu_vision::)
[ $# -eq 0 ] || modules=()
# Both test binaries built by one cargo: the library's test build and its plain one (which the
# kernel tests link) compile side by side rather than one after the other.
cargo test "${args[@]}" --no-run --lib --test cpu || status=$?
cargo test "${args[@]}" --no-fail-fast --test cpu -- "${modules[@]}" "$@" || status=$?
# The library's CPU backend tests (the tiles against the row dots, the scale unpacking), from
# the same build; a filter in ARGS adds to `backend::cpu::`.
cargo test "${args[@]}" --lib -- backend::cpu:: "$@" || status=$?
echo "== test_neon: $((SECONDS - start)) s ($([ "$status" -eq 0 ] && echo ok || echo FAILED))" >&2
exit "$status"
