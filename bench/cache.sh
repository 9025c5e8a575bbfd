#!/usr/bin/env bash
# bench/cache.sh: cache hits. Gatehouse beside Varnish, nginx (proxy_cache) and Squid, on
# loopback, with the same origin and the same load.
#
# The origin (nginx) serves /small (100 bytes) and /1m (1 MiB) with
# `Cache-Control: max-age=3600`. In front of it, each on its own port:
#   - gatehouse: forward proxy, `cache = true`, memory tier only, access log off;
#   - Squid: forward proxy, memory cache only (cache_mem), access log off;
#   - Varnish: reverse proxy (-b origin, -s malloc);
#   - nginx: reverse proxy with proxy_cache (files under a temp dir; page cache in practice).
# Forward proxies get absolute-form requests (`GET http://127.0.0.1:ORIGIN/small HTTP/1.1`,
# from a wrk Lua script), reverse proxies origin-form ones. Each cache is warmed with one
# request and checked to answer from cache (Cache-Status / X-Varnish / X-Cache-Status /
# X-Cache) before and after the load. Then `wrk -t$THREADS -c$CONNS -d$DURATION --latency`,
# RUNS runs per server and object, interleaved; medians of req/s and p99, and the server's
# CPU time per request. A markdown table is printed at the end; raw outputs land in
# bench/results/cache-<time>/.
#
# Needs root for apt-get (only when a tool is missing). All traffic stays on 127.0.0.1; every
# load is bounded in time; every process started here is killed on exit.
#
# Knobs (environment): RUNS=3 DURATION=10s THREADS=2 CONNS=64 PER_CORE=1 SERVERS="gatehouse varnish nginx squid"
# TIER=memory|disk SQUID_STORE=aufs|ufs (TIER=disk only)
# GATEHOUSE=path/to/binary (default: build target/release/gatehouse)
# NO_INSTALL=1: never run apt-get; a peer cache that is not installed (varnishd, squid) is
# left out with a message saying so; nginx (also the origin), wrk and curl are still needed.
# PIN=1: the caches on CPU 0, wrk on CPU 1 (taskset), so no server gets more of the shared
# cores by having more threads than another.
#
# TIER=disk: large objects (/1m, 1 MiB, and /16m, 16 MiB) served from each cache's on-disk
# store instead of memory:
#   - gatehouse: disk tier only (`memory_size = "0"`, `disk_dir`); plain TCP clients get the
#     body with sendfile(2) from the object file (docs/cache.md). A file is checked whole
#     (CRC) on every read until it is 2 s old, so the warm-up waits 3 s and reads each object
#     once more before the load;
#   - Varnish: file storage (`-s file,<dir>/varnish.bin,1G`);
#   - nginx: proxy_cache (on disk in both modes; sendfile on);
#   - Squid: `cache_dir $SQUID_STORE` (aufs by default, ufs possible) with cache_mem 8 MB and
#     nothing over 64 KB kept in memory, so both objects come from the cache_dir.
# The object files sit in the page cache after the warm-up (loopback, repeated hits): this
# measures each cache's path from its files to the socket, not the disk device.
set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
read -r -a SERVERS <<<"${SERVERS:-gatehouse varnish nginx squid}"
TIER=${TIER:-memory}
SQUID_STORE=${SQUID_STORE:-aufs}
case $TIER in
    memory) OBJECTS=(small 1m) ;;
    disk) OBJECTS=(1m 16m) ;;
    *) printf 'cache.sh: TIER is memory or disk\n' >&2; exit 1 ;;
esac
case $SQUID_STORE in
    aufs | ufs) ;;
    *) printf 'cache.sh: SQUID_STORE is aufs or ufs\n' >&2; exit 1 ;;
