"""The driver's ioctl interface, mirrored from agent/kmod/msixlab_uapi.h.

Concepts: each C structure is one ``Layout``: an ordered tuple of fields (name, struct
code, count) packed little-endian with no implicit padding, the C side carries explicit
``pad`` fields so both agree (and the driver rejects a non-zero pad).  ``IOCTLS`` holds
the ioctl numbers computed with the asm-generic ``_IOC`` encoding.  Per-CPU data has no
fixed size: ``VECTOR`` points at a buffer of ``VECTOR_CPU`` entries, one per CPU id
(``nr_cpu_ids`` of them); ``TOTALS`` points at two arrays of ``__u64``, one per table
index (every total out, the counts to wait for in).  ``PM`` (version 3) reads the
driver's power management counters.  tests/test_kmod_uapi.py compiles the header with the host
compiler and checks every size, offset, constant and ioctl number here against it.
"""

from __future__ import annotations

import struct
from collections import namedtuple

UAPI_VERSION = 3
MAX_VECTORS = 2048
VEC_WORDS = MAX_VECTORS // 64
ANY_INDEX = 0xFFFFFFFF
NO_CPU = 0xFFFFFFFF
NO_GROUP = 0xFFFFFFFF
INFO_DYN_ALLOC = 1 << 0
INFO_FAULT_INJECTION = 1 << 1
GROUP_MANAGED = 1 << 0
CPU_REQUESTED = 1 << 0
CPU_AFFINITY = 1 << 1
CPU_EFFECTIVE = 1 << 2
RAISE_DEFAULT_MS = 1000
RAISE_MAX_MS = 60000
CRASH_WARN = 1
CRASH_OOPS = 2
CRASH_PANIC = 3
CRASH_MAX_DELAY_MS = 10000
CRASH_KINDS = {"warn": CRASH_WARN, "oops": CRASH_OOPS, "panic": CRASH_PANIC}
PM_IRQS_DISABLED = 1 << 0
AUTOSUSPEND_MS = 200
IOC_MAGIC = 0xC4      # unregistered in the kernel's ioctl-number.rst (see the header)

_IOC_WRITE = 1
_IOC_READ = 2


class Layout(namedtuple("Layout", "name fields")):
    """One C structure: fields are (name, struct code, count); count > 1 is an array.

    (A named tuple, not a dataclass: importing dataclasses costs the guest a noticeable
    part of its start under TCG.)"""

    __slots__ = ()

    @property
    def format(self) -> str:
        """The ``struct`` format of the layout: little-endian, no implicit padding."""
        return "<" + "".join(f"{count}{code}" for _, code, count in self.fields)

    @property
    def size(self) -> int:
        """The structure's size in bytes."""
        return struct.calcsize(self.format)

    def offset(self, field: str) -> int:
        """The byte offset of ``field``; ``KeyError`` if there is no such field."""
        fmt = "<"
        for name, code, count in self.fields:
            if name == field:
                return struct.calcsize(fmt)
            fmt += f"{count}{code}"
        raise KeyError(f"{self.name} has no field {field!r}")

    def pack(self, **values: int | list[int]) -> bytearray:
        """The structure as a mutable buffer, from field values (missing ones are 0; array
        fields take lists, zero-filled).  ``KeyError`` for an unknown field, ``ValueError``
        for a list longer than its array."""
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
        """Field values from the first ``size`` bytes of ``buf`` (arrays as lists)."""
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
    *_u32("version", "domain", "bus", "devfn"), ("vendor", "H", 1), ("device", "H", 1),
    *_u32("flags", "table_size", "table_bar", "table_offset", "pba_bar", "pba_offset",
          "nr_cpu_ids", "nr_groups", "nr_vectors", "next_group", "msix_control"),
    ("allocated", "Q", VEC_WORDS),
))
GROUP = Layout("msixlab_group", (
    *_u32("id", "count", "min", "max", "start", "cpu", "flags", "pad"),
    ("indices", "Q", VEC_WORDS),
))
FREE = Layout("msixlab_free", _u32("id", "count"))
VECTOR_CPU = Layout("msixlab_vector_cpu", (("count", "Q", 1), *_u32("flags", "pad")))
VECTOR = Layout("msixlab_vector", (
    *_u32("index", "group", "irq", "last_cpu", "msg_address_lo", "msg_address_hi", "msg_data",
          "table_address_lo", "table_address_hi", "table_data", "table_ctrl", "nr_cpus",
          "cpus_len", "pad"),
    ("cpus", "Q", 1),
    ("total", "Q", 1),
))
RAISE = Layout("msixlab_raise", (
    *_u32("index", "timeout_ms", "cpu", "irq"), ("latency_ns", "Q", 1), ("total", "Q", 1),
))
PBA = Layout("msixlab_pba", (*_u32("table_size", "pad"), ("bits", "Q", VEC_WORDS)))
ENTRY = Layout("msixlab_entry", _u32("index", "address_lo", "address_hi", "data", "ctrl", "pad"))
FUNCTION_MASK = Layout("msixlab_function_mask",
                       (("masked", "I", 1), ("control", "H", 1), ("pad", "H", 1)))
