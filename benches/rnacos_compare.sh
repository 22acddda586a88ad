#!/usr/bin/env bash
# Beside r-nacos: a 3-node r-nacos cluster and a 3-node Distro cluster on loopback, one after the
# other in one sitting, driven with the same Nacos v1 HTTP load (wrk and the Lua scripts in
# benches/wrk/), then memory per instance at the same instance count. Not part of CI: the lead
# runs it on a quiet machine (BENCHMARKS.md, "Beside r-nacos").
#
#   bash benches/rnacos_compare.sh            # everything, with the defaults below
#   INSTANCES=60000 DURATION_S=30 bash benches/rnacos_compare.sh
#   DISTROD=target/debug/distrod bash benches/rnacos_compare.sh   # a quick check of the script
#
# What it installs when missing: rnacos 0.8.x with `cargo install --root` into
# ~/.cache/distro-rnacos (a long compile: run `bash benches/rnacos_compare.sh install` early and
# in the background), wrk from Debian (apt-get), and a release build of distrod.
#
# Per system, on a fresh cluster:
#   1. memory: RSS of each node, register INSTANCES instances (a third through each node), wait
#      until every node lists all of them, RSS again -> bytes per instance (per node);
#   2. list:     GET /nacos/v1/ns/instance/list over SERVICES services (INSTANCES / SERVICES each);
#   3. beat:     PUT /nacos/v1/ns/instance/beat, full beats of those instances;
#   4. register: POST /nacos/v1/ns/instance, new instances.
# Each load phase runs one wrk per node at once (-t1 -c CONNECTIONS, DURATION_S seconds) and
# reports the sum of their requests per second. Instances carry long leases (`preserved.*`
# metadata for Distro; r-nacos does not read those and gets RNACOS_NAMING_*_TIMEOUT_SECOND=3600)
# so that nothing expires while it is measured. The last lines are one JSON object per system.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${DISTRO_RNACOS_DIR:-$HOME/.cache/distro-rnacos}
RNACOS_VERSION=${RNACOS_VERSION:-~0.8}
INSTANCES=${INSTANCES:-30000}
SERVICES=${SERVICES:-100}
DURATION_S=${DURATION_S:-20}
CONNECTIONS=${CONNECTIONS:-32}
# Which systems to run (a check of one half of the script: SYSTEMS=distro).
SYSTEMS=${SYSTEMS:-"rnacos distro"}
# Loopback ports: r-nacos HTTP 18848.. (gRPC +1000, console +2000); Distro Nacos HTTP 28848..
# (gRPC +1000), client 28858.., peer 28868...
RN_HTTP=18848
DS_NACOS=28848
DS_CLIENT=28858
DS_PEER=28868

log() { echo "-- $*" >&2; }

install_rnacos() {
    if [[ -x $cache/bin/rnacos ]]; then return; fi
    log "installing rnacos $RNACOS_VERSION into $cache (cargo install; a long compile)"
    mkdir -p "$cache"
    cargo install rnacos --version "$RNACOS_VERSION" --locked --root "$cache"
}

install_wrk() {
    if command -v wrk >/dev/null; then return; fi
    log "installing wrk (Debian)"
    apt-get install -y wrk >/dev/null
}

if [[ ${1:-} == install ]]; then
    install_wrk
    install_rnacos
    exit 0
fi

install_wrk
RNACOS=$cache/bin/rnacos
if [[ $SYSTEMS == *rnacos* ]]; then
    install_rnacos
    log "r-nacos: $("$RNACOS" --version 2>/dev/null || echo "$RNACOS")"
fi
if [[ -z ${DISTROD:-} ]]; then
    log "building distrod (release)"
    (cd "$root" && cargo build --release --quiet --bin distrod)
    DISTROD=$root/target/release/distrod
fi
log "distrod: $DISTROD"

work=$(mktemp -d /tmp/rnacos-compare.XXXXXX)
pids=()
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Waits until every HTTP address answers the list endpoint.
wait_http() {
    local deadline=$((SECONDS + 60))
    for addr in "$@"; do
        until curl -sf -o /dev/null "http://$addr/nacos/v1/ns/instance/list?serviceName=probe"; do
            ((SECONDS < deadline)) || { log "$addr did not come up"; return 1; }
            sleep 0.5
        done
    done
}

