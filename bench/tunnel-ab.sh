#!/usr/bin/env bash
# bench/tunnel-ab.sh LABEL=BINARY[:ENV=VALUE] ... [rathole=x]: two or more Gatehouse builds (and
# rathole) side by side through a published port: one relay and agent pair per build, ROUNDS
# alternating rounds (so a slow moment of the machine hits every build). MODE=http: nginx serves
# a SIZE-byte file behind all of them, wrk -t2 -c50 against each in turn. MODE=vhost: the same
# through a virtual host of a `reverse` listener on the relay whose route names the agent's
# service (Gatehouse builds only). MODE=bulk: one stream of BYTES from bench/loadgen's source
# through each (as bench/tunnel.sh's bulk column).
# For comparing two commits of the tunnel; bench/tunnel.sh is the benchmark of record.
#   bench/tunnel-ab.sh before=/path/gatehouse-old after=target/release/gatehouse rathole=x
# Knobs: WORKERS=2 (tokio worker threads of every relay and agent, rathole too) PER_CORE=1 (0: Gatehouse's relays
# and agents with `[runtime] per_core = false`) ROUNDS=3 DUR=6s SIZE=100 TRANSPORT=tcp|tls MODE=http|vhost|bulk BYTES=4294967296
# All traffic stays on 127.0.0.1; wrk runs are bounded by DUR; everything started is killed.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"
WORKERS=${WORKERS:-2}; ROUNDS=${ROUNDS:-3}; DUR=${DUR:-6s}; SIZE=${SIZE:-100}; TRANSPORT=${TRANSPORT:-tcp}
MODE=${MODE:-http}; BYTES=${BYTES:-4294967296}
RUNTIME="[runtime]
per_core = $( [ "${PER_CORE:-1}" = 1 ] && echo true || echo false )"
LG=$ROOT/bench/loadgen/target/release/loadgen
if [ "$MODE" = bulk ]; then
  cargo build --release --quiet --manifest-path "$ROOT/bench/loadgen/Cargo.toml" || exit 1
fi
WORK=$(mktemp -d /tmp/ab.XXXXXX); chmod 755 $WORK
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null; done; sleep 0.5; rm -rf $WORK' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mkdir -p $WORK/www; head -c $SIZE /dev/zero | tr '\0' x > $WORK/www/small
PW=$(free_port)
cat > $WORK/nginx.conf <<C
daemon off; master_process on; worker_processes 1; pid $WORK/nginx.pid; error_log $WORK/ne.log warn;
events { worker_connections 4000; }
http { access_log off; server { listen 127.0.0.1:$PW; root $WORK/www; keepalive_requests 1000000; } }
C
nginx -c $WORK/nginx.conf -p $WORK & PIDS+=($!)
SRC=127.0.0.1:1
if [ "$MODE" = bulk ]; then
  $LG source --listen 127.0.0.1:0 > $WORK/source.log 2>&1 & PIDS+=($!)
  for k in $(seq 100); do grep -q '^listening ' $WORK/source.log && break; sleep 0.1; done
  SRC=$(sed -n 's/^listening //p' $WORK/source.log | head -1)
