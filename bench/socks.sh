#!/usr/bin/env bash
# bench/socks.sh: Gatehouse beside Dante (danted) and microsocks as SOCKS5 servers, on loopback.
#
# Measures, with the same load client (bench/loadgen) and the same source/echo servers:
#   1. single-stream CONNECT throughput: BYTES from a source server through each SOCKS server,
#      against the same stream sent directly over loopback;
#   2. short-connection rate: COUNT sessions, CONC at a time, each a SOCKS5 handshake + CONNECT
#      + a 64-byte echo + close; failed sessions are counted;
#   3. idle tunnels: IDLE tunnels opened (each checked with an echo) and held idle for HOLD
#      seconds: SOCKS5 through each server, and HTTP CONNECT through Gatehouse; the server's
#      descriptors and memory (PSS, all its processes) per idle tunnel, then every tunnel
#      checked again.
# Each measurement runs RUNS times (servers interleaved); medians are printed as a markdown
# table at the end; raw outputs land in bench/results/socks-<time>/.
#
# Needs root for apt-get (only when danted or microsocks is missing). All traffic stays on
# 127.0.0.1; every load is bounded in bytes or count (and in time); every process started here
# is killed on exit.
#
# Knobs (environment): RUNS=3 BYTES=4294967296 COUNT=20000 CONC=50 NICE=0 IDLE=5000 HOLD=10
# SCENARIOS="throughput rate idle" (any subset, e.g. SCENARIOS=idle IDLE=200 for a quick check)
#   PER_CORE=1 (Gatehouse's `[runtime] per_core`, its default; 0: the shared scheduler)
#   GATEHOUSE_BIN=path (measure that binary; default: build this tree's release binary)
set -euo pipefail

RUNS=${RUNS:-3}
BYTES=${BYTES:-4294967296}
COUNT=${COUNT:-20000}
CONC=${CONC:-50}
IDLE=${IDLE:-5000}
HOLD=${HOLD:-10}
SCENARIOS=${SCENARIOS:-throughput rate idle}
has() { [[ " $SCENARIOS " == *" $1 "* ]]; }
# Idle tunnels need descriptors: the load client and the echo server hold one per tunnel.
ulimit -n "$(ulimit -Hn)"

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
# GATEHOUSE_BIN: measure that binary instead of building this tree's (an A/B of two builds).
[ -n "${GATEHOUSE_BIN:-}" ] || (cd "$ROOT" && cargo build --release --quiet --bin gatehouse)
cargo build --release --quiet --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
GATEHOUSE=${GATEHOUSE_BIN:-$ROOT/target/release/gatehouse}
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

[runtime]
per_core = $( [ "${PER_CORE:-1}" = 1 ] && echo true || echo false )

# The source and echo servers are on loopback, which the destination guard refuses by default.
[[policy.rules]]
name = "bench-reach-loopback"
action = "allow"
dest_addrs = ["127.0.0.0/8"]
EOF
start gatehouse "$GATEHOUSE" --config "$WORK/gatehouse.toml"
GH_PID=${PIDS[-1]}

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
DANTE_PID=${PIDS[-1]}

MICRO_PORT=$("$LG" free-port)
start microsocks microsocks -i 127.0.0.1 -p "$MICRO_PORT"
MICRO_PID=${PIDS[-1]}

for port in "$GH_PORT" "$DANTE_PORT" "$MICRO_PORT"; do
    "$LG" wait-port --addr "127.0.0.1:$port" || die "nothing listening on $port (see $WORK)"
done

# Each server's session (its processes), for the CPU it spends: none for direct.
declare -A SID=([direct]="" [gatehouse]=$GH_PID [dante]=$DANTE_PID [microsocks]=$MICRO_PID)

# cpu_ticks SID: user + system clock ticks of every process of the session (threads included),
# with those of the children each has reaped (Dante forks: its ended helpers count too).
cpu_ticks() {
    local p t=0 n
    for p in $(pgrep -s "$1"); do
        n=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$p/stat" 2>/dev/null) || n=0
        t=$((t + ${n:-0}))
    done
    echo "$t"
}

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

