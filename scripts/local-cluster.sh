#!/usr/bin/env bash
# Runs a Distro cluster of N nodes on this machine's loopback, for trying things out.
#
#   scripts/local-cluster.sh start N     start nodes 1..N (1..20) and wait until all are ready
#   scripts/local-cluster.sh status [N]  one line per node; exit 0 only if every node is ready
#   scripts/local-cluster.sh stop [N]    SIGTERM every node and wait for it to exit
#
# Node i listens on BASE+10*(i-1) for clients, +1 for peers and +2 for the admin HTTP port
# (with the default BASE 8858: node 1 on 8858/8859/8860, node 2 on 8868/8869/8870, ...).
# Each node gets a config file (node-i.toml), a log (node-i.log) and a pid file in the state
# directory.
#
# Environment:
#   DISTRO_BASE_PORT     first client port (default 8858)
#   DISTRO_CLUSTER_DIR   state directory (default target/local-cluster in the repository)
#   DISTRO_BIN           directory with distrod (default target/release, else target/debug;
#                        built with `cargo build --release` when neither has it)
#   DISTRO_CLUSTER_TOKEN the cluster token (default: a random one, kept in the state directory)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
base="${DISTRO_BASE_PORT:-8858}"
dir="${DISTRO_CLUSTER_DIR:-$repo/target/local-cluster}"
# How long start waits for every node to be ready, and stop for every node to exit (s).
ready_timeout_s=60
stop_timeout_s=15
max_nodes=20

usage() {
    echo "usage: $0 start N | status [N] | stop [N]   (N: 1..$max_nodes)" >&2
    exit 2
}

die() {
    echo "local-cluster: $*" >&2
    exit 1
}

client_port() { echo $((base + 10 * ($1 - 1))); }
peer_port() { echo $(($(client_port "$1") + 1)); }
http_port() { echo $(($(client_port "$1") + 2)); }

pid_of() {
    local f="$dir/node-$1.pid"
    [[ -f $f ]] && cat "$f"
}

running() {
    local pid
    pid="$(pid_of "$1")" || return 1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

# The HTTP status of GET $2 on 127.0.0.1:$1, or 000 if nothing answers (bash's /dev/tcp, so no
# curl is needed).
http_status() {
    local status=000
    if exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null; then
        printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
        local line=""
        IFS= read -r -t 2 line <&3 || true
        exec 3>&- 3<&-
        status="$(echo "$line" | awk '{print $2}')"
    fi
    echo "${status:-000}"
}

# Nodes with a state file, when N is not given.
known_nodes() {
    local n=0 f i
    for f in "$dir"/node-*.pid; do
        [[ -e $f ]] || continue
        i="${f##*/node-}"
        i="${i%.pid}"
        ((i > n)) && n=$i
    done
    echo "$n"
}

find_bin() {
    if [[ -n ${DISTRO_BIN:-} ]]; then
        [[ -x $DISTRO_BIN/distrod ]] || die "no distrod in DISTRO_BIN=$DISTRO_BIN"
        echo "$DISTRO_BIN"
    elif [[ -x $repo/target/release/distrod ]]; then
        echo "$repo/target/release"
    elif [[ -x $repo/target/debug/distrod ]]; then
        echo "$repo/target/debug"
    else
        (cd "$repo" && cargo build --release --bin distrod --bin distroctl >&2)
        echo "$repo/target/release"
    fi
}

start() {
    local n=$1 i members="" bin token
    for ((i = 1; i <= n; i++)); do
        running "$i" && die "node $i runs already (pid $(pid_of "$i")); stop the cluster first"
    done
    bin="$(find_bin)"
    mkdir -p "$dir"
    if [[ -n ${DISTRO_CLUSTER_TOKEN:-} ]]; then
        token="$DISTRO_CLUSTER_TOKEN"
    else
        [[ -s $dir/token ]] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$dir/token"
        token="$(cat "$dir/token")"
    fi
    for ((i = 1; i <= n; i++)); do
        members+="${members:+, }\"127.0.0.1:$(peer_port "$i")\""
    done
    for ((i = 1; i <= n; i++)); do
        cat >"$dir/node-$i.toml" <<EOF
# Node $i of a local $n-node cluster (written by scripts/local-cluster.sh).
node_id = $i
listen = "127.0.0.1:$(client_port "$i")"
peer_listen = "127.0.0.1:$(peer_port "$i")"
http = "127.0.0.1:$(http_port "$i")"
members = [$members]
EOF
        DISTRO_CLUSTER_TOKEN="$token" nohup "$bin/distrod" --config "$dir/node-$i.toml" \
            >"$dir/node-$i.log" 2>&1 </dev/null &
        echo $! >"$dir/node-$i.pid"
    done
    local deadline=$((SECONDS + ready_timeout_s)) ready
    while :; do
        ready=0
        for ((i = 1; i <= n; i++)); do
            running "$i" || die "node $i exited; see $dir/node-$i.log: $(tail -n 1 "$dir/node-$i.log")"
            [[ $(http_status "$(http_port "$i")" /ready) == 200 ]] && ready=$((ready + 1))
        done
        ((ready == n)) && break
        ((SECONDS < deadline)) || die "only $ready of $n nodes ready after ${ready_timeout_s}s; logs in $dir"
        sleep 0.2
    done
    echo "$n nodes ready; logs and configs in $dir"
    status "$n"
}

status() {
    local n=$1 i state all_ready=0
    printf '%-5s %-8s %-16s %-16s %-16s %s\n' NODE PID CLIENT PEER HTTP STATE
    for ((i = 1; i <= n; i++)); do
        if ! running "$i"; then
            state=stopped
        else
            case "$(http_status "$(http_port "$i")" /ready)" in
            200) state=ready ;;
            503) state="not ready" ;;
            *) state="not answering" ;;
            esac
        fi
        [[ $state == ready ]] || all_ready=3
        printf '%-5s %-8s %-16s %-16s %-16s %s\n' "$i" "$(pid_of "$i" || echo -)" \
            "127.0.0.1:$(client_port "$i")" "127.0.0.1:$(peer_port "$i")" \
            "127.0.0.1:$(http_port "$i")" "$state"
    done
    return $all_ready
}

stop() {
    local n=$1 i pid deadline
    for ((i = 1; i <= n; i++)); do
        running "$i" && kill -TERM "$(pid_of "$i")"
    done
    deadline=$((SECONDS + stop_timeout_s))
    for ((i = 1; i <= n; i++)); do
        while running "$i"; do
            ((SECONDS < deadline)) || die "node $i (pid $(pid_of "$i")) did not exit within ${stop_timeout_s}s"
            sleep 0.1
        done
        rm -f "$dir/node-$i.pid"
    done
    echo "stopped $n nodes"
}

count() {
    local n="${1:-}"
    if [[ -z $n ]]; then
        n="$(known_nodes)"
        ((n > 0)) || die "no cluster known in $dir"
    fi
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= max_nodes)) || usage
    echo "$n"
}

case "${1:-}" in
start)
    [[ $# -eq 2 ]] || usage
    start "$(count "$2")"
    ;;
status)
    [[ $# -le 2 ]] || usage
    status "$(count "${2:-}")"
    ;;
stop)
    [[ $# -le 2 ]] || usage
    stop "$(count "${2:-}")"
    ;;
*) usage ;;
esac
