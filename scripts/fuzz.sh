#!/usr/bin/env bash
# `make fuzz`: coverage-guided fuzzing of every gateway parser that reads untrusted bytes
# (gateway/fuzz: cargo-fuzz, libFuzzer, AddressSanitizer, debug assertions; see
# gateway/fuzz/README.md). Installs cargo-fuzz if missing, builds every target once, then
# runs each for FUZZ_SECONDS from its committed seed corpus, one after another with one
# worker. Any crash, failed check, leak, or input taking over 10 s fails the run; the input
# is kept in gateway/fuzz/artifacts/<target>/ (replay: cargo fuzz run -O -a <target> <file>).
# Not part of `make test`.
#
# Env: FUZZ_SECONDS per target (default 60); FUZZ_TARGETS="a b" (default: every target).
# cargo-fuzz passes -Z flags to rustc: the stable toolchain takes them with RUSTC_BOOTSTRAP=1.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG="fuzz"
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"
cd "$(repo_root)/gateway/fuzz"

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"
log "building ${#targets[@]} targets (release, ASan, debug assertions)"
cargo fuzz build -O -a

failed=()
for target in "${targets[@]}"; do
  # What a run finds goes to a scratch corpus under target/ (ignored by git); the committed
  # seeds are only read.
  scratch="target/corpus/$target"
  output="target/fuzz-$target.log"
  mkdir -p "$scratch"
  log "$target: ${FUZZ_SECONDS}s"
  if cargo fuzz run -O -a "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$output" 2>&1; then
    log "$target: $(grep -E '^Done' "$output" || echo done)"
  else
    tail -n 40 "$output" >&2
    warn "$target failed: gateway/fuzz/$output, input in gateway/fuzz/artifacts/$target/"
    failed+=("$target")
  fi
done

if ((${#failed[@]} > 0)); then
  die "${#failed[@]} target(s) failed: ${failed[*]}"
fi
log "all ${#targets[@]} targets ran ${FUZZ_SECONDS}s each without a crash"
