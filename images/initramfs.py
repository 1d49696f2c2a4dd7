"""The guest's initramfs: busybox, the few modules that reach the root, and /init.

Concepts: the initramfs is a gzip'd ``newc`` cpio archive written here in Python (no cpio
tool needed).  It holds the image's static busybox, the modules the kernel needs to
reach its root (9p and overlay with their dependencies, in load order; decompressed, so
busybox's insmod loads them on any kernel; none when the kernel has them built in), and
``guest/init``.  ``debian_modules`` finds them for a kernel of the image (its
``modules.dep``), ``tree_modules`` in a kernel build tree (its ``modules.order`` and each
module's ``depends=``).  /init mounts the image rootfs over 9p read-only under a
tmpfs overlay, mounts msixlab's staged guest files at /opt/msixlab (images/staging.py),
and switches root to ``guest/stage2`` (run from the staged files, so editing it needs no
rebuild of the initramfs).  /init itself is package data (images/packaged.py).
Archives are cached under ``<cache>/initramfs/`` keyed by a hash of their inputs (this
file, /init, the image, and the modules' bytes), each with its manifest beside it
(images/manifest.py): an archive that no longer matches it (truncated, overwritten, or
without one) is built again before a guest could boot it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import lzma
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from msixlab_common import atomic

from . import manifest
from .cache import cache_dir
from .image import Image, Kernel
from .packaged import package_dir

log = logging.getLogger(__name__)

INIT = package_dir(__package__) / "guest" / "init"       # package data (images/packaged.py)
ROOT_MODULES = ("9pnet_virtio", "9p", "overlay")


class Cpio:
    """A minimal ``newc`` archive writer."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name) + 1, 0]
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + name.encode() + b"\0")
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def directory(self, name: str) -> None:
        """Add directory ``name`` (mode 0755)."""
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        """Add regular file ``name`` holding ``data``, with permissions ``perm``."""
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        """Add symlink ``name`` pointing at ``target``."""
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        """Add character device ``name`` (``major``, ``minor``), mode 0600."""
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        """Add the trailer and return the whole archive (uncompressed)."""
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


def module_closure(kernel: Kernel, names: tuple[str, ...] = ROOT_MODULES) -> list[str]:
    """Paths (relative to the modules dir) of ``names`` and their dependencies, in load order."""
    deps: dict[str, list[str]] = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {Path(p).name.split(".ko")[0].replace("-", "_"): p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        if path not in order:
            order.append(path)

    for name in names:
        if name not in by_name:
            raise FileNotFoundError(f"module {name} not found for kernel {kernel.version}")
        visit(by_name[name])
    return order


def debian_modules(kernel: Kernel, names: tuple[str, ...] = ROOT_MODULES) -> list[Path]:
    """The module files of ``names`` and their dependencies for a kernel of the image."""
    return [kernel.modules / rel for rel in module_closure(kernel, names)]


def _modinfo_depends(module: Path) -> list[str]:
    """The ``depends=`` of a module's .modinfo section (names, comma-separated)."""
    match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", module.read_bytes())
    return [d for d in match.group(1).decode().split(",") if d] if match else []


def tree_modules(tree: Path, names: Sequence[str]) -> list[Path]:
    """The built modules ``names`` of kernel build tree ``tree`` and their dependencies,
    in load order (dependencies first)."""
    order = tree / "modules.order"
    listed = order.read_text().split() if order.is_file() else []
    by_name = {}
    for rel in listed:
        path = tree / (rel[:-2] + ".ko" if rel.endswith(".o") else rel)
        by_name[path.name[:-3].replace("-", "_")] = path
    loaded: list[Path] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        path = by_name.get(key)
        if path is None or not path.is_file():
            raise FileNotFoundError(f"module {name} is not built in {tree}"
                                    + (f" (needed by {chain[-1]})" if chain else ""))
        if path in loaded or key in chain:
            return
        for dep in _modinfo_depends(path):
            visit(dep, chain + (key,))
        loaded.append(path)

    for name in names:
        visit(name, ())
    return loaded


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.suffix == ".xz" else data


def build(image: Image, modules: Sequence[Path]) -> bytes:
    """The initramfs loading ``modules`` (in that order) as gzip'd cpio bytes."""
    archive = Cpio()
    for d in ("bin", "dev", "proc", "sys", "mnt", "newroot", "lib", "lib/modules"):
        archive.directory(d)
    archive.char_device("dev/console", 5, 1)
    archive.char_device("dev/null", 1, 3)
    archive.file("bin/busybox", (image.rootfs / "usr/bin/busybox").read_bytes(), 0o755)
    archive.symlink("bin/sh", "busybox")
    order = []
    for path in modules:
        name = path.name.split(".ko")[0] + ".ko"
        archive.file(f"lib/modules/{name}", _module_bytes(path))
        order.append(name)
    archive.file("lib/modules/load-order", "".join(f"{name}\n" for name in order).encode())
    archive.file("init", INIT.read_bytes(), 0o755)
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


def ensure(image: Image, modules: Sequence[Path], label: str, root: Path | None = None) -> Path:
    """Path of the cached initramfs loading ``modules``, built first if needed; ``label``
    (e.g. the kernel release) names the file."""
    key = hashlib.sha256()
    for part in (Path(__file__).read_bytes(), INIT.read_bytes(), str(image.rootfs).encode()):
        key.update(part + b"\0")
    for path in modules:
        key.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    safe = re.sub(r"[^A-Za-z0-9.+_-]", "_", label)
    out = (root or cache_dir()) / "initramfs" / f"{safe}-{key.hexdigest()[:12]}.cpio.gz"
    if out.is_file():
        damage = manifest.file_problems(out)
        if not damage:
            return out
        log.warning("cached initramfs %s is damaged (%s): building it again", out,
                    "; ".join(p.what for p in damage))
    _write(out, build(image, modules))
    return out


def _write(out: Path, data: bytes) -> None:
    """Put ``data`` at ``out`` atomically, then its manifest (a reader that finds the
    archive without a manifest, or with another's, builds it again)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(out, data)
    manifest.record_file(out)
