#!/usr/bin/env bash
# bench/reverse.sh: Gatehouse's `reverse` listener beside nginx (`proxy_pass` to an upstream
# with `keepalive`) and HAProxy (`mode http`, `http-reuse always`) as reverse proxies, on
# loopback, WORKERS workers each (Gatehouse's tokio worker threads, nginx's worker_processes,
# HAProxy's nbthread).
#
# Same origin for all (a separate nginx serving a SIZE-byte file over plain HTTP/1.1, reached
# by every proxy over reused connections), same load, one run, RUNS runs per scenario, the
# proxies interleaved. Scenarios (SCENARIOS, in this order):
#   h1         wrk over plain HTTP/1.1 keep-alive (plus the origin directly, for reference)
#   tls-h1     wrk over TLS, HTTP/1.1 keep-alive
#   tls-h2     h2load over TLS, HTTP/2 (H2_CONNS connections, H2_STREAMS streams each)
#   handshake  new TLS handshakes/s: bench/loadgen tls-handshakes, HS_CONNS at a time, each a
#              full handshake per connection (rustls, resumption off: never a resumed
#              session), then close
#   idle       memory per idle keep-alive client: IDLE_CLIENTS connections, one GET each, held
#              open; the proxy's RSS (VmRSS summed over its processes) after minus before,
#              divided by IDLE_CLIENTS; plain HTTP/1.1 and TLS
# In h1 and tls-h1 a fourth server runs beside the three as a reference, not a contender:
# HAProxy in `mode tcp` (a layer-4 relay: each client connection relayed to an origin
# connection of its own, TLS terminated on the tls-h1 port). It makes the same system calls
# per request as an HTTP proxy with keep-alive upstreams and does no HTTP work at all, so
# its requests/s shows what a proxy that spends nothing on HTTP reaches here (with
# HAProxy's own event loop and OpenSSL's TLS: a cheaper TLS can pass it); the report gives
# it as a ratio to the better HTTP peer. L4_REF=0 leaves it out.
# Per run: requests/s (handshakes/s), p99 latency, errors, and the proxy's CPU time per
# request (user + system of all its processes, from /proc). Medians are printed as markdown
# tables, with the ratios to the aims of issue 9; raw outputs land in
# bench/results/reverse-<time>/.
#
# TLS, the same for all three: TLS 1.3 only, TLS_AES_128_GCM_SHA256, X25519, one ECDSA P-256
# certificate made here with openssl. wrk and h2load (OpenSSL) get those through an
# OPENSSL_CONF written here, loadgen's handshake client offers nothing else; Gatehouse
# (rustls) follows the client's order, nginx and HAProxy are also configured to them. Session tickets stay at each server's
# default (all three issue them); no client here resumes a session.
#
# Needs root for apt-get (only when nginx, haproxy, wrk, h2load or openssl is missing). All
# traffic stays on 127.0.0.1; every load is bounded in time; every process started here is
# killed on exit.
#
# Knobs (environment): RUNS=3 DURATION=10 THREADS=2 CONNS=64 WORKERS=1 PER_CORE=1 SIZE=1024
#   H2_CONNS=50 H2_STREAMS=10 HS_CONNS=32 IDLE_CLIENTS=2000 L4_REF=1
#   PER_CORE=0: Gatehouse with `[runtime] per_core = false` (the shared scheduler)
#   SCENARIOS="h1 tls-h1 tls-h2 handshake idle"
#   GATEHOUSE_BIN=path: use that binary instead of building target/release/gatehouse
#   SYSCALLS=1: count each proxy's system calls by kind during the wrk and h2load runs (perf stat on
#   kernel tracepoints, needs linux-perf and root), into the raw outputs' *.out.syscalls, and the
#   machine's thread wake-ups and context switches (sched tracepoints) into *.out.wakeups
#   PROFILE=1: sample each proxy's stacks during the wrk and h2load runs (perf record -g, cpu-clock;
#   needs linux-perf and root) into *.out.perf.data, with a flat profile (self time) in *.out.profile
#   (the sampler costs the proxy CPU: take figures from a run without it)
# A smoke run (checks the script, measures nothing worth keeping):
#   RUNS=1 DURATION=2 IDLE_CLIENTS=200 bench/reverse.sh
set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
DURATION=${DURATION%s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-1}
SIZE=${SIZE:-1024}
H2_CONNS=${H2_CONNS:-50}
H2_STREAMS=${H2_STREAMS:-10}
HS_CONNS=${HS_CONNS:-32}
IDLE_CLIENTS=${IDLE_CLIENTS:-2000}
SCENARIOS=${SCENARIOS:-h1 tls-h1 tls-h2 handshake idle}
PROXIES=(gatehouse nginx haproxy)
L4_REF=${L4_REF:-1}

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'reverse.sh: %s\n' "$*" >&2; exit 1; }