esac
PIN=${PIN:-0}
SERVER_CPU=()
WRK_CPU=()
if [ "$PIN" = 1 ]; then
    SERVER_CPU=(taskset -c 0)
    WRK_CPU=(taskset -c 1)
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS="$ROOT/bench/results/cache-$TIER-$STAMP"
WORK=$(mktemp -d /tmp/gatehouse-cache-bench.XXXXXX)
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
    cp "$WORK"/*.out "$WORK"/*.conf "$WORK"/*.toml "$WORK"/*.lua "$RESULTS"/ 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'cache.sh: %s\n' "$*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------------

install_missing() {
    export PATH="$PATH:/usr/sbin"
    local need=() pair
    if [ "${NO_INSTALL:-0}" = 1 ]; then
        local kept=() s bin
        for s in "${SERVERS[@]}"; do
            case $s in
            varnish) bin=varnishd ;;
            squid) bin=squid ;;
            nginx) bin=nginx ;;
            *) bin="" ;;
            esac
            if [ -n "$bin" ] && ! command -v "$bin" >/dev/null; then
                log "$s is not installed ($bin missing; NO_INSTALL=1): left out of this run"
            else
                kept+=("$s")
            fi
        done
        SERVERS=("${kept[@]}")
        ((${#SERVERS[@]})) || die "no cache left to measure"
        for pair in nginx wrk curl python3; do
            command -v "$pair" >/dev/null || die "$pair is not installed (needed for the origin or the load; NO_INSTALL=1)"
        done
        return 0
    fi
    for pair in varnishd:varnish nginx:nginx squid:squid wrk:wrk curl:curl; do
        command -v "${pair%%:*}" >/dev/null || need+=("${pair##*:}")
    done
    if ((${#need[@]})); then
        log "installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    for pair in varnishd nginx squid wrk curl python3; do
        command -v "$pair" >/dev/null || die "$pair is not installed"
    done
}

build() {
    [[ " ${SERVERS[*]} " == *" gatehouse "* ]] || return 0
    if [ -z "${GATEHOUSE:-}" ]; then
        log "building gatehouse (release)"
        (cd "$ROOT" && cargo build --release --quiet)
        GATEHOUSE="$ROOT/target/release/gatehouse"
    fi
    [ -x "$GATEHOUSE" ] || die "no gatehouse binary at $GATEHOUSE"
}

# --- helpers ---------------------------------------------------------------------------------

# N free loopback ports below the kernel's ephemeral range, so no outgoing connection (ours
# or another program's) takes one between this check and the server's bind.
free_ports() {
    python3 - "$1" <<'EOF'
import random, socket, sys
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
ports = []
while len(ports) < int(sys.argv[1]):
    p = random.randrange(max(1024, low - 12000), low)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    if p not in ports:
        ports.append(p)
print(" ".join(map(str, ports)))
EOF
}

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

# start NAME PORT COMMAND...: runs a server in the background; its pid goes in PID_<NAME>.
# Each in a session of its own (setsid), as a service runs: with the kernel's autogroup
# scheduling a server in the load generator's session would share its CPU share with wrk.
start() {
    local name=$1 port=$2
    shift 2
    setsid "${SERVER_CPU[@]}" "$@" >"$WORK/$name.server.out" 2>&1 &
    PIDS+=($!)
    printf -v "PID_$name" '%s' "$!"
    wait_port "$port"
}

# CPU time (clock ticks, user + system) used so far by a process and its children (nginx
# workers, Varnish's cache process).
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

# nginx's temp paths under $1 (the defaults are under /var/lib/nginx).
nginx_temps() {
    local d=$1
    printf '    client_body_temp_path %s/body;\n    proxy_temp_path %s/proxy;\n' "$d" "$d"
    printf '    fastcgi_temp_path %s/fastcgi;\n    uwsgi_temp_path %s/uwsgi;\n' "$d" "$d"
    printf '    scgi_temp_path %s/scgi;\n' "$d"
}

# Is this a forward proxy (absolute-form requests)?
forward() { [ "$1" = gatehouse ] || [ "$1" = squid ]; }

# --- configs ---------------------------------------------------------------------------------

write_configs() {
    mkdir -p "$WORK/www" "$WORK/origin" "$WORK/nginx" "$WORK/nginx/cache" "$WORK/varnish" "$WORK/squid"
    printf '%099d\n' 0 >"$WORK/www/small"
    head -c 1048576 /dev/urandom >"$WORK/www/1m"
    [ "$TIER" = disk ] && head -c 16777216 /dev/urandom >"$WORK/www/16m"
    chmod -R a+rX "$WORK/www"

    cat >"$WORK/origin.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    sendfile on;
$(nginx_temps "$WORK/origin")
    server {
        listen 127.0.0.1:$P_ORIGIN;
        root $WORK/www;
        location / { add_header Cache-Control "max-age=3600"; }
    }
}
EOF

    # nginx proxy_cache: both cores (gatehouse and Varnish use both too).
    cat >"$WORK/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    sendfile on;
    tcp_nopush on;
$(nginx_temps "$WORK/nginx")
    proxy_cache_path $WORK/nginx/cache levels=1:2 keys_zone=bench:16m max_size=1g inactive=1h use_temp_path=off;
    upstream origin { server 127.0.0.1:$P_ORIGIN; keepalive 16; }
    server {
        listen 127.0.0.1:$P_NGINX;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 1h;
            add_header X-Cache-Status \$upstream_cache_status;
        }
    }
}
EOF

    # Squid: memory cache only (no cache_dir), objects up to 2 MB in memory; TIER=disk: a
    # cache_dir, and only objects up to 64 KB in memory.
    local squid_store="cache_mem 256 MB
maximum_object_size_in_memory 2 MB
maximum_object_size 2 MB"
    if [ "$TIER" = disk ]; then
        squid_store="cache_mem 8 MB
maximum_object_size_in_memory 64 KB
maximum_object_size 32 MB
cache_dir $SQUID_STORE $WORK/squid/cache 1024 16 256"
    fi
    cat >"$WORK/squid.conf" <<EOF
http_port 127.0.0.1:$P_SQUID
visible_hostname gatehouse-bench
acl localhost_src src 127.0.0.1/32
http_access allow localhost_src
http_access deny all
$squid_store
memory_replacement_policy lru
access_log none
cache_store_log none
cache_log $WORK/squid/cache.log
pid_filename none
netdb_filename none
coredump_dir $WORK/squid
workers 1
max_filedescriptors 16384
shutdown_lifetime 1 seconds
EOF
    touch "$WORK/squid/cache.log"
    mkdir -p "$WORK/squid/cache"
    chown -R proxy "$WORK/squid" 2>/dev/null || true

    local gatehouse_store='memory_size = "256MiB"
max_object_size = "2MiB"'
    if [ "$TIER" = disk ]; then
        mkdir -p "$WORK/gatehouse-disk"
        gatehouse_store="memory_size = \"0\"
disk_dir = \"$WORK/gatehouse-disk\"
disk_size = \"1GiB\"
max_object_size = \"32MiB\""
    fi

    cat >"$WORK/gatehouse.toml" <<EOF
# PER_CORE=1: two worker threads, each its own event loop (nginx's model: its two workers).
[runtime]
per_core = $( [ "${PER_CORE:-1}" = 1 ] && echo true || echo false )

[[listeners]]
name = "bench"
kind = "http"
listen = "127.0.0.1:$P_GATEHOUSE"
max_connections = 20000
cache = true

[cache]
enabled = true
$gatehouse_store

[access_log]
path = "off"

# The origin is on loopback, which the destination guard refuses unless a rule names it.
[[policy.rules]]
name = "bench-origin"
action = "allow"
dest_addrs = ["127.0.0.0/8"]
EOF

    local o
    for o in "${OBJECTS[@]}"; do
        cat >"$WORK/absolute-$o.lua" <<EOF
-- Absolute-form request line, for the forward proxies.
wrk.method = "GET"
wrk.path = "http://127.0.0.1:$P_ORIGIN/$o"
wrk.headers["Host"] = "127.0.0.1:$P_ORIGIN"
EOF
    done
}

start_servers() {
    log "starting the origin and the caches"
    start origin "$P_ORIGIN" nginx -c "$WORK/origin.conf" -p "$WORK/origin/" -e "$WORK/origin/error.log"
    local s
    for s in "${SERVERS[@]}"; do
        case $s in
            gatehouse)
                start gatehouse "$P_GATEHOUSE" env GATEHOUSE_LOG=warn "$GATEHOUSE" --config "$WORK/gatehouse.toml" ;;
            varnish)
                local storage=malloc,256m
                if [ "$TIER" = disk ]; then
                    mkdir -p "$WORK/varnish-store"
                    chmod 777 "$WORK/varnish-store"
                    storage="file,$WORK/varnish-store/varnish.bin,1G"
                fi
                start varnish "$P_VARNISH" varnishd -F -n "$WORK/varnish" -a "127.0.0.1:$P_VARNISH" \
                    -b "127.0.0.1:$P_ORIGIN" -s "$storage" -T none ;;
            nginx)
                start nginx "$P_NGINX" nginx -c "$WORK/nginx.conf" -p "$WORK/nginx/" -e "$WORK/nginx/error.log" ;;
            squid)
                if [ "$TIER" = disk ]; then
                    # Creates the cache_dir's swap directories, then exits.
                    squid -N -z -f "$WORK/squid.conf" >"$WORK/squid.z.out" 2>&1 ||
                        die "squid -z failed: $(cat "$WORK/squid.z.out")"
                fi
                start squid "$P_SQUID" squid -N -f "$WORK/squid.conf" ;;
            *) die "unknown server $s" ;;
        esac
    done
}

# check SERVER OBJECT: one request through SERVER; succeeds when it was answered from cache.
check_hit() {
    local s=$1 o=$2 port_var="P_${1^^}" headers
    if forward "$s"; then
        headers=$(curl -sS --max-time 10 -o /dev/null -D - -x "http://127.0.0.1:${!port_var}" \
            "http://127.0.0.1:$P_ORIGIN/$o")
    else
        headers=$(curl -sS --max-time 10 -o /dev/null -D - "http://127.0.0.1:${!port_var}/$o")
    fi
    echo "$headers" >>"$WORK/check-$s-$o.out"
    case $s in
        gatehouse) grep -qi '^Cache-Status: .*Gatehouse; hit' <<<"$headers" ;;
        varnish) grep -qiE '^X-Varnish: [0-9]+ [0-9]+' <<<"$headers" ;;
        nginx) grep -qi '^X-Cache-Status: HIT' <<<"$headers" ;;
        squid) grep -qi '^X-Cache: HIT' <<<"$headers" ;;
    esac
}

warm_and_check() {
    local s o
    for s in "${SERVERS[@]}"; do
        for o in "${OBJECTS[@]}"; do
            check_hit "$s" "$o" || true # the first request stores
            check_hit "$s" "$o" || die "$s does not answer /$o from cache: $(cat "$WORK/check-$s-$o.out")"
        done
    done
    if [ "$TIER" = disk ]; then
        # Gatehouse checks a disk object whole until its file is 2 s old (docs/cache.md);
        # one more hit each after that records the file's identity. Squid and Varnish get
        # the same extra hit.
        sleep 3
        for s in "${SERVERS[@]}"; do
            for o in "${OBJECTS[@]}"; do
                check_hit "$s" "$o" || die "$s does not answer /$o from cache after the wait"
            done
        done
    fi
}

# --- measurements ----------------------------------------------------------------------------

# One wrk run: prints "rps p99_ms errors cpu_us_per_request".
wrk_once() {
    local s=$1 o=$2 out=$3 port_var="P_${1^^}" pid_var="PID_$1" c0 c1
    local pid=${!pid_var}
    local args=(-t"$THREADS" -c"$CONNS" -d"$DURATION" --latency)
    c0=$(cpu_ticks "$pid")
    if forward "$s"; then
        "${WRK_CPU[@]}" wrk "${args[@]}" -s "$WORK/absolute-$o.lua" "http://127.0.0.1:${!port_var}/" >"$out" 2>&1 || true
    else
        "${WRK_CPU[@]}" wrk "${args[@]}" "http://127.0.0.1:${!port_var}/$o" >"$out" 2>&1 || true
    fi
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

measure() {
    local run s o r
    for run in $(seq "$RUNS"); do
        for o in "${OBJECTS[@]}"; do
            for s in "${SERVERS[@]}"; do
                r=$(wrk_once "$s" "$o" "$WORK/wrk-$s-$o-$run.out")
                echo "$r" >>"$WORK/rps-$s-$o.out"
                log "run $run $s /$o: $r (req/s p99_ms errors cpu_us_per_request)"
            done
        done
    done
    # Still hits after the load (nothing was evicted or expired on the way).
    for s in "${SERVERS[@]}"; do
        for o in "${OBJECTS[@]}"; do
            check_hit "$s" "$o" || die "$s stopped answering /$o from cache"
        done
    done
}

# --- report ----------------------------------------------------------------------------------

col() {
    if [ -f "$2" ]; then awk -v c="$1" '{print $c}' "$2" | median; else echo -; fi
}

version_of() {
    case $1 in
        gatehouse) echo "gatehouse $(git -C "$ROOT" rev-parse --short HEAD)" ;;
        varnish) varnishd -V 2>&1 | head -1 | sed 's/varnishd (\(varnish-[0-9.]*\).*/\1/' ;;
        nginx) nginx -v 2>&1 | sed 's/.*: //' ;;
        squid) squid -v | head -1 | awk '{print "Squid " $NF}' ;;
    esac
}