CRASH = Layout("msixlab_crash", _u32("kind", "delay_ms"))
IRQ_FAULT = Layout("msixlab_irq_fault", _u32("nth", "pad"))
TOTALS = Layout("msixlab_totals", (
    *_u32("count", "timeout_ms"), ("totals", "Q", 1), ("want", "Q", 1),
    *_u32("short_count", "pad"),
))

PM = Layout("msixlab_pm", _u32("runtime_suspends", "runtime_resumes", "system_suspends",
                               "system_resumes", "flags", "pad"))

LAYOUTS = (INFO, GROUP, FREE, VECTOR_CPU, VECTOR, RAISE, PBA, ENTRY, FUNCTION_MASK, CRASH,
           TOTALS, IRQ_FAULT, PM)


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
    "MSIXLAB_IOC_FUNCTION_MASK": (_ioc(_IOC_READ | _IOC_WRITE, 0x08, FUNCTION_MASK.size),
                                  FUNCTION_MASK),
    "MSIXLAB_IOC_CRASH": (_ioc(_IOC_WRITE, 0x09, CRASH.size), CRASH),
    "MSIXLAB_IOC_TOTALS": (_ioc(_IOC_READ | _IOC_WRITE, 0x0A, TOTALS.size), TOTALS),
    "MSIXLAB_IOC_FAIL_REQUEST_IRQ": (_ioc(_IOC_WRITE, 0x0B, IRQ_FAULT.size), IRQ_FAULT),
    "MSIXLAB_IOC_PM": (_ioc(_IOC_READ, 0x0C, PM.size), PM),
}

CONSTANTS = {
    "MSIXLAB_UAPI_VERSION": UAPI_VERSION,
    "MSIXLAB_MAX_VECTORS": MAX_VECTORS,
    "MSIXLAB_VEC_WORDS": VEC_WORDS,
    "MSIXLAB_ANY_INDEX": ANY_INDEX,
    "MSIXLAB_NO_CPU": NO_CPU,
    "MSIXLAB_NO_GROUP": NO_GROUP,
    "MSIXLAB_INFO_DYN_ALLOC": INFO_DYN_ALLOC,
    "MSIXLAB_INFO_FAULT_INJECTION": INFO_FAULT_INJECTION,
    "MSIXLAB_GROUP_MANAGED": GROUP_MANAGED,
    "MSIXLAB_CPU_REQUESTED": CPU_REQUESTED,
    "MSIXLAB_CPU_AFFINITY": CPU_AFFINITY,
    "MSIXLAB_CPU_EFFECTIVE": CPU_EFFECTIVE,
    "MSIXLAB_RAISE_DEFAULT_MS": RAISE_DEFAULT_MS,
    "MSIXLAB_RAISE_MAX_MS": RAISE_MAX_MS,
    "MSIXLAB_CRASH_WARN": CRASH_WARN,
    "MSIXLAB_CRASH_OOPS": CRASH_OOPS,
    "MSIXLAB_CRASH_PANIC": CRASH_PANIC,
    "MSIXLAB_CRASH_MAX_DELAY_MS": CRASH_MAX_DELAY_MS,
    "MSIXLAB_IOC_MAGIC": IOC_MAGIC,
    "MSIXLAB_PM_IRQS_DISABLED": PM_IRQS_DISABLED,
    "MSIXLAB_AUTOSUSPEND_MS": AUTOSUSPEND_MS,
}


def bits_to_list(words: list[int], limit: int | None = None) -> list[int]:
    """Indices of the set bits of a __u64 bitmap (bit b of word w is w * 64 + b)."""
    out = [w * 64 + b for w, word in enumerate(words) for b in range(64) if word >> b & 1]
    return out if limit is None else [i for i in out if i < limit]


def list_to_bits(items: list[int], words: int) -> list[int]:
    """A bitmap of ``words`` 64-bit words with the bits in ``items`` set; ``ValueError`` for a
    bit outside it."""
    out = [0] * words
    for i in items:
        if not 0 <= i < words * 64:
            raise ValueError(f"bit {i} outside a {words}-word bitmap")
        out[i // 64] |= 1 << (i % 64)
    return out


def format_bdf(domain: int, bus: int, devfn: int) -> str:
    """msixlab_info's domain, bus and devfn as Linux names the device (0000:01:00.0);
    the domain takes as many hex digits as it needs, at least four."""
    return f"{domain:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7}"
