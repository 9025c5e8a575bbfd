#!/usr/bin/env bash
# CI's packaging step (called by .ci/run): build the .deb, install it with dpkg -i, check the
# installed config as root and as the service user, verify the systemd unit and the logrotate
# snippet, run the installed binary as the service user for a moment, then purge the package
# so the machine is left as it was. CI has no running systemd: the unit is verified, never
# started.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { echo "--- packaging: $*"; }

need=()
command -v adduser >/dev/null 2>&1 || need+=(adduser)      # the package's Depends
command -v logrotate >/dev/null 2>&1 || need+=(logrotate)  # its Recommends, to check the snippet
if [ "${#need[@]}" -gt 0 ]; then
  step "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if ! command -v cargo-deb >/dev/null 2>&1; then
  step "cargo install cargo-deb --locked"
  cargo install cargo-deb --locked
fi
cargo deb --version

step "build"
contrib/deb/build.sh
deb=$(ls target/debian/gatehouse_*.deb)

step "dpkg -i $deb"
dpkg -i "$deb"
trap 'dpkg -P gatehouse >/dev/null 2>&1 || true' EXIT

step "the gatehouse system user and its directories"
getent passwd gatehouse
for dir in /var/log/gatehouse /var/cache/gatehouse; do
  [ "$(stat -c %U:%G "$dir")" = gatehouse:gatehouse ] || { echo "$dir: $(stat -c %U:%G "$dir")"; exit 1; }
done

step "gatehouse check on the installed config"
gatehouse --version
gatehouse check /etc/gatehouse/gatehouse.toml
gatehouse check --config /etc/gatehouse/gatehouse.toml
# Without --config the installed file is the default.
gatehouse check | grep -q '^/etc/gatehouse/gatehouse.toml: ok'
# The service user can read the config and open the access log.
runuser -u gatehouse -- gatehouse check /etc/gatehouse/gatehouse.toml

step "systemd-analyze verify"
# verify exits 0 on unknown keys and bad values (it only warns): any output is a failure.
out=$(systemd-analyze verify /lib/systemd/system/gatehouse.service 2>&1) || { echo "$out"; exit 1; }
[ -z "$out" ] || { echo "$out"; exit 1; }
systemd-analyze security --offline=true --threshold=25 /lib/systemd/system/gatehouse.service | tail -1

step "logrotate snippet"
logrotate --debug /etc/logrotate.d/gatehouse 2>&1 | tail -3
if logrotate --debug /etc/logrotate.d/gatehouse 2>&1 | grep -qi 'error'; then exit 1; fi

step "man page and completions"
zcat /usr/share/man/man1/gatehouse.1.gz | grep -q '^.SH SIGNALS'
man -P cat gatehouse 2>/dev/null | grep -q 'SIGUSR1' || zcat /usr/share/man/man1/gatehouse.1.gz | grep -q SIGUSR1
bash -c 'source /usr/share/bash-completion/completions/gatehouse && complete -p gatehouse' >/dev/null

step "run the installed binary as the service user"
log=$(mktemp)
# setpriv execs the binary itself, so $! is gatehouse's pid and SIGTERM reaches it.
setpriv --reuid=gatehouse --regid=gatehouse --init-groups \
  gatehouse --config /etc/gatehouse/gatehouse.toml 2>"$log" &
pid=$!
ok=
for _ in $(seq 1 100); do
  if grep -q 'all listeners ready' "$log"; then ok=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$ok" ] || { cat "$log"; exit 1; }
curl -fsS http://127.0.0.1:9090/healthz
echo
# The proxy logs to the packaged access log path, as the service user.
curl -s -o /dev/null -x http://127.0.0.1:3128 http://127.0.0.1:9/ || true
kill -TERM "$pid"
wait "$pid"
grep -q 'GET http://127.0.0.1:9/' /var/log/gatehouse/access.log
[ "$(stat -c %U /var/log/gatehouse/access.log)" = gatehouse ]
rm -f "$log"

step "dpkg -P (purge)"
trap - EXIT
dpkg -P gatehouse
[ ! -e /var/log/gatehouse ] && [ ! -e /etc/gatehouse/gatehouse.toml ]
step "ok"
