# Shared by the system tests (sourced). They run as root on a Debian 12 machine; a
# missing need makes a test exit 77, which ctest reports as "Skipped" with the
# reason on its output, never as a failure of the product.
set -euo pipefail

SYSTEM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE_DIR=$(cd "$SYSTEM_DIR/../.." && pwd)
# debootstrapped trees are kept here between runs (delete the directory to refresh).
CACHE_DIR=${ECHORELAY_TEST_CACHE:-/var/cache/echorelay-test}

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { say "FAIL: $*"; exit 1; }
skip() { say "SKIPPED: $*"; exit 77; }

need_root() { [ "$(id -u)" -eq 0 ] || skip "needs root (run tests/run as root)"; }
need_cmd() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || skip "needs '$c' (installed by packaging/install-deps.sh)"
  done
}

# The apt mirror of this machine, read at run time (never written into the repository).
debian_mirror() {
  local m
  m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$m" ] || m=http://deb.debian.org/debian
  printf '%s\n' "$m"
}

# ensure_tree NAME [PACKAGE,...]: a debootstrap --variant=minbase bookworm tree under
# $CACHE_DIR/NAME, built once (~40 s) and reused. Prints its path.
ensure_tree() {
  local name=$1 include=${2:-} dir
  dir=$CACHE_DIR/$name
  if [ ! -f "$dir/.complete" ]; then
    need_cmd debootstrap
    mkdir -p "$CACHE_DIR"
    rm -rf "$dir.tmp"
    say "debootstrap $name (once; cached in $dir)" >&2
    debootstrap --variant=minbase ${include:+--include=$include} bookworm "$dir.tmp" "$(debian_mirror)" \
      >"$CACHE_DIR/$name.log" 2>&1 || { tail -20 "$CACHE_DIR/$name.log" >&2; fail "debootstrap $name"; }
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    touch "$dir/.complete"
  fi
  printf '%s\n' "$dir"
}
