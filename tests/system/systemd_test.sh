#!/usr/bin/env bash
# The Debian package under systemd as PID 1: boots a debootstrapped Debian 12 tree
# (cached under $CACHE_DIR) with systemd-nspawn on a throw-away overlay and its own
# network namespace, installs the .deb, and checks under a client loop over TCP,
# Unix and UDP (run from the host inside the container's network namespace, so all
# traffic stays in the container): start is active only after READY=1; reload is a
# hot restart without a failed request, MainPID staying the supervisor's while the
# worker is replaced; stop and restart after reloads wait for the drain; a broken
# config leaves the old process serving; restart refuses no connection (fd store);
# socket activation by FileDescriptorName=; the watchdog restarts a stopped process;
# stop drains within drain_timeout; journal fields; systemd-analyze verify and
# security (exposure <= 1.5).
source "$(dirname "$0")/common.sh"
need_root
need_cmd systemd-nspawn nsenter python3
DEB=${1:?usage: systemd_test.sh PATH/echorelay_VERSION_amd64.deb}
[ -f "$DEB" ] || fail "no package at $DEB (package_test.sh builds it)"
TREE=$(ensure_tree nspawn-v1 systemd,systemd-sysv,dbus,libtomlplusplus3,libspdlog1.10,libfmt9,libc-ares2,libsystemd0)
WORK=$(mktemp -d /tmp/echorelay-nspawn.XXXXXX)
chmod 755 "$WORK"
cp "$DEB" "$WORK/echorelay.deb"
cp "$SYSTEM_DIR/test-config.toml" "$WORK/"
nspawn_pid= leader= client_pid=
cleanup() {
  local rc=$?
  set +e
  touch "$WORK/stop"   # a client loop still running ends by itself
  [ -n "$client_pid" ] && kill "$client_pid" 2>/dev/null
  sleep 0.2
  if [ -n "$nspawn_pid" ]; then
    kill -TERM "$nspawn_pid" 2>/dev/null   # nspawn asks the container's systemd to power off
    for _ in $(seq 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$nspawn_pid" 2>/dev/null
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

say "boot $TREE (volatile overlay)"
systemd-nspawn -q -b -D "$TREE" --volatile=overlay --register=no --keep-unit --private-network \
  --console=pipe --bind-ro="$WORK":/mnt/test >"$WORK/console.log" 2>&1 </dev/null &
nspawn_pid=$!
for _ in $(seq 100); do
  leader=$(ps -o pid= --ppid "$nspawn_pid" | head -1 | tr -d ' ' || true)
  [ -n "$leader" ] && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ] && break
  sleep 0.1
done
[ -n "$leader" ] || { cat "$WORK/console.log"; fail "the container did not start"; }
ct() { nsenter -t "$leader" -m -u -i -n -p -- "$@"; }
state=
for _ in $(seq 120); do   # the manager's socket appears a moment after PID 1 starts
  state=$(ct timeout 60 systemctl is-system-running --wait 2>&1 || true)
  case $state in running|degraded) break ;; esac
  sleep 0.25
