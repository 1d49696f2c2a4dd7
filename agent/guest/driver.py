"""Talking to the msixlab driver through /dev/msixlab<N> ioctls.

Concepts: ``Driver`` wraps one open device file; each method packs the parameter
structure of ``uapi``, issues the ioctl and returns plain dicts in the shapes of the
agent protocol (the routing record of docs/architecture.md).  A failed ioctl raises
``DriverError`` with the driver's errno and a message naming the operation and its
arguments.  The vector read-out passes the driver a buffer of one ``uapi.VECTOR_CPU``
entry per CPU id, sized by the driver's ``nr_cpu_ids`` (no CPU limit), and turns its
flags into the ``requested`` (what the allocation asked for), ``mask`` and ``effective``
CPU lists.  ``find_devices`` lists the misc devices the driver registered.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
from array import array

from . import uapi
from .errors import DriverError, RequestError

PCI_MSIX_FLAGS_MASKALL = 0x4000      # MSI-X Message Control: Function Mask

# What each errno means for this driver (msixlab_uapi.h).
MEANINGS = {
    errno.ENOENT: "no such group, or the index is not allocated",
    errno.ENOSPC: "no room: fewer than min free table entries (or CPU vectors)",
    errno.EBUSY: "an index of the explicit range is taken",
    errno.EINVAL: "bad argument or range",
    errno.EPERM: "group 0 cannot be freed",
    errno.EOPNOTSUPP: "the MSI domain cannot allocate vectors after MSI-X enable",
    errno.ETIMEDOUT: "the raised vector was not counted in time",
    errno.EINTR: "a signal interrupted the raise's wait",
    errno.EOVERFLOW: "the per-CPU buffer is shorter than nr_cpu_ids",
    errno.EIO: "the kernel gave another index than the one asked for",
    errno.EACCES: "fault injection is off (module parameter fault_injection=0)",
    errno.ENOMEM: "no memory, or request_irq() failed (a fault armed with fail_request_irq)",
    errno.ENODEV: "the device was unbound",
}


def find_devices(dev_root: str = "/dev") -> list[str]:
    """The driver's misc devices under ``dev_root`` (``msixlab<N>``), by number."""
    def number(path: str) -> int:
        match = re.search(r"(\d+)$", path)
        return int(match.group(1)) if match else -1
    return sorted(glob.glob(os.path.join(dev_root, "msixlab[0-9]*")), key=number)


def _cpus_with(flag: int, cpus: list[dict[str, int]]) -> list[int]:
    return [cpu for cpu, entry in enumerate(cpus) if entry["flags"] & flag]


