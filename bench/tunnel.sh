#!/usr/bin/env bash
# bench/tunnel.sh: Gatehouse reverse tunnels beside rathole, each against direct loopback in the
# same run. One relay and one agent of each on 127.0.0.1, exposing the same local servers:
#   1. bulk throughput: one stream of BYTES from a source server through a published port
#      (rathole: a service), against the same stream straight from the source;
#   2. short HTTP requests/s and p99: wrk against nginx (a 100-byte file) through a published
#      port, against nginx directly;
#   3. SOCKS5 connect + 64-byte echo + close per second through the relay's via_agent SOCKS
#      port (rathole has no SOCKS: "n/a"), against the echo server directly.
# Gatehouse runs twice: its default TLS transport (rustls) and its opt-in plain TCP transport
# (`transport = "tcp"`), each a relay and agent pair of its own; rathole runs its default plain
# TCP transport.
# Medians of RUNS runs are printed as a markdown table; raw outputs land in
# bench/results/tunnel-<time>/.
#
# Needs rathole (`cargo install rathole`, at ~/.cargo/bin/rathole or on PATH; not with a PATHS
# that leaves it out), nginx and wrk.
# All traffic stays on 127.0.0.1; every load is bounded in bytes, count or time; every process
# started here is killed on exit.
#
# Knobs (environment): RUNS=3 BYTES=4294967296 COUNT=20000 CONC=50 DURATION=10s THREADS=2
#   CONNS=50 WORKERS=2 NICE=0 BUILD=release (BUILD=debug: use target/debug, for a smoke test)
#   PER_CORE=1 (Gatehouse's relay and agent with `[runtime] per_core = true`, as the tunnel
#   examples set; 0: the shared, work-stealing scheduler, `[runtime]`'s default)
#   LINKS=1 (Gatehouse's agents keep `connections = LINKS` links to their relay, 1-16)
#   PATHS="direct gatehouse gatehouse-plain rathole" (the columns, in this order; a subset for a
#   quick comparison)
#   GATEHOUSE_BIN=path: use that binary instead of building target/$BUILD/gatehouse
set -euo pipefail

RUNS=${RUNS:-3}
LINKS=${LINKS:-1}
case $LINKS in
    [1-9] | 1[0-6]) ;;
    *) printf 'tunnel.sh: LINKS must be 1 to 16\n' >&2; exit 1 ;;
