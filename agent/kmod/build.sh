#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# build.sh ROOTFS OUTDIR
#
# Build msixlab.ko against the kernel headers installed in an image rootfs
# (gcc, make and linux-headers-*-amd64 inside it) as any user: no chroot, no
# namespace, and the rootfs is only read.  Every program of the rootfs that the
# build runs (make, gcc and its cc1, as and ld, the kernel's fixdep, modpost and
# objtool, pahole ...) runs on the host through the rootfs's own dynamic loader
# and libraries, as msixlab already runs the image's QEMU; the rest (sh, sed,
# awk ...) is the host's:
#   OUTDIR/.tools/bin      a wrapper for each toolchain program of ROOTFS/usr/bin,
#                          first on PATH; gcc's wrapper adds -B OUTDIR/.tools/gcc so
#                          that gcc runs its cc1, as and ld through wrappers too;
#   OUTDIR/.tools/kdir     the headers' build directory, each entry linked to the
#                          rootfs's, but scripts/ and tools/ mirrored with the
#                          kernel's own ELF helpers as wrappers, and a Makefile
#                          that includes the rootfs's -common Makefile by path.
# The sources are copied to OUTDIR and built with the Makefile's KDIR= path (the
# one a bisect uses against its own tree).  Leaves OUTDIR/msixlab.ko and
# OUTDIR/build.log; on failure exits 1 with the log's last lines and the reason
# on stderr (a usage error exits 2).
# MSIXLAB_KVER=VER selects linux-headers-VER when the rootfs holds several.
# MSIXLAB_W=LEVELS builds with kbuild's extra warnings (make W=LEVELS: 1, 2
# and 3 or a combination such as 12); their messages are in OUTDIR/build.log.
set -eu

usage() {
	echo "usage: $0 ROOTFS OUTDIR" >&2
	exit 2
}

die() {
	echo "$0: $*" >&2
	exit 1
}

[ $# -eq 2 ] || usage
w=${MSIXLAB_W:-}
case $w in
*[!123]*)
	echo "$0: MSIXLAB_W must be kbuild's warning levels (1, 2, 3 or a combination such as 12), not '$w'" >&2
	exit 2
	;;
esac
[ -d "$1" ] || die "no image rootfs at $1"
rootfs=$(realpath "$1")
mkdir -p "$2"
outdir=$(realpath "$2")
src=$(dirname "$(realpath "$0")")
loader=$rootfs/usr/lib64/ld-linux-x86-64.so.2
libs=$rootfs/usr/lib/x86_64-linux-gnu

if [ -n "${MSIXLAB_KVER:-}" ]; then
	hdrs=$rootfs/usr/src/linux-headers-$MSIXLAB_KVER
else
	hdrs=
	for d in "$rootfs"/usr/src/linux-headers-*-amd64; do
		[ -d "$d" ] || continue
		[ -z "$hdrs" ] || die "several kernel headers in $rootfs; set MSIXLAB_KVER"
		hdrs=$d
	done
fi
[ -n "$hdrs" ] && [ -d "$hdrs" ] ||
	die "no linux-headers-${MSIXLAB_KVER:-*-amd64} in $rootfs/usr/src"
[ -x "$rootfs/usr/bin/make" ] && [ -x "$rootfs/usr/bin/gcc" ] ||
	die "$rootfs lacks make or gcc"
[ -e "$loader" ] || die "$rootfs has no dynamic loader (usr/lib64/ld-linux-x86-64.so.2)"
# Debian's headers Makefile: "include /usr/src/linux-headers-VER-common/Makefile"
common=$(sed -n 's,^include \(/usr/src/[^ ]*\)/Makefile$,\1,p' "$hdrs/Makefile")
[ -n "$common" ] && [ -f "$rootfs$common/Makefile" ] ||
	die "$hdrs/Makefile includes no -common Makefile of the rootfs"

# quote WORD: q is WORD as one single-quoted shell word
quote() {
	case $1 in
	*\'*) q="'$(printf '%s' "$1" | sed "s/'/'\\\\''/g")'" ;;
	*) q="'$1'" ;;
	esac
}

