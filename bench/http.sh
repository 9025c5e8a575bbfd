#!/usr/bin/env bash
# bench/http.sh: Gatehouse beside Squid and tinyproxy as HTTP forward proxies, on loopback.
#
# One run measures, with the same origin (nginx serving a small static file) and the same load:
#   1. resident memory per idle keep-alive client connection (IDLE_CLIENTS clients, one GET
#      each, then idle), on freshly started servers;
#   2. requests/s and p99 latency for small responses: wrk with an absolute-form request line
#      (`GET http://127.0.0.1:ORIGIN/small HTTP/1.1`), RUNS runs per server, interleaved;
#   3. single-stream CONNECT bulk throughput to a discard sink, against direct loopback.
# nginx and HAProxy (as reverse proxies in front of the same origin) are measured as peers
# where the comparison makes sense. Medians are printed as a markdown table at the end; raw
# outputs land in bench/results/http-<time>/.
#
# Needs root for apt-get (only when a tool is missing). All traffic stays on 127.0.0.1; every
# load is bounded in time or count; every process started here is killed on exit.
#
# Knobs (environment): RUNS=3 DURATION=10s THREADS=2 CONNS=64 BULK_BYTES=4GiB IDLE_CLIENTS=5000
#   PER_CORE=1 (Gatehouse's `[runtime] per_core`, its default; 0: the shared scheduler)
set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
BULK_BYTES=${BULK_BYTES:-4294967296}
IDLE_CLIENTS=${IDLE_CLIENTS:-5000}
IDLE_HOLD=${IDLE_HOLD:-6}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS="$ROOT/bench/results/http-$STAMP"
WORK=$(mktemp -d /tmp/gatehouse-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()

cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    mkdir -p "$RESULTS"
    cp "$WORK"/*.out "$WORK"/*.conf "$WORK"/*.toml "$WORK"/*.cfg "$RESULTS"/ 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'http.sh: %s\n' "$*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------------

install_missing() {
    local need=() cmd pkg
    for pair in squid:squid tinyproxy:tinyproxy nginx:nginx wrk:wrk haproxy:haproxy; do
        cmd=${pair%%:*}
        pkg=${pair##*:}
        command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
    done
    if ((${#need[@]})); then
        log "installing ${need[*]}"
        apt-get update -qq
        # HAProxy is only a peer for the idle-memory figure: carry on without it.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]/haproxy/}" >/dev/null
    fi
    export PATH="$PATH:/usr/sbin"
    for cmd in squid tinyproxy nginx wrk; do
        command -v "$cmd" >/dev/null || die "$cmd is not installed"
    done
}

build() {
    log "building gatehouse and bench/httpbench (release)"
    (cd "$ROOT" && cargo build --release --quiet)
    cargo build --release --quiet --manifest-path "$ROOT/bench/httpbench/Cargo.toml"
    GATEHOUSE="$ROOT/target/release/gatehouse"
    HB="$ROOT/bench/httpbench/target/release/httpbench"
}

# --- helpers ---------------------------------------------------------------------------------

# Waits (at most 10 s) until something accepts on 127.0.0.1:$1.
wait_port() {

    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1 after 10 s (see $WORK)"
}

# Starts a server in the background: start NAME PORT COMMAND...; its pid goes in PID_<NAME>.
# Each in a session of its own (setsid), as a service runs: with the kernel's autogroup
# scheduling a server in the load generator's session would share its CPU share with wrk.
start() {
    local name=$1 port=$2
    shift 2
    setsid "$@" >"$WORK/$name.server.out" 2>&1 &
    PIDS+=($!)
    printf -v "PID_$name" '%s' "$!"
    wait_port "$port"
}

# Drops a pid that has been waited for from the kill list.
forget() {
    local keep=() p
    for p in "${PIDS[@]}"; do
        [ "$p" = "$1" ] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# Resident memory (KiB) of a process and its children.
rss_kib() {
    local total=0 p kib
    for p in "$1" $(pgrep -P "$1" || true); do
        kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# CPU time (clock ticks, user + system) used so far by a process and its children.
cpu_ticks() {
    local total=0 p t
    for p in "$1" $(pgrep -P "$1" || true); do
        t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# Median of the numbers on stdin ("-" when there are none).
median() {
    sort -g | awk '{v[NR] = $1} END {
        if (NR == 0) print "-";
        else if (NR % 2) print v[(NR + 1) / 2];
        else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# --- configs ---------------------------------------------------------------------------------

write_configs() {
    mkdir -p "$WORK/www" "$WORK/nginx-origin" "$WORK/nginx-proxy"
    # 100 bytes: a "small response".
    printf '%099d\n' 0 >"$WORK/www/small"
    chmod -R a+rX "$WORK/www"

    cat >"$WORK/nginx-origin.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx-origin/nginx.pid;
error_log $WORK/nginx-origin/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8000; }
http {
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path $WORK/nginx-origin/body;
    proxy_temp_path $WORK/nginx-origin/proxy;
    fastcgi_temp_path $WORK/nginx-origin/fastcgi;
    uwsgi_temp_path $WORK/nginx-origin/uwsgi;
    scgi_temp_path $WORK/nginx-origin/scgi;
    server {
        listen 127.0.0.1:$P_ORIGIN;
        root $WORK/www;
        location / { }
    }
}
EOF

    # nginx as a reverse proxy in front of the same origin: a peer, not a forward proxy.
    cat >"$WORK/nginx-proxy.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx-proxy/nginx.pid;
error_log $WORK/nginx-proxy/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8000; }
http {
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path $WORK/nginx-proxy/body;
    proxy_temp_path $WORK/nginx-proxy/proxy;
    fastcgi_temp_path $WORK/nginx-proxy/fastcgi;
    uwsgi_temp_path $WORK/nginx-proxy/uwsgi;
    scgi_temp_path $WORK/nginx-proxy/scgi;
    upstream origin { server 127.0.0.1:$P_ORIGIN; keepalive 32; }
    server {
        listen 127.0.0.1:$P_NGINX;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF

    cat >"$WORK/squid.conf" <<EOF
http_port 127.0.0.1:$P_SQUID
visible_hostname gatehouse-bench
acl localhost_src src 127.0.0.1/32
acl sink_port port $P_SINK
acl CONNECT method CONNECT
http_access allow CONNECT sink_port localhost_src
http_access allow localhost_src
http_access deny all
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log $WORK/squid-cache.log
pid_filename none
netdb_filename none
coredump_dir $WORK
workers 1
max_filedescriptors 16384
client_idle_pconn_timeout 5 minutes
shutdown_lifetime 1 seconds
EOF
    touch "$WORK/squid-cache.log"
    chown proxy "$WORK/squid-cache.log" 2>/dev/null || true

    cat >"$WORK/tinyproxy.conf" <<EOF
User nobody
Group nogroup
Port $P_TINYPROXY
Listen 127.0.0.1
Timeout 600
MaxClients 6000
Allow 127.0.0.1
ConnectPort $P_SINK
LogLevel Critical
LogFile "$WORK/tinyproxy.log"
EOF
    touch "$WORK/tinyproxy.log"
    chown nobody "$WORK/tinyproxy.log" 2>/dev/null || true

    cat >"$WORK/gatehouse.toml" <<EOF
[[listeners]]
name = "bench"
kind = "http"
listen = "127.0.0.1:$P_GATEHOUSE"
max_connections = 20000
keepalive_timeout = "5m"
connect_ports = [$P_SINK]

[access_log]
path = "off"

# Every client is 127.0.0.1: no per-address cap (default 1000), which would refuse most of
# the idle clients (Squid, tinyproxy, nginx and HAProxy have none).
[limits.per_client]
max_connections = 0

[runtime]
per_core = $( [ "${PER_CORE:-1}" = 1 ] && echo true || echo false )

# The origin and the sink are on loopback, which the destination guard refuses by default.
[[policy.rules]]
name = "bench-reach-loopback"
action = "allow"
dest_addrs = ["127.0.0.0/8"]
EOF

    cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn 9000
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 300s
    timeout http-keep-alive 300s
frontend fe
    bind 127.0.0.1:$P_HAPROXY
    default_backend origin
backend origin
    server origin 127.0.0.1:$P_ORIGIN
EOF

    cat >"$WORK/absolute.lua" <<EOF
-- The same absolute-form request line for every proxy (and for the origin itself).
wrk.method = "GET"
wrk.path = "http://127.0.0.1:$P_ORIGIN/small"
wrk.headers["Host"] = "127.0.0.1:$P_ORIGIN"
EOF
}

start_servers() {
    log "starting the origin, the sink and the servers"
    start origin "$P_ORIGIN" nginx -c "$WORK/nginx-origin.conf" -p "$WORK/nginx-origin/" -e "$WORK/nginx-origin/error.log"
    "$HB" sink --listen "127.0.0.1:$P_SINK" >"$WORK/sink.server.out" 2>&1 &
    PIDS+=($!)
    wait_port "$P_SINK"
    start gatehouse "$P_GATEHOUSE" env GATEHOUSE_LOG=warn "$GATEHOUSE" --config "$WORK/gatehouse.toml"
    start squid "$P_SQUID" squid -N -f "$WORK/squid.conf"
    start tinyproxy "$P_TINYPROXY" tinyproxy -d -c "$WORK/tinyproxy.conf"
    start nginx "$P_NGINX" nginx -c "$WORK/nginx-proxy.conf" -p "$WORK/nginx-proxy/" -e "$WORK/nginx-proxy/error.log"
    SERVERS=(gatehouse squid tinyproxy nginx)
    if command -v haproxy >/dev/null; then
        start haproxy "$P_HAPROXY" haproxy -f "$WORK/haproxy.cfg"
        SERVERS+=(haproxy)
    fi
    local s
    for s in "${SERVERS[@]}"; do
        port_var="P_${s^^}"
        "$HB" idle-clients --proxy "127.0.0.1:${!port_var}" --url "$URL" --count 1 --hold 0 \
            >"$WORK/smoke-$s.out" 2>&1 || die "$s does not serve $URL (see $WORK/smoke-$s.out)"
        grep -q 'READY open=1 failed=0' "$WORK/smoke-$s.out" || die "$s: $(cat "$WORK/smoke-$s.out")"
    done
}

# --- measurements ----------------------------------------------------------------------------

# Idle memory: RSS growth per idle keep-alive client, on a freshly started server.
measure_idle() {
    local s=$1 port_var="P_${1^^}" pid_var="PID_$1" before after ready held out="$WORK/idle-$1.out"
    local pid=${!pid_var}
    # A few connections first, so one-time allocations are not charged to the clients.
    "$HB" idle-clients --proxy "127.0.0.1:${!port_var}" --url "$URL" --count 20 --hold 0 >/dev/null
    sleep 1
    before=$(rss_kib "$pid")
    "$HB" idle-clients --proxy "127.0.0.1:${!port_var}" --url "$URL" --count "$IDLE_CLIENTS" \
        --hold "$IDLE_HOLD" >"$out" 2>&1 &
    local client=$!
    PIDS+=("$client")

    for _ in $(seq 600); do
        grep -q '^READY' "$out" && break
        kill -0 "$client" 2>/dev/null || break
        sleep 0.2
    done
    grep -q '^READY' "$out" || die "$s: idle clients never got ready: $(cat "$out")"
    sleep 2
    after=$(rss_kib "$pid")
    wait "$client" || true
    forget "$client"
    ready=$(sed -n 's/^READY open=\([0-9]*\).*/\1/p' "$out")
    held=$(sed -n 's/^HELD open=\([0-9]*\).*/\1/p' "$out")
    echo "before_kib=$before after_kib=$after" >>"$out"
    if [ "${held:-0}" -lt $((IDLE_CLIENTS * 9 / 10)) ]; then
        IDLE[$s]="n/a (kept ${held:-0} of $IDLE_CLIENTS open)"
    else
        IDLE[$s]=$(awk -v a="$after" -v b="$before" -v n="$ready" 'BEGIN {printf "%.2f", (a - b) / n}')
    fi
    log "idle $s: $before -> $after KiB for $ready clients (held open: $held): ${IDLE[$s]} KiB each"
}

