#!/usr/bin/env bash
# bench/tcp.sh: Gatehouse `tcp` listeners beside HAProxy (`mode tcp`, splice on) and nginx
# `stream` as layer-4 TCP balancers, on loopback.
#
# Measures, with the same load client (bench/loadgen) and the same source/echo servers, every
# balancer with a one-server pool and the same number of workers (WORKERS: Gatehouse's tokio
# worker threads, HAProxy's nbthread, nginx's worker_processes):
#   1. single-stream bulk throughput: BYTES from a source server through each balancer, against
#      the same stream sent directly over loopback;
#   2. connections/s: COUNT connections, CONC at a time, each connect + a 64-byte echo + close;
#      failed connections are counted.
# Each measurement runs RUNS times (balancers interleaved); medians are printed as a markdown
# table at the end; raw outputs land in bench/results/tcp-<time>/.
#
# Needs root for apt-get (only when haproxy or nginx is missing). All traffic stays on
# 127.0.0.1; every load is bounded in bytes or count (and in time); every process started here
# is killed on exit.
#
# Knobs (environment): RUNS=3 BYTES=4294967296 COUNT=20000 CONC=50 WORKERS=2 NICE=0
set -euo pipefail

RUNS=${RUNS:-3}
BYTES=${BYTES:-4294967296}
COUNT=${COUNT:-20000}
CONC=${CONC:-50}
WORKERS=${WORKERS:-2}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS="$ROOT/bench/results/tcp-$STAMP"
WORK=$(mktemp -d /tmp/gatehouse-tcp-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()

cleanup() {
    local p
    # Each server runs in its own process group (setsid): end the group, children included.
    for p in "${PIDS[@]}"; do
        kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    mkdir -p "$RESULTS"
    cp "$WORK"/*.out "$WORK"/*.conf "$WORK"/*.cfg "$WORK"/*.toml "$WORK"/*.log "$RESULTS"/ 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'tcp.sh: %s\n' "$*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------------

export PATH="$PATH:/usr/sbin"
if ! command -v haproxy >/dev/null || ! command -v nginx >/dev/null; then
    log "installing haproxy nginx"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx >/dev/null
fi
command -v haproxy >/dev/null || die "haproxy is not installed"
command -v nginx >/dev/null || die "nginx is not installed"
# Debian's nginx builds the stream module as a dynamic module (`--with-stream=dynamic`,
# package libnginx-mod-stream); a build with it static needs no load_module.
STREAM_SO=/usr/lib/nginx/modules/ngx_stream_module.so
STREAM_MODULE=""
if nginx -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
    if [ ! -f "$STREAM_SO" ]; then
        log "installing libnginx-mod-stream"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-stream >/dev/null
    fi
    [ -f "$STREAM_SO" ] || die "nginx's stream module is not installed"
    STREAM_MODULE="load_module $STREAM_SO;"
fi

# GATEHOUSE=path/to/binary skips building it (e.g. a copy of the commit under test).
if [ -z "${GATEHOUSE:-}" ]; then
    log "building gatehouse (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin gatehouse)
    GATEHOUSE="$ROOT/target/release/gatehouse"
fi
[ -x "$GATEHOUSE" ] || die "no gatehouse binary at $GATEHOUSE"
log "building bench/loadgen (release)"
cargo build --release --quiet --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
LG="$ROOT/bench/loadgen/target/release/loadgen"

# --- servers ---------------------------------------------------------------------------------

# Servers and the load client run at priority NICE (default 0; a negative value needs root),
# the same for all, so other work on the machine disturbs the figures less.
NICE=${NICE:-0}
run_nice() { nice -n "$NICE" "$@"; }

# start NAME CMD...: runs CMD in its own process group, output to $WORK/NAME.log.
start() {
    local name=$1
    shift
    setsid nice -n "$NICE" "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
}

start "source" "$LG" source --listen 127.0.0.1:0
start "echo" "$LG" echo --listen 127.0.0.1:0

# The address a loadgen server printed once listening.
helper_addr() {
    local i
    for i in $(seq 100); do
        if grep -q '^listening ' "$WORK/$1.log" 2>/dev/null; then
            sed -n 's/^listening //p' "$WORK/$1.log" | head -1
            return
        fi
        sleep 0.1
    done
    die "$1 did not start"
}
SOURCE=$(helper_addr source)
ECHO=$(helper_addr echo)

# Two listeners per balancer: one in front of the source server, one in front of the echo
# server.
GH_T=$("$LG" free-port)
GH_R=$("$LG" free-port)
cat >"$WORK/gatehouse.toml" <<EOF
[[listeners]]
name = "bulk"
kind = "tcp"
listen = "127.0.0.1:$GH_T"
pool = "source"
max_connections = 100000

[[listeners]]
name = "rate"
kind = "tcp"
listen = "127.0.0.1:$GH_R"
pool = "echo"
max_connections = 100000

[[pools]]
name = "source"
[[pools.servers]]
address = "$SOURCE"

[[pools]]
name = "echo"
[[pools.servers]]
address = "$ECHO"

[access_log]
path = "off"
EOF
start gatehouse env TOKIO_WORKER_THREADS="$WORKERS" "$GATEHOUSE" --config "$WORK/gatehouse.toml"

HA_T=$("$LG" free-port)
HA_R=$("$LG" free-port)
cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    # HAProxy sizes its descriptor limit from maxconn (two per connection, plus splice pipes).
    maxconn 4000
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend bulk
    bind 127.0.0.1:$HA_T
    default_backend source
frontend rate
    bind 127.0.0.1:$HA_R
    default_backend echo
backend source
    server s1 $SOURCE
backend echo
    server e1 $ECHO
EOF
start haproxy haproxy -db -f "$WORK/haproxy.cfg"

NG_T=$("$LG" free-port)
NG_R=$("$LG" free-port)
cat >"$WORK/nginx.conf" <<EOF
$STREAM_MODULE
daemon off;
master_process on;
worker_processes $WORKERS;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 8000; }
stream {
    upstream source { server $SOURCE; }
    upstream echo { server $ECHO; }
    server { listen 127.0.0.1:$NG_T; proxy_pass source; }
    server { listen 127.0.0.1:$NG_R; proxy_pass echo; }
}
EOF
cp "$WORK/nginx.conf" "$WORK/nginx.conf.out"
start nginx nginx -c "$WORK/nginx.conf" -p "$WORK"

for port in "$GH_T" "$GH_R" "$HA_T" "$HA_R" "$NG_T" "$NG_R"; do
    "$LG" wait-port --addr "127.0.0.1:$port" || die "nothing listening on $port (see $WORK)"
done

declare -A BULK=(
    [direct]="$SOURCE"
    [gatehouse]="127.0.0.1:$GH_T"
    [haproxy]="127.0.0.1:$HA_T"
    [nginx]="127.0.0.1:$NG_T"
)
declare -A RATE=(
    [direct]="$ECHO"
    [gatehouse]="127.0.0.1:$GH_R"
    [haproxy]="127.0.0.1:$HA_R"
    [nginx]="127.0.0.1:$NG_R"
)
NAMES=(direct gatehouse haproxy nginx)

# field FILE KEY: the value of KEY=... on the last line of FILE.
field() { tail -1 "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 1. throughput ---------------------------------------------------------------------------
# loadgen's socks-throughput without --proxy connects straight to --target: here the balancer.

for run in $(seq "$RUNS"); do
    for name in "${NAMES[@]}"; do
        log "throughput run $run/$RUNS: $name"
        run_nice "$LG" socks-throughput --target "${BULK[$name]}" --bytes "$BYTES" \
            >"$WORK/tput-$name-$run.out"
        cat "$WORK/tput-$name-$run.out" >&2
    done
done

# --- 2. connection rate ----------------------------------------------------------------------

for run in $(seq "$RUNS"); do
    for name in "${NAMES[@]}"; do
        log "connection rate run $run/$RUNS: $name"
        run_nice "$LG" socks-rate --target "${RATE[$name]}" --count "$COUNT" --concurrency "$CONC" \
            >"$WORK/rate-$name-$run.out"
        cat "$WORK/rate-$name-$run.out" >&2
    done
done

# --- report ----------------------------------------------------------------------------------

DIRECT=$(for r in $(seq "$RUNS"); do field "$WORK/tput-direct-$r.out" MiB_per_s; done | median)
{
    echo "Machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), Linux $(uname -r); $(date -u +%Y-%m-%d)."
    echo "Versions: $(haproxy -v 2>&1 | head -1); $(nginx -v 2>&1)."
    echo "Settings: RUNS=$RUNS BYTES=$BYTES COUNT=$COUNT CONC=$CONC WORKERS=$WORKERS NICE=$NICE; medians of $RUNS runs; load average before: $LOAD."
    echo
    echo "| balancer | bulk throughput (Gbit/s) | % of direct | connections/s | failed | p50 ms | p99 ms |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for name in "${NAMES[@]}"; do
        t=$(for r in $(seq "$RUNS"); do field "$WORK/tput-$name-$r.out" MiB_per_s; done | median)
        c=$(for r in $(seq "$RUNS"); do field "$WORK/rate-$name-$r.out" conn_per_s; done | median)
        f=$(for r in $(seq "$RUNS"); do field "$WORK/rate-$name-$r.out" failed; done | awk '{ s += $1 } END { print s + 0 }')
        p50=$(for r in $(seq "$RUNS"); do field "$WORK/rate-$name-$r.out" p50_ms; done | median)
        p99=$(for r in $(seq "$RUNS"); do field "$WORK/rate-$name-$r.out" p99_ms; done | median)
        gbit=$(awk -v a="$t" 'BEGIN { printf "%.1f", a * 1048576 * 8 / 1e9 }')
        pct=$(awk -v a="$t" -v b="$DIRECT" 'BEGIN { printf "%.0f%%", 100 * a / b }')
        [ "$name" = direct ] && name="direct (no balancer)"
        echo "| $name | $gbit | $pct | $c | $f | $p50 | $p99 |"
    done
    echo
    echo "\"failed\" is the total over all runs. Direct row: the same client straight to the source or echo server."
} | tee "$WORK/summary.out"