# inside PATH: the host path of PATH (absolute, inside the rootfs) with every
# symbolic link followed as the rootfs sees it (an absolute target is the rootfs's)
inside() {
	p=$1
	n=0
	while [ -L "$rootfs$p" ]; do
		t=$(readlink "$rootfs$p")
		case $t in
		/*) p=$t ;;
		*) p=${p%/*}/$t ;;
		esac
		n=$((n + 1))
		[ $n -le 40 ] || return 1
	done
	printf '%s\n' "$rootfs$p"
}

elf=$(printf '\177ELF')
is_elf() {
	[ -f "$1" ] && [ -x "$1" ] && [ "$(head -c 4 "$1" 2>/dev/null)" = "$elf" ]
}

# wrap FILE REAL [EXTRA]: FILE runs the rootfs's program REAL through its loader;
# argv[0] is FILE (so make's $(MAKE) and Debian's modpost and objtool, which run
# "$0.real-*", come back through wrappers), or with EXTRA (gcc) REAL itself, from
# which gcc finds its own directories.
quote "$loader"
qloader=$q
quote "$libs"
qlibs=$q
wrap() {
	quote "$2"
	argv0='"$0"'
	[ -z "${3:-}" ] || argv0=$q
	printf '#!/bin/sh\nexec %s --library-path %s --argv0 %s %s %s"$@"\n' \
		"$qloader" "$qlibs" "$argv0" "$q" "${3:-}" >"$1"
}

tools=$outdir/.tools
rm -rf "$tools"
mkdir -p "$tools/bin" "$tools/gcc" "$tools/kdir"

# gcc runs cc1 (and collect2, lto1 ...) from its libexec directory and as and ld
# from PATH or its own; -B finds these wrappers first
for f in "$rootfs"/usr/libexec/gcc/x86_64-linux-gnu/*/*; do
	is_elf "$f" && case $f in *.so) ;; *) wrap "$tools/gcc/${f##*/}" "$f" ;; esac
done
for name in as ld; do
	real=$(inside "/usr/bin/x86_64-linux-gnu-$name") && is_elf "$real" &&
		wrap "$tools/gcc/$name" "$real"
done
quote "$tools/gcc/"
gcc_b="-B $q "
for f in "$rootfs"/usr/bin/*; do
	name=${f##*/}
	case $name in    # the toolchain; the rest (sed, awk ...) is the host's
	make | gmake | pahole | cc | gcc* | cpp* | x86_64-linux-gnu-*) ;;
	as | ld | ld.bfd | ld.gold | ar | nm | objcopy | objdump | readelf | strip | ranlib | size) ;;
	*) continue ;;
	esac
	real=$(inside "/usr/bin/$name") && is_elf "$real" || continue
	case ${real##*/} in
	*-gcc-[0-9]* | *-cpp-[0-9]*) wrap "$tools/bin/$name" "$real" "$gcc_b" ;;
	*) wrap "$tools/bin/$name" "$real" ;;
	esac
done

# mirror DIR COPY: COPY mirrors the rootfs's directory DIR, files linked, ELF
# programs wrapped
mirror() {
	(cd "$1" && find . -type d) | while IFS= read -r d; do
		from=$1/$d
		to=$2/$d
		mkdir -p "$to"
		(
			set --
			for f in "$from"/* "$from"/.[!.]*; do
				[ -e "$f" ] || [ -L "$f" ] || continue
				if [ -d "$f" ] && [ ! -L "$f" ]; then
					continue
				elif is_elf "$f"; then
					wrap "$to/${f##*/}" "$f"
				else
					set -- "$@" "$f"
				fi
			done
			[ $# -eq 0 ] || ln -s "$@" "$to/"
		)
	done
}

for entry in "$hdrs"/* "$hdrs"/.[!.]*; do
	[ -e "$entry" ] || [ -L "$entry" ] || continue
	name=${entry##*/}
	case $name in
	Makefile) ;;
	scripts | tools) mirror "$(inside "${entry#"$rootfs"}")" "$tools/kdir/$name" ;;
	*) ln -s "$entry" "$tools/kdir/$name" ;;
	esac
done
{
	echo "KBUILD_OUTPUT=$tools/kdir"
	echo "include $rootfs$common/Makefile"
} >"$tools/kdir/Makefile"
find "$tools" -type f ! -name Makefile -exec chmod 0755 {} +

for f in "$src"/Kbuild "$src"/Makefile "$src"/*.h "$src"/*.c; do
	cp "$f" "$outdir/"
done
rm -f "$outdir/msixlab.ko"

# the toolchain is the rootfs's (through the wrappers); the rest of the build's
# commands (sh, sed, awk ...) are the host's
PATH=$tools/bin:$PATH "$tools/bin/make" -C "$outdir" KDIR="$tools/kdir" ${w:+"W=$w"} modules \
	>"$outdir/build.log" 2>&1 || {
	tail -n 40 "$outdir/build.log" >&2
	die "build failed (log: $outdir/build.log)"
}
[ -f "$outdir/msixlab.ko" ] || {
	tail -n 40 "$outdir/build.log" >&2
	die "make succeeded but left no msixlab.ko (log: $outdir/build.log)"
}
rm -rf "$tools"     # its wrappers name OUTDIR, which the caller may rename
echo "$outdir/msixlab.ko"