# Instances every node lists over the bench services (all of them, healthy or not).
count_at() {
    python3 - "$SERVICES" "$@" <<'EOF'
import json, sys, urllib.request
services, addrs = int(sys.argv[1]), sys.argv[2:]
counts = []
for a in addrs:
    n = 0
    for s in range(services):
        with urllib.request.urlopen(f"http://{a}/nacos/v1/ns/instance/list?serviceName=bench-svc-{s}") as r:
            n += len(json.load(r).get("hosts") or [])
    counts.append(n)
print(" ".join(map(str, counts)))
EOF
}

# Starts one wrk per address at once with script $1 (each process gets its own instance range,
# BENCH_OFFSET); `load_end` waits for them and prints the sum of their requests per second.
load_start() {
    local script=$1 per_thread=$2 duration=$3
    shift 3
    local i=0
    WRK_PIDS=() WRK_OUTS=() WRK_SCRIPT=$script
    for addr in "$@"; do
        local out=$work/wrk-$script-$i.txt
        BENCH_WRK_DIR=$here/wrk BENCH_SERVICES=$SERVICES BENCH_PER_THREAD=$per_thread \
            BENCH_OFFSET=$(((i + ${OFFSET_BASE:-0}) * 1000000)) \
            wrk -t1 -c"$CONNECTIONS" -d"${duration}s" --latency -s "$here/wrk/$script.lua" "http://$addr" \
            >"$out" 2>"$work/wrk-$script-$i.err" &
        WRK_PIDS+=($!)
        WRK_OUTS+=("$out")
        i=$((i + 1))
    done
}

load_end() {
    wait "${WRK_PIDS[@]}" || true
    local errors
    errors=$(sort "$work"/wrk-"$WRK_SCRIPT"-*.err | uniq -c | head -3)
    [[ -z $errors ]] || log "$WRK_SCRIPT: server errors (first kinds): $errors"
    awk '/^Requests\/sec:/ {s += $2} END {printf "%.0f\n", s}' "${WRK_OUTS[@]}"
}

load() {
    load_start "$@"
    load_end
}

