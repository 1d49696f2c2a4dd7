"""The image recipe: what goes into the one rootfs every guest boots from.

Concepts: the rootfs is Debian trixie plus trixie-backports, built by mmdebstrap.  It holds
the QEMU that runs the guest (>= 10.1, with ``vfio-user-pci``), the guest userspace, and
two kernel *flavors* with their headers and compiler: ``default`` (trixie-backports'
``linux-image-amd64``) and ``lts`` (trixie's own kernel).  Both flavors live in the same
rootfs, so switching flavor never rebuilds; ``KERNEL_FLAVOR`` picks one at boot.

The cache key is a hash of the mmdebstrap command this recipe gives, with the mirror and
the target left out: a change to what is built (suites, packages, options, hooks)
rebuilds; a comment, a docstring or the mirror does not (the initramfs and the guest
init scripts are cached separately, see initramfs.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

SUITE = "trixie"
SUITES = ("trixie", "trixie-backports")
DEFAULT_RELEASE = "trixie-backports"

PACKAGES = (
    "qemu-system-x86",      # >= 10.1 from backports: the vfio-user-pci client
    "linux-image-amd64",    # flavor 'default' (backports)
    "linux-headers-amd64",
    "gcc",
    "make",
    "python3",              # the guest agent
    "busybox-static",       # the initramfs and stage-2 tools
    "kmod",
    "pciutils",
)


@dataclass(frozen=True)
class Flavor:
    """A kernel flavor of the image: its name, the suite whose linux-image-amd64 it follows, a
    summary."""
    name: str
    release: str      # the suite whose linux-image-amd64 this flavor follows
    summary: str


FLAVORS = {
    "default": Flavor("default", "trixie-backports", "trixie-backports kernel (newest)"),
    "lts": Flavor("lts", "trixie", "trixie's own LTS kernel"),
}
DEFAULT_FLAVOR = "default"

# Installs the LTS kernel beside the default one.  The metapackages of the two suites
# conflict, so resolve trixie's metapackage to its versioned image and headers packages.
LTS_HOOK = r"""
set -e
img=$(chroot "$1" apt-cache depends linux-image-amd64/trixie | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
hdr=$(echo "$img" | sed 's/^linux-image-/linux-headers-/')
test -n "$img"
echo "lts kernel: $img $hdr"
chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$img/trixie" "$hdr/trixie"
"""

#: stand-ins for the mirror and the target in the command the cache key hashes
_ANY_MIRROR, _ANY_TARGET = "MIRROR", Path("TARGET")


def recipe_hash() -> str:
    """Hash of the build command, which alone decides the rootfs' contents (12 hex
    digits): ``mmdebstrap_argv`` with stand-ins for the mirror and the target."""
    argv = mmdebstrap_argv(_ANY_MIRROR, _ANY_TARGET)
    return hashlib.sha256("\0".join(argv).encode()).hexdigest()[:12]


def mmdebstrap_argv(mirror: str, target: Path) -> list[str]:
    """The mmdebstrap command that builds the rootfs at ``target``."""
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        f'--aptopt=APT::Default-Release "{DEFAULT_RELEASE}"',
        "--aptopt=APT::Install-Recommends \"false\"",
        '--aptopt=Acquire::Retries "3"',        # a flaky mirror costs a retry, not a build
        "--include=" + ",".join(PACKAGES),
        "--customize-hook=" + LTS_HOOK,
        "--customize-hook=rm -f \"$1\"/boot/initrd.img-*",
        SUITE,
        str(target),
    ]
    argv += [f"deb {mirror} {suite} main" for suite in SUITES]
    return argv
