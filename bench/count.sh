#!/usr/bin/env bash
# bench/count.sh: instruction counts (valgrind callgrind, user space only) per layer-4
# connection, for Gatehouse and HAProxy, on loopback. Counts, not timings: they hold on a busy
# machine where wall-clock figures do not.
#
# Each balancer runs under callgrind twice, serving LOW and then HIGH sequential connections
# (connect, 64-byte echo, close; bench/conn_client.py), and the difference of the two totals
# divided by HIGH - LOW is the cost of one connection without start-up and shutdown.
#
# TOOL=strace counts system calls instead (strace -f -c; the kernel's side of the cost that
# callgrind does not see), with the same LOW/HIGH difference, and prints the calls of the HIGH
# run by name.
#
# Knobs: LOW=200 HIGH=2200 WORKERS=2 GATEHOUSE=target/release/gatehouse PEERS="gatehouse haproxy"
#        TOOL=callgrind|strace
set -euo pipefail
LOW=${LOW:-200}
HIGH=${HIGH:-2200}
WORKERS=${WORKERS:-2}
PEERS=${PEERS:-"gatehouse haproxy"}
TOOL=${TOOL:-callgrind}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GATEHOUSE=${GATEHOUSE:-$ROOT/target/release/gatehouse}
PY="python3 $ROOT/bench/conn_client.py"
WORK=$(mktemp -d /tmp/gatehouse-count.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$WORK"/*.callgrind "$KEEP"/ 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
export PATH="$PATH:/usr/sbin"
export TOKIO_WORKER_THREADS=$WORKERS
case $TOOL in
callgrind) command -v valgrind >/dev/null || { echo "count.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; } ;;
strace) command -v strace >/dev/null || { echo "count.sh: strace is not installed (apt-get install strace)" >&2; exit 1; } ;;
*) echo "count.sh: TOOL is callgrind or strace" >&2; exit 1 ;;
esac

$PY echo "$WORK/echo.port" &
PIDS+=($!)
for _ in $(seq 50); do [ -s "$WORK/echo.port" ] && break; sleep 0.1; done
ECHO=127.0.0.1:$(cat "$WORK/echo.port")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 300); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1).close()" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# run NAME N CMD...: total instructions of CMD serving N connections, printed.
run() {
    local name=$1 n=$2 port=$3
    shift 3
    local out="$WORK/$name-$n.$TOOL"
    if [ "$TOOL" = strace ]; then
        strace -f -c -o "$out" "$@" >"$WORK/$name-$n.log" 2>&1 &
    else
        valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$WORK/$name-$n.log" 2>&1 &
    fi
    local pid=$!
    wait_port "$port" || { echo "count.sh: $name did not listen (see $WORK/$name-$n.log)" >&2; cat "$WORK/$name-$n.log" >&2; exit 1; }
    $PY rate "127.0.0.1:$port" "$n" >&2
    if [ "$TOOL" = strace ]; then
        # Stop the traced program, not strace (which would detach and leave it running).
        pkill -TERM -P "$pid" || true
    else
        kill -TERM "$pid"
    fi
    wait "$pid" || true
    if [ "$TOOL" = strace ]; then
        awk '$NF == "total" { print $4 }' "$out"
    else
        sed -n 's/^summary: //p; s/^totals: //p' "$out" | head -1
    fi
}

for peer in $PEERS; do
    port=$(free_port)
    case $peer in
    gatehouse)
        cat >"$WORK/gatehouse.toml" <<TOML
[[listeners]]
name = "rate"
kind = "tcp"
listen = "127.0.0.1:$port"
pool = "echo"
max_connections = 100000

[[pools]]
name = "echo"
[[pools.servers]]
address = "$ECHO"

[access_log]
path = "off"
TOML
        cmd=("$GATEHOUSE" --config "$WORK/gatehouse.toml")
        ;;
    haproxy)
        command -v haproxy >/dev/null || { echo "count.sh: haproxy is not installed; skipped" >&2; continue; }
        cat >"$WORK/haproxy.cfg" <<CFG
global
    nbthread $WORKERS
    maxconn 4000
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend rate
    bind 127.0.0.1:$port
    default_backend echo
backend echo
    server e1 $ECHO
CFG
        cmd=(haproxy -db -f "$WORK/haproxy.cfg")
        ;;
    *) echo "count.sh: unknown peer $peer" >&2; exit 1 ;;
    esac
    lo=$(run "$peer" "$LOW" "$port" "${cmd[@]}")
    hi=$(run "$peer" "$HIGH" "$port" "${cmd[@]}")
    if [ "$TOOL" = strace ]; then
        echo "$peer: $LOW conns $lo calls, $HIGH conns $hi calls, per connection $(( (hi - lo) * 100 / (HIGH - LOW) ))e-2 system calls"
        awk -v n="$HIGH" '$NF != "total" && $4 ~ /^[0-9]+$/ && $4 >= n / 2 { printf "    %-16s %6.2f per connection (HIGH run)\n", $NF, $4 / n }' "$WORK/$peer-$HIGH.strace"
    else
        echo "$peer: $LOW conns $lo Ir, $HIGH conns $hi Ir, per connection $(( (hi - lo) / (HIGH - LOW) )) Ir"
    fi
done
