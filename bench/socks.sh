#!/usr/bin/env bash
# bench/socks.sh: Gatehouse beside Dante (danted) and microsocks as SOCKS5 servers, on loopback.
#
# Measures, with the same load client (bench/loadgen) and the same source/echo servers:
#   1. single-stream CONNECT throughput: BYTES from a source server through each SOCKS server,
#      against the same stream sent directly over loopback;
#   2. short-connection rate: COUNT sessions, CONC at a time, each a SOCKS5 handshake + CONNECT
#      + a 64-byte echo + close; failed sessions are counted.
# Each measurement runs RUNS times (servers interleaved); medians are printed as a markdown
# table at the end; raw outputs land in bench/results/socks-<time>/.
#
# Needs root for apt-get (only when danted or microsocks is missing). All traffic stays on
# 127.0.0.1; every load is bounded in bytes or count (and in time); every process started here
# is killed on exit.
#
# Knobs (environment): RUNS=3 BYTES=4294967296 COUNT=20000 CONC=50 NICE=0
set -euo pipefail

RUNS=${RUNS:-3}
BYTES=${BYTES:-4294967296}
COUNT=${COUNT:-20000}
CONC=${CONC:-50}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS="$ROOT/bench/results/socks-$STAMP"
WORK=$(mktemp -d /tmp/gatehouse-socks-bench.XXXXXX)
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
    cp "$WORK"/*.out "$WORK"/*.conf "$WORK"/*.toml "$WORK"/*.log "$RESULTS"/ 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'socks.sh: %s\n' "$*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------------

export PATH="$PATH:/usr/sbin"
if ! command -v danted >/dev/null || ! command -v microsocks >/dev/null; then
    log "installing dante-server microsocks"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dante-server microsocks >/dev/null
fi
command -v danted >/dev/null || die "danted is not installed"
command -v microsocks >/dev/null || die "microsocks is not installed"

log "building gatehouse and bench/loadgen (release)"
(cd "$ROOT" && cargo build --release --quiet --bin gatehouse)
cargo build --release --quiet --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
GATEHOUSE="$ROOT/target/release/gatehouse"
LG="$ROOT/bench/loadgen/target/release/loadgen"

# --- servers ---------------------------------------------------------------------------------

# Servers and the load client run at priority NICE (default 0; a negative value needs root), the same
# for all, so other work on the machine disturbs the figures less.
NICE=${NICE:-0}
run_nice() { nice -n "$NICE" "$@"; }

# start NAME CMD...: runs CMD in its own process group, output to $WORK/NAME.log.
start() {
    local name=$1
    shift
    setsid nice -n "$NICE" "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
}

# A loadgen server on port 0 (started in this shell, so cleanup knows its pid).
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

GH_PORT=$("$LG" free-port)
cat >"$WORK/gatehouse.toml" <<EOF
[[listeners]]
name = "socks"
kind = "socks"
listen = "127.0.0.1:$GH_PORT"
max_connections = 100000

[access_log]
path = "off"
EOF
start gatehouse "$GATEHOUSE" --config "$WORK/gatehouse.toml"

DANTE_PORT=$("$LG" free-port)
cat >"$WORK/danted.conf" <<EOF
logoutput: $WORK/danted-internal.log
internal: 127.0.0.1 port = $DANTE_PORT
external: 127.0.0.1
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {
    from: 127.0.0.0/8 to: 0.0.0.0/0
}
socks pass {
    from: 127.0.0.0/8 to: 0.0.0.0/0
    command: connect
}
EOF
start danted danted -f "$WORK/danted.conf" -N 1

MICRO_PORT=$("$LG" free-port)
start microsocks microsocks -i 127.0.0.1 -p "$MICRO_PORT"

for port in "$GH_PORT" "$DANTE_PORT" "$MICRO_PORT"; do
    "$LG" wait-port --addr "127.0.0.1:$port" || die "nothing listening on $port (see $WORK)"
done

declare -A PROXY=(
    [direct]=""
    [gatehouse]="127.0.0.1:$GH_PORT"
    [dante]="127.0.0.1:$DANTE_PORT"
    [microsocks]="127.0.0.1:$MICRO_PORT"
)
NAMES=(direct gatehouse dante microsocks)

proxy_args() {
    local p=${PROXY[$1]}
    [ -n "$p" ] && printf -- '--proxy %s' "$p"
    true
}

# field FILE KEY: the value of KEY=... on the last line of FILE.
field() { tail -1 "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 1. throughput ---------------------------------------------------------------------------

for run in $(seq "$RUNS"); do
    for name in "${NAMES[@]}"; do
        log "throughput run $run/$RUNS: $name"
        # shellcheck disable=SC2046
        run_nice "$LG" socks-throughput $(proxy_args "$name") --target "$SOURCE" --bytes "$BYTES" \
            >"$WORK/tput-$name-$run.out"
        cat "$WORK/tput-$name-$run.out" >&2
    done
done

# --- 2. connection rate ----------------------------------------------------------------------

for run in $(seq "$RUNS"); do
    for name in "${NAMES[@]}"; do
        log "connection rate run $run/$RUNS: $name"
        # shellcheck disable=SC2046
        run_nice "$LG" socks-rate $(proxy_args "$name") --target "$ECHO" --count "$COUNT" --concurrency "$CONC" \
            >"$WORK/rate-$name-$run.out"
        cat "$WORK/rate-$name-$run.out" >&2
    done
done

# --- report ----------------------------------------------------------------------------------

DIRECT=$(for r in $(seq "$RUNS"); do field "$WORK/tput-direct-$r.out" MiB_per_s; done | median)
{
    echo "Machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), Linux $(uname -r); $(date -u +%Y-%m-%d)."
    echo "Settings: RUNS=$RUNS BYTES=$BYTES COUNT=$COUNT CONC=$CONC NICE=$NICE; medians of $RUNS runs; load average before: $LOAD."
    echo
    echo "| server | CONNECT throughput (MiB/s) | % of direct | connections/s | failed | p50 ms | p99 ms |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for name in "${NAMES[@]}"; do
        t=$(for r in $(seq "$RUNS"); do field "$WORK/tput-$name-$r.out" MiB_per_s; done | median)
        c=$(for r in $(seq "$RUNS"); do field "$WORK/rate-$name-$r.out" conn_per_s; done | median)
        f=$(for r in $(seq "$RUNS"); do field "$WORK/rate-$name-$r.out" failed; done | awk '{ s += $1 } END { print s + 0 }')
        p50=$(for r in $(seq "$RUNS"); do field "$WORK/rate-$name-$r.out" p50_ms; done | median)
        p99=$(for r in $(seq "$RUNS"); do field "$WORK/rate-$name-$r.out" p99_ms; done | median)
        pct=$(awk -v a="$t" -v b="$DIRECT" 'BEGIN { printf "%.0f%%", 100 * a / b }')
        [ "$name" = direct ] && name="direct (no proxy)"
        echo "| $name | $t | $pct | $c | $f | $p50 | $p99 |"
    done
    echo
    echo "\"failed\" is the total over all runs. Direct rows: the same client straight to the source or echo server."
} | tee "$WORK/summary.out"
