#!/usr/bin/env bash
# Opt-in (not run by CI): tries the INSTALLED package's unit under a real systemd on a
# machine where systemd is not running (a container, a CI VM). It boots systemd as PID 1 of
# private pid/mount/uts/ipc/net namespaces with private tmpfs over /run, /tmp, /var/tmp,
# /var/log and /var/lib/systemd (boot-time units clean /tmp: never without these), starts
# only gatehouse.service, then checks: the unit becomes active (READY=1 received), `systemctl
# reload` succeeds and fails on a bad config (restored afterwards), SIGUSR1 through systemctl
# kill reopens the log, `systemctl stop` drains and exits 0. Needs root and the package
# installed (contrib/deb/build.sh, dpkg -i). Everything it starts dies with the namespace.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "needs root"; exit 1; }
[ ! -d /run/systemd/system ] || { echo "systemd runs here: use systemctl directly"; exit 1; }
[ -f /lib/systemd/system/gatehouse.service ] || { echo "install the package first"; exit 1; }

work=$(mktemp -d /var/tmp/gatehouse-smoke.XXXXXX)
conf=/etc/gatehouse/gatehouse.toml
cp -p "$conf" "$work/gatehouse.toml"
sd=
launcher=
cleanup() {
  cp -p "$work/gatehouse.toml" "$conf"
  [ -z "$sd" ] || kill -9 "$sd" 2>/dev/null || true
  wait "$launcher" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

setsid timeout 300 unshare --pid --fork --mount --uts --ipc --net --mount-proc \
  --propagation private bash -c '
  for d in /run /tmp /var/tmp /var/log /var/lib/systemd; do mount -t tmpfs tmpfs "$d" || exit 1; done
  mkdir -p /run/lock /run/systemd/system
  printf "[Unit]\nDescription=gatehouse smoke test\nWants=gatehouse.service\n" \
    > /run/systemd/system/gatehouse-smoke.target
  export container=other
  exec /lib/systemd/systemd --system --unit=gatehouse-smoke.target --log-target=console
' >"$work/systemd.log" 2>&1 &
launcher=$!
for _ in $(seq 1 100); do
  u=$(pgrep -P "$launcher" -x unshare || true)
  [ -z "$u" ] || sd=$(pgrep -P "$u" -x systemd || true)
  [ -z "$sd" ] || break
  sleep 0.1
done
[ -n "$sd" ] || { cat "$work/systemd.log"; echo "systemd did not start"; exit 1; }
ns() { nsenter -t "$sd" -a "$@"; }

state() { ns systemctl show -p ActiveState --value gatehouse; }
for _ in $(seq 1 300); do
  [ "$(state 2>/dev/null)" = active ] && break
  sleep 0.1
done
ns systemctl show -p Type,ActiveState,SubState gatehouse
[ "$(state)" = active ] || { ns journalctl -u gatehouse --no-pager; exit 1; }
ns curl -fsS http://127.0.0.1:9090/healthz; echo

ns systemctl reload gatehouse
echo 'typo = 1' >> "$conf"
if ns systemctl reload gatehouse; then echo "a bad config reloaded"; exit 1; fi
cp -p "$work/gatehouse.toml" "$conf"
[ "$(state)" = active ]

ns systemctl kill --kill-whom=main --signal=SIGUSR1 gatehouse.service
ns systemctl stop gatehouse
ns systemctl show -p ActiveState,Result,ExecMainStatus gatehouse
[ "$(ns systemctl show -p ExecMainStatus --value gatehouse)" = 0 ]
ns journalctl -u gatehouse --no-pager | grep -q 'reload: /etc/gatehouse/gatehouse.toml applied'
ns journalctl -u gatehouse --no-pager | grep -q 'access log reopened'
ns journalctl -u gatehouse --no-pager | grep -q 'drained; exiting'
echo "systemd smoke test: ok"
