#!/usr/bin/env bash
# The top-level Dockerfile, for real: build the image with podman (Docker format, so
# HEALTHCHECK is kept) from the unchanged Dockerfile on local debian:bookworm and
# :bookworm-slim images imported from a debootstrapped tree, lint it, run it, echo
# TCP, Unix and UDP through it, hot-restart it with `podman kill -s HUP` under a
# client loop (zero failed requests, same container, same PID 1), run the
# healthcheck, check the user is not root, and `podman stop` it (exit 0 within the
# drain timeout). The clients run in the container's own network namespace
# (--network none, entered with nsenter): no port on the host is used.
source "$(dirname "$0")/common.sh"
need_root
need_cmd podman nsenter python3 npm
export CONTAINERS_CONF=$SYSTEM_DIR/containers.conf
IMAGE=localhost/echorelay:system-test
NAME=echorelay-system-test-$$
WORK=$(mktemp -d /tmp/echorelay-container.XXXXXX)
cleanup() {
  podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  [ -n "${client_pid:-}" ] && kill "$client_pid" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- lint ------------------------------------------------------------------------
lint_dir=$CACHE_DIR/npm
if [ ! -x "$lint_dir/node_modules/.bin/dockerfile-utils" ]; then
  say "npm install dockerfile-utils (once; cached in $lint_dir)"
  mkdir -p "$lint_dir"
  npm install --no-audit --no-fund --prefix "$lint_dir" dockerfile-utils@0.16.3 >/dev/null 2>&1 ||
    skip "npm install dockerfile-utils failed (needs the npm registry)"
fi
lint=$("$lint_dir/node_modules/.bin/dockerfile-utils" lint "$SOURCE_DIR/Dockerfile" 2>&1) || true
[ -z "$lint" ] || { printf '%s\n' "$lint"; fail "dockerfile-utils lint reports the above"; }
say "dockerfile-utils lint: clean"

# --- base images -----------------------------------------------------------------
for tag in bookworm bookworm-slim; do
  if ! podman image exists "docker.io/library/debian:$tag"; then
    tree=$(ensure_tree minbase)
    say "import $tree as docker.io/library/debian:$tag"
    excludes=(--exclude=./.complete --exclude=./etc/apt/sources.list)
    if [ "$tag" = bookworm-slim ]; then
      # like the real slim image: no documentation, manuals or translations
      excludes+=(--exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' --exclude='./usr/share/locale/*'
                 --exclude='./usr/share/info/*' --exclude='./var/cache/apt/*' --exclude='./var/lib/apt/lists/*')
    fi
    tar -C "$tree" "${excludes[@]}" -c . | podman import - "docker.io/library/debian:$tag" >/dev/null
  fi
done

# --- build -----------------------------------------------------------------------
say "podman build (Dockerfile unchanged)"
t0=$(date +%s)
podman build --format docker --pull=never --isolation chroot --network host \
  -v /etc/apt/sources.list.d:/etc/apt/sources.list.d:ro \
  --build-arg JOBS="${ECHORELAY_JOBS:-2}" \
  -t "$IMAGE" "$SOURCE_DIR" >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; fail "podman build"; }
size=$(podman image inspect -f '{{.Size}}' "$IMAGE")
say "image built in $(( $(date +%s) - t0 )) s, size $(( size / 1000000 )) MB ($size bytes)"
[ "$(podman image inspect -f '{{.Config.User}}' "$IMAGE")" = 10001:10001 ] || fail "image user is not 10001:10001"
podman image inspect -f '{{json .Config.Healthcheck}}' "$IMAGE" | grep -q probe || fail "image has no HEALTHCHECK"

# --- run -------------------------------------------------------------------------
podman run -d --name "$NAME" --network none "$IMAGE" >/dev/null
pid=$(podman inspect -f '{{.State.Pid}}' "$NAME")
cid=$(podman inspect -f '{{.Id}}' "$NAME")
for _ in $(seq 100); do
  podman exec "$NAME" echorelayd probe tcp://127.0.0.1:7007 >/dev/null 2>&1 && break
  sleep 0.1
done
podman exec "$NAME" echorelayd probe tcp://127.0.0.1:7007 >/dev/null || { podman logs "$NAME"; fail "no echo on 7007/tcp"; }
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[ "$uid" = 10001 ] || fail "PID 1 of the container runs as uid $uid, not 10001"
[ "$(podman exec "$NAME" id -u)" = 10001 ] || fail "podman exec runs as root"
say "PID 1 (host pid $pid) runs as uid $uid"
podman healthcheck run "$NAME" || fail "podman healthcheck run"
say "healthcheck: healthy"

root=/proc/$pid/root
in_netns() { nsenter -t "$pid" -n -- "$@"; }
# one request of each kind through every listener (the relays included)
in_netns python3 "$SYSTEM_DIR/client.py" --tcp 127.0.0.1:7007 --tcp 127.0.0.1:7100 --udp 127.0.0.1:7007 \
  --udp 127.0.0.1:7101 --unix "$root/tmp/echorelay-echo.sock" --duration 0.5 >"$WORK/smoke.json" ||
  { cat "$WORK/smoke.json"; fail "echo through the container"; }
say "echo through tcp, relay-tcp, udp, relay-udp, unix: $(cat "$WORK/smoke.json")"

# --- hot restart under load ------------------------------------------------------
in_netns python3 "$SYSTEM_DIR/client.py" --tcp 127.0.0.1:7007 --tcp-churn 127.0.0.1:7007 --udp 127.0.0.1:7007 \
  --unix "$root/tmp/echorelay-echo.sock" --stop-file "$WORK/stop" --ready-file "$WORK/running" \
  >"$WORK/load.json" &
client_pid=$!
for _ in $(seq 100); do [ -f "$WORK/running" ] && break; sleep 0.1; done
restarts=3
for i in $(seq $restarts); do
  before=$(podman logs "$NAME" 2>&1 | grep -c "handover done" || true)
  podman kill -s HUP "$NAME" >/dev/null
  for _ in $(seq 100); do
    [ "$(podman logs "$NAME" 2>&1 | grep -c "handover done" || true)" -gt "$before" ] && break
    sleep 0.1
  done
  [ "$(podman logs "$NAME" 2>&1 | grep -c "handover done" || true)" -gt "$before" ] ||
    { podman logs "$NAME" 2>&1 | tail -20; fail "hot restart $i did not complete"; }
  sleep 1
done
touch "$WORK/stop"
wait "$client_pid" || { cat "$WORK/load.json"; fail "requests failed during hot restarts"; }
client_pid=
say "hot restarts: $restarts, client: $(cat "$WORK/load.json")"
[ "$(podman inspect -f '{{.State.Pid}}' "$NAME")" = "$pid" ] || fail "PID 1 changed across the hot restart"
[ "$(podman inspect -f '{{.Id}}' "$NAME")" = "$cid" ] || fail "container changed"
[ "$(podman inspect -f '{{.State.Running}}' "$NAME")" = true ] || fail "container stopped"
in_netns python3 "$SYSTEM_DIR/client.py" --tcp 127.0.0.1:7007 --udp 127.0.0.1:7007 --duration 0.3 >/dev/null ||
  fail "no echo after the hot restarts"

# --- stop ------------------------------------------------------------------------
drain=30
t0=$(date +%s%N)
podman stop -t $((drain + 10)) "$NAME" >/dev/null
elapsed_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
code=$(podman inspect -f '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || { podman logs "$NAME" 2>&1 | tail -20; fail "exit code $code after podman stop"; }
[ "$elapsed_ms" -lt $((drain * 1000)) ] || fail "podman stop took ${elapsed_ms} ms, drain_timeout is ${drain}s"
say "podman stop: exit 0 after ${elapsed_ms} ms"
say "PASS: image $(( size / 1000000 )) MB; $restarts hot restarts; $(cat "$WORK/load.json")"