done
[ "$state" = running ] || [ "$state" = degraded ] || { tail -30 "$WORK/console.log"; fail "boot: $state"; }
say "systemd is up in the container (leader pid $leader): $state"
root=/proc/$leader/root
client() { nsenter -t "$leader" -n -- python3 "$SYSTEM_DIR/client.py" "$@"; }
show() { ct systemctl show -P "$1" echorelay.service; }
# grep in the unit's journal (not `journalctl | grep -q`: with pipefail, grep's early
# exit makes journalctl fail with SIGPIPE)
journal_has() {
  ct journalctl -u echorelay.service --no-pager >"$WORK/journal.txt"
  grep -q "$@" "$WORK/journal.txt"
}
probe_all() {
  ct echorelayd probe tcp://127.0.0.1:7007 >/dev/null && ct echorelayd probe udp://127.0.0.1:7007 >/dev/null &&
    ct echorelayd probe unix:///run/echorelay/echo.sock >/dev/null
}
TOTAL_REQ=0 TOTAL_FAIL=0 TOTAL_RECONNECT=0
LOOP_ARGS=(--tcp 127.0.0.1:7007 --tcp-churn 127.0.0.1:7007 --udp 127.0.0.1:7007)
start_loop() {  # start_loop NAME [--unix]: a client loop until stop_loop
  rm -f "$WORK/stop" "$WORK/running"
  local extra=()
  [ "${2:-}" = --unix ] && extra=(--unix "$root/run/echorelay/echo.sock")
  client "${LOOP_ARGS[@]}" "${extra[@]}" --stop-file "$WORK/stop" --ready-file "$WORK/running" >"$WORK/$1.json" &
  client_pid=$!
  for _ in $(seq 100); do [ -f "$WORK/running" ] && return; sleep 0.05; done
  fail "$1: the client loop did not get a first answer"
}
stop_loop() {  # stop_loop NAME: stop the loop, fail on any failed request
  touch "$WORK/stop"
  local rc=0
  wait "$client_pid" || rc=$?
  client_pid=
  say "$1: $(cat "$WORK/$1.json")"
  [ $rc = 0 ] || { ct journalctl -u echorelay.service -p info -o short-monotonic --no-pager | tail -40
    fail "$1: requests failed"; }
  read -r r f c < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["requests"], d["failed"], d["reconnects"])' "$WORK/$1.json")
  TOTAL_REQ=$((TOTAL_REQ + r)) TOTAL_FAIL=$((TOTAL_FAIL + f)) TOTAL_RECONNECT=$((TOTAL_RECONNECT + c))
}
# The supervisor's (MainPID's) newest child: the worker that serves now.
worker_pid() {
  ct cat "/proc/$(show MainPID)/task/$(show MainPID)/children" 2>/dev/null | tr ' ' '\n' | sort -n | tail -1
}
wait_worker_change() {  # wait_worker_change OLD: until the supervisor serves through another worker
  local w
  for _ in $(seq 200); do
    w=$(worker_pid)
    [ -n "$w" ] && [ "$w" != "$1" ] && journal_has "echorelayd\[$w\]: echorelayd .* ready" && { echo "$w"; return; }
    sleep 0.05
  done
  fail "the worker stayed $1"
}
wait_main_pid_change() {  # wait_main_pid_change OLD [TRIES]: until MainPID is another pid, active
  local pid
  for _ in $(seq "${2:-200}"); do
    pid=$(show MainPID)
    [ "$pid" != "$1" ] && [ "$pid" != 0 ] && [ "$(show ActiveState)" = active ] && { echo "$pid"; return; }
    sleep 0.05
  done
  fail "MainPID stayed $1"
}

# --- install ---------------------------------------------------------------------
ct dpkg -i /mnt/test/echorelay.deb >"$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log"; fail "dpkg -i"; }
[ "$(show ActiveState)" = active ] || { ct journalctl -u echorelay --no-pager | tail -20; fail "not active after install"; }
ct echorelayd probe tcp://127.0.0.1:7007 >/dev/null || fail "the packaged config does not echo"
say "installed; the packaged config serves"