# field FILE KEY: the value of KEY=... on the last line of FILE; nothing when FILE is absent
# (a scenario left out, which the report shows as "-").
field() { if [ -f "$1" ]; then tail -1 "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; fi; }

median() { sort -g | awk '{ v[NR] = $1 } END { print NR ? v[int((NR + 1) / 2)] : "-" }'; }

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 1. throughput ---------------------------------------------------------------------------

for run in $(seq "$RUNS"); do
    has throughput || break
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
    has rate || break
    for name in "${NAMES[@]}"; do
        log "connection rate run $run/$RUNS: $name"
        # shellcheck disable=SC2046
        sid=${SID[$name]}
        [ -z "$sid" ] || c0=$(cpu_ticks "$sid")
        run_nice "$LG" socks-rate $(proxy_args "$name") --target "$ECHO" --count "$COUNT" --concurrency "$CONC" \
            >"$WORK/rate-$name-$run.out.tmp"
        # The server's CPU per session (µs; all its processes), on the line the report reads.
        cpu=-
        [ -z "$sid" ] || cpu=$(awk -v d=$(($(cpu_ticks "$sid") - c0)) -v hz="$(getconf CLK_TCK)" -v n="$COUNT" \
            'BEGIN { printf "%.1f", d * 1e6 / hz / n }')
        sed "\$s/\$/ cpu_us_per_session=$cpu/" "$WORK/rate-$name-$run.out.tmp" >"$WORK/rate-$name-$run.out"
        rm -f "$WORK/rate-$name-$run.out.tmp"
        cat "$WORK/rate-$name-$run.out" >&2
    done
done

# --- 3. idle tunnels ------------------------------------------------------------------------

# usage SID: "descriptors PSS_KiB" summed over every process of the server's session (Dante
# forks helpers; PSS shares their common pages out instead of counting them once each).
usage() {
    local fds=0 pss=0 p n
    for p in $(pgrep -s "$1"); do
        n=$(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l) || n=0
        fds=$((fds + n))
        n=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null) || n=0
        pss=$((pss + ${n:-0}))
    done
    echo "$fds $pss"
}

# idle_run NAME PROXY KIND SID: IDLE tunnels through PROXY, measured while held.
idle_run() {
    local name=$1 proxy=$2 kind=$3 sid=$4 f0 m0 f1 m1 lg i
    read -r f0 m0 < <(usage "$sid")
    log "idle tunnels: $name ($IDLE $kind tunnels, held ${HOLD}s)"
    run_nice "$LG" idle-tunnels --proxy "$proxy" --kind "$kind" --target "$ECHO" --count "$IDLE" \
        --concurrency "$CONC" --hold "$HOLD" >"$WORK/idle-$name.out" 2>&1 &
    lg=$!
    PIDS+=("$lg")
    # Opening is bounded by loadgen (10 s per tunnel, CONC at a time); this wait by 20 min.
    for i in $(seq 12000); do
        grep -q '^ready' "$WORK/idle-$name.out" && break
        kill -0 "$lg" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '^ready' "$WORK/idle-$name.out" || die "idle-tunnels through $name did not get ready (see $WORK)"
    sleep 1
    read -r f1 m1 < <(usage "$sid")
    wait "$lg" || die "idle-tunnels through $name failed (see $WORK)"
    echo "fds_before=$f0 fds_held=$f1 pss_before_kib=$m0 pss_held_kib=$m1" >>"$WORK/idle-$name.out"
    cat "$WORK/idle-$name.out" >&2
    # Let the server close the tunnels before the next run (bounded: 30 s).
    for i in $(seq 300); do
        read -r f1 m1 < <(usage "$sid")
        [ "$f1" -le $((f0 + 16)) ] && break
        sleep 0.1
    done
}

# idle_row NAME LABEL: one table row from a run's output.
idle_row() {
    local out="$WORK/idle-$1.out" opened failed ok f0 f1 m0 m1
    opened=$(sed -n 's/^opened=\([0-9]*\).*/\1/p' "$out")
    failed=$(sed -n 's/^opened=[0-9]* failed=\([0-9]*\).*/\1/p' "$out")
    ok=$(sed -n 's/^still_ok=\([0-9]*\).*/\1/p' "$out")
    f0=$(field "$out" fds_before)
    f1=$(field "$out" fds_held)
    m0=$(field "$out" pss_before_kib)
    m1=$(field "$out" pss_held_kib)
    awk -v l="$2" -v o="$opened" -v fa="$failed" -v k="$ok" -v f0="$f0" -v f1="$f1" -v m0="$m0" -v m1="$m1" \
        'BEGIN { n = (o > 0) ? o : 1; printf "| %s | %d | %d | %d | %.2f | %.2f |\n", l, o, fa, k, (f1 - f0) / n, (m1 - m0) / n }'
}

