#!/usr/bin/env bash
# Runs every fuzz target for DSPRING_FUZZ_SECONDS seconds each (default 10: the short CI run;
# set it to hours for a soak). cargo-fuzz wants a nightly toolchain for its sanitizer flags;
# this machine has only stable, so RUSTC_BOOTSTRAP=1 lets stable accept them.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${DSPRING_FUZZ_SECONDS:-10}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list); do
  echo "== fuzz $target for ${seconds}s"
  cargo fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 | tail -n 1
done
