#!/usr/bin/env bash
# The Redis calibration: the reference in-memory server, measured on this machine in the same
# sitting as distro-bench, so that Distro's throughputs can be given as ratios to it (a ratio
# travels between machines; an absolute rate does not). See BENCHMARKS.md, "Calibration against
# Redis".
#
#   SET  redis-benchmark SET of 128-byte values into a primary with two replicas, all three on
#        loopback (-t set -d 128 -P 128 -c 8 -r 1000000). Redis streams every write to every
#        replica, as a Distro owner syncs every write to every node. The replicas must have
#        received every write (same key count, same replication offset as the primary, no full
#        resync during the run) or the figure is not reported.
#   GET  redis-benchmark GET of 512-byte values from one server (-t get -d 512 -P 64 -c 8
#        -r 100000), with all 100,000 keys present beforehand (no miss is allowed).
#
# Installs redis-server and redis-tools from Debian when they are missing (as root). The servers
# run from a temporary directory, without persistence, on free loopback ports, and are stopped
# when the script exits, whichever way it does.
#
# Output: the results in words on stderr; the last line on stdout is one JSON object,
#   {"redis_set_replicated_per_s": …, "redis_get_per_s": …, …}
#
# Environment:
#   REDIS_SET_REQUESTS  SET requests to send (default 2000000: a few seconds)
#   REDIS_GET_REQUESTS  GET requests to send (default 3000000)
set -euo pipefail

SET_REQUESTS=${REDIS_SET_REQUESTS:-2000000}
GET_REQUESTS=${REDIS_GET_REQUESTS:-3000000}
# Keys and value size of the GET test (the -r and -d of its redis-benchmark line).
GET_KEYS=100000
GET_VALUE_BYTES=512
# How long the servers may take to start, the replicas to link up, and to catch up after the SET.
START_WAIT_S=10
LINK_WAIT_S=30
CATCH_UP_WAIT_S=60

