"""The image rootfs's key files, recorded when the image is built and checked before use.

Concepts: a run uses a handful of the rootfs's ~56,000 files from the host or hands them
to the guest at its very start: each kernel's bzImage and config, the modules the
initramfs loads and ``modules.dep``, busybox (the initramfs's), the guest's Python and
the shell and ``insmod`` stage 2 runs, QEMU with the loader and libraries both run with,
and dpkg's status (the kernel list).  A damaged one would not show as a damaged cache:
a deleted bzImage is a QEMU error in qemu.log, a truncated python3 a guest whose agent
never speaks.  So these files (and the symlinks on the way to them) are recorded in
``images/<key>/rootfs.manifest.json`` (images/manifest.py) when the image is built, and
``verified()`` checks them whenever a run takes the image.  An image built before
there were manifests has its record made at first use (a kernel image dpkg lists that
is missing then is refused at once).  msixlab cannot mend a rootfs file, so a damaged
one is a ``CacheEntryError`` (build_failed, 125) naming the file and the fix.
"""

from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path

from . import manifest
from .image import LIBDIR, LOADER, Image

log = logging.getLogger(__name__)

FIX = ("remove the damaged image and build it again: `msixlab image clean`, then "
       "`msixlab image build` (or any run, which builds it)")

# rootfs files a run relies on whatever its kernel (their symlinks are followed)
FIXED = ("usr/bin/python3", "usr/bin/busybox", "usr/bin/sh", "usr/sbin/insmod",
         "usr/bin/qemu-system-x86_64", LOADER, f"{LIBDIR}/libc.so.6", f"{LIBDIR}/libm.so.6",
         f"{LIBDIR}/libz.so.1", f"{LIBDIR}/libexpat.so.1", "var/lib/dpkg/status")
MAX_LINKS = 16


def record_path(image: Image) -> Path:
    """Where the image's key-file manifest lives: beside ``rootfs/``."""
    return manifest.manifest_path(image.rootfs)


def _chain(rootfs: Path, rel: str) -> list[str]:
    """``rel`` and every path its symlinks lead to inside ``rootfs`` (absolute targets
    are taken as rootfs-relative), ending with the file itself."""
    chain = [rel]
    for _ in range(MAX_LINKS):
        path = rootfs / chain[-1]
        if not path.is_symlink():
            return chain
        target = os.readlink(path)
        nxt = posixpath.normpath(target.lstrip("/") if target.startswith("/") else
                                 posixpath.join(posixpath.dirname(chain[-1]), target))
        if nxt.startswith("..") or nxt in chain:
            return chain
        chain.append(nxt)
    return chain


def _kernel_files(image: Image) -> tuple[list[str], list[str]]:
    """The files of each kernel dpkg lists: (required, optional), rootfs-relative."""
    from .initramfs import module_closure       # initramfs imports this package's image
    required, optional = [], []
    for kernel in image.kernels:
        boot = kernel.image.relative_to(image.rootfs)
        required.append(str(boot))
        optional.append(str(boot.parent / f"config-{kernel.version}"))
        mods = kernel.modules.relative_to(image.rootfs)
        optional.append(str(mods / "modules.dep"))
        try:
            optional += [str(mods / rel) for rel in module_closure(kernel)]
        except (OSError, FileNotFoundError):
            pass
    return required, optional


def key_files(image: Image) -> list[str]:
    """The rootfs-relative paths to record: every kernel's bzImage (required: a missing one
    raises ``CacheEntryError``), and those of the others that exist, symlinks with the
    files they lead to."""
    required, optional = _kernel_files(image)
    missing = [manifest.Problem(image.rootfs / rel, "missing (dpkg lists its kernel)")
               for rel in required if not (image.rootfs / rel).is_file()]
    if missing:
        raise manifest.CacheEntryError(missing, what="image rootfs", fix=FIX)
    names: list[str] = []
    for rel in [*required, *optional, *FIXED]:
        for step in _chain(image.rootfs, rel):
            if step not in names and os.path.lexists(image.rootfs / step):
                names.append(step)
    return names


def record(image: Image) -> None:
    """Write the image's key-file manifest (at build time, before it is published)."""
    manifest.write(record_path(image), image.rootfs, key_files(image))


def verified(image: Image) -> Image:
    """``image``, once its key files match their manifest (made now when it has none);
    ``CacheEntryError`` naming the first damaged file and the fix otherwise."""
    if manifest.load(record_path(image)) is None:
        log.info("image %s has no key-file manifest yet: recording it", image.rootfs)
        try:
            record(image)
        except OSError as err:
            log.warning("cannot record the key files of %s: %s", image.rootfs, err)
            return image
    damage = manifest.problems(record_path(image), image.rootfs)
    if damage:
        raise manifest.CacheEntryError(damage, what="image rootfs", fix=FIX)
    return image
