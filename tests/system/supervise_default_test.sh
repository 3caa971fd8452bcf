#!/usr/bin/env bash
# By default (a terminal, a container runtime, systemd) echorelayd runs as its own
# supervisor: after SIGHUP the PID that was started still runs and serves through a
# new worker, and SIGTERM ends it with status 0. --no-supervise keeps the direct
# mode: no child process.
set -euo pipefail
ECHORELAYD=${1:?usage: supervise_default_test.sh PATH/echorelayd}
WORK=$(mktemp -d /tmp/echorelay-supervise.XXXXXX)
pids=()
trap 'for p in ${pids[@]+"${pids[@]}"}; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*"; cat "$WORK"/log* 2>/dev/null | tail -20; exit 1; }
cat >"$WORK/c.toml" <<TOML
[daemon]
drain_timeout = "2s"
[[listener]]
name = "t"
protocol = "tcp"
address = "127.0.0.1:0"
TOML
wait_file() { for _ in $(seq 100); do [ -s "$1" ] && return 0; sleep 0.1; done; return 1; }
echo_ok() { python3 -c 'import socket,sys
s=socket.create_connection(("127.0.0.1",int(sys.argv[1])),timeout=3); s.sendall(b"ping\n")
d=b""
while len(d)<5:
  c=s.recv(5-len(d))
  if not c: break
  d+=c
sys.exit(0 if d==b"ping\n" else 1)' "$1"; }
worker_of() { ps -o pid= --ppid "$1" | tr -d ' ' | head -1; }

env -u NOTIFY_SOCKET "$ECHORELAYD" -c "$WORK/c.toml" --bound-addresses-file "$WORK/bound" >"$WORK/log" 2>&1 &
pid=$!
pids+=("$pid")
wait_file "$WORK/bound" || fail "did not start"
port=$(awk '{print $3}' "$WORK/bound" | sed 's/.*://')
echo_ok "$port" || fail "no echo"
w1=$(worker_of "$pid")
[ -n "$w1" ] || fail "no worker under pid $pid: not supervising by default"
kill -HUP "$pid"
for _ in $(seq 100); do w2=$(worker_of "$pid"); [ -n "$w2" ] && [ "$w2" != "$w1" ] && break; sleep 0.1; done
[ -n "$w2" ] && [ "$w2" != "$w1" ] || fail "the worker was not replaced after SIGHUP"
kill -0 "$pid" || fail "the started pid exited after SIGHUP"
echo_ok "$port" || fail "no echo after the hot restart"
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
[ $rc = 0 ] || fail "exit status $rc after SIGTERM"
echo "default: pid $pid kept across SIGHUP (worker $w1 -> $w2), exit 0"

# Under a service manager too: the supervisor is the main PID, so the manager waits
# for the drain of every worker it reaps.
rm -f "$WORK/bound"
NOTIFY_SOCKET=$WORK/no-manager.sock "$ECHORELAYD" -c "$WORK/c.toml" --bound-addresses-file "$WORK/bound" >"$WORK/log3" 2>&1 &
pid=$!
pids+=("$pid")
wait_file "$WORK/bound" || fail "did not start with NOTIFY_SOCKET"
[ -n "$(worker_of "$pid")" ] || fail "with NOTIFY_SOCKET set, no supervisor"
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
[ $rc = 0 ] || fail "with NOTIFY_SOCKET: exit status $rc"
echo "NOTIFY_SOCKET set: supervised too"

rm -f "$WORK/bound"
env -u NOTIFY_SOCKET "$ECHORELAYD" --no-supervise -c "$WORK/c.toml" --bound-addresses-file "$WORK/bound" >"$WORK/log2" 2>&1 &
pid=$!
pids+=("$pid")
wait_file "$WORK/bound" || fail "--no-supervise did not start"
[ -z "$(worker_of "$pid")" ] || fail "--no-supervise started a child"
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
[ $rc = 0 ] || fail "--no-supervise: exit status $rc"
echo "--no-supervise: no supervisor"
echo PASS