say() { echo "redis-calibration: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}
for n in SET_REQUESTS GET_REQUESTS; do
    [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "REDIS_$n must be a positive whole number, not '${!n}'"
done

# --- Redis itself ----------------------------------------------------------------------------
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null ||
    ! command -v redis-cli >/dev/null; then
    [[ $(id -u) -eq 0 ]] || die "redis-server and redis-tools are missing; install them (apt-get install redis-server redis-tools) or run as root"
    say "installing redis-server and redis-tools from Debian"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >&2
fi
version=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')

# --- Three servers on loopback ----------------------------------------------------------------
dir=$(mktemp -d "${TMPDIR:-/tmp}/redis-calibration.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nothing listens on, from the dynamic range's lower part, not one handed out already.
taken=" "
free_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 30000))
        [[ $taken == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            taken+="$p "
            echo "$p"
            return
        fi
    done
    die "no free loopback port found"
}

cli() {
    local port=$1
    shift
    redis-cli -h 127.0.0.1 -p "$port" "$@"
}

# The value of `field` in INFO `section` of the server on `port`.
info() {
    cli "$1" info "$2" | tr -d '\r' | sed -n "s/^$3:\(.*\)/\1/p"
}

start_server() {
    local name=$1 port=$2
    shift 2
    mkdir -p "$dir/$name"
    # No persistence; replicas are never cut off for a slow read of the stream (the default
    # limit would disconnect a replica that falls 256 MB behind and force a full resync).
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir/$name" \
        --save '' --appendonly no --daemonize no --logfile "$dir/$name.log" \
        --client-output-buffer-limit "replica 0 0 0" "$@" &
    pids+=($!)
}

primary=$(free_port)
replicas=("$(free_port)" "$(free_port)")
start_server primary "$primary"
for i in 0 1; do
    start_server "replica$((i + 1))" "${replicas[$i]}" --replicaof 127.0.0.1 "$primary"
done
for port in "$primary" "${replicas[@]}"; do
    deadline=$((SECONDS + START_WAIT_S))
    until [[ $(cli "$port" ping 2>/dev/null) == PONG ]]; do
        ((SECONDS < deadline)) || die "the server on port $port did not start: $(tail -n 3 "$dir"/*.log | tr '\n' ' ')"
        sleep 0.1
    done
done
deadline=$((SECONDS + LINK_WAIT_S))
for port in "${replicas[@]}"; do
    until [[ $(info "$port" replication master_link_status) == up ]]; do
        ((SECONDS < deadline)) || die "the replica on port $port did not link up to the primary"
        sleep 0.1
    done
done
say "Redis $version: primary on port $primary, replicas on ${replicas[*]} (all linked up)"

# Until both replicas hold what the primary holds: same replication offset, same key count.
wait_caught_up() {
    local deadline=$((SECONDS + CATCH_UP_WAIT_S)) want keys
    while :; do
        want=$(info "$primary" replication master_repl_offset)
        keys=$(cli "$primary" dbsize)
        local ok=1
        for port in "${replicas[@]}"; do
            if [[ $(info "$port" replication master_repl_offset) != "$want" ||
                $(cli "$port" dbsize) != "$keys" ]]; then
                ok=0
            fi
        done
        ((ok)) && return 0
        ((SECONDS < deadline)) || return 1
        sleep 0.05
    done
}

# User + system CPU seconds of the three servers so far (/proc/<pid>/stat, in USER_HZ = 100).
servers_cpu_s() {
    local pid total=0 t
    for pid in "${pids[@]}"; do
        t=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")
        total=$((total + t))
    done
    awk -v t="$total" 'BEGIN { printf "%.2f", t / 100 }'
}

# Runs redis-benchmark with the arguments given; leaves its CSV output in $bench_csv and the
# client's share of the CPU the client and the servers used meanwhile in $client_share. The
# client shares the machine with the servers as distro-bench does with the nodes; its share
# says how much of the machine the servers had.
benchmark() {
    local before after client_s out
    before=$(servers_cpu_s)
    out=$(
        TIMEFORMAT='%U %S'
        { time redis-benchmark "$@" --csv 2>/dev/null; } 2>&1
    )
    after=$(servers_cpu_s)
    bench_csv=$(grep '^"' <<<"$out")
    client_s=$(tail -n 1 <<<"$out" | awk '{ print $1 + $2 }')
    client_share=$(awk -v c="$client_s" -v s="$(awk -v a="$before" -v b="$after" 'BEGIN { print b - a }')" \
        'BEGIN { if (c + s > 0) printf "%.3f", c / (c + s); else print "null" }')
}

# "rps" of the one result line of `redis-benchmark --csv`.
rps_of() {
    sed -n 's/^"\(SET\|GET\)","\([0-9.]*\)".*/\2/p' | head -n 1
}

# --- SET into the primary, replicated to both replicas ----------------------------------------
full_syncs_before=$(info "$primary" stats sync_full)
say "SET: $SET_REQUESTS requests of 128-byte values into the primary (-P 128 -c 8 -r 1000000)"
benchmark -h 127.0.0.1 -p "$primary" -t set -d 128 -P 128 -c 8 -r 1000000 -n "$SET_REQUESTS"
set_rps=$(rps_of <<<"$bench_csv")
set_client_share=$client_share
[[ -n $set_rps ]] || die "no SET result from redis-benchmark: $bench_csv"
catch_up_start=$(date +%s.%N)
wait_caught_up || die "the replicas did not catch up with the primary within ${CATCH_UP_WAIT_S}s after the SET run"
catch_up_s=$(awk -v a="$catch_up_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')
set_keys=$(cli "$primary" dbsize)
set_offset=$(info "$primary" replication master_repl_offset)
full_syncs=$(($(info "$primary" stats sync_full) - full_syncs_before))
((full_syncs == 0)) || die "a replica needed a full resync during the SET run: the writes were not streamed to it"
for port in "${replicas[@]}"; do
    [[ $(info "$port" replication master_link_status) == up ]] || die "the replica on port $port lost its link"
done
say "SET: $set_rps requests/s (redis-benchmark's share of the CPU: $set_client_share); both replicas hold all $set_keys keys (replication offset $set_offset, caught up ${catch_up_s}s after the run)"

# --- GET of 512-byte values from one server ---------------------------------------------------
cli "$primary" flushall >/dev/null
# Every key redis-benchmark will ask for (key:000000000000 … key:000000099999), in one pipe.
awk -v n="$GET_KEYS" -v size="$GET_VALUE_BYTES" 'BEGIN {
    v = sprintf("%*s", size, ""); gsub(/ /, "x", v)
    for (i = 0; i < n; i++) {
        k = sprintf("key:%012d", i)
        printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, size, v
    }
}' | cli "$primary" --pipe >/dev/null
[[ $(cli "$primary" dbsize) == "$GET_KEYS" ]] || die "filling the GET keys failed"
[[ $(cli "$primary" strlen key:000000000042) == "$GET_VALUE_BYTES" ]] || die "the GET values are not $GET_VALUE_BYTES bytes"
wait_caught_up || die "the replicas did not take the GET keys within ${CATCH_UP_WAIT_S}s"
hits_before=$(info "$primary" stats keyspace_hits)
misses_before=$(info "$primary" stats keyspace_misses)
say "GET: $GET_REQUESTS requests for $GET_VALUE_BYTES-byte values from the primary (-P 64 -c 8 -r $GET_KEYS)"
benchmark -h 127.0.0.1 -p "$primary" -t get -d "$GET_VALUE_BYTES" -P 64 -c 8 -r "$GET_KEYS" \
    -n "$GET_REQUESTS"
get_rps=$(rps_of <<<"$bench_csv")
get_client_share=$client_share
[[ -n $get_rps ]] || die "no GET result from redis-benchmark: $bench_csv"
hits=$(($(info "$primary" stats keyspace_hits) - hits_before))
misses=$(($(info "$primary" stats keyspace_misses) - misses_before))
((misses == 0)) || die "$misses of the GETs missed their key"
say "GET: $get_rps requests/s (redis-benchmark's share of the CPU: $get_client_share; $hits hits, no misses)"

printf '{"redis_version":"%s","redis_set_replicated_per_s":%s,"redis_get_per_s":%s,"set_requests":%s,"get_requests":%s,"set_client_cpu_share":%s,"get_client_cpu_share":%s,"replicas":2,"replica_keys_after_set":%s,"replication_offset_after_set":%s,"replica_catch_up_s":%s,"get_hits":%s}\n' \
    "$version" "$set_rps" "$get_rps" "$SET_REQUESTS" "$GET_REQUESTS" "$set_client_share" \
    "$get_client_share" "$set_keys" "$set_offset" "$catch_up_s" "$hits"
