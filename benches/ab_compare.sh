#!/usr/bin/env bash
# Two builds of distro-bench + distrod, the same scenarios, in one sitting (BENCHMARKS.md,
# "Before and after"): each scenario runs on build A, then on build B, ROUNDS times, so that a
# drift of the machine's speed hits both alike. Each build's distro-bench drives its own distrod.
#
#   bash benches/ab_compare.sh A_DIR B_DIR      # directories holding distro-bench and distrod
#
# e.g. an older commit built in a worktree against this checkout:
#   git worktree add --detach /tmp/base <commit>
#   (cd /tmp/base && cargo build --release --bins)
#   bash benches/ab_compare.sh /tmp/base/target/release target/release
#
# Prints one line per run and, per scenario and build, a JSON line with the medians.
# Environment: ROUNDS (default 2), SCENARIOS (default "register query beat converge").
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -eq 2 ] || {
    echo "usage: $0 A_DIR B_DIR (each with distro-bench and distrod)" >&2
    exit 2
}
for d in "$1" "$2"; do
    [ -x "$d/distro-bench" ] && [ -x "$d/distrod" ] || {
        echo "ab_compare: $d has no distro-bench and distrod" >&2
        exit 1
    }
done
ROUNDS=${ROUNDS:-2}
SCENARIOS=${SCENARIOS:-register query beat converge}

. benches/lib.sh

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "ab_compare: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for scenario in $SCENARIOS; do
    case $scenario in
    register) args=(--spawn 3 register --instances 300000 --services 30000 --connections 8 --pipeline 128) ;;
    query) args=(--spawn 3 query --instances 100000 --services 10000 --duration-s 8 --connections 8 --pipeline 64) ;;
    beat) args=(--spawn 3 beat --instances 100000 --duration-s 8 --connections 4) ;;
    converge) args=(--spawn 3 converge --writes 100000 --rate 20000 --services 10000) ;;
    *) echo "ab_compare: unknown scenario $scenario" >&2; exit 1 ;;
    esac
    for round in $(seq "$ROUNDS"); do
        for side in A B; do
            dir=$1
            [ $side = B ] && dir=$2
            line=$("$dir/distro-bench" --distrod "$dir/distrod" "${args[@]}" 2>/dev/null | tail -1)
            rate=$(field "$line" ops_per_s)
            # converge: the latency that matters is write -> visible on every node.
            p99=$(field "$line" visible_p99_us)
            [ -n "$p99" ] || p99=$(field "$line" p99_us)
            cpu=$(field "$line" nodes_cpu_s)
            echo "$scenario $side round $round: rate ${rate:-?}, p99 ${p99:-?} us, nodes CPU ${cpu:-?} s" >&2
            echo "${rate:-nan} ${p99:-nan} ${cpu:-nan}" >>"$out/$scenario-$side"
        done
    done
    for side in A B; do
        f=$out/$scenario-$side
        printf '{"scenario":"%s","build":"%s","runs":%d,"rate":%s,"p99_us":%s,"nodes_cpu_s":%s}\n' \
            "$scenario" "$side" "$(wc -l <"$f")" \
            "$(cut -d' ' -f1 "$f" | median)" "$(cut -d' ' -f2 "$f" | median)" "$(cut -d' ' -f3 "$f" | median)"
    done
done
