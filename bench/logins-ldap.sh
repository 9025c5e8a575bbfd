#!/usr/bin/env bash
# bench/logins-ldap.sh: LDAP-backed Basic logins per second, Gatehouse beside Squid with its
# basic_ldap_auth helper, against one throwaway slapd, on loopback.
#
# Both proxies check Basic credentials by binding to the directory as the user
# (uid=<user>,ou=people,dc=test); the origin is nginx serving a 100-byte file. wrk sends
# absolute-form GETs, each request with the Proxy-Authorization of the next of USERS users
# (so requests on one connection carry different users). Two scenarios:
#   fresh:  the proxies' credential caches at 1 s (Squid aborts with credentialsttl 0), with
#           USERS large enough that no user comes back within a second: every request is
#           one directory login (check: USERS > the logins/s printed);
#   cached: the caches on (60 s): after the first pass over the users, logins come from the
#           cache.
# Gatehouse also reads the user's entry (name and memberOf) after the bind; Squid does not
# look up groups. Medians of RUNS runs are printed as a markdown table; raw outputs land in
# bench/results/logins-ldap-<time>/.
#
# Needs root for apt-get (only when a tool is missing). All traffic stays on 127.0.0.1; every
# load is bounded in time; every process started here is killed on exit.
#
# Knobs (environment): RUNS=3 DURATION=10s THREADS=2 CONNS=32 USERS=20000
#   GATEHOUSE=path (skip the release build, e.g. target/debug/gatehouse for a smoke test)
set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
USERS=${USERS:-20000}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS="$ROOT/bench/results/logins-ldap-$STAMP"
WORK=$(mktemp -d /tmp/gatehouse-bench-ldap.XXXXXX)
chmod 755 "$WORK"
PIDS=()
export PATH="$PATH:/usr/sbin"

cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    mkdir -p "$RESULTS"
    cp "$WORK"/*.out "$WORK"/*.conf "$WORK"/*.toml "$RESULTS"/ 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'logins-ldap.sh: %s\n' "$*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------------

HELPER=/usr/lib/squid/basic_ldap_auth
need=()
command -v slapd >/dev/null || need+=(slapd)
command -v ldapadd >/dev/null || need+=(ldap-utils)
command -v squid >/dev/null || [ -x "$HELPER" ] || need+=(squid)
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v ss >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
for cmd in slapd ldapadd squid nginx wrk ss base64; do
    command -v "$cmd" >/dev/null || die "$cmd is not installed"
done
[ -x "$HELPER" ] || die "$HELPER is missing (Debian's squid package has it)"

if [ -z "${GATEHOUSE:-}" ]; then
    log "building gatehouse (release)"
    (cd "$ROOT" && cargo build --release --quiet)
    GATEHOUSE="$ROOT/target/release/gatehouse"
fi

# A free loopback port: random, not in use by a listener, not handed out before.
TAKEN=" "
free_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        case "$TAKEN" in *" $p "*) continue ;; esac
        if ! ss -Htln "sport = :$p" | grep -q .; then
            TAKEN="$TAKEN$p "
            echo "$p"
            return
        fi
    done
    die "no free port"
}

wait_port() {
    local i
    for i in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    die "nothing listens on 127.0.0.1:$1"
}

# Starts a server in the background and waits for its port: start NAME PORT CMD...
start() {
    local name=$1 port=$2
    shift 2
    "$@" >"$WORK/$name.server.out" 2>&1 &
    PIDS+=($!)
    printf -v "PID_$name" '%s' "$!"
    wait_port "$port"
}

stop() {
    local var="PID_$1" keep=() p
    kill "${!var}" 2>/dev/null || true
    wait "${!var}" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [ "$p" = "${!var}" ] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

median() {
    sort -g | awk '{v[NR] = $1} END {
        if (NR == 0) print "-";
        else if (NR % 2) print v[(NR + 1) / 2];
        else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

P_LDAP=$(free_port)
P_ORIGIN=$(free_port)
P_GATEHOUSE=$(free_port)
P_SQUID=$(free_port)

# --- the directory ---------------------------------------------------------------------------

mkdir -p "$WORK/db"
cat >"$WORK/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile $WORK/slapd.pid
argsfile $WORK/slapd.args
threads 8
database mdb
suffix "dc=test"
rootdn "cn=admin,dc=test"
rootpw admin-pw
directory $WORK/db
maxsize 268435456
overlay memberof
access to attrs=userPassword by self write by anonymous auth by * none
access to * by users read by * none
EOF
{
    printf 'dn: dc=test\nobjectClass: dcObject\nobjectClass: organization\no: test\ndc: test\n\n'
    printf 'dn: ou=people,dc=test\nobjectClass: organizationalUnit\nou: people\n\n'
    printf 'dn: ou=groups,dc=test\nobjectClass: organizationalUnit\nou: groups\n\n'
    for i in $(seq 1 "$USERS"); do
        printf 'dn: uid=user%d,ou=people,dc=test\nobjectClass: inetOrgPerson\nuid: user%d\ncn: user%d\nsn: u\nuserPassword: pw%d\n\n' "$i" "$i" "$i" "$i"
    done
    printf 'dn: cn=staff,ou=groups,dc=test\nobjectClass: groupOfNames\ncn: staff\n'
    for i in $(seq 1 "$USERS"); do
        printf 'member: uid=user%d,ou=people,dc=test\n' "$i"
    done
} >"$WORK/tree.ldif"
log "slapd on 127.0.0.1:$P_LDAP with $USERS users"
start slapd "$P_LDAP" slapd -f "$WORK/slapd.conf" -h "ldap://127.0.0.1:$P_LDAP/" -d 32768
ldapadd -x -H "ldap://127.0.0.1:$P_LDAP" -D cn=admin,dc=test -w admin-pw -f "$WORK/tree.ldif" \
    >"$WORK/ldapadd.out"

# --- the origin and the proxies' configs -----------------------------------------------------

mkdir -p "$WORK/www" "$WORK/nginx"
printf '%099d\n' 0 >"$WORK/www/small"
chmod -R a+rX "$WORK/www"
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4000; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server { listen 127.0.0.1:$P_ORIGIN; root $WORK/www; location / { } }
}
EOF
start origin "$P_ORIGIN" nginx -c "$WORK/nginx.conf"

# $1: cache TTL in seconds, $2: the scenario.
gatehouse_config() {
    cat >"$WORK/gatehouse-$2.toml" <<EOF
[[listeners]]
name = "http"
kind = "http"
listen = "127.0.0.1:$P_GATEHOUSE"

[access_log]
path = "off"

[policy]
default = "deny"
[policy.listeners.http]
auth = true
[policy.failed_logins]
max_failures = 1000
[[policy.rules]]
name = "origin"
action = "allow"
dest_addrs = ["127.0.0.1/32"]

[policy.ldap]
url = "ldap://127.0.0.1:$P_LDAP"
bind_dn_template = "uid={user},ou=people,dc=test"
cache_ttl = "${1}s"
negative_cache_ttl = "0s"
max_connections = 32
EOF
}

squid_config() {
    cat >"$WORK/squid-$2.conf" <<EOF
http_port 127.0.0.1:$P_SQUID
pid_filename $WORK/squid-$2.pid
cache deny all
cache_mem 8 MB
access_log none
cache_log $WORK/squid-cache-$2.log
coredump_dir $WORK
shutdown_lifetime 1 seconds
auth_param basic program $HELPER -b ou=people,dc=test -u uid -h 127.0.0.1 -p $P_LDAP -v 3
auth_param basic children 32 startup=32 idle=4
auth_param basic credentialsttl $1 seconds
auth_param basic realm bench
acl users proxy_auth REQUIRED
acl origin dst 127.0.0.1/32
http_access allow origin users
http_access deny all
EOF
    touch "$WORK/squid-cache-$2.log"
    chown proxy "$WORK/squid-cache-$2.log" 2>/dev/null || true
}

# wrk: every request the next user's credentials.
{
    printf 'local tokens = {\n'
    for i in $(seq 1 "$USERS"); do
        printf '"%s",\n' "$(printf 'user%d:pw%d' "$i" "$i" | base64 -w0)"
    done
    printf '}\n'
    cat <<EOF
local i = math.random(#tokens)
request = function()
    i = i % #tokens + 1
    return wrk.format("GET", "http://127.0.0.1:$P_ORIGIN/small",
        { ["Host"] = "127.0.0.1:$P_ORIGIN", ["Proxy-Authorization"] = "Basic " .. tokens[i] })
end
EOF
} >"$WORK/logins.lua"

# One wrk run: prints "req_per_s non_2xx".
wrk_once() {
    local port=$1 out=$2
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$WORK/logins.lua" "http://127.0.0.1:$port/" >"$out" 2>&1 || true
    local rps bad
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out")
    echo "${rps:-0} ${bad:-0}"
}

# --- runs ------------------------------------------------------------------------------------

declare -A RPS BAD
for scenario in fresh cached; do
    ttl=1
    [ "$scenario" = cached ] && ttl=60
    gatehouse_config "$ttl" "$scenario"
    squid_config "$ttl" "$scenario"
    for run in $(seq 1 "$RUNS"); do
        for s in gatehouse squid; do
            if [ "$s" = gatehouse ]; then
                start gatehouse "$P_GATEHOUSE" "$GATEHOUSE" --config "$WORK/gatehouse-$scenario.toml"
                port=$P_GATEHOUSE
            else
                start squid "$P_SQUID" squid -N -f "$WORK/squid-$scenario.conf"
                port=$P_SQUID
            fi
            r=$(wrk_once "$port" "$WORK/wrk-$scenario-$s-$run.out")
            log "$scenario run $run $s: $r (req/s non-2xx)"
            RPS[$scenario-$s]+="${r%% *} "
            BAD[$scenario-$s]+="${r##* } "
            stop "$s"
        done
    done
done

printf '\n| Scenario | Server | logins/s (median of %s, %s each) | non-2xx (sum) |\n|---|---|---|---|\n' "$RUNS" "$DURATION"
for scenario in fresh cached; do
    for s in gatehouse squid; do
        m=$(tr ' ' '\n' <<<"${RPS[$scenario-$s]}" | grep . | median)
        b=$(tr ' ' '\n' <<<"${BAD[$scenario-$s]}" | grep . | awk '{t += $1} END {print t + 0}')
        printf '| %s | %s | %s | %s |\n' "$scenario" "$s" "$m" "$b"
    done
done
