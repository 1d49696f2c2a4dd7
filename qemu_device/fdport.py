"""The edge of the I/O-free core: everything the core may ask of a file descriptor.

Concepts: the vfio-user endpoint (``connection.py``, ``handlers.py``) and the device
model (``device/*``) take bytes and fd *numbers* in and give bytes out; they never call
the OS.  The four things they must do with an fd go through one ``FdPort`` object that
is injected when the ``Device`` is built (the endpoint uses the device's port):

* ``close(fd)``: release an fd the core owns (a received fd it does not keep, an
  eventfd that is replaced or dropped, a DMA fd once mapped);
* ``is_eventfd(fd)``: what SET_IRQS checks before it keeps an fd as an interrupt;
* ``signal(fd)``: one interrupt, i.e. add 1 to an eventfd's counter;
* ``map_memory(fd, offset, size, readable, writable)``: a window onto a DMA region's
  memory file, which the DMA map reads and writes by slices.

``qemu_device.fdio.OsFdPort`` is the real port (``os.close``, ``/proc/self/fd``,
``os.eventfd_write``, ``fstat`` + ``mmap``); the server process builds it in
``qemu-device serve``.  ``qemu_device.testing.FakeFdPort`` is the fake the unit tests
use at this seam: fds are plain numbers it hands out, and it records every close,
signal and mapping.  This module holds only the contracts (no I/O).
"""

from __future__ import annotations

from typing import Protocol


class MemoryWindow(Protocol):
    """A mapped DMA region: ``w[a:b]`` reads bytes, ``w[a:b] = data`` writes them
    (same length), ``close()`` unmaps.  Offsets are relative to the region start."""

    def __getitem__(self, index: slice) -> bytes: ...

    def __setitem__(self, index: slice, data: bytes) -> None: ...

    def close(self) -> None:
        """Unmap the window; it must not be used after."""


class FdPort(Protocol):
    """The fd operations the I/O-free core is allowed, owned by the I/O layer."""

    def close(self, fd: int) -> None:
        """Release ``fd``; never raises (a failure is logged by the port)."""

    def is_eventfd(self, fd: int) -> bool:
        """True when ``fd`` is an eventfd (anything else, or a closed fd: False)."""

    def signal(self, fd: int) -> None:
        """Add 1 to eventfd ``fd``'s counter.  Raises ``OSError`` when it cannot."""

    def map_memory(self, fd: int, offset: int, size: int, readable: bool,
                   writable: bool) -> MemoryWindow:
        """Map ``size`` bytes of memory file ``fd`` from ``offset``, shared.  Raises
        ``DeviceError`` (with an errno) when ``fd`` is not a memory file, the range
        is beyond the file, or the mapping fails.  Does not close ``fd``."""
