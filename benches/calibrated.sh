#!/usr/bin/env bash
# Distro's throughputs beside Redis's, measured in one sitting on this machine (BENCHMARKS.md,
# "Calibration against Redis"): builds once, runs the Redis calibration
# (benches/redis_calibration.sh), then the distro-bench scenarios of BENCHMARKS.md against a
# spawned 3-node cluster, and prints each throughput with its ratio to the matching Redis figure:
#
#   registrations, one instance per frame  ÷ Redis SET into a primary + 2 replicas
#   queries, services of 10                ÷ Redis GET
#   heartbeat renewals                     ÷ Redis GET
#   converge at 20,000 writes/s on services of 10 / 100 / 1,000 instances: the rate sustained,
#   visible-everywhere p99 and push bytes per change (no Redis counterpart)
#
# Every run's JSON summary and log are kept in target/calibrated/<time>/; the last line on
# stdout is one JSON object with every figure and ratio.
#
# Environment (defaults are BENCHMARKS.md's; smaller values give a quicker, rougher sitting):
#   REGISTER_INSTANCES  instances the register run adds (default 1000000)
#   DURATION_S          seconds of the query and beat runs (default 8)
#   CONVERGE_WRITES     writes of each converge run (default 100000)
#   REDIS_SET_REQUESTS, REDIS_GET_REQUESTS  see benches/redis_calibration.sh
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTER_INSTANCES=${REGISTER_INSTANCES:-1000000}
DURATION_S=${DURATION_S:-8}
CONVERGE_WRITES=${CONVERGE_WRITES:-100000}
for n in REGISTER_INSTANCES DURATION_S CONVERGE_WRITES; do
    [[ ${!n} =~ ^[1-9][0-9]*$ ]] || {
        echo "calibrated: $n must be a positive whole number, not '${!n}'" >&2
        exit 1
    }
done

say() { echo "calibrated: $*" >&2; }

cargo build --release --bins >&2
bench=target/release/distro-bench
out=target/calibrated/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
say "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); results in $out"

# The number after "key": in a one-line JSON object (null if absent).
field() {
    local v
    v=$(sed -n "s/.*\"$2\":\([-0-9.eE+]*\|null\).*/\1/p" <<<"$1")
    echo "${v:-null}"
}

# a / b to 2 decimals, or null.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a == "null" || b == "null" || b + 0 == 0) print "null"; else printf "%.2f", a / b
    }'
}

# Thousands separators for the table.
num() {
    awk -v x="$1" 'BEGIN {
        if (x == "null") { print "-"; exit }
        s = sprintf("%.0f", x); r = ""
        while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) }
        print s r
    }'
}

# Runs one scenario against a fresh 3-node cluster; its summary line is left in $out/NAME.json.
run() {
    local name=$1
    shift
    say "$name: distro-bench --spawn 3 $*"
    if ! "$bench" --spawn 3 "$@" 2>"$out/$name.log" | tail -n 1 >"$out/$name.json"; then
        say "$name failed: $(tail -n 3 "$out/$name.log" | tr '\n' ' ')"
        exit 1
    fi
    local errors
    errors=$(field "$(cat "$out/$name.json")" errors)
    [[ $errors == 0 ]] || say "warning: $name counted $errors errors (see $out/$name.log)"
}

say "Redis calibration"
bash benches/redis_calibration.sh 2>"$out/redis.log" | tail -n 1 >"$out/redis.json" || {
    say "the Redis calibration failed: $(tail -n 3 "$out/redis.log" | tr '\n' ' ')"
    exit 1
}
redis=$(cat "$out/redis.json")
redis_set=$(field "$redis" redis_set_replicated_per_s)
redis_get=$(field "$redis" redis_get_per_s)

run register register --instances "$REGISTER_INSTANCES" --services $((REGISTER_INSTANCES / 10)) \
    --connections 8 --pipeline 128
run query query --instances 100000 --services 10000 --duration-s "$DURATION_S" \
    --connections 8 --pipeline 64
run beat beat --instances 100000 --duration-s "$DURATION_S" --connections 4
for size in 10 100 1000; do
    run "converge-$size" converge --writes "$CONVERGE_WRITES" --rate 20000 --service-size "$size"
done

register=$(cat "$out/register.json")
query=$(cat "$out/query.json")
beat=$(cat "$out/beat.json")
register_rps=$(field "$register" ops_per_s)
query_rps=$(field "$query" ops_per_s)
beat_rps=$(field "$beat" ops_per_s)
register_ratio=$(ratio "$register_rps" "$redis_set")
query_ratio=$(ratio "$query_rps" "$redis_get")
beat_ratio=$(ratio "$beat_rps" "$redis_get")

{
    echo
    echo "Redis $(sed -n 's/.*"redis_version":"\([^"]*\)".*/\1/p' <<<"$redis"): SET into primary + 2 replicas $(num "$redis_set") /s, GET $(num "$redis_get") /s"
    echo
    printf '%-44s %14s %10s %18s\n' "distro, 3 nodes" "per second" "÷ Redis" "generator CPU"
    printf '%-44s %14s %10s %18s\n' "registrations, one instance per frame" "$(num "$register_rps")" \
        "$register_ratio SET" "$(field "$register" generator_cpu_share)"
    printf '%-44s %14s %10s %18s\n' "queries, services of 10" "$(num "$query_rps")" \
        "$query_ratio GET" "$(field "$query" generator_cpu_share)"
    printf '%-44s %14s %10s %18s\n' "heartbeat renewals" "$(num "$beat_rps")" \
        "$beat_ratio GET" "$(field "$beat" generator_cpu_share)"
    echo
    printf '%-44s %14s %10s %18s %14s\n' "write -> visible, 20,000 writes/s" "writes/s" "p99 ms" "push B/change" "generator CPU"
    for size in 10 100 1000; do
        c=$(cat "$out/converge-$size.json")
        p99=$(awk -v x="$(field "$c" visible_p99_us)" 'BEGIN { if (x == "null") print "-"; else printf "%.1f", x / 1000 }')
        printf '%-44s %14s %10s %18s %14s\n' "services of $size" "$(num "$(field "$c" ops_per_s)")" \
            "$p99" "$(num "$(field "$c" push_bytes_per_change)")" "$(field "$c" generator_cpu_share)"
    done
    echo
    echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
} >&2

converge_json=""
for size in 10 100 1000; do
    c=$(cat "$out/converge-$size.json")
    converge_json+=$(printf ',"converge_%s":{"writes_per_s":%s,"visible_p99_us":%s,"push_bytes_per_change":%s,"generator_cpu_share":%s}' \
        "$size" "$(field "$c" ops_per_s)" "$(field "$c" visible_p99_us)" \
        "$(field "$c" push_bytes_per_change)" "$(field "$c" generator_cpu_share)")
done
printf '{"redis_set_replicated_per_s":%s,"redis_get_per_s":%s,"register_per_s":%s,"register_per_redis_set":%s,"query_per_s":%s,"query_per_redis_get":%s,"beat_renewals_per_s":%s,"beat_per_redis_get":%s%s,"results":"%s"}\n' \
    "$redis_set" "$redis_get" "$register_rps" "$register_ratio" "$query_rps" "$query_ratio" \
    "$beat_rps" "$beat_ratio" "$converge_json" "$out"
