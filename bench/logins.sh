#!/usr/bin/env bash
# bench/logins.sh: enterprise logins per second in one run, on loopback: HTTP Negotiate and SOCKS5
# GSSAPI against a throwaway MIT realm, and LDAP-backed Basic against a throwaway slapd, all
# started here; Gatehouse beside Squid (negotiate_kerberos_auth, basic_ldap_auth) and Dante
# (danted, socksmethod gssapi).
#
# Each login is a new connection with a fresh AP-REQ from alice's ticket cache (the service
# ticket is fetched once): HTTP Negotiate as `CONNECT` + `Proxy-Authorization: Negotiate`, and
# SOCKS5 GSSAPI (RFC 1961, protection "none") + CONNECT; then a 16-byte echo and close. Basic:
# the same CONNECT with `Proxy-Authorization: Basic` of user<i>:pw<i>, i cycling over USERS
# directory users; both proxies bind to the directory as the user (uid=<user>,ou=people) and
# keep credentials 1 s, so with USERS >= the logins of a second each login is a directory bind
# (Gatehouse also reads the user's entry for its groups; Squid does not). The load client is
# bench/krbload (libgssapi); the echo server is bench/loadgen's.
# Results: medians of RUNS as a markdown table; raw outputs in bench/results/logins-<time>/.
#
# Squid, Dante and slapd are used when installed (INSTALL=1 installs squid, dante-server,
# slapd and ldap-utils; needs root); a missing one is reported and its rows skipped. All
# traffic stays on 127.0.0.1; every run is bounded by COUNT (and each login by 10 s); every
# process started here is killed on exit.
#
# Knobs (environment): RUNS=3 COUNT=5000 CONC=20 USERS=COUNT INSTALL=0 NICE=0
#   GATEHOUSE=path (skip the release build, e.g. target/debug/gatehouse for a smoke test)
# A smoke test: RUNS=1 COUNT=40 CONC=4 GATEHOUSE=target/debug/gatehouse bash bench/logins.sh
set -euo pipefail