esac
runtime_per_core=$( [ "${PER_CORE:-1}" = 1 ] && echo true || echo false )
BYTES=${BYTES:-4294967296}
COUNT=${COUNT:-20000}
CONC=${CONC:-50}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-50}
WORKERS=${WORKERS:-2}
NICE=${NICE:-0}
BUILD=${BUILD:-release}
PATHS=${PATHS:-direct gatehouse gatehouse-plain rathole}
read -r -a NAMES <<<"$PATHS"
want() { [[ " $PATHS " == *" $1 "* ]]; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS="$ROOT/bench/results/tunnel-$STAMP"
WORK=$(mktemp -d /tmp/gatehouse-tunnel-bench.XXXXXX)
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
    cp "$WORK"/*.out "$WORK"/*.toml "$WORK"/*.conf "$WORK"/*.log "$RESULTS"/ 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'tunnel.sh: %s\n' "$*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------------

export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"
if want rathole; then
    command -v rathole >/dev/null || die "rathole is not installed (cargo install rathole)"
fi
command -v nginx >/dev/null || die "nginx is not installed"
command -v wrk >/dev/null || die "wrk is not installed"

log "building gatehouse ($BUILD) and bench/loadgen (release)"
if [ -n "${GATEHOUSE_BIN:-}" ]; then
    GATEHOUSE=$GATEHOUSE_BIN
elif [ "$BUILD" = release ]; then
    (cd "$ROOT" && cargo build --release --quiet --bin gatehouse)
    GATEHOUSE="$ROOT/target/$BUILD/gatehouse"
else
    (cd "$ROOT" && cargo build --quiet --bin gatehouse)
    GATEHOUSE="$ROOT/target/$BUILD/gatehouse"
fi
[ -x "$GATEHOUSE" ] || die "no gatehouse binary at $GATEHOUSE"
cargo build --release --quiet --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
LG="$ROOT/bench/loadgen/target/release/loadgen"

# --- servers ---------------------------------------------------------------------------------

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

# nginx: the origin of the short HTTP requests.
P_WEB=$("$LG" free-port)
mkdir -p "$WORK/www"
head -c 100 /dev/zero | tr '\0' 'x' >"$WORK/www/small"
cat >"$WORK/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4000; }
http {
    access_log off;
    server { listen 127.0.0.1:$P_WEB; root $WORK/www; keepalive_requests 1000000; }
}
EOF
start nginx nginx -c "$WORK/nginx.conf" -p "$WORK"
WEB="127.0.0.1:$P_WEB"

# Gatehouse: relay (published ports, SOCKS via the agent) and agent, once with the TLS
# transport (suffix "") and once with the plain one (suffix "-plain").
"$GATEHOUSE" cert --name relay.test --out "$WORK/tunnel" >"$WORK/cert.out" 2>&1
TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
declare -A GH_BULK GH_WEB GH_SOCKS
# gatehouse_pair SUFFIX TRANSPORT: the ports are kept under the path's name, gatehouse$SUFFIX.
gatehouse_pair() {
    local sfx=$1 transport=$2 agents transport_relay transport_agent k="gatehouse$1"
    agents=$("$LG" free-port)
    GH_BULK[$k]=$("$LG" free-port)
    GH_WEB[$k]=$("$LG" free-port)
    GH_SOCKS[$k]=$("$LG" free-port)
    if [ "$transport" = tcp ]; then
        transport_relay='transport = "tcp"'
        transport_agent='transport = "tcp"'
    else
        transport_relay="tls = { cert = \"$WORK/tunnel/relay.test.crt\", key = \"$WORK/tunnel/relay.test.key\" }"
        transport_agent="server_name = \"relay.test\"
ca = \"$WORK/tunnel/relay.test.crt\""
    fi
    cat >"$WORK/relay$sfx.toml" <<EOF
[runtime]
per_core = $runtime_per_core
[[listeners]]
name = "agents"
kind = "tunnel"
listen = "127.0.0.1:$agents"
$transport_relay
[[listeners.agents]]
name = "bench"
token = "$TOKEN"

[[listeners]]
name = "bulk"
kind = "published"
listen = "127.0.0.1:${GH_BULK[$k]}"
agent = "bench"
service = "bulk"
max_connections = 100000

[[listeners]]
name = "web"
kind = "published"
listen = "127.0.0.1:${GH_WEB[$k]}"
agent = "bench"
service = "web"
max_connections = 100000

[[listeners]]
name = "socks"
kind = "socks"
listen = "127.0.0.1:${GH_SOCKS[$k]}"
via_agent = "bench"
max_connections = 100000

[access_log]
path = "off"
EOF
    cat >"$WORK/agent$sfx.toml" <<EOF
[runtime]
per_core = $runtime_per_core
[agent]
name = "bench"
token = "$TOKEN"
relays = ["127.0.0.1:$agents"]
connections = $LINKS
$transport_agent
allow = ["$ECHO"]
[agent.publish]
bulk = "$SOURCE"
web = "$WEB"

[access_log]
path = "off"
EOF
    start "gh-relay$sfx" env TOKIO_WORKER_THREADS="$WORKERS" "$GATEHOUSE" --config "$WORK/relay$sfx.toml"
    "$LG" wait-port --addr "127.0.0.1:$agents" || die "the relay did not start (see $WORK)"
    start "gh-agent$sfx" env TOKIO_WORKER_THREADS="$WORKERS" "$GATEHOUSE" agent --config "$WORK/agent$sfx.toml"
}
if want gatehouse; then gatehouse_pair "" tls; fi
if want gatehouse-plain; then gatehouse_pair "-plain" tcp; fi

# rathole: server and client, plain TCP transport, the same services.
RH_BULK=
RH_WEB=
if want rathole; then
    RH_CTRL=$("$LG" free-port)
    RH_BULK=$("$LG" free-port)
    RH_WEB=$("$LG" free-port)
    cat >"$WORK/rathole-server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$RH_CTRL"
[server.services.bulk]
token = "$TOKEN"
bind_addr = "127.0.0.1:$RH_BULK"
[server.services.web]
token = "$TOKEN"
bind_addr = "127.0.0.1:$RH_WEB"
EOF
    cat >"$WORK/rathole-client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$RH_CTRL"
[client.services.bulk]
token = "$TOKEN"
local_addr = "$SOURCE"
[client.services.web]
token = "$TOKEN"
local_addr = "$WEB"
EOF
    start rh-server env TOKIO_WORKER_THREADS="$WORKERS" rathole --server "$WORK/rathole-server.toml"
    start rh-client env TOKIO_WORKER_THREADS="$WORKERS" rathole --client "$WORK/rathole-client.toml"
fi

declare -A BULK=([direct]="$SOURCE") HTTP=([direct]="$WEB") SOCKS=()
for sfx in "" "-plain"; do
    if want "gatehouse$sfx"; then
        BULK[gatehouse$sfx]="127.0.0.1:${GH_BULK[gatehouse$sfx]}"
        HTTP[gatehouse$sfx]="127.0.0.1:${GH_WEB[gatehouse$sfx]}"
        SOCKS[gatehouse$sfx]="127.0.0.1:${GH_SOCKS[gatehouse$sfx]}"
    fi
done
if want rathole; then
    BULK[rathole]="127.0.0.1:$RH_BULK"
    HTTP[rathole]="127.0.0.1:$RH_WEB"
fi
for name in "${NAMES[@]}"; do
    [ -n "${HTTP[$name]:-}" ] || die "unknown path $name in PATHS"
    "$LG" wait-port --addr "${HTTP[$name]}" || die "nothing listening on ${HTTP[$name]} (see $WORK)"
    "$LG" wait-port --addr "${BULK[$name]}" || die "nothing listening on ${BULK[$name]} (see $WORK)"
done
# The agents are connected once a request goes through each.
for name in "${NAMES[@]}"; do
    for i in $(seq 100); do
        curl -s -o /dev/null -m 2 "http://${HTTP[$name]}/small" && break
        [ "$i" = 100 ] && die "the $name tunnel did not come up (see $WORK)"
        sleep 0.1
    done
done

field() { tail -1 "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 1. bulk throughput ----------------------------------------------------------------------

for run in $(seq "$RUNS"); do
    for name in "${NAMES[@]}"; do
        log "throughput run $run/$RUNS: $name"
        run_nice "$LG" socks-throughput --target "${BULK[$name]}" --bytes "$BYTES" \
            >"$WORK/tput-$name-$run.out"
        cat "$WORK/tput-$name-$run.out" >&2
    done
done

# --- 2. short HTTP requests ------------------------------------------------------------------

# wrk_once ADDR OUT: prints "rps p99_ms errors".
wrk_once() {
    run_nice wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "http://$1/small" >"$2" 2>&1 || true
    awk '
        /Requests\/sec/ { rps = $2 }
        /^ +99%/ { v = $2; unit = v; gsub(/[0-9.]/, "", unit); gsub(/[a-z]/, "", v);
            p99 = (unit == "us") ? v / 1000 : (unit == "s") ? v * 1000 : v }
        /Socket errors/ { err = $4 + $6 + $8 + $10 }
        /Non-2xx/ { err += $5 }
        END { printf "%s %.3f %d\n", (rps == "" ? 0 : rps), p99, err + 0 }' "$2"
}
for run in $(seq "$RUNS"); do
    for name in "${NAMES[@]}"; do
        r=$(wrk_once "${HTTP[$name]}" "$WORK/wrk-$name-$run.out")
        log "wrk run $run/$RUNS $name: $r (req/s p99_ms errors)"
        echo "$r" >"$WORK/http-$name-$run.out"
    done
done

# --- 3. SOCKS5 connect + echo + close --------------------------------------------------------

for run in $(seq "$RUNS"); do
    for name in "${NAMES[@]}"; do
        [ "$name" = rathole ] && continue
        log "SOCKS5 rate run $run/$RUNS: $name"
        if [ "$name" = direct ]; then
            run_nice "$LG" socks-rate --target "$ECHO" --count "$COUNT" --concurrency "$CONC" \
                >"$WORK/rate-direct-$run.out"
        else
            run_nice "$LG" socks-rate --proxy "${SOCKS[$name]}" --target "$ECHO" --count "$COUNT" \
                --concurrency "$CONC" >"$WORK/rate-$name-$run.out"
        fi
        cat "$WORK/rate-$name-$run.out" >&2
    done
done

# --- report ----------------------------------------------------------------------------------

tput() { field "$WORK/tput-$1-$2.out" Gbit_per_s; }
http_col() { cut -d' ' -f"$3" "$WORK/http-$1-$2.out"; }
rate() { field "$WORK/rate-$1-$2.out" "$3"; }
{
    echo "Machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), Linux $(uname -r); $(date -u +%Y-%m-%d)."
    rh="not run"
    if want rathole; then rh="$(rathole --version 2>/dev/null | tr -s ' \n' ' ' | cut -c1-80)"; fi
    echo "Versions: gatehouse $("$GATEHOUSE" --version | awk '{print $2}') ($BUILD; TLS and plain transports); rathole ($rh) (plain TCP transport); $(nginx -v 2>&1 | sed 's/.*: //'); wrk."
    echo "Settings: PATHS=\"$PATHS\" RUNS=$RUNS BYTES=$BYTES COUNT=$COUNT CONC=$CONC DURATION=$DURATION THREADS=$THREADS CONNS=$CONNS WORKERS=$WORKERS PER_CORE=${PER_CORE:-1} LINKS=$LINKS; medians; load average before: $LOAD."
    echo
    echo "| path | bulk (Gbit/s) | HTTP req/s | HTTP p99 (ms) | HTTP errors | SOCKS5 connect+echo+close/s | SOCKS5 p99 (ms) |"
    echo "|---|---|---|---|---|---|---|"
    declare -A LABEL=([direct]="direct" [gatehouse]="gatehouse (TLS)" [gatehouse-plain]="gatehouse (plain)" [rathole]="rathole (plain)")
    for name in "${NAMES[@]}"; do
        s_rate="n/a"
        s_p99="n/a"
        if [ "$name" != rathole ]; then
            s_rate=$(for r in $(seq "$RUNS"); do rate "$name" "$r" conn_per_s; done | median)
            s_p99=$(for r in $(seq "$RUNS"); do rate "$name" "$r" p99_ms; done | median)
        fi
        echo "| ${LABEL[$name]} | $(for r in $(seq "$RUNS"); do tput "$name" "$r"; done | median) | $(for r in $(seq "$RUNS"); do http_col "$name" "$r" 1; done | median) | $(for r in $(seq "$RUNS"); do http_col "$name" "$r" 2; done | median) | $(for r in $(seq "$RUNS"); do http_col "$name" "$r" 3; done | median) | $s_rate | $s_p99 |"
    done
} | tee "$WORK/report.out"