class Driver:
    """One open /dev/msixlab<N>; methods return the agent protocol's shapes."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._nr_cpu_ids: int | None = None

    def close(self) -> None:
        """Close the device file (once; later calls do nothing)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _ioctl(self, name: str, what: str, **values: object) -> dict[str, object]:
        number, layout = uapi.IOCTLS[name]
        buf = layout.pack(**values)
        try:
            fcntl.ioctl(self.fd, number, buf, True)
        except OSError as err:
            code = errno.errorcode.get(err.errno, str(err.errno))
            meaning = MEANINGS.get(err.errno, os.strerror(err.errno))
            raise DriverError(err.errno, f"{what}: {code} ({meaning})") from err
        return layout.unpack(buf)

    # ---- operations ----

    def info(self) -> dict[str, object]:
        """The device as the driver sees it: address, ids, MSI-X layout, ``dyn_alloc``, fault
        injection, Message Control, CPU ids, groups, vectors and allocated indices.  Raises
        ``DriverError`` on an ioctl failure, EPROTO if the driver speaks another uapi
        version."""
        raw = self._ioctl("MSIXLAB_IOC_INFO", "info")
        if raw["version"] != uapi.UAPI_VERSION:
            raise DriverError(errno.EPROTO, f"info: the driver speaks uapi version "
                              f"{raw['version']}, the agent {uapi.UAPI_VERSION}")
        self._nr_cpu_ids = raw["nr_cpu_ids"]
        return {
            "path": self.path,
            "uapi_version": raw["version"],
            "bdf": uapi.format_bdf(raw["domain"], raw["bus"], raw["devfn"]),
            "vendor": raw["vendor"],
            "device": raw["device"],
            "table_size": raw["table_size"],
            "table_bar": raw["table_bar"],
            "table_offset": raw["table_offset"],
            "pba_bar": raw["pba_bar"],
            "pba_offset": raw["pba_offset"],
            "dyn_alloc": bool(raw["flags"] & uapi.INFO_DYN_ALLOC),
            "fault_injection": bool(raw["flags"] & uapi.INFO_FAULT_INJECTION),
            "msix_control": raw["msix_control"],
            "nr_cpu_ids": raw["nr_cpu_ids"],
            "nr_groups": raw["nr_groups"],
            "nr_vectors": raw["nr_vectors"],
            "next_group": raw["next_group"],
            "allocated": uapi.bits_to_list(raw["allocated"]),
        }

    @staticmethod
    def _group(raw: dict[str, object]) -> dict[str, object]:
        return {
            "group": raw["id"],
            "count": raw["count"],
            "min": raw["min"],
            "max": raw["max"],
            "start": None if raw["start"] == uapi.ANY_INDEX else raw["start"],
            "cpu": None if raw["cpu"] == uapi.NO_CPU else raw["cpu"],
            "managed": bool(raw["flags"] & uapi.GROUP_MANAGED),
            "indices": uapi.bits_to_list(raw["indices"]),
        }

    def alloc_group(self, min: int, max: int, start: int | None = None,
                    cpu: int | None = None, managed: bool = False) -> dict[str, object]:
        """Allocate between ``min`` and ``max`` vectors as one group at the lowest free indices
        (or from ``start``), with affinity to ``cpu`` (``managed``: managed
        affinity).  Returns the group record; ``DriverError`` with the driver's errno
        (ENOSPC or EBUSY when the indices are taken, EINVAL ...)."""
        what = (f"alloc_group(min={min}, max={max}, start={start}, cpu={cpu}, "
                f"managed={managed})")
        raw = self._ioctl("MSIXLAB_IOC_ALLOC_GROUP", what, min=min, max=max,
                          start=uapi.ANY_INDEX if start is None else start,
                          cpu=uapi.NO_CPU if cpu is None else cpu,
                          flags=uapi.GROUP_MANAGED if managed else 0)
        return self._group(raw)

    def free_group(self, group: int) -> dict[str, object]:
        """Free ``group``; returns ``{group, freed}``.  ``DriverError`` (ENOENT) for an unknown
        group."""
        raw = self._ioctl("MSIXLAB_IOC_FREE_GROUP", f"free_group(group={group})", id=group)
        return {"group": group, "freed": raw["count"]}

    def list_groups(self) -> list[dict[str, object]]:
        """Every allocated group, in id order (fetched one ioctl at a time)."""
        groups, next_id = [], 0
        while True:
            try:
                raw = self._ioctl("MSIXLAB_IOC_GET_GROUP", f"get_group(id>={next_id})",
                                  id=next_id)
            except DriverError as err:
                if err.errno == errno.ENOENT:
                    return groups
                raise
            groups.append(self._group(raw))
            next_id = raw["id"] + 1

    def vector(self, index: int) -> dict[str, object]:
        """One allocated vector: its group, IRQ, cached message, live table entry, what
        its allocation asked for (``affinity.requested``, None when nothing was), the
        kernel's affinity mask and effective affinity, and per-CPU counts."""
        if self._nr_cpu_ids is None:
            self.info()
        n = self._nr_cpu_ids
        # the driver writes the per-CPU entries into this buffer (array, not ctypes: the
        # address is all that is needed, and ctypes is slow to import under TCG)
        cpus = array("B", bytes(n * uapi.VECTOR_CPU.size))
        raw = self._ioctl("MSIXLAB_IOC_VECTOR", f"vector(index={index})", index=index,
                          cpus=cpus.buffer_info()[0], cpus_len=n)
        data = cpus.tobytes()
        entries = [uapi.VECTOR_CPU.unpack(data[i * uapi.VECTOR_CPU.size:])
                   for i in range(raw["nr_cpus"])]
        return self._vector(raw, entries)

    @staticmethod
    def _vector(raw: dict[str, object], cpus: list[dict[str, object]]) -> dict[str, object]:
        """The vector record from msixlab_vector and its per-CPU entries."""
        return {
            "group": raw["group"],
            "index": raw["index"],
            "irq": raw["irq"],
            "msg": {"address_lo": raw["msg_address_lo"], "address_hi": raw["msg_address_hi"],
                    "data": raw["msg_data"]},
            "table": {"address_lo": raw["table_address_lo"],
                      "address_hi": raw["table_address_hi"],
                      "data": raw["table_data"], "ctrl": raw["table_ctrl"]},
            "affinity": {"requested": _cpus_with(uapi.CPU_REQUESTED, cpus) or None,
                         "mask": _cpus_with(uapi.CPU_AFFINITY, cpus),
                         "effective": _cpus_with(uapi.CPU_EFFECTIVE, cpus)},
            "counts": [entry["count"] for entry in cpus],
            "total": raw["total"],
            "last_cpu": None if raw["last_cpu"] == uapi.NO_CPU else raw["last_cpu"],
        }

    def routing(self) -> list[dict[str, object]]:
        """The routing record (``vector``) of every allocated index."""
        return [self.vector(index) for index in self.info()["allocated"]]

    def raise_vector(self, index: int, timeout_ms: int = 0) -> dict[str, object]:
        """Ring the doorbell for ``index`` and wait in the driver, at most ``timeout_ms`` (0 =
        ``RAISE_DEFAULT_MS``), interruptibly, for the handler to count it.  Returns index,
        IRQ, CPU, latency in ns and the vector's total; ``DriverError`` ETIMEDOUT if not
        counted in time, EINTR if interrupted."""
        raw = self._ioctl("MSIXLAB_IOC_RAISE",
                          f"raise(index={index}, timeout_ms={timeout_ms or uapi.RAISE_DEFAULT_MS})",
                          index=index, timeout_ms=timeout_ms)
        return {"index": index, "irq": raw["irq"], "cpu": raw["cpu"],
                "latency_ns": raw["latency_ns"], "total": raw["total"]}

    def totals(self, want: dict[int, int] | None = None, timeout_ms: int = 0,
               each: tuple[int, int, int] | None = None) -> dict[str, object]:
        """MSIXLAB_IOC_TOTALS: every allocated index's interrupt total in one call;
        with ``want`` ({index: count}), or ``each`` ((count, first, last): that count
        for every index first..last inside the table), first wait (bounded by
        ``timeout_ms``) until each allocated index reached its count.  ``short``:
        allocated indices still below."""
        info = self.info()
        size = info["table_size"]
        # __u64 arrays the driver reads and writes by address (array, not ctypes)
        totals = array("Q", bytes(8 * size))
        wanted = None
        if each is not None:
            count, first, last = each
            last = min(last, size - 1)
            wanted = array("Q", bytes(8 * size))
            if first <= last:
                wanted[first:last + 1] = array("Q", [count]) * (last + 1 - first)
        elif want:
            wanted = array("Q", bytes(8 * size))
            for index, count in want.items():
                if not 0 <= index < size:
                    raise RequestError(errno.EINVAL, f"totals: argument 'want' names index "
                                       f"{index}, outside the {size}-entry table",
                                       command="totals", argument="want")
                wanted[index] = count
        raw = self._ioctl("MSIXLAB_IOC_TOTALS", f"totals(want={len(want or {})} indices, "
                          f"timeout_ms={timeout_ms})", count=size, timeout_ms=timeout_ms,
                          totals=totals.buffer_info()[0],
                          want=wanted.buffer_info()[0] if wanted is not None else 0)
        return {"totals": {str(i): totals[i] for i in info["allocated"]},
                "short": raw["short_count"]}

    def read_pba(self) -> dict[str, object]:
        """The PBA: table size, pending indices and the raw 64-bit words."""
        raw = self._ioctl("MSIXLAB_IOC_READ_PBA", "read_pba")
        size = raw["table_size"]
        words = raw["bits"][: (size + 63) // 64]
        return {"table_size": size, "pending": uapi.bits_to_list(words, size),
                "words": words}

    def read_entry(self, index: int) -> dict[str, object]:
        """MSI-X table entry ``index`` read through MMIO: address low/high, data, vector
        control."""
        raw = self._ioctl("MSIXLAB_IOC_READ_ENTRY", f"read_entry(index={index})", index=index)
        return {"index": index, "address_lo": raw["address_lo"],
                "address_hi": raw["address_hi"], "data": raw["data"], "ctrl": raw["ctrl"]}

    def function_mask(self, masked: bool) -> dict[str, object]:
        """Set or clear MSI-X Function Mask; the Message Control register read back."""
        raw = self._ioctl("MSIXLAB_IOC_FUNCTION_MASK", f"function_mask(masked={masked})",
                          masked=int(masked))
        return {"masked": bool(raw["control"] & PCI_MSIX_FLAGS_MASKALL),
                "control": raw["control"]}

    def fail_request_irq(self, nth: int) -> dict[str, object]:
        """MSIXLAB_IOC_FAIL_REQUEST_IRQ: the next group allocation's ``nth`` vector (1 = the
        first) fails request_irq(); 0 disarms (the module needs fault_injection=1)."""
        self._ioctl("MSIXLAB_IOC_FAIL_REQUEST_IRQ", f"fail_request_irq(nth={nth})", nth=nth)
        return {"nth": nth}

    def pm_stats(self) -> dict[str, object]:
        """MSIXLAB_IOC_PM: how often each of the driver's power management callbacks ran
        since probe, and whether its vectors are disabled now (``irqs_disabled``: between a
        suspend and its resume)."""
        raw = self._ioctl("MSIXLAB_IOC_PM", "pm_stats")
        return {"runtime_suspends": raw["runtime_suspends"],
                "runtime_resumes": raw["runtime_resumes"],
                "system_suspends": raw["system_suspends"],
                "system_resumes": raw["system_resumes"],
                "irqs_disabled": bool(raw["flags"] & uapi.PM_IRQS_DISABLED)}

    def crash(self, kind: str, delay_ms: int = 0) -> dict[str, object]:
        """MSIXLAB_IOC_CRASH (the module must be loaded with fault_injection=1)."""
        self._ioctl("MSIXLAB_IOC_CRASH", f"crash(kind={kind}, delay_ms={delay_ms})",
                    kind=uapi.CRASH_KINDS[kind], delay_ms=delay_ms)
        return {"kind": kind, "delay_ms": delay_ms}
