"""The msixlab cache: where built images live, outside any checkout.

Concepts: ``$MSIXLAB_CACHE``, else ``$XDG_CACHE_HOME/msixlab``, else ``~/.cache/msixlab``.
Each built image is a directory ``images/<key>/`` holding ``rootfs/`` and
``manifest.json``; the manifest is written last, so a directory with a manifest is
complete.  Builders take an exclusive ``flock`` on ``images/<key>.lock`` and build in a
temporary sibling directory that is renamed into place in one step, so two concurrent
builds can never leave a half-built image where a reader would find it.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from msixlab_common.deadline import wait_until
from msixlab_common.errors import WaitTimeout
from msixlab_common.removal import remove_tree

from .errors import ImageError


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


def clean(root: Path | None = None) -> list[Path]:
    """Remove every cached image, initramfs and module build; returns what was removed."""
    root = root or cache_dir()
    removed = []
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and not child.is_symlink():
                remove_tree(child)
            else:
                child.unlink()
            removed.append(child)
    return removed
