#!/usr/bin/env bash
# The fuzzing smoke of CI (.ci/run calls it; fuzz/README.md explains the targets).
#
# Installs cargo-fuzz if it is missing, builds every target once (stable toolchain, no
# sanitizer), then runs each target for FUZZ_SECONDS (default 25: six targets and a cold build
# stay near four minutes on the 2-core CI machine) starting from its seed corpus
# in fuzz/corpus/. New inputs go to a scratch directory, so the repository's corpus stays as
# committed. Fails if any target crashes, panics, leaks a hang past the per-input timeout or
# runs out of memory; the failing input is left in fuzz/artifacts/<target>/ and its replay
# command is printed.
#
# FUZZ_TARGETS (space-separated) runs a subset.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-25}
read -r -a targets <<<"${FUZZ_TARGETS:-frame_decoder message_bodies client_session peer_session store_batches tls_session}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "-- installing cargo-fuzz"
    started=$SECONDS
    cargo install cargo-fuzz --locked
    echo "-- cargo-fuzz installed in $((SECONDS - started)) s"
fi
cargo fuzz --version

started=$SECONDS
cargo fuzz build --sanitizer none
echo "-- fuzz targets built in $((SECONDS - started)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t"
    log="$work/$t.log"
    started=$SECONDS
    # -timeout: one input may take at most 10 s (the session target bounds its own tokio time;
    # this catches a busy loop). -print_final_stats: the executions count for the summary.
    if cargo fuzz run "$t" "$work/corpus/$t" "corpus/$t" --sanitizer none -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        echo "fuzz $t: ok, ${runs:-?} executions in $((SECONDS - started)) s"
        passed=$((passed + 1))
    else
        echo "fuzz $t: FAILED after $((SECONDS - started)) s:"
        grep -m1 -A6 -E "panicked|ERROR: libFuzzer|ALARM" "$log" || true
        echo "..."
        tail -n 25 "$log"
        failed=$((failed + 1))
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
