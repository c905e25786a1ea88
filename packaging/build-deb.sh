#!/bin/sh
# Build tambo's Debian package from the workspace with dpkg-deb, from a
# staged tree (no debhelper, no cargo-deb needed).
#
#   packaging/build-deb.sh            release build, .deb in target/debian/
#   PROFILE=debug packaging/build-deb.sh    reuse target/debug (tests)
#   OUT=DIR                           where the .deb goes
#   NO_BUILD=1                        do not run cargo (binaries must exist)
#   COMPRESS=gzip                     dpkg-deb compression (default xz)
#
# Prints the path of the .deb on its last line.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
PROFILE=${PROFILE:-release}
OUT=${OUT:-$root/target/debian}
case "$PROFILE" in
release) cargo_flags="--release" ;;
debug) cargo_flags="" ;;
*) cargo_flags="--profile $PROFILE" ;;
esac
target_dir=${CARGO_TARGET_DIR:-$root/target}
bin="$target_dir/$PROFILE"
if [ -z "${NO_BUILD:-}" ]; then
    # shellcheck disable=SC2086
    # Without the test crate, whose features (sandbox-probe) must not
    # reach a package.
    cargo build --workspace --exclude tambo-tests --bins $cargo_flags >&2
fi
for b in tambod tambo tambo-smtpd tambo-authd tambo-queued tambo-deliverd tambo-hookd tambo-watcher mda-lmtp smtp-check dovecot-auth-cli; do
    [ -x "$bin/$b" ] || { echo "build-deb.sh: $bin/$b missing" >&2; exit 1; }
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
mkdir -p "$OUT"
stage=$(mktemp -d "$OUT/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
pkg="$stage/tambo"

install -D -m 0755 "$bin/tambod" "$pkg/usr/sbin/tambod"
install -D -m 0755 "$bin/tambo" "$pkg/usr/bin/tambo"
for w in smtpd authd queued deliverd hookd watcher; do
    install -D -m 0755 "$bin/tambo-$w" "$pkg/usr/lib/tambo/tambo-$w"
done
# mailq through the alternatives system, once the tambo command has its
# queue listing (it answers to the name mailq).
if "$bin/tambo" help queue >/dev/null 2>&1; then
    ln -s /usr/bin/tambo "$pkg/usr/lib/tambo/mailq"
fi
# sendmail likewise (the tambo command is the injector under that name).
if "$bin/tambo" help sendmail >/dev/null 2>&1; then
    ln -s /usr/bin/tambo "$pkg/usr/lib/tambo/sendmail"
fi
# chasquid's helper programs: the tambo command answers to the name
# chasquid-util; mda-lmtp, smtp-check and dovecot-auth-cli are their own
# binaries. They live here; postinst offers /usr/bin/NAME through the
# alternatives system, so that Debian's chasquid package (which installs
# /usr/bin/chasquid-util, mda-lmtp and smtp-check as plain files) can be
# installed as well.
ln -s /usr/bin/tambo "$pkg/usr/lib/tambo/chasquid-util"
for t in mda-lmtp smtp-check dovecot-auth-cli; do
    install -D -m 0755 "$bin/$t" "$pkg/usr/lib/tambo/$t"
done
strip --strip-debug "$pkg/usr/sbin/tambod" "$pkg/usr/bin/tambo" "$pkg"/usr/lib/tambo/tambo-* \
    "$pkg/usr/lib/tambo/mda-lmtp" "$pkg/usr/lib/tambo/smtp-check" "$pkg/usr/lib/tambo/dovecot-auth-cli"
install -D -m 0644 packaging/chasquid.conf.example "$pkg/etc/tambo/chasquid.conf"
install -d -m 0755 "$pkg/etc/tambo/domains" "$pkg/etc/tambo/certs"
install -D -m 0644 packaging/logrotate "$pkg/etc/logrotate.d/tambo"
install -D -m 0644 packaging/fail2ban/tambo.conf "$pkg/etc/fail2ban/filter.d/tambo.conf"
for u in packaging/systemd/*.service packaging/systemd/*.socket; do
    install -D -m 0644 "$u" "$pkg/lib/systemd/system/$(basename "$u")"
done
install -D -m 0644 README.md "$pkg/usr/share/doc/tambo/README.md"
install -D -m 0755 packaging/create-users.sh "$pkg/usr/share/doc/tambo/examples/create-users.sh"

install -d -m 0755 "$pkg/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    packaging/debian/control.in >"$pkg/DEBIAN/control"
printf '%s\n' /etc/tambo/chasquid.conf /etc/logrotate.d/tambo /etc/fail2ban/filter.d/tambo.conf \
    >"$pkg/DEBIAN/conffiles"
for s in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$s" "$pkg/DEBIAN/$s"
done
deb="$OUT/tambo_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"${COMPRESS:-xz}" --build "$pkg" "$deb" >&2
echo "$deb"