# The four phases against one cluster (its HTTP addresses and its node pids); prints JSON.
measure() {
    local name=$1 addrs=$2 node_pids=$3
    read -ra A <<<"$addrs"
    read -ra P <<<"$node_pids"
    local before=0 after=0 per=$((INSTANCES / ${#A[@]}))
    sleep 2
    for p in "${P[@]}"; do before=$((before + $(rss_kb "$p"))); done
    log "$name: registering $INSTANCES instances ($per through each node)"
    # wrk runs for its whole duration even when its threads are done (they register their last
    # instance again and again): it is interrupted once every node lists the same count three
    # polls in a row, near INSTANCES (wrk drops the first request of each thread, so a few
    # short: the count used is the one listed).
    OFFSET_BASE=0 load_start register "$per" 900 "${A[@]}"
    local deadline=$((SECONDS + 900)) counts last="" same=0 n=0
    while :; do
        sleep 2
        counts=$(count_at "${A[@]}")
        n=$(tr ' ' '\n' <<<"$counts" | sort -u)
        if [[ $n != *$'\n'* && $counts == "$last" ]] && ((n * 100 >= INSTANCES * 99)); then
            same=$((same + 1))
            ((same < 2)) || break
        else
            same=0
        fi
        last=$counts
        ((SECONDS < deadline)) || { log "$name: nodes list $counts, not $INSTANCES each"; n=${counts%% *}; break; }
    done
    kill -INT "${WRK_PIDS[@]}" 2>/dev/null || true
    load_end >/dev/null
    sleep 2
    for p in "${P[@]}"; do after=$((after + $(rss_kb "$p"))); done
    local bytes_per=$(((after - before) * 1024 / ${#P[@]} / n))
    log "$name: $n instances on every node; RSS $before kB -> $after kB over ${#P[@]} nodes: $bytes_per bytes per instance per node"
    log "$name: list for ${DURATION_S}s"
    local list beat register
    list=$(load list 1 "$DURATION_S" "${A[@]}")
    log "$name: beat for ${DURATION_S}s"
    beat=$(load beat "$per" "$DURATION_S" "${A[@]}")
    log "$name: register for ${DURATION_S}s"
    register=$(OFFSET_BASE=3 load register 1000000 "$DURATION_S" "${A[@]}")
    printf '{"system":"%s","nodes":%d,"instances":%d,"services":%d,"rss_before_kb":%d,"rss_after_kb":%d,"bytes_per_instance_per_node":%d,"list_per_s":%s,"beat_per_s":%s,"register_per_s":%s,"connections_per_node":%d,"duration_s":%d}\n' \
        "$name" "${#P[@]}" "$n" "$SERVICES" "$before" "$after" "$bytes_per" "$list" "$beat" "$register" "$CONNECTIONS" "$DURATION_S"
}

rnacos_json= distro_json=

# --- r-nacos ----------------------------------------------------------------------------------
if [[ $SYSTEMS == *rnacos* ]]; then
log "starting a 3-node r-nacos cluster"
addrs=() node_pids=()
for i in 0 1 2; do
    dir=$work/rnacos-$i
    mkdir -p "$dir"
    join=()
    if ((i > 0)); then join=(RNACOS_RAFT_JOIN_ADDR=127.0.0.1:$((RN_HTTP + 1000))); fi
    (cd "$dir" && exec env RNACOS_HTTP_PORT=$((RN_HTTP + i)) RNACOS_SDK_HOST=127.0.0.1 \
        RNACOS_CONSOLE_HOST=127.0.0.1 RNACOS_DATA_DIR="$dir/data" \
        RNACOS_RAFT_NODE_ID=$((i + 1)) RNACOS_RAFT_NODE_ADDR=127.0.0.1:$((RN_HTTP + 1000 + i)) \
        RNACOS_RAFT_AUTO_INIT=$([[ $i == 0 ]] && echo true || echo false) "${join[@]}" \
        RNACOS_NAMING_HEALTH_TIMEOUT_SECOND=3600 RNACOS_NAMING_INSTANCE_TIMEOUT_SECOND=3600 \
        RUST_LOG=warn "$RNACOS" >"$dir/log" 2>&1) &
    pids+=($!)
    node_pids+=($!)
    addrs+=("127.0.0.1:$((RN_HTTP + i))")
    # Node 1 forms the raft group before the others join it.
    ((i > 0)) || { wait_http "127.0.0.1:$RN_HTTP"; sleep 2; }
done
wait_http "${addrs[@]}"
sleep 3
rnacos_json=$(measure r-nacos "${addrs[*]}" "${node_pids[*]}")
stop_all
fi

# --- Distro -----------------------------------------------------------------------------------
if [[ $SYSTEMS == *distro* ]]; then
log "starting a 3-node Distro cluster"
members=127.0.0.1:$DS_PEER,127.0.0.1:$((DS_PEER + 1)),127.0.0.1:$((DS_PEER + 2))
addrs=() node_pids=()
for i in 0 1 2; do
    "$DISTROD" --node-id $((i + 1)) --listen 127.0.0.1:$((DS_CLIENT + i)) \
        --peer-listen 127.0.0.1:$((DS_PEER + i)) --members "$members" \
        --nacos-listen 127.0.0.1:$((DS_NACOS + i)) --http off --log-level warn >"$work/distrod-$i.log" 2>&1 &
    pids+=($!)
    node_pids+=($!)
    addrs+=("127.0.0.1:$((DS_NACOS + i))")
done
wait_http "${addrs[@]}"
for a in "${addrs[@]}"; do
    until curl -sf -o /dev/null "http://$a/nacos/v1/console/health/readiness"; do sleep 0.5; done
done
distro_json=$(measure distro "${addrs[*]}" "${node_pids[*]}")
stop_all
fi

[[ -z $rnacos_json ]] || echo "$rnacos_json"
[[ -z $distro_json ]] || echo "$distro_json"
[[ -n $rnacos_json && -n $distro_json ]] || exit 0
python3 - "$rnacos_json" "$distro_json" <<'EOF'
import json, sys
r, d = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for k in ("register_per_s", "beat_per_s", "list_per_s"):
    print(f"-- {k}: Distro {d[k]} vs r-nacos {r[k]}: {d[k] / max(r[k], 1):.2f}x", file=sys.stderr)
b = "bytes_per_instance_per_node"
print(f"-- memory: Distro {d[b]} vs r-nacos {r[b]} bytes per instance per node: "
      f"{r[b] / max(d[b], 1):.2f}x less", file=sys.stderr)
EOF
