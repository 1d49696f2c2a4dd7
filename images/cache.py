"""The msixlab cache: where built images live, outside any checkout.

Concepts: ``$MSIXLAB_CACHE``, else ``$XDG_CACHE_HOME/msixlab``, else ``~/.cache/msixlab``.
Each built image is a directory ``images/<key>/`` holding ``rootfs/`` and
``manifest.json``; the manifest is written last, so a directory with a manifest is
complete.  Builders take an exclusive ``flock`` on ``images/<key>.lock`` and build in a
temporary sibling directory ``images/.tmp-<key>-<pid>`` that is renamed into place in one
step, so two concurrent builds can never leave a half-built image where a reader would
find it.  ``clean()`` takes every image's lock exclusive (so it waits for the runs using
an image, images/lock.py), never deletes through a mount point (msixlab_common/removal.py)
and keeps the lock files.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from msixlab_common.deadline import wait_until
from msixlab_common.errors import WaitTimeout
from msixlab_common.removal import mounts_under, remove_tree

from .errors import ImageError
from .lock import ImageLock
from .userns import reclaim

CLEAN_TIMEOUT = 60


def cache_dir(environ=os.environ) -> Path:
    """The msixlab cache: ``$MSIXLAB_CACHE``, else ``$XDG_CACHE_HOME/msixlab``, else
    ``~/.cache/msixlab``."""
    if environ.get("MSIXLAB_CACHE"):
        return Path(environ["MSIXLAB_CACHE"])
    xdg = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "msixlab"


def images_dir(root: Path | None = None) -> Path:
    """Where built images live: ``images/`` under ``root`` (default: the cache)."""
    return (root or cache_dir()) / "images"


@contextmanager
def exclusive(lock_path: Path, *, timeout: float, what: str):
    """Hold an exclusive lock on ``lock_path``, waiting at most ``timeout`` seconds."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        def locked() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
        try:
            wait_until(locked, timeout, f"the lock {lock_path} ({what})", interval=0.5)
        except WaitTimeout as err:
            raise ImageError(str(err), step="lock") from err
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tree_size(path: Path) -> int:
    """Bytes used by the files under ``path`` (hard links counted once, links not followed)."""
    seen, total = set(), 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def build_key(name: str) -> str | None:
    """The image key of a build directory named ``.tmp-<key>-<pid>``, else None."""
    if not name.startswith(".tmp-") or "-" not in name[5:]:
        return None
    return name[5:].rsplit("-", 1)[0]


def clean(root: Path | None = None, *, timeout: float = CLEAN_TIMEOUT) -> list[Path]:
    """Remove every cached image, initramfs and module build; returns what was removed.
    First it takes every image's lock exclusive, waiting at most ``timeout`` seconds in all
    for the runs, shells, boots, soaks and builds using them (``ImageError`` naming the
    holders).  A mount point anywhere in the cache that is not a dead build's (whose
    mounts are ours to detach) is refused before anything is deleted (``ImageError``
    naming each); lock files stay."""
    root = root or cache_dir()
    if not root.is_dir():
        return []
    images = images_dir(root)
    deadline = time.monotonic() + timeout
    with ExitStack() as stack:
        held = set()
        for key in _image_keys(images):
            lock = stack.enter_context(ImageLock(images / f"{key}.lock"))
            lock.exclusive(round(max(deadline - time.monotonic(), 0.0), 1),
                           f"runs, shells, boots, soaks or a build using image {key} to end")
            held.add(key)
        dead = [p for p in (images.iterdir() if images.is_dir() else ())
                if build_key(p.name) in held]
        ours = [os.path.realpath(p) for p in dead]
        foreign = [m for m in mounts_under(root)
                   if not any(m == p or m.startswith(p + "/") for p in ours)]
        if foreign:
            raise ImageError(f"refusing to clean {root}: mount point(s) there that no "
                             f"msixlab build made: {', '.join(foreign)}; unmount them first",
                             step="clean")
        return _remove_entries(root, images, held, dead)


def _image_keys(images: Path) -> list[str]:
    """Every image key with a lock file, an image or a build directory under ``images``."""
    if not images.is_dir():
        return []
    keys = set()
    for path in images.iterdir():
        if path.suffix == ".lock":
            keys.add(path.stem)
        elif path.is_dir() and not path.is_symlink():
            keys.add(build_key(path.name) or path.name)
    return sorted(keys)


def _remove_entries(root: Path, images: Path, held: set[str], dead: list[Path]) -> list[Path]:
    removed = []
    for child in sorted(root.iterdir()):
        if child != images or child.is_symlink():
            remove_tree(child)
            removed.append(child)
            continue
        for entry in sorted(images.iterdir()):
            if entry.suffix == ".lock" and entry.is_file() and not entry.is_symlink():
                continue                         # see images/lock.py
            if entry.name.startswith(".tmp-") and entry not in dead:
                continue                         # a build whose lock we do not hold
            if entry.is_dir() and not entry.is_symlink() and os.geteuid() != 0:
                reclaim(entry)       # a rootfs of mmdebstrap's unshare mode (images/userns.py)
            remove_tree(entry, unmount=entry in dead)
            removed.append(entry)
    return removed
