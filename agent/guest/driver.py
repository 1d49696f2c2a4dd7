"""Talking to the msixlab driver through /dev/msixlab<N> ioctls.

Concepts: ``Driver`` wraps one open device file; each method packs the parameter
structure of ``uapi``, issues the ioctl and returns plain dicts in the shapes of the
agent protocol (the routing record of docs/architecture.md).  A failed ioctl raises
``DriverError`` with the driver's errno and a message naming the operation and its
arguments.  ``find_devices`` lists the misc devices the driver registered.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
from typing import Any

from . import uapi
from .errors import DriverError

# What each errno means for this driver (msixlab_uapi.h).
MEANINGS = {
    errno.ENOENT: "no such group, or the index is not allocated",
    errno.ENOSPC: "no room: fewer than min free table entries",
    errno.EBUSY: "an index of the explicit range is taken",
    errno.EINVAL: "bad argument or range",
    errno.EPERM: "group 0 cannot be freed",
    errno.EOPNOTSUPP: "the MSI domain cannot allocate vectors after MSI-X enable",
    errno.ETIMEDOUT: "the raised vector was not counted in time",
    errno.ENODEV: "the device was unbound",
}


def find_devices(dev_root: str = "/dev") -> list[str]:
    def number(path: str) -> int:
        match = re.search(r"(\d+)$", path)
        return int(match.group(1)) if match else -1
    return sorted(glob.glob(os.path.join(dev_root, "msixlab[0-9]*")), key=number)


class Driver:
    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _ioctl(self, name: str, what: str, **values: Any) -> dict[str, Any]:
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

    def info(self) -> dict[str, Any]:
        raw = self._ioctl("MSIXLAB_IOC_INFO", "info")
        return {
            "path": self.path,
            "uapi_version": raw["version"],
            "bdf": uapi.format_bdf(raw["bdf"]),
            "vendor": raw["vendor"],
            "device": raw["device"],
            "table_size": raw["table_size"],
            "table_bar": raw["table_bar"],
            "table_offset": raw["table_offset"],
            "pba_bar": raw["pba_bar"],
            "pba_offset": raw["pba_offset"],
            "can_alloc_dyn": bool(raw["can_alloc_dyn"]),
            "nr_cpu_ids": raw["nr_cpu_ids"],
            "nr_groups": raw["nr_groups"],
            "nr_vectors": raw["nr_vectors"],
            "next_group": raw["next_group"],
            "allocated": uapi.bits_to_list(raw["allocated"]),
        }

    @staticmethod
    def _group(raw: dict[str, Any]) -> dict[str, Any]:
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
                    cpu: int | None = None, managed: bool = False) -> dict[str, Any]:
        what = (f"alloc_group(min={min}, max={max}, start={start}, cpu={cpu}, "
                f"managed={managed})")
        raw = self._ioctl("MSIXLAB_IOC_ALLOC_GROUP", what, min=min, max=max,
                          start=uapi.ANY_INDEX if start is None else start,
                          cpu=uapi.NO_CPU if cpu is None else cpu,
                          flags=uapi.GROUP_MANAGED if managed else 0)
        return self._group(raw)

    def free_group(self, group: int) -> dict[str, Any]:
        raw = self._ioctl("MSIXLAB_IOC_FREE_GROUP", f"free_group(group={group})", id=group)
        return {"group": group, "freed": raw["count"]}

    def list_groups(self) -> list[dict[str, Any]]:
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

    def vector(self, index: int) -> dict[str, Any]:
        raw = self._ioctl("MSIXLAB_IOC_VECTOR", f"vector(index={index})", index=index)
        n = raw["nr_cpus"]
        return {
            "group": raw["group"],
            "index": raw["index"],
            "irq": raw["irq"],
            "msg": {"address_lo": raw["msg_address_lo"], "address_hi": raw["msg_address_hi"],
                    "data": raw["msg_data"]},
            "table": {"address_lo": raw["table_address_lo"],
                      "address_hi": raw["table_address_hi"],
                      "data": raw["table_data"], "ctrl": raw["table_ctrl"]},
            "affinity": {"requested": uapi.bits_to_list(raw["requested"], n),
                         "effective": uapi.bits_to_list(raw["effective"], n)},
            "counts": raw["counts"][:n],
            "total": raw["total"],
            "last_cpu": None if raw["last_cpu"] == uapi.NO_CPU else raw["last_cpu"],
        }

    def routing(self) -> list[dict[str, Any]]:
        return [self.vector(index) for index in self.info()["allocated"]]

    def raise_vector(self, index: int, timeout_ms: int = 0) -> dict[str, Any]:
        raw = self._ioctl("MSIXLAB_IOC_RAISE",
                          f"raise(index={index}, timeout_ms={timeout_ms or uapi.RAISE_DEFAULT_MS})",
                          index=index, timeout_ms=timeout_ms)
        return {"index": index, "irq": raw["irq"], "cpu": raw["cpu"],
                "latency_ns": raw["latency_ns"], "total": raw["total"]}

    def read_pba(self) -> dict[str, Any]:
        raw = self._ioctl("MSIXLAB_IOC_READ_PBA", "read_pba")
        size = raw["table_size"]
        words = raw["bits"][: (size + 63) // 64]
        return {"table_size": size, "pending": uapi.bits_to_list(words, size),
                "words": words}

    def read_entry(self, index: int) -> dict[str, Any]:
        raw = self._ioctl("MSIXLAB_IOC_READ_ENTRY", f"read_entry(index={index})", index=index)
        return {"index": index, "address_lo": raw["address_lo"],
                "address_hi": raw["address_hi"], "data": raw["data"], "ctrl": raw["ctrl"]}
