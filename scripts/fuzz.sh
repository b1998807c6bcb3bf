#!/usr/bin/env bash
# Runs one libFuzzer target of fuzz/ (webvlm::fuzz) for SECONDS, or until 10^6 executions:
#   scripts/fuzz.sh TARGET [SECONDS]      (default 60; `scripts/fuzz.sh list` names the targets)
# Installs the nightly toolchain and cargo-fuzz when missing. The corpus starts from the
# target's seeds (fuzz/seeds/TARGET/ and the fixtures fuzz/seeds/TARGET.fixtures lists) and
# grows in fuzz/corpus/TARGET/ (not committed); crashes land in fuzz/artifacts/TARGET/.
# The limits are the ones docs/RELIABILITY.md reports: 2 GiB RSS, 10 s per input.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${1:?usage: scripts/fuzz.sh TARGET [SECONDS] | list}"
seconds="${2:-60}"
targets="$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^webvlm-fuzz$')"
if [ "$target" = list ]; then
  echo "$targets"
  exit 0
fi
grep -qx "$target" <<<"$targets" || { echo "unknown target $target; one of:" $targets >&2; exit 2; }

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked

corpus="fuzz/corpus/$target"
mkdir -p "$corpus" "fuzz/artifacts/$target"
if [ -d "fuzz/seeds/$target" ]; then cp -n "fuzz/seeds/$target"/* "$corpus"/; fi
if [ -f "fuzz/seeds/$target.fixtures" ]; then
  while read -r fixture; do
    [ -n "$fixture" ] && cp -n "$fixture" "$corpus/$(echo "$fixture" | tr / _)"
  done <"fuzz/seeds/$target.fixtures"
fi

cd fuzz
exec cargo +nightly fuzz run "$target" "corpus/$target" -- \
  -max_total_time="$seconds" -runs=1000000 -rss_limit_mb=2048 -timeout=10 \
  -artifact_prefix="artifacts/$target/" -print_final_stats=1
