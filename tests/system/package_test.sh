#!/usr/bin/env bash
# The Debian package: `dpkg-buildpackage -us -uc -b` with packaging/debian, then its
# contents and lintian. dpkg-buildpackage wants debian/ at the top of the source tree
# and the repository keeps it at packaging/debian (so a checkout is not mistaken for
# an unpacked Debian source): this test copies the tracked files to a scratch tree,
# copies packaging/debian to debian/ there, and builds in that copy. The .deb is
# left in OUT_DIR (argument 1) for systemd_test.sh.
source "$(dirname "$0")/common.sh"
need_cmd dpkg-buildpackage dh lintian dpkg-deb
OUT_DIR=${1:?usage: package_test.sh OUT_DIR}
mkdir -p "$OUT_DIR"
# A fixed scratch path: with ccache, a second build of the same sources is quick.
WORK=${ECHORELAY_DEB_WORK:-${TMPDIR:-/tmp}/echorelay-deb-build}
rm -rf "$WORK"
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
version=$(dpkg-parsechangelog -l "$SOURCE_DIR/packaging/debian/changelog" -S Version)
src=$WORK/echorelay-$version
mkdir -p "$src"
if git -C "$SOURCE_DIR" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$SOURCE_DIR" ls-files -z --cached --others --exclude-standard |
    (cd "$SOURCE_DIR" && xargs -0 cp --parents -t "$src" 2>/dev/null || true)
else
  tar -C "$SOURCE_DIR" --exclude='./build*' -c . | tar -C "$src" -x
fi
cp -r "$SOURCE_DIR/packaging/debian" "$src/debian"

say "dpkg-buildpackage -us -uc -b (echorelay $version)"
(cd "$src" && dpkg-buildpackage -us -uc -b) >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; fail "dpkg-buildpackage"; }
# Warning-clean in Debian's own build type (None + dpkg-buildflags), -Werror or not.
if grep -E 'warning:' "$WORK/build.log" | grep -v '^dpkg-' >"$WORK/warnings"; then
  head -20 "$WORK/warnings"; fail "compiler warnings in the package build"
fi
deb=$WORK/echorelay_${version}_amd64.deb
[ -f "$deb" ] || fail "no $deb"
cp "$deb" "$OUT_DIR/"
deb=$OUT_DIR/$(basename "$deb")

contents=$(dpkg-deb -c "$deb")
for path in ./usr/sbin/echorelayd ./etc/echorelay/echorelay.toml ./lib/systemd/system/echorelay.service \
            ./lib/systemd/system/echorelay.socket ./usr/share/man/man8/echorelayd.8.gz \
            ./usr/share/man/man5/echorelay.toml.5.gz ./usr/share/doc/echorelay/copyright \
            ./usr/share/doc/echorelay/README.md ./usr/share/doc/echorelay/examples/echorelay.toml; do
  grep -q " $path\$" <<<"$contents" || fail "$path is not in the package"
done
dpkg-deb --info "$deb" conffiles | grep -qx /etc/echorelay/echorelay.toml || fail "the config is not a conffile"
dpkg-deb --info "$deb" postinst >"$WORK/postinst"
grep -q 'deb-systemd-invoke try-reload-or-restart echorelay.service' "$WORK/postinst" || fail "postinst does not reload on upgrade"
if grep -Eq 'deb-systemd-invoke (restart|try-restart) .*echorelay.service' "$WORK/postinst"; then
  fail "postinst restarts the service on upgrade"
fi
say "package contents, conffile and maintainer scripts: ok"

lintian_out=$(lintian --fail-on error,warning --display-info "$deb" 2>&1) || { printf '%s\n' "$lintian_out"; fail "lintian"; }
say "lintian: ${lintian_out:-no tags}"
say "PASS: $(basename "$deb") ($(stat -c %s "$deb") bytes)"
