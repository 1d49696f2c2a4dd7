"""DMA regions: map, unmap, bounds-checked access.

Concepts: the DMA map, i.e. the client's guest memory as the device may reach it.  Each
DMA_MAP adds a range [iova, iova+size) with READ/WRITE permissions and, when the client
sent an fd (memfd-backed guest RAM), a window onto that fd at the given offset, made by
the injected ``FdPort`` (``map_memory``); the fd is closed through the port right after
(the mapping keeps the memory).  Ranges never overlap (EEXIST); an unmap must match a map
exactly or be "unmap all".  read()/write() translate an IOVA range that may span adjacent
maps, honour permissions and never touch bytes outside the mapped file (the port checks
the file size at map time, so no SIGBUS).  No I/O here: every fd operation is the port's.
"""

from __future__ import annotations

import bisect
import errno
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import DeviceError
from ..protocol import PAGE_SIZE, DmaMapFlags

if TYPE_CHECKING:   # pragma: no cover
    from ..fdport import FdPort, MemoryWindow

log = logging.getLogger(__name__)

_READ = int(DmaMapFlags.VFIO_DMA_MAP_FLAG_READ)
_WRITE = int(DmaMapFlags.VFIO_DMA_MAP_FLAG_WRITE)
MAX_DMA_MAPS = 65535
_IOVA_LIMIT = 1 << 64


@dataclass
class DmaRegion:
    """One DMA map: ``size`` bytes at ``iova`` with DMA_MAP ``flags`` (READ/WRITE), and
    the window onto the client's fd at ``fd_offset`` (``None`` when mapped without an fd)."""
    iova: int
    size: int
    flags: int
    fd_offset: int
    mem: "MemoryWindow | None"

    @property
    def end(self) -> int:
        """The first IOVA after the region."""
        return self.iova + self.size

    def to_json(self) -> dict:
        """The region for the control channel's state: iova, size, flags, offset, mapped."""
        return {"iova": self.iova, "size": self.size, "flags": self.flags,
                "offset": self.fd_offset, "mapped": self.mem is not None}