# One wrk run: prints "rps p99_ms errors cpu_us_per_request" (the server's CPU time per
# request: steadier than req/s on a busy machine).
wrk_once() {
    local port=$1 out=$2 pid=$3 c0 c1
    c0=$(cpu_ticks "$pid")
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$WORK/absolute.lua" \
        "http://127.0.0.1:$port/" >"$out" 2>&1 || true
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

measure_rps() {
    local run s port_var pid_var r
    for run in $(seq "$RUNS"); do
        for s in origin "${SERVERS[@]}"; do
            port_var="P_${s^^}"
            pid_var="PID_$s"
            r=$(wrk_once "${!port_var}" "$WORK/wrk-$s-$run.out" "${!pid_var}")
            echo "$r" >>"$WORK/rps-$s.out"
            log "wrk run $run $s: $r (req/s p99_ms errors cpu_us_per_request)"
        done
    done
}

measure_connect() {
    local run s r
    for run in $(seq "$RUNS"); do
        for s in direct gatehouse squid tinyproxy; do
            if [ "$s" = direct ]; then
                set -- --direct
            else
                local port_var="P_${s^^}"
                set -- --proxy "127.0.0.1:${!port_var}"
            fi
            r=$(timeout 300 "$HB" connect-throughput "$@" --target "127.0.0.1:$P_SINK" --bytes "$BULK_BYTES" \
                2>>"$WORK/connect-$s.err" | sed -n 's/.*gbit=//p') || true
            if [ -n "$r" ]; then
                echo "$r" >>"$WORK/connect-$s.out"
            fi
            log "CONNECT run $run $s: ${r:-failed} Gbit/s"
        done
    done
}

# --- report ----------------------------------------------------------------------------------

col() {
    if [ -f "$2" ]; then awk -v c="$1" '{print $c}' "$2" | median; else echo -; fi
}

report() {
    local s rps p99 err cpu gbit idle label
    local cpu kernel mem
    cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    kernel=$(uname -r)
    mem=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
    echo
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'). Machine: $(nproc) cores, $cpu, Linux $kernel, $mem RAM (shared, noisy)."
    echo "Versions: gatehouse $(git -C "$ROOT" rev-parse --short HEAD), $(squid -v | head -1), $(tinyproxy -v 2>&1 | head -1),"
    echo "$(nginx -v 2>&1 | sed 's/.*: //'), $(command -v haproxy >/dev/null && haproxy -v | head -1 | awk '{print "HAProxy " $3}' || echo 'no HAProxy'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}')."
    echo "Load: wrk -t$THREADS -c$CONNS -d$DURATION --latency, absolute-form GET of a 100-byte file; CONNECT: one stream of $BULK_BYTES bytes;"
    echo "idle: $IDLE_CLIENTS keep-alive clients after one GET each. Medians of $RUNS runs."
    echo
    echo "| server | req/s | p99 (ms) | wrk errors | CPU µs per request | CONNECT (Gbit/s) | KiB per idle connection |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for s in origin gatehouse squid tinyproxy nginx haproxy direct; do
        case $s in
            origin) label="nginx origin, no proxy (reference)" ;;
            direct) label="direct loopback, no proxy (reference)" ;;
            nginx) label="nginx (reverse proxy)" ;;
            haproxy) label="HAProxy (reverse proxy)" ;;
            *) label=$s ;;
        esac
        [ "$s" = haproxy ] && [ ! -f "$WORK/rps-haproxy.out" ] && continue
        rps=$(col 1 "$WORK/rps-$s.out")
        p99=$(col 2 "$WORK/rps-$s.out")
        err=$(col 3 "$WORK/rps-$s.out")
        cpu=$(col 4 "$WORK/rps-$s.out")
        gbit=$(col 1 "$WORK/connect-$s.out")
        idle=${IDLE[$s]:--}
        echo "| $label | $rps | $p99 | $err | $cpu | $gbit | $idle |"
    done
    echo
    local g q d c
    g=$(col 1 "$WORK/rps-gatehouse.out")
    q=$(col 1 "$WORK/rps-squid.out")
    c=$(col 1 "$WORK/connect-gatehouse.out")
    d=$(col 1 "$WORK/connect-direct.out")
    local gc qc pair
    gc=$(col 4 "$WORK/rps-gatehouse.out")
    qc=$(col 4 "$WORK/rps-squid.out")
    # Each run measures direct and gatehouse back to back: the median of the per-run ratios
    # is steadier than the ratio of the medians when the machine's load drifts.
    pair=$(paste "$WORK/connect-direct.out" "$WORK/connect-gatehouse.out" 2>/dev/null |
        awk 'NF == 2 && $1 > 0 {print 100 * $2 / $1}' | median)
    awk -v g="$g" -v q="$q" -v c="$c" -v d="$d" -v gc="$gc" -v qc="$qc" -v pair="$pair" 'BEGIN {
        if (q > 0) printf "gatehouse / squid req/s: %.2fx (aim: at least 2.5x)\n", g / q;
        if (gc > 0) printf "squid / gatehouse CPU per request: %.2fx\n", qc / gc;
        if (d > 0) printf "gatehouse CONNECT / direct: %.0f%% of the medians, %.0f%% median of per-run ratios (aim: at least 55%%)\n", 100 * c / d, pair }'
    echo "gatehouse KiB per idle connection: ${IDLE[gatehouse]:--} (aim: HAProxy's figure, at most 4)"
}

# --- main ------------------------------------------------------------------------------------

ulimit -n "$(ulimit -Hn)"
install_missing
build
read -r P_ORIGIN P_SINK P_GATEHOUSE P_SQUID P_TINYPROXY P_NGINX P_HAPROXY < <("$HB" free-ports 7 | xargs)
URL="http://127.0.0.1:$P_ORIGIN/small"
declare -A IDLE=()
write_configs
start_servers
log "idle memory: $IDLE_CLIENTS keep-alive clients per server"
for s in "${SERVERS[@]}"; do
    measure_idle "$s"
done
log "requests/s: $RUNS runs of wrk -t$THREADS -c$CONNS -d$DURATION per server"
measure_rps
log "CONNECT throughput: $RUNS runs of $BULK_BYTES bytes"
measure_connect
report | tee "$WORK/report.out"
log "raw outputs: $RESULTS"
