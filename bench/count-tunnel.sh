#!/usr/bin/env bash
# bench/count-tunnel.sh: instruction counts (valgrind callgrind, user space only) or system
# calls (strace -f -c) per short HTTP request through a published port of a reverse tunnel, for
# Gatehouse (TLS and plain transports) and rathole, on loopback. Counts, not timings: they hold
# on a busy machine where wall-clock figures do not.
#
# The origin is a plain nginx serving a SIZE-byte file (1 KiB; bench/tunnel.sh uses 100) behind the agent (rathole: its client). The
# relay and the agent (rathole's server and client) both run under the tool, twice: serving LOW
# and then HIGH GETs, and the difference of the two totals (relay + agent) divided by
# HIGH - LOW is the cost of one request on both sides without start-up, the link's handshake
# and shutdown. The relay's and the agent's shares are printed too.
#
# CONC=1 (default): sequential GETs on one keep-alive client connection
# (bench/conn_client.py rget). CONC=N: h2load --h1 with N keep-alive client connections at once
# (each one a stream of the tunnel), so frames of several streams share reads and writes.
#
# TOOL=cpu: no tool; the user + system CPU time the processes used (from /proc/PID/stat), per
# request: a timing after all (clock-tick resolution, so use large LOW/HIGH, e.g. 20000/220000),
# but of CPU spent, not of throughput; the kernel's share of the relaying is in it. CPU=user or
# CPU=sys counts only that part.
#
# Knobs: LOW=200 HIGH=2200 CONC=1 SIZE=1024 WORKERS=2 GATEHOUSE=target/release/gatehouse
#        PEERS="gatehouse gatehouse-plain rathole" TOOL=callgrind|strace|cpu KEEP=dir
# All traffic stays on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail
LOW=${LOW:-200}
HIGH=${HIGH:-2200}
CONC=${CONC:-1}
SIZE=${SIZE:-1024}
WORKERS=${WORKERS:-2}
PEERS=${PEERS:-"gatehouse gatehouse-plain rathole"}
TOOL=${TOOL:-callgrind}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GATEHOUSE=${GATEHOUSE:-$ROOT/target/release/gatehouse}
PY="python3 $ROOT/bench/conn_client.py"
WORK=$(mktemp -d /tmp/gatehouse-count-tunnel.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$WORK"/*.callgrind* "$WORK"/*.strace "$KEEP"/ 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"
export TOKIO_WORKER_THREADS=$WORKERS
die() { echo "count-tunnel.sh: $*" >&2; exit 1; }
case $TOOL in
callgrind) command -v valgrind >/dev/null || die "valgrind is not installed" ;;
strace) command -v strace >/dev/null || die "strace is not installed" ;;
cpu) ;;
*) die "TOOL is callgrind, strace or cpu" ;;
esac
command -v nginx >/dev/null || die "nginx (the origin) is not installed"
[ "$CONC" = 1 ] || command -v h2load >/dev/null || die "h2load (nghttp2-client) is not installed"
[[ " $PEERS " != *" rathole "* ]] || command -v rathole >/dev/null || die "rathole is not installed (cargo install rathole)"
[ -x "$GATEHOUSE" ] || die "no gatehouse binary at $GATEHOUSE (cargo build --release)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 300); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1).close()" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
# wait_http PORT: the tunnel is up once a GET through it is answered.
wait_http() {
    for _ in $(seq 600); do
        curl -s -o /dev/null -f -m 2 "http://127.0.0.1:$1/small" && return 0
        sleep 0.1
    done
    return 1
}

mkdir -p "$WORK/www" "$WORK/origin"
head -c "$SIZE" /dev/zero | tr '\0' 'x' >"$WORK/www/small"
P_ORIGIN=$(free_port)
cat >"$WORK/origin.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/error.log warn;
events { worker_connections 4096; }
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
wait_port "$P_ORIGIN" || die "the origin did not listen"
"$GATEHOUSE" cert --name relay.test --out "$WORK/tunnel" >"$WORK/cert.out" 2>&1
TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

# under NAME CMD...: CMD under the tool, in the background; its pid in $UNDER.
under() {
    local name=$1
    shift
    if [ "$TOOL" = strace ]; then
        strace -f -c -o "$WORK/$name.strace" "$@" >"$WORK/$name.log" 2>&1 &
    elif [ "$TOOL" = cpu ]; then
        "$@" >"$WORK/$name.log" 2>&1 &
    else
        valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.callgrind" "$@" >"$WORK/$name.log" 2>&1 &
    fi
    UNDER=$!
    PIDS+=("$UNDER")
}
stop() {
    if [ "$TOOL" = cpu ]; then
        # user and/or system CPU time in clock ticks (CPU=all|user|sys), read before the
        # process ends
        awk -v which="${CPU:-all}" '{ print which == "user" ? $14 : which == "sys" ? $15 : $14 + $15 }' \
            "/proc/$1/stat" >"$WORK/$2.cpu"
    fi
    if [ "$TOOL" = strace ]; then
        # Stop the traced program, not strace (which would detach and leave it running).
        pkill -TERM -P "$1" || true
    else
        kill -TERM "$1" || true
    fi
    wait "$1" || true
}
total() {
    if [ "$TOOL" = cpu ]; then
        # microseconds
        echo $(( $(cat "$WORK/$1.cpu") * 1000000 / $(getconf CLK_TCK) ))
    elif [ "$TOOL" = strace ]; then
        awk '$NF == "total" { print $4 }' "$WORK/$1.strace"
    else
        sed -n 's/^summary: //p; s/^totals: //p' "$WORK/$1.callgrind" | head -1
    fi
}