class DmaMap:
    """All DMA regions of the current client, sorted by IOVA."""

    def __init__(self, fds: "FdPort", max_fd_maps: int = MAX_DMA_MAPS) -> None:
        self.fds = fds
        self._regions: list[DmaRegion] = []
        self._starts: list[int] = []
        #: maps backed by an fd: each holds one fd (mmap's dup) until unmapped, so the
        #: server caps them below its fd limit (ENOSPC past it)
        self.max_fd_maps = max_fd_maps
        self.fd_maps = 0

    def __len__(self) -> int:
        return len(self._regions)

    def regions(self) -> list[DmaRegion]:
        """A copy of the current regions, in IOVA order."""
        return list(self._regions)

    def add(self, iova: int, size: int, flags: int, offset: int, fd: int | None) -> DmaRegion:
        """Add a map. Takes ownership of fd (closed here, whatever happens)."""
        try:
            self._check_new(iova, size, flags, offset, fd)
            mem = (self.fds.map_memory(fd, offset, size, bool(flags & _READ),
                                       bool(flags & _WRITE)) if fd is not None else None)
        finally:
            if fd is not None:
                self.fds.close(fd)
        region = DmaRegion(iova, size, flags, offset, mem)
        self.fd_maps += mem is not None
        i = bisect.bisect_left(self._starts, iova)
        self._starts.insert(i, iova)
        self._regions.insert(i, region)
        return region

    def _check_new(self, iova, size, flags, offset, fd) -> None:
        if size == 0 or iova + size > _IOVA_LIMIT:
            raise DeviceError(f"bad DMA range {iova:#x}+{size:#x}", errno=errno.EINVAL)
        if flags & ~(_READ | _WRITE) or not flags & (_READ | _WRITE):
            raise DeviceError(f"bad DMA map flags {flags:#x}", errno=errno.EINVAL)
        if len(self._regions) >= MAX_DMA_MAPS:
            raise DeviceError("too many DMA maps", errno=errno.ENOSPC)
        if fd is not None and self.fd_maps >= self.max_fd_maps:
            raise DeviceError(f"too many DMA maps with an fd ({self.fd_maps})",
                              errno=errno.ENOSPC)
        if fd is None and offset:
            raise DeviceError("offset without an fd", errno=errno.EINVAL)
        if fd is not None and (offset % PAGE_SIZE or size % PAGE_SIZE):
            raise DeviceError(f"unaligned DMA map offset {offset:#x} size {size:#x}",
                              errno=errno.EINVAL)
        i = bisect.bisect_right(self._starts, iova)
        for r in self._regions[max(i - 1, 0):i + 1]:
            if r.iova < iova + size and iova < r.end:
                raise DeviceError(f"DMA map {iova:#x}+{size:#x} overlaps "
                                  f"{r.iova:#x}+{r.size:#x}", errno=errno.EEXIST)

    def remove(self, iova: int, size: int) -> DmaRegion:
        """Unmap the region that starts at ``iova`` and is exactly ``size`` bytes, close its
        window and return it; anything else raises ``DeviceError`` (ENOENT)."""
        i = bisect.bisect_left(self._starts, iova)
        if i == len(self._starts) or self._starts[i] != iova or self._regions[i].size != size:
            raise DeviceError(f"no DMA map {iova:#x}+{size:#x}", errno=errno.ENOENT)
        region = self._regions.pop(i)
        del self._starts[i]
        self.fd_maps -= region.mem is not None
        self._release(region)
        return region

    def remove_range(self, iova: int, size: int) -> list[DmaRegion]:
        """Unmap every region inside ``[iova, iova + size)`` and return them, as the kernel's
        type1 IOMMU does for QEMU: a vIOMMU invalidation unmaps whole ranges, most of them
        holding no map at all (that is no error).  A region the range would split raises
        ``DeviceError`` (ENOENT) and nothing is unmapped."""
        end = iova + size
        inside = [r for r in self._regions if r.iova < end and iova < r.end]
        split = [r for r in inside if r.iova < iova or r.end > end]
        if split:
            raise DeviceError(f"no DMA map {iova:#x}+{size:#x}: it would split "
                              f"{split[0].iova:#x}+{split[0].size:#x}", errno=errno.ENOENT)
        return [self.remove(r.iova, r.size) for r in inside]

    def clear(self) -> int:
        """Unmap every region (closing their windows) and return how many there were."""
        n = len(self._regions)
        for r in self._regions:
            self._release(r)
        self._regions.clear()
        self._starts.clear()
        self.fd_maps = 0
        return n

    @staticmethod
    def _release(region: DmaRegion) -> None:
        if region.mem is not None:
            region.mem.close()
            region.mem = None

    # -- access ---------------------------------------------------------------------
    def _pieces(self, iova: int, length: int, need: int):
        """(region, start-in-region, n) pieces covering [iova, iova+length)."""
        pos, end = iova, iova + length
        i = bisect.bisect_right(self._starts, iova) - 1
        while pos < end:
            if i < 0 or i >= len(self._regions):
                raise DeviceError(f"DMA {iova:#x}+{length} not mapped", errno=errno.EFAULT)
            r = self._regions[i]
            if not r.iova <= pos < r.end:
                raise DeviceError(f"DMA {pos:#x} not mapped", errno=errno.EFAULT)
            if r.mem is None:
                raise DeviceError(f"DMA {pos:#x} mapped without fd", errno=errno.EFAULT)
            if not r.flags & need:
                raise DeviceError(f"DMA {pos:#x} lacks permission {need}",
                                  errno=errno.EPERM)
            n = min(end, r.end) - pos
            yield r, pos - r.iova, n
            pos += n
            i += 1

    def read(self, iova: int, length: int) -> bytes:
        """``length`` bytes at ``iova``, possibly across adjacent regions.  Raises
        ``DeviceError``: EFAULT if any byte is unmapped or mapped without an fd, EPERM
        without READ permission."""
        pieces = list(self._pieces(iova, length, _READ))
        return b"".join(r.mem[o:o + n] for r, o, n in pieces)

    def write(self, iova: int, data: bytes) -> None:
        """Write ``data`` at ``iova``, possibly across adjacent regions.  Every piece is checked
        before the first byte is written; raises ``DeviceError`` (EFAULT unmapped or no fd,
        EPERM without WRITE permission)."""
        pieces = list(self._pieces(iova, len(data), _WRITE))
        pos = 0
        for r, o, n in pieces:
            r.mem[o:o + n] = data[pos:pos + n]
            pos += n