# --- systemd-analyze -------------------------------------------------------------
out=$(ct systemd-analyze verify /lib/systemd/system/echorelay.service /lib/systemd/system/echorelay.socket 2>&1)
[ -z "$out" ] || { printf '%s\n' "$out"; fail "systemd-analyze verify has output"; }
exposure=$(ct systemd-analyze security --offline=yes /lib/systemd/system/echorelay.service 2>&1 |
  sed -n 's/.*Overall exposure level for echorelay.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "systemd-analyze security gave no score"
python3 -c "import sys; sys.exit(0 if float('$exposure') <= 1.5 else 1)" || fail "exposure $exposure > 1.5"
say "systemd-analyze verify: clean; security exposure $exposure"

# --- start: active only after READY=1 ---------------------------------------------
ct systemctl stop echorelay.service
cp "$WORK/test-config.toml" "$root/etc/echorelay/echorelay.toml"
# a short watchdog for the watchdog check below; the abort must not wait 60 s
mkdir -p "$root/etc/systemd/system/echorelay.service.d"
printf '[Service]\nWatchdogSec=3s\nTimeoutAbortSec=3s\n' >"$root/etc/systemd/system/echorelay.service.d/test.conf"
ct systemctl daemon-reload
# Poll the state from the moment the start is queued: whenever it says active, every
# listener must answer at once (Type=notify: active means READY=1 came).
ct systemctl start --no-block echorelay.service
seen_activating=0
for _ in $(seq 400); do
  st=$(show ActiveState)
  [ "$st" = activating ] && seen_activating=$((seen_activating + 1))
  [ "$st" = active ] && break
  [ "$st" = failed ] && fail "start failed"
done
[ "$st" = active ] || fail "not active after the start: $st"
probe_all || fail "active, but not every listener answers"
active_us=$(show ActiveEnterTimestampMonotonic)
# the listeners were open (logged before READY=1) before the unit became active
open_us=$(ct journalctl -u echorelay.service -o json --no-pager |
  python3 -c 'import json,sys
ts=[int(d["__MONOTONIC_TIMESTAMP"]) for d in map(json.loads, sys.stdin)
    if d.get("_PID") == sys.argv[1] and str(d.get("MESSAGE","")).startswith("listening on ")]
print(max(ts) if len(ts) == 3 else 0)' "$(worker_pid)")
[ "$open_us" -gt 0 ] || fail "the journal does not show the 3 listeners opening"
[ "$open_us" -le "$active_us" ] || fail "active at $active_us us before the last listener opened at $open_us us"
say "start: listeners open at $open_us us, active at $active_us us (monotonic); seen activating $seen_activating times"

# --- reload = hot restart ---------------------------------------------------------
start_loop reload --unix
main=$(show MainPID)
pid=$(worker_pid)
for i in 1 2 3; do
  ct systemctl reload echorelay.service
  new=$(wait_worker_change "$pid")
  for _ in $(seq 100); do ct sh -c "kill -0 $pid" 2>/dev/null || break; sleep 0.1; done
  ! ct sh -c "kill -0 $pid" 2>/dev/null || fail "the old worker $pid did not exit after the reload"
  sleep 0.5
  pid=$new
done
stop_loop reload
[ "$(show MainPID)" = "$main" ] || fail "MainPID changed from $main to $(show MainPID) across reloads"
say "reload: 3 hot restarts, MainPID $main stayed, the worker is now $pid"

# --- reload with a broken config --------------------------------------------------
start_loop broken --unix
pid=$(worker_pid)
main=$(show MainPID)
cp "$root/etc/echorelay/echorelay.toml" "$WORK/good.toml"
printf '\n[daemon]\nbogus = 1\n' >>"$root/etc/echorelay/echorelay.toml"
if ct systemctl reload echorelay.service 2>/dev/null; then fail "reload with a broken config succeeded"; fi
# and a SIGHUP that gets past ExecReload's check: the successor fails, the old one serves
ct systemctl kill -s HUP --kill-who=main echorelay.service
deadline=$((SECONDS + 30))
until journal_has 'hot restart failed'; do
  [ $SECONDS -lt $deadline ] || { ct journalctl -u echorelay.service --no-pager | tail -15
    fail "no 'hot restart failed' after SIGHUP with a broken config"; }
  sleep 0.2
done
sleep 0.5
[ "$(show MainPID)" = "$main" ] || fail "MainPID changed on a broken config"
[ "$(worker_pid)" = "$pid" ] || fail "the worker changed on a broken config"
[ "$(show ActiveState)" = active ] || fail "unit not active after a broken reload"
stop_loop broken
cp "$WORK/good.toml" "$root/etc/echorelay/echorelay.toml"
say "broken config: reload refused, SIGHUP's successor failed, worker $pid kept serving"

# --- restart: the fd store keeps the sockets --------------------------------------
# "Refuses no connection": new connections (a connection per request) and datagrams.
# A connection that stays open is drained by the stop half of a restart, like any
# stop; it may see a reset when a request crosses the drain's close (reported).
LOOP_ARGS=(--tcp-churn 127.0.0.1:7007 --udp 127.0.0.1:7007)
start_loop restart
LOOP_ARGS=(--tcp 127.0.0.1:7007 --tcp-churn 127.0.0.1:7007 --udp 127.0.0.1:7007)
pid=$(show MainPID)
old_worker=$(worker_pid)
ct systemctl restart echorelay.service
new=$(wait_main_pid_change "$pid")
sleep 1
stop_loop restart
# The stop half waited for the old worker's drain: it ended before the new one began
# (without the supervisor, systemd 252 killed it at once and ran both side by side).
journal_has "echorelayd\[$old_worker\]: stopped" || fail "the old worker $old_worker did not finish its drain"
! journal_has "Unit process .* remains running after unit stopped" || fail "systemd stopped the unit while a process ran"
worker=$(worker_pid)
for l in echo-tcp echo-unix echo-udp; do
  journal_has "echorelayd\[$worker\]: listening on .* as $l (inherited)" ||
    fail "after restart $l was not taken from the fd store"
done
probe_all || fail "not serving after restart"
say "restart: no refused connection; the old worker drained first; the new one ($worker under $new) adopted the stored sockets"

# --- watchdog ---------------------------------------------------------------------
pid=$(worker_pid)
main=$(show MainPID)
restarts=$(show NRestarts)
ct sh -c "kill -STOP $pid"   # a hung worker; pids of the container's namespace
new=$(wait_main_pid_change "$main" 600)
for _ in $(seq 100); do probe_all && break; sleep 0.1; done
probe_all || { ct journalctl -u echorelay.service --no-pager | tail -25; fail "not serving after the watchdog restart"; }
[ "$(show NRestarts)" -gt "$restarts" ] || fail "the watchdog did not restart the service"
journal_has -i watchdog || fail "no watchdog message in the journal"
say "watchdog: stopped pid $pid replaced by $new"

# --- stop drains within drain_timeout ---------------------------------------------
nsenter -t "$leader" -n -- python3 - "$WORK/idle-closed" "$WORK/held" <<'PY' &
import socket, sys, time
s = socket.create_connection(("127.0.0.1", 7007), timeout=30)
s.sendall(b"half a request")            # in flight: no newline yet
open(sys.argv[2], "w").close()
t = time.monotonic()
try:
    s.recv(100)                          # the drain's end: what is left is reset
    how = "eof"
except ConnectionResetError:
    how = "reset"
open(sys.argv[1], "w").write(how)
PY
held=$!
for _ in $(seq 100); do [ -f "$WORK/held" ] && break; sleep 0.1; done
[ -f "$WORK/held" ] || fail "could not open the connection held across the stop"
sleep 0.3
t0=$(date +%s%N)
ct systemctl stop echorelay.service
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
wait "$held" || true
[ "$(show Result)" = success ] || fail "stop result: $(show Result)"
[ "$(show ExecMainStatus)" = 0 ] || fail "exit status $(show ExecMainStatus) after stop"
[ "$ms" -lt 7000 ] || fail "stop took $ms ms with drain_timeout 5s"
[ -f "$WORK/idle-closed" ] || { ct journalctl -u echorelay.service --no-pager | tail -25
  fail "the in-flight connection was not closed by the drain"; }
# Cut at drain_timeout with its request unfinished: a reset, never a clean EOF that a
# client could take for a complete exchange (docs/CONFIG.md, "What a client ... sees").
[ "$(cat "$WORK/idle-closed")" = reset ] || fail "the in-flight connection was closed with $(cat "$WORK/idle-closed"), not reset"
say "stop: drained in $ms ms (drain_timeout 5s), exit 0"

# --- socket activation ------------------------------------------------------------
ct systemctl start echorelay.socket
[ "$(ct systemctl is-active echorelay.service)" != active ] || fail "service active before the first connection"
ct echorelayd probe tcp://127.0.0.1:7007 --timeout 5s >/dev/null || fail "no echo through the socket unit"
[ "$(show ActiveState)" = active ] || fail "the connection did not start the service"
journal_has "echorelayd\[$(worker_pid)\]: listening on .* as echo-tcp (inherited)" ||
  fail "the service did not adopt the socket unit's socket by its FileDescriptorName"
say "socket activation: started by the first connection, echo-tcp adopted by name"

# --- journal fields ---------------------------------------------------------------
ct journalctl -u echorelay.service -o json --no-pager >"$WORK/journal.json"
fields=$(python3 -c 'import json,sys
seen={}
for line in open(sys.argv[1]):
    d=json.loads(line)
    for k in ("LISTENER","PEER","REASON"):
        if k in d and k not in seen: seen[k]=d[k]
print(" ".join(f"{k}={seen[k]!r}" for k in ("LISTENER","PEER","REASON") if k in seen))' "$WORK/journal.json")
for field in LISTENER PEER REASON; do
  grep -q "$field=" <<<"$fields" || fail "no $field= field in the journal (found: $fields)"
done
say "journal fields, first of each: $fields"
ct systemctl stop echorelay.socket echorelay.service

say "PASS: requests $TOTAL_REQ, failed $TOTAL_FAIL, clean reconnects $TOTAL_RECONNECT; 3 reloads, 1 restart, 1 watchdog restart; exposure $exposure"
