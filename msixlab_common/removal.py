"""Removing a directory tree without ever crossing a mount point or following a symlink.

Concepts: ``remove_tree(path)`` is the one recursive delete in msixlab (a unit test fails if
any other module calls ``shutil.rmtree``).  Before it deletes anything it reads
``/proc/self/mountinfo`` for mount points at or under ``path``: a bind mount of a directory
of the same filesystem has the same ``st_dev``, so comparing devices alone would miss it.
If there are any, it refuses (``MountsInTheWay``, EBUSY, naming every one) unless the
caller says it owns them (``unmount=True``: a dead image build's proc, sys, devpts and
``/dev/shm`` binds), in which case they are detached (``umount2(MNT_DETACH)``, deepest
first) and the tree is checked again.  The walk itself is fd-based: each directory is
opened relative to its parent's fd with ``O_NOFOLLOW | O_DIRECTORY``, entries are unlinked
with ``dir_fd``, so a symlink is removed as a link and never followed, and a directory
swapped for a link mid-walk is not entered.  Each directory opened is checked against the
top's device and mount id (``/proc/self/fdinfo``), so a mount that appears during the walk
stops it too.  Standard library only (the guest imports msixlab_common).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from .errors import MsixlabError

log = logging.getLogger(__name__)

MNT_DETACH = 2
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class MountsInTheWay(MsixlabError, OSError):
    """``path`` has mount points at or under it (``mounts``), so it was not removed."""

    def __init__(self, path: Path, mounts: list[str], detail: str = ""):
        listed = ", ".join(mounts)
        super().__init__(errno.EBUSY, f"refusing to remove {path}: it holds mount point(s) "
                         f"{listed}; unmount them first{detail}")
        self.path, self.mounts = Path(path), list(mounts)


def _unescape(field: str) -> str:
    """A mountinfo path field with its octal escapes (``\\040`` for a space) decoded."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Every mount point this process sees (empty if ``mountinfo`` cannot be read)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            return [_unescape(line.split()[4]) for line in f if len(line.split()) > 4]
    except OSError:
        return []


def mounts_under(path: Path | str) -> list[str]:
    """The mount points at or under ``path`` (its real path), deepest first."""
    top = os.path.realpath(path)
    prefix = top.rstrip("/") + "/"
    found = {m for m in mount_points() if m == top or m.startswith(prefix)}
    return sorted(found, key=lambda m: (-m.count("/"), m))


def unmount_lazily(mounts: list[str]) -> None:
    """Detach each of ``mounts`` (``umount2(MNT_DETACH)``), deepest first; one already gone
    with its parent is skipped.  Raises ``OSError`` naming a mount that stays."""
    import ctypes          # here, not at the top: the guest agent's imports stay light
    libc = ctypes.CDLL(None, use_errno=True)
    for mount in sorted(mounts, key=lambda m: (-m.count("/"), m)):
        if libc.umount2(os.fsencode(mount), MNT_DETACH) == 0:
            log.info("unmounted %s (lazily)", mount)
            continue
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):     # else: not a mount (any more)
            raise OSError(err, f"cannot unmount {mount}: {os.strerror(err)}")


def _mount_id(fd: int) -> int | None:
    """The mount id of the open file ``fd`` (``/proc/self/fdinfo``), None if unknown."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class _Walk:
    """One fd-based removal of the contents of the directory open as ``top_fd``."""

    def __init__(self, top: Path, top_fd: int):
        self.top = top
        self.dev = os.fstat(top_fd).st_dev
        self.mnt = _mount_id(top_fd)

    def _enter(self, parent_fd: int, name: str, path: Path) -> int | None:
        """``name`` opened as a directory on the top's mount, or None if it is not a
        directory (any more): a symlink or a file swapped in is unlinked by the caller."""
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                return None
            raise
        if os.fstat(fd).st_dev != self.dev or (self.mnt is not None and
                                               _mount_id(fd) != self.mnt):
            os.close(fd)
            raise MountsInTheWay(self.top, [str(path)], " (it appeared during the removal)")
        return fd

    def clear(self, top_fd: int) -> None:
        """Remove everything in the top directory, depth first, without recursion."""
        stack = [(top_fd, self.top, sorted(os.listdir(top_fd)))]
        try:
            while stack:
                fd, path, names = stack[-1]
                if not names:
                    stack.pop()
                    if stack:
                        os.close(fd)
                        os.rmdir(path.name, dir_fd=stack[-1][0])
                    continue
                name = names.pop()
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    child = (self._enter(fd, name, path / name) if stat.S_ISDIR(st.st_mode)
                             else None)
                    if child is None:
                        os.unlink(name, dir_fd=fd)
                except FileNotFoundError:       # removed meanwhile by someone else
                    continue
                if child is not None:
                    stack.append((child, path / name, sorted(os.listdir(child))))
        finally:
            for fd, _path, _names in stack[1:]:
                os.close(fd)


def remove_tree(path: Path | str, *, unmount: bool = False, ignore_errors: bool = False) -> None:
    """Delete ``path`` and everything under it, never crossing a mount point and never
    following a symlink (a link is removed as a link; ``path`` itself too).  Mounts at or
    under it: refused with ``MountsInTheWay`` naming them, or, with ``unmount=True`` (the
    caller owns them), detached first.  A missing ``path`` is not an error.
    ``ignore_errors``: log a failure (a refusal as a warning) instead of raising it."""
    path = Path(path)
    try:
        _remove(path, unmount)
    except OSError as err:
        if not ignore_errors:
            raise
        level = logging.WARNING if isinstance(err, MountsInTheWay) else logging.DEBUG
        log.log(level, "could not remove %s: %s", path, err)


def _remove(path: Path, unmount: bool) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    mounts = mounts_under(path)
    if mounts and unmount:
        unmount_lazily(mounts)
        mounts = mounts_under(path)
    if mounts:
        raise MountsInTheWay(path, mounts)
    fd = os.open(path, _DIR_FLAGS)
    try:
        _Walk(path, fd).clear(fd)
    finally:
        os.close(fd)
    os.rmdir(path)
