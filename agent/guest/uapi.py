"""The driver's ioctl interface, mirrored from agent/kmod/msixlab_uapi.h.

Concepts: each C structure is one ``Layout``: an ordered tuple of fields (name, struct
code, count) packed little-endian with no implicit padding, the C side carries explicit
``pad`` fields so both agree.  ``IOCTLS`` holds the ioctl numbers computed with the
asm-generic ``_IOC`` encoding.  tests/test_kmod_uapi.py compiles the header with the host
compiler and checks every size, offset, constant and ioctl number here against it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

UAPI_VERSION = 1
MAX_VECTORS = 2048
MAX_CPUS = 256
VEC_WORDS = MAX_VECTORS // 64
CPU_WORDS = MAX_CPUS // 64
ANY_INDEX = 0xFFFFFFFF
NO_CPU = 0xFFFFFFFF
NO_GROUP = 0xFFFFFFFF
GROUP_MANAGED = 1 << 0
RAISE_DEFAULT_MS = 1000
RAISE_MAX_MS = 60000
IOC_MAGIC = 0xB7

_IOC_WRITE = 1
_IOC_READ = 2


@dataclass(frozen=True)
class Layout:
    """One C structure: fields are (name, struct code, count); count > 1 is an array."""

    name: str
    fields: tuple[tuple[str, str, int], ...]

    @property
    def format(self) -> str:
        return "<" + "".join(f"{count}{code}" for _, code, count in self.fields)

    @property
    def size(self) -> int:
        return struct.calcsize(self.format)

    def offset(self, field: str) -> int:
        fmt = "<"
        for name, code, count in self.fields:
            if name == field:
                return struct.calcsize(fmt)
            fmt += f"{count}{code}"
        raise KeyError(f"{self.name} has no field {field!r}")

    def pack(self, **values: int | list[int]) -> bytearray:
        unknown = set(values) - {name for name, _, _ in self.fields}
        if unknown:
            raise KeyError(f"{self.name} has no field(s) {sorted(unknown)}")
        flat: list[int] = []
        for name, _, count in self.fields:
            value = values.get(name, 0 if count == 1 else [])
            if count == 1:
                flat.append(value)
            else:
                items = list(value)
                if len(items) > count:
                    raise ValueError(f"{self.name}.{name} holds at most {count} items")
                flat.extend(items + [0] * (count - len(items)))
        return bytearray(struct.pack(self.format, *flat))

    def unpack(self, buf: bytes | bytearray) -> dict[str, int | list[int]]:
        flat = struct.unpack(self.format, bytes(buf[: self.size]))
        out: dict[str, int | list[int]] = {}
        pos = 0
        for name, _, count in self.fields:
            out[name] = flat[pos] if count == 1 else list(flat[pos : pos + count])
            pos += count
        return out


def _u32(*names: str) -> tuple[tuple[str, str, int], ...]:
    return tuple((name, "I", 1) for name in names)


INFO = Layout("msixlab_info", (
    *_u32("version", "bdf"), ("vendor", "H", 1), ("device", "H", 1),
    *_u32("table_size", "table_bar", "table_offset", "pba_bar", "pba_offset",
          "can_alloc_dyn", "nr_cpu_ids", "nr_groups", "nr_vectors", "next_group", "pad"),
    ("allocated", "Q", VEC_WORDS),
))
GROUP = Layout("msixlab_group", (
    *_u32("id", "count", "min", "max", "start", "cpu", "flags", "pad"),
    ("indices", "Q", VEC_WORDS),
))
FREE = Layout("msixlab_free", _u32("id", "count"))
VECTOR = Layout("msixlab_vector", (
    *_u32("index", "group", "irq", "nr_cpus", "msg_address_lo", "msg_address_hi", "msg_data",
          "table_address_lo", "table_address_hi", "table_data", "table_ctrl", "last_cpu"),
    ("total", "Q", 1),
    ("requested", "Q", CPU_WORDS),
    ("effective", "Q", CPU_WORDS),
    ("counts", "Q", MAX_CPUS),
))
RAISE = Layout("msixlab_raise", (
    *_u32("index", "timeout_ms", "cpu", "irq"), ("latency_ns", "Q", 1), ("total", "Q", 1),
))
PBA = Layout("msixlab_pba", (*_u32("table_size", "pad"), ("bits", "Q", VEC_WORDS)))
ENTRY = Layout("msixlab_entry", _u32("index", "address_lo", "address_hi", "data", "ctrl", "pad"))

LAYOUTS = (INFO, GROUP, FREE, VECTOR, RAISE, PBA, ENTRY)


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (IOC_MAGIC << 8) | nr


IOCTLS: dict[str, tuple[int, Layout]] = {
    "MSIXLAB_IOC_INFO": (_ioc(_IOC_READ, 0x00, INFO.size), INFO),
    "MSIXLAB_IOC_ALLOC_GROUP": (_ioc(_IOC_READ | _IOC_WRITE, 0x01, GROUP.size), GROUP),
    "MSIXLAB_IOC_FREE_GROUP": (_ioc(_IOC_READ | _IOC_WRITE, 0x02, FREE.size), FREE),
    "MSIXLAB_IOC_GET_GROUP": (_ioc(_IOC_READ | _IOC_WRITE, 0x03, GROUP.size), GROUP),
    "MSIXLAB_IOC_VECTOR": (_ioc(_IOC_READ | _IOC_WRITE, 0x04, VECTOR.size), VECTOR),
    "MSIXLAB_IOC_RAISE": (_ioc(_IOC_READ | _IOC_WRITE, 0x05, RAISE.size), RAISE),
    "MSIXLAB_IOC_READ_PBA": (_ioc(_IOC_READ, 0x06, PBA.size), PBA),
    "MSIXLAB_IOC_READ_ENTRY": (_ioc(_IOC_READ | _IOC_WRITE, 0x07, ENTRY.size), ENTRY),
}

CONSTANTS = {
    "MSIXLAB_UAPI_VERSION": UAPI_VERSION,
    "MSIXLAB_MAX_VECTORS": MAX_VECTORS,
    "MSIXLAB_MAX_CPUS": MAX_CPUS,
    "MSIXLAB_ANY_INDEX": ANY_INDEX,
    "MSIXLAB_NO_CPU": NO_CPU,
    "MSIXLAB_NO_GROUP": NO_GROUP,
    "MSIXLAB_GROUP_MANAGED": GROUP_MANAGED,
    "MSIXLAB_RAISE_DEFAULT_MS": RAISE_DEFAULT_MS,
    "MSIXLAB_RAISE_MAX_MS": RAISE_MAX_MS,
}


def bits_to_list(words: list[int], limit: int | None = None) -> list[int]:
    """Indices of the set bits of a __u64 bitmap (bit b of word w is w * 64 + b)."""
    out = [w * 64 + b for w, word in enumerate(words) for b in range(64) if word >> b & 1]
    return out if limit is None else [i for i in out if i < limit]


def list_to_bits(items: list[int], words: int) -> list[int]:
    out = [0] * words
    for i in items:
        if not 0 <= i < words * 64:
            raise ValueError(f"bit {i} outside a {words}-word bitmap")
        out[i // 64] |= 1 << (i % 64)
    return out


def format_bdf(bdf: int) -> str:
    """msixlab_info.bdf (domain << 16 | bus << 8 | devfn) as 0000:01:00.0."""
    devfn = bdf & 0xFF
    return f"{bdf >> 16:04x}:{bdf >> 8 & 0xFF:02x}:{devfn >> 3:02x}.{devfn & 7}"
