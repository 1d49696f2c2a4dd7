"""The image's lock: builds and cleans hold it exclusive, every user of the image shared.

Concepts: one ``flock`` file per image key, ``<cache>/images/<key>.lock`` (the build lock
of images/cache.py).  ``ImageLock`` is one open file on it that moves between three
states, none, shared and exclusive, each change a bounded wait that logs what it waits
for and, on timeout, raises ``ImageError`` naming the lock and the processes holding it
(``holders()``, from ``/proc/locks``).  ``ensure_image`` keeps one ``ImageLock`` per
image open and shared for the rest of the process (``hold()``), so a run, a shell, a
boot, a soak or a test session that boots guests from the rootfs keeps ``image clean``
and a rebuild from deleting it under the guest.  Lock files are never deleted: a waiter
holding an unlinked lock file would exclude no one.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from msixlab_common.deadline import wait_until
from msixlab_common.errors import WaitTimeout

from .errors import ImageError

log = logging.getLogger(__name__)

NONE, SHARED, EXCLUSIVE = "none", "shared", "exclusive"
_FLOCK = {SHARED: fcntl.LOCK_SH, EXCLUSIVE: fcntl.LOCK_EX}


def holders(path: Path) -> list[str]:
    """``pid N (command)`` for each process holding a flock on ``path`` (``/proc/locks``;
    waiters are not listed); empty if none or unknown."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == wanted:
            found.append(f"pid {fields[4]} ({_command(fields[4])}, {fields[3].lower()})")
    return found


def _command(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "gone"
    return " ".join(b" ".join(words).decode(errors="replace").split())[:80] or "?"


class ImageLock:
    """One open file on an image's lock file, unlocked until ``shared()`` or
    ``exclusive()``; ``state`` is ``none``, ``shared`` or ``exclusive``."""

    def __init__(self, path: Path):
        self.path, self.state = Path(path), NONE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:          # a read-only cache: a read-only fd locks as well
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    def _try(self, state: str) -> bool:
        try:
            fcntl.flock(self._fd, _FLOCK[state] | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.state = state
        return True

    def try_exclusive(self) -> bool:
        """Take the lock exclusive if no one else holds it, without waiting."""
        return self._try(EXCLUSIVE)

    def _take(self, state: str, timeout: float, what: str) -> None:
        if self.state == state or self._try(state):
            return
        self.state = NONE                # a failed conversion drops the lock held before
        log.warning("waiting up to %.0f s for the lock %s (%s); held by %s", timeout,
                    self.path, what, ", ".join(holders(self.path)) or "another process")
        try:
            wait_until(lambda: self._try(state), timeout, f"the lock {self.path} ({what})",
                       interval=0.2,
                       detail=lambda: "held by " + (", ".join(holders(self.path)) or "?"))
        except WaitTimeout as err:
            raise ImageError(str(err), step="lock") from err

    def shared(self, timeout: float, what: str) -> None:
        """Hold the lock shared (waiting for an exclusive holder at most ``timeout`` s)."""
        self._take(SHARED, timeout, what)

    def exclusive(self, timeout: float, what: str) -> None:
        """Hold the lock exclusive (waiting for every other holder at most ``timeout`` s)."""
        self._take(EXCLUSIVE, timeout, what)

    def release(self) -> None:
        """Hold nothing (the file stays open for the next state)."""
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self.state = NONE

    def close(self) -> None:
        """Release and close the file."""
        os.close(self._fd)
        self.state = NONE

    def __enter__(self) -> "ImageLock":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_held: dict[Path, ImageLock] = {}


def hold(path: Path) -> ImageLock:
    """This process's ``ImageLock`` on ``path``, opened once and kept for its life (so the
    shared hold of the image lasts as long as the process that uses it)."""
    key = Path(os.path.abspath(path))
    if key not in _held:
        _held[key] = ImageLock(key)
    return _held[key]


def release_all() -> None:
    """Drop every lock ``hold()`` keeps (a test that cleans what it just used)."""
    while _held:
        _held.popitem()[1].close()
