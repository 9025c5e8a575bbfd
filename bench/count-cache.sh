#!/usr/bin/env bash
# bench/count-cache.sh: instructions (valgrind callgrind, user space) and system calls
# (strace -f -c) per cache hit of a 1 MiB object, Gatehouse as a caching forward proxy, on
# loopback. Counts, not timings: they hold on a busy machine.
#
# Gatehouse runs under callgrind twice, answering LOW and then HIGH hits of /1m (after one
# miss that stores it) on one keep-alive connection (bench/conn_client.py get); the difference
# of the totals over HIGH - LOW is one hit. Then once under strace for HIGH hits.
#
# Knobs: LOW=20 HIGH=220 TIER=memory|disk OBJECT=1m GATEHOUSE=target/release/gatehouse
set -euo pipefail
LOW=${LOW:-20}
HIGH=${HIGH:-220}
TIER=${TIER:-memory}
OBJECT=${OBJECT:-1m}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GATEHOUSE=${GATEHOUSE:-$ROOT/target/release/gatehouse}
PY="python3 $ROOT/bench/conn_client.py"
WORK=$(mktemp -d /tmp/gatehouse-count-cache.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
export TOKIO_WORKER_THREADS=2
for t in valgrind strace; do
    command -v $t >/dev/null || { echo "count-cache.sh: $t is not installed" >&2; exit 1; }
done

$PY origin "$WORK/origin.port" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/origin.port" ] && break; sleep 0.1; done
ORIGIN=127.0.0.1:$(cat "$WORK/origin.port")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
case $TIER in
memory) TIERCFG='memory_size = "256MiB"' ;;
disk) TIERCFG='memory_size = "0"
disk_size = "1GiB"' ;;
*) echo "count-cache.sh: TIER is memory or disk" >&2; exit 1 ;;
esac
wait_port() {
    for _ in $(seq 300); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1).close()" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# run KIND N: starts gatehouse under KIND (callgrind or strace) with a fresh cache, one miss,
# N hits; prints the callgrind total or leaves the strace summary in $WORK/strace.out.
run() {
    local kind=$1 n=$2
    rm -rf "$WORK/cache"
    mkdir -p "$WORK/cache"
    cat >"$WORK/gatehouse.toml" <<TOML
[[listeners]]
name = "bench"
kind = "http"
listen = "127.0.0.1:$PORT"
cache = true

[cache]
enabled = true
$TIERCFG
disk_dir = "$WORK/cache"
max_object_size = "16MiB"

[access_log]
path = "off"

[[policy.rules]]
name = "bench-origin"
action = "allow"
dest_addrs = ["127.0.0.0/8"]
TOML
    [ "$TIER" = memory ] && sed -i '/^disk_dir/d' "$WORK/gatehouse.toml"
    case $kind in
    callgrind) valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$GATEHOUSE" --config "$WORK/gatehouse.toml" >"$WORK/gh.log" 2>&1 & ;;
    strace) strace -f -c -o "$WORK/strace.out" "$GATEHOUSE" --config "$WORK/gatehouse.toml" >"$WORK/gh.log" 2>&1 & ;;
    esac
    local pid=$!
    wait_port "$PORT" || { cat "$WORK/gh.log" >&2; exit 1; }
    $PY get "127.0.0.1:$PORT" "http://$ORIGIN/$OBJECT" 1 >&2
    sleep 1 # the disk write finishes off the request path
    $PY get "127.0.0.1:$PORT" "http://$ORIGIN/$OBJECT" "$n" >&2
    local gh
    gh=$(pgrep -n -P "$pid" || echo "$pid")
    kill -TERM "$gh" "$pid" 2>/dev/null || true
    wait "$pid" || true
    if [ "$kind" = callgrind ] && [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$WORK/cg.out" "$KEEP/$TIER-$n.callgrind"; fi
    [ "$kind" = callgrind ] && sed -n 's/^summary: //p; s/^totals: //p' "$WORK/cg.out" | head -1
    return 0
}

lo=$(run callgrind "$LOW")
hi=$(run callgrind "$HIGH")
echo "gatehouse $TIER /$OBJECT: $LOW hits $lo Ir, $HIGH hits $hi Ir, per hit $(( (hi - lo) / (HIGH - LOW) )) Ir"
run strace "$HIGH"
awk -v n="$HIGH" 'NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ { printf "  %s %.1f per hit\n", $NF, $4 / n }' "$WORK/strace.out" | sort -k2 -g -r | head -12
