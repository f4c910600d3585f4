#!/bin/sh
# Build, once, the Debian bookworm rootfs that tests/integration/test_systemd_boot.py boots
# with systemd-nspawn, and leave it at DEST for every later run (CI caches that path).
#
#   build-rootfs.sh [DEST]        DEST defaults to /var/cache/stemd-tests/rootfs-bookworm-v1
#
# The tree is built in a temporary directory beside DEST and renamed into place only once it is
# complete, so a half-built rootfs (interrupted, out of disk, mirror gone) is never booted.
# Concurrent builders serialise on a lock file. Bump the -vN suffix when this recipe changes.
# Environment: STEMD_TEST_MIRROR (default http://deb.debian.org/debian).
set -eu

DEST=${1:-/var/cache/stemd-tests/rootfs-bookworm-v1}
MIRROR=${STEMD_TEST_MIRROR:-http://deb.debian.org/debian}
STAMP=.stemd-rootfs-complete

[ -f "$DEST/$STAMP" ] && exit 0

for tool in debootstrap flock; do
    command -v "$tool" >/dev/null 2>&1 || { echo "build-rootfs: $tool not found" >&2; exit 2; }
done

parent=$(dirname "$DEST")
mkdir -p "$parent"
exec 9>"$parent/.$(basename "$DEST").lock"
flock 9
[ -f "$DEST/$STAMP" ] && exit 0     # another builder finished while we waited

work=$(mktemp -d "$parent/.$(basename "$DEST").build.XXXXXX")
cleanup() {
    # debootstrap may leave /proc or /sys mounted inside a failed tree: never rm -rf through them.
    for m in proc sys dev/pts dev; do
        mountpoint -q "$work/rootfs/$m" 2>/dev/null && umount -l "$work/rootfs/$m"
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,python3 \
    bookworm "$work/rootfs" "$MIRROR"

root=$work/rootfs
# Boot straight to multi-user without waiting on things a test container does not have.
echo stemd-test > "$root/etc/hostname"
: > "$root/etc/machine-id"
for unit in systemd-networkd.service systemd-resolved.service systemd-timesyncd.service \
            apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
            getty@tty1.service console-getty.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* 2>/dev/null || true

touch "$root/$STAMP"
# A DEST without the stamp is a leftover of an older, broken recipe: replace it.
[ -e "$DEST" ] && rm -rf --one-file-system "$DEST"
mv "$root" "$DEST"
echo "build-rootfs: $DEST ready"