case "$DURATION" in '' | *[!0-9]*) die "DURATION is whole seconds (e.g. 10), not $DURATION" ;; esac
for s in $SCENARIOS; do
    case "$s" in h1 | tls-h1 | tls-h2 | handshake | idle) ;; *) die "unknown scenario $s" ;; esac
done
want() { case " $SCENARIOS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

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
    cp "$WORK"/*.out "$WORK"/*.syscalls "$WORK"/*.wakeups "$WORK"/*.profile "$WORK"/*.perf.data "$WORK"/*.conf "$WORK"/*.cfg "$WORK"/*.toml "$WORK"/*.cnf "$WORK"/*.log "$RESULTS"/ 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM



# --- tools -----------------------------------------------------------------------------------

export PATH="$PATH:/usr/sbin"
need=()
for cmd in nginx haproxy wrk h2load openssl; do
    if ! command -v "$cmd" >/dev/null; then
        case "$cmd" in h2load) need+=(nghttp2-client) ;; *) need+=("$cmd") ;; esac
    fi
done
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
for cmd in nginx haproxy wrk h2load openssl python3; do
    command -v "$cmd" >/dev/null || die "$cmd is not installed"
done
ulimit -n "$(ulimit -Hn)"

if [ -n "${GATEHOUSE_BIN:-}" ]; then
    GATEHOUSE=$GATEHOUSE_BIN
else
    log "building gatehouse (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin gatehouse)
    GATEHOUSE="$ROOT/target/release/gatehouse"
fi
[ -x "$GATEHOUSE" ] || die "no gatehouse binary at $GATEHOUSE"
if want handshake; then
    log "building bench/loadgen (release)"
    cargo build --release --quiet --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
    LOADGEN="$ROOT/bench/loadgen/target/release/loadgen"
fi

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
    setsid "$@" >>"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    printf -v "PID_$name" '%s' "$!"
    wait_port "$port"
}

# A process and its children (nginx's workers).
procs() {
    echo "$1"
    pgrep -P "$1" || true
}

# CPU ticks (user + system) of a process and its children.
cpu_ticks() {
    local total=0 p t
    for p in $(procs "$1"); do
        t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# "user system" CPU ticks of a process and its children, apart (for the raw outputs).
cpu_split() {
    local u=0 s=0 p a b
    for p in $(procs "$1"); do
        read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
        u=$((u + ${a:-0}))
        s=$((s + ${b:-0}))
    done
    echo "$u $s"
}

# Resident memory (KiB, VmRSS) of a process and its children.
rss_kib() {
    local total=0 p k
    for p in $(procs "$1"); do
        k=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + ${k:-0}))
    done
    echo "$total"
}

# CPU microseconds per unit: cpu_us TICKS COUNT
cpu_us() { awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (n > 0) ? t * 1e6 / hz / n : 0 }'; }

# p99 in ms of h2load's per-request log (third column: microseconds).
log_p99() {
    cut -f3 "$1" | sort -n | awk '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f", NR ? v[i] / 1000 : 0 }'
}

# The machine's CPU ticks in all, and those stolen by the hypervisor (/proc/stat): a run
# taken while the host gave the guest's CPUs to others measures the host, not the proxies.
host_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $9 }' /proc/stat; }
# steal_pct T0 STEAL0 T1 STEAL1: the share of the interval's CPU time stolen, in percent.
steal_pct() { awk -v t="$(($3 - $1))" -v s="$(($4 - $2))" 'BEGIN { printf "%.1f", (t > 0) ? s * 100 / t : 0 }'; }

# With SYSCALLS=1: counts the proxy's system calls by kind during a load (kernel tracepoints,
# not timings) into OUT.syscalls; the perf process is left in SYSCALLS_PID for syscalls_stop.
syscalls_start() {
    local out=$1 pid=$2
    SYSCALLS_PID=""
    [ "${SYSCALLS:-0}" = 1 ] || return 0
    perf stat -x, -o "$out.syscalls" -p "$(procs "$pid" | paste -sd,)" -e raw_syscalls:sys_enter \
        -e syscalls:sys_enter_epoll_wait -e syscalls:sys_enter_recvfrom -e syscalls:sys_enter_sendto \
        -e syscalls:sys_enter_read -e syscalls:sys_enter_write -e syscalls:sys_enter_writev \
        -e syscalls:sys_enter_readv -e syscalls:sys_enter_futex -e syscalls:sys_enter_sched_yield \
        >/dev/null 2>&1 &
    SYSCALLS_PID=$!
    # Machine-wide: how often a thread (the client's, the origin's, the proxy's) was woken from
    # sleep, and context switches. A proxy that hands data to a sleeping peer pays for the
    # wake-up inside its own send on loopback.
    perf stat -x, -a -o "$out.wakeups" -e sched:sched_wakeup -e sched:sched_switch >/dev/null 2>&1 &
    WAKEUPS_PID=$!
}

# With PROFILE=1: samples the proxy's stacks during a load (`perf record` on the cpu-clock
# software event, which works without a PMU, 999 Hz) and writes the flat profile by DSO and
# symbol (self time) into OUT.profile; the perf process is left in PROFILE_PID.
profile_start() {
    local out=$1 pid=$2
    PROFILE_PID=""
    [ "${PROFILE:-0}" = 1 ] || return 0
    perf record -q -e cpu-clock -F 999 -g -o "$out.perf.data" -p "$(procs "$pid" | paste -sd,)" \
        >/dev/null 2>&1 &
    PROFILE_PID=$!
}

profile_stop() {
    [ -n "$PROFILE_PID" ] || return 0
    kill -INT "$PROFILE_PID" 2>/dev/null || true
    wait "$PROFILE_PID" 2>/dev/null || true
    perf report -q -i "$1.perf.data" -g none --no-children --sort dso,sym --percent-limit 0.3 \
        >"$1.profile" 2>/dev/null || true
}

# syscalls_stop OUT REQUESTS: ends the count and notes the requests it covers.
syscalls_stop() {
    [ -n "$SYSCALLS_PID" ] || return 0
    kill -INT "$SYSCALLS_PID" 2>/dev/null || true
    wait "$SYSCALLS_PID" 2>/dev/null || true
    echo "requests=$2" >>"$1.syscalls"
    kill -INT "$WAKEUPS_PID" 2>/dev/null || true
    wait "$WAKEUPS_PID" 2>/dev/null || true
    echo "requests=$2" >>"$1.wakeups"
}

# One wrk run against URL: prints "rps p99_ms errors cpu_us_per_request".
wrk_once() {
    local url=$1 out=$2 pid=$3 c0 c1 s0 s1
    c0=$(cpu_ticks "$pid")
    s0=$(cpu_split "$pid")
    syscalls_start "$out" "$pid"
    profile_start "$out" "$pid"
    OPENSSL_CONF="$WORK/client.cnf" timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
        -H "Host: app.test" "$url" >"$out" 2>&1 || true
    syscalls_stop "$out" "$(awk '/ requests in / { print $1 }' "$out")"
    profile_stop "$out"
    c1=$(cpu_ticks "$pid")
    s1=$(cpu_split "$pid")
    # The proxy's user and system ticks apart, for the raw output (the table has their sum).
    echo "cpu_ticks_user_sys_before=${s0/ /,} after=${s1/ /,} hz=$(getconf CLK_TCK)" >>"$out"
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

# One h2load run (HTTP/2 over TLS): prints "rps p99_ms errors cpu_us_per_request".
h2load_once() {
    local url=$1 out=$2 pid=$3 c0 c1 reqlog="$WORK/h2load.reqs" p99 rps ok err
    rm -f "$reqlog"
    local s0 s1
    c0=$(cpu_ticks "$pid")
    s0=$(cpu_split "$pid")
    syscalls_start "$out" "$pid"
    profile_start "$out" "$pid"
    OPENSSL_CONF="$WORK/client.cnf" timeout $((DURATION + 30)) h2load -t"$THREADS" \
        -c"$H2_CONNS" -m"$H2_STREAMS" -D"$DURATION" -H ":authority: app.test" \
        --log-file="$reqlog" "$url" >"$out" 2>&1 || true
    c1=$(cpu_ticks "$pid")
    s1=$(cpu_split "$pid")
    syscalls_stop "$out" "$(awk '/^requests:/ { print $8 }' "$out")"
    profile_stop "$out"
    echo "cpu_ticks_user_sys_before=${s0/ /,} after=${s1/ /,} hz=$(getconf CLK_TCK)" >>"$out"
    p99=0
    if [ -s "$reqlog" ]; then
        p99=$(log_p99 "$reqlog")
        { echo "first lines of --log-file (start µs, status, duration µs):"; head -n 3 "$reqlog"; } >>"$out"
    fi
    rm -f "$reqlog"
    # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
    # status codes: N 2xx, N 3xx, N 4xx, N 5xx
    read -r rps ok err < <(awk '
        /^finished in/ { for (i = 1; i <= NF; i++) if ($(i + 1) == "req/s,") rps = $i }
        /^requests:/ { ok = $8; err = $10 + $12 + $14 }
        /^status codes:/ { err += $5 + $7 + $9 }
        END { printf "%s %d %d\n", (rps == "" ? 0 : rps), ok + 0, err + 0 }
    ' "$out")
    echo "$rps $p99 $err $(cpu_us $((c1 - c0)) "$ok")"
}

# One handshake run: bench/loadgen's tls-handshakes, HS_CONNS connections at a time, each a
# full TLS handshake (rustls client, resumption off), then close. Prints "handshakes_per_s
# p99_ms errors cpu_us_per_handshake" (p99: connect + handshake, as the client saw it).
handshake_once() {
    local port=$1 out=$2 pid=$3 c0 c1 n rate p99 fails
    c0=$(cpu_ticks "$pid")
    timeout $((DURATION + 30)) "$LOADGEN" tls-handshakes --target "127.0.0.1:$port" \
        --secs "$DURATION" --concurrency "$HS_CONNS" >"$out" 2>&1 || true
    c1=$(cpu_ticks "$pid")
    # handshakes=N failed=N secs=S per_s=R p99_ms=P
    read -r n fails rate p99 < <(awk '/^handshakes=/ {
        for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        print v["handshakes"], v["failed"], v["per_s"], v["p99_ms"] }' "$out")
    echo "${rate:-0} ${p99:-0} ${fails:-1} $(cpu_us $((c1 - c0)) "${n:-0}")"
}

# One idle-memory run against a freshly started proxy (memory freed by earlier load would
# otherwise be reused and hide the cost). The proxy's RSS is read when half of the clients
# are open and again when all are: the slope over the second half leaves out what the first
# connections set up once (buffers, pools, allocator arenas). Prints "kib_per_client opened
# failed".
idle_once() {
    local name=$1 port=$2 mode=$3 out=$4 pid pid_var mid after helper ready="$WORK/idle.ready"
    restart_proxy "$name"
    pid_var="PID_$name"
    pid=${!pid_var}
    rm -f "$ready" "$ready.half" "$ready.go"
    python3 "$ROOT/bench/conn_client.py" idle "127.0.0.1:$port" app.test "$IDLE_CLIENTS" \
        "$mode" "$ready" 60 >"$out" 2>&1 &
    helper=$!
    wait_file "$ready.half" "$helper" "$out"
    sleep 1
    mid=$(rss_kib "$pid")
    touch "$ready.go"
    wait_file "$ready" "$helper" "$out"
    sleep 1
    after=$(rss_kib "$pid")
    kill "$helper" 2>/dev/null || true
    wait "$helper" || true
    echo "rss_half_kib=$mid rss_all_kib=$after" >>"$out"
    grep -q "^opened=$IDLE_CLIENTS failed=0 " "$out" || die "$name: not all $IDLE_CLIENTS idle clients opened (see $out)"
    awk -v m="$mid" -v a="$after" -v n=$((IDLE_CLIENTS - IDLE_CLIENTS / 2)) '
        /^opened=/ { split($1, o, "="); split($2, f, "=") }
        END { printf "%.2f %d %d\n", (a - m) / n, o[2], f[2] }
    ' "$out"
}

# wait_file FILE PID OUT: until FILE exists (at most 120 s, and while PID lives).
wait_file() {
    local _
    for _ in $(seq 1200); do
        [ -e "$1" ] && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    kill "$2" 2>/dev/null || true
    wait "$2" || true
    die "idle clients did not get to $1 (see $3)"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }

# --- servers ---------------------------------------------------------------------------------

# P_*: plain HTTP listeners; T_*: TLS listeners.
P_ORIGIN=$(free_port)
P_GATEHOUSE=$(free_port)
P_NGINX=$(free_port)
P_HAPROXY=$(free_port)
T_GATEHOUSE=$(free_port)
T_NGINX=$(free_port)
T_HAPROXY=$(free_port)
P_L4=$(free_port)
T_L4=$(free_port)

mkdir -p "$WORK/www" "$WORK/origin" "$WORK/proxy"
head -c "$SIZE" /dev/zero | tr '\0' 'x' >"$WORK/www/small"

# One certificate for all three: ECDSA P-256, self-signed, app.test and 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=app.test \
    -addext "subjectAltName=DNS:app.test,IP:127.0.0.1" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/haproxy.pem"

# The clients' TLS: 1.3 only, one cipher suite, one group.
cat >"$WORK/client.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1.3
Ciphersuites = TLS_AES_128_GCM_SHA256
Groups = X25519
EOF

cat >"$WORK/origin.conf" <<EOF
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile 16384;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/error.log warn;
events { worker_connections 8192; }
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

[[listeners]]
name = "revtls"
kind = "reverse"
listen = "127.0.0.1:$T_GATEHOUSE"
max_connections = 10000
idle_per_server = 256
[listeners.tls]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
min_version = "1.3"
[[listeners.hosts]]
names = ["app.test"]
[[listeners.hosts.routes]]
pool = "origin"

[[pools]]
name = "origin"
[[pools.servers]]
address = "127.0.0.1:$P_ORIGIN"

# All clients come from 127.0.0.1: no per-address cap (default 1000), as for nginx and HAProxy.
[limits.per_client]
max_connections = 0

[access_log]
path = "off"

# PER_CORE=1 (the default, as Gatehouse's own): each worker thread its own event loop
# (nginx's and HAProxy's model); PER_CORE=0: the shared scheduler.
[runtime]
per_core = $( [ "${PER_CORE:-1}" = 1 ] && echo true || echo false )
EOF

cat >"$WORK/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $WORKERS;
worker_rlimit_nofile 16384;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream origin {
        server 127.0.0.1:$P_ORIGIN;
        keepalive 256;
    }
    server {
        listen 127.0.0.1:$P_NGINX;
        listen 127.0.0.1:$T_NGINX ssl http2;
        server_name app.test;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
        ssl_ecdh_curve X25519;
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

cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 8000
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
    bind 127.0.0.1:$T_HAPROXY ssl crt $WORK/haproxy.pem alpn h2,http/1.1 ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256 curves X25519
    default_backend origin
backend origin
    server o1 127.0.0.1:$P_ORIGIN
EOF

# The layer-4 reference (L4_REF=1): HAProxy relaying bytes, no HTTP parsing, no header
# edits, no upstream pool; the same TLS settings as the HTTP peers.
cat >"$WORK/haproxy-l4.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend relay
    bind 127.0.0.1:$P_L4
    bind 127.0.0.1:$T_L4 ssl crt $WORK/haproxy.pem alpn http/1.1 ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256 curves X25519
    default_backend origin
backend origin
    server o1 127.0.0.1:$P_ORIGIN
EOF
if [ "$L4_REF" = 1 ]; then
    start l4 "$P_L4" haproxy -db -f "$WORK/haproxy-l4.cfg"
    wait_port "$T_L4"
fi

# start_proxy NAME: starts it (again) and waits for both its listeners.
start_proxy() {
    case "$1" in
    gatehouse) start gatehouse "$P_GATEHOUSE" env TOKIO_WORKER_THREADS="$WORKERS" "$GATEHOUSE" --config "$WORK/gatehouse.toml" ;;
    nginx) start nginx "$P_NGINX" nginx -c "$WORK/nginx.conf" -p "$WORK/proxy" ;;
    haproxy) start haproxy "$P_HAPROXY" haproxy -db -f "$WORK/haproxy.cfg" ;;
    esac
    local tls_var="T_${1^^}"
    wait_port "${!tls_var}"
}

# restart_proxy NAME: a fresh process (the idle-memory runs start from one), warmed by one
# request in the clear and one over TLS.
restart_proxy() {
    local pid_var="PID_$1" old p keep=()
    old=${!pid_var}
    kill -TERM -- "-$old" 2>/dev/null || kill -TERM "$old" 2>/dev/null || true
    wait "$old" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [ "$p" = "$old" ] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
    start_proxy "$1"
    local port_var="P_${1^^}" tls_var="T_${1^^}"
    curl -fsS -o /dev/null -H "Host: app.test" "http://127.0.0.1:${!port_var}/small" || die "$1 does not answer after a restart"
    curl -fsSk -o /dev/null -H "Host: app.test" "https://127.0.0.1:${!tls_var}/small" || die "$1 does not answer over TLS after a restart"
}

for s in "${PROXIES[@]}"; do
    start_proxy "$s"
done

# Every proxy answers before the load starts, in the clear and over TLS (HTTP/1.1 and h2);
# what each TLS handshake agreed goes in the report.
declare -A TLS_AGREED
for s in "${PROXIES[@]}"; do
    port_var="P_${s^^}"
    tls_var="T_${s^^}"
    curl -fsS -o /dev/null -H "Host: app.test" "http://127.0.0.1:${!port_var}/small" ||
        die "$s does not answer (see $WORK)"
    for v in --http1.1 --http2; do
        curl -fsSk "$v" -o /dev/null -H "Host: app.test" "https://127.0.0.1:${!tls_var}/small" ||
            die "$s does not answer over TLS ($v) (see $WORK)"
    done
    OPENSSL_CONF="$WORK/client.cnf" timeout 10 openssl s_client -connect "127.0.0.1:${!tls_var}" \
        </dev/null >"$WORK/tls-$s.out" 2>&1 || true
    TLS_AGREED[$s]=$(awk '
        /^New, / { sub(/^New, /, ""); sub(/, Cipher is /, " "); v = $0 }
        /^Server Temp Key:/ { sub(/^Server Temp Key: /, ""); sub(/,.*/, ""); k = $0 }
        /^Peer signature type:/ { sig = $NF }
        END { print v " " k " " sig }
    ' "$WORK/tls-$s.out")
    log "$s TLS: ${TLS_AGREED[$s]}"
