"""A built image rootfs and what it offers: its QEMU and its kernels.

Concepts: QEMU runs straight from the rootfs on the host, without chroot, through the
rootfs's own dynamic loader and libraries (the host's QEMU is too old for vfio-user).
Kernels are found from dpkg's database: the flavor ``default`` is the kernel that
``linux-image-amd64`` depends on; any other installed kernel is ``lts``.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

from .errors import ImageError

LIBDIR = "usr/lib/x86_64-linux-gnu"
LOADER = "usr/lib64/ld-linux-x86-64.so.2"


@dataclass(frozen=True)
class Kernel:
    """One kernel of the image: flavor, version, bzImage, headers build tree and modules
    directory."""
    flavor: str
    version: str
    image: Path       # bootable bzImage
    headers: Path     # build tree for out-of-tree modules
    modules: Path     # /lib/modules/VERSION

    def as_json(self) -> dict:
        """The kernel's fields as strings."""
        return {k: str(v) for k, v in asdict(self).items()}


def _dpkg_packages(status: str) -> dict[str, dict[str, str]]:
    packages = {}
    for stanza in status.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" ")
        )
        if "Package" in fields and "installed" in fields.get("Status", ""):
            packages[fields["Package"]] = fields
    return packages


class Image:
    """An image rootfs on disk (built, or being inspected at the end of a build)."""

    def __init__(self, rootfs: Path):
        self.rootfs = Path(rootfs)

    def __repr__(self) -> str:
        return f"Image({str(self.rootfs)!r})"

    # --- QEMU -------------------------------------------------------------------------
    def qemu_command(self) -> list[str]:
        """The argv prefix that runs the image's QEMU on this host."""
        root = self.rootfs
        return [
            str(root / LOADER), "--library-path", str(root / LIBDIR),
            str(root / "usr/bin/qemu-system-x86_64"),
            "-L", str(root / "usr/share/qemu"), "-L", str(root / "usr/share/seabios"),
        ]

    # --- the guest's Python -------------------------------------------------------------
    @cached_property
    def python_version(self) -> str | None:
        """The guest interpreter's version, e.g. ``"3.13"`` (from ``usr/bin/python3``'s
        link target), or None when the image has no such link."""
        try:
            target = (self.rootfs / "usr/bin/python3").readlink().name
        except OSError:
            return None
        match = re.fullmatch(r"python(\d+)\.(\d+)", target)
        return f"{match.group(1)}.{match.group(2)}" if match else None

    def python_command(self) -> list[str] | None:
        """The argv prefix that runs the image's Python on this host (None without one)."""
        if self.python_version is None:
            return None
        root = self.rootfs
        return ["env", "-u", "PYTHONPATH", "-u", "PYTHONPYCACHEPREFIX", "-u", "PYTHONSTARTUP",
                f"PYTHONHOME={root / 'usr'}",
                str(root / LOADER), "--library-path", str(root / LIBDIR),
                str(root / f"usr/bin/python{self.python_version}"), "-s"]

    def _qemu_output(self, *args: str) -> str:
        argv = self.qemu_command() + list(args)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        except (OSError, subprocess.SubprocessError) as err:
            raise ImageError(f"running the image's QEMU ({' '.join(argv)}) failed: {err}",
                             step="inspect") from err
        return done.stdout

    @cached_property
    def qemu_version(self) -> str:
        """The image's QEMU version (``11.1.3``); ``ImageError`` if QEMU cannot run or does not
        say."""
        match = re.search(r"version (\d+\.\d+\.\d+)", self._qemu_output("--version"))
        if not match:
            raise ImageError("cannot read the QEMU version", step="inspect")
        return match.group(1)

    @cached_property
    def has_vfio_user_pci(self) -> bool:
        """Whether the image's QEMU lists ``vfio-user-pci`` in ``-device help``."""
        return '"vfio-user-pci"' in self._qemu_output("-device", "help")

    # --- kernels ----------------------------------------------------------------------
    @cached_property
    def kernels(self) -> list[Kernel]:
        """The image's kernels from dpkg's database: ``default`` is what linux-image-amd64
        depends on, any other is ``lts``."""
        status = (self.rootfs / "var/lib/dpkg/status").read_text(errors="replace")
        packages = _dpkg_packages(status)
        meta = packages.get("linux-image-amd64", {}).get("Depends", "")
        default = re.search(r"linux-image-([0-9][^\s,]*)", meta)
        default_version = default.group(1) if default else None
        kernels = []
        for name in sorted(packages):
            match = re.fullmatch(r"linux-image-([0-9].*-amd64)(-unsigned)?", name)
            if not match:
                continue
            version = match.group(1)
            flavor = "default" if version == default_version else "lts"
            kernels.append(Kernel(
                flavor=flavor, version=version,
                image=self.rootfs / "boot" / f"vmlinuz-{version}",
                headers=self.rootfs / "usr/src" / f"linux-headers-{version}",
                modules=self.rootfs / "lib/modules" / version,
            ))
        return sorted(kernels, key=lambda k: k.flavor)

    def kernel(self, flavor: str) -> Kernel:
        """The kernel of ``flavor``; ``ImageError`` naming the kernels there are if none has it."""
        for kernel in self.kernels:
            if kernel.flavor == flavor:
                return kernel
        have = ", ".join(f"{k.flavor} ({k.version})" for k in self.kernels) or "none"
        raise ImageError(f"no kernel of flavor '{flavor}' in {self.rootfs} (have: {have})",
                         step="kernel")

    def summary(self) -> dict:
        """The image for ``doctor`` and the manifest: rootfs, QEMU (version, vfio-user-pci,
        command), kernels."""
        return {
            "rootfs": str(self.rootfs),
            "qemu": {"version": self.qemu_version, "vfio_user_pci": self.has_vfio_user_pci,
                     "command": self.qemu_command()},
            "kernels": [k.as_json() for k in self.kernels],
        }
