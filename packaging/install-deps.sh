#!/usr/bin/env bash
# Installs everything echorelay needs to build, run and test on Debian 12.
# Idempotent: packages already present are left alone, apt is asked only for the rest.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libboost1.81-dev libtomlplusplus-dev libcli11-dev libspdlog-dev libfmt-dev
  libsystemd-dev libc-ares-dev
  googletest libgtest-dev libgmock-dev
  # tests/fuzz: clang 14 and its libFuzzer runtime (libclang_rt.fuzzer)
  clang-14 libclang-rt-14-dev
  # real peers the tests talk to
  systemd iproute2 socat netcat-openbsd python3 procps dnsmasq-base
  # the README's quick tour
  curl xxd
  # system tests (tests/system): the image, the package, systemd as PID 1, Kubernetes YAML
  podman runc debootstrap systemd-container dpkg-dev debhelper lintian python3-yaml
)
# dockerfile-utils (the Dockerfile lint) comes from npm; a Node.js from elsewhere
# (e.g. NodeSource) brings its own npm and conflicts with Debian's.
command -v npm >/dev/null 2>&1 || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get -o DPkg::Lock::Timeout=600 update
  $sudo_cmd apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"
fi