done

# --- load ------------------------------------------------------------------------------------

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
# The origin directly in h1, the layer-4 reference (L4_REF=1) in h1 and tls-h1.
servers_of() {
    local l4=""
    case "$1" in h1 | tls-h1) [ "$L4_REF" = 1 ] && l4=l4 ;; esac
    if [ "$1" = h1 ]; then echo origin "${PROXIES[@]}" $l4; else echo "${PROXIES[@]}" $l4; fi
}
for scen in $SCENARIOS; do
    for run in $(seq "$RUNS"); do
        for s in $(servers_of "$scen"); do
            port_var="P_${s^^}"
            tls_var="T_${s^^}"
            pid_var="PID_$s"
            out="$WORK/$scen-$s-$run.out"
            read -r t0 st0 < <(host_ticks)
            case "$scen" in
            h1) r=$(wrk_once "http://127.0.0.1:${!port_var}/small" "$out" "${!pid_var}") ;;
            tls-h1) r=$(wrk_once "https://127.0.0.1:${!tls_var}/small" "$out" "${!pid_var}") ;;
            tls-h2) r=$(h2load_once "https://127.0.0.1:${!tls_var}/small" "$out" "${!pid_var}") ;;
            handshake) r=$(handshake_once "${!tls_var}" "$out" "${!pid_var}") ;;
            idle)
                # Not in $(...): restart_proxy must change PIDS and PID_<name> here.
                idle_once "$s" "${!port_var}" plain "$out" >"$WORK/idle-h1.r"
                idle_once "$s" "${!tls_var}" tls "$WORK/$scen-tls-$s-$run.out" >"$WORK/idle-tls.r"
                r="$(cat "$WORK/idle-h1.r") $(cat "$WORK/idle-tls.r")"
                ;;
            esac
            echo "$r" >"$WORK/result-$scen-$s-$run.out"
            read -r t1 st1 < <(host_ticks)
            steal=$(steal_pct "$t0" "$st0" "$t1" "$st1")
            echo "$steal" >"$WORK/steal-$scen-$s-$run.out"
            log "$scen run $run $s: $r (steal ${steal}%)"
        done
    done
