#!/bin/sh
# Install the host packages msixlab needs, from the host's own apt sources (which are
# never modified).  Only missing packages are installed, so a set-up machine does no apt
# work at all.
set -eu
need=""
# chromium renders report.html in the tests (headless); nothing else uses it.
# The kernel-tree tools build and bisect kernels (msixlab kernel build, bisect, the
# tests' linux-source tree): flex, bison, bc, libelf-dev, libssl-dev, git, xz-utils, and
# lz4 (the minimal kernel is LZ4-compressed: it boots fastest).
for pkg in mmdebstrap make gcc cpio python3-venv flex bison bc libelf-dev libssl-dev git xz-utils lz4 chromium; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
		need="$need $pkg"
done
# python3-venv is only needed when the python3 on PATH is Debian's own
if python3 -c 'import venv, ensurepip' 2>/dev/null; then
	need=$(echo "$need" | sed 's/ python3-venv//')
fi
[ -z "$need" ] && exit 0
echo "msixlab: installing host packages:$need"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o Acquire::Retries=3 update -q
# shellcheck disable=SC2086
$SUDO apt-get -o Acquire::Retries=3 install -y -q $need