RUNS=${RUNS:-3}
COUNT=${COUNT:-5000}
CONC=${CONC:-20}
USERS=${USERS:-$COUNT}
INSTALL=${INSTALL:-0}
NICE=${NICE:-0}
REALM=BENCH.TEST

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS="$ROOT/bench/results/logins-$STAMP"
WORK=$(mktemp -d /tmp/gatehouse-logins-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
SKIPPED=() # "name reason..." rows for the table

cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    mkdir -p "$RESULTS"
    cp "$WORK"/*.out "$WORK"/*.conf "$WORK"/*.toml "$WORK"/*.log "$RESULTS"/ 2>/dev/null || true
    cp "$WORK"/squid/cache.log "$RESULTS"/squid-cache.log 2>/dev/null || true
    cp "$WORK"/squid/cache-ldap.log "$RESULTS"/squid-ldap-cache.log 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'logins.sh: %s\n' "$*" >&2; exit 1; }
start() {
    local name=$1
    shift
    setsid nice -n "$NICE" "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
}

# --- tools -----------------------------------------------------------------------------------

export PATH="$PATH:/usr/sbin"
for p in krb5kdc kdb5_util kadmin.local kinit; do
    command -v "$p" >/dev/null || die "$p is missing: apt-get install krb5-kdc krb5-admin-server krb5-user"
done
if [ "$INSTALL" = 1 ]; then
    log "installing squid dante-server slapd ldap-utils"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq squid dante-server slapd ldap-utils >/dev/null
fi

if [ -z "${GATEHOUSE:-}" ]; then
    log "building gatehouse (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin gatehouse)
    GATEHOUSE="$ROOT/target/release/gatehouse"
fi
log "building bench/loadgen and bench/krbload (release)"
cargo build --release --quiet --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
cargo build --release --quiet --manifest-path "$ROOT/bench/krbload/Cargo.toml"
LG="$ROOT/bench/loadgen/target/release/loadgen"
KL="$ROOT/bench/krbload/target/release/krbload"

# --- the realm -------------------------------------------------------------------------------

KDC_PORT=$("$LG" free-port)
export KRB5_CONFIG="$WORK/krb5.conf" KRB5_KDC_PROFILE="$WORK/kdc.conf"
export KRB5CCNAME="FILE:$WORK/ccache" KRB5RCACHEDIR="$WORK/rcache"
# Squid's helper runs as an unprivileged user: it writes its replay cache and logs here too.
mkdir -p "$KRB5RCACHEDIR" "$WORK/squid"
chmod 1777 "$KRB5RCACHEDIR" "$WORK/squid"
cat >"$KRB5_CONFIG" <<EOF
[libdefaults]
    default_realm = $REALM
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
[realms]
    $REALM = {
        kdc = 127.0.0.1:$KDC_PORT
    }
[domain_realm]
    localhost = $REALM
EOF
cat >"$KRB5_KDC_PROFILE" <<EOF
[kdcdefaults]
    kdc_listen = 127.0.0.1:$KDC_PORT
    kdc_tcp_listen = 127.0.0.1:$KDC_PORT
[realms]
    $REALM = {
        database_name = $WORK/principal
        key_stash_file = $WORK/stash
        acl_file = $WORK/kadm5.acl
        supported_enctypes = aes256-cts-hmac-sha1-96:normal
    }
[logging]
    kdc = FILE:$WORK/kdc.log
EOF
log "creating realm $REALM (KDC on 127.0.0.1:$KDC_PORT)"
kdb5_util create -s -r "$REALM" -P bench-master-pw >"$WORK/kdb5_util.log" 2>&1
KEYTAB="$WORK/services.keytab"
for q in "addprinc -pw alice-pw alice" "addprinc -randkey HTTP/localhost" \
    "addprinc -randkey rcmd/localhost" "ktadd -k $KEYTAB HTTP/localhost rcmd/localhost"; do
    kadmin.local -r "$REALM" -q "$q" >>"$WORK/kadmin.log" 2>&1
done
chmod 644 "$KEYTAB" # Squid's helper and Dante run as unprivileged users (bench only)
export KRB5_KTNAME="FILE:$KEYTAB"
start kdc krb5kdc -n -r "$REALM"
"$LG" wait-port --addr "127.0.0.1:$KDC_PORT" || die "the KDC did not start"
echo alice-pw | kinit alice >/dev/null || die "kinit failed"

# --- servers ---------------------------------------------------------------------------------

start echo "$LG" echo --listen 127.0.0.1:0
for _ in $(seq 100); do grep -q '^listening ' "$WORK/echo.log" && break; sleep 0.1; done
ECHO=$(sed -n 's/^listening //p' "$WORK/echo.log" | head -1)
[ -n "$ECHO" ] || die "echo did not start"

GH_HTTP=$("$LG" free-port)
GH_SOCKS=$("$LG" free-port)
cat >"$WORK/gatehouse.toml" <<EOF
[[listeners]]
name = "web"
kind = "http"
listen = "127.0.0.1:$GH_HTTP"
connect_ports = ["1-65535"]
max_connections = 100000

[[listeners]]
name = "socks"
kind = "socks"
listen = "127.0.0.1:$GH_SOCKS"
max_connections = 100000

[access_log]
path = "off"

[policy]
failed_logins = { max_failures = 1000 }

[policy.listeners.web]
auth = ["negotiate"]
kerberos_service = "HTTP/localhost"

[policy.listeners.socks]
auth = ["gssapi"]
kerberos_service = "rcmd/localhost"

[[policy.rules]]
name = "bench-echo"
action = "allow"
dest_addrs = ["127.0.0.0/8"]
EOF
start gatehouse "$GATEHOUSE" --config "$WORK/gatehouse.toml"
"$LG" wait-port --addr "127.0.0.1:$GH_HTTP" || die "gatehouse did not start"
"$LG" wait-port --addr "127.0.0.1:$GH_SOCKS" || die "gatehouse did not start"
TARGETS=("gatehouse-negotiate negotiate 127.0.0.1:$GH_HTTP HTTP@localhost"
    "gatehouse-gssapi gssapi 127.0.0.1:$GH_SOCKS rcmd@localhost")

SQUID_HELPER=$(ls /usr/lib/squid/negotiate_kerberos_auth 2>/dev/null || true)
if command -v squid >/dev/null && [ -n "$SQUID_HELPER" ]; then
    SQ_PORT=$("$LG" free-port)
    cat >"$WORK/squid.conf" <<EOF
http_port 127.0.0.1:$SQ_PORT
auth_param negotiate program $SQUID_HELPER -s HTTP/localhost@$REALM -k $KEYTAB
auth_param negotiate children 20 startup=20 idle=5
auth_param negotiate keep_alive on
acl authed proxy_auth REQUIRED
http_access allow authed
http_access deny all
cache deny all
access_log none
cache_log $WORK/squid/cache.log
pid_filename $WORK/squid/squid.pid
coredump_dir $WORK/squid
shutdown_lifetime 0 seconds
EOF
    start squid squid -N -f "$WORK/squid.conf"
    if "$LG" wait-port --addr "127.0.0.1:$SQ_PORT"; then
        TARGETS+=("squid-negotiate negotiate 127.0.0.1:$SQ_PORT HTTP@localhost")
    else
        log "squid did not start (see squid.log): skipped"
    fi
else
    log "squid or its negotiate_kerberos_auth helper is not installed (INSTALL=1): skipped"
    SKIPPED+=("squid-negotiate squid or negotiate_kerberos_auth is not installed")
fi

if command -v danted >/dev/null; then
    DA_PORT=$("$LG" free-port)
    cat >"$WORK/danted.conf" <<EOF
logoutput: $WORK/danted-internal.log
internal: 127.0.0.1 port = $DA_PORT
external: 127.0.0.1
clientmethod: none
socksmethod: gssapi
user.privileged: root
user.unprivileged: nobody
client pass {
    from: 127.0.0.0/8 to: 0.0.0.0/0
}
socks pass {
    from: 127.0.0.0/8 to: 0.0.0.0/0
    command: connect
    gssapi.servicename: rcmd
    gssapi.keytab: FILE:$KEYTAB
    gssapi.encryption: clear
}
EOF
    start danted danted -f "$WORK/danted.conf"
    if "$LG" wait-port --addr "127.0.0.1:$DA_PORT"; then
        TARGETS+=("dante-gssapi gssapi 127.0.0.1:$DA_PORT rcmd@localhost")
    else
        # Debian 12's danted is built without GSSAPI: it refuses `socksmethod: gssapi`.
        if grep -q "linked with an external GSSAPI library" "$WORK"/danted*.log 2>/dev/null; then
            why="danted is built without GSSAPI"
        else
            why="danted did not start (see danted.log)"
        fi
        log "$why: skipped"
        SKIPPED+=("dante-gssapi $why")
    fi
else
    log "danted is not installed (INSTALL=1): skipped"
    SKIPPED+=("dante-gssapi danted is not installed")
fi

# --- LDAP-backed Basic -----------------------------------------------------------------------

if command -v slapd >/dev/null && command -v ldapadd >/dev/null; then
    LDAP_PORT=$("$LG" free-port)
    mkdir -p "$WORK/ldapdb"
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
directory $WORK/ldapdb
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
        printf 'dn: cn=staff,ou=groups,dc=test\nobjectClass: groupOfNames\ncn: staff\nmember: uid=user1,ou=people,dc=test\n'
    } >"$WORK/tree.ldif"
    log "slapd on 127.0.0.1:$LDAP_PORT with $USERS users"
    start slapd slapd -d 0 -f "$WORK/slapd.conf" -h "ldap://127.0.0.1:$LDAP_PORT/"
    "$LG" wait-port --addr "127.0.0.1:$LDAP_PORT" || die "slapd did not start (see slapd.log)"
    ldapadd -x -H "ldap://127.0.0.1:$LDAP_PORT" -D cn=admin,dc=test -w admin-pw \
        -f "$WORK/tree.ldif" >"$WORK/ldapadd.log" 2>&1 || die "ldapadd failed (see ldapadd.log)"

    # Gatehouse: a second process, so the Kerberos one takes no groups from the directory.
    GL_HTTP=$("$LG" free-port)
    cat >"$WORK/gatehouse-ldap.toml" <<EOF
[[listeners]]
name = "web"
kind = "http"
listen = "127.0.0.1:$GL_HTTP"
connect_ports = ["1-65535"]
max_connections = 100000

[access_log]
path = "off"

[policy]
failed_logins = { max_failures = 1000 }

[policy.listeners.web]
auth = true

[policy.ldap]
url = "ldap://127.0.0.1:$LDAP_PORT"
bind_dn_template = "uid={user},ou=people,dc=test"
cache_ttl = "1s"
negative_cache_ttl = "0s"
max_connections = 32

[[policy.rules]]
name = "bench-echo"
action = "allow"
dest_addrs = ["127.0.0.0/8"]
EOF
    start gatehouse-ldap "$GATEHOUSE" --config "$WORK/gatehouse-ldap.toml"
    "$LG" wait-port --addr "127.0.0.1:$GL_HTTP" || die "gatehouse (LDAP) did not start"
    TARGETS+=("gatehouse-ldap-basic basic 127.0.0.1:$GL_HTTP -")

    LDAP_HELPER=/usr/lib/squid/basic_ldap_auth
    if command -v squid >/dev/null && [ -x "$LDAP_HELPER" ]; then
        SL_PORT=$("$LG" free-port)
        cat >"$WORK/squid-ldap.conf" <<EOF
http_port 127.0.0.1:$SL_PORT
auth_param basic program $LDAP_HELPER -b ou=people,dc=test -u uid -h 127.0.0.1 -p $LDAP_PORT -v 3
auth_param basic children 32 startup=32 idle=4
auth_param basic credentialsttl 1 seconds
auth_param basic realm bench
acl authed proxy_auth REQUIRED
http_access allow authed
http_access deny all
cache deny all
access_log none
cache_log $WORK/squid/cache-ldap.log
pid_filename $WORK/squid/squid-ldap.pid
coredump_dir $WORK/squid
shutdown_lifetime 0 seconds
EOF
        start squid-ldap squid -N -f "$WORK/squid-ldap.conf"
        if "$LG" wait-port --addr "127.0.0.1:$SL_PORT"; then
            TARGETS+=("squid-ldap-basic basic 127.0.0.1:$SL_PORT -")
        else
            log "squid (basic_ldap_auth) did not start (see squid-ldap.log): skipped"
        fi
    else
        log "squid or its basic_ldap_auth helper is not installed (INSTALL=1): skipped"
        SKIPPED+=("squid-ldap-basic squid or basic_ldap_auth is not installed")
    fi
else
    log "slapd or ldapadd is not installed (INSTALL=1): LDAP-backed Basic skipped"
    SKIPPED+=("gatehouse-ldap-basic slapd or ldapadd is not installed")
    SKIPPED+=("squid-ldap-basic slapd or ldapadd is not installed")
fi

# --- runs ------------------------------------------------------------------------------------

for run in $(seq "$RUNS"); do
    for t in "${TARGETS[@]}"; do
        read -r name mode addr svc <<<"$t"
        log "run $run: $name"
        nice -n "$NICE" "$KL" "$mode" --proxy "$addr" --service "$svc" --users "$USERS" \
            --target "$ECHO" --count "$COUNT" --concurrency "$CONC" >>"$WORK/$name.out" 2>>"$WORK/$name.log" || true
        tail -1 "$WORK/$name.out" >&2 || true
    done
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "-"}'; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" "$WORK/$2.out" | median; }
printf '\n| server and login | logins/s (median of %s) | p50 ms | p99 ms | failed (last run) |\n|---|---|---|---|---|\n' "$RUNS"
for t in "${TARGETS[@]}"; do
    read -r name _ _ _ <<<"$t"
    failed=$(tail -1 "$WORK/$name.out" 2>/dev/null | sed -n 's/.*failed=\([0-9]*\).*/\1/p')
    printf '| %s | %s | %s | %s | %s |\n' "$name" "$(field logins_per_s "$name")" \
        "$(field p50_ms "$name")" "$(field p99_ms "$name")" "${failed:--}"
done
for t in "${SKIPPED[@]}"; do
    read -r name why <<<"$t"
    printf '| %s | not measured: %s | - | - | - |\n' "$name" "$why"
done
