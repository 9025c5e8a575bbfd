#!/usr/bin/env bash
# bench/reverse.sh: Gatehouse's `reverse` listener beside nginx (`proxy_pass` to an upstream
# with `keepalive`) and HAProxy (`mode http`, connection reuse) as HTTP/1.1 reverse proxies,
# on loopback, one worker each (WORKERS: Gatehouse's tokio worker threads, nginx's
# worker_processes, HAProxy's nbthread).
#
# Same origin for all (a separate nginx serving a 1 KiB file), same load: wrk over HTTP/1.1
# keep-alive, RUNS runs per proxy, interleaved, plus the origin directly. Per run: requests/s,
# p99 latency, and the proxy's CPU time per request (user + system, from /proc). Medians are
# printed as a markdown table; raw outputs land in bench/results/reverse-<time>/.
#
# Needs root for apt-get (only when nginx, haproxy or wrk is missing). All traffic stays on
# 127.0.0.1; every load is bounded in time; every process started here is killed on exit.
#
# Knobs (environment): RUNS=3 DURATION=10s THREADS=2 CONNS=64 WORKERS=1 SIZE=1024
# A smoke run (checks the script, measures nothing worth keeping):
#   RUNS=1 DURATION=2s bench/reverse.sh
set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-1}
SIZE=${SIZE:-1024}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS="$ROOT/bench/results/reverse-$STAMP"
WORK=$(mktemp -d /tmp/gatehouse-reverse-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()

cleanup() {
    local p
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
die() { printf 'reverse.sh: %s\n' "$*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------------

export PATH="$PATH:/usr/sbin"
need=()
for cmd in nginx haproxy wrk; do
    command -v "$cmd" >/dev/null || need+=("$cmd")
done
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
for cmd in nginx haproxy wrk; do
    command -v "$cmd" >/dev/null || die "$cmd is not installed"
done

log "building gatehouse (release)"
(cd "$ROOT" && cargo build --release --quiet --bin gatehouse)
GATEHOUSE="$ROOT/target/release/gatehouse"

# --- helpers ---------------------------------------------------------------------------------

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
    local _
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1 after 10 s (see $WORK)"
}

# start NAME PORT CMD...: CMD in its own process group, output to $WORK/NAME.log; its pid
# goes in PID_<NAME>.
start() {
    local name=$1 port=$2
    shift 2
    setsid "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    printf -v "PID_$name" '%s' "$!"
    wait_port "$port"
}

# CPU ticks (user + system) of a process and its children.
cpu_ticks() {
    local total=0 p t
    for p in "$1" $(pgrep -P "$1" || true); do
        t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# One wrk run: prints "rps p99_ms errors cpu_us_per_request".
wrk_once() {
    local port=$1 out=$2 pid=$3 c0 c1
    c0=$(cpu_ticks "$pid")
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "Host: app.test" \
        "http://127.0.0.1:$port/small" >"$out" 2>&1 || true
    c1=$(cpu_ticks "$pid")
    awk -v ticks=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" '
        /^Requests\/sec:/ { rps = $2 }
        /^ +99%/ {
            v = $2; unit = v; sub(/[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v)
            p99 = (unit == "us") ? v / 1000 : (unit == "s") ? v * 1000 : (unit == "m") ? v * 60000 : v
        }
        /Non-2xx or 3xx responses:/ { err += $NF }
        /Socket errors:/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) err += $i + 0 }
        / requests in / { n = $1 }
        END {
            if (rps == "") rps = 0; if (p99 == "") p99 = 0
            cpu = (n > 0) ? ticks * 1e6 / hz / n : 0
            printf "%s %.3f %d %.1f\n", rps, p99, err + 0, cpu
        }
    ' "$out"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }

# --- servers ---------------------------------------------------------------------------------

P_ORIGIN=$(free_port)
P_GATEHOUSE=$(free_port)
P_NGINX=$(free_port)
P_HAPROXY=$(free_port)

mkdir -p "$WORK/www" "$WORK/origin" "$WORK/proxy"
head -c "$SIZE" /dev/zero | tr '\0' 'x' >"$WORK/www/small"

cat >"$WORK/origin.conf" <<EOF
daemon off;
master_process on;
worker_processes 2;
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
EOF
start origin "$P_ORIGIN" nginx -c "$WORK/origin.conf" -p "$WORK/origin"

cat >"$WORK/gatehouse.toml" <<EOF
[[listeners]]
name = "rev"
kind = "reverse"
listen = "127.0.0.1:$P_GATEHOUSE"
max_connections = 10000
idle_per_server = 256
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
EOF
start gatehouse "$P_GATEHOUSE" env TOKIO_WORKER_THREADS="$WORKERS" "$GATEHOUSE" --config "$WORK/gatehouse.toml"

cat >"$WORK/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $WORKERS;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream origin {
        server 127.0.0.1:$P_ORIGIN;
        keepalive 256;
    }
    server {
        listen 127.0.0.1:$P_NGINX;
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
EOF
start nginx "$P_NGINX" nginx -c "$WORK/nginx.conf" -p "$WORK/proxy"

cat >"$WORK/haproxy.cfg" <<EOF
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
    bind 127.0.0.1:$P_HAPROXY
    default_backend origin
backend origin
    server o1 127.0.0.1:$P_ORIGIN
EOF
start haproxy "$P_HAPROXY" haproxy -db -f "$WORK/haproxy.cfg"

# Every proxy answers before the load starts.
for s in gatehouse nginx haproxy; do
    port_var="P_${s^^}"
    curl -fsS -o /dev/null -H "Host: app.test" "http://127.0.0.1:${!port_var}/small" ||
        die "$s does not answer (see $WORK)"
done

# --- load ------------------------------------------------------------------------------------

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
SERVERS=(origin gatehouse nginx haproxy)
for run in $(seq "$RUNS"); do
    for s in "${SERVERS[@]}"; do
        port_var="P_${s^^}"
        pid_var="PID_$s"
        r=$(wrk_once "${!port_var}" "$WORK/wrk-$s-$run.out" "${!pid_var}")
        echo "$r" >"$WORK/result-$s-$run.out"
        log "run $run $s: $r (req/s p99_ms errors cpu_us_per_request)"
    done
done

# --- report ----------------------------------------------------------------------------------

col() { for r in $(seq "$RUNS"); do awk -v c="$2" '{print $c}' "$WORK/result-$1-$r.out"; done | median; }
{
    echo "Machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), Linux $(uname -r); $(date -u +%Y-%m-%d)."
    echo "Versions: $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | head -1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}')."
    echo "Load: wrk -t$THREADS -c$CONNS -d$DURATION --latency, GET of a $SIZE-byte file, HTTP/1.1 keep-alive; WORKERS=$WORKERS; medians of $RUNS runs; load average before: $LOAD."
    echo
    echo "| server | req/s | p99 (ms) | errors | CPU µs per request |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for s in "${SERVERS[@]}"; do
        name=$s
        [ "$s" = origin ] && name="origin (direct, no proxy)"
        echo "| $name | $(col "$s" 1) | $(col "$s" 2) | $(col "$s" 3) | $(col "$s" 4) |"
    done
} | tee "$WORK/summary.out"
