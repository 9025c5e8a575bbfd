#!/usr/bin/env bash
# bench/count-reverse.sh: instruction counts (valgrind callgrind, user space only) per HTTP/1.1
# keep-alive request through a reverse proxy, for Gatehouse, nginx and HAProxy, on loopback.
# Counts, not timings: they hold on a busy machine where wall-clock figures do not.
#
# The origin is a plain nginx serving a 1 KiB file (as in bench/reverse.sh; not measured). Each
# proxy runs under callgrind twice, serving LOW and then HIGH sequential GETs on one keep-alive
# client connection (bench/conn_client.py rget), and the difference of the two totals divided
# by HIGH - LOW is the cost of one request without start-up, the first upstream connection and
# shutdown. nginx runs with master_process off (one process, so callgrind sees the worker).
#
# PROTO=h2c: HTTP/2 with prior knowledge from h2load instead, on ONE client connection with
# STREAMS concurrent streams (-c1 -mSTREAMS; 1: sequential, e.g. 10: multiplexed); the origin
# stays HTTP/1.1.
#
# TOOL=strace counts system calls instead (strace -f -c; the kernel's side of the cost that
# callgrind does not see), with the same LOW/HIGH difference, and prints the calls of the HIGH
# run by name.
#
# Knobs: LOW=200 HIGH=2200 WORKERS=1 GATEHOUSE=target/release/gatehouse PROTO=h1|h2c STREAMS=1
#        PEERS="gatehouse nginx haproxy" TOOL=callgrind|strace KEEP=dir (keep the outputs)
#        CONNS=1 SIM=0|1
#
# CONNS=64 SIM=1 (h1 on 64 connections, h2load --h1, with the simulated caches) is what
# docs/benchmarks.md compares the proxies' instruction-cache misses with.
set -euo pipefail
LOW=${LOW:-200}
HIGH=${HIGH:-2200}
WORKERS=${WORKERS:-1}
PEERS=${PEERS:-"gatehouse nginx haproxy"}
TOOL=${TOOL:-callgrind}
PROTO=${PROTO:-h1}
STREAMS=${STREAMS:-1}
# CONNS (h1 only): keep-alive client connections served at once, as under load (the data
# the proxy touches per request then no longer stays in the caches between requests).
CONNS=${CONNS:-1}
# SIM=1: callgrind also simulates the caches (I1, D1, last level) and the branch predictor,
# and each of those events is printed per request: Ir (instructions), Dr/Dw (data reads and
# writes), I1mr (instruction fetches missing the 32 KiB first-level cache), D1mr/D1mw, the
# last-level misses, Bc/Bcm (conditional branches, mispredicted), Bi/Bim (indirect). What
# the code's size and layout cost, which the instruction count alone does not show.
SIM_ARGS=""
[ "${SIM:-0}" = 1 ] && SIM_ARGS="--cache-sim=yes --branch-sim=yes"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GATEHOUSE=${GATEHOUSE:-$ROOT/target/release/gatehouse}
PY="python3 $ROOT/bench/conn_client.py"
WORK=$(mktemp -d /tmp/gatehouse-count-reverse.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$WORK"/*.callgrind "$WORK"/*.strace "$KEEP"/ 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
export PATH="$PATH:/usr/sbin"
export TOKIO_WORKER_THREADS=$WORKERS
case $TOOL in
callgrind) command -v valgrind >/dev/null || { echo "count-reverse.sh: valgrind is not installed" >&2; exit 1; } ;;
strace) command -v strace >/dev/null || { echo "count-reverse.sh: strace is not installed" >&2; exit 1; } ;;
*) echo "count-reverse.sh: TOOL is callgrind or strace" >&2; exit 1 ;;
esac
command -v nginx >/dev/null || { echo "count-reverse.sh: nginx (the origin) is not installed" >&2; exit 1; }
[ "$PROTO" != h2c ] && [ "$CONNS" = 1 ] || command -v h2load >/dev/null || { echo "count-reverse.sh: h2load (nghttp2-client) is not installed" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 300); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1).close()" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

mkdir -p "$WORK/www" "$WORK/origin" "$WORK/proxy"
head -c 1024 /dev/zero | tr '\0' 'x' >"$WORK/www/small"
P_ORIGIN=$(free_port)
cat >"$WORK/origin.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$P_ORIGIN;
        root $WORK/www;
    }
}
CONF
nginx -c "$WORK/origin.conf" -p "$WORK/origin" >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
wait_port "$P_ORIGIN" || { echo "count-reverse.sh: the origin did not listen" >&2; exit 1; }