report() {
    local s o label versions=()
    for s in "${SERVERS[@]}"; do
        versions+=("$(version_of "$s")")
    done
    echo
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'). Machine: $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r)."
    echo "Load average before the runs: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "Versions: ${versions[*]}, nginx $(nginx -v 2>&1 | sed 's/.*\///') as origin, wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}')."
    local pinned="load generator and servers share the cores"
    [ "$PIN" = 1 ] && pinned="servers pinned to CPU 0, wrk to CPU 1"
    echo "Load: wrk -t$THREADS -c$CONNS -d$DURATION --latency per server and object; medians of $RUNS interleaved runs; $pinned. Tier: $TIER. Gatehouse per_core: ${PER_CORE:-1}."
    echo
    echo "| server | object | req/s | p99 (ms) | wrk errors | server CPU µs/request |"
    echo "| --- | --- | ---: | ---: | ---: | ---: |"
    for o in "${OBJECTS[@]}"; do
        for s in "${SERVERS[@]}"; do
            case $s in
                gatehouse) label="Gatehouse (forward proxy)" ;;
                varnish) label="Varnish (reverse proxy, malloc)" ;;
                nginx) label="nginx proxy_cache (reverse proxy)" ;;
                squid) label="Squid (forward proxy, cache_mem)" ;;
            esac
            [ "$TIER" = disk ] && case $s in
                gatehouse) label="Gatehouse (forward proxy, disk tier, sendfile)" ;;
                varnish) label="Varnish (reverse proxy, -s file)" ;;
                nginx) label="nginx proxy_cache (reverse proxy, on disk)" ;;
                squid) label="Squid (forward proxy, cache_dir $SQUID_STORE)" ;;
            esac
            echo "| $label | /$o | $(col 1 "$WORK/rps-$s-$o.out") | $(col 2 "$WORK/rps-$s-$o.out") |" \
                "$(col 3 "$WORK/rps-$s-$o.out") | $(col 4 "$WORK/rps-$s-$o.out") |"
        done
    done
    echo
    for o in "${OBJECTS[@]}"; do
        local g
        g=$(col 1 "$WORK/rps-gatehouse-$o.out")
        for s in varnish nginx squid; do
            [ -f "$WORK/rps-$s-$o.out" ] || continue
            awk -v g="$g" -v p="$(col 1 "$WORK/rps-$s-$o.out")" -v s="$s" -v o="$o" \
                'BEGIN { if (g > 0 && p > 0) printf "gatehouse / %s req/s on /%s: %.2fx\n", s, o, g / p }'
        done
    done
}

# --- main ------------------------------------------------------------------------------------

ulimit -n "$(ulimit -Hn)"
install_missing
build
read -r P_ORIGIN P_GATEHOUSE P_VARNISH P_NGINX P_SQUID < <(free_ports 5)
write_configs
start_servers
warm_and_check
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "load: wrk -t$THREADS -c$CONNS -d$DURATION, $RUNS runs per server and object"
measure
report