done

# --- report ----------------------------------------------------------------------------------

col() { for r in $(seq "$RUNS"); do awk -v c="$3" '{print $c}' "$WORK/result-$1-$2-$r.out"; done | median; }
# ratio A B: A / B to two places, "-" when B is 0 or missing.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0 && a != "-") printf "%.2fx", a / b; else printf "-" }'; }
# per_run SCEN: Gatehouse's req/s over the better peer's (nginx's for handshakes) within each
# run, whose servers are measured minutes apart at most, so the machine's drift from one
# minute to the next (the same server can differ by 20% between runs) mostly cancels; then
# the median of those ratios and the ratios themselves.
per_run() {
    local r g n h list=()
    for r in $(seq "$RUNS"); do
        g=$(awk '{print $1}' "$WORK/result-$1-gatehouse-$r.out")
        n=$(awk '{print $1}' "$WORK/result-$1-nginx-$r.out")
        h=$(awk '{print $1}' "$WORK/result-$1-haproxy-$r.out")
        [ "$1" = handshake ] && h=0
        list+=("$(awk -v g="$g" -v n="$n" -v h="$h" 'BEGIN { b = (n >= h) ? n : h; if (b > 0) printf "%.2f", g / b; else printf "-" }')")
    done
    echo "$(printf '%s\n' "${list[@]}" | grep -v '^-$' | median)x (${list[*]})"
}
label() {
    case "$1" in
    h1) echo "HTTP/1.1 keep-alive" ;; tls-h1) echo "TLS, HTTP/1.1 keep-alive" ;;
    tls-h2) echo "TLS, HTTP/2" ;; handshake) echo "new TLS handshakes" ;;
    esac
}
{
    echo "Machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), Linux $(uname -r); $(date -u +%Y-%m-%d); gatehouse at $(cd "$ROOT" && git rev-parse --short HEAD)."
    echo "Versions: $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | head -1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}'), $(h2load --version | head -1), $(openssl version | awk '{print "OpenSSL " $2}')."
    echo "TLS agreed: gatehouse ${TLS_AGREED[gatehouse]}; nginx ${TLS_AGREED[nginx]}; haproxy ${TLS_AGREED[haproxy]}."
    echo "Load: WORKERS=$WORKERS, PER_CORE=${PER_CORE:-1}, GET of a $SIZE-byte file; h1 and tls-h1: wrk -t$THREADS -c$CONNS -d${DURATION}s --latency; tls-h2: h2load -t$THREADS -c$H2_CONNS -m$H2_STREAMS -D$DURATION; handshake: loadgen tls-handshakes --concurrency $HS_CONNS --secs $DURATION (p99: connect + handshake); idle: $IDLE_CLIENTS connections; medians of $RUNS runs; load average before: $LOAD."
    echo "CPU time stolen by the hypervisor during a run (/proc/stat steal): at most $(cat "$WORK"/steal-*.out | sort -g | tail -1)%, median $(cat "$WORK"/steal-*.out | median)% (a run above a few percent measured the host: redo it)."
    echo
    echo "| scenario | server | req/s (handshakes/s) | p99 (ms) | errors | CPU µs per request (handshake) |"
    echo "| --- | --- | ---: | ---: | ---: | ---: |"
    for scen in $SCENARIOS; do
        [ "$scen" = idle ] && continue
        for s in $(servers_of "$scen"); do
            name=$s
            [ "$s" = origin ] && name="origin (direct, no proxy)"
            [ "$s" = l4 ] && name="haproxy mode tcp (layer-4 relay: reference, no HTTP work)"
            echo "| $(label "$scen") | $name | $(col "$scen" "$s" 1) | $(col "$scen" "$s" 2) | $(col "$scen" "$s" 3) | $(col "$scen" "$s" 4) |"
        done
    done
    if want idle; then
        echo
        echo "| server | idle KiB per client, HTTP/1.1 | idle KiB per client, TLS | clients opened (h1 / TLS) |"
        echo "| --- | ---: | ---: | ---: |"
        for s in "${PROXIES[@]}"; do
            echo "| $s | $(col idle "$s" 1) | $(col idle "$s" 4) | $(col idle "$s" 2) / $(col idle "$s" 5) of $IDLE_CLIENTS |"
        done
    fi
    echo
    echo "Gatehouse against the aims of issue 9 (req/s >= 1.1x the better peer, p99 and CPU per request at or below both; handshakes/s >= nginx):"
    echo
    echo "| scenario | req/s: gatehouse / better peer | the same within each run: median (runs) | p99: / nginx, / haproxy | CPU per request: / nginx, / haproxy | aim met |"
    echo "| --- | ---: | ---: | ---: | ---: | --- |"
    for scen in $SCENARIOS; do
        [ "$scen" = idle ] && continue
        g1=$(col "$scen" gatehouse 1) n1=$(col "$scen" nginx 1) h1=$(col "$scen" haproxy 1)
        g2=$(col "$scen" gatehouse 2) n2=$(col "$scen" nginx 2) h2=$(col "$scen" haproxy 2)
        g4=$(col "$scen" gatehouse 4) n4=$(col "$scen" nginx 4) h4=$(col "$scen" haproxy 4)
        if [ "$scen" = handshake ]; then
            best=nginx rate=$(ratio "$g1" "$n1") p99="$(ratio "$g2" "$n2"), $(ratio "$g2" "$h2")"
            met=$(awk -v g="$g1" -v n="$n1" 'BEGIN { print (g >= n) ? "yes" : "**no**" }')
        else
            best=$(awk -v n="$n1" -v h="$h1" 'BEGIN { print (n >= h) ? "nginx" : "haproxy" }')
            bv=$n1
            [ "$best" = haproxy ] && bv=$h1
            rate=$(ratio "$g1" "$bv") p99="$(ratio "$g2" "$n2"), $(ratio "$g2" "$h2")"
            met=$(awk -v g="$g1" -v b="$bv" -v gp="$g2" -v np="$n2" -v hp="$h2" -v gc="$g4" -v nc="$n4" -v hc="$h4" \
                'BEGIN { print (g >= 1.1 * b && gp <= np && gp <= hp && gc <= nc && gc <= hc) ? "yes" : "**no**" }')
        fi
        echo "| $(label "$scen") | $rate (of $best) | $(per_run "$scen") | $p99 | $(ratio "$g4" "$n4"), $(ratio "$g4" "$h4") | $met |"
    done
    if [ "$L4_REF" = 1 ]; then
        for scen in h1 tls-h1; do
            want "$scen" || continue
            l=$(col "$scen" l4 1) n1=$(col "$scen" nginx 1) h1=$(col "$scen" haproxy 1)
            bv=$(awk -v n="$n1" -v h="$h1" 'BEGIN { print (n >= h) ? n : h }')
            echo "| $(label "$scen"): the layer-4 relay (reference) | $(ratio "$l" "$bv") of the better peer; gatehouse / relay $(ratio "$(col "$scen" gatehouse 1)" "$l") | - | - | - | (reference) |"
        done
    fi
    if want idle; then
        echo "| idle memory per client (h1; TLS) | - | - | - | - | gatehouse / nginx $(ratio "$(col idle gatehouse 1)" "$(col idle nginx 1)"); $(ratio "$(col idle gatehouse 4)" "$(col idle nginx 4)"), / haproxy $(ratio "$(col idle gatehouse 1)" "$(col idle haproxy 1)"); $(ratio "$(col idle gatehouse 4)" "$(col idle haproxy 4)") (no aim) |"
    fi
} | tee "$WORK/summary.out"
