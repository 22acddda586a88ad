#!/usr/bin/env bash
# What TLS and client tokens cost (BENCHMARKS.md, "TLS and tokens"): the same distro-bench
# scenario against one spawned node, plaintext / TLS / tokens / TLS and tokens, the variants run
# in turn, PAIRS rounds, so that a drift of the machine's speed hits them alike. One node: TLS and
# the token check happen on the node a client talks to (peers add their own mutual-TLS links,
# which `--spawn 3 --spawn-tls` measures the same way).
#
# Prints one line per run (variant, rate, p99, the node's CPU per operation) and a JSON line per
# variant with the medians. Needs a release build (`cargo build --release --bins`).
#
# Environment:
#   PAIRS       rounds of the variants (default 3)
#   SCENARIOS   register and/or query (default "register query")
#   INSTANCES   register: instances (default 200000); query: instances loaded (default 100000)
#   DURATION_S  query: seconds (default 8)
set -euo pipefail
cd "$(dirname "$0")/.."

PAIRS=${PAIRS:-3}
SCENARIOS=${SCENARIOS:-register query}
DURATION_S=${DURATION_S:-8}
bench=target/release/distro-bench
[ -x "$bench" ] && [ -x target/release/distrod ] || {
    echo "security_cost: build first: cargo build --release --bins" >&2
    exit 1
}

. benches/lib.sh

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "security_cost: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for scenario in $SCENARIOS; do
    case $scenario in
    register) args=(register --instances "${INSTANCES:-200000}" --services 20000 --connections 8 --pipeline 128) ;;
    query) args=(query --instances "${INSTANCES:-100000}" --services 10000 --duration-s "$DURATION_S" --connections 8 --pipeline 64) ;;
    *) echo "security_cost: unknown scenario $scenario" >&2; exit 1 ;;
    esac
    for round in $(seq "$PAIRS"); do
        for variant in plain tls tokens tls+tokens; do
            flags=()
            [[ $variant == *tls* ]] && flags+=(--spawn-tls)
            [[ $variant == *tokens* ]] && flags+=(--spawn-tokens)
            line=$("$bench" --spawn 1 "${flags[@]}" "${args[@]}" 2>/dev/null | tail -1)
            rate=$(field "$line" ops_per_s)
            p99=$(field "$line" p99_us)
            cpu=$(field "$line" nodes_cpu_s)
            ops=$(field "$line" ops)
            per_op=$(awk -v c="$cpu" -v n="$ops" 'BEGIN { printf "%.2f", c * 1e6 / n }')
            echo "$scenario $variant round $round: ${rate}/s p99 ${p99} us, node CPU ${per_op} us/op" >&2
            echo "$rate $p99 $per_op" >>"$out/$scenario-$variant"
        done
    done
    for variant in plain tls tokens tls+tokens; do
        f=$out/$scenario-$variant
        printf '{"scenario":"%s","variant":"%s","runs":%d,"ops_per_s":%s,"p99_us":%s,"node_cpu_us_per_op":%s}\n' \
            "$scenario" "$variant" "$(wc -l <"$f")" \
            "$(cut -d' ' -f1 "$f" | median)" "$(cut -d' ' -f2 "$f" | median)" "$(cut -d' ' -f3 "$f" | median)"
    done
done