# run NAME N PORT CMD...: total instructions (or system calls) of CMD serving N requests, printed.
run() {
    local name=$1 n=$2 port=$3
    shift 3
    local out="$WORK/$name-$n.$TOOL"
    if [ "$TOOL" = strace ]; then
        strace -f -c -o "$out" "$@" >"$WORK/$name-$n.log" 2>&1 &
    else
        # shellcheck disable=SC2086
        valgrind --tool=callgrind $SIM_ARGS --callgrind-out-file="$out" "$@" >"$WORK/$name-$n.log" 2>&1 &
    fi
    local pid=$!
    wait_port "$port" || { echo "count-reverse.sh: $name did not listen" >&2; cat "$WORK/$name-$n.log" >&2; exit 1; }
    if [ "$PROTO" = h2c ] || [ "$CONNS" -gt 1 ]; then
        # h2c: one connection (the readiness probe above was a separate, already closed
        # one); h1 with CONNS > 1: that many keep-alive connections, one request at a time
        # on each (h2load --h1).
        local mode=(-c 1 -m "$STREAMS")
        [ "$PROTO" = h2c ] || mode=(--h1 -c "$CONNS" -m 1)
        h2load -n "$n" "${mode[@]}" -H ':authority: app.test' \
            "http://127.0.0.1:$port/small" >"$WORK/$name-$n.h2load" 2>&1 ||
            { cat "$WORK/$name-$n.h2load" >&2; exit 1; }
        grep -q "requests: $n total, $n started, $n done, $n succeeded" "$WORK/$name-$n.h2load" ||
            { echo "count-reverse.sh: $name did not answer every request" >&2; cat "$WORK/$name-$n.h2load" >&2; exit 1; }
    else
        $PY rget "127.0.0.1:$port" app.test /small "$n" >&2
    fi
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
name = "rev"
kind = "reverse"
listen = "127.0.0.1:$port"
max_connections = 10000
idle_per_server = 256
$( [ "$PROTO" = h2c ] && printf '[listeners.http2]\nh2c = true' )
[[listeners.hosts]]
names = ["app.test"]
[[listeners.hosts.routes]]
pool = "origin"

[[pools]]
name = "origin"
[[pools.servers]]
address = "127.0.0.1:$P_ORIGIN"

[access_log]
path = "off"
TOML
        cmd=("$GATEHOUSE" --config "$WORK/gatehouse.toml")
        ;;
    nginx)
        cat >"$WORK/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    http2_max_requests 1000000;
    upstream origin {
        server 127.0.0.1:$P_ORIGIN;
        keepalive 256;
    }
    server {
        listen 127.0.0.1:$port$( [ "$PROTO" = h2c ] && echo ' http2');
        server_name app.test;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
CONF
        cmd=(nginx -c "$WORK/nginx.conf" -p "$WORK/proxy")
        ;;
    haproxy)
        command -v haproxy >/dev/null || { echo "count-reverse.sh: haproxy is not installed; skipped" >&2; continue; }
        cat >"$WORK/haproxy.cfg" <<CFG
global
    nbthread $WORKERS
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend web
    bind 127.0.0.1:$port$( [ "$PROTO" = h2c ] && echo ' proto h2')
    default_backend origin
backend origin
    server o1 127.0.0.1:$P_ORIGIN
CFG
        cmd=(haproxy -db -f "$WORK/haproxy.cfg")
        ;;
    *) echo "count-reverse.sh: unknown peer $peer" >&2; exit 1 ;;
    esac
    lo=$(run "$peer" "$LOW" "$port" "${cmd[@]}")
    hi=$(run "$peer" "$HIGH" "$port" "${cmd[@]}")
    if [ "$TOOL" = strace ]; then
        echo "$peer ($PROTO, -m$STREAMS): $LOW requests $lo calls, $HIGH requests $hi calls, per request $(( (hi - lo) * 100 / (HIGH - LOW) ))e-2 system calls"
        # Calls made at least every other request (h1), or every tenth (h2c: a write serves
        # several multiplexed streams).
        awk -v n="$HIGH" -v every="$( [ "$PROTO" = h2c ] && echo 10 || echo 2)" '$NF != "total" && $4 ~ /^[0-9]+$/ && $4 >= n / every { printf "    %-16s %6.2f per request (HIGH run)\n", $NF, $4 / n }' "$WORK/$peer-$HIGH.strace"
    else
        if [ "${SIM:-0}" = 1 ]; then
            # Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim, each per request.
            awk -v lo="$lo" -v hi="$hi" -v n=$((HIGH - LOW)) -v peer="$peer ($PROTO, -c$CONNS -m$STREAMS)" 'BEGIN {
                split("Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim", e, " ")
                split(lo, a, " "); split(hi, b, " ")
                printf "%s per request (simulated caches and branch predictor):", peer
                for (i = 1; i <= 13; i++) printf " %s %.0f", e[i], (b[i] - a[i]) / n
                printf "\n"
            }'
        else
            echo "$peer ($PROTO, -m$STREAMS): $LOW requests $lo Ir, $HIGH requests $hi Ir, per request $(( (hi - lo) / (HIGH - LOW) )) Ir"
        fi
    fi
done