# idle_gatehouse KIND: a fresh Gatehouse with one listener of KIND (so no run reuses memory
# another freed), listening on IDLE_PORT. Every client is 127.0.0.1: no per-client limit.
# (Not run in $(...): start must add to PIDS in this shell.)
idle_gatehouse() {
    local port
    port=$("$LG" free-port)
    IDLE_PORT=$port
    {
        printf '[[listeners]]\nname = "idle"\nkind = "%s"\nlisten = "127.0.0.1:%s"\n' "$1" "$port"
        printf 'max_connections = 100000\n'
        [ "$1" = http ] && printf 'connect_ports = [%s]\n' "${ECHO##*:}"
        printf '\n[limits.per_client]\nmax_connections = 0\n\n[access_log]\npath = "off"\n'
        printf '\n[runtime]\nper_core = %s\n' "$( [ "${PER_CORE:-1}" = 1 ] && echo true || echo false )"
        printf '\n[[policy.rules]]\nname = "bench-loopback"\naction = "allow"\ndest_addrs = ["127.0.0.0/8"]\n'
    } >"$WORK/gatehouse-idle-$1.toml"
    start "gatehouse-idle-$1" "$GATEHOUSE" --config "$WORK/gatehouse-idle-$1.toml"
    "$LG" wait-port --addr "127.0.0.1:$port" || die "gatehouse-idle-$1 did not start (see $WORK)"
}

if has idle; then
    idle_gatehouse socks
    idle_run gatehouse-socks "127.0.0.1:$IDLE_PORT" socks "${PIDS[-1]}"
    idle_gatehouse http
    idle_run gatehouse-http "127.0.0.1:$IDLE_PORT" http "${PIDS[-1]}"
    idle_run dante "127.0.0.1:$DANTE_PORT" socks "$DANTE_PID"
    idle_run microsocks "127.0.0.1:$MICRO_PORT" socks "$MICRO_PID"
fi

# --- report ----------------------------------------------------------------------------------

report_idle() {
    echo
    echo "Idle tunnels: IDLE=$IDLE, opened $CONC at a time, each checked with a 16-byte echo, held ${HOLD}s, checked again."
    echo
    echo "| server | opened | failed | still working after the hold | descriptors per tunnel | PSS KiB per tunnel |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    idle_row gatehouse-socks "gatehouse (SOCKS5)"
    idle_row gatehouse-http "gatehouse (HTTP CONNECT)"
    idle_row dante "dante (SOCKS5)"
    idle_row microsocks "microsocks (SOCKS5)"
}

if ! has throughput && ! has rate; then
    {
        echo "Machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), Linux $(uname -r); $(date -u +%Y-%m-%d)."
        echo "Settings: SCENARIOS=\"$SCENARIOS\" IDLE=$IDLE HOLD=$HOLD CONC=$CONC NICE=$NICE; load average before: $LOAD."
        if has idle; then report_idle; fi
    } | tee "$WORK/summary.out"
    exit 0
fi
DIRECT=$(for r in $(seq "$RUNS"); do field "$WORK/tput-direct-$r.out" MiB_per_s; done | median)
{
    echo "Machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), Linux $(uname -r); $(date -u +%Y-%m-%d)."
    echo "Settings: SCENARIOS=\"$SCENARIOS\" RUNS=$RUNS BYTES=$BYTES COUNT=$COUNT CONC=$CONC NICE=$NICE; medians of $RUNS runs; load average before: $LOAD."
    echo
    echo "| server | CONNECT throughput (MiB/s) | % of direct | connections/s | failed | p50 ms | p99 ms | server CPU µs per session |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for name in "${NAMES[@]}"; do
        t=$(for r in $(seq "$RUNS"); do field "$WORK/tput-$name-$r.out" MiB_per_s; done | median)
        c=$(for r in $(seq "$RUNS"); do field "$WORK/rate-$name-$r.out" conn_per_s; done | median)
        f=$(for r in $(seq "$RUNS"); do field "$WORK/rate-$name-$r.out" failed; done | awk '{ s += $1 } END { print NR ? s : "-" }')
        p50=$(for r in $(seq "$RUNS"); do field "$WORK/rate-$name-$r.out" p50_ms; done | median)
        p99=$(for r in $(seq "$RUNS"); do field "$WORK/rate-$name-$r.out" p99_ms; done | median)
        cpu=$(for r in $(seq "$RUNS"); do field "$WORK/rate-$name-$r.out" cpu_us_per_session | { grep -v '^-$' || true; }; done | median)
        pct=$(awk -v a="$t" -v b="$DIRECT" 'BEGIN { if (b + 0 > 0) printf "%.0f%%", 100 * a / b; else print "-" }')
        [ "$name" = direct ] && name="direct (no proxy)"
        echo "| $name | $t | $pct | $c | $f | $p50 | $p99 | $cpu |"
    done
    echo
    echo "\"failed\" is the total over all runs. Direct rows: the same client straight to the source or echo server. Server CPU per session: user + system time of all the server's processes (threads included) over the rate runs, per session."
    if has idle; then report_idle; fi
} | tee "$WORK/summary.out"
