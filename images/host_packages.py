"""The host packages msixlab needs, and ``msixlab setup``, which installs them.

Concepts: ``PACKAGES`` is the one list: each Debian package, what msixlab needs it for, and
the name to look for on another distribution.  ``missing()`` asks dpkg which are not
installed (python3-venv only when the ``python3`` running this cannot make a venv).  ``plan``
decides how to install them: directly as root, through ``sudo`` when sudo may run without a
password prompt (or a terminal is there to answer one), else not at all, and then
``setup`` prints the exact command for the user to run.  A host without dpkg and apt is
not Debian: ``setup`` names the packages to look for.  The host's apt sources are only
used, never changed.  Standard library only: ``make`` runs it before the venv exists.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class Package:
    """A Debian package msixlab needs, why, and its usual name elsewhere."""
    name: str
    why: str
    elsewhere: str


PACKAGES = (
    Package("mmdebstrap", "builds the guest image's rootfs", "mmdebstrap"),
    Package("make", "the driver build, kernel trees, the Makefile", "make"),
    Package("gcc", "the kernel tree builds, the uapi probe of the tests", "gcc"),
    Package("cpio", "the initramfs (the tests read it back)", "cpio"),
    Package("python3-venv", "the checkout's venv", "python3 (with venv and ensurepip)"),
    Package("flex", "kernel tree builds", "flex"),
    Package("bison", "kernel tree builds", "bison"),
    Package("bc", "kernel tree builds", "bc"),
    Package("libelf-dev", "kernel tree builds (objtool)", "elfutils-libelf-devel / libelf"),
    Package("libssl-dev", "kernel tree builds (module signing tools)", "openssl-devel / openssl"),
    Package("git", "bisect, kernel trees", "git"),
    Package("xz-utils", "kernel modules and the kernel source package", "xz"),
    Package("lz4", "the minimal kernel is LZ4-compressed (it boots fastest)", "lz4"),
    Package("perl", "the kernel's checkpatch.pl on the guest driver (tests)", "perl"),
    Package("uidmap", "the image build as a normal user (mmdebstrap's unshare mode)",
            "shadow-utils (newuidmap, newgidmap)"),
    Package("chromium", "renders report.html in the tests (headless)", "chromium"),
)

APT = ("apt-get", "-o", "Acquire::Retries=3")


def _installed(name: str) -> bool:
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return "install ok installed" in done.stdout


def _venv_works(python: str = sys.executable) -> bool:
    try:
        return subprocess.run([python, "-c", "import venv, ensurepip"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def is_debian() -> bool:
    """Whether this host installs with dpkg and apt."""
    return bool(shutil.which("dpkg-query") and shutil.which("apt-get"))


def missing(installed=_installed, venv_works=_venv_works) -> list[Package]:
    """The packages not installed on this (Debian) host."""
    need = [p for p in PACKAGES if not installed(p.name)]
    if venv_works():
        need = [p for p in need if p.name != "python3-venv"]
    return need


def commands(need: list[Package], sudo: bool) -> list[list[str]]:
    """The apt commands that install ``need`` (through sudo when ``sudo``)."""
    prefix = ["sudo"] if sudo else []
    return [prefix + [*APT, "update", "-q"],
            prefix + [*APT, "install", "-y", "-q", *(p.name for p in need)]]


def _sudo_usable(interactive: bool) -> bool:
    if not shutil.which("sudo"):
        return False
    if interactive:
        return True                         # sudo may ask for the password on the terminal
    try:
        return subprocess.run(["sudo", "-n", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def setup(out: TextIO = sys.stdout, *, dry_run: bool = False, uid: int | None = None,
          interactive: bool | None = None, debian: bool | None = None,
          need: list[Package] | None = None) -> int:
    """Install what is missing.  0: nothing was missing, or it is installed now (or, with
    ``dry_run``, the commands were printed); 1: it could not be installed here (the exact
    command, or on another distribution the packages to look for, are printed)."""
    debian = is_debian() if debian is None else debian
    if not debian:
        print("msixlab setup: this host has no dpkg/apt; install these with its package "
              "manager:", file=out)
        for p in PACKAGES:
            print(f"  {p.elsewhere:40} {p.why}", file=out)
        print("  and QEMU is not needed on the host: the image brings its own", file=out)
        return 1
    need = missing() if need is None else need
    if not need:
        print("msixlab setup: every host package is installed", file=out)
        return 0
    uid = os.geteuid() if uid is None else uid
    interactive = sys.stdin.isatty() if interactive is None else interactive
    print("msixlab setup: missing " + ", ".join(p.name for p in need), file=out)
    root = uid == 0
    if dry_run or not (root or _sudo_usable(interactive)):
        argvs = commands(need, sudo=not root)
        if not dry_run:
            print("msixlab setup: cannot install without root (no usable sudo); run:",
                  file=out)
        for argv in argvs:
            print("  " + shlex.join(argv), file=out)
        return 0 if dry_run else 1
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in commands(need, sudo=not root):
        if not root:
            argv = ["sudo", "DEBIAN_FRONTEND=noninteractive", *argv[1:]]
        print("$ " + shlex.join(argv), file=out, flush=True)
        if subprocess.run(argv, env=env, stdin=None if interactive else subprocess.DEVNULL
                          ).returncode != 0:
            print(f"msixlab setup: {argv[0] if root else 'sudo ' + argv[2]} failed", file=out)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(setup(dry_run="--dry-run" in sys.argv[1:]))
