#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# build.sh ROOTFS OUTDIR
#
# Build msixlab.ko against the kernel headers installed in an image rootfs
# (gcc, make and linux-headers-*-amd64 inside it), without modifying the
# rootfs: the sources are copied to OUTDIR, and the build runs chrooted in a
# private mount namespace with /proc mounted (objtool needs it) and OUTDIR
# bind-mounted on ROOTFS/mnt, through the Makefile's KDIR= path (the one a
# bisect uses against its own tree).  Leaves OUTDIR/msixlab.ko; on failure exits
# non-zero with the compiler's messages on stderr.
# MSIXLAB_KVER=VER selects linux-headers-VER when the rootfs holds several.
# MSIXLAB_W=LEVELS builds with kbuild's extra warnings (make W=LEVELS: 1, 2
# and 3 or a combination such as 12); their messages are in OUTDIR/build.log.
set -eu

usage() {
	echo "usage: $0 ROOTFS OUTDIR" >&2
	exit 2
}

[ $# -eq 2 ] || usage
w=${MSIXLAB_W:-}
case $w in
*[!123]*)
	echo "$0: MSIXLAB_W must be kbuild's warning levels (1, 2, 3 or a combination such as 12), not '$w'" >&2
	exit 2
	;;
esac
rootfs=$(realpath "$1")
mkdir -p "$2"
outdir=$(realpath "$2")
src=$(dirname "$(realpath "$0")")

if [ -n "${MSIXLAB_KVER:-}" ]; then
	hdrs=/usr/src/linux-headers-$MSIXLAB_KVER
else
	hdrs=
	for d in "$rootfs"/usr/src/linux-headers-*-amd64; do
		[ -d "$d" ] || continue
		[ -z "$hdrs" ] || {
			echo "$0: several kernel headers in $rootfs; set MSIXLAB_KVER" >&2
			exit 1
		}
		hdrs=/usr/src/$(basename "$d")
	done
fi
if [ -z "$hdrs" ] || [ ! -d "$rootfs$hdrs" ]; then
	echo "$0: no linux-headers-*-amd64 in $rootfs/usr/src" >&2
	exit 1
fi
[ -x "$rootfs/usr/bin/make" ] && [ -x "$rootfs/usr/bin/gcc" ] || {
	echo "$0: $rootfs lacks make or gcc" >&2
	exit 1
}

for f in "$src"/Kbuild "$src"/Makefile "$src"/*.h "$src"/*.c; do
	cp "$f" "$outdir/"
done
rm -f "$outdir/msixlab.ko"

unshare -m sh -eu -c '
	mount --make-rprivate /
	mount -t proc proc "$1/proc"
	mount --bind "$2" "$1/mnt"
	exec chroot "$1" make -C /mnt KDIR="$3" ${4:+"W=$4"} modules
' build "$rootfs" "$outdir" "$hdrs" "$w" >"$outdir/build.log" 2>&1 || {
	cat "$outdir/build.log" >&2
	echo "$0: build failed (log: $outdir/build.log)" >&2
	exit 1
}
[ -f "$outdir/msixlab.ko" ] || {
	cat "$outdir/build.log" >&2
	echo "$0: make succeeded but left no msixlab.ko" >&2
	exit 1
}
echo "$outdir/msixlab.ko"