# run PEER N: serves N requests through PEER's published port; prints "relay agent" totals.
run() {
    local peer=$1 n=$2 ctrl web relay agent
    ctrl=$(free_port)
    web=$(free_port)
    case $peer in
    gatehouse | gatehouse-plain)
        local tr ta
        if [ "$peer" = gatehouse-plain ]; then
            tr='transport = "tcp"'
            ta='transport = "tcp"'
        else
            tr="tls = { cert = \"$WORK/tunnel/relay.test.crt\", key = \"$WORK/tunnel/relay.test.key\" }"
            ta="server_name = \"relay.test\"
ca = \"$WORK/tunnel/relay.test.crt\""
        fi
        cat >"$WORK/relay.toml" <<EOF
[[listeners]]
name = "agents"
kind = "tunnel"
listen = "127.0.0.1:$ctrl"
$tr
[[listeners.agents]]
name = "bench"
token = "$TOKEN"

[[listeners]]
name = "web"
kind = "published"
listen = "127.0.0.1:$web"
agent = "bench"
service = "web"
max_connections = 100000

[access_log]
path = "off"
EOF
        cat >"$WORK/agent.toml" <<EOF
[agent]
name = "bench"
token = "$TOKEN"
relays = ["127.0.0.1:$ctrl"]
$ta
[agent.publish]
web = "127.0.0.1:$P_ORIGIN"

[access_log]
path = "off"
EOF
        under "$peer-$n-relay" "$GATEHOUSE" --config "$WORK/relay.toml"
        relay=$UNDER
        wait_port "$ctrl" || die "the $peer relay did not listen (see $WORK)"
        under "$peer-$n-agent" "$GATEHOUSE" agent --config "$WORK/agent.toml"
        agent=$UNDER
        ;;
    rathole)
        cat >"$WORK/rathole-server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$ctrl"
[server.services.web]
token = "$TOKEN"
bind_addr = "127.0.0.1:$web"
EOF
        cat >"$WORK/rathole-client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$ctrl"
[client.services.web]
token = "$TOKEN"
local_addr = "127.0.0.1:$P_ORIGIN"
EOF
        under "$peer-$n-relay" rathole --server "$WORK/rathole-server.toml"
        relay=$UNDER
        wait_port "$ctrl" || die "the rathole server did not listen (see $WORK)"
        under "$peer-$n-agent" rathole --client "$WORK/rathole-client.toml"
        agent=$UNDER
        ;;
    *) die "unknown peer $peer" ;;
    esac
    wait_http "$web" || die "the $peer tunnel did not come up (see $WORK)"
    if [ "$CONC" = 1 ]; then
        $PY rget "127.0.0.1:$web" app.test /small "$n" >&2
    else
        h2load --h1 -n "$n" -c "$CONC" "http://127.0.0.1:$web/small" >"$WORK/$peer-$n.h2load" 2>&1 ||
            { cat "$WORK/$peer-$n.h2load" >&2; exit 1; }
        grep -q "requests: $n total, $n started, $n done, $n succeeded" "$WORK/$peer-$n.h2load" ||
            { echo "count-tunnel.sh: $peer did not answer every request" >&2; cat "$WORK/$peer-$n.h2load" >&2; exit 1; }
    fi
    stop "$agent" "$peer-$n-agent"
    stop "$relay" "$peer-$n-relay"
    echo "$(total "$peer-$n-relay") $(total "$peer-$n-agent")"
}

case $TOOL in strace) unit="system calls" ;; cpu) case ${CPU:-all} in user) unit="µs of user CPU" ;; sys) unit="µs of system CPU" ;; *) unit="µs of CPU (user + system)" ;; esac ;; *) unit=Ir ;; esac
for peer in $PEERS; do
    read -r lo_r lo_a <<<"$(run "$peer" "$LOW")"
    read -r hi_r hi_a <<<"$(run "$peer" "$HIGH")"
    d=$((HIGH - LOW))
    if [ "$TOOL" != callgrind ]; then
        per() { awk -v a="$1" -v b="$2" -v d="$d" 'BEGIN { printf "%.2f", (b - a) / d }'; }
    else
        per() { echo $(( ($2 - $1) / d )); }
    fi
    echo "$peer (CONC=$CONC): per request $(per $((lo_r + lo_a)) $((hi_r + hi_a))) $unit (relay $(per "$lo_r" "$hi_r"), agent $(per "$lo_a" "$hi_a"))"
done