fi
"${GH_CERT:-$ROOT/target/release/gatehouse}" cert --name relay.test --out $WORK/tunnel >/dev/null 2>&1
TOKEN=abcdefabcdefabcdefabcdef
declare -A WEB BULK VHOST
i=0
for spec in "$@"; do
  label=${spec%%=*}; rest=${spec#*=}; bin=${rest%%:*}; envs=""; [[ "$rest" == *:* ]] && envs=${rest#*:}
  i=$((i+1)); ctrl=$(free_port); web=$(free_port); WEB[$label]=$web; bulk=$(free_port); BULK[$label]=$bulk; vhost=$(free_port); VHOST[$label]=$vhost
  if [ "$label" = rathole ]; then
    printf '[server]\nbind_addr = "127.0.0.1:%s"\n[server.services.web]\ntoken = "%s"\nbind_addr = "127.0.0.1:%s"\n[server.services.bulk]\ntoken = "%s"\nbind_addr = "127.0.0.1:%s"\n' $ctrl $TOKEN $web $TOKEN $bulk > $WORK/rs.toml
    printf '[client]\nremote_addr = "127.0.0.1:%s"\n[client.services.web]\ntoken = "%s"\nlocal_addr = "127.0.0.1:%s"\n[client.services.bulk]\ntoken = "%s"\nlocal_addr = "%s"\n' $ctrl $TOKEN $PW $TOKEN $SRC > $WORK/rc.toml
    TOKIO_WORKER_THREADS=$WORKERS rathole --server $WORK/rs.toml > $WORK/rs.log 2>&1 & PIDS+=($!)
    sleep 0.3
    TOKIO_WORKER_THREADS=$WORKERS rathole --client $WORK/rc.toml > $WORK/rc.log 2>&1 & PIDS+=($!)
  else
    if [ "$TRANSPORT" = tcp ]; then tr='transport = "tcp"'; ta='transport = "tcp"'; else tr="tls = { cert = \"$WORK/tunnel/relay.test.crt\", key = \"$WORK/tunnel/relay.test.key\" }"; ta="server_name = \"relay.test\"
ca = \"$WORK/tunnel/relay.test.crt\""; fi
    cat > $WORK/r$i.toml <<T
[[listeners]]
name = "agents"
kind = "tunnel"
listen = "127.0.0.1:$ctrl"
$tr
[[listeners.agents]]
name = "bench"
token = "$TOKEN"
[[listeners]]
name = "web"
kind = "published"
listen = "127.0.0.1:$web"
agent = "bench"
service = "web"
max_connections = 100000
[[listeners]]
name = "bulk"
kind = "published"
listen = "127.0.0.1:$bulk"
agent = "bench"
service = "bulk"
[[listeners]]
name = "sites"
kind = "reverse"
listen = "127.0.0.1:$vhost"
[[listeners.hosts]]
names = ["app.test"]
[[listeners.hosts.routes]]
agent = "bench"
service = "web"
[access_log]
path = "off"
$RUNTIME
T
    cat > $WORK/a$i.toml <<T
[agent]
name = "bench"
token = "$TOKEN"
relays = ["127.0.0.1:$ctrl"]
$ta
[agent.publish]
web = "127.0.0.1:$PW"
bulk = "$SRC"
[access_log]
path = "off"
$RUNTIME
T
    env $envs TOKIO_WORKER_THREADS=$WORKERS $bin --config $WORK/r$i.toml > $WORK/r$i.log 2>&1 & PIDS+=($!)
    sleep 0.3
    env $envs TOKIO_WORKER_THREADS=$WORKERS $bin agent --config $WORK/a$i.toml > $WORK/a$i.log 2>&1 & PIDS+=($!)
  fi
done
for spec in "$@"; do label=${spec%%=*}; for k in $(seq 100); do curl -sf -o /dev/null -m 2 http://127.0.0.1:${WEB[$label]}/small && break; sleep 0.1; done; done
# The share of the machine's CPU time left idle between the /proc/stat samples c0 and c1
# (fields 4-5 of its cpu line: idle and iowait).
idle_share() {
  awk -v a="${c0[*]}" -v b="${c1[*]}" 'BEGIN { n = split(a, x); split(b, y); t = 0
    for (i = 2; i <= n; i++) t += y[i] - x[i]
    printf "%.1f", 100 * ((y[5] - x[5]) + (y[6] - x[6])) / (t ? t : 1) }'
}
for r in $(seq $ROUNDS); do
  for spec in "$@"; do label=${spec%%=*}
    if [ "$MODE" = bulk ]; then
      read -r -a c0 < <(grep '^cpu ' /proc/stat)
      out=$($LG socks-throughput --target 127.0.0.1:${BULK[$label]} --bytes $BYTES 2>&1)
      read -r -a c1 < <(grep '^cpu ' /proc/stat)
      echo "round $r $label $(echo "$out" | grep -o 'Gbit_per_s=[0-9.]*') idle=$(idle_share)%"
      continue
    fi
    read -r -a c0 < <(grep '^cpu ' /proc/stat)
    if [ "$MODE" = vhost ] && [ "$label" = rathole ]; then
      echo "round $r rathole n/a (no virtual hosts)"
      continue
    fi
    if [ "$MODE" = vhost ]; then
      out=$(wrk -t2 -c50 -d$DUR --latency -H "Host: app.test" http://127.0.0.1:${VHOST[$label]}/small 2>&1)
    else
      out=$(wrk -t2 -c50 -d$DUR --latency http://127.0.0.1:${WEB[$label]}/small 2>&1)
    fi
    read -r -a c1 < <(grep '^cpu ' /proc/stat)
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}'); p99=$(echo "$out" | awk '/^ +99%/ {print $2}')
    echo "round $r $label rps=$rps p99=$p99 idle=$(idle_share)%"
  done
done
