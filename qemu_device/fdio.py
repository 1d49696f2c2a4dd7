"""The real fd port: the only place the device server's core reaches the OS for an fd.

Concepts: ``OsFdPort`` implements ``fdport.FdPort`` with system calls: ``os.close``,
``readlink`` of ``/proc/self/fd/N`` (an eventfd reads ``anon_inode:[eventfd]``),
``os.eventfd_write`` and ``fstat`` + ``mmap(MAP_SHARED)``.  A DMA map is checked
against the file's size before it is mapped, so a later access can never SIGBUS.
``close_fds`` is the I/O layer's helper for fds that never reached the core (the server
closes the fds of a read that ended the connection).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import stat
from typing import Iterable

from .errors import DeviceError
from .transport import signal_eventfd

log = logging.getLogger(__name__)

_EVENTFD_LINK = "anon_inode:[eventfd]"


class OsFdPort:
    """``FdPort`` with real system calls (see ``fdport.FdPort`` for the contract)."""

    def close(self, fd: int) -> None:
        """``os.close(fd)``; a failure is logged, never raised."""
        try:
            os.close(fd)
        except OSError as err:
            log.warning("closing fd %d: %s", fd, err)

    def is_eventfd(self, fd: int) -> bool:
        """Whether ``fd`` is an eventfd (its ``/proc/self/fd`` link); ``False`` if it cannot be
        read."""
        try:
            return os.readlink(f"/proc/self/fd/{fd}") == _EVENTFD_LINK
        except OSError:
            return False

    def signal(self, fd: int) -> None:
        """Add 1 to the eventfd, never blocking (``transport.signal_eventfd``)."""
        signal_eventfd(fd)

    def map_memory(self, fd: int, offset: int, size: int, readable: bool,
                   writable: bool) -> mmap.mmap:
        """Map ``size`` bytes of the regular file ``fd`` at ``offset``, shared, with the
        permissions asked for.  Raises ``DeviceError``: EBADF if ``fd`` cannot be stat'ed,
        EINVAL if it is not a regular file or the range passes its end, the mmap errno if
        mmap fails."""
        try:
            st = os.fstat(fd)
        except OSError as err:
            raise DeviceError(f"DMA map fd {fd}: {err}", errno=errno.EBADF) from err
        if not stat.S_ISREG(st.st_mode):
            raise DeviceError("DMA map fd is not a memory file", errno=errno.EINVAL)
        if offset + size > st.st_size:
            raise DeviceError(f"DMA map {offset:#x}+{size:#x} beyond the file "
                              f"({st.st_size:#x} bytes)", errno=errno.EINVAL)
        prot = (mmap.PROT_READ if readable else 0) | (mmap.PROT_WRITE if writable else 0)
        try:
            return mmap.mmap(fd, size, mmap.MAP_SHARED, prot, offset=offset)
        except OSError as err:
            raise DeviceError(f"mmap of DMA fd failed: {err}",
                              errno=err.errno or errno.EINVAL) from err


def close_fds(fds: Iterable[int]) -> None:
    """Close fds that never reached the core; errors are ignored."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
