"""vfio-user message definitions and constants.

Concepts: the vfio-user wire format as QEMU's client speaks it. Constants carry the names
of the vfio-user spec and linux/vfio.h. Each wire message is one frozen dataclass with a
precompiled little-endian struct.Struct (STRUCT), pack() and unpack(); the server, the
tests' fake client, the benchmark client and the event-log decoder all use these.
Hot paths may use CLS.STRUCT.unpack_from directly to skip building the dataclass.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, fields
from typing import ClassVar

HEADER_SIZE = 16
#: Largest REGION_READ/WRITE count we accept; advertised as max_data_xfer_size.
MAX_DATA_XFER_SIZE = 1 << 20
#: Largest message we buffer: a WRITE of MAX_DATA_XFER_SIZE plus its 32-byte prefix.
MAX_MESSAGE_SIZE = MAX_DATA_XFER_SIZE + 4096
#: Most fds we accept in one message; advertised as max_msg_fds (QEMU allows <= 16).
MAX_MSG_FDS = 16
PAGE_SIZE = 4096


class Command(enum.IntEnum):
    """vfio-user command numbers (the spec's names)."""
    VFIO_USER_VERSION = 1
    VFIO_USER_DMA_MAP = 2
    VFIO_USER_DMA_UNMAP = 3
    VFIO_USER_DEVICE_GET_INFO = 4
    VFIO_USER_DEVICE_GET_REGION_INFO = 5
    VFIO_USER_DEVICE_GET_REGION_IO_FDS = 6
    VFIO_USER_DEVICE_GET_IRQ_INFO = 7
    VFIO_USER_DEVICE_SET_IRQS = 8
    VFIO_USER_REGION_READ = 9
    VFIO_USER_REGION_WRITE = 10
    VFIO_USER_DMA_READ = 11
    VFIO_USER_DMA_WRITE = 12
    VFIO_USER_DEVICE_RESET = 13
    VFIO_USER_DIRTY_PAGES = 14
    VFIO_USER_REGION_WRITE_MULTI = 15
    VFIO_USER_DEVICE_FEATURE = 16
    VFIO_USER_MIG_DATA_READ = 17
    VFIO_USER_MIG_DATA_WRITE = 18

    @property
    def short(self) -> str:
        """The name without ``VFIO_USER_`` (``DMA_MAP``), as logs and the control channel show
        it."""
        return self.name.removeprefix("VFIO_USER_")


class HeaderFlags(enum.IntFlag):
    """The header's flags word: message type (command or reply), NO_REPLY, ERROR."""
    VFIO_USER_F_TYPE_COMMAND = 0x0
    VFIO_USER_F_TYPE_REPLY = 0x1
    VFIO_USER_F_NO_REPLY = 0x10
    VFIO_USER_F_ERROR = 0x20


F_TYPE_MASK = 0xF


class DeviceFlags(enum.IntFlag):
    """``vfio_device_info.flags`` (linux/vfio.h)."""
    VFIO_DEVICE_FLAGS_RESET = 1
    VFIO_DEVICE_FLAGS_PCI = 2


class RegionIndex(enum.IntEnum):
    """The region indexes of a vfio PCI device (linux/vfio.h)."""
    VFIO_PCI_BAR0_REGION_INDEX = 0
    VFIO_PCI_BAR1_REGION_INDEX = 1
    VFIO_PCI_BAR2_REGION_INDEX = 2
    VFIO_PCI_BAR3_REGION_INDEX = 3
    VFIO_PCI_BAR4_REGION_INDEX = 4
    VFIO_PCI_BAR5_REGION_INDEX = 5
    VFIO_PCI_ROM_REGION_INDEX = 6
    VFIO_PCI_CONFIG_REGION_INDEX = 7
    VFIO_PCI_VGA_REGION_INDEX = 8


VFIO_PCI_NUM_REGIONS = 9


class RegionInfoFlags(enum.IntFlag):
    """``vfio_region_info.flags`` (linux/vfio.h)."""
    VFIO_REGION_INFO_FLAG_READ = 1
    VFIO_REGION_INFO_FLAG_WRITE = 2
    VFIO_REGION_INFO_FLAG_MMAP = 4
    VFIO_REGION_INFO_FLAG_CAPS = 8


class IrqIndex(enum.IntEnum):
    """The interrupt indexes of a vfio PCI device (linux/vfio.h)."""
    VFIO_PCI_INTX_IRQ_INDEX = 0
    VFIO_PCI_MSI_IRQ_INDEX = 1
    VFIO_PCI_MSIX_IRQ_INDEX = 2
    VFIO_PCI_ERR_IRQ_INDEX = 3
    VFIO_PCI_REQ_IRQ_INDEX = 4


VFIO_PCI_NUM_IRQS = 5


class IrqInfoFlags(enum.IntFlag):
    """``vfio_irq_info.flags`` (linux/vfio.h)."""
    VFIO_IRQ_INFO_EVENTFD = 1
    VFIO_IRQ_INFO_MASKABLE = 2
    VFIO_IRQ_INFO_AUTOMASKED = 4
    VFIO_IRQ_INFO_NORESIZE = 8


class IrqSetFlags(enum.IntFlag):
    """``vfio_irq_set.flags``: one DATA_* kind and one ACTION_* (linux/vfio.h)."""
    VFIO_IRQ_SET_DATA_NONE = 1
    VFIO_IRQ_SET_DATA_BOOL = 2
    VFIO_IRQ_SET_DATA_EVENTFD = 4
    VFIO_IRQ_SET_ACTION_MASK = 8
    VFIO_IRQ_SET_ACTION_UNMASK = 0x10
    VFIO_IRQ_SET_ACTION_TRIGGER = 0x20


IRQ_SET_DATA_TYPE_MASK = 0x7
IRQ_SET_ACTION_TYPE_MASK = 0x38


class DmaMapFlags(enum.IntFlag):
    """DMA_MAP flags: the region's permissions."""
    VFIO_DMA_MAP_FLAG_READ = 1
    VFIO_DMA_MAP_FLAG_WRITE = 2


class DmaUnmapFlags(enum.IntFlag):
    """DMA_UNMAP flags: unmap all, or also return the dirty bitmap."""
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1
    VFIO_DMA_UNMAP_FLAG_ALL = 2


class _Wire:
    """Mixin: a frozen dataclass whose fields map 1:1 onto STRUCT."""

    STRUCT: ClassVar[struct.Struct]

    @classmethod
    def unpack(cls, buf, offset: int = 0):
        return cls(*cls.STRUCT.unpack_from(buf, offset))

    def pack(self) -> bytes:
        return self.STRUCT.pack(*(getattr(self, f.name) for f in fields(self)))


@dataclass(frozen=True, slots=True)
class Header(_Wire):
    """The 16-byte vfio-user message header: ``msg_id``, ``command``, ``size`` (the whole
    message, header included, in bytes), ``flags`` (``HeaderFlags``) and ``error`` (an errno,
    in error replies)."""
    msg_id: int
    command: int
    size: int
    flags: int
    error: int = 0
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<HHIII")


@dataclass(frozen=True, slots=True)
class Version(_Wire):
    """VERSION payload prefix; a NUL-terminated JSON string follows."""
    major: int
    minor: int
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<HH")


@dataclass(frozen=True, slots=True)
class DmaMap(_Wire):
    """DMA_MAP's body: map ``size`` bytes of guest memory at IOVA ``addr``, found at
    ``offset`` in the fd sent with the message (if any), with ``DmaMapFlags``."""
    argsz: int
    flags: int
    offset: int
    addr: int
    size: int
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIQQQ")


@dataclass(frozen=True, slots=True)
class DmaUnmap(_Wire):
    """DMA_UNMAP's body: unmap ``size`` bytes at IOVA ``addr`` (or all, by ``DmaUnmapFlags``)."""
    argsz: int
    flags: int
    addr: int
    size: int
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIQQ")


@dataclass(frozen=True, slots=True)
class DeviceInfo(_Wire):
    """DEVICE_GET_INFO's reply body: ``DeviceFlags`` and the numbers of regions and IRQ indexes."""
    argsz: int
    flags: int
    num_regions: int
    num_irqs: int
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIII")


@dataclass(frozen=True, slots=True)
class RegionInfo(_Wire):
    """DEVICE_GET_REGION_INFO's body: region ``index``, its ``RegionInfoFlags``, ``size``
    in bytes, the ``offset`` used to mmap it and ``cap_offset`` of its capability chain."""
    argsz: int
    flags: int
    index: int
    cap_offset: int
    size: int
    offset: int
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIIIQQ")


@dataclass(frozen=True, slots=True)
class IrqInfo(_Wire):
    """DEVICE_GET_IRQ_INFO's body: ``count`` vectors at IRQ ``index``, with ``IrqInfoFlags``."""
    argsz: int
    flags: int
    index: int
    count: int
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIII")


@dataclass(frozen=True, slots=True)
class IrqSet(_Wire):
    """SET_IRQS fixed part; DATA_BOOL bytes follow, eventfds travel in SCM_RIGHTS."""
    argsz: int
    flags: int
    index: int
    start: int
    count: int
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIIII")


@dataclass(frozen=True, slots=True)
class RegionAccess(_Wire):
    """REGION_READ/WRITE fixed part; `count` data bytes follow (WRITE, READ reply)."""
    offset: int
    region: int
    count: int
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<QII")


@dataclass(frozen=True, slots=True)
class WriteMultiOne(_Wire):
    """One entry of REGION_WRITE_MULTI: up to 8 data bytes, always 24 bytes on the wire."""
    offset: int
    region: int
    count: int
    data: bytes
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<QII8s")


WRITE_MULTI_COUNT = struct.Struct("<Q")
WRITE_MULTI_MAX_DATA = 8
#: The most entries QEMU puts in one REGION_WRITE_MULTI (VFIO_USER_MULTI_MAX).
WRITE_MULTI_MAX = 200

#: The capability JSON we answer VERSION with: short, since QEMU's reply buffer is only
#: as large as its own request (about 214 bytes).
SERVER_CAPS_JSON = ('{"capabilities":{"max_msg_fds":%d,"max_data_xfer_size":%d,'
                    '"pgsizes":%d}}' % (MAX_MSG_FDS, MAX_DATA_XFER_SIZE, PAGE_SIZE))


def command_name(cmd: int) -> str:
    """The short name of command number ``cmd`` (``DMA_MAP``), or ``CMD_<n>`` if unknown."""
    try:
        return Command(cmd).short
    except ValueError:
        return f"CMD_{cmd}"


def pack_message(msg_id: int, command: int, payload: bytes = b"", *, flags: int = 0,
                 error: int = 0) -> bytes:
    """One whole message: header plus payload."""
    return Header.STRUCT.pack(msg_id, command, HEADER_SIZE + len(payload), flags,
                              error) + payload
